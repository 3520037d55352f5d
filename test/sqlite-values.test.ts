/**
 * Nothing lost, nothing changed (SQLite values and keys): TEXT that is not UTF-8, tables without a declared key
 * across VACUUM, and sqlite_sequence. The writer is the sqlite3 program; every test ends by comparing the
 * copies byte by byte (storage class and bytes of every value; keyless tables as multisets).
 */

import assert from 'node:assert/strict'
import path from 'node:path'
import { test } from 'node:test'
import Database from '../adapters/sqlite/better-sqlite3.ts'
import { SqliteApply, SqliteCapture, sqliteEngine } from '../adapters/index.ts'
import { decodeEntry, type Entry, encodeEntry, packSnapshot, packTransaction } from '../protocol/index.ts'
import { dumpExact, sqlite3, tmpDir } from './helpers/db.ts'
import { sqlitePipeline } from './helpers/pipeline.ts'
import { teardown } from './helpers/teardown.ts'

function assertSame(origin: string, replica: string): void {
  assert.deepEqual(dumpExact(replica), dumpExact(origin), 'values and bytes')
  assert.deepEqual(dumpExact(replica, { rowids: true }), dumpExact(origin, { rowids: true }), 'rowids too')
}

function typeofIn(file: string, sql: string): unknown[] {
  const db = new Database(file, { readonly: true })
  try {
    return db.prepare(sql).pluck().all()
  } finally {
    db.close()
  }
}

const LOG = new Uint8Array(32).fill(7)

/**
 * Capture to apply in this process without hypercore, every entry encoded and decoded as a log block is: lets a
 * test close capture, change the file while no node runs, and resume from the log's last position.
 */
class Copy {
  length = 0
  source: Uint8Array | null = null
  capture: SqliteCapture
  readonly replica: SqliteApply
  constructor(
    readonly origin: string,
    readonly replicaFile: string
  ) {
    this.replica = new SqliteApply({ path: replicaFile })
    this.capture = new SqliteCapture({ path: origin, ackIntervalMs: 0 })
  }

  static async start(origin: string, replicaFile: string): Promise<Copy> {
    const c = new Copy(origin, replicaFile)
    await c.capture.open()
    await c.replica.open()
    const header: Entry = {
      kind: 'header',
      dataset: 'ds',
      name: 'shop',
      engine: 'sqlite',
      epoch: 0,
      site: 'a',
      createdAt: 1,
      parent: null
    }
    await c.unit([header])
    await c.unit([await c.capture.schema()])
    let first = true
    for await (const chunk of c.capture.snapshot({ chunkRows: 3 })) {
      await c.unit(packSnapshot(chunk.changes, { first, last: false }))
      first = false
    }
    await c.unit(packSnapshot([], { first, last: true }))
    await c.drain()
    return c
  }

  private async unit(entries: Entry[]): Promise<void> {
    const decoded = entries.map((e) => decodeEntry(encodeEntry(e)))
    const start = this.length
    this.length += decoded.length
    await this.replica.apply({ start, entries: decoded }, { log: LOG, epoch: 0, length: this.length, treeHash: null })
  }

  async drain(): Promise<void> {
    for (;;) {
      const b = await this.capture.read()
      if (b === null) return
      await this.unit(packTransaction(b))
      await this.capture.ack(b.source!)
      this.source = b.source
    }
  }

  /** Capture stops as a node's would; reopen() starts it again from the log's last position. */
  async stop(): Promise<void> {
    await this.capture.close()
  }

  async reopen(): Promise<void> {
    this.capture = new SqliteCapture({ path: this.origin, ackIntervalMs: 0 })
    await this.capture.open()
    await this.capture.resume(this.source)
    await this.drain()
  }

  async checkpointMatches(): Promise<boolean> {
    const cp = await this.capture.checkpoint()
    assert.ok(cp, 'the origin is idle: a checkpoint can be taken')
    await this.unit([{ kind: 'checkpoint', length: this.length, digest: cp.digest, rows: cp.rows }])
    return this.replica.checkpoint()?.ok === true
  }

  async close(): Promise<void> {
    await this.capture.close()
    await this.replica.close()
  }
}

const RAW = `
  CREATE TABLE keyed (code TEXT PRIMARY KEY, v);
  CREATE TABLE loose (a, b);
  CREATE TABLE wr (k TEXT PRIMARY KEY, v) WITHOUT ROWID;
`

