/**
 * Issue 17 on real nodes: every site's versions and free disk space reach every other site in its signed
 * report; an appVersion command that hangs and a nearly full disk are warnings while replication goes on;
 * snapshots pause rather than fill the disk; the contact history usual hours are learned from is kept.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { tmpDir } from './helpers/db.ts'
import { converged, mesh, sqliteSite, testnet, waitUntil } from './helpers/mesh.ts'
import { writeWorkload } from './helpers/workload.ts'

function editConfig(dir: string, edit: (cfg: Record<string, any>) => void): void {
  const file = path.join(dir, 'config.json')
  const cfg = JSON.parse(fs.readFileSync(file, 'utf8'))
  edit(cfg)
  fs.writeFileSync(file, JSON.stringify(cfg, null, 2), { mode: 0o600 })
}

test('versions and disk space of every site, bad appVersion, full disk: warnings, replication goes on', async (t) => {
  const root = tmpDir(t, 'watch-')
  const bootstrap = await testnet(t)
  const a = sqliteSite(t, root, 'shop-a', bootstrap)
  const b = sqliteSite(t, root, 'shop-b', bootstrap)
  await a.init()
  // shop-a: an application version command that never ends, and a disk that counts as nearly full (the CRIT
  // figure set above what this disk has free), with a snapshot due every second.
  editConfig(a.dir, (cfg) => {
    cfg.appVersion = { command: 'sleep 600' }
    cfg.status = { ...cfg.status, diskCritPercent: 99.9 }
    cfg.snapshots = { ...cfg.snapshots, everySeconds: 1 }
  })
  await a.start()
  await b.join(await a.invite())
  editConfig(b.dir, (cfg) => {
    cfg.appVersion = 'till 4.2.1'
    cfg.snapshots = { ...cfg.snapshots, everySeconds: 1 }
  })
  await b.start()
  writeWorkload(a.db, 1, 40)
  writeWorkload(b.db, 2, 40)
  await converged([a, b])

  await t.test("shop-b sees shop-a's versions, disk and problems from its signed report", async () => {
    const shopA = async () => (await b.status()).members.find((m) => m.site === 'shop-a')!
    await waitUntil("shop-a's report carries the appVersion error", async () => !!(await shopA()).health?.appError)
    await waitUntil("shop-a's report says snapshots are paused", async () => !!(await shopA()).health?.paused)
    const h = (await shopA()).health!
    assert.equal(h.node, process.version)
    assert.match(h.sqlite, /^3\.\d+\.\d+$/)
    assert.match(h.branchmesh, /^\d+\.\d+\.\d+/)
    assert.equal(h.appError, 'appVersion command "sleep 600" did not finish within 5 s')
    assert.match(h.disks[0].what, /^data directory/)
    assert.ok(h.disks[0].free > 0 && h.disks[0].free < h.disks[0].total)
    // Each site judges every disk by its own thresholds: shop-a's are the nearly full figures, shop-b's the defaults.
    const atA = (await a.status()).reasons.map((r) => `${r.level} ${r.text}`)
    assert.ok(
      atA.some((x) => /^CRIT shop-a has .* free of .* on the disk of its data directory/.test(x)),
      `${atA}`
    )
    const s = await b.status()
    assert.equal(s.verdict, 'WARN')
    const texts = s.reasons.map((r) => `${r.level} ${r.text}`)
    assert.ok(
      texts.some((x) => /^WARN snapshots at shop-a are paused: .*free/.test(x)),
      `${texts}`
    )
    assert.ok(texts.some((x) => /^WARN shop-a cannot read the application's version: .*sleep 600/.test(x)))
    const mine = s.members.find((m) => m.site === 'shop-b')!.health!
    assert.equal(mine.app, 'till 4.2.1')
    // shop-b, with room, takes snapshots; shop-a, on the same disk but with its nearly full figures, takes none.
    const snaps = (dir: string) => (fs.existsSync(dir) ? fs.readdirSync(dir, { recursive: true }).length : 0)
    await waitUntil('shop-b has taken snapshots', () => snaps(path.join(b.dir, 'snapshots')) > 0)
    assert.equal(snaps(path.join(a.dir, 'snapshots')), 0, 'no snapshot taken at shop-a')
    const text = await mesh(['status', '--dir', b.dir])
    assert.match(text.stdout, /shop-a .*\n {4}runs Node\.js v\d+.*, SQLite 3\.\d+\.\d+/)
    assert.match(text.stdout, /application till 4\.2\.1/)
  })

  await t.test('replication goes on meanwhile; the contact history is kept for usual hours', async () => {
    writeWorkload(a.db, 3, 20)
    await converged([a, b])
    await b.stop()
    const contacts = JSON.parse(fs.readFileSync(path.join(b.dir, 'contacts.json'), 'utf8'))
    const aKey = (await a.status()).key
    assert.ok(
      Object.values(contacts[aKey] ?? {}).some((mask) => (mask as number) > 0),
      'shop-a heard at shop-b'
    )
    // The node's log goes through the rotating destination: current.log links to the file in use.
    assert.match(fs.readlinkSync(path.join(b.dir, 'current.log')), /^node\.\d+\.log$/)
  })
})
