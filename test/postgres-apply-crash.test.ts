/**
 * A crash of a replica's PostgreSQL server. Apply commits asynchronously (as PostgreSQL's own subscriptions do),
 * so the server's last commits may be lost in a crash: each unit's rows and the replica's position commit in one
 * transaction, so they are lost together, and the node applies them again from its log. Two cases: the crash
 * while the node is applying (it sees the connection break), and a crash it did not see, just before a promotion
 * (promote flushes the replica and reads its position back before it names the branch point).
 *
 * The replica's server runs with wal_writer_delay = 10s, so that its WAL writer does not write the last
 * asynchronous commits out of its buffers within moments: the crash right after a burst then loses them (the
 * node's warning says it did), instead of only when it falls in the default 200 ms window.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import pg from 'pg'
import { promoteOnceLost, waitUntil } from './helpers/mesh.ts'
import { twoPgSites, type PgSite } from './helpers/pg-mesh.ts'
import { pgDump } from './helpers/pg.ts'

/** `n` transactions at the origin, one row changed in each (inserts past `from`, and updates of older rows). */
async function burst(site: PgSite, from: number, n: number): Promise<void> {
  const c = new pg.Client({ connectionString: site.url })
  await c.connect()
  try {
    for (let i = 0; i < n; i++) {
      if (i % 3 === 2) await c.query('UPDATE orders SET n = n + 1 WHERE id = $1', [1 + ((from + i) % 50)])
      else await c.query('INSERT INTO orders (id, n, note) VALUES ($1, $2, $3)', [from + i, i, `burst ${from}`])
    }
  } finally {
    await c.end()
  }
}

const same = async (a: PgSite, b: PgSite) =>
  JSON.stringify(await pgDump(b.replicaUrl(a))) === JSON.stringify(await pgDump(a.url))

test('a PostgreSQL replica whose server crashes after a burst of applied units is completed again', async (t) => {
  const { a, b } = await twoPgSites(t)
  const lost = /the replica database lost its last applied units/

  await t.test("b's replica equals a", async () => {
    await a.cluster.query(
      `CREATE TABLE orders (id int PRIMARY KEY, n int NOT NULL, note text);
       INSERT INTO orders SELECT g, g, 'first' FROM generate_series(1, 100) g;`,
      [],
      'shop'
    )
    await a.init()
    await a.start()
    await b.join(await a.invite())
    await b.start()
    await waitUntil("b's replica equals a", () => same(a, b), 90_000, 300)
    await b.cluster.query(`ALTER SYSTEM SET wal_writer_delay = '10s'`)
    await b.cluster.query('SELECT pg_reload_conf()')
  })

  await t.test('crashed right after a burst: the lost units are applied again and apply carries on', async () => {
    await burst(a, 1000, 300)
    await waitUntil("b's replica equals a after the burst", () => same(a, b), 90_000, 100)
    b.cluster.crash()
    b.cluster.restart()
    // The next unit finds the replica behind where the node had applied to (the crash lost those commits) ...
    await burst(a, 2000, 100)
    await b.node!.waitLine(lost, 60_000)
    // ... and the node applies them again from its log, then what came after.
    await waitUntil("b's replica equals a after the crash", () => same(a, b), 90_000, 200)
  })

  await t.test(
    'crashed unseen just before a promotion: promote flushes first and keeps every applied row',
    async () => {
      await burst(a, 3000, 300)
      await waitUntil("b's replica equals a after the burst", () => same(a, b), 90_000, 100)
      const expected = await pgDump(a.url)
      await a.stop('SIGKILL')
      // b's apply loop is idle (no new blocks can come): it does not see its server go and come back.
      b.cluster.crash()
      b.cluster.restart()
      const id = a.datasetId()
      // The flush finds the replica behind what the node had applied: promote refuses until it is applied again.
      const first = await promoteOnceLost(b.dir, id)
      assert.notEqual(first.code, 0, first.stdout)
      assert.match(first.stdout, /REPLICA_BEHIND/, first.stderr)
      assert.match(first.stdout, /restarted and lost the last \d+ entries/)
      let r = first
      await waitUntil(
        'the promotion goes through',
        async () => (r = await promoteOnceLost(b.dir, id)).code === 0,
        60_000,
        500
      )
      assert.equal(JSON.parse(r.stdout).epoch, 1, r.stderr)
      assert.deepEqual(await pgDump(b.replicaUrl(a)), expected, 'the promoted database holds every row a committed')
    }
  )
})
