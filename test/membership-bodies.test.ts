/** The bodies of member, removal, rotation and policy statements (protocol/membership.ts), and the welcome. */
import assert from 'node:assert/strict'
import test from 'node:test'
import c from 'compact-encoding'
import crypto from 'hypercore-crypto'
import {
  StatementKind,
  decodeMemberBody,
  decodePolicyBody,
  decodeRemovalBody,
  decodeRotationBody,
  encodeMemberBody,
  encodePolicyBody,
  encodeRemovalBody,
  encodeRotationBody,
  signRotationProof,
  signStatement,
  verifyRotationProof,
  welcomeMessage,
  type Welcome
} from '../protocol/index.ts'

const meshId = crypto.randomBytes(32)
const key = crypto.keyPair().publicKey

test('each body survives encoding, role included', () => {
  for (const role of ['full', 'blind', 'observer'] as const) {
    const m = { key, site: 'shop-a', role, addedAt: 1700000000000 }
    assert.deepEqual({ ...decodeMemberBody(encodeMemberBody(m)), key }, m)
  }
  const r = { key, site: 'till-1', reason: 'stolen' }
  assert.equal(decodeRemovalBody(encodeRemovalBody(r)).reason, 'stolen')
  const p = { dataset: 'abc', sites: [key, crypto.keyPair().publicKey] }
  assert.equal(decodePolicyBody(encodePolicyBody(p)).sites.length, 2)
  assert.equal(decodePolicyBody(encodePolicyBody({ dataset: 'abc', sites: [] })).sites.length, 0)
})

test('unknown flag bits, an unknown role and truncated bytes are refused with their codes', () => {
  const m = Buffer.from(encodeMemberBody({ key, site: 'a', role: 'full', addedAt: 1 }))
  const flagged = Buffer.from(m)
  flagged[0] = 4
  assert.throws(() => decodeMemberBody(flagged), { code: 'UNKNOWN_FLAGS' })
  const role = Buffer.from(m)
  role[1 + 32 + 2] = 7
  assert.throws(() => decodeMemberBody(role), { code: 'UNKNOWN_KIND' })
  assert.throws(() => decodeMemberBody(m.subarray(0, 10)), { code: 'BAD_ENTRY' })
  assert.throws(() => decodeRemovalBody(Buffer.from([1])), { code: 'UNKNOWN_FLAGS' })
})

test("a rotation's proof binds the new key to the old key and the mesh", () => {
  const old = crypto.keyPair()
  const neu = crypto.keyPair()
  const body = { site: 'shop-b', newKey: neu.publicKey, proof: signRotationProof(meshId, old.publicKey, neu.secretKey) }
  const back = decodeRotationBody(encodeRotationBody(body))
  assert.ok(verifyRotationProof(meshId, old.publicKey, back))
  assert.equal(verifyRotationProof(crypto.randomBytes(32), old.publicKey, back), false, 'another mesh')
  assert.equal(verifyRotationProof(meshId, crypto.keyPair().publicKey, back), false, 'another old key')
  const thief = crypto.keyPair()
  const stolen = { ...body, proof: signRotationProof(meshId, old.publicKey, thief.secretKey) }
  assert.equal(verifyRotationProof(meshId, old.publicKey, stolen), false, 'signed by a key other than the new one')
})

test('a welcome carries the statements in a trailing section an older welcome lacks', () => {
  const kp = crypto.keyPair()
  const s = signStatement(
    StatementKind.member,
    meshId,
    kp,
    encodeMemberBody({ key, site: 'd', role: 'full', addedAt: 1 })
  )
  const w: Welcome = { version: 1, meshId, members: [], datasets: [], statements: [s] }
  const back = c.decode(welcomeMessage, c.encode(welcomeMessage, w))
  assert.equal(back.statements?.length, 1)
  assert.deepEqual(Buffer.from(back.statements![0].signature), Buffer.from(s.signature))
  const old = c.decode(welcomeMessage, c.encode(welcomeMessage, { ...w, statements: undefined }))
  assert.equal(old.statements, undefined)
})
