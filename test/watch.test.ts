/**
 * Issue 17: usual hours, versions and disk space in status (pure: buildStatus with the clock as the seam), the
 * report's health section and how older and newer sites read it, and the application's version read from a
 * real command that fails or hangs.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import c from 'compact-encoding'
import crypto from 'hypercore-crypto'
import { pgCluster } from './helpers/pg.ts'
import { twoSiteState } from './helpers/status.ts'
import { postgresEngine, sqliteEngine } from '../adapters/index.ts'
import {
  buildStatus,
  compareVersions,
  DEFAULT_THRESHOLDS,
  measureDisks,
  readAppVersion,
  recordContact,
  snapshotRoom,
  usuallyUp,
  type ContactHistory,
  type StatusThresholds
} from '../node/index.ts'
import { openReport, REPORT_HEALTH, signReport, type Report, type SiteHealth } from '../protocol/index.ts'
import { readConfig } from '../tools/config.ts'

const MIN = 60_000
const HOUR = 60 * MIN
const DAY = 24 * HOUR
// Wednesday 25 November 2026, 10:20 UTC.
const now = Date.UTC(2026, 10, 25, 10, 20)
const a = crypto.keyPair()
const b = crypto.keyPair().publicKey
const log = crypto.randomBytes(32)
const hexOf = (k: Uint8Array) => Buffer.from(k).toString('hex')

const GB = 1024 ** 3
function health(over: Partial<SiteHealth> = {}): SiteHealth {
  return {
    branchmesh: '0.2.0',
    node: 'v22.12.0',
    os: 'Linux 6.1.0 x64',
    sqlite: '3.40.1',
    postgres: '',
    app: '',
    appError: '',
    disks: [{ what: 'data directory', path: '/var/lib/branchmesh', free: 50 * GB, total: 100 * GB }],
    paused: '',
    ...over
  }
}

/** shop-b's view: shop-a last heard `aAt` with health `aHealth`; shop-b itself healthy. */
function status(
  opts: { aAt?: number; aHealth?: SiteHealth; contacts?: ContactHistory; t?: Partial<StatusThresholds> } = {}
) {
  const reports: Report[] = [
    { site: a.publicKey, siteName: 'shop-a', at: opts.aAt ?? now, holdings: [], peers: [], software: 't' },
    { site: b, siteName: 'shop-b', at: now, holdings: [], peers: [], software: 't', health: health() }
  ]
  if (opts.aHealth) reports[0].health = opts.aHealth
  return buildStatus({
    self: b,
    site: 'shop-b',
    state: { ...twoSiteState(a.publicKey, b, log, now), datasets: [] },
    reports,
    connected: new Set(),
    running: true,
    refused: [],
    now,
    thresholds: { ...DEFAULT_THRESHOLDS, ...opts.t },
    contacts: opts.contacts
  })
}

/** A contact history of shop-a heard every 5 minutes, 08:00 to 18:00 UTC on weekdays, for `weeks` weeks. */
function officeHours(weeks: number): ContactHistory {
  const h: ContactHistory = {}
  for (let t = now - weeks * 7 * DAY - DAY; t < now - 30 * MIN; t += 5 * MIN) {
    const d = new Date(t)
    if (d.getUTCDay() === 0 || d.getUTCDay() === 6 || d.getUTCHours() < 8 || d.getUTCHours() >= 18) continue
    recordContact(h, hexOf(a.publicKey), t)
  }
  return h
}

test('usual hours: silent 20 minutes at 10 am on a weekday, when the shop is always up, is a WARN', () => {
  const s = status({ aAt: now - 20 * MIN, contacts: officeHours(4) })
  assert.equal(s.verdict, 'WARN', JSON.stringify(s.reasons))
  assert.match(s.reasons[0].text, /shop-a has not been heard from for 20 minutes, and it is usually up at this hour/)
})

test('usual hours: silent 10 minutes is not yet a WARN; the threshold is configurable', () => {
  assert.equal(status({ aAt: now - 10 * MIN, contacts: officeHours(4) }).verdict, 'OK')
  const t = { usualSilentSeconds: 300 }
  assert.equal(status({ aAt: now - 10 * MIN, contacts: officeHours(4), t }).verdict, 'WARN')
})

test('usual hours: silent at night or at the weekend is OK (the long thresholds still apply)', () => {
  const contacts = officeHours(4)
  const night = buildStatusAt(now + 12 * HOUR, now + 12 * HOUR - 4 * HOUR, contacts)
  assert.equal(night.verdict, 'OK', JSON.stringify(night.reasons))
  // Saturday 11:00, silent since Friday 18:00: 17 hours, past the 16-hour fallback.
  const sat = Date.UTC(2026, 10, 28, 11)
  const weekend = buildStatusAt(sat, Date.UTC(2026, 10, 27, 18), contacts)
  assert.equal(weekend.verdict, 'WARN')
  assert.match(weekend.reasons[0].text, /has not been heard from for 17 hours$/)
})

