/**
 * PostgreSQL capture (pgoutput over a named slot) -> log -> hypercore replication -> PostgreSQL apply, in one
 * process, on a throwaway cluster of its own. The replica's tables must equal the origin's, type for type.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { PostgresCapture } from '../adapters/index.ts'
import { pgDump } from './helpers/pg.ts'
import { pgPipeline } from './helpers/pipeline.ts'
import type { TestContext } from './helpers/teardown.ts'

/** A pipeline whose origin starts with `init`, captured by logical decoding (the catalogs compared on every look). */
function setup(t: TestContext, init: string) {
  const slot = 'branchmesh_test'
  const capture = (url: string) => new PostgresCapture({ url, slot, publication: slot, catalogCheckMs: 0 })
  return pgPipeline(t, { init, capture })
}

const TYPES = `
  CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy ''quoted''');
  CREATE TABLE everything (
    id serial PRIMARY KEY,
    i2 int2, i4 int4, i8 int8,
    num numeric(12, 4), numfree numeric,
    r real, d double precision,
    t text, vc varchar(20), ch char(5),
    b bytea, ok boolean,
    day date, ts timestamp(6), tstz timestamptz, iv interval,
    u uuid, j json, jb jsonb,
    ints int[], texts text[], m mood,
    big text
  );
  CREATE INDEX everything_t ON everything (t);
`

const ROW = (n: number) => `(
  ${n}, -32768, 2147483647, -9223372036854775808,
  12345678.1230, 0.000000000000000000001000,
  3.4028235e38, 0.30000000000000004,
  E'line\\none \\t "quoted" \\\\ é ✓', 'twenty chars long!!!', 'ab',
  '\\x00ff10'::bytea, true,
  '2026-02-28', '1999-12-31 23:59:59.999999', '2026-11-22 01:02:03.456789+05:30', '1 year 2 mons -3 days 04:05:06.789',
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"b": 1,   "a": [1, 2.50, null]}', '{"b": 1, "a": [1, 2.50, null]}',
  '{1,NULL,3}', '{"a b","c,d","e\\"f",NULL}', 'happy ''quoted''',
  NULL)`

test('every type round-trips exactly: existing rows, inserts, updates, deletes, NULLs, TOASTed values', async (t) => {
  const { change, same } = await setup(
    t,
    `${TYPES}
     INSERT INTO everything (id, i2, i4, i8, num, numfree, r, d, t, vc, ch, b, ok, day, ts, tstz, iv, u, j, jb,
                             ints, texts, m, big)
       VALUES ${ROW(1)}, ${ROW(2)};
     INSERT INTO everything (id) VALUES (3);
     SELECT setval('everything_id_seq', 3);`
  )
  await t.test('the initial copy equals the origin', () => same('the initial copy'))
  await change(
    'inserts, updates, deletes and special values',
    `
    INSERT INTO everything (i2, i4, i8, num, numfree, r, d, t, vc, ch, b, ok, day, ts, tstz, iv, u, j, jb, ints, texts,
                            m, big)
      SELECT i2, i4, i8, num, numfree, 'NaN', '-Infinity', t, vc, ch, b, false, 'infinity', ts, tstz, iv,
             gen_random_uuid(), j, jb, ints, texts, 'sad', big
        FROM everything WHERE id = 1;
    UPDATE everything SET d = -0.0, num = -0.5000, r = 1.17549435e-38 WHERE id = 2;
    DELETE FROM everything WHERE id = 3;
    INSERT INTO everything (t) VALUES (NULL);`
  )
  // A value stored out of line (TOAST), then updates that leave it unchanged: pgoutput does not resend it.
  await change(
    'a TOASTed value',
    `UPDATE everything SET big = (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 4000) g) WHERE id = 1`
  )
  await change(
    'updates that leave the TOASTed value unchanged',
    `UPDATE everything SET i4 = 7 WHERE id = 1; UPDATE everything SET i2 = 8 WHERE id = 1`
  )
})

