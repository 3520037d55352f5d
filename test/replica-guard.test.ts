import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import Database from '../adapters/sqlite/better-sqlite3.ts'
import { SqliteApply } from '../adapters/index.ts'
import type { Entry, TableDef, Value } from '../protocol/index.ts'
import { dump, readDb, sqliteDb, tmpDir } from './helpers/db.ts'
import { mesh, meshSites, waitUntil } from './helpers/mesh.ts'
import { Workload } from './helpers/workload.ts'

/** The sqlite3 program writes `sql` into `file`; its exit code and what it said. */
function sqlite3(file: string, sql: string): { code: number | null; stderr: string } {
  const r = spawnSync('sqlite3', [file, sql], { encoding: 'utf8' })
  if (r.error) throw new Error(`this test needs the sqlite3 program (apt-get install sqlite3): ${r.error.message}`)
  return { code: r.status, stderr: r.stderr }
}

test(
  'a replica refuses writes from other programs; ' + 'one that gets past is reported until the copy is repaired',
  async (t) => {
    const { sites } = await meshSites(t, ['shop-a', 'shop-b'])
    const [a, b] = sites
    const db = sqliteDb(t, a.db)
    const work = new Workload(db, 3)
    for (let i = 0; i < 20; i++) work.transaction()
    await waitUntil('b holds a', () => b.holdsExactly(a), 60_000)
    const copy = b.replicaOf(a)!

    await t.test('the till pointed at the copy fails loudly, and the copy is unchanged', async () => {
      const before = dump(copy)
      for (const sql of [
        `INSERT INTO events (at, note) VALUES (1, 'sold into a copy')`,
        `UPDATE accounts SET balance = 0`,
        `DELETE FROM accounts WHERE id = 1`
      ]) {
        const r = sqlite3(copy, sql)
        assert.notEqual(r.code, 0, `${sql} was accepted by the copy`)
        assert.match(r.stderr, /branchmesh_replica_is_read_only/)
      }
      assert.deepEqual(dump(copy), before)
      const h = (await b.status()).datasets.find((d) => d.name === 'shop-a')!.holders.find((x) => x.site === 'shop-b')!
      assert.equal(h.error, null)
    })

    await t.test('the copy still follows the origin', async () => {
      for (let i = 0; i < 5; i++) work.transaction()
      await waitUntil('b holds a again', () => b.holdsExactly(a), 60_000)
    })

    await t.test('a program that defines the guard function gets past it, and is reported', async () => {
      const sneaky = new Database(copy)
      sneaky.function('branchmesh_replica_is_read_only', () => 0)
      sneaky.prepare('UPDATE accounts SET balance = balance + 1 WHERE id = 2').run()
      sneaky.close()
      await waitUntil(
        'b reports the write',
        async () => {
          const s = await b.status()
          return (
            s.datasets.find((d) => d.name === 'shop-a')!.holders.find((x) => x.site === 'shop-b')!.error ===
            'REPLICA_WRITTEN'
          )
        },
        30_000
      )
    })

    await t.test('mesh repair mends the copy and clears the report without a restart', async () => {
      const r = await mesh(['repair', 'shop-a', '--dir', b.dir, '--json'])
      assert.equal(r.code, 0, r.stderr)
      assert.equal(JSON.parse(r.stdout).repaired, true)
      await waitUntil(
        'the report clears',
        async () => {
          const s = await b.status()
          return s.datasets.find((d) => d.name === 'shop-a')!.holders.find((x) => x.site === 'shop-b')!.error === null
        },
        30_000
      )
      for (let i = 0; i < 3; i++) work.transaction()
      await waitUntil('b holds a after the repair', () => b.holdsExactly(a), 60_000)
      assert.notEqual(sqlite3(copy, `DELETE FROM accounts`).code, 0, 'the repaired copy is guarded too')
    })

    await t.test('a restore is a plain database that any program may write', async () => {
      const to = path.join(path.dirname(b.dir), 'restored.db')
      const r = await mesh(['restore', 'shop-a', '--at', 'now', '--to', to, '--dir', b.dir, '--json'])
      assert.equal(r.code, 0, r.stderr)
      assert.equal(sqlite3(to, `INSERT INTO events (at, note) VALUES (2, 'written into a restore')`).code, 0)
      fs.rmSync(to, { force: true })
    })
  }
)

