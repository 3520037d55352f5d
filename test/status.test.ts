import { test } from 'node:test'
import assert from 'node:assert/strict'
import crypto from 'hypercore-crypto'
import { holdingsOf, shopAStatus, twoSiteState } from './helpers/status.ts'
import { buildStatus, DEFAULT_THRESHOLDS, VERDICT_EXIT } from '../node/index.ts'
import type { Holding, Report } from '../protocol/index.ts'

// buildStatus is a pure function of the mesh state, the reports and the clock: the clock is the seam here, so
// "26 hours of silence" needs no 26-hour test. The reports have the shape real nodes send (see mesh.test.ts).
const HOUR = 3600_000
const now = Date.UTC(2026, 10, 21, 12)
const a = crypto.keyPair().publicKey
const b = crypto.keyPair().publicKey
const log = crypto.randomBytes(32)

const holding = holdingsOf(log, now)

function status(bReport: Partial<Report> & { holdings: Holding[] }, thresholds = DEFAULT_THRESHOLDS) {
  const reports: Report[] = [
    { site: a, siteName: 'shop-a', at: now, holdings: [holding({})], peers: [], software: 't' },
    { site: b, siteName: 'shop-b', at: now, peers: [], software: 't', ...bReport }
  ]
  return shopAStatus(a, b, log, now, reports, thresholds)
}

test('status: a caught-up mesh is OK, exit 0', () => {
  const s = status({ holdings: [holding({})] })
  assert.equal(s.verdict, 'OK')
  assert.equal(VERDICT_EXIT[s.verdict], 0)
  assert.equal(s.datasets[0].heldBy, 1)
  assert.equal(s.datasets[0].holders[1].lagEntries, 0)
})

test('status: a site silent for 26 hours is CRIT, exit 2, and says so in words', () => {
  const crit = status({ at: now - 26 * HOUR, holdings: [holding({})] })
  assert.equal(crit.verdict, 'CRIT')
  assert.equal(VERDICT_EXIT[crit.verdict], 2)
  assert.ok(
    crit.reasons.some((r) => r.level === 'CRIT' && r.text === 'shop-b has not been heard from for 26 hours'),
    JSON.stringify(crit.reasons)
  )
})

test('status: a site silent for 17 hours is WARN, exit 1', () => {
  const warn = status({ at: now - 17 * HOUR, holdings: [holding({})] })
  assert.equal(warn.verdict, 'WARN')
  assert.equal(VERDICT_EXIT[warn.verdict], 1)
})

