/**
 * Bad input around PostgreSQL: every one a clear error with what to do, and nothing partly done. Each test
 * starts its own throwaway cluster.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { PostgresCapture } from '../adapters/index.ts'
import { tmpDir } from './helpers/db.ts'
import { MESH, mesh, waitUntil } from './helpers/mesh.ts'
import { pgCluster, pgDump } from './helpers/pg.ts'
import { pgPipeline } from './helpers/pipeline.ts'
import { nodeProcess, type TestContext } from './helpers/teardown.ts'

test(
  'mesh init refuses a bad URL, a wrong password, a missing database and a server without logical ' +
    'decoding, and creates nothing',
  async (t) => {
    const cluster = await pgCluster(t)
    const plain = await pgCluster(t, { conf: ['wal_level = replica'] })
    const dir = tmpDir(t)
    await cluster.createDatabase('shop')
    await plain.createDatabase('shop')
    // A user that must give a password (scram), ahead of the cluster's trust rule.
    await cluster.query(`CREATE ROLE app LOGIN REPLICATION PASSWORD 'right-password'`)
    const hba = path.join(cluster.dir, 'data', 'pg_hba.conf')
    fs.writeFileSync(hba, `host all app 127.0.0.1/32 scram-sha-256\n${fs.readFileSync(hba, 'utf8')}`)
    await cluster.query('SELECT pg_reload_conf()')

    const init = (url: string) =>
      mesh(['init', '--dir', path.join(dir, 'site'), '--site', 'a', '--postgres', url, '--bootstrap', '127.0.0.1:1'])
    const cases: Array<{ url: string; code: string; hint: RegExp }> = [
      { url: 'not a url', code: 'BAD_URL', hint: /postgres:\/\/USER/ },
      { url: `postgres://postgres@127.0.0.1:${cluster.port}/`, code: 'BAD_URL', hint: /database name/ },
      {
        url: `postgres://app:wrong-password@127.0.0.1:${cluster.port}/shop`,
        code: 'PG_AUTH',
        hint: /user and password/
      },
      { url: `postgres://postgres@127.0.0.1:${cluster.port}/nosuchdb`, code: 'PG_NO_DATABASE', hint: /database name/ },
      { url: `postgres://postgres@127.0.0.1:${plain.port}/shop`, code: 'CANNOT_CAPTURE', hint: /Nothing was created/ },
      { url: `postgres://postgres@127.0.0.1:1/shop`, code: 'PG_UNREACHABLE', hint: /running/ }
    ]
    for (const c of cases) {
      const r = await init(c.url)
      assert.equal(r.code, 1, `${c.url}: exit code 1\n${r.stderr}`)
      assert.match(r.stderr, new RegExp(`mesh: ${c.code}: `), c.url)
      assert.match(r.stderr, c.hint, c.url)
      assert.doesNotMatch(r.stderr, /wrong-password/, 'a password is never printed')
      assert.equal(fs.existsSync(path.join(dir, 'site')), false, `${c.code}: no data directory is left behind`)
    }
    const r = await init(`postgres://postgres@127.0.0.1:${plain.port}/shop`)
    assert.match(r.stderr, /wal_level is replica: run ALTER SYSTEM SET wal_level = logical/)
    assert.deepEqual(await plain.query(`SELECT slot_name FROM pg_replication_slots`), [], 'no slot was created')

    // The right password works, and the slot and publication exist afterwards.
    const ok = await init(`postgres://app:right-password@127.0.0.1:${cluster.port}/shop`)
    assert.equal(ok.code, 1, 'app is no superuser: it cannot create the publication FOR ALL TABLES')
    assert.match(ok.stderr, /only a superuser can create the publication/)
    await cluster.query(`CREATE PUBLICATION branchmesh_x FOR ALL TABLES`, [], 'shop')
    const good = await mesh([
      'init',
      '--dir',
      path.join(dir, 'site'),
      '--site',
      'a',
      '--postgres',
      `postgres://postgres@127.0.0.1:${cluster.port}/shop`,
      '--bootstrap',
      '127.0.0.1:1'
    ])
    assert.equal(good.code, 0, good.stderr)
    assert.match(
      good.stdout,
      /max_slot_wal_keep_size is unlimited/,
      'init warns that an absent node may hold WAL without limit'
    )
    const id = JSON.parse(fs.readFileSync(path.join(dir, 'site', 'config.json'), 'utf8')).datasets[0].id
    assert.equal(
      (
        await cluster.query(`SELECT count(*) AS n FROM pg_replication_slots WHERE slot_name = $1`, [`branchmesh_${id}`])
      )[0].n,
      '1'
    )
    assert.equal(
      fs.statSync(path.join(dir, 'site', 'config.json')).mode & 0o777,
      0o600,
      'config.json (it may hold a password) is 0600'
    )
  }
)

/** A pipeline whose origin starts with `init`, captured by logical decoding through the slot branchmesh_e. */
function pipeline(t: TestContext, init: string) {
  const capture = (url: string) => new PostgresCapture({ url, slot: 'branchmesh_e', publication: 'branchmesh_e' })
  return pgPipeline(t, { init, capture })
}

