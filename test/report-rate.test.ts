/**
 * A site tells every member its own state in a signed report (node/reports.ts) whenever that changes. Under a
 * bandwidth budget, while changes keep coming (a busy origin appending, a replica's catch-up progress), it sends
 * at most one such report a second besides its heartbeat, not one every 100 ms: those took 40 % of a 64 kbit/s
 * uplink during a catch-up (issue 16: the mesh must never be the traffic that stops the till). Counted from the
 * origin's own log (logLevel debug: "report sent") while its application commits a transaction every 20 ms for
 * 5 s; the replica still ends with every row, and its status still hears of the origin's progress.
 */
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { test } from 'node:test'
import { openWal, tmpDir } from './helpers/db.ts'
import { converged, sqliteSite, testnet } from './helpers/mesh.ts'
import { Workload } from './helpers/workload.ts'

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

test('under a budget a busy origin reports at most once a second; the replica gets every row', async (t) => {
  const dir = tmpDir(t, 'mesh-report-rate-')
  const bootstrap = await testnet(t)
  const a = sqliteSite(t, dir, 'shop-a', bootstrap)
  const b = sqliteSite(t, dir, 'shop-b', bootstrap)
  // A budget (a slow line's site sets one): without it every change is reported within 100 ms, as before.
  await a.init(['--up-kbps', '2000', '--down-kbps', '2000'])
  const config = path.join(a.dir, 'config.json')
  fs.writeFileSync(config, JSON.stringify({ ...JSON.parse(fs.readFileSync(config, 'utf8')), logLevel: 'debug' }))
  await a.start()
  await b.join(await a.invite())
  await b.start()
  await converged([a, b], [a])

  const sent = () => a.node!.lines.filter((l) => l.includes('"msg":"report sent"')).length
  const before = sent()
  const lengthAt = async () =>
    (await b.status()).datasets.find((d) => d.originSite === 'shop-a')?.holders.find((h) => h.role === 'origin')
      ?.applied ?? 0
  const heardBefore = await lengthAt()
  const db = openWal(a.db)
  const w = new Workload(db, 7)
  const t0 = Date.now()
  for (let i = 0; i < 250; i++) {
    w.transaction(4)
    await sleep(20)
  }
  db.close()
  const seconds = (Date.now() - t0) / 1000
  // Let the last change's report go (it waits out the second), then count.
  await sleep(1500)
  const reports = sent() - before
  // One a second for the changes, one each 5 s heartbeat, and one on each side of the window.
  const most = Math.ceil(seconds + 1.5) + Math.ceil((seconds + 1.5) / 5) + 2
  assert.ok(reports <= most, `${reports} reports in ${seconds.toFixed(1)} s of appends (at most ${most})`)
  assert.ok(reports >= 2, `progress is still reported: ${reports} reports in ${seconds.toFixed(1)} s`)
  await converged([a, b], [a])
  assert.ok((await lengthAt()) > heardBefore, "shop-b's status heard of shop-a's new length")
})
