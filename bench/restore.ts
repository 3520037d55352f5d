/**
 * The restore benchmark: `mesh restore` of a history of one million row changes, from the nearest snapshot
 * and from the beginning, against the aim (5 s or less from a snapshot) and against copying the database file
 * (the floor: a restore at least writes the database once). Nothing is asserted.
 *
 * The history: 100,000 rows inserted, then updated ten times over (1.1M row changes, in units of 10,000),
 * captured from a real SQLite origin into a log, replicated into a second store and applied to a replica (the
 * test pipeline, in this process). A snapshot is built from the log (the node's own snapshot code) when 95% of
 * the history is written; the restore goes to the end.
 *
 * Run alone: node --import tsx bench/restore.ts [--json]
 */
import fs from 'node:fs'
import path from 'node:path'
import { pathToFileURL } from 'node:url'
import { sqliteEngine } from '../adapters/index.ts'
import { History } from '../node/history.ts'
import { buildSnapshot } from '../node/snapshots.ts'
import { resolveChain } from '../node/chain.ts'
import { openWal, tmpDir } from '../test/helpers/db.ts'
import { startPipeline } from '../test/helpers/pipeline.ts'

export interface RestoreBenchSummary {
  restoreChanges: number
  restoreFromStartMs: number
  restoreFromSnapshotMs: number
  restoreCopyFileMs: number
}

const ROWS = 100_000
const ROUNDS = 10
const UNIT = 10_000

export async function restoreBench(opts: { say?: (s: string) => void } = {}): Promise<RestoreBenchSummary> {
  const say = opts.say ?? (() => {})
  const { dir, cleanup } = tmpDir('mesh-restore-bench-')
  try {
    const file = path.join(dir, 'origin.db')
    const db = openWal(file)
    db.exec('CREATE TABLE stock (id INTEGER PRIMARY KEY, sku TEXT, qty INTEGER, price REAL, note TEXT)')
    const p = await startPipeline(dir, file, { pollMs: 5 })
    const ins = db.prepare('INSERT INTO stock (id, sku, qty, price, note) VALUES (?, ?, ?, ?, ?)')
    const upd = db.prepare('UPDATE stock SET qty = qty + 1, price = price * 1.01 WHERE id BETWEEN ? AND ?')
    let changes = 0
    const t0 = Date.now()
    for (let i = 0; i < ROWS; i += UNIT) {
      db.transaction(() => {
        for (let k = i; k < i + UNIT; k++) ins.run(k, `sku-${k}`, k % 50, 1 + (k % 997) / 10, 'x'.repeat(30))
      })()
      changes += UNIT
      await p.settle()
    }
    const snapshotAt = Math.floor(ROUNDS * ROWS * 0.95)
    let snapshot = false
    const siteDir = path.join(dir, 'site')
    const log = p.replicaLog
    const head = {
      id: 'ds1',
      name: 'shop',
      engine: 'sqlite',
      origin: new Uint8Array(32),
      originSite: 'a',
      epoch: 0,
      log: log.key,
      createdAt: 0
    }
    let snapshotMs = 0
    for (let r = 0; r < ROUNDS; r++) {
      for (let i = 0; i < ROWS; i += UNIT) {
        upd.run(i, i + UNIT - 1)
        changes += UNIT
        await p.settle()
        if (!snapshot && changes - ROWS >= snapshotAt) {
          const ts = Date.now()
          await buildSnapshot(siteDir, head, sqliteEngine, await resolveChain(head, async () => log), log.length)
          snapshotMs = Date.now() - ts
          snapshot = true
        }
      }
    }
    say(
      `restore: a history of ${changes.toLocaleString('en')} row changes (${ROWS.toLocaleString('en')} ` +
        `rows, ${ROUNDS} updates each) built in ${((Date.now() - t0) / 1000).toFixed(1)} s; a snapshot ` +
        `built from the log at 95% of it in ${(snapshotMs / 1000).toFixed(1)} s`
    )
    const plain = new History(
      () => [head],
      async () => log
    )
    const withSnapshots = new History(
      () => [head],
      async () => log,
      undefined,
      { dir: siteDir }
    )
    const run = async (name: string, useSnapshot: boolean) => {
      const to = path.join(dir, `${name}.db`)
      const t = Date.now()
      const r = await (useSnapshot ? withSnapshots : plain).restore('ds1', { seq: log.length }, to)
      return { ms: Date.now() - t, from: r.from }
    }
    const fromStart = await run('from-start', false)
    const fromSnap = await run('from-snapshot', true)
    const tc = Date.now()
    fs.copyFileSync(file, path.join(dir, 'copy.db'))
    const copyMs = Date.now() - tc
    say(
      `  from the beginning: ${(fromStart.ms / 1000).toFixed(2)} s ` +
        `(${Math.round(changes / (fromStart.ms / 1000)).toLocaleString('en')} changes/s)`
    )
    say(
      `  from the snapshot (position ${fromSnap.from} of ${log.length}): ` +
        `${(fromSnap.ms / 1000).toFixed(2)} s  aim <= 5 s: ${fromSnap.ms <= 5000 ? 'met' : 'NOT MET'}; ` +
        `${(fromStart.ms / fromSnap.ms).toFixed(1)}x faster than from the beginning`
    )
    say(
      `  copying the origin's file (the floor): ${copyMs} ms; from the snapshot is ` +
        `${(fromSnap.ms / Math.max(1, copyMs)).toFixed(1)}x that`
    )
    await p.close()
    db.close()
    return {
      restoreChanges: changes,
      restoreFromStartMs: fromStart.ms,
      restoreFromSnapshotMs: fromSnap.ms,
      restoreCopyFileMs: copyMs
    }
  } finally {
    cleanup()
  }
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const json = process.argv.includes('--json')
  const r = await restoreBench({ say: json ? undefined : (s) => process.stdout.write(`${s}\n`) })
  if (json) process.stdout.write(`${JSON.stringify(r)}\n`)
}
