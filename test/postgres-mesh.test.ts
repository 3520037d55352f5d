/**
 * PostgreSQL sites in a real mesh: `mesh init`/`mesh join --postgres URL`, nodes as their own processes on a
 * loopback DHT testnet, each site with its own PostgreSQL cluster. A real client (pgbench, 4 clients)
 * writes at the origin; every pgbench table at the replica must equal the origin's, row for row, including
 * when the origin's node is SIGKILLed and restarted in the middle of the run.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import path from 'node:path'
import fs from 'node:fs'
import { dump, openWal, tmpDir } from './helpers/db.ts'
import { mesh, sqliteSite, testnet, waitUntil } from './helpers/mesh.ts'
import { type PgSite, pgSite, twoPgSites } from './helpers/pg-mesh.ts'
import { pgDump } from './helpers/pg.ts'

/** pgbench in the background; resolves with its output when it ends. */
function pgbench(site: PgSite, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const isRoot = process.getuid?.() === 0
    const exe = path.join(site.cluster.bin, 'pgbench')
    const [cmd, argv] = isRoot ? ['runuser', ['-u', 'postgres', '--', exe, ...args]] : [exe, args]
    const p = spawn(cmd, argv, {
      env: { ...process.env, PGHOST: '127.0.0.1', PGPORT: String(site.cluster.port), PGUSER: 'postgres' }
    })
    let out = ''
    p.stdout.on('data', (d) => (out += d))
    p.stderr.on('data', (d) => (out += d))
    p.on('exit', (code) =>
      code === 0 ? resolve(out) : reject(new Error(`pgbench ${args.join(' ')} failed (${code}):\n${out}`))
    )
  })
}

