/**
 * Issue 17 items 2 and 8 on real nodes and a real browser: the dashboard a node serves, seen in the machine's
 * Chromium (playwright-core), shows every site; a SIGKILLed site turns red within the (short) thresholds and
 * back once it returns; /metrics parses as Prometheus' text format; a port already in use and a wrong token
 * are warnings while replication goes on; `mesh dashboard` serves the same page from another site's node.
 *
 * Screenshots are saved for people to look at: test/artifacts/ (or MESH_TEST_ARTIFACTS).
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import crypto from 'node:crypto'
import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import parsePrometheus from 'parse-prometheus-text-format'
import { chromium, type Browser, type Page } from 'playwright-core'
import { tmpDir } from './helpers/db.ts'
import { converged, MESH, mesh, sqliteSite, testnet, waitUntil } from './helpers/mesh.ts'
import { ROOT, startNodeProcess } from './helpers/proc.ts'
import { teardown } from './helpers/teardown.ts'
import { writeWorkload } from './helpers/workload.ts'

const CHROMIUM = process.env.MESH_CHROMIUM ?? '/usr/bin/chromium'
const ARTIFACTS = process.env.MESH_TEST_ARTIFACTS ?? path.join(ROOT, 'test', 'artifacts')

/**
 * Thresholds short enough for a test: a site not connected and silent for 6 s is a WARN, for 10 s a CRIT
 * (reports come every 5 s heartbeat). Disk figures low, so that the test machine's disk is never the reason.
 */
const SHORT = {
  silentWarnSeconds: 6,
  silentCritSeconds: 10,
  diskWarnPercent: 0.1,
  diskWarnMB: 1,
  diskCritPercent: 0.01,
  diskCritMB: 1
}

function editConfig(dir: string, edit: (cfg: Record<string, any>) => void): void {
  const file = path.join(dir, 'config.json')
  const cfg = JSON.parse(fs.readFileSync(file, 'utf8'))
  edit(cfg)
  fs.writeFileSync(file, JSON.stringify(cfg, null, 2), { mode: 0o600 })
}

/** A port held by a listening server until the test ends (for "a port already in use"). */
async function heldPort(t: Parameters<typeof teardown>[0]): Promise<number> {
  const server = net.createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  teardown(t, () => new Promise<void>((resolve) => server.close(() => resolve())))
  return (server.address() as net.AddressInfo).port
}

/** A port free a moment ago. */
async function freePort(): Promise<number> {
  const server = net.createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as net.AddressInfo).port
  await new Promise<void>((resolve) => server.close(() => resolve()))
  return port
}

async function screenshot(page: Page, name: string, t: { diagnostic(m: string): void }): Promise<void> {
  fs.mkdirSync(ARTIFACTS, { recursive: true })
  const file = path.join(ARTIFACTS, name)
  await page.screenshot({ path: file, fullPage: true })
  t.diagnostic(`screenshot: ${file}`)
}

/** The verdict the page shows for a site (its card's data-verdict). */
function siteVerdict(page: Page, site: string): Promise<string | null> {
  return page.locator(`.site[data-site="${site}"]`).getAttribute('data-verdict', { timeout: 5000 })
}

