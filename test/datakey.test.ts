import { test } from 'node:test'
import assert from 'node:assert/strict'
import c from 'compact-encoding'
import path from 'node:path'
import Corestore from 'corestore'
import DHT from 'hyperdht'
import crypto from 'hypercore-crypto'
import {
  CONTROL_VERSION,
  TRAILER_ROLES,
  datasetsMessage,
  decodeDataKey,
  decodeJoinCode,
  encodeDataKey,
  encodeJoinCode,
  membersMessage,
  openDataKey,
  sealDataKey,
  welcomeMessage,
  type DatasetInfo,
  type MemberInfo
} from '../protocol/index.ts'
import { DEFAULT_THRESHOLDS, DatasetLog, buildStatus } from '../node/index.ts'
import { tmpDir } from './helpers/db.ts'
import { replicateStores } from './helpers/pipeline.ts'
import { twoSiteState } from './helpers/status.ts'

test('a data key sealed to a member opens with its node key only', () => {
  const member = DHT.keyPair()
  const other = DHT.keyPair()
  const key = crypto.randomBytes(32)
  const sealed = sealDataKey(key, member.publicKey)
  assert.deepEqual(openDataKey(sealed, member), key)
  assert.equal(openDataKey(sealed, other), null)
  assert.equal(Buffer.from(sealed).includes(key), false)
  // Two seals of the same key differ (an ephemeral key per box).
  assert.notDeepEqual(sealDataKey(key, member.publicKey), sealed)
  const tampered = Buffer.from(sealed)
  tampered[tampered.length - 1] ^= 1
  assert.equal(openDataKey(tampered, member), null)
})

test('a data key grant round-trips; a grant of another version or size is refused', () => {
  const g = {
    dataset: 'ab12',
    to: crypto.randomBytes(32),
    sealed: sealDataKey(crypto.randomBytes(32), DHT.keyPair().publicKey)
  }
  const bytes = encodeDataKey(g)
  assert.deepEqual(decodeDataKey(bytes), g)
  const v1 = Buffer.from(bytes)
  v1[0] = 1
  assert.throws(() => decodeDataKey(v1), { code: 'UNKNOWN_VERSION' })
  assert.throws(() => decodeDataKey(encodeDataKey({ ...g, sealed: Buffer.alloc(10) })), { code: 'BAD_ENTRY' })
  assert.throws(() => decodeDataKey(bytes.subarray(0, 20)), { code: 'BAD_ENTRY' })
})

const member = (site: string, role?: MemberInfo['role']): MemberInfo => ({
  key: crypto.randomBytes(32),
  site,
  addedAt: 1795300000000,
  ...(role ? { role } : {})
})

const dataset = (id: string, encryptedFrom?: number): DatasetInfo => ({
  id,
  name: id,
  engine: 'sqlite',
  origin: crypto.randomBytes(32),
  originSite: 'shop-a',
  epoch: 0,
  log: crypto.randomBytes(32),
  createdAt: 1795300000000,
  ...(encryptedFrom === undefined ? {} : { encryptedFrom })
})

test('roles and the encrypted flag travel in a trailer that older software ignores', () => {
  const plain = [member('shop-a'), member('shop-b')]
  const withBlind = [...plain, member('box', 'blind'), member('laptop', 'observer')]
  assert.deepEqual(c.decode(membersMessage, c.encode(membersMessage, plain)), plain)
  assert.deepEqual(c.decode(membersMessage, c.encode(membersMessage, withBlind)), withBlind)
  const ds = [dataset('a', 0), dataset('b'), dataset('c', 3)]
  assert.deepEqual(c.decode(datasetsMessage, c.encode(datasetsMessage, ds)), ds)

  // An older reader stops after the list: it reads the same members, without roles; and without roles to
  // say, nothing follows the list (the bytes older software wrote).
  const oldRead = (bytes: Uint8Array) => {
    const s = { start: 0, end: bytes.byteLength, buffer: bytes }
    c.uint.decode(s)
    const n = c.uint.decode(s)
    const sites: string[] = []
    for (let i = 0; i < n; i++) {
      c.fixed32.decode(s)
      sites.push(c.string.decode(s))
      c.uint.decode(s)
    }
    return { sites, rest: s.end - s.start }
  }
  assert.deepEqual(oldRead(c.encode(membersMessage, withBlind)).sites, ['shop-a', 'shop-b', 'box', 'laptop'])
  assert.equal(oldRead(c.encode(membersMessage, withBlind)).rest > 0, true)
  assert.deepEqual(oldRead(c.encode(membersMessage, plain)), { sites: ['shop-a', 'shop-b'], rest: 0 })

  // Unknown trailer bits are refused.
  const unknown = Buffer.concat([c.encode(membersMessage, plain), c.encode(c.uint, 8)])
  assert.throws(() => c.decode(membersMessage, unknown), { code: 'UNKNOWN_FLAGS' })
  // Roles for another list are refused.
  const short = Buffer.concat([
    c.encode(membersMessage, plain),
    c.encode(c.uint, TRAILER_ROLES),
    c.encode(c.array(c.uint), [1])
  ])
  assert.throws(() => c.decode(membersMessage, short), { code: 'BAD_ENTRY' })

  const welcome = { version: CONTROL_VERSION, meshId: crypto.randomBytes(32), members: withBlind, datasets: ds }
  assert.deepEqual(c.decode(welcomeMessage, c.encode(welcomeMessage, welcome)), welcome)
})

