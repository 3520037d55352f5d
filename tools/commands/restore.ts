import path from 'node:path'
import cliProgress from 'cli-progress'
import { MeshError } from '../../protocol/index.ts'
import {
  askNode,
  engineFor,
  findDataset,
  offlineHistory,
  readMeshState,
  sitePaths,
  type RestoreJob,
  type RestoreResult,
  type RestoreTarget
} from '../../node/index.ts'
import { readConfig, resolveDir } from '../config.ts'
import { askNodeIfRunning, nodeError, out, parse, type Command } from './common.ts'

export const usage = `mesh restore DATASET (--at TIME | --seq N | --before N) --to PATH|URL --dir DIR [--json]

Builds a new database exactly as DATASET was at that moment of its history, across failovers, from the logs
this site holds. The live database, the replicas and the running node are not changed.
  --at TIME    an ISO 8601 time (2026-11-20T14:00:00Z, 2026-11-20 14:00) or "3 days ago", "2 hours ago",
               "yesterday", "now": the state after the last change committed at or before it
  --seq N      a position (SEQ) from mesh log: the state right after the unit at N, that unit included
  --before N   the state right before the unit at N (what a mass change or a replaced file undid)
  --to PATH    SQLite: a new file (never an existing one)
  --to URL     PostgreSQL: an empty database (createdb NAME first)
  --json       print the result as one JSON object`

/** Parses an ISO 8601 time or a few words ("3 days ago", "yesterday", "now") into ms since 1970. */
export function parseTime(text: string, now = Date.now()): number {
  const t = text.trim().toLowerCase()
  if (t === 'now') return now
  if (t === 'yesterday') return now - 86_400_000
  const m = /^(\d+(?:\.\d+)?)\s*(second|sec|s|minute|min|m|hour|h|day|d|week|w)s?\s+ago$/.exec(t)
  if (m) {
    const unit = {
      second: 1,
      sec: 1,
      s: 1,
      minute: 60,
      min: 60,
      m: 60,
      hour: 3600,
      h: 3600,
      day: 86400,
      d: 86400,
      week: 604800,
      w: 604800
    }[m[2] as 'second']
    return now - Number(m[1]) * unit * 1000
  }
  const ms = Date.parse(text)
  if (Number.isNaN(ms)) {
    throw MeshError.USAGE(`--at "${text}" is not a time`, {
      hint: 'Give an ISO 8601 time (2026-11-20T14:00:00Z) or words like "3 days ago", "2 hours ago", "yesterday".'
    })
  }
  return ms
}

export const command: Command = {
  usage,
  summary: 'rebuild a dataset as it was at any moment, into a new database',
  async run(args) {
    const { values, positionals } = parse(
      'restore',
      args,
      {
        at: { type: 'string' },
        seq: { type: 'string' },
        before: { type: 'string' },
        to: { type: 'string' },
        json: { type: 'boolean' }
      },
      true
    )
    const example = 'Try: mesh restore shop --at "2 hours ago" --to /tmp/shop-2h.db --dir DIR'
    if (positionals.length !== 1) throw MeshError.USAGE('name one dataset', { hint: example })
    const given = [values.at, values.seq, values.before].filter((v) => v !== undefined).length
    if (given !== 1) throw MeshError.USAGE('give one of --at TIME, --seq N or --before N', { hint: example })
    if (!values.to)
      throw MeshError.USAGE('--to PATH|URL is required: where the restored database goes', { hint: example })
    for (const [flag, v] of [
      ['--seq', values.seq],
      ['--before', values.before]
    ] as const) {
      if (v !== undefined && !/^\d+$/.test(v))
        throw MeshError.USAGE(`${flag} "${v}" is not a position`, { hint: 'mesh log lists the positions.' })
    }
    const target: RestoreTarget =
      values.seq !== undefined
        ? { through: Number(values.seq) }
        : values.before !== undefined
          ? { seq: Number(values.before) }
          : { at: parseTime(values.at!) }
    const dir = resolveDir(values.dir)
    readConfig(dir)
    const to = /^postgres(ql)?:\/\//.test(values.to) ? values.to : path.resolve(values.to)
    const bar =
      values.json || !process.stderr.isTTY
        ? null
        : new cliProgress.SingleBar(
            { format: 'restoring [{bar}] {percentage}% | {value}/{total} blocks', stream: process.stderr },
            cliProgress.Presets.shades_classic
          )
    let started = false
    const progress = (done: number, total: number) => {
      if (!bar) return
      if (!started) {
        bar.start(total, 0)
        started = true
      }
      bar.setTotal(total)
      bar.update(done)
    }
    let result: RestoreResult
    try {
      const res = await askNodeIfRunning<{ job?: string }>(
        dir,
        { cmd: 'restore', dataset: positionals[0], ...target, to },
        30_000
      )
      if (res?.job) {
        // The node runs it (it holds the log store); follow its progress.
        for (;;) {
          const j = ((await askNode(dir, { cmd: 'job', job: res.job }, 30_000)) as { job: RestoreJob | null } | null)
            ?.job
          if (!j)
            throw MeshError.IO_ERROR('the node stopped while restoring; nothing was left under the target name', {
              retryable: true
            })
          if (j.total) progress(j.done, j.total)
          if (j.state === 'failed') throw nodeError(j.error!)
          if (j.state === 'done') {
            result = j.result!
            break
          }
          await new Promise((r) => setTimeout(r, 200))
        }
      } else {
        const head = findDataset(readMeshState(sitePaths(dir)).datasets, positionals[0])
        await engineFor(head.engine).checkRestoreTarget(to)
        const damaged = (_head: unknown, file: string) =>
          process.stderr.write(
            `mesh: the snapshot ${file} changed on disk since it was written: set aside as ` +
              `${file}.damaged, an older one is used (check the disk)\n`
          )
        const off = await offlineHistory(dir, { onDamaged: damaged })
        try {
          result = await off.history.restore(head.id, target, to, { progress })
        } finally {
          await off.close()
        }
      }
    } finally {
      bar?.stop()
    }
    if (values.json) {
      out(JSON.stringify({ ...result, to: engineFor(result.engine).shown(result.to) }))
      return 0
    }
    const when = result.time === null ? '' : ` (last change committed ${new Date(result.time).toISOString()})`
    const from = result.from > 0 ? `from the snapshot at position ${result.from}` : 'from the start of the history'
    out(
      `Restored ${result.dataset} as it was right after the unit at position ${result.last}${when} into ` +
        `${engineFor(result.engine).shown(result.to)} in ${(result.ms / 1000).toFixed(1)} s (replayed ` +
        `${from}).`
    )
    return 0
  }
}
