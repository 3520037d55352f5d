import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import c from 'compact-encoding'
import {
  FORMAT_VERSION,
  MeshError,
  decodeEntry,
  encodeEntry,
  packTransaction,
  UnitAssembler,
  type Entry,
  type Value
} from '../protocol/index.ts'
import { resealBlock } from '../protocol/entries.ts'
import { samples, toJSON } from './fixtures/entries.ts'
import { prng } from './helpers/workload.ts'

const fixtures = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fixtures')

test('every entry kind round-trips', () => {
  for (const [name, entry] of Object.entries(samples)) {
    assert.equal(toJSON(decodeEntry(encodeEntry(entry))), toJSON(entry), name)
  }
})

test('golden fixtures of every shipped format version still decode to what they recorded', () => {
  const versions = fs.readdirSync(fixtures).filter((d) => d.startsWith('format-'))
  assert.ok(versions.includes('format-1'))
  let n = 0
  for (const v of versions) {
    for (const f of fs.readdirSync(path.join(fixtures, v)).filter((f) => f.endsWith('.bin'))) {
      const bytes = fs.readFileSync(path.join(fixtures, v, f))
      const want = fs.readFileSync(path.join(fixtures, v, f.replace(/\.bin$/, '.json')), 'utf8').trim()
      assert.equal(toJSON(decodeEntry(bytes)), want, `${v}/${f}`)
      n++
    }
  }
  assert.ok(n >= Object.keys(samples).length)
})

test("today's encoder writes the current format's fixtures byte for byte (the log's bytes did not change)", () => {
  const dir = path.join(fixtures, `format-${FORMAT_VERSION}`)
  let n = 0
  for (const [name, entry] of Object.entries(samples)) {
    const file = path.join(dir, `${name}.bin`)
    if (!fs.existsSync(file)) continue
    assert.deepEqual(Buffer.from(encodeEntry(entry)), fs.readFileSync(file), name)
    n++
  }
  assert.ok(n >= 8, `${n} fixtures compared`)
})

function expectCode(fn: () => unknown, code: string) {
  assert.throws(fn, (err: unknown) => err instanceof MeshError && err.code === code)
}

test('unknown versions, kinds and flags are refused with their own codes', () => {
  const block = Buffer.from(encodeEntry(samples.checkpoint))
  const v2 = Buffer.from(block)
  v2[0] = 2
  expectCode(() => decodeEntry(v2), 'UNKNOWN_VERSION')
  const kind = Buffer.from(block)
  kind[1] = 9
  resealBlock(kind)
  expectCode(() => decodeEntry(kind), 'UNKNOWN_KIND')
  const flags = Buffer.from(block)
  flags[2] = 0x40
  resealBlock(flags)
  expectCode(() => decodeEntry(flags), 'UNKNOWN_FLAGS')
  // A flag that one kind has but another does not: MORE is not a checkpoint flag.
  const more = Buffer.from(block)
  more[2] = 1
  resealBlock(more)
  expectCode(() => decodeEntry(more), 'UNKNOWN_FLAGS')
})

test('raw TEXT (not UTF-8) sets the RAW_TEXT flag: older software refuses it as newer; no flag: BAD_ENTRY', () => {
  const block = Buffer.from(encodeEntry(samples['transaction-rawtext']))
  assert.equal(block[2] & 8, 8, 'RAW_TEXT flag')
  assert.equal(Buffer.from(encodeEntry(samples.transaction))[2] & 8, 0, 'no flag without raw TEXT')
  const unflagged = Buffer.from(block)
  unflagged[2] &= ~8
  resealBlock(unflagged)
  expectCode(() => decodeEntry(unflagged), 'BAD_ENTRY')
})

test('truncated blocks, trailing bytes and damaged bytes are BAD_ENTRY', () => {
  const block = Buffer.from(encodeEntry(samples.transaction))
  for (let n = 0; n < block.length; n++) {
    expectCode(() => decodeEntry(block.subarray(0, n)), 'BAD_ENTRY')
  }
  const flipped = Buffer.from(block)
  flipped[20] ^= 0x10
  expectCode(() => decodeEntry(flipped), 'BAD_ENTRY')
  expectCode(() => decodeEntry('nope' as unknown as Uint8Array), 'BAD_ENTRY')
})