test('a blind join code says so; a full one is byte for byte as before', () => {
  const j = {
    meshId: crypto.randomBytes(32),
    inviter: crypto.randomBytes(32),
    seed: crypto.randomBytes(32),
    expiresAt: 1
  }
  const full = encodeJoinCode(j)
  const blind = encodeJoinCode({ ...j, role: 'blind' })
  assert.deepEqual(decodeJoinCode(full), j)
  assert.deepEqual(decodeJoinCode(blind), { ...j, role: 'blind' })
  assert.equal(blind.length > full.length, true)
})

test('status: a blind holder is judged by what it holds, not applies; a full member without the key is warned', () => {
  const now = 1795300000000
  const [a, b, box, log] = [0, 1, 2, 3].map(() => crypto.randomBytes(32))
  const state = twoSiteState(a, b, log, now)
  state.members.push({ key: box, site: 'box', addedAt: now - 3600_000, role: 'blind' })
  state.datasets[0].encryptedFrom = 0
  const holding = (site: Uint8Array, downloaded: number, applied: number) => ({
    site,
    siteName: '',
    at: now,
    peers: [],
    software: '',
    holdings: [
      {
        dataset: 'd1',
        log,
        epoch: 0,
        length: 10,
        byteLength: 1000,
        downloaded,
        applied,
        appliedBytes: applied * 100,
        lastWriteAt: now - 1000,
        appliedWriteAt: applied === 10 ? now - 1000 : 0,
        error: '',
        errorMessage: '',
        damaged: 0
      }
    ]
  })
  const input = {
    self: b,
    site: 'shop-b',
    state,
    reports: [holding(a, 10, 10), holding(b, 10, 10), holding(box, 10, 0)],
    connected: new Set([a, box].map((k) => Buffer.from(k).toString('hex'))),
    running: true,
    refused: [],
    now,
    thresholds: DEFAULT_THRESHOLDS
  }
  const ok = buildStatus({ ...input, dataKeys: ['d1'] })
  assert.equal(ok.verdict, 'OK', JSON.stringify(ok.reasons))
  const h = ok.datasets[0].holders.find((x) => x.site === 'box')!
  assert.equal(h.role, 'blind')
  assert.equal(h.lagEntries, 0)
  assert.equal(ok.members.find((m) => m.site === 'box')!.role, 'blind')
  assert.equal(ok.datasets[0].heldBy, 2)
  const missing = buildStatus({ ...input, dataKeys: [] })
  assert.equal(missing.verdict, 'WARN')
  assert.equal(missing.reasons.length, 1)
  // The blind site itself is never warned about a key it must not have.
  const atBox = buildStatus({ ...input, self: box, site: 'box', dataKeys: [] })
  assert.equal(atBox.verdict, 'OK', JSON.stringify(atBox.reasons))
})

test('a log opened without the data key replicates and verifies ciphertext; with it, it reads plaintext', async (t) => {
  const { dir, cleanup } = tmpDir('datakey-')
  t.after(cleanup)
  const key = crypto.randomBytes(32)
  const stores = ['origin', 'blind', 'full'].map((n) => new Corestore(path.join(dir, n)))
  t.after(() => Promise.all(stores.map((s) => s.close())))
  const [origin, blind, full] = stores
  const log = await DatasetLog.writable(origin, path.join(dir, 'origin'), 'ds1', 0, { key })
  const header = { kind: 'header' as const, dataset: 'ds1', name: 'shop', engine: 'sqlite', epoch: 0, site: 'a' }
  await log.appendUnit([{ ...header, createdAt: 1, parent: null }])
  const held = await DatasetLog.byKey(blind, path.join(dir, 'blind'), log.key)
  const stop1 = replicateStores(origin, blind)
  await held.core.download({ start: 0, end: 1 }).done()
  stop1()
  // The blind copy holds block 0 as hashed and signed (verified on arrival), and it is not the entry.
  assert.equal(held.length, 1)
  const raw = (await held.core.get(0)) as Buffer
  assert.equal(raw.includes(Buffer.from('shop')), false)
  // Read as an entry, ciphertext is no entry (its first byte reads as some version or none).
  await assert.rejects(held.header(), (e: { code: string }) => ['BAD_ENTRY', 'UNKNOWN_VERSION'].includes(e.code))
  // A full member with the key reads it from the blind copy alone.
  const reader = await DatasetLog.byKey(full, path.join(dir, 'full'), log.key, { key })
  const stop2 = replicateStores(blind, full)
  const h = await reader.header()
  stop2()
  assert.equal(h?.name, 'shop')
})
