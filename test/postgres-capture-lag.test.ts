/**
 * The origin's own capture lag in `mesh status`: what its PostgreSQL database committed that its log does not
 * hold yet, in bytes and seconds, at the origin and, through its signed report, at the other site. Capture is
 * held up at a seam of the real database (a transaction holds a lock that capture's read of the sequences
 * waits for; the replication stream keeps receiving meanwhile), so status must say so, and warn past
 * `status.captureLagWarnSeconds`; released, capture drains, the lag goes back to 0, and the copies are equal.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import pg from 'pg'
import { mesh, waitUntil } from './helpers/mesh.ts'
import { twoPgSites, type PgSite } from './helpers/pg-mesh.ts'

interface Holder {
  site: string
  role: string
  lagBytes: number
  lagSeconds: number
  captureLag: { bytes: number; seconds: number } | null
}

interface Seen {
  verdict: string
  reasons: Array<{ level: string; text: string }>
  origin: Holder
}

async function statusOf(site: PgSite): Promise<Seen> {
  const s = JSON.parse((await mesh(['status', '--dir', site.dir, '--json'])).stdout)
  return {
    verdict: s.verdict,
    reasons: s.reasons,
    origin: s.datasets[0].holders.find((h: Holder) => h.role === 'origin')
  }
}

test('the origin’s capture lag shows in mesh status, in bytes and seconds, and goes back to 0', async (t) => {
  const { a, b } = await twoPgSites(t)
  await a.cluster.query(
    'CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL); CREATE SEQUENCE stall',
    [],
    'shop'
  )
  await a.init()
  // Warn after 2 seconds of capture lag (the default is 5 minutes).
  const cfgFile = path.join(a.dir, 'config.json')
  const cfg = JSON.parse(fs.readFileSync(cfgFile, 'utf8'))
  cfg.status = { ...cfg.status, captureLagWarnSeconds: 2 }
  fs.writeFileSync(cfgFile, JSON.stringify(cfg, null, 2), { mode: 0o600 })
  await a.start()
  await b.join(await a.invite())
  await b.start()
  await waitUntil("b's replica equals a", () => b.holdsExactly(a), 90_000, 300)
  // Caught up, the lag comes to 0, and is known (not null). Not at one instant: WAL written just before (the
  // node's own, or a transaction capture has read but not yet confirmed at the slot) shows for a moment.
  await waitUntil(
    'caught up: the lag is 0, and known',
    async () => {
      const idle = await statusOf(a)
      return idle.origin.captureLag?.bytes === 0 && idle.origin.captureLag.seconds === 0
    },
    60_000,
    500
  )

  const blocker = new pg.Client({ connectionString: a.url })
  // The clusters stop at the end whatever happened: this connection must not fail the test then.
  blocker.on('error', () => {})
  await blocker.connect()
  t.after(() => blocker.end().catch(() => {}))
  await t.test('held up, the origin reports what its log lacks', async () => {
    await blocker.query('BEGIN')
    await blocker.query('ALTER SEQUENCE stall INCREMENT BY 1')
    await a.cluster.query(`INSERT INTO orders (item) SELECT 'item ' || g FROM generate_series(1, 5000) g`, [], 'shop')
    let seen: Seen | null = null
    await waitUntil(
      'status at a shows the capture lag and warns',
      async () => {
        seen = await statusOf(a)
        const lag = seen.origin.captureLag
        const warned = seen.reasons.some((r) => r.level === 'WARN' && /lacks writes/.test(r.text))
        return lag !== null && lag.bytes > 0 && lag.seconds >= 2 && warned
      },
      60_000,
      500
    )
    const s = seen!
    assert.equal(s.verdict, 'WARN')
    assert.equal(s.origin.lagBytes, s.origin.captureLag!.bytes, "the origin's lag is its capture lag")
    const text = await mesh(['status', '--dir', a.dir])
    assert.match(text.stdout, /a +origin .* capture lag \d+(\.\d)? (KB|MB|B), \d+ seconds?/)
    // b learns it from a's signed report.
    const atB = async () => ((await statusOf(b)).origin.captureLag?.bytes ?? 0) > 0
    await waitUntil('status at b shows the capture lag', atB, 30_000, 500)
  })

  await t.test('released, capture drains: the lag is 0 and the copies are equal', async () => {
    await blocker.query('ROLLBACK')
    await blocker.end()
    await waitUntil('the lag is back to 0', async () => (await statusOf(a)).origin.captureLag?.bytes === 0, 60_000, 300)
    await waitUntil("b's replica equals a", () => b.holdsExactly(a), 90_000, 300)
    assert.equal((await statusOf(a)).verdict, 'OK')
  })
})
