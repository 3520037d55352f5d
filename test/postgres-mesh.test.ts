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
import { tmpDir } from './helpers/db.ts'
import { startTestnet, waitUntil } from './helpers/mesh.ts'
import { PgSite } from './helpers/pg-mesh.ts'
import { pgDump } from './helpers/pg.ts'

/** pgbench in the background; resolves with its output when it ends. */
function pgbench(site: PgSite, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const isRoot = process.getuid?.() === 0
    const exe = path.join(site.cluster.bin, 'pgbench')
    const [cmd, argv] = isRoot ? ['runuser', ['-u', 'postgres', '--', exe, ...args]] : [exe, args]
    const p = spawn(cmd, argv, { env: { ...process.env, PGHOST: '127.0.0.1', PGPORT: String(site.cluster.port), PGUSER: 'postgres' } })
    let out = ''
    p.stdout.on('data', (d) => (out += d))
    p.stderr.on('data', (d) => (out += d))
    p.on('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`pgbench ${args.join(' ')} failed (${code}):\n${out}`))))
  })
}

async function twoSites(t: import('node:test').TestContext) {
  const { dir, cleanup } = tmpDir('mesh-pg-')
  const { testnet, bootstrap } = await startTestnet()
  const a = new PgSite(dir, 'a', bootstrap)
  const b = new PgSite(dir, 'b', bootstrap)
  t.after(async () => {
    for (const s of [a, b]) await s.stop('SIGKILL')
    for (const s of [a, b]) await s.cluster?.stop()
    await testnet.destroy()
    cleanup()
  })
  await a.create()
  await b.create()
  return { a, b }
}

test('pgbench at a PostgreSQL origin: the replica equals the origin, also when the origin node is SIGKILLed mid-run', async (t) => {
  const { a, b } = await twoSites(t)
  // The business database exists before the mesh: its rows reach the replica through the initial copy.
  a.cluster.run('pgbench', ['-i', '-s', '1', '-q', 'shop'])
  await a.init()
  await a.start()
  await b.join(await a.invite())
  await b.start()
  const equal = async (what: string) => {
    await waitUntil(`${what}: b's replica equals a's database`, () => b.holdsExactly(a), 120_000, 500)
  }
  await equal('after the initial copy')
  const counts = await pgDump(b.replicaUrl(a))
  assert.equal(counts['public.pgbench_accounts'].rows.length, 100_000)

  // 4 clients, 2,000 transactions.
  await pgbench(a, ['-c', '4', '-j', '2', '-t', '500', '-n', 'shop'])
  await equal('after 2,000 pgbench transactions')

  // Again, with the origin's node killed and restarted while pgbench writes.
  const run = pgbench(a, ['-c', '4', '-j', '2', '-t', '1000', '-n', 'shop'])
  await new Promise((r) => setTimeout(r, 1000))
  await a.stop('SIGKILL')
  await new Promise((r) => setTimeout(r, 500))
  await a.start()
  await run
  await equal('after 4,000 more transactions with the origin node SIGKILLed and restarted')
  const dump = await pgDump(a.url)
  assert.equal(dump['public.pgbench_history'].rows.length, 6000, 'every pgbench transaction is in the origin')
  const replica = await pgDump(b.replicaUrl(a))
  assert.equal(replica['public.pgbench_history'].rows.length, 6000, 'and each is in the replica exactly once')
})
