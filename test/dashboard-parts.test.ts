/**
 * The dashboard's pure parts, with the clock as the seam: the charts' history (samples, 30 days kept, bytes
 * per day), which site and dataset each reason belongs to, the metrics in Prometheus' text format; and the
 * observer's join code.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import crypto from 'hypercore-crypto'
import parsePrometheus from 'parse-prometheus-text-format'
import { dailyChart, emptyHistory, KEEP_MS, lagChart, sample } from '../node/dashboard/history.ts'
import { DashboardMetrics } from '../node/dashboard/metrics.ts'
import { dashboardView, names } from '../node/dashboard/view.ts'
import { decodeJoinCode, encodeJoinCode, type Holding } from '../protocol/index.ts'
import { holdingsOf, shopAStatus } from './helpers/status.ts'

const HOUR = 3600_000
const DAY = 86_400_000
const t0 = Date.UTC(2026, 10, 21, 12)
const a = crypto.keyPair().publicKey
const b = crypto.keyPair().publicKey
const log = crypto.randomBytes(32)

const holding = holdingsOf(log, t0)

/** shop-a's view at `now`: shop-b holds `b` of till's log (shop-a's dataset), its report `bAt`. */
function statusAt(now: number, bHolding: Partial<Holding>, bAt = now, length = 100, bytes = 10_000) {
  return shopAStatus(a, b, log, now, [
    {
      site: a,
      siteName: 'shop-a',
      at: now,
      holdings: [holding({ length, byteLength: bytes, applied: length, appliedBytes: bytes, lastWriteAt: now })],
      peers: [],
      software: 't'
    },
    {
      site: b,
      siteName: 'shop-b',
      at: bAt,
      holdings: [holding({ length, byteLength: bytes, ...bHolding })],
      peers: [],
      software: 't'
    }
  ])
}

test('history: one lag sample per step, bytes applied per day, nothing older than 30 days', () => {
  const h = emptyHistory(5 * 60_000)
  // shop-b 40 blocks (4,000 bytes) behind, an hour of writes: lag 3600 s.
  sample(h, statusAt(t0, { applied: 60, appliedBytes: 6000, appliedWriteAt: t0 - HOUR }), t0)
  sample(h, statusAt(t0 + 10 * 60_000, { applied: 100, appliedBytes: 10_000 }), t0 + 10 * 60_000)
  const lag = lagChart(h, t0 + 10 * 60_000)
  assert.deepEqual(lag.x, [t0 / 1000, t0 / 1000 + 300, t0 / 1000 + 600])
  const atB = lag.series.find((s) => s.label === 'till at shop-b')!
  assert.deepEqual(atB.values, [3600, null, 0], 'no sample while none was taken')
  // The first sight is the baseline; 4,000 bytes came after it, on the same day.
  const day = dailyChart(h, t0 + 10 * 60_000)
  // Two days at least: the day before at 0.
  assert.deepEqual(day.x, [(Math.floor(t0 / DAY) - 1) * 86_400, Math.floor(t0 / DAY) * 86_400])
  assert.deepEqual(day.series, [{ label: 'shop-b', values: [0, 4000] }])
  // A new epoch's log: all it holds came since (here 2,500 bytes, the next day).
  const next = statusAt(t0 + DAY, { applied: 25, appliedBytes: 2500 }, t0 + DAY, 25, 2500)
  next.datasets[0].log = 'ff'.repeat(32)
  sample(h, next, t0 + DAY)
  assert.deepEqual(dailyChart(h, t0 + DAY).series[0].values, [4000, 2500])
  // 31 days on, only the newest sample is left.
  const later = t0 + KEEP_MS + 2 * DAY
  sample(h, statusAt(later, {}), later)
  assert.ok(lagChart(h, later).x[0] * 1000 >= later - KEEP_MS)
  assert.deepEqual(Object.keys(h.daily[Buffer.from(b).toString('hex')].days), [String(Math.floor(later / DAY) * DAY)])
  assert.ok(JSON.stringify(h).length < 2000, 'kept small')
})