test(
  'tables without a primary key keep their duplicates (REPLICA IDENTITY FULL); sequences stay at or past ' +
    'the origin',
  async (t) => {
    const { change, same, cluster } = await setup(
      t,
      `CREATE TABLE history (tid int, delta int, note text);
     INSERT INTO history VALUES (1, 10, 'x'), (1, 10, 'x'), (2, 20, NULL);
     CREATE SEQUENCE invoice_no START 1000;
     CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, n int DEFAULT nextval('invoice_no'));`
    )
    await t.test('the initial copy keeps the duplicates', () => same('the initial copy with duplicates'))
    await change(
      'duplicates, an update of a keyless row, identity inserts',
      `INSERT INTO history VALUES (1, 10, 'x'); DELETE FROM history WHERE ctid = (SELECT min(ctid) FROM ` +
        `history WHERE tid = 1)`,
      `UPDATE history SET note = 'changed' WHERE tid = 2`,
      `INSERT INTO orders DEFAULT VALUES; INSERT INTO orders DEFAULT VALUES; INSERT INTO orders DEFAULT VALUES`,
      `BEGIN; INSERT INTO history VALUES (9, 9, 'in and out'); DELETE FROM history WHERE tid = 9; COMMIT`
    )
    await t.test("sequences at the replica are at or past the origin's; a duplicated row stays two", async () => {
      const rep = async (sql: string) => (await cluster.query(sql, [], 'replica'))[0]
      const org = async (sql: string) => (await cluster.query(sql, [], 'origin'))[0]
      for (const s of ['invoice_no', 'orders_id_seq']) {
        const o = Number((await org(`SELECT last_value FROM ${s}`)).last_value)
        const r = Number((await rep(`SELECT last_value FROM ${s}`)).last_value)
        assert.ok(r >= o, `${s} at the replica (${r}) is at or past the origin's (${o})`)
      }
      assert.equal((await rep(`SELECT count(*) AS n FROM history WHERE tid = 1`)).n, '2')
    })
  }
)

test(
  'schema changes at the origin reach the replica: new tables, new and dropped columns, type changes, ' +
    'truncate, drop',
  async (t) => {
    const { change, run, same, cluster, p } = await setup(
      t,
      `CREATE TABLE items (id int PRIMARY KEY, name text, price numeric(8,2));
     INSERT INTO items SELECT g, 'item ' || g, g * 1.25 FROM generate_series(1, 50) g;`
    )
    await t.test('the initial copy equals the origin', () => same('before'))
    await change(
      'a column added with a default and no row written since',
      `ALTER TABLE items ADD COLUMN stock int NOT NULL DEFAULT 5`
    )
    await change(
      'a type change',
      `UPDATE items SET stock = 9 WHERE id < 10; ALTER TABLE items ALTER COLUMN price TYPE numeric(10,3); ` +
        `UPDATE items SET price = price + 0.001 WHERE id = 1`
    )
    await change(
      'a dropped column',
      `ALTER TABLE items DROP COLUMN name; INSERT INTO items (id, price) VALUES (100, 1)`
    )
    await change(
      'a new table in a new schema, with quoted names',
      `CREATE SCHEMA shop; CREATE TABLE shop."Customers" ("Name" text PRIMARY KEY, since date); INSERT ` +
        `INTO shop."Customers" VALUES ('Ann', '2020-01-01')`
    )
    await change('a new table with no rows', `CREATE TABLE empty_one (k int PRIMARY KEY)`)
    await change(
      'truncate then insert',
      `BEGIN; TRUNCATE items; INSERT INTO items (id, price, stock) VALUES (1, 2, 3); COMMIT`
    )
    await change('a dropped table', `DROP TABLE empty_one`)
    await change('a renamed table', `ALTER TABLE items RENAME TO goods; INSERT INTO goods (id, price) VALUES (2, 3)`)
    await change(
      'NOT NULL dropped and a new default',
      `ALTER TABLE goods ALTER COLUMN stock DROP NOT NULL, ALTER COLUMN stock SET DEFAULT 11; INSERT INTO ` +
        `goods (id, price, stock) VALUES (4, 1, NULL)`
    )
    await t.test('the replica follows the new DEFAULT and enforces no NOT NULL', async () => {
      const col = await cluster.query(
        `SELECT is_nullable, column_default FROM information_schema.columns WHERE table_name = 'goods' ` +
          `AND column_name = 'stock'`,
        [],
        'replica'
      )
      assert.deepEqual(
        col,
        [{ is_nullable: 'YES', column_default: '11' }],
        'the replica follows the new DEFAULT (and enforces no NOT NULL)'
      )
    })
    await t.test('an idle origin adds nothing to the log, and one insert adds one block', async () => {
      // The catalogs are compared on every idle look here (catalogCheckMs 0): with nothing changing, nothing is
      // written to the log.
      const length = p.originLog.length
      await new Promise((r) => setTimeout(r, 1500))
      await run(`INSERT INTO goods (id, price) VALUES (3, 4)`)
      await same('one more row')
      const added = []
      for (let i = length; i < p.originLog.length; i++) added.push(await p.originLog.entry(i))
      assert.equal(
        p.originLog.length,
        length + 1,
        `an idle origin adds nothing, and one insert adds one block; added: ` +
          JSON.stringify(added, (k, v) => (typeof v === 'bigint' ? String(v) : k === 'source' ? undefined : v)).slice(
            0,
            1500
          )
      )
      assert.ok(cluster)
    })
  }
)