test('TEXT that is not UTF-8 keeps its bytes and its storage class, as value and as key', async (t) => {
  const dir = tmpDir(t)
  const origin = path.join(dir, 'origin.db')
  // Rows there before capture starts travel in the snapshot.
  sqlite3(
    origin,
    `PRAGMA journal_mode=WAL; ${RAW}
     INSERT INTO keyed VALUES (CAST(x'ff' AS TEXT), CAST(x'c080' AS TEXT)), ('plain', CAST(x'eda080' AS TEXT));
     INSERT INTO loose VALUES (CAST(x'41ff42' AS TEXT), 'é'), (CAST(x'efbfbd' AS TEXT), CAST(x'f4908080' AS TEXT));
     INSERT INTO wr VALUES (CAST(x'fe' AS TEXT), 1), (CAST(x'e282' AS TEXT), x'ff');`
  )
  const copy = await Copy.start(origin, path.join(dir, 'replica.db'))
  teardown(t, () => copy.close())
  assertSame(origin, copy.replicaFile)

  // While capture runs: inserts, updates and deletes whose key is TEXT that is not UTF-8.
  sqlite3(
    origin,
    `INSERT INTO keyed VALUES (CAST(x'80' AS TEXT), CAST(x'61ff00ff62' AS TEXT));
     UPDATE keyed SET v = CAST(x'c3' AS TEXT) WHERE code = CAST(x'ff' AS TEXT);
     UPDATE wr SET v = CAST(x'ff' AS TEXT) WHERE k = CAST(x'fe' AS TEXT);
     DELETE FROM wr WHERE k = CAST(x'e282' AS TEXT);
     INSERT INTO wr VALUES (CAST(x'e2' AS TEXT), 'ok');
     UPDATE loose SET b = CAST(x'99' AS TEXT) WHERE a = CAST(x'41ff42' AS TEXT);`
  )
  await copy.drain()
  assertSame(origin, copy.replicaFile)

  // A schema change resends a table in full, raw TEXT included; the checkpoint digests agree.
  sqlite3(origin, `ALTER TABLE keyed ADD COLUMN w DEFAULT 1; INSERT INTO keyed VALUES (CAST(x'fd' AS TEXT), 'x', 2);`)
  await copy.drain()
  assertSame(origin, copy.replicaFile)
  assert.equal(await copy.checkpointMatches(), true, 'checkpoint digest of the copy equals the origin')

  const types = typeofIn(copy.replicaFile, `SELECT typeof(code) FROM keyed UNION ALL SELECT typeof(k) FROM wr`)
  assert.ok(types.length > 0 && types.every((x) => x === 'text'), 'still TEXT, never BLOB')
  const bytes = typeofIn(copy.replicaFile, `SELECT hex(CAST(v AS BLOB)) FROM keyed WHERE code = CAST(x'80' AS TEXT)`)
  assert.deepEqual(bytes, ['61FF00FF62'])
})

test('hundreds of rows in one batch, every storage class, NULL and raw TEXT keys among them, stay exact', async (t) => {
  // Capture reads a batch's rows with one join per table, apply writes them many to a statement: both fall back
  // to a row at a time for TEXT that is not UTF-8 (keyed holds one such row; loose and wr hold none).
  const dir = tmpDir(t)
  const origin = path.join(dir, 'origin.db')
  sqlite3(origin, `PRAGMA journal_mode=WAL; ${RAW}`)
  const copy = await Copy.start(origin, path.join(dir, 'replica.db'))
  teardown(t, () => copy.close())
  sqlite3(
    origin,
    `WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 450)
     INSERT INTO keyed SELECT 'k' || i, CASE i % 6 WHEN 0 THEN i WHEN 1 THEN i * 0.5 WHEN 2 THEN 'text ' || i
       WHEN 3 THEN randomblob(8) WHEN 4 THEN NULL ELSE 9007199254740993 + i END FROM n;
     INSERT INTO keyed VALUES (NULL, 'a NULL key'), (CAST(x'ff' AS TEXT), 'a raw key');
     INSERT INTO loose SELECT v, code FROM keyed WHERE code IS NOT CAST(x'ff' AS TEXT);
     INSERT INTO wr SELECT code, v FROM keyed WHERE code IS NOT NULL AND code IS NOT CAST(x'ff' AS TEXT);`
  )
  await copy.drain()
  assertSame(origin, copy.replicaFile)
  sqlite3(
    origin,
    `UPDATE keyed SET v = 'changed' WHERE rowid % 3 = 0; DELETE FROM keyed WHERE rowid % 5 = 0;
     UPDATE loose SET a = -1 WHERE rowid % 4 = 0; DELETE FROM loose WHERE rowid % 7 = 0;
     UPDATE wr SET v = x'00ff' WHERE k LIKE 'k2%'; DELETE FROM wr WHERE k LIKE 'k1%';`
  )
  await copy.drain()
  assertSame(origin, copy.replicaFile)
  sqlite3(origin, `DELETE FROM keyed WHERE code IS NULL OR code = CAST(x'ff' AS TEXT)`)
  await copy.drain()
  assertSame(origin, copy.replicaFile)
  assert.equal(await copy.checkpointMatches(), true, 'checkpoint digest of the copy equals the origin')
})