test(
  'pgbench at a PostgreSQL origin: the replica equals the origin, also when the origin node is SIGKILLed ' + 'mid-run',
  async (t) => {
    const { a, b } = await twoPgSites(t)
    const equal = async (what: string) => {
      await waitUntil(`${what}: b's replica equals a's database`, () => b.holdsExactly(a), 120_000, 500).catch(
        (err) => {
          throw new Error(
            `${err.message}\n--- a\n${a.node?.lines.slice(-12).join('\n')}\n--- ` +
              `b\n${b.node?.lines.slice(-8).join('\n')}`
          )
        }
      )
    }
    const onReplica = (sql: string) => b.cluster.query(sql, [], new URL(b.replicaUrl(a)).pathname.slice(1))
    const statusOf = async () =>
      JSON.parse((await mesh(['status', '--dir', b.dir, '--json'])).stdout).datasets.find(
        (x: { originSite: string }) => x.originSite === 'a'
      )
    let dump: Awaited<ReturnType<typeof pgDump>>

    await t.test('rows that predate the mesh reach the replica through the initial copy', async () => {
      a.cluster.run('pgbench', ['-i', '-s', '1', '-q', 'shop'])
      await a.init()
      await a.start()
      await b.join(await a.invite())
      await b.start()
      await equal('after the initial copy')
      const counts = await pgDump(b.replicaUrl(a))
      assert.equal(counts['public.pgbench_accounts'].rows.length, 100_000)
    })

    await t.test('after 2,000 pgbench transactions from 4 clients, the replica equals the origin', async () => {
      await pgbench(a, ['-c', '4', '-j', '2', '-t', '500', '-n', 'shop'])
      await equal('after 2,000 pgbench transactions')
    })

    await t.test("with the origin's node SIGKILLed mid-run, every transaction is in both exactly once", async () => {
      const run = pgbench(a, ['-c', '4', '-j', '2', '-t', '1000', '-n', 'shop'])
      await new Promise((r) => setTimeout(r, 1000))
      await a.stop('SIGKILL')
      await new Promise((r) => setTimeout(r, 500))
      await a.start()
      await run
      await equal('after 4,000 more transactions with the origin node SIGKILLed and restarted')
      dump = await pgDump(a.url)
      assert.equal(dump['public.pgbench_history'].rows.length, 6000, 'every pgbench transaction is in the origin')
      const replica = await pgDump(b.replicaUrl(a))
      assert.equal(replica['public.pgbench_history'].rows.length, 6000, 'and each is in the replica exactly once')
    })

    await t.test('the history restored into an empty database equals the origin, from start or snapshot', async () => {
      // From the start: b's node stopped, and any snapshot it took by itself set aside for this restore (the
      // first is taken about a minute after a node starts, which a slow run reaches before this step).
      await b.stop()
      const snapshots = path.join(b.dir, 'snapshots')
      const aside = `${snapshots}.aside`
      if (fs.existsSync(snapshots)) fs.renameSync(snapshots, aside)
      const restoredFromStart = await b.cluster.createDatabase('restored_from_start')
      let rr = await mesh(
        ['restore', a.datasetId(), '--at', 'now', '--to', restoredFromStart, '--dir', b.dir, '--json'],
        { timeoutMs: 180_000 }
      )
      assert.equal(rr.code, 0, rr.stderr)
      assert.equal(JSON.parse(rr.stdout).from, 0)
      assert.deepEqual(await pgDump(restoredFromStart), dump, 'the database restored from the start equals the origin')
      fs.rmSync(snapshots, { recursive: true, force: true })
      if (fs.existsSync(aside)) fs.renameSync(aside, snapshots)
      // b takes a snapshot each second from here; the default is daily.
      const cfgFile = path.join(b.dir, 'config.json')
      fs.writeFileSync(
        cfgFile,
        JSON.stringify({
          ...JSON.parse(fs.readFileSync(cfgFile, 'utf8')),
          snapshots: { everySeconds: 1, keepDaily: 14, keepWeekly: 8, keepMonthly: 12 }
        })
      )
      await b.start()
      const snapDir = path.join(b.dir, 'snapshots', a.datasetId())
      await waitUntil(
        'b took a snapshot of the PostgreSQL dataset',
        () => fs.existsSync(snapDir) && fs.readdirSync(snapDir).some((f) => f.endsWith('.pgdump')),
        120_000,
        500
      )
      await waitUntil(
        'the scratch database it was built in is gone',
        async () =>
          (await b.cluster.query(`SELECT datname FROM pg_database WHERE datname LIKE 'mesh_snapshot%'`)).length === 0,
        30_000,
        200
      )
      const restored = await b.cluster.createDatabase('restored')
      rr = await mesh(['restore', a.datasetId(), '--at', 'now', '--to', restored, '--dir', b.dir, '--json'], {
        timeoutMs: 180_000
      })
      assert.equal(rr.code, 0, rr.stderr)
      assert.ok(JSON.parse(rr.stdout).from > 0, `restored from a snapshot: ${rr.stdout}`)
      assert.deepEqual(await pgDump(restored), dump, 'the restored database equals the origin')
      assert.deepEqual(
        await b.cluster.query(`SELECT count(*) AS n FROM pg_namespace WHERE nspname = '_mesh'`, [], 'restored'),
        [{ n: '0' }],
        'a plain database'
      )
    })

    let at = 0
    await t.test("a checkpoint on request goes into the log, and b's copy matches it and verifies equal", async () => {
      const cp = await mesh(['checkpoint', a.datasetId(), '--dir', a.dir, '--json'], { timeoutMs: 180_000 })
      assert.equal(cp.code, 0, cp.stderr)
      at = JSON.parse(cp.stdout).seq
      assert.equal(JSON.parse(cp.stdout).rows, 100_000 + 10 + 1 + 6000)
      await waitUntil(
        "b's copy matches a's checkpoint",
        async () => (await statusOf())?.checkpoint?.seq === at,
        60_000,
        500
      )
      assert.equal((await statusOf()).checkpoint.ok, true)
      const v = await mesh(['verify', a.datasetId(), '--dir', b.dir, '--json'], { timeoutMs: 180_000 })
      assert.equal(v.code, 0, v.stdout + v.stderr)
    })

    await t.test("changes to b's copy show at the next checkpoint; verify names them, repair mends them", async () => {
      // Someone changes b's copy directly: a balance, a deleted account, a duplicated history row (no key).
      await onReplica(
        `UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 5; DELETE FROM pgbench_accounts WHERE aid = 9;
       INSERT INTO pgbench_history SELECT * FROM pgbench_history LIMIT 1`
      )
      const cp = await mesh(['checkpoint', a.datasetId(), '--dir', a.dir, '--json'], { timeoutMs: 180_000 })
      at = JSON.parse(cp.stdout).seq
      await waitUntil(
        "b's copy compared itself with the next checkpoint",
        async () => (await statusOf())?.checkpoint?.seq === at,
        60_000,
        500
      )
      assert.equal((await statusOf()).checkpoint.ok, false, 'the checkpoint shows the damage')
      let v = await mesh(['verify', a.datasetId(), '--dir', b.dir, '--json'], { timeoutMs: 180_000 })
      assert.equal(v.code, 2, v.stdout + v.stderr)
      const found = JSON.parse(v.stdout)
      assert.deepEqual(
        found.tables
          .map((x: { table: string; missing: number; extra: number; changed: number }) => [
            x.table,
            x.missing,
            x.extra,
            x.changed
          ])
          .sort(),
        [
          ['public.pgbench_accounts', 1, 0, 1],
          ['public.pgbench_history', 0, 1, 0]
        ]
      )
      assert.deepEqual(found.tables.find((x: { table: string }) => x.table === 'public.pgbench_accounts').keys.sort(), [
        '5',
        '9'
      ])
      assert.equal(found.parted.firstDiffers, at)
      v = await mesh(['repair', a.datasetId(), '--dir', b.dir, '--json'], { timeoutMs: 180_000 })
      assert.equal(v.code, 0, v.stdout + v.stderr)
      assert.equal(JSON.parse(v.stdout).repaired, true)
      assert.equal(await b.holdsExactly(a), true, 'the repaired copy equals the origin')
      assert.deepEqual(
        await b.cluster.query(`SELECT count(*) AS n FROM pg_database WHERE datname LIKE 'mesh_verify%'`),
        [{ n: '0' }],
        'the scratch database is gone'
      )
    })

    await t.test('a mass delete through the application is flagged at b', async () => {
      await a.cluster.query(`DELETE FROM pgbench_history WHERE delta <> 0 OR delta = 0`, [], 'shop')
      await waitUntil(
        'b flags the mass delete',
        async () => {
          const r = await mesh(['status', '--dir', b.dir, '--json'])
          const d = JSON.parse(r.stdout).datasets.find((x: { originSite: string }) => x.originSite === 'a')
          return (
            d?.damage?.some(
              (x: { table: string; changed: number; before: number }) =>
                x.table === 'public.pgbench_history' && x.changed === 6000 && x.before === 6000
            ) === true
          )
        },
        60_000,
        500
      )
    })

    await t.test("a column rename stops apply without changing the replica, and b's status says why", async () => {
      // A schema change a replica cannot follow without losing data.
      await a.cluster.query(
        `ALTER TABLE pgbench_branches RENAME COLUMN filler TO note; UPDATE pgbench_branches SET ` +
          `bbalance = bbalance + 1`,
        [],
        'shop'
      )
      await waitUntil(
        "b's status names the unsupported change",
        async () => {
          const r = await mesh(['status', '--dir', b.dir, '--json'])
          const st = JSON.parse(r.stdout)
          const d = st.datasets.find((x: { originSite: string }) => x.originSite === 'a')
          const h = d?.holders.find((x: { site: string }) => x.site === 'b')
          return (
            r.code === 2 &&
            h?.error === 'UNSUPPORTED_DDL' &&
            /filler/.test(h.errorMessage) &&
            st.reasons.some((x: { level: string; text: string }) => x.level === 'CRIT' && /rename/.test(x.text))
          )
        },
        60_000,
        500
      )
      const stopped = await pgDump(b.replicaUrl(a))
      assert.deepEqual(
        stopped['public.pgbench_branches'].columns.map((c) => c.split(' ')[0]),
        ['bid', 'bbalance', 'filler'],
        'the replica was not changed'
      )
    })
  }
)