const orders: TableDef = {
  id: 1,
  name: 'orders',
  sql: 'CREATE TABLE orders (id INTEGER PRIMARY KEY, note TEXT)',
  columns: [
    { name: 'id', type: 'INTEGER', notNull: false },
    { name: 'note', type: 'TEXT', notNull: false }
  ],
  key: [0]
}
const header = {
  kind: 'header',
  dataset: 'guarded',
  name: 'guarded',
  engine: 'sqlite',
  epoch: 0,
  site: 'a',
  createdAt: 0,
  parent: null
} as Entry
const rows = (from: number, n: number, width = 2): Value[][] =>
  Array.from({ length: n }, (_, i) => [BigInt(from + i), 'note'].slice(0, width) as Value[])
const tx = (upserts: Value[][], more = false): Entry => ({
  kind: 'transaction',
  more,
  time: 0,
  changes: [{ table: 1, upserts, deletes: [] }],
  source: null
})

/** What another program gets when it writes into `file`: null if the write went through. */
function writeByOther(file: string): string | null {
  const other = new Database(file, { timeout: 0 })
  try {
    other.prepare(`INSERT INTO orders (id, note) VALUES (-1, 'by another program')`).run()
    return null
  } catch (err) {
    return (err as Error).message
  } finally {
    other.close()
  }
}

test('apply lifts a large unit past the guard inside its own transaction only', async (t) => {
  const file = path.join(tmpDir(t), 'replica.db')
  const log = new Uint8Array(32).fill(3)
  const pos = (length: number) => ({ log, epoch: 0, length, treeHash: null })
  const side = new SqliteApply({ path: file, dataset: 'guarded', checkpoints: false })
  await side.open()
  t.after(() => side.close())
  await side.apply({ start: 0, entries: [header] }, pos(1))
  await side.apply(
    { start: 1, entries: [{ kind: 'schema', more: false, tables: [orders], objects: [], reset: [] }] },
    pos(2)
  )
  const guards = () =>
    readDb(file, (db) => db.prepare(`SELECT count(*) FROM sqlite_schema WHERE name LIKE '_mesh_g1_%'`).pluck().get())

  await t.test('after a large unit and after a small one the table is guarded', async () => {
    await side.apply({ start: 2, entries: [tx(rows(0, 1000))] }, pos(3))
    assert.match(writeByOther(file) ?? 'accepted', /branchmesh_replica_is_read_only/)
    await side.apply({ start: 3, entries: [tx(rows(1000, 3))] }, pos(4))
    assert.match(writeByOther(file) ?? 'accepted', /branchmesh_replica_is_read_only/)
    assert.equal(guards(), 3)
    assert.equal(
      readDb(file, (db) => db.prepare('SELECT count(*) FROM orders').pluck().get()),
      1003
    )
  })

  await t.test('a large unit that fails leaves the guard and the rows as they were', async () => {
    await assert.rejects(side.apply({ start: 4, entries: [tx([...rows(2000, 500), ...rows(3000, 1, 1)])] }, pos(5)))
    assert.match(writeByOther(file) ?? 'accepted', /branchmesh_replica_is_read_only/)
    assert.equal(guards(), 3)
    assert.equal(
      readDb(file, (db) => db.prepare('SELECT count(*) FROM orders').pluck().get()),
      1003
    )
  })

  await t.test('a unit applied in parts is guarded between its parts, after its end and after an abort', async () => {
    assert.equal(await side.beginUnit({ start: 4, end: 6 }, pos(6)), true)
    await side.applyPart([tx(rows(4000, 500), true)], pos(6))
    assert.match(writeByOther(file) ?? 'accepted', /branchmesh_replica_is_read_only/)
    await side.applyPart([tx(rows(5000, 500))], pos(6))
    await side.commitUnit(pos(6))
    assert.match(writeByOther(file) ?? 'accepted', /branchmesh_replica_is_read_only/)
    assert.equal(await side.beginUnit({ start: 6, end: 7 }, pos(7)), true)
    await side.applyPart([tx(rows(6000, 500))], pos(7))
    await side.abortUnit()
    assert.match(writeByOther(file) ?? 'accepted', /branchmesh_replica_is_read_only/)
    assert.equal(guards(), 3)
    assert.equal(
      readDb(file, (db) => db.prepare('SELECT count(*) FROM orders').pluck().get()),
      2003
    )
  })
})
