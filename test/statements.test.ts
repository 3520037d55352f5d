import assert from 'node:assert/strict'
import test from 'node:test'
import crypto from 'hypercore-crypto'
import {
  CONTROL_MESSAGES,
  ControlMessage,
  StatementKind,
  decodeStatement,
  encodeStatement,
  signStatement,
  statementId,
  statementsMessage,
  verifyStatement
} from '../protocol/index.ts'

const meshId = crypto.randomBytes(32)
const keyPair = crypto.keyPair()

test('a signed statement verifies, and survives encoding byte for byte', () => {
  const s = signStatement(StatementKind.removal, meshId, keyPair, Buffer.from('body'), 1234)
  assert.ok(verifyStatement(s))
  const back = decodeStatement(encodeStatement(s))
  assert.ok(verifyStatement(back))
  assert.deepEqual(Buffer.from(back.body), Buffer.from('body'))
  assert.equal(statementId(back), statementId(s))
})

test('a statement changed in any field, or moved to another mesh or kind, does not verify', () => {
  const s = signStatement(StatementKind.promotion, meshId, keyPair, Buffer.from('epoch 2'), 1000)
  const other = crypto.keyPair()
  for (const forged of [
    { ...s, body: Buffer.from('epoch 3') },
    { ...s, at: 1001 },
    { ...s, kind: StatementKind.handover },
    { ...s, meshId: crypto.randomBytes(32) },
    { ...s, signer: other.publicKey },
    { ...s, signature: Buffer.alloc(64) }
  ]) {
    assert.equal(verifyStatement(forged), false)
  }
})

test('the statements message is control slot 3, and bad bytes are BAD_ENTRY', () => {
  assert.equal(CONTROL_MESSAGES[ControlMessage.statements].encoding, statementsMessage)
  assert.throws(() => decodeStatement(Buffer.from([1, 2])), { code: 'BAD_ENTRY' })
})

test('a promotion with its handover survives encoding, and the handover still verifies', async () => {
  const { encodePromotion, decodePromotion, encodeHandover, decodeHandover } = await import('../protocol/index.ts')
  const origin = crypto.keyPair()
  const h = {
    dataset: 'd1',
    epoch: 3,
    parent: { key: crypto.randomBytes(32), length: 42 },
    to: keyPair.publicKey,
    toSite: 'north'
  }
  const handover = signStatement(StatementKind.handover, meshId, origin, encodeHandover(h))
  const p = {
    dataset: 'd1',
    name: 'shop',
    engine: 'sqlite',
    epoch: 3,
    log: crypto.randomBytes(32),
    parent: h.parent,
    site: 'north',
    handover,
    forced: false
  }
  const back = decodePromotion(encodePromotion(p))
  assert.equal(back.parent.length, 42)
  assert.ok(back.handover && verifyStatement(back.handover))
  assert.equal(decodeHandover(back.handover!.body).toSite, 'north')
  // Flags 0x40 (one byte): unknown bits. (0xff would be compact-encoding's prefix of an 8-byte uint: BAD_ENTRY.)
  assert.throws(() => decodePromotion(Buffer.from([0x40, 1])), { code: 'UNKNOWN_FLAGS' })
})