test(
  'a mixed mesh: a SQLite site without a PostgreSQL server holds the PostgreSQL log, and a PostgreSQL ' +
    'site keeps a SQLite replica',
  async (t) => {
    const dir = tmpDir(t, 'mesh-pgmix-')
    const bootstrap = await testnet(t)
    const a = await pgSite(t, dir, 'a', bootstrap)
    const c = sqliteSite(t, dir, 'c', bootstrap)
    await a.cluster.query(
      `CREATE TABLE notes (id int PRIMARY KEY, body text); INSERT INTO notes SELECT g, 'note ' || g FROM ` +
        `generate_series(1, 500) g`,
      [],
      'shop'
    )
    await a.init()
    await a.start()
    await c.join(await a.invite())
    await c.start()
    const db = openWal(c.db)
    db.prepare(`INSERT INTO events (at, note) VALUES (1.5, 'from the sqlite site')`).run()
    db.close()
    const aReplica = () => {
      const f = fs.readdirSync(path.join(a.dir, 'replicas')).find((n) => n.startsWith('c-') && n.endsWith('.db'))
      return f ? path.join(a.dir, 'replicas', f) : null
    }
    await waitUntil(
      "a's SQLite replica of c equals c",
      () => {
        const f = aReplica()
        return f !== null && JSON.stringify(dump(f)) === JSON.stringify(dump(c.db))
      },
      60_000,
      300
    )
    await waitUntil(
      "c holds all of a's log and warns that it keeps no warm copy",
      async () => {
        const st = await c.status()
        const d = st.datasets.find((x) => x.originSite === 'a')
        const origin = d?.holders.find((h) => h.site === 'a')
        const mine = d?.holders.find((h) => h.site === 'c')
        return (
          st.verdict !== 'CRIT' &&
          mine?.error === 'NO_REPLICA_SERVER' &&
          origin !== undefined &&
          mine.downloaded !== null &&
          mine.downloaded > 3 &&
          mine.downloaded === origin.downloaded &&
          st.reasons.some((r) => r.level === 'WARN' && /no PostgreSQL server for replicas/.test(r.text))
        )
      },
      60_000,
      500
    )
  }
)