test('a slot dropped behind the mesh: the whole database is copied again, and the replica ends equal', async (t) => {
  const { cluster, origin, replicaUrl, p } = await pipeline(
    t,
    `CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 100) g`
  )
  await p.settle()
  // Someone ends the node's replication connection and drops the slot before it reconnects.
  await waitUntil(
    'the slot is dropped',
    async () => {
      const r = await cluster
        .query(
          `SELECT pg_terminate_backend(active_pid, 5000) FROM pg_replication_slots WHERE slot_name = ` +
            `'branchmesh_e' AND active; SELECT pg_drop_replication_slot('branchmesh_e') AS x`,
          [],
          'origin'
        )
        .catch(() => null)
      return r !== null
    },
    10_000,
    5
  )
  // Changes made while no slot exists are not in any slot; the new copy has them.
  await cluster.query(`UPDATE t SET v = 'lost by the slot' WHERE id <= 10; DELETE FROM t WHERE id > 90`, [], 'origin')
  await waitUntil('capture copied the database again', () => p.capture.stats.resnapshots === 1, 30_000)
  await cluster.query(`INSERT INTO t VALUES (1000, 'after')`, [], 'origin')
  await p.settle()
  assert.deepEqual(await pgDump(replicaUrl), await pgDump(origin))
})

test('a type the mesh cannot carry: the table is left out with the reason, the rest is protected', async (t) => {
  const { origin, replicaUrl, capture, p, cluster } = await pipeline(
    t,
    `CREATE DOMAIN positive AS int CHECK (VALUE > 0);
     CREATE TABLE odd (id int PRIMARY KEY, n positive);
     CREATE TABLE fine (id int PRIMARY KEY);
     INSERT INTO fine VALUES (1); INSERT INTO odd VALUES (1, 5);`
  )
  await p.settle()
  assert.deepEqual(capture.skipped(), [
    {
      table: 'public.odd',
      reason: 'column n has the domain type positive, which a replica cannot create; use the base type'
    }
  ])
  const rep = await pgDump(replicaUrl)
  assert.deepEqual(Object.keys(rep), ['public.fine'])
  assert.deepEqual(rep['public.fine'], (await pgDump(origin))['public.fine'])
  assert.ok(cluster)
})

test(
  'the origin database disappears: capture stops with PG_NO_DATABASE and its hint; the replica keeps ' +
    'every applied change',
  async (t) => {
    const { cluster, replicaUrl, p } = await pipeline(
      t,
      `CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 10)`
    )
    await p.settle()
    const before = await pgDump(replicaUrl)
    // Someone drops it: the node's replication connection has to be ended first (PostgreSQL refuses while a
    // slot of the database is active).
    await waitUntil(
      'the database is dropped',
      async () => {
        await cluster.query(
          `SELECT pg_terminate_backend(active_pid, 5000) FROM pg_replication_slots WHERE database = 'origin' AND active`
        )
        const r = await cluster.query(`DROP DATABASE origin WITH (FORCE)`).catch(() => null)
        return r !== null
      },
      10_000,
      5
    )
    await waitUntil('capture stops', () => p.capture.stats.lastError?.code === 'PG_NO_DATABASE', 30_000)
    assert.match(p.capture.stats.lastError!.hint ?? '', /database name|restore/)
    assert.deepEqual(await pgDump(replicaUrl), before)
    assert.equal(before['public.t'].rows.length, 10)
  }
)