test('usual hours: a site with less than two weeks of history falls back to the long thresholds', () => {
  assert.equal(status({ aAt: now - 3 * HOUR, contacts: officeHours(1) }).verdict, 'OK')
  assert.equal(status({ aAt: now - 3 * HOUR }).verdict, 'OK')
  assert.equal(status({ aAt: now - 17 * HOUR }).verdict, 'WARN')
})

test('usual hours: the history keeps four weeks, and an hour heard only in part is not usual', () => {
  const h: ContactHistory = {}
  const k = hexOf(a.publicKey)
  for (let w = 1; w <= 6; w++) recordContact(h, k, now - w * 7 * DAY)
  assert.equal(Object.keys(h[k]).length, 4, 'weeks 5 and 6 were dropped')
  // Heard once in the hour each week (a shop that closes at 18:05): not up through it.
  assert.equal(usuallyUp(h, k, now), false)
})

function buildStatusAt(at: number, aAt: number, contacts: ContactHistory) {
  return buildStatus({
    self: b,
    site: 'shop-b',
    state: { ...twoSiteState(a.publicKey, b, log, at), datasets: [] },
    reports: [
      { site: a.publicKey, siteName: 'shop-a', at: aAt, holdings: [], peers: [], software: 't' },
      { site: b, siteName: 'shop-b', at, holdings: [], peers: [], software: 't' }
    ],
    connected: new Set(),
    running: true,
    refused: [],
    now: at,
    thresholds: DEFAULT_THRESHOLDS,
    contacts
  })
}

test('versions: every site shows what it runs; an older branchmesh than the newest in the mesh is a WARN', () => {
  const s = status({ aHealth: health({ branchmesh: '0.1.9', app: 'till 4.2' }) })
  assert.equal(s.verdict, 'WARN')
  assert.deepEqual(
    s.reasons.map((r) => r.text),
    [
      'shop-a runs branchmesh 0.1.9, older than 0.2.0 at shop-b: upgrade it there (sites of one mesh should ' +
        'run the same version)'
    ]
  )
  const shopA = s.members.find((m) => m.site === 'shop-a')!
  assert.equal(shopA.health?.app, 'till 4.2')
  assert.equal(shopA.health?.nodePastEndOfLife, false)
  assert.equal(status({ aHealth: health() }).verdict, 'OK')
  assert.ok(compareVersions('0.10.0', '0.9.9') > 0 && compareVersions('1.0.0-rc.1', '1.0.0') < 0)
})

test('versions: a Node.js line past its end of life is a WARN (with a configurable grace)', () => {
  const s = status({ aHealth: health({ node: 'v20.19.0' }) })
  assert.equal(s.verdict, 'WARN')
  assert.match(s.reasons[0].text, /shop-a runs Node\.js v20\.19\.0, whose line reached its end of life on 2026-04-30/)
  assert.equal(s.members.find((m) => m.site === 'shop-a')?.health?.nodePastEndOfLife, true)
  assert.equal(status({ aHealth: health({ node: 'v20.19.0' }), t: { nodeEolGraceDays: 365 } }).verdict, 'OK')
  // A line this site's table does not know is not called past its end of life.
  assert.equal(status({ aHealth: health({ node: 'v31.0.0' }) }).verdict, 'OK')
})

test('disk: WARN under 10% or 2 GB, CRIT under 2% or 500 MB, both configurable', () => {
  const disk = (free: number, total: number) =>
    health({ disks: [{ what: 'data directory, till', path: '/srv', free, total }] })
  const level = (free: number, total: number, t?: Partial<StatusThresholds>) =>
    status({ aHealth: disk(free, total), t }).verdict
  assert.equal(level(50 * GB, 100 * GB), 'OK')
  assert.equal(level(9 * GB, 100 * GB), 'WARN')
  assert.equal(level(1.5 * GB, 10 * GB), 'WARN', 'under 2 GB though 15%')
  assert.equal(level(1.5 * GB, 100 * GB), 'CRIT', 'under 2%')
  assert.equal(level(400 * 1024 ** 2, 2 * GB), 'CRIT', 'under 500 MB though 19%')
  assert.equal(level(9 * GB, 100 * GB, { diskWarnPercent: 5 }), 'OK')
  assert.equal(level(9 * GB, 100 * GB, { diskCritPercent: 20 }), 'CRIT')
  const s = status({ aHealth: disk(1.5 * GB, 100 * GB) })
  assert.match(s.reasons[0].text, /shop-a has 1\.5 GB free of 100\.0 GB \(1%\) on the disk of its data directory, till/)
})

