/**
 * Issue 16, item 4: sites that come back reconnect fast, and `mesh join` waits for an inviting site that is
 * not on the DHT yet. Real node processes on a local DHT test network; the fault is real (SIGSTOP of a node,
 * so its connections go silent and die, then SIGCONT). The retry steps are shortened through config.json
 * (`retrySeconds`); the real defaults over a real cut link run in the bench (bench/reconnect.ts).
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { openWal, tmpDir } from './helpers/db.ts'
import { converged, mesh, sqliteSite, testnet, waitUntil, type TestSite } from './helpers/mesh.ts'

/** Sets the site's retry steps (seconds) in its config.json; read when its node starts. */
function retrySeconds(site: TestSite, steps: number[]): void {
  const file = path.join(site.dir, 'config.json')
  const cfg = JSON.parse(fs.readFileSync(file, 'utf8'))
  cfg.retrySeconds = steps
  fs.writeFileSync(file, `${JSON.stringify(cfg, null, 2)}\n`)
}

function write(site: TestSite, note: string): void {
  const db = openWal(site.db)
  db.prepare('INSERT INTO notes (body, weight) VALUES (?, ?)').run(note, 1.5)
  db.close()
}

async function connectedTo(site: TestSite, other: TestSite): Promise<boolean> {
  const s = await site.status()
  return s.members.some((m) => m.site === other.name && m.connected)
}

test('mesh join waits up to --timeout for an inviting site whose node starts after it', async (t) => {
  const dir = tmpDir(t, 'join-wait-')
  const bootstrap = await testnet(t)
  const a = sqliteSite(t, dir, 'shop-a', bootstrap)
  const b = sqliteSite(t, dir, 'shop-b', bootstrap)
  await a.init()
  const code = await a.invite()
  const args = ['join', code, '--dir', b.dir, '--site', 'shop-b', '--sqlite', b.db, '--bootstrap', bootstrap]
  const joining = mesh([...args, '--timeout', '90s'])
  // The join looks for shop-a, finds nothing, and keeps looking while shop-a's node starts.
  await new Promise((r) => setTimeout(r, 4000))
  await a.start()
  const r = await joining
  assert.equal(r.code, 0, r.stderr)
  assert.match(r.stdout, /Joined the mesh as shop-b/)
  await b.start()
  write(a, 'after the late start')
  await converged([a, b])
})

test('a short --timeout with no inviting site ends in UNREACHABLE and leaves nothing behind', async (t) => {
  const dir = tmpDir(t, 'join-none-')
  const bootstrap = await testnet(t)
  const a = sqliteSite(t, dir, 'shop-a', bootstrap)
  const b = sqliteSite(t, dir, 'shop-b', bootstrap)
  await a.init()
  const code = await a.invite()
  const args = ['join', code, '--dir', b.dir, '--site', 'shop-b', '--sqlite', b.db, '--bootstrap', bootstrap]
  const r = await mesh([...args, '--timeout', '6s'])
  assert.equal(r.code, 1)
  assert.match(r.stderr, /^mesh: UNREACHABLE:/m)
  assert.match(r.stderr, /What to do:/)
  assert.equal(fs.existsSync(b.dir), false)
})

test('a node stopped (SIGSTOP) long enough for its connections to die reconnects and replicates', async (t) => {
  const dir = tmpDir(t, 'reconnect-')
  const bootstrap = await testnet(t)
  const a = sqliteSite(t, dir, 'shop-a', bootstrap)
  const b = sqliteSite(t, dir, 'shop-b', bootstrap)
  await a.init()
  retrySeconds(a, [0.2, 0.5, 1, 2])
  await a.start()
  await b.join(await a.invite())
  retrySeconds(b, [0.2, 0.5, 1, 2])
  await b.start()
  await converged([a, b])

  await t.test('shop-b stops answering; shop-a sees the connection die and keeps trying', async () => {
    b.node!.signal('SIGSTOP')
    t.after(() => b.node?.signal('SIGCONT'))
    write(a, 'while shop-b was stopped')
    await waitUntil(
      'shop-a no longer counts shop-b as connected',
      async () => !(await connectedTo(a, b)),
      180_000,
      1000
    )
    // Several of the (shortened) retry steps pass with shop-b still stopped.
    await new Promise((r) => setTimeout(r, 8000))
  })

  await t.test('shop-b continues: both are connected again and replicate both ways', async () => {
    b.node!.signal('SIGCONT')
    await waitUntil(
      'shop-a and shop-b are connected again',
      async () => (await connectedTo(a, b)) && (await connectedTo(b, a))
    )
    write(b, 'after shop-b came back')
    write(a, 'after shop-b came back, at shop-a')
    await converged([a, b])
  })
})

test('retry steps above 22 s are refused at start with BAD_CONFIG: they could not keep the 30 s promise', async (t) => {
  const dir = tmpDir(t, 'retry-config-')
  const bootstrap = await testnet(t)
  const a = sqliteSite(t, dir, 'shop-a', bootstrap)
  await a.init()
  retrySeconds(a, [1, 5, 15, 600])
  const r = await mesh(['start', '--dir', a.dir], { timeoutMs: 30_000 })
  assert.notEqual(r.code, 0)
  assert.match(r.stderr, /^mesh: BAD_CONFIG:.*retrySeconds/m)
})
