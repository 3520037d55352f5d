/**
 * What the replica's write guard costs apply (issue 14: aim at 10% or less). The same units (200k rows in
 * units of 1,000, as capture makes them under load) are applied into a fresh SQLite replica twice: as apply
 * makes it (every table guarded), and with the guard triggers dropped after the schema unit. Anchor: apply
 * without the guard. Median of 7 each (one run is under a second, and the machine is shared); run alone with
 * `node --import tsx bench/guard.ts`.
 */
import Database from '../adapters/sqlite/better-sqlite3.ts'
import path from 'node:path'
import { pathToFileURL } from 'node:url'
import { SqliteApply } from '../adapters/index.ts'
import type { Entry, TableDef, Value } from '../protocol/index.ts'
import { tmpDir } from '../test/helpers/db.ts'

const ROWS = 200_000
const UNIT = 1_000
const RUNS = 7

const table: TableDef = {
  id: 1,
  name: 'orders',
  sql: 'CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT, amount REAL, note TEXT)',
  columns: [
    { name: 'id', type: 'INTEGER', notNull: false },
    { name: 'customer', type: 'TEXT', notNull: false },
    { name: 'amount', type: 'REAL', notNull: false },
    { name: 'note', type: 'TEXT', notNull: false }
  ],
  key: [0]
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]

async function applyOnce(file: string, guarded: boolean): Promise<number> {
  const log = new Uint8Array(32).fill(7)
  const side = new SqliteApply({ path: file, dataset: 'bench', checkpoints: false })
  await side.open()
  const pos = (length: number) => ({ log, epoch: 0, length, treeHash: null })
  const header: Entry = {
    kind: 'header',
    dataset: 'bench',
    name: 'bench',
    engine: 'sqlite',
    epoch: 0,
    site: 'bench',
    createdAt: 0,
    parent: null
  } as Entry
  await side.apply({ start: 0, entries: [header] }, pos(1))
  await side.apply(
    { start: 1, entries: [{ kind: 'schema', more: false, tables: [table], objects: [], reset: [] }] },
    pos(2)
  )
  if (!guarded) {
    const db = new Database(file)
    for (const op of ['insert', 'update', 'delete']) db.exec(`DROP TRIGGER IF EXISTS "_mesh_g1_${op}"`)
    db.close()
  }
  const t0 = process.hrtime.bigint()
  let block = 2
  for (let i = 0; i < ROWS; i += UNIT) {
    const upserts: Value[][] = []
    for (let j = i; j < i + UNIT; j++) upserts.push([BigInt(j), `customer ${j % 5000}`, j * 0.25, 'x'.repeat(40)])
    const entry: Entry = {
      kind: 'transaction',
      more: false,
      time: Date.now(),
      changes: [{ table: 1, upserts, deletes: [] }],
      source: null
    }
    await side.apply({ start: block, entries: [entry] }, pos(block + 1))
    block++
  }
  const rate = ROWS / (Number(process.hrtime.bigint() - t0) / 1e9)
  await side.close()
  return rate
}

export async function guardBench(opts: { say?: (line: string) => void } = {}): Promise<Record<string, number>> {
  const say = opts.say ?? ((l: string) => process.stdout.write(`${l}\n`))
  const { dir, cleanup } = tmpDir('mesh-bench-guard-')
  try {
    const plain: number[] = []
    const guarded: number[] = []
    for (let r = 0; r < RUNS; r++) {
      plain.push(await applyOnce(path.join(dir, `plain${r}.db`), false))
      guarded.push(await applyOnce(path.join(dir, `guarded${r}.db`), true))
    }
    const cost = median(plain) / median(guarded) - 1
    say(
      `replica write guard: apply of ${ROWS} rows in units of ${UNIT}: without the guard ` +
        `${Math.round(median(plain))} rows/s, ` +
        `guarded ${Math.round(median(guarded))} rows/s, cost ${(cost * 100).toFixed(1)}% (aim <= 10%; ` +
        `median of ${RUNS})`
    )
    return {
      applyUnguardedRowsPerSec: Math.round(median(plain)),
      applyGuardedRowsPerSec: Math.round(median(guarded)),
      guardCost: +cost.toFixed(3)
    }
  } finally {
    cleanup()
  }
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) await guardBench()