test('view: a reason belongs to the sites and datasets it names, else to this site', () => {
  assert.equal(names('shop-b has not been heard from for 26 hours', 'shop-b'), true)
  assert.equal(names("shop-b's copy of till.", 'till'), true)
  assert.equal(names('shop-bb has not been heard from', 'shop-b'), false)
  assert.equal(names('shop-b.old is silent', 'shop-b'), false)
  const s = statusAt(t0, {}, t0 - 26 * HOUR)
  s.reasons.push({ level: 'WARN', text: 'the dashboard cannot listen on 127.0.0.1:8080: the port is already in use' })
  const v = dashboardView(s)
  const [ka, kb] = [a, b].map((k) => Buffer.from(k).toString('hex'))
  assert.equal(v.sites[kb].verdict, 'CRIT')
  assert.match(v.sites[kb].reasons[0].text, /^shop-b has not been heard from/)
  assert.equal(v.sites[ka].verdict, 'WARN')
  assert.deepEqual(
    v.sites[ka].reasons.map((r) => r.level),
    ['WARN']
  )
  assert.equal(v.datasets.d1.verdict, 'OK')
})

test('metrics: Prometheus text format, named by its conventions, with the lag of every copy', async () => {
  const s = statusAt(t0, { applied: 60, appliedBytes: 6000, appliedWriteAt: t0 - HOUR }, t0 - 26 * HOUR)
  const text = await new DashboardMetrics().render(dashboardView(s))
  const families = parsePrometheus(text)
  for (const f of families) {
    assert.match(f.name, /^branchmesh_[a-z_]+$/)
    assert.ok(f.help.length > 0, `${f.name} has help`)
    if (f.type === 'COUNTER') assert.match(f.name, /_total$/)
    if (/timestamp/.test(f.name)) assert.match(f.name, /_timestamp_seconds$/)
  }
  const value = (name: string, labels: Record<string, string>) =>
    families
      .find((f) => f.name === name)
      ?.metrics.find((m) => Object.entries(labels).every(([k, v]) => m.labels?.[k] === v))?.value
  assert.equal(value('branchmesh_lag_seconds', { dataset: 'till', site: 'shop-b' }), '3600')
  assert.equal(value('branchmesh_lag_entries', { dataset: 'till', site: 'shop-b' }), '40')
  assert.equal(value('branchmesh_lag_seconds', { dataset: 'till', site: 'shop-a' }), '0')
  assert.equal(value('branchmesh_verdict', { site: 'shop-a' }), '2')
  assert.equal(value('branchmesh_site_verdict', { site: 'shop-b' }), '2')
  assert.equal(
    value('branchmesh_site_last_contact_timestamp_seconds', { site: 'shop-b' }),
    String((t0 - 26 * HOUR) / 1000)
  )
  assert.equal(value('branchmesh_dashboard_bad_token_requests_total', {}), '0')
})

test("an observer's join code says so; a code with both roles, or an unknown one, is refused", () => {
  const j = { meshId: crypto.randomBytes(32), inviter: a, seed: crypto.randomBytes(32), expiresAt: 2_000_000_000 }
  const observer = decodeJoinCode(encodeJoinCode({ ...j, role: 'observer' }))
  assert.equal(observer.role, 'observer')
  assert.equal(decodeJoinCode(encodeJoinCode({ ...j, role: 'blind' })).role, 'blind')
  assert.equal(decodeJoinCode(encodeJoinCode(j)).role, undefined)
  // Flags 3 (both) and 4 (unknown), written by hand where the flags go: before the 4-byte checksum.
  for (const flags of [3, 4]) {
    const body = Buffer.from(encodeJoinCode({ ...j, role: 'blind' }).slice(4), 'base64url').subarray(0, -4)
    body[body.length - 1] = flags
    const sum = crypto.hash(body).subarray(0, 4)
    const code = `bm1-${Buffer.concat([body, sum]).toString('base64url')}`
    assert.throws(() => decodeJoinCode(code), { code: 'UNKNOWN_FLAGS' })
  }
})