test('TEXT that is not UTF-8 crosses real hypercores (a RAW_TEXT entry) and a reset', async (t) => {
  const dir = tmpDir(t)
  const origin = path.join(dir, 'origin.db')
  sqlite3(origin, `PRAGMA journal_mode=WAL; ${RAW}`)
  const p = await sqlitePipeline(t, dir, origin)
  sqlite3(
    origin,
    `INSERT INTO keyed VALUES (CAST(x'ff' AS TEXT), CAST(x'ff' AS TEXT));
     INSERT INTO loose VALUES (CAST(x'ff' AS TEXT), 1);`
  )
  await p.settle()
  assertSame(origin, path.join(dir, 'replica.db'))
})

const KEYLESS = `
  CREATE TABLE bare (a, b);
  CREATE TABLE indexed (a, b);
  CREATE INDEX indexed_a ON indexed (a);
  CREATE TABLE uniq (a UNIQUE, b);
`

function gapsAndDuplicates(n: number): string {
  const rows = Array.from({ length: n }, (_, i) => `(${i % 5}, 'r${i % 7}')`).join(', ')
  return `INSERT INTO bare VALUES ${rows}; INSERT INTO indexed VALUES ${rows};
    INSERT INTO uniq VALUES (1, 'one'), (2, 'two'), (3, 'three'), (4, 'four');
    DELETE FROM bare WHERE rowid % 3 = 0; DELETE FROM indexed WHERE rowid % 3 = 0; DELETE FROM uniq WHERE a = 2;`
}

test('VACUUM renumbers rowids of a table without a key: copies stay exact, with and without indexes', async (t) => {
  const dir = tmpDir(t)
  const origin = path.join(dir, 'origin.db')
  sqlite3(origin, `PRAGMA journal_mode=WAL; ${KEYLESS} ${gapsAndDuplicates(40)}`)
  const p = await sqlitePipeline(t, dir, origin)
  const replica = path.join(dir, 'replica.db')
  await p.settle()
  assertSame(origin, replica)

  const before = typeofIn(origin, 'SELECT rowid FROM bare ORDER BY rowid')
  // The hard case: VACUUM and writes by rowid after it, all before capture reads again.
  sqlite3(
    origin,
    `VACUUM;
     DELETE FROM bare WHERE rowid = 2; UPDATE bare SET b = 'moved' WHERE rowid = 5; INSERT INTO bare VALUES (9, 'new');
     UPDATE indexed SET b = 'moved' WHERE rowid = 5;
     REPLACE INTO uniq VALUES (3, 'replaced'); INSERT OR REPLACE INTO uniq VALUES (9, 'nine');`
  )
  const after = typeofIn(origin, 'SELECT rowid FROM bare ORDER BY rowid')
  assert.notDeepEqual(after, before, 'VACUUM did renumber the rowids (the case under test)')
  await p.settle()
  assertSame(origin, replica)

  // Duplicate rows, deleted one at a time, and another VACUUM with nothing after it.
  sqlite3(
    origin,
    `INSERT INTO bare VALUES (7, 'dup'), (7, 'dup'), (7, 'dup');
     DELETE FROM bare WHERE rowid = (SELECT min(rowid) FROM bare WHERE a = 7);
     DELETE FROM bare WHERE a = 0; VACUUM;`
  )
  await p.settle()
  assertSame(origin, replica)
})

test('VACUUM while capture is stopped: the restart resends the tables without a key', async (t) => {
  const dir = tmpDir(t)
  const origin = path.join(dir, 'origin.db')
  sqlite3(origin, `PRAGMA journal_mode=WAL; ${KEYLESS} ${gapsAndDuplicates(30)}`)
  const copy = await Copy.start(origin, path.join(dir, 'replica.db'))
  teardown(t, () => copy.close())
  sqlite3(origin, `DELETE FROM bare WHERE rowid < 4;`)
  await copy.drain()
  await copy.stop()
  sqlite3(origin, `VACUUM; UPDATE bare SET b = 'after' WHERE rowid IN (1, 2, 3); DELETE FROM indexed WHERE rowid = 4;`)
  await copy.reopen()
  assertSame(origin, copy.replicaFile)
  assert.equal(await copy.checkpointMatches(), true)
})