test('disk: snapshots pause rather than fill the disk, and the pause shows as a WARN', () => {
  assert.equal(snapshotRoom(50 * GB, 100 * GB, 1 * GB, DEFAULT_THRESHOLDS), null)
  assert.match(snapshotRoom(3 * GB, 100 * GB, 2 * GB, DEFAULT_THRESHOLDS) ?? '', /snapshots are paused/)
  const s = status({ aHealth: health({ paused: 'no room' }) })
  assert.deepEqual(s.reasons, [{ level: 'WARN', text: 'snapshots at shop-a are paused: no room' }])
})

test('disk: measured for real, one entry per disk', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'disk-'))
  try {
    const d = measureDisks([
      { what: 'data directory', folder: dir },
      { what: 'till', folder: dir },
      { what: 'gone', folder: path.join(dir, 'nope') }
    ])
    assert.equal(d.length, 1)
    assert.equal(d[0].what, 'data directory, till')
    assert.ok(d[0].total > 0 && d[0].free > 0 && d[0].free <= d[0].total)
  } finally {
    fs.rmSync(dir, { recursive: true })
  }
})

test('report: the health section round-trips, and a report without it is the same bytes as before', () => {
  const base: Report = { site: a.publicKey, siteName: 'shop-a', at: 1, holdings: [], peers: [], software: 't' }
  const plain = signReport(base, a.secretKey)
  const h = health({ app: 'till 4.2', appError: '', paused: '' })
  const withH = signReport({ ...base, health: h }, a.secretKey)
  assert.deepEqual(openReport(withH.body, withH.signature).report.health, h)
  assert.ok(Buffer.from(withH.body).subarray(0, plain.body.byteLength).equals(Buffer.from(plain.body)))
  assert.ok(withH.body.byteLength - plain.body.byteLength < 200, 'small enough for every heartbeat')
})

test('report: sites before issue 17 read a report with health (their flags word gets no new bit)', () => {
  // Older software refuses a first flags word with any bit but notices (1) and capture lag (2), and leaves
  // what follows their sections unread: health must come after them, under a second flags word.
  const base: Report = { site: a.publicKey, siteName: 'shop-a', at: 1, holdings: [], peers: [], software: 't' }
  const plain = signReport(base, a.secretKey)
  const tail = Buffer.from(signReport({ ...base, health: health() }, a.secretKey).body).subarray(plain.body.byteLength)
  assert.equal(tail[0], 0, 'first flags word: nothing older software does not know')
  assert.equal(tail[1], REPORT_HEALTH, 'second flags word: health')
  const n = { dataset: 'd1', kind: 'replaced', at: 5, seq: 9, text: 'an older copy' }
  const withN = signReport({ ...base, notices: [n] }, a.secretKey)
  const both = signReport({ ...base, notices: [n], health: health() }, a.secretKey)
  assert.ok(Buffer.from(both.body).subarray(0, withN.body.byteLength).equals(Buffer.from(withN.body)))
  assert.deepEqual(openReport(both.body, both.signature).report.notices, [n])
})

test('report: second-word flag bits above health are sections of newer software, read past and ignored', () => {
  const base: Report = { site: a.publicKey, siteName: 'shop-a', at: 1, holdings: [], peers: [], software: 't' }
  const withH = signReport({ ...base, health: health() }, a.secretKey)
  const plain = signReport(base, a.secretKey)
  const tail = Buffer.from(withH.body).subarray(plain.body.byteLength)
  const future = Buffer.concat([
    Buffer.from(plain.body),
    Buffer.from([0]),
    Buffer.from(c.encode(c.uint, REPORT_HEALTH | 64)),
    tail.subarray(2),
    Buffer.from('a future section')
  ])
  assert.deepEqual(openReport(future, withH.signature).report.health, health())
  // The first word still refuses what no software ever writes there.
  const bad = Buffer.concat([Buffer.from(plain.body), Buffer.from(c.encode(c.uint, 4))])
  assert.throws(() => openReport(bad, plain.signature), { code: 'UNKNOWN_FLAGS' })
})