function mutate(rand: () => number, block: Buffer): Buffer {
  const b = Buffer.from(block)
  const op = Math.floor(rand() * 4)
  if (op === 0) {
    const i = Math.floor(rand() * b.length)
    b[i] ^= 1 << Math.floor(rand() * 8)
    return b
  }
  if (op === 1) {
    const i = Math.floor(rand() * b.length)
    b[i] = Math.floor(rand() * 256)
    return b
  }
  if (op === 2) return b.subarray(0, Math.floor(rand() * b.length))
  const extra = Buffer.alloc(1 + Math.floor(rand() * 8)).map(() => Math.floor(rand() * 256))
  return Buffer.concat([b, extra])
}

test('20,000 random corruptions each decode to a valid entry or throw MeshError, nothing else', () => {
  const rand = prng(0xb7a2c4)
  const blocks = Object.values(samples).map((e) => Buffer.from(encodeEntry(e)))
  let meshErrors = 0
  let decoded = 0
  for (let i = 0; i < 20_000; i++) {
    const src = blocks[i % blocks.length]
    const bad = mutate(rand, src)
    // Half the time the checksum is recomputed, so the structural decoder itself meets the damage.
    if (i % 2 === 1 && bad.length >= 7) resealBlock(bad)
    try {
      const e = decodeEntry(bad)
      // A decoded entry must be well-formed: it encodes again, and decodes to the same thing.
      assert.equal(toJSON(decodeEntry(encodeEntry(e))), toJSON(e))
      decoded++
    } catch (err) {
      if (!(err instanceof MeshError)) {
        assert.fail(`corruption #${i} threw ${(err as Error)?.constructor?.name}: ${(err as Error)?.message}`)
      }
      meshErrors++
    }
  }
  assert.equal(meshErrors + decoded, 20_000)
  assert.ok(meshErrors > 10_000, `most corruptions must be refused, ${meshErrors} were`)
})

test('a large transaction packs into many blocks that reassemble into one unit', () => {
  const upserts: Value[][] = []
  for (let i = 0; i < 20_000; i++) upserts.push([BigInt(i), `row ${i}`, new Uint8Array(20)])
  const entries = packTransaction(
    { schema: null, changes: [{ table: 1, upserts, deletes: [[1n]] }], time: 1, source: new Uint8Array([1]) },
    64 * 1024
  )
  assert.ok(entries.length > 5)
  const asm = new UnitAssembler()
  let unit: Entry[] | null = null
  for (const e of entries) {
    const block = encodeEntry(e)
    assert.ok(block.byteLength < 80 * 1024)
    unit = asm.push(decodeEntry(block))
    if (e !== entries[entries.length - 1]) assert.equal(unit, null)
  }
  assert.ok(unit)
  let rows = 0
  let deletes = 0
  for (const e of unit!) {
    assert.equal(e.kind, 'transaction')
    if (e.kind === 'transaction')
      for (const ch of e.changes) {
        rows += ch.upserts.length
        deletes += ch.deletes.length
      }
  }
  assert.equal(rows, 20_000)
  assert.equal(deletes, 1)
  // The capture position travels on the last block only.
  const last = unit![unit!.length - 1]
  assert.ok(last.kind === 'transaction' && last.source !== null)
})

test('integers at every width keep their exact value', () => {
  const ints = [
    0n,
    1n,
    -1n,
    2n ** 52n - 1n,
    -(2n ** 52n),
    2n ** 52n,
    -(2n ** 52n) - 1n,
    2n ** 53n + 1n,
    2n ** 63n - 1n,
    -(2n ** 63n)
  ]
  const e: Entry = {
    kind: 'transaction',
    more: false,
    time: 0,
    changes: [{ table: 1, upserts: [ints], deletes: [] }],
    source: null
  }
  const back = decodeEntry(encodeEntry(e))
  assert.ok(back.kind === 'transaction')
  if (back.kind === 'transaction') assert.deepEqual(back.changes[0].upserts[0], ints)
  // c.int really stops at 2^52: the encoder must switch to 8 bytes before it.
  assert.throws(() => c.encode(c.int, 2 ** 52))
  expectCode(() => encodeEntry({ ...e, changes: [{ table: 1, upserts: [[2n ** 64n]], deletes: [] }] }), 'BAD_ENTRY')
})
