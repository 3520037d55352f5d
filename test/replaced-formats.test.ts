/**
 * The formats and the pure status of issue 14: the SQLite capture position (version 2 beside version 1), the
 * report's optional trailing section (notices), and what status says mends a checkpoint mismatch.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import c from 'compact-encoding'
import crypto from 'hypercore-crypto'
import { decodeSqliteSource } from '../adapters/sqlite/capture.ts'
import { twoSiteState } from './helpers/status.ts'
import { buildStatus, DEFAULT_THRESHOLDS } from '../node/index.ts'
import { openReport, signReport, verifyReport, type Report } from '../protocol/index.ts'
import type { LocalDataset } from '../node/state.ts'

test('a version-1 SQLite capture position still decodes (no identity, counters 0); an unknown one is BAD_LOG', () => {
  const v1 = Buffer.from([1, 2, 3, 40, 0, 5, 7, 1])
  const p = decodeSqliteSource(v1)
  assert.equal(p.identity, null)
  assert.equal(p.resets, 0)
  assert.deepEqual(p.tables, [
    { id: 3, seq: 40, reset: 0 },
    { id: 5, seq: 7, reset: 1 }
  ])
  assert.throws(
    () => decodeSqliteSource(Buffer.from([3, 0])),
    (e: { code: string }) => e.code === 'BAD_LOG'
  )
})

const key = crypto.keyPair()
const base: Report = { site: key.publicKey, siteName: 'shop-a', at: 1, holdings: [], peers: [], software: 't' }

const NOTICES = 'a report with notices: signed, decoded; without, the bytes of protocol 1; unknown flags refused'
test(NOTICES, () => {
  const plain = signReport(base, key.secretKey)
  const n = { dataset: 'd1', kind: 'replaced', at: 5, seq: 9, text: 'an older copy' }
  const withN = signReport({ ...base, notices: [n] }, key.secretKey)
  assert.ok(verifyReport(withN))
  assert.deepEqual(openReport(withN.body, withN.signature).report.notices, [n])
  // An older site stops reading where protocol 1's report ends: the same bytes as a report without notices.
  assert.ok(Buffer.from(withN.body).subarray(0, plain.body.byteLength).equals(Buffer.from(plain.body)))
  assert.equal(openReport(plain.body, plain.signature).report.notices, undefined)
  const bad = Buffer.concat([Buffer.from(plain.body), Buffer.from(c.encode(c.uint, 4))])
  assert.throws(
    () => openReport(bad, plain.signature),
    (e: { code: string }) => e.code === 'UNKNOWN_FLAGS'
  )
})

const HOUR = 3600_000
const now = Date.UTC(2026, 10, 21, 12)
const a = crypto.keyPair().publicKey
const b = crypto.keyPair().publicKey
const log = crypto.randomBytes(32)

function status(local: Partial<LocalDataset>, notices: Report['notices'] = []) {
  const h = { dataset: 'd1', log, epoch: 0, length: 100, byteLength: 1, downloaded: 100, applied: 100, appliedBytes: 1 }
  const t = { lastWriteAt: now, appliedWriteAt: now, error: '', errorMessage: '', damaged: 0 }
  return buildStatus({
    self: b,
    site: 'shop-b',
    state: twoSiteState(a, b, log, now, [{ dataset: 'd1', path: '/x', written: [], divergences: [], ...local }]),
    reports: [
      { site: a, siteName: 'shop-a', at: now, holdings: [{ ...h, ...t }], peers: [], software: 't', notices },
      { site: b, siteName: 'shop-b', at: now, holdings: [{ ...h, ...t }], peers: [], software: 't' }
    ],
    connected: new Set(),
    running: true,
    refused: [],
    now,
    thresholds: DEFAULT_THRESHOLDS
  })
}

test('a checkpoint mismatch: mesh repair only where verify found a difference, mesh resync where none', () => {
  const checkpoint = { length: 50, seq: 50, ok: false, rows: 10, originRows: 11, at: now }
  const verify = (ok: boolean, seq: number, repaired = false) => ({
    dataset: 'till',
    seq,
    at: now,
    ok,
    tables: [],
    repaired,
    parted: null
  })
  const text = (s: ReturnType<typeof status>) =>
    s.reasons
      .filter((r) => /checkpoint/.test(r.text))
      .map((r) => r.text)
      .join('\n')
  assert.match(
    text(status({ checkpoint })),
    /run mesh verify till: if this copy differs from the log, mesh repair till mends it; .*mesh resync till at shop-a/
  )
  const equal = text(status({ checkpoint, verified: verify(true, 60) }))
  assert.match(equal, /equal to the log .* mesh resync till at shop-a/)
  assert.doesNotMatch(equal, /mesh repair/)
  assert.match(text(status({ checkpoint, verified: verify(false, 60) })), /run mesh repair till/)
  assert.match(text(status({ checkpoint, verified: verify(true, 60, true) })), /mesh checkpoint till at shop-a/)
  // A verify from before the checkpoint says nothing about it.
  assert.match(text(status({ checkpoint, verified: verify(true, 40) })), /run mesh verify till/)
})

test('a replaced origin file is a WARN for a week at every site, with the restore command; a resync is not', () => {
  const n = {
    dataset: 'd1',
    kind: 'replaced',
    at: now - HOUR,
    seq: 70,
    text: 'it is an older copy of the captured file'
  }
  const s = status({}, [n, { ...n, kind: 'resync', at: now - 2 * HOUR, seq: 60, text: 'asked with mesh resync' }])
  assert.equal(s.datasets[0].copies.length, 2)
  const warns = s.reasons.filter((r) => /copied into the log again/.test(r.text))
  assert.equal(warns.length, 1)
  assert.equal(warns[0].level, 'WARN')
  assert.match(warns[0].text, /the database of till at shop-a was replaced \(it is an older copy/)
  assert.match(warns[0].text, /mesh restore till --before 70 --to /)
  const later = status({}, [{ ...n, at: now - 8 * 24 * HOUR }])
  assert.equal(later.reasons.filter((r) => /copied into the log again/.test(r.text)).length, 0)
})