test('dashboard in Chromium: three sites, a killed one red and back; metrics; port in use, wrong token', async (t) => {
  const root = tmpDir(t, 'dash-')
  const bootstrap = await testnet(t)
  const [a, b, c] = ['shop-a', 'shop-b', 'shop-c'].map((n) => sqliteSite(t, root, n, bootstrap))
  const port = await freePort()
  const busy = await heldPort(t)
  const token = crypto.randomBytes(16).toString('hex')
  await a.init()
  editConfig(a.dir, (cfg) => {
    cfg.status = { ...cfg.status, ...SHORT }
    cfg.dashboard = { listen: `127.0.0.1:${port}`, token, sampleSeconds: 1 }
  })
  await a.start()
  await b.join(await a.invite())
  await c.join(await a.invite())
  // shop-b is told to serve its dashboard on a port another program holds.
  editConfig(b.dir, (cfg) => {
    cfg.dashboard = { listen: `127.0.0.1:${busy}` }
  })
  await b.start()
  await c.start()
  for (const [i, s] of [a, b, c].entries()) writeWorkload(s.db, i + 1, 30)
  await converged([a, b, c])

  const browser: Browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: process.getuid?.() === 0 ? ['--no-sandbox'] : []
  })
  teardown(t, () => browser.close())
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } })
  const url = `http://127.0.0.1:${port}/`

  await t.test('the page (opened once with the token) shows all three sites, each OK, and every dataset', async () => {
    await page.goto(`${url}?token=${token}`)
    // The token went into a cookie and out of the address bar.
    assert.equal(page.url(), url)
    await page.locator('.site').nth(2).waitFor({ timeout: 30_000 })
    assert.deepEqual(await page.locator('.site').evaluateAll((els) => els.map((e) => e.getAttribute('data-site'))), [
      'shop-a',
      'shop-b',
      'shop-c'
    ])
    await waitUntil('every site is OK on the page', async () => {
      const v = await Promise.all(['shop-a', 'shop-b', 'shop-c'].map((s) => siteVerdict(page, s)))
      return v.every((x) => x === 'OK')
    })
    assert.equal(await page.locator('.dataset').count(), 3)
    const text = (await page.locator('.dataset[data-dataset="shop-b"]').textContent()) ?? ''
    assert.match(text, /origin shop-b/)
    assert.match(text, /last checkpoint/)
    assert.match(text, /the oldest moment that can be restored/)
    const siteText = (await page.locator('.site[data-site="shop-c"]').textContent()) ?? ''
    assert.match(siteText, /runs branchmesh \d+\.\d+\.\d+, Node\.js v\d+/)
    assert.match(siteText, /disk of data directory/)
    // The charts' history fills one sample a second here (sampleSeconds 1): the lag chart is drawn.
    await page.reload()
    await page.locator('#lag-chart .uplot').waitFor({ timeout: 30_000 })
    await screenshot(page, 'dashboard-three-sites.png', t)
  })

  await t.test('shop-c killed with SIGKILL turns red within the thresholds, and green once it returns', async () => {
    await c.stop('SIGKILL')
    // No reload: the page changes by its live updates (server-sent events).
    await page.locator('.site[data-site="shop-c"][data-verdict="CRIT"]').waitFor({ timeout: 90_000 })
    assert.match(
      (await page.locator('.site[data-site="shop-c"]').textContent()) ?? '',
      /shop-c has not been heard from/
    )
    assert.equal(await siteVerdict(page, 'shop-b'), 'OK')
    await screenshot(page, 'dashboard-site-down.png', t)
    await c.start()
    await page.locator('.site[data-site="shop-c"][data-verdict="OK"]').waitFor({ timeout: 90_000 })
    await screenshot(page, 'dashboard-site-back.png', t)
  })

  await t.test('/metrics parses as Prometheus text format, with the lag of every copy', async () => {
    const res = await fetch(`${url}metrics`, { headers: { Authorization: `Bearer ${token}` } })
    assert.equal(res.status, 200)
    assert.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/)
    const families = parsePrometheus(await res.text())
    const lag = families.find((f) => f.name === 'branchmesh_lag_seconds')
    assert.equal(lag?.type, 'GAUGE')
    const copies = lag!.metrics.map((m) => `${m.labels?.dataset}@${m.labels?.site}`).sort()
    const all = ['shop-a', 'shop-b', 'shop-c'].flatMap((d) => ['shop-a', 'shop-b', 'shop-c'].map((s) => `${d}@${s}`))
    assert.deepEqual(copies, all)
    for (const m of lag!.metrics) assert.ok(Number(m.value) >= 0)
    const verdicts = families.find((f) => f.name === 'branchmesh_site_verdict')!.metrics
    assert.deepEqual(verdicts.map((m) => [m.labels?.site, m.value]).sort(), [
      ['shop-a', '0'],
      ['shop-b', '0'],
      ['shop-c', '0']
    ])
  })

  await t.test('a port already in use: a WARN at shop-b, whose node keeps replicating', async () => {
    const s = await b.status()
    const texts = s.reasons.map((r) => `${r.level} ${r.text}`)
    assert.ok(
      texts.some((x) => x.startsWith(`WARN the dashboard cannot listen on 127.0.0.1:${busy}: the port is already`)),
      `${texts}`
    )
    assert.ok(
      b.node!.lines.some(
        (l) => l.includes('the dashboard is not served; the node runs on') && l.includes('DASHBOARD_LISTEN')
      )
    )
    writeWorkload(b.db, 7, 10)
    await converged([a, b, c], [b])
  })

  await t.test('a wrong token: refused with what to do, a WARN at shop-a, replication goes on', async () => {
    const res = await fetch(`${url}api/view`, { headers: { Authorization: 'Bearer not-the-token-at-all' } })
    assert.equal(res.status, 401)
    const body = await res.text()
    assert.match(body, /^DASHBOARD_TOKEN: a dashboard request from 127\.0\.0\.1 had a wrong token\nWhat to do: /)
    assert.ok(!body.includes(token), 'the token is not in the answer')
    const s = await a.status()
    assert.ok(s.reasons.some((r) => r.level === 'WARN' && /refused 1 request with a wrong token/.test(r.text)))
    assert.ok(!JSON.stringify(s).includes(token), 'the token is not in the status')
    assert.ok(a.node!.lines.some((l) => /wrong token refused/.test(l)) && !a.node!.lines.some((l) => l.includes(token)))
    writeWorkload(a.db, 8, 10)
    await converged([a, b, c], [a])
  })

  await t.test(
    "mesh dashboard serves shop-c's view from its running node; refused without a token off loopback",
    async () => {
      const offLoopback = await mesh(['dashboard', '--dir', c.dir, '--listen', '0.0.0.0:0'])
      assert.equal(offLoopback.code, 1)
      assert.match(offLoopback.stderr, /^mesh: DASHBOARD_TOKEN: .*only with a token\nWhat to do: /)
      const taken = await mesh(['dashboard', '--dir', c.dir, '--listen', `127.0.0.1:${busy}`])
      assert.equal(taken.code, 1)
      assert.match(
        taken.stderr,
        /DASHBOARD_LISTEN: the dashboard cannot listen on 127\.0\.0\.1:\d+: the port is already in use/
      )
      const p = startNodeProcess([MESH, 'dashboard', '--dir', c.dir, '--listen', '127.0.0.1:0'], 'mesh dashboard')
      teardown(t, () => p.kill('SIGKILL'))
      const line = await p.waitLine(/^The dashboard of shop-c: http:\/\//, 30_000)
      const at = /http:\/\/[^/]+\//.exec(line)![0]
      const view = (await (await fetch(`${at}api/view`)).json()) as { status: { site: string; members: unknown[] } }
      assert.equal(view.status.site, 'shop-c')
      assert.equal(view.status.members.length, 3)
      assert.equal((await fetch(at, { method: 'POST' })).status, 405)
      assert.equal((await p.kill('SIGTERM')).code, 0)
    }
  )
})
