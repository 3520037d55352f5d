import { MeshError } from '../../protocol/index.ts'
import { offlineHistory, type ShownChange } from '../../node/history.ts'
import { readMeshState, sitePaths } from '../../node/state.ts'
import { count as counted } from '../../node/util.ts'
import { readConfig, resolveDir } from '../config.ts'
import { askNodeIfRunning, out, parse, type Command } from './common.ts'

export const usage = `mesh log DATASET --dir DIR [--from SEQ] [--limit N] [--show SEQ] [--json]

The dataset's history, like git log: each unit of its chain of logs with its position (SEQ), epoch, time,
kind, and the tables it touched with their row counts. SEQ counts blocks along the chain across epochs,
the same numbering in every command: mesh restore --seq SEQ gives the state right after the unit at SEQ, and
--before SEQ the state right before it. Works whether the node runs or not.
  --from SEQ   start at this position (default: the beginning)
  --limit N    at most N units (default 50; 0 for all)
  --show SEQ   the one unit at SEQ, with every change in full: as SQL statements, by table and column
               name, values as SQL literals (with --json: by column name, and the statement)
  --json       the same as one JSON object`

interface LogResult {
  dataset: string
  id: string
  engine: string
  epoch: number
  length: number
  units: Array<{
    seq: number
    end: number
    epoch: number
    kind: string
    time: number | null
    rows: number
    tables: Array<{ table: string; upserts: number; deletes: number }>
    note: string
    changes?: ShownChange[]
    damage?: Array<{ table: string; changed: number; before: number; restore: string }>
  }>
}

/** "2026-11-24 11:50:03 +01:00": the local time of this machine, with its offset from UTC. */
export function localTime(ms: number): string {
  const d = new Date(ms)
  const pad = (n: number) => String(n).padStart(2, '0')
  const off = -d.getTimezoneOffset()
  const zone = `${off >= 0 ? '+' : '-'}${pad(Math.floor(Math.abs(off) / 60))}:${pad(Math.abs(off) % 60)}`
  const day = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`
  return `${day} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())} ${zone}`
}

function count(opt: string | undefined, flag: string, dflt: number): number {
  if (opt === undefined) return dflt
  if (!/^\d+$/.test(opt))
    throw MeshError.USAGE(`${flag} "${opt}" is not a number`, { hint: `Give a whole number, e.g. ${flag} 100.` })
  return Number(opt)
}

export const command: Command = {
  usage,
  summary: "the dataset's history: positions, times, epochs, tables and rows",
  async run(args) {
    const { values, positionals } = parse(
      'log',
      args,
      { from: { type: 'string' }, limit: { type: 'string' }, show: { type: 'string' }, json: { type: 'boolean' } },
      true
    )
    if (positionals.length !== 1)
      throw MeshError.USAGE('name one dataset', {
        hint: 'Try: mesh log DATASET --dir DIR (mesh status lists the datasets)'
      })
    const dir = resolveDir(values.dir)
    readConfig(dir)
    const show = values.show === undefined ? null : count(values.show, '--show', 0)
    const limit = count(values.limit, '--limit', 50)
    const req =
      show !== null
        ? { from: show, limit: 1, full: true }
        : { from: count(values.from, '--from', 0), limit: limit === 0 ? undefined : limit }
    let log: LogResult
    const res = await askNodeIfRunning<{ log?: LogResult }>(
      dir,
      { cmd: 'log', dataset: positionals[0], ...req },
      120_000
    )
    if (res?.log) log = res.log
    else {
      const off = await offlineHistory(dir)
      try {
        log = (await off.history.log(positionals[0], req)) as LogResult
      } finally {
        await off.close()
      }
    }
    // Units this site's mass-damage guard flagged, with the command that restores the state before them.
    const damage = readMeshState(sitePaths(dir)).local.find((l) => l.dataset === log.id)?.damage ?? []
    for (const u of log.units) {
      const hits = damage.filter((x) => x.seq === u.seq)
      if (hits.length) {
        u.damage = hits.map((x) => ({
          table: x.table,
          changed: x.changed,
          before: x.before,
          restore: `mesh restore ${log.dataset} --before ${x.seq} --to ${log.dataset}-before-${x.seq}.db --dir ${dir}`
        }))
      }
    }
    if (show !== null && (log.units.length === 0 || log.units[0].seq !== show)) {
      throw MeshError.USAGE(`no unit starts at ${show}`, { hint: 'mesh log lists where units start.' })
    }
    if (values.json) {
      out(JSON.stringify(log))
      return 0
    }
    out(
      `${log.dataset} (${log.engine}, id ${log.id}): epoch ${log.epoch}, ` +
        `${counted(log.length, 'block')} along the chain`
    )
    for (const u of log.units) {
      const when = u.time === null ? '-'.padEnd(25) : localTime(u.time)
      const touched = u.tables.map((t) => `${t.table} +${t.upserts} -${t.deletes}`).join(', ')
      const copy = u.kind === 'snapshot' && u.note ? `; ${u.note}` : ''
      const what = u.rows ? `${counted(u.rows, 'row')}: ${touched}${copy}` : u.note
      out(`${String(u.seq).padStart(8)}  epoch ${u.epoch}  ${when}  ${u.kind.padEnd(11)} ${what}`)
      for (const d of u.damage ?? [])
        out(
          `          MASS CHANGE: ${d.changed} of ${counted(d.before, 'row')} of ${d.table}; ` +
            `the state before it: ${d.restore}`
        )
      // In full: each change as a statement of the dataset's engine, by table and column, values as literals.
      for (const c of u.changes ?? []) out(`          ${c.sql}`)
    }
    return 0
  }
}
