import { test } from 'node:test'
import assert from 'node:assert/strict'
import c from 'compact-encoding'
import crypto from 'hypercore-crypto'
import {
  CONTROL_MESSAGES,
  REPORT_BATCH,
  REPORT_CAPTURE_LAG,
  CONTROL_VERSION,
  ControlMessage,
  JOIN_MESSAGES,
  JoinMessage,
  MeshError,
  datasetsMessage,
  decodeJoinCode,
  encodeJoinCode,
  helloEncoding,
  membersMessage,
  reportMessage,
  signReport,
  verifyReport,
  type Report
} from '../protocol/index.ts'

test('control messages round-trip; a hello of another version still decodes to its version', () => {
  const meshId = crypto.randomBytes(32)
  const hello = { version: CONTROL_VERSION, meshId, site: 'shop-a', software: 'branchmesh/0.1.0' }
  assert.deepEqual(c.decode(helloEncoding, c.encode(helloEncoding, hello)), hello)
  const v2 = Buffer.concat([c.encode(c.uint, 2), Buffer.from('whatever a newer version sends')])
  assert.equal(c.decode(helloEncoding, v2).version, 2)
  assert.equal(c.decode(helloEncoding, v2).meshId, null)

  const members = [{ key: crypto.randomBytes(32), site: 'shop-b', addedAt: 1795300000000 }]
  assert.deepEqual(c.decode(membersMessage, c.encode(membersMessage, members)), members)
  const datasets = [
    {
      id: 'ab12',
      name: 'till',
      engine: 'sqlite',
      origin: crypto.randomBytes(32),
      originSite: 'shop-a',
      epoch: 3,
      log: crypto.randomBytes(32),
      createdAt: 1795300000000
    }
  ]
  assert.deepEqual(c.decode(datasetsMessage, c.encode(datasetsMessage, datasets)), datasets)
  // Messages after the hello are strict: another version is a typed error, not a wrong decode.
  const bumped = Buffer.from(c.encode(membersMessage, members))
  bumped[0] = 2
  assert.throws(
    () => c.decode(membersMessage, bumped),
    (e: unknown) => e instanceof MeshError && e.code === 'PROTOCOL_VERSION'
  )
})

test('reports are signed by their site: a relayed report that was altered fails verification', () => {
  const kp = crypto.keyPair()
  const report: Report = {
    site: kp.publicKey,
    siteName: 'shop-a',
    at: 1795300000000,
    holdings: [
      {
        dataset: 'ab12',
        log: crypto.randomBytes(32),
        epoch: 0,
        length: 10,
        byteLength: 999,
        downloaded: 10,
        applied: 9,
        appliedBytes: 900,
        lastWriteAt: 1795300000000,
        appliedWriteAt: 1795299999000,
        error: '',
        errorMessage: '',
        damaged: 0
      }
    ],
    peers: [crypto.randomBytes(32)],
    software: 'branchmesh/0.1.0'
  }
  const signed = signReport(report, kp.secretKey)
  const wire = c.decode(reportMessage, c.encode(reportMessage, signed))
  assert.deepEqual(wire.report, report)
  assert.equal(verifyReport(wire), true)
  const forged = Buffer.from(wire.body)
  forged[forged.length - 20] ^= 1
  assert.equal(verifyReport({ ...wire, body: forged, report: wire.report }), false)
  const other = crypto.keyPair()
  assert.equal(
    verifyReport(signReport({ ...report, site: kp.publicKey }, other.secretKey)),
    false,
    'signed by another key'
  )
})

test('join codes round-trip; a mistyped or truncated code is BAD_JOIN_CODE', () => {
  const j = {
    meshId: crypto.randomBytes(32),
    inviter: crypto.randomBytes(32),
    seed: crypto.randomBytes(32),
    expiresAt: 1795390000
  }
  const code = encodeJoinCode(j)
  assert.match(code, /^bm1-[A-Za-z0-9_-]+$/)
  assert.deepEqual(decodeJoinCode(`  ${code}\n`), j)
  const bad = (s: string) =>
    assert.throws(
      () => decodeJoinCode(s),
      (e: unknown) => e instanceof MeshError && e.code === 'BAD_JOIN_CODE',
      s
    )
  for (let i = 4; i < code.length; i += 7) bad(code.slice(0, i) + (code[i] === 'x' ? 'y' : 'x') + code.slice(i + 1))
  bad(code.slice(0, -3))
  bad(code.slice(4))
  bad('')
})

test('the message tables put every control and join message in the slot its constant names', () => {
  assert.deepEqual(
    CONTROL_MESSAGES.map((m, slot) => [m.name, slot]),
    Object.entries(ControlMessage).sort((a, b) => a[1] - b[1])
  )
  assert.deepEqual(
    JOIN_MESSAGES.map((m, slot) => [m.name, slot]),
    Object.entries(JoinMessage).sort((a, b) => a[1] - b[1])
  )
  assert.equal(CONTROL_MESSAGES[ControlMessage.report].encoding, reportMessage)
  assert.equal(CONTROL_MESSAGES[ControlMessage.members].encoding, membersMessage)
})