test(
  'mesh verify and mesh repair of a PostgreSQL copy: identity columns, composite keys, a table without a ' +
    'key, a row of text that sorts differently by collation',
  async (t) => {
    const { a, b } = await twoPgSites(t)
    let id = ''

    await t.test("b's copy equals a and verifies equal", async () => {
      await a.cluster.query(
        `CREATE TABLE tickets (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, note text);
       CREATE TABLE stock (shop text, sku text, qty int, PRIMARY KEY (shop, sku));
       CREATE TABLE visits (at int, who text);
       INSERT INTO tickets (note) SELECT 'ticket ' || g FROM generate_series(1, 300) g;
       INSERT INTO stock SELECT 'shop ' || (g % 3), 'Ärger-' || g, g FROM generate_series(1, 300) g;
       INSERT INTO stock VALUES ('a', 'Z', 1), ('a', 'a', 2), ('a', 'É', 3);
       INSERT INTO visits SELECT g % 50, 'visitor' FROM generate_series(1, 200) g;`,
        [],
        'shop'
      )
      await a.init()
      await a.start()
      await b.join(await a.invite())
      await b.start()
      await waitUntil("b's copy equals a", () => b.holdsExactly(a), 90_000, 300)
      id = a.datasetId()
      const v = await mesh(['verify', id, '--dir', b.dir, '--json'], { timeoutMs: 120_000 })
      assert.equal(v.code, 0, v.stdout + v.stderr)
    })

    await t.test("damage behind the mesh's back, in every kind of table, is named by mesh verify", async () => {
      await b.cluster.query(
        `UPDATE tickets SET note = 'forged' WHERE id = 7; DELETE FROM tickets WHERE id = 8;
       DELETE FROM stock WHERE shop = 'a' AND sku = 'É'; INSERT INTO stock VALUES ('x', 'y', 9);
       UPDATE stock SET qty = 0 WHERE sku = 'Ärger-5';
       DELETE FROM visits WHERE ctid IN (SELECT ctid FROM visits WHERE at = 3 LIMIT 1);
       INSERT INTO visits VALUES (99, 'intruder');`,
        [],
        new URL(b.replicaUrl(a)).pathname.slice(1)
      )
      const v = await mesh(['verify', id, '--dir', b.dir, '--json'], { timeoutMs: 120_000 })
      assert.equal(v.code, 2, v.stdout + v.stderr)
      const found = JSON.parse(v.stdout)
      assert.deepEqual(
        found.tables
          .map((x: { table: string; missing: number; extra: number; changed: number }) => [
            x.table,
            x.missing,
            x.extra,
            x.changed
          ])
          .sort(),
        [
          ['public.stock', 1, 1, 1],
          ['public.tickets', 1, 0, 1],
          ['public.visits', 1, 1, 0]
        ]
      )
      assert.deepEqual(found.tables.find((x: { table: string }) => x.table === 'public.stock').keys.sort(), [
        'a, É',
        'shop 2, Ärger-5',
        'x, y'
      ])
    })

    await t.test('mesh repair mends the copy, and it goes on following', async () => {
      const v = await mesh(['repair', id, '--dir', b.dir, '--json'], { timeoutMs: 120_000 })
      assert.equal(v.code, 0, v.stdout + v.stderr)
      assert.equal(await b.holdsExactly(a), true, 'the repaired copy equals the origin')
      await a.cluster.query(`INSERT INTO tickets (note) VALUES ('after the repair')`, [], 'shop')
      await waitUntil('b follows a after the repair', () => b.holdsExactly(a), 60_000, 300)
    })
  }
)
