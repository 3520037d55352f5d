/**
 * The daily summary, the alert messages and the daily hour as pure functions with a fixed clock (the real SMTP
 * server and real nodes are in alerts.test.ts).
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import {
  addSample,
  buildAlert,
  buildSummary,
  dailyDue,
  localDay,
  reasonKey,
  sample,
  type DaySample,
  type SiteStatus
} from '../node/index.ts'

const HOUR = 3600_000
const NOW = new Date(2026, 5, 10, 7, 30).getTime()

function status(length: number, applied: number, reasons: SiteStatus['reasons'] = []): SiteStatus {
  const health = (free: number) => ({
    branchmesh: '0.3.0',
    node: 'v20.19.0',
    os: 'linux',
    sqlite: '3.45.1',
    postgres: '',
    app: 'till 4.2.1',
    appError: '',
    disks: [{ what: 'data directory', path: '/srv/mesh', free, total: 100 * 1024 ** 3 }],
    paused: '',
    nodeEndOfLife: null,
    nodePastEndOfLife: false
  })
  const member = (site: string, key: string, free: number, self: boolean) => ({
    site,
    key,
    role: 'full' as const,
    self,
    connected: true,
    lastContact: NOW,
    software: 'branchmesh/0.3.0',
    health: health(free)
  })
  // Only the fields the summary reads; the rest of a DatasetStatus does not matter to it.
  const holder = (site: string, role: 'origin' | 'replica', n: number) => ({ site, role, applied: n })
  const dataset = {
    id: 'd1',
    name: 'till',
    originSite: 'north',
    length,
    bytes: length * 2048,
    holders: [holder('north', 'origin', length), holder('south', 'replica', applied)],
    checkpoint: null
  }
  return {
    site: 'north',
    key: 'aa',
    running: true,
    generatedAt: NOW,
    verdict: reasons.some((r) => r.level === 'CRIT') ? 'CRIT' : reasons.length ? 'WARN' : 'OK',
    reasons,
    members: [member('north', 'aa', 40 * 1024 ** 3, true), member('south', 'bb', 3 * 1024 ** 3, false)],
    datasets: [dataset as unknown as SiteStatus['datasets'][number]],
    refused: []
  }
}

test('the daily summary: disks and versions per site, the last 24 hours per dataset, what is wrong', () => {
  // Samples every hour over 30 hours: the baseline is the oldest within 24 hours (length 52 then).
  let samples: DaySample[] = []
  for (let h = 30; h >= 1; h--) samples = addSample(samples, sample(status(100 - 2 * h, 0), NOW - h * HOUR))
  assert.ok(samples.length <= 26, 'only the last 25 hours are kept')
  const s = status(100, 97, [{ level: 'WARN', text: 'south has 3.0 GB free of 100.0 GB: free some space there' }])
  const own = { snapshots: { d1: [NOW - 30 * HOUR, NOW - 2 * HOUR] }, matched: { d1: 3 } }
  const m = buildSummary(s, samples, own, NOW)
  assert.equal(m.subject, 'branchmesh daily: WARN (north)')
  assert.match(m.text, /Figures for the last 24 hours\./)
  assert.match(m.text, /- south \(full, last heard .*\)\n {4}disk: 3\.0 GB free of 100\.0 GB for its data directory/)
  assert.match(m.text, /runs: branchmesh 0\.3\.0, Node\.js v20\.19\.0, SQLite 3\.45\.1, application till 4\.2\.1/)
  assert.match(m.text, /- till: 48 new log entries, 96 KB \(origin north;/)
  assert.match(m.text, /south has applied 97 of 100/)
  assert.match(m.text, /3 checkpoints matched and 1 snapshot made at north/)
  assert.match(m.text, /oldest snapshot here: \d{4}-\d\d-\d\d \d\d:\d\d UTC/)
  assert.match(m.text, /Anything wrong\n- WARN south has 3\.0 GB free/)
  assert.match(m.html, /<li><b>WARN<\/b> south has 3\.0 GB free/)
})

test('the summary of a node that has run for two hours says since when', () => {
  const samples = [sample(status(10, 10), NOW - 2 * HOUR)]
  const m = buildSummary(status(12, 12), samples, { snapshots: {}, matched: {} }, NOW)
  assert.match(m.text, /Figures since .* UTC \(the node has not run for 24 hours\)\./)
  assert.match(m.text, /- till: 2 new log entries/)
  assert.match(m.text, /Nothing is wrong\./)
})

test('the daily hour: due once a day from dailyAt, local time', () => {
  assert.equal(dailyDue('07:00', null, NOW), true)
  assert.equal(dailyDue('08:00', null, NOW), false)
  assert.equal(dailyDue('07:00', localDay(NOW), NOW), false, 'sent today already')
  assert.equal(dailyDue('07:00', localDay(NOW - 24 * HOUR), NOW), true, 'sent yesterday')
  assert.equal(dailyDue(undefined, null, NOW), false)
})

test('an alert names what was raised and cleared; a reason is the same one as its figures change', () => {
  const r = { level: 'CRIT' as const, text: 'south has not been heard from for 17 hours' }
  assert.equal(reasonKey(r), reasonKey({ ...r, text: 'south has not been heard from for 18 hours' }))
  assert.notEqual(reasonKey(r), reasonKey({ ...r, level: 'WARN' }))
  const m = buildAlert('north', 'CRIT', [r], [{ level: 'WARN', text: 'x' }], NOW)
  assert.equal(m.subject, 'branchmesh CRIT: south has not been heard from for 17 hours (+1 more)')
  assert.match(m.text, /New problems:\n- CRIT south has not been heard from for 17 hours\n/)
  assert.match(m.text, /Cleared \(no longer seen\):\n- WARN x\n/)
  // Its pointer to the details is a command that runs as it is (no DIR to fill in).
  assert.match(m.text, /^Details: run mesh status at north, or open the dashboard\.$/m)
  assert.doesNotMatch(m.text, /\bDIR\b/)
})