test('a column rename stops apply with UNSUPPORTED_DDL, the replica stays at its last good position', async (t) => {
  const { run, same, p, replicaUrl } = await setup(
    t,
    `CREATE TABLE a (id int PRIMARY KEY, x text); INSERT INTO a VALUES (1, 'one')`
  )
  await same('before')
  const before = await pgDump(replicaUrl)
  await run(`ALTER TABLE a RENAME COLUMN x TO y; UPDATE a SET y = 'uno'`)
  await assert.rejects(
    () => p.settle(),
    (err: Error & { code?: string }) => err.code === 'UNSUPPORTED_DDL' && /rename/.test(err.message)
  )
  assert.deepEqual(await pgDump(replicaUrl), before, 'nothing of the unit was applied')
})

test(
  'foreign keys and unique constraints: the replica has them (deferred to commit) and follows writes in ' + 'any order',
  async (t) => {
    const { change, same, cluster } = await setup(
      t,
      `CREATE TABLE parent (id int PRIMARY KEY, code text UNIQUE);
     CREATE TABLE child (id int PRIMARY KEY, parent int NOT NULL REFERENCES parent (id) ON DELETE CASCADE, note text);
     INSERT INTO parent VALUES (1, 'a'), (2, 'b');
     INSERT INTO child VALUES (10, 1, 'x'), (20, 2, 'y');`
    )
    await t.test('the initial copy equals the origin', () => same('the initial copy'))
    // Codes swapped between two rows, a parent deleted with its children, a new parent and child together.
    await change(
      'swaps, cascades and new rows',
      `BEGIN; UPDATE parent SET code = 'tmp' WHERE id = 1; UPDATE parent SET code = 'a' WHERE id = 2; ` +
        `UPDATE parent SET code = 'b' WHERE id = 1; COMMIT`,
      `DELETE FROM parent WHERE id = 2; BEGIN; INSERT INTO parent VALUES (3, 'c'); INSERT INTO child ` +
        `VALUES (30, 3, 'z'); COMMIT`
    )
    await t.test('the replica has the unique and foreign key constraints, deferrable', async () => {
      const cons = await cluster.query(
        `SELECT conname, contype, condeferrable AS d FROM pg_constraint WHERE conrelid IN ` +
          `('parent'::regclass, 'child'::regclass) AND contype IN ('u', 'f') ORDER BY conname`,
        [],
        'replica'
      )
      assert.deepEqual(cons, [
        { conname: 'child_parent_fkey', contype: 'f', d: 't' },
        { conname: 'parent_code_key', contype: 'u', d: 't' }
      ])
    })
  }
)

test(
  'a transaction larger than the stream buffer, writes on both sides of an ALTER in one transaction, a ' +
    'key change that keeps a TOASTed value',
  async (t) => {
    const { change, same } = await setup(
      t,
      `CREATE TABLE big (id int PRIMARY KEY, v text); CREATE TABLE items (id int PRIMARY KEY, name text); ` +
        `CREATE TABLE docs (id int PRIMARY KEY, body text, n int)`
    )
    await t.test('the initial copy equals the origin', () => same('before'))
    // 250,000 row messages in one transaction: more than the stream keeps before it pauses.
    await change(
      'one transaction of 250,000 rows, then another',
      `INSERT INTO big SELECT g, 'v' || g FROM generate_series(1, 250000) g`,
      `INSERT INTO big VALUES (0, 'after')`
    )
    await change(
      'rows of two shapes in one transaction',
      `BEGIN; INSERT INTO items VALUES (1, 'before the alter'); ALTER TABLE items ADD COLUMN price int; ` +
        `INSERT INTO items VALUES (2, 'after the alter', 5); COMMIT`
    )
    await change(
      'a primary key change that leaves the TOASTed body unchanged',
      `INSERT INTO docs VALUES (1, (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 4000) g), 0)`,
      `UPDATE docs SET id = 2, n = 1 WHERE id = 1`
    )
  }
)