test('sqlite_sequence travels: an order rung up and voided in one transaction still uses its number', async (t) => {
  const dir = tmpDir(t)
  const origin = path.join(dir, 'origin.db')
  sqlite3(
    origin,
    `PRAGMA journal_mode=WAL;
     CREATE TABLE orders (id INTEGER PRIMARY KEY AUTOINCREMENT, item TEXT);
     CREATE TABLE notes (id INTEGER PRIMARY KEY AUTOINCREMENT, v);
     INSERT INTO orders (item) VALUES ('a'), ('b');`
  )
  const copy = await Copy.start(origin, path.join(dir, 'replica.db'))
  teardown(t, () => copy.close())
  assertSame(origin, copy.replicaFile)

  sqlite3(
    origin,
    `BEGIN; INSERT INTO orders (item) VALUES ('voided'); DELETE FROM orders WHERE item = 'voided'; COMMIT;`
  )
  await copy.drain()
  assertSame(origin, copy.replicaFile)
  assert.deepEqual(dumpExact(copy.replicaFile)['(sqlite_sequence)'].rows, ['orders|3'])

  // Only the sequence moves (an application's own bump), and a table resend (schema change) keeps it.
  sqlite3(origin, `UPDATE sqlite_sequence SET seq = 100 WHERE name = 'orders'; INSERT INTO notes (v) VALUES (1);`)
  await copy.drain()
  sqlite3(origin, `ALTER TABLE orders ADD COLUMN qty DEFAULT 1;`)
  await copy.drain()
  assertSame(origin, copy.replicaFile)
  assert.deepEqual(dumpExact(copy.replicaFile)['(sqlite_sequence)'].rows, ['notes|1', 'orders|100'])

  // Restarted capture sends the sequences again (idempotent).
  await copy.stop()
  sqlite3(origin, `BEGIN; INSERT INTO orders (item) VALUES ('x'); DELETE FROM orders WHERE item = 'x'; COMMIT;`)
  await copy.reopen()
  assertSame(origin, copy.replicaFile)
  assert.deepEqual(dumpExact(copy.replicaFile)['(sqlite_sequence)'].rows, ['notes|1', 'orders|101'])
})

test("mesh verify's diff tells TEXT that is not UTF-8 apart by its bytes", async (t) => {
  const dir = tmpDir(t)
  const [mine, truth] = [path.join(dir, 'mine.db'), path.join(dir, 'truth.db')]
  sqlite3(mine, `CREATE TABLE k (id INTEGER PRIMARY KEY, v); INSERT INTO k VALUES (1, CAST(x'fe' AS TEXT));`)
  sqlite3(truth, `CREATE TABLE k (id INTEGER PRIMARY KEY, v); INSERT INTO k VALUES (1, CAST(x'ff' AS TEXT));`)
  const diff = await sqliteEngine.diff(mine, truth)
  assert.deepEqual(
    diff.map((d) => [d.table, d.changed]),
    [['k', 1]]
  )
})

test('a batch read in parts keeps TEXT that is not UTF-8 by its bytes and carries sqlite_sequence', async (t) => {
  const dir = tmpDir(t)
  const origin = path.join(dir, 'origin.db')
  sqlite3(
    origin,
    `PRAGMA journal_mode=WAL; ${RAW}
     CREATE TABLE orders (id INTEGER PRIMARY KEY AUTOINCREMENT, note TEXT);`
  )
  // A small unit budget: a batch of over a thousand changed keys is read, appended and applied in parts.
  const p = await sqlitePipeline(t, dir, origin, { unitMemoryBytes: 256 * 1024 })
  const many = Array.from(
    { length: 3000 },
    (_, i) => `(CAST(x'ff${(i % 256).toString(16).padStart(2, '0')}' AS TEXT) || '${i}', ${i})`
  )
  sqlite3(
    origin,
    `BEGIN;
     INSERT INTO loose VALUES ${many.join(', ')};
     INSERT INTO keyed VALUES (CAST(x'c0' AS TEXT), CAST(x'ff' AS TEXT));
     INSERT INTO orders (note) SELECT 'order ' || value FROM generate_series(1, 2000);
     INSERT INTO orders (note) VALUES ('voided'); DELETE FROM orders WHERE note = 'voided';
     COMMIT;`
  )
  await p.settle()
  assertSame(origin, path.join(dir, 'replica.db'))
  const seq = (file: string) => typeofIn(file, `SELECT seq FROM sqlite_sequence WHERE name = 'orders'`)
  assert.deepEqual(seq(path.join(dir, 'replica.db')), seq(origin))
})