test('appVersion: a version, a file, a command; one that fails or hangs is a clear error in bounded time', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'appv-'))
  try {
    fs.writeFileSync(path.join(dir, 'VERSION'), '\n4.2.1\nbuild 77\n')
    assert.deepEqual(await readAppVersion({ version: '4.2.1' }, dir), { version: '4.2.1', error: '' })
    assert.deepEqual(await readAppVersion({ file: path.join(dir, 'VERSION') }, dir), { version: '4.2.1', error: '' })
    assert.deepEqual(await readAppVersion({ command: 'echo till 4.3; echo more' }, dir), {
      version: 'till 4.3',
      error: ''
    })
    const missing = await readAppVersion({ file: path.join(dir, 'NOPE') }, dir)
    assert.match(missing.error, /cannot read appVersion file .*NOPE/)
    assert.deepEqual(await readAppVersion({ file: '/dev/zero' }, dir), {
      version: '',
      error: 'appVersion file /dev/zero is not a file'
    })
    const failing = await readAppVersion({ command: 'echo broken >&2; exit 3' }, dir)
    assert.deepEqual(failing, {
      version: '',
      error: 'appVersion command "echo broken >&2; exit 3" failed (exit 3): broken'
    })
    // A command that never ends (its shell's child too) is stopped: the promise settles with the error.
    const hanging = await readAppVersion({ command: 'sleep 600; echo 1' }, dir, 300)
    assert.equal(hanging.error, 'appVersion command "sleep 600; echo 1" did not finish within 0.3 s')
    const s = status({ aHealth: health({ appError: failing.error }) })
    assert.equal(s.verdict, 'WARN')
    assert.match(s.reasons[0].text, /shop-a cannot read the application's version: .*fix appVersion/)
  } finally {
    fs.rmSync(dir, { recursive: true })
  }
})

test('config: appVersion and the new status thresholds are checked, with hints', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cfg-'))
  const write = (extra: Record<string, unknown>) =>
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ site: 'shop-a', datasets: [], ...extra }))
  try {
    write({ appVersion: { file: 'VERSION' }, status: { diskWarnPercent: 15, nodeEolGraceDays: 0 } })
    const cfg = readConfig(dir)
    assert.deepEqual(cfg.appVersion, { file: path.join(dir, 'VERSION') })
    assert.equal(cfg.status.diskWarnPercent, 15)
    for (const bad of [{ appVersion: { cmd: 'x' } }, { appVersion: 3 }, { status: { diskWarnPercent: 150 } }]) {
      write(bad)
      assert.throws(() => readConfig(dir), { code: 'BAD_CONFIG' }, JSON.stringify(bad))
    }
    write({ appVersion: { comand: 'x' } })
    assert.throws(
      () => readConfig(dir),
      (e: { hint?: string }) => /Did you mean "command"/.test(e.hint ?? '')
    )
  } finally {
    fs.rmSync(dir, { recursive: true })
  }
})

test('engines tell their version and where their data is: SQLite, and a local PostgreSQL server', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'about-'))
  t.after(() => fs.rmSync(dir, { recursive: true }))
  const sqlite = await sqliteEngine.about!(path.join(dir, 'shop.db'))
  assert.match(sqlite.version, /^SQLite 3\.\d+\.\d+$/)
  assert.equal(sqlite.folder, dir)
  const pg = await pgCluster(t)
  const about = await postgresEngine.about!(pg.url())
  const [row] = await pg.query('SHOW server_version')
  assert.equal(about.version, `PostgreSQL ${row.server_version!.split(' ')[0]}`)
  assert.equal(about.folder, (await pg.query('SHOW data_directory'))[0].data_directory)
  const d = measureDisks([{ what: 'erp', folder: about.folder! }])
  assert.ok(d[0].free > 0)
  // A server that is not there: the call fails (the node leaves that database out of the report).
  await assert.rejects(postgresEngine.about!('postgres://postgres@127.0.0.1:1/none'))
})

test('versions: a site on software before the health section is compared by its report software', () => {
  const s = buildStatus({
    self: b,
    site: 'shop-b',
    state: { ...twoSiteState(a.publicKey, b, log, now), datasets: [] },
    reports: [
      { site: a.publicKey, siteName: 'shop-a', at: now, holdings: [], peers: [], software: 'branchmesh/0.1.0' },
      { site: b, siteName: 'shop-b', at: now, holdings: [], peers: [], software: 'branchmesh/0.2.0', health: health() }
    ],
    connected: new Set(),
    running: true,
    refused: [],
    now,
    thresholds: DEFAULT_THRESHOLDS
  })
  assert.deepEqual(
    s.reasons.map((r) => r.text),
    [
      'shop-a runs branchmesh 0.1.0, older than 0.2.0 at shop-b: upgrade it there (sites of one mesh should ' +
        'run the same version)'
    ]
  )
  assert.equal(s.members.find((m) => m.site === 'shop-a')?.health, null)
})
