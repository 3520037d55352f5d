/**
 * PostgreSQL capture with triggers (`"capture": "triggers"`), the fallback where logical decoding is not
 * allowed: on a cluster with wal_level=replica, every change reaches the replica, type for type; a
 * transaction still open while a read is acknowledged is not lost; truncates and new tables follow; and the
 * capture lag it reports.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import path from 'node:path'
import pg from 'pg'
import { PostgresTriggerCapture } from '../adapters/index.ts'
import { tmpDir } from './helpers/db.ts'
import { waitUntil } from './helpers/mesh.ts'
import { pgCluster } from './helpers/pg.ts'
import { captureLoop, openLog, pgPipeline } from './helpers/pipeline.ts'
import { teardown } from './helpers/teardown.ts'

test(
  'trigger capture on a server without logical decoding: rows, types, an open transaction, truncate, new ' + 'tables',
  async (t) => {
    const { capture, origin, run, same, change } = await pgPipeline(t, {
      cluster: { conf: ['wal_level = replica'] },
      capture: (url) => new PostgresTriggerCapture({ url }),
      // Trigger capture needs a primary key: the table without one is left out.
      notCarried: ['public.nokey'],
      init: `CREATE TYPE mood AS ENUM ('sad', 'ok');
     CREATE TABLE items (id serial PRIMARY KEY, name text, price numeric(10,2), at timestamptz, tags text[], doc jsonb,
       m mood, raw bytea);
     CREATE TABLE ts_key (k timestamptz PRIMARY KEY, v int);
     CREATE TABLE nokey (x int);
     INSERT INTO items (name, price, at, tags, doc, m, raw)
       SELECT 'item ' || g, g * 1.5, '2026-01-01 10:00:00.123456+02', '{a,"b c",NULL}',
              '{"k": [1, 2.50]}', 'ok', '\\x00ff'
         FROM generate_series(1, 100) g;
     INSERT INTO ts_key VALUES ('2026-03-04 05:06:07.891+00', 1);`
    })
    await t.test('the initial copy leaves out the table with no primary key, and names the reason', async () => {
      await same('the initial copy')
      assert.deepEqual(capture.skipped(), [
        {
          table: 'public.nokey',
          reason:
            'it has no primary key, which trigger capture needs to find its rows (add one, or use logical decoding)'
        }
      ])
    })

    await change(
      'updates, deletes, a key change, a timestamp key',
      `UPDATE items SET price = price * 2, tags = '{"x,y"}' WHERE id <= 10; DELETE FROM items WHERE id > ` +
        `90; UPDATE items SET id = 1000 WHERE id = 50; UPDATE ts_key SET v = 2`
    )

    await t.test(
      'a transaction open while a read is taken and acknowledged still arrives once it commits',
      async () => {
        const slow = new pg.Client({ connectionString: origin })
        slow.on('error', () => {})
        teardown(t, () => slow.end())
        await slow.connect()
        await slow.query(`BEGIN; INSERT INTO items (name) VALUES ('slow')`)
        await run(`INSERT INTO items (name) VALUES ('fast')`)
        await same('a later transaction commits first')
        await slow.query('COMMIT')
        await slow.end()
        await same('the slow transaction arrives after it commits')
      }
    )

    await change(
      'truncate then insert',
      `BEGIN; TRUNCATE items; INSERT INTO items (name) VALUES ('after truncate'); COMMIT`
    )

    await t.test('a table created while capturing is sent whole, and followed after', async () => {
      await run(`CREATE TABLE later (id int PRIMARY KEY, v text); INSERT INTO later VALUES (1, 'one'), (2, 'two')`)
      await new Promise((r) => setTimeout(r, 1200))
      await same('a table created while capturing is sent whole')
      await run(`UPDATE later SET v = 'uno' WHERE id = 1`)
      await same('and followed after')
    })

    await t.test('the catalogs are read again only after they changed, and every change of shape follows', async () => {
      const side = capture as PostgresTriggerCapture
      await same('settled')
      // The capture loop polls every 5 ms and looks for new tables every second: none of that reads the schema.
      // What the step before did may still move the catalogs once (the capture triggers it puts on the new
      // table), so: a window of 1.2 s (some 240 polls) without a read must come, and soon. A capture that read the
      // schema on every poll never gets one.
      let idle = side.catalogReads
      await waitUntil(
        'idle polls use the schema read before',
        async () => {
          const before = side.catalogReads
          await new Promise((r) => setTimeout(r, 1200))
          idle = side.catalogReads
          return idle === before
        },
        30_000
      )
      await run(`UPDATE later SET v = 'one again' WHERE id = 1`)
      await same('a row change, with the schema as it was')
      assert.equal(side.catalogReads, idle, 'a row change does not read the schema either')
      await run(
        `ALTER TABLE later ADD COLUMN note text DEFAULT 'none'; CREATE INDEX later_v ON later (v);
         INSERT INTO later VALUES (3, 'three', 'a note')`
      )
      await same('a column, a default and an index added')
      assert.ok(side.catalogReads > idle, 'the schema was read again')
      await run(`ALTER TABLE later ALTER COLUMN v TYPE varchar(40); UPDATE later SET v = 'dos' WHERE id = 2`)
      await same('a column type changed')
      await run(`ALTER TABLE later ALTER COLUMN note SET DEFAULT 'later'; INSERT INTO later (id) VALUES (4)`)
      await same('a default changed')
    })
  }
)

test('trigger capture lag: the change rows the log lacks and since when, then zero once it holds them', async (t) => {
  const cluster = await pgCluster(t, { conf: ['wal_level = replica'] })
  const url = await cluster.createDatabase('origin')
  await cluster.query('CREATE TABLE orders (id int PRIMARY KEY, item text)', [], 'origin')
  const { store, log } = await openLog(path.join(tmpDir(t), 'store'))
  const side = new PostgresTriggerCapture({ url })
  const loop = captureLoop(side, log)
  teardown(t, async () => {
    await side.close()
    await store.close()
  })
  await loop.prepare()
  while ((await loop.step()) > 0);
  assert.deepEqual(await side.lag(), { bytes: 0, seconds: 0 }, 'caught up')

  await cluster.query(`INSERT INTO orders SELECT i, 'item ' || i FROM generate_series(1, 1000) i`, [], 'origin')
  await new Promise((resolve) => setTimeout(resolve, 1100))
  const behind = (await side.lag())!
  const stored = await cluster.query('SELECT sum(pg_column_size(c.*)) AS b FROM _mesh.changes c', [], 'origin')
  assert.equal(behind.bytes, Number(stored[0].b))
  assert.ok(behind.bytes > 1000, `${behind.bytes} bytes behind`)
  assert.ok(behind.seconds >= 1, `${behind.seconds} s behind`)

  const batch = (await side.read())!
  assert.equal(batch.rows, 1000)
  assert.ok((await side.lag())!.bytes > 0, 'read but not in the log yet: still behind')
  await side.ack(batch.source)
  assert.deepEqual(await side.lag(), { bytes: 0, seconds: 0 }, 'the log holds it')

  await cluster.query(`UPDATE orders SET item = 'changed' WHERE id = 1`, [], 'origin')
  while ((await loop.step()) > 0);
  assert.deepEqual(await side.lag(), { bytes: 0, seconds: 0 }, 'captured by the loop')
})