test('status: lag in entries, bytes and seconds, with configurable thresholds', async (t) => {
  const h = holding({ applied: 40, appliedBytes: 4000, downloaded: 60, appliedWriteAt: now - 3 * HOUR })

  await t.test('a copy 2 hours behind shows its lag in entries, bytes and seconds, and is WARN', () => {
    const s = status({ holdings: [h] })
    const holder = s.datasets[0].holders.find((x) => x.site === 'shop-b')!
    assert.equal(holder.lagEntries, 60)
    assert.equal(holder.lagBytes, 6000)
    assert.equal(holder.lagSeconds, 2 * 3600)
    assert.equal(s.verdict, 'WARN')
    assert.equal(s.datasets[0].heldBy, 0, 'the latest write is not held by shop-b')
  })

  await t.test('with lagCritSeconds at one hour, the same copy is CRIT and the reason says how far behind', () => {
    const strict = status({ holdings: [h] }, { ...DEFAULT_THRESHOLDS, lagCritSeconds: 3600 })
    assert.equal(strict.verdict, 'CRIT')
    assert.ok(strict.reasons.some((r) => /shop-b's copy of till is 2 hours behind/.test(r.text)))
  })
})

test('status: a replica stopped at a damaged block is CRIT, and the damaged block is named', () => {
  const stopped = status({
    holdings: [holding({ applied: 50, error: 'BAD_ENTRY', errorMessage: 'BAD_ENTRY: block 50 is damaged', damaged: 1 })]
  })
  assert.equal(stopped.verdict, 'CRIT')
  assert.ok(stopped.reasons.some((r) => r.level === 'WARN' && /damaged block/.test(r.text)))
})

test('status: a node that is not running is CRIT, and the first reason says so', () => {
  const off = buildStatus({
    self: a,
    site: 'shop-a',
    state: {
      meshId: crypto.randomBytes(32),
      members: [{ key: a, site: 'shop-a', addedAt: now }],
      datasets: [],
      local: []
    },
    reports: [],
    connected: new Set(),
    running: false,
    refused: [],
    now,
    thresholds: DEFAULT_THRESHOLDS
  })
  assert.equal(off.verdict, 'CRIT')
  assert.match(off.reasons[0].text, /not running/)
})

test('status: the origin’s capture lag shows in bytes and seconds; WARN past 5 minutes, CRIT past an hour', () => {
  const at = (captureLag: Holding['captureLag'], running = true) =>
    buildStatus({
      self: a,
      site: 'shop-a',
      state: twoSiteState(a, b, log, now, [], 'postgres'),
      reports: [
        { site: a, siteName: 'shop-a', at: now, holdings: [holding({ captureLag })], peers: [], software: 't' },
        { site: b, siteName: 'shop-b', at: now, holdings: [holding({})], peers: [], software: 't' }
      ],
      connected: new Set([Buffer.from(b).toString('hex')]),
      running,
      refused: [],
      now,
      thresholds: DEFAULT_THRESHOLDS
    })
  const ok = at({ bytes: 0, seconds: 0 })
  assert.equal(ok.verdict, 'OK')
  assert.deepEqual(ok.datasets[0].holders[0].captureLag, { bytes: 0, seconds: 0 })
  assert.equal(ok.datasets[0].holders[1].captureLag, null, 'a replica has no capture lag')
  const draining = at({ bytes: 22_000_000, seconds: 20 })
  assert.equal(draining.verdict, 'OK', 'a restart draining its backlog is no warning')
  const origin = draining.datasets[0].holders[0]
  assert.deepEqual([origin.lagBytes, origin.lagSeconds], [22_000_000, 20], "the origin's lag is its capture lag")
  const warn = at({ bytes: 3_000_000, seconds: 600 })
  assert.equal(warn.verdict, 'WARN')
  const warned = /till log at shop-a lacks writes .* 10 minutes ago \(2\.9 MB/
  assert.ok(warn.reasons.some((r) => r.level === 'WARN' && warned.test(r.text)))
  const crit = at({ bytes: 3_000_000, seconds: 7200 })
  assert.equal(crit.verdict, 'CRIT')
  assert.ok(crit.reasons.some((r) => r.level === 'CRIT' && /restart the node there \(`mesh start`/.test(r.text)))
  // Its own figure from before its node stopped is not shown as if it were now.
  assert.equal(at({ bytes: 1, seconds: 7200 }, false).datasets[0].holders[0].captureLag, null)
  // A report from older software: no figure, the lag as before.
  const older = at(undefined)
  assert.equal(older.datasets[0].holders[0].captureLag, null)
  assert.equal(older.datasets[0].holders[0].lagBytes, 0)
})

test('status: an origin’s batching is the history’s granularity; its capture lag warns only past it', () => {
  const at = (batchSeconds: number | undefined, seconds: number) =>
    buildStatus({
      self: b,
      site: 'shop-b',
      state: twoSiteState(a, b, log, now),
      reports: [
        {
          site: a,
          siteName: 'shop-a',
          at: now,
          holdings: [holding({ batchSeconds, captureLag: { bytes: 4000, seconds } })],
          peers: [],
          software: 't'
        },
        { site: b, siteName: 'shop-b', at: now, holdings: [holding({})], peers: [], software: 't' }
      ],
      connected: new Set([Buffer.from(a).toString('hex')]),
      running: true,
      refused: [],
      now,
      thresholds: DEFAULT_THRESHOLDS
    })
  assert.equal(at(undefined, 0).datasets[0].historyEverySeconds, 0, 'no batching: a unit per capture step')
  // At shop-b: what shop-a's report says of its own dataset.
  assert.equal(at(600, 0).datasets[0].historyEverySeconds, 600)
  // A group waits at the source by design: 9 minutes of a 10-minute interval is no lag to warn of.
  assert.equal(at(600, 540).verdict, 'OK')
  assert.equal(at(undefined, 540).verdict, 'WARN')
  assert.equal(at(600, 600 + DEFAULT_THRESHOLDS.captureLagWarnSeconds).verdict, 'WARN')
})

test('status: a copy whose report is newer than the origin’s never shows more applied than the log holds', () => {
  // The origin reported 100 blocks; shop-b's report, made later, has applied 104 of them.
  const s = status({ holdings: [holding({ length: 104, downloaded: 104, applied: 104 })] })
  const d = s.datasets[0]
  assert.equal(d.length, 104)
  const copy = d.holders.find((h) => h.site === 'shop-b')!
  assert.ok(copy.applied! <= d.length, `applied ${copy.applied} of ${d.length}`)
  assert.equal(copy.lagEntries, 0)
  assert.equal(d.heldBy, 1)
})

test('status text counts in words that agree: 1 member, 1 entry, 1 other site, never "1 entries"', async () => {
  const { formatStatus } = await import('../tools/commands/status.ts')
  // A mesh of one site (just set up) holding no dataset, and two sites whose log holds a single entry.
  const alone = buildStatus({
    self: a,
    site: 'shop-a',
    state: { ...twoSiteState(a, b, log, now), members: [{ key: a, site: 'shop-a', addedAt: now }], datasets: [] },
    reports: [],
    connected: new Set(),
    running: true,
    refused: [],
    now,
    thresholds: DEFAULT_THRESHOLDS
  })
  assert.match(formatStatus(alone), /\(node running; 1 member, 0 connected now\)/)
  const one = { length: 1, byteLength: 100, downloaded: 1, applied: 1, appliedBytes: 100 }
  const reports: Report[] = [
    { site: a, siteName: 'shop-a', at: now, holdings: [holding(one)], peers: [], software: 't' },
    {
      site: b,
      siteName: 'shop-b',
      at: now,
      holdings: [holding({ ...one, applied: 0, damaged: 1 })],
      peers: [],
      software: 't'
    }
  ]
  const text = formatStatus(shopAStatus(a, b, log, now, reports))
  assert.match(text, /\(node running; 2 members, /)
  assert.match(text, /epoch 0: 1 entry, 100 B, .*held by 1 of 1 other site$/m)
  assert.match(text, /shop-b +replica +downloaded 1, applied 0 +lag 1 entry, /)
  assert.match(text, / 1 damaged block rejected/)
  assert.doesNotMatch(text, /\b1 (entries|members|datasets|rows|blocks|sites|other sites)\b/)
})

test('status: a data key on its way while a site joins is no warning; one still missing an hour on is', () => {
  const waiting = {
    applied: 0,
    downloaded: 0,
    error: 'DATA_KEY_MISSING',
    errorMessage: "DATA_KEY_MISSING: till's logs are encrypted and its data key has not reached this site yet"
  }
  const joinedAt = (ago: number) => {
    const state = twoSiteState(a, b, log, now)
    state.members[1].addedAt = now - ago
    state.datasets[0].encryptedFrom = 0
    return buildStatus({
      self: b,
      site: 'shop-b',
      state,
      reports: [
        { site: a, siteName: 'shop-a', at: now, holdings: [holding({})], peers: [], software: 't' },
        { site: b, siteName: 'shop-b', at: now, holdings: [holding(waiting)], peers: [], software: 't' }
      ],
      connected: new Set([Buffer.from(a).toString('hex')]),
      running: true,
      refused: [],
      now,
      thresholds: DEFAULT_THRESHOLDS,
      dataKeys: []
    })
  }
  const fresh = joinedAt(60_000)
  assert.equal(fresh.verdict, 'OK', JSON.stringify(fresh.reasons))
  const late = joinedAt(2 * HOUR)
  assert.equal(late.verdict, 'WARN')
  assert.ok(late.reasons.some((r) => /shop-b's copy of till is failing: DATA_KEY_MISSING/.test(r.text)))
  assert.ok(late.reasons.some((r) => /this site has not received the data key of till yet/.test(r.text)))
})