test(
  'mesh status warns, with the node off, when the origin slot keeps WAL piling up ' + 'on the database server',
  async (t) => {
    const cluster = await pgCluster(t)
    const dir = tmpDir(t)
    const url = await cluster.createDatabase('shop')
    const site = path.join(dir, 'site')
    const init = await mesh(['init', '--dir', site, '--site', 'a', '--postgres', url, '--bootstrap', '127.0.0.1:1'])
    assert.equal(init.code, 0, init.stderr)
    // The node runs once (its dataset is in the mesh, the initial copy in the log), then the PC is switched off.
    const node = nodeProcess(t, [MESH, 'start', '--dir', site, '--log-json'], 'the node')
    await node.waitLine(/initial snapshot written/, 60_000)
    await node.kill('SIGTERM')
    const cfgFile = path.join(site, 'config.json')
    const cfg = JSON.parse(fs.readFileSync(cfgFile, 'utf8'))
    cfg.status.walWarnMB = 4
    fs.writeFileSync(cfgFile, JSON.stringify(cfg))
    const statusOf = async () => {
      const r = await mesh(['status', '--dir', site, '--json'])
      return { code: r.code, s: JSON.parse(r.stdout) }
    }
    const before = await statusOf()
    assert.ok(!before.s.reasons.some((r: { text: string }) => /WAL/.test(r.text)))
    await cluster.query(
      `CREATE TABLE big AS SELECT g AS id, repeat('x', 200) AS pad FROM generate_series(1, 40000) g`,
      [],
      'shop'
    )
    const after = await statusOf()
    const d = after.s.datasets.find((x: { id: string }) => x.id === cfg.datasets[0].id)
    assert.ok(d, `status lists the dataset: ${JSON.stringify(after.s).slice(0, 400)}`)
    assert.ok(d.wal.retainedBytes > 4 * 1024 * 1024, `the slot keeps ${d.wal.retainedBytes} bytes`)
    assert.equal(d.wal.limitBytes, null)
    const reason = after.s.reasons.find((r: { text: string }) => /keeps \d+ MB of WAL/.test(r.text))
    assert.ok(reason, JSON.stringify(after.s.reasons))
    assert.equal(reason.level, 'WARN')
    assert.match(reason.text, /max_slot_wal_keep_size is unlimited/)
    assert.notEqual(after.code, 0)
  }
)

test(
  'a join that fails leaves no slot behind; after init, tables without a primary key keep taking updates ' +
    'and deletes',
  async (t) => {
    const cluster = await pgCluster(t)
    const dir = tmpDir(t)
    const a = await cluster.createDatabase('a')
    const b = await cluster.createDatabase('b')
    await cluster.query(`CREATE TABLE log (at int, what text); INSERT INTO log VALUES (1, 'x')`, [], 'a')
    const init = await mesh([
      'init',
      '--dir',
      path.join(dir, 'a'),
      '--site',
      'a',
      '--postgres',
      a,
      '--bootstrap',
      '127.0.0.1:1'
    ])
    assert.equal(init.code, 0, init.stderr)
    // The publication FOR ALL TABLES exists now: PostgreSQL refuses UPDATE and DELETE on a table without a
    // replica identity, so the application would break without REPLICA IDENTITY FULL.
    await cluster.query(`UPDATE log SET what = 'y'; DELETE FROM log WHERE at = 1`, [], 'a')
    await cluster.query(
      `CREATE TABLE later (n int); INSERT INTO later VALUES (1); UPDATE later SET n = 2; DELETE FROM later`,
      [],
      'a'
    )

    // The inviting node is not running: the join times out, and b's database keeps no slot and no publication.
    const invite = await mesh(['invite', '--dir', path.join(dir, 'a')])
    assert.equal(invite.code, 0, invite.stderr)
    const code = invite.stdout.trim().split('\n').pop()!
    const join = await mesh([
      'join',
      code,
      '--dir',
      path.join(dir, 'b'),
      '--site',
      'b',
      '--postgres',
      b,
      '--bootstrap',
      '127.0.0.1:1',
      '--timeout',
      '2s'
    ])
    assert.notEqual(join.code, 0)
    assert.deepEqual(await cluster.query(`SELECT slot_name FROM pg_replication_slots WHERE database = 'b'`), [])
    assert.deepEqual(await cluster.query(`SELECT pubname FROM pg_publication`, [], 'b'), [])
    assert.equal(fs.existsSync(path.join(dir, 'b')), false)
  }
)