test('a report carries the origin’s capture lag in an extension; one without it (older software) decodes', () => {
  const kp = crypto.keyPair()
  const base = { dataset: 'ab12', log: crypto.randomBytes(32), epoch: 0, length: 10, byteLength: 999, downloaded: 10 }
  const h = {
    ...base,
    applied: 10,
    appliedBytes: 999,
    lastWriteAt: 1,
    appliedWriteAt: 1,
    error: '',
    errorMessage: '',
    damaged: 0
  }
  const report: Report = {
    site: kp.publicKey,
    siteName: 'shop-a',
    at: 1795300000000,
    holdings: [{ ...h }, { ...h, dataset: 'cd34', captureLag: { bytes: 21_000_000, seconds: 17.25 } }],
    peers: [],
    software: 'branchmesh/0.1.0'
  }
  const signed = signReport(report, kp.secretKey)
  const wire = c.decode(reportMessage, c.encode(reportMessage, signed))
  assert.deepEqual(wire.report, report)
  assert.equal(verifyReport(wire), true)

  // Without a lag the body is byte for byte what older software wrote (it ends after `software`).
  const plain = signReport({ ...report, holdings: [{ ...h }] }, kp.secretKey)
  const tail = Buffer.from(c.encode(c.string, 'branchmesh/0.1.0'))
  assert.deepEqual(Buffer.from(plain.body).subarray(plain.body.length - tail.length), tail)
  assert.equal(c.decode(reportMessage, c.encode(reportMessage, plain)).report.holdings[0].captureLag, undefined)

  // Older software reads a report with the extension as the same report without it: its layout is a prefix,
  // and compact-encoding leaves the bytes after `software` unread.
  const old = signReport({ ...report, holdings: report.holdings.map(({ captureLag: _, ...x }) => x) }, kp.secretKey)
  assert.ok(signed.body.length > old.body.length)
  assert.deepEqual(Buffer.from(signed.body).subarray(0, old.body.length), Buffer.from(old.body))

  // Unknown flag bits, and a lag naming a holding that is not there, are refused.
  const flagged = Buffer.concat([Buffer.from(plain.body), c.encode(c.uint, 4)])
  const refused = (body: Uint8Array, code: string) =>
    assert.throws(
      () => c.decode(reportMessage, c.encode(reportMessage, { ...plain, body })),
      (e: unknown) => e instanceof MeshError && e.code === code
    )
  refused(flagged, 'UNKNOWN_FLAGS')
  const lagEntry = Buffer.concat([c.encode(c.uint, 1), c.encode(c.uint, 5), c.encode(c.uint, 1), c.encode(c.uint, 1)])
  refused(Buffer.concat([Buffer.from(plain.body), c.encode(c.uint, REPORT_CAPTURE_LAG), lagEntry]), 'BAD_ENTRY')
})

test('a report carries an origin’s batching after every older section; older readers stop before it', () => {
  const kp = crypto.keyPair()
  const h = {
    dataset: 'ab12',
    log: crypto.randomBytes(32),
    epoch: 0,
    length: 10,
    byteLength: 999,
    downloaded: 10,
    applied: 10,
    appliedBytes: 999,
    lastWriteAt: 1,
    appliedWriteAt: 1,
    error: '',
    errorMessage: '',
    damaged: 0
  }
  const base: Report = {
    site: kp.publicKey,
    siteName: 'shop-a',
    at: 1795300000000,
    holdings: [{ ...h }, { ...h, dataset: 'cd34', captureLag: { bytes: 5, seconds: 1 } }],
    peers: [],
    software: 'branchmesh/0.1.0'
  }
  const batched: Report = { ...base, holdings: [{ ...h, batchSeconds: 60 }, { ...base.holdings[1] }] }
  const signed = signReport(batched, kp.secretKey)
  assert.deepEqual(c.decode(reportMessage, c.encode(reportMessage, signed)).report, batched)
  // Without batching the body is what it was before (no batching section, no second flags word for it).
  const plain = signReport(base, kp.secretKey)
  assert.ok(Buffer.from(signed.body).subarray(0, plain.body.length).equals(Buffer.from(plain.body)))
  assert.equal(c.decode(reportMessage, c.encode(reportMessage, plain)).report.holdings[0].batchSeconds, undefined)
  // The section starts with the second flags word, bit 1, after the first extension's sections.
  const tail = Buffer.from(signed.body).subarray(plain.body.length)
  assert.equal(tail[0], REPORT_BATCH)
  // A batching entry naming a holding that is not there is refused.
  const bad = Buffer.concat([
    Buffer.from(plain.body),
    c.encode(c.uint, REPORT_BATCH),
    c.encode(c.uint, 1),
    c.encode(c.uint, 7),
    c.encode(c.uint, 60_000)
  ])
  assert.throws(
    () => c.decode(reportMessage, c.encode(reportMessage, { ...plain, body: bad })),
    (e: unknown) => e instanceof MeshError && e.code === 'BAD_ENTRY'
  )
})
