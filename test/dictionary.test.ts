/**
 * Format 3 (issue 16, slow links): a batching log's small bodies compressed against a dictionary block held earlier
 * in the same log. Every reader gets the rows right (a replica through real hypercore replication, `mesh log`,
 * `mesh restore` to positions after a dictionary change, `mesh verify`), older software refuses the new blocks as
 * from a newer format, and a crafted block can neither expand without limit nor send a reader to any block but
 * an earlier dictionary block (BAD_ENTRY).
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import Corestore from 'corestore'
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import zlib from 'node:zlib'
import c from 'compact-encoding'
import {
  MAX_DICTIONARY_BYTES,
  MeshError,
  decodeBlock,
  decodeEntry,
  encodeDictionary,
  encodeEntry,
  peekDictionary,
  peekEntry,
  type Entry
} from '../protocol/index.ts'
import { peekInflated, resealBlock } from '../protocol/entries.ts'
import { DatasetLog } from '../node/index.ts'
import { Shop } from '../tools/demo/shop.ts'
import { dictionarySample, toJSON } from './fixtures/entries.ts'
import { dump, tmpDir } from './helpers/db.ts'
import { mesh, sqliteSite, testnet, waitUntil } from './helpers/mesh.ts'
import { openLog, replicateStores } from './helpers/pipeline.ts'
import { teardown } from './helpers/teardown.ts'

const fixtures = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fixtures')
const F_COMPRESSED = 16
const F_DICTIONARY = 32
/** The flag bits a format-2 reader allowed on a transaction: MORE, SOURCE, RAW_TEXT, COMPRESSED. */
const FORMAT2_TX_FLAGS = 1 | 2 | 8 | 16

function expectCode(fn: () => unknown, code: string, what?: string) {
  assert.throws(fn, (err: unknown) => err instanceof MeshError && err.code === code, what ?? `expected ${code}`)
}

async function expectRejects(p: Promise<unknown>, code: string, what: string) {
  await assert.rejects(p, (err: unknown) => err instanceof MeshError && err.code === code, what)
}

/** A transaction block with flag DICTIONARY: time, declared size, dictionary block `seq`, then `payload`. */
function crafted(size: number, seq: number, payload: Uint8Array, extraFlags = 0): Buffer {
  const head = [1, 2, F_DICTIONARY | extraFlags, 1795000000000, size, seq]
  const s = c.state()
  for (const n of head) c.uint.preencode(s, n)
  const block = Buffer.alloc(s.end + payload.byteLength + 4)
  const w = c.state(0, block.byteLength, block)
  for (const n of head) c.uint.encode(w, n)
  block.set(payload, w.start)
  resealBlock(block)
  return block
}

/** The body of an empty transaction with no source, raw-deflated against `dict`. */
function emptyBody(dict: Uint8Array): Buffer {
  return zlib.deflateRawSync(Buffer.from([0]), { dictionary: dict })
}

test('an entry compressed against a dictionary decodes with that dictionary only, and is smaller', () => {
  const d = dictionarySample()
  const dictionary = { seq: d.seq, bytes: d.bytes }
  const block = encodeEntry(d.entry, { compress: 'best', dictionary })
  const alone = encodeEntry(d.entry, { compress: 'best' })
  assert.equal(block[0], 1, 'a format-1 kind keeps version 1')
  assert.equal(block[2] & F_DICTIONARY, F_DICTIONARY)
  assert.equal(block[2] & F_COMPRESSED, 0)
  assert.ok(block.byteLength < alone.byteLength * 0.7, `${block.byteLength} against ${alone.byteLength} alone`)
  assert.equal(toJSON(decodeEntry(block, { dictionary })), toJSON(d.entry))
  assert.equal(peekDictionary(block), d.seq)
  assert.equal(peekDictionary(alone), null)
  assert.deepEqual(peekEntry(block), { kind: 'transaction', more: false, time: 1795000300000 })
  assert.ok((peekInflated(block) ?? 0) > block.byteLength)
  // Without its dictionary, or with the one at another block, it is refused, never misread.
  expectCode(() => decodeEntry(block), 'BAD_ENTRY', 'no dictionary')
  expectCode(() => decodeEntry(block, { dictionary: { seq: d.seq - 1, bytes: d.bytes } }), 'BAD_ENTRY', 'another')
  // A format-2 reader allowed none of this flag: it refuses the entry as from a newer format (UNKNOWN_FLAGS).
  assert.notEqual(block[2] & ~FORMAT2_TX_FLAGS, 0)
})

test('a dictionary block decodes alone; it is format 3, which a format-2 reader refuses as newer', () => {
  const d = dictionarySample()
  const block = encodeDictionary(d.bytes)
  assert.equal(block[0], 3)
  const b = decodeBlock(block)
  assert.equal(b.type, 'dictionary')
  assert.deepEqual(b.type === 'dictionary' ? Buffer.from(b.dictionary.bytes) : null, Buffer.from(d.bytes))
  assert.deepEqual(peekEntry(block), { kind: 'dictionary', more: false, time: null })
  expectCode(() => decodeEntry(block), 'BAD_ENTRY', 'a dictionary block is no entry')
  // Unknown flags on it are refused as from a newer format; too large a dictionary as damage.
  const flagged = Buffer.from(block)
  flagged[2] = 1
  resealBlock(flagged)
  expectCode(() => decodeBlock(flagged), 'UNKNOWN_FLAGS')
  assert.throws(() => encodeDictionary(new Uint8Array(MAX_DICTIONARY_BYTES + 1)), RangeError)
})

test('the golden fixtures of format 3 decode to what they recorded', () => {
  const dir = path.join(fixtures, 'format-3')
  const block = fs.readFileSync(path.join(dir, 'dictionary.block'))
  const b = decodeBlock(block)
  assert.equal(toJSON(b), fs.readFileSync(path.join(dir, 'dictionary.block.json'), 'utf8').trim())
  assert.ok(b.type === 'dictionary')
  const d = dictionarySample()
  assert.deepEqual(Buffer.from(b.dictionary.bytes), Buffer.from(d.bytes), 'the sample makes the same dictionary')
  const entry = fs.readFileSync(path.join(dir, 'transaction-dictionary.dref'))
  assert.equal(entry[2] & F_DICTIONARY, F_DICTIONARY)
  assert.equal(peekDictionary(entry), d.seq)
  const want = fs.readFileSync(path.join(dir, 'transaction-dictionary.json'), 'utf8').trim()
  assert.equal(toJSON(decodeEntry(entry, { dictionary: { seq: d.seq, bytes: b.dictionary.bytes } })), want)
  assert.equal(want, toJSON(d.entry))
})

test('crafted blocks cannot expand without limit: sizes are declared, bounded and checked', () => {
  const dict = Buffer.from('a dictionary of sorts '.repeat(50))
  const dictionary = { seq: 3, bytes: dict }
  // Declares more than a dictionary-compressed body may be.
  expectCode(() => decodeEntry(crafted(8 * 1024 + 1, 3, emptyBody(dict)), { dictionary }), 'BAD_ENTRY', 'too large')
  // A bomb: 8 MB of zeros that declares 1 KB. Inflating stops at 1 KB + 1 byte.
  const bomb = zlib.deflateRawSync(Buffer.alloc(8 * 1024 * 1024), { dictionary: dict })
  expectCode(() => decodeEntry(crafted(1024, 3, bomb), { dictionary }), 'BAD_ENTRY', 'a bomb')
  // Declares more than it inflates to, or is not deflate at all.
  expectCode(() => decodeEntry(crafted(2, 3, emptyBody(dict)), { dictionary }), 'BAD_ENTRY', 'short')
  expectCode(() => decodeEntry(crafted(1, 3, Buffer.from([0xff, 0xfe, 0xfd])), { dictionary }), 'BAD_ENTRY', 'junk')
  // Both ways of compressing at once.
  expectCode(() => decodeEntry(crafted(1, 3, emptyBody(dict), F_COMPRESSED), { dictionary }), 'BAD_ENTRY', 'both')
  // Sound: the same block with the right size decodes.
  assert.equal(decodeEntry(crafted(1, 3, emptyBody(dict)), { dictionary }).kind, 'transaction')
  // A dictionary block that declares more than MAX_DICTIONARY_BYTES, or a bomb inside one.
  const dictBlock = Buffer.from(encodeDictionary(dict))
  const s = c.state()
  for (const n of [3, 8, 0, MAX_DICTIONARY_BYTES + 1]) c.uint.preencode(s, n)
  const big = Buffer.alloc(s.end + 8 + 4)
  const w = c.state(0, big.byteLength, big)
  for (const n of [3, 8, 0, MAX_DICTIONARY_BYTES + 1]) c.uint.encode(w, n)
  resealBlock(big)
  expectCode(() => decodeBlock(big), 'BAD_ENTRY', 'a dictionary too large')
  assert.equal(decodeBlock(dictBlock).type, 'dictionary')
})

/** A minute's group of a till: 40 order lines. */
function group(g: number): Entry {
  const products = ['Espresso beans 1 kg', 'Green tea 250 g', 'Ceramic mug', 'Croissant', 'Oat milk 1 l']
  const rows = Array.from({ length: 40 }, (_, i) => {
    const id = g * 40 + i
    return [
      BigInt(10_000 + id),
      BigInt(1 + ((id * 7919) % 300)),
      products[(id * 31) % products.length],
      BigInt(1 + (id % 3)),
      new Date(Date.UTC(2025, 2, 1, 9, g, i)).toISOString()
    ]
  })
  return {
    kind: 'transaction',
    more: false,
    time: 1795000000000 + g * 60_000,
    changes: [{ table: 3, upserts: rows, deletes: [] }],
    source: new Uint8Array([9, 9, 9, g & 255, g >> 8])
  }
}

test('a batching log writes dictionary blocks; a replica reads every unit as the origin wrote it', async (t) => {
  const dir = tmpDir(t, 'dict-log-')
  const { store: storeA, log } = await openLog(path.join(dir, 'a'))
  teardown(t, () => storeA.close())
  log.compress = 'best'
  const header: Entry = {
    kind: 'header',
    dataset: 'ds1',
    name: 'shop',
    engine: 'sqlite',
    epoch: 0,
    site: 'a',
    createdAt: 1795000000000,
    parent: null
  }
  await log.appendUnit([header])
  const groups = 160
  for (let g = 0; g < groups; g++) await log.appendUnit([group(g)])
  // The units as the origin reads them: dictionaries among them, and entries that name one.
  const dictionaries: number[] = []
  let named = 0
  for (let i = 1; i < log.length; ) {
    const u = await log.unit(i, { wait: false })
    assert.ok(u !== null)
    if (u.dictionary) dictionaries.push(i)
    const raw = (await log.core.get(i)) as Buffer
    if (peekDictionary(raw) !== null) named++
    i = u.end ?? i + u.entries.length
  }
  assert.ok(dictionaries.length >= 2, `dictionary blocks at ${dictionaries}: a first one, and a fresh one later`)
  assert.ok(named >= groups / 2, `${named} of ${groups} groups compressed against a dictionary`)

  // A replica through hypercore replication: every group, exactly, from the start and from after the second
  // dictionary (a reader that starts late fetches the dictionary block it needs).
  const storeB = new Corestore(path.join(dir, 'b'))
  teardown(t, () => storeB.close())
  const replica = await DatasetLog.byKey(storeB, path.join(dir, 'b'), log.key)
  const stop = replicateStores(storeA, storeB)
  teardown(t, stop)
  const late = dictionaries[1] + 3
  const lateUnit = await replica.unit(late)
  assert.ok(lateUnit !== null)
  assert.equal(toJSON(lateUnit.entries), toJSON((await log.unit(late, { wait: false }))?.entries))
  replica.core.download({ start: 0, end: -1 })
  const seen: Entry[] = []
  for (let i = 1; i < log.length; ) {
    const u = await replica.unit(i)
    assert.ok(u !== null)
    seen.push(...u.entries)
    i = u.end ?? i + u.entries.length
  }
  assert.equal(toJSON(seen), toJSON(Array.from({ length: groups }, (_, g) => group(g))))

  // Crafted blocks the writer signs (so hypercore carries them): each names something other than an earlier
  // dictionary block, or is not what its dictionary inflates. The replica refuses each as BAD_ENTRY.
  const dict = (await log.core.get(dictionaries[0])) as Buffer
  const content = decodeBlock(dict)
  assert.ok(content.type === 'dictionary')
  const at = log.length
  await log.core.append([
    crafted(1, dictionaries[0] + 1, emptyBody(content.dictionary.bytes)), // a transaction, not a dictionary
    crafted(1, at + 1, emptyBody(content.dictionary.bytes)), // itself
    crafted(1, at + 50, emptyBody(content.dictionary.bytes)), // a block after the end of the log
    crafted(1, 0, emptyBody(content.dictionary.bytes)), // the header
    crafted(1, dictionaries[0], emptyBody(content.dictionary.bytes)) // sound
  ])
  await waitUntil('the replica holds the crafted blocks', () => replica.core.contiguousLength === log.length)
  await expectRejects(replica.unit(at, { wait: false }), 'BAD_ENTRY', 'a transaction named as dictionary')
  await expectRejects(replica.unit(at + 1, { wait: false }), 'BAD_ENTRY', 'itself')
  await expectRejects(replica.unit(at + 2, { wait: false }), 'BAD_ENTRY', 'a future block')
  await expectRejects(replica.unit(at + 3, { wait: false }), 'BAD_ENTRY', 'the header named as dictionary')
  const sound = await replica.unit(at + 4, { wait: false })
  assert.deepEqual(
    sound?.entries.map((e) => e.kind),
    ['transaction']
  )
})

test(
  'through a real mesh with link.batchSeconds, copies equal the origin, and restore and verify are exact after ' +
    'dictionary changes',
  async (t) => {
    const dir = tmpDir(t, 'dict-mesh-')
    const bootstrap = await testnet(t)
    const a = sqliteSite(t, dir, 'shop-a', bootstrap)
    const b = sqliteSite(t, dir, 'shop-b', bootstrap)
    const shop = new Shop(a.db, 21)
    teardown(t, () => shop.close())
    shop.seed(50, 50)
    await a.init(['--batch-seconds', '1'])
    await a.start()
    await b.join(await a.invite())
    // Snapshots at b every second (the default is daily) until one is taken after the second dictionary.
    const cfgFile = path.join(b.dir, 'config.json')
    const cfg = JSON.parse(fs.readFileSync(cfgFile, 'utf8'))
    cfg.snapshots = { everySeconds: 1, keepDaily: 14, keepWeekly: 8, keepMonthly: 12 }
    fs.writeFileSync(cfgFile, JSON.stringify(cfg))
    await b.start()
    await waitUntil("b holds a's initial copy", () => b.holdsExactly(a), 90_000)

    const units = async () => {
      const r = await mesh(['log', a.name, '--dir', b.dir, '--json', '--limit', '0'])
      assert.equal(r.code, 0, r.stderr)
      return JSON.parse(r.stdout).units as Array<{ seq: number; note: string; rows: number }>
    }
    const dictionaries = (us: Awaited<ReturnType<typeof units>>) =>
      us.filter((u) => /compression dictionary/.test(u.note)).map((u) => u.seq)
    /** About 5 KB of body: sales spread over a little more than the batching second. */
    const aGroup = async () => {
      for (let i = 0; i < 40; i++) {
        shop.step()
        if (i % 10 === 9) await new Promise((r) => setTimeout(r, 300))
      }
    }
    /** Trades in groups until `mesh log` at b shows `n` dictionaries, then a few groups more; the state and its SEQ. */
    const tradeUntil = async (n: number) => {
      let heldAt = 0
      for (let g = 0; ; g++) {
        assert.ok(g < 200, `no ${n} dictionaries after ${g} groups`)
        await aGroup()
        if (g % 5 !== 4) continue
        await waitUntil("b holds exactly a's rows", () => b.holdsExactly(a), 90_000)
        heldAt = Date.now()
        if (dictionaries(await units()).length >= n) break
      }
      for (let i = 0; i < 60; i++) shop.step()
      await waitUntil("b holds exactly a's rows", () => b.holdsExactly(a), 90_000)
      const us = await units()
      const seq = us[us.length - 1].seq
      return { state: JSON.stringify(dump(a.db)), seq, dictionaries: dictionaries(us), heldAt }
    }
    const first = await tradeUntil(1)
    const second = await tradeUntil(2)
    assert.ok(first.dictionaries[0] < first.seq, 'the first moment comes after the first dictionary')
    assert.ok(
      second.dictionaries[1] > first.seq && second.dictionaries[1] < second.seq,
      'and the second after the next'
    )

    // A snapshot at b after the second dictionary (taken after b held it), then no more: the third moment is
    // restored from it, replaying units that name the dictionary block before it.
    await waitUntil(
      'b took a snapshot after the second dictionary',
      async () => {
        const st = JSON.parse((await mesh(['status', '--dir', b.dir, '--json'])).stdout)
        return (st.datasets.find((d: { name: string }) => d.name === a.name)?.snapshots.newestAt ?? 0) > second.heldAt
      },
      60_000
    )
    await b.stop()
    cfg.snapshots.everySeconds = 86_400
    fs.writeFileSync(cfgFile, JSON.stringify(cfg))
    await b.start()
    for (let g = 0; g < 4; g++) await aGroup()
    await waitUntil("b holds exactly a's rows", () => b.holdsExactly(a), 90_000)
    const us = await units()
    const third = {
      state: JSON.stringify(dump(a.db)),
      seq: us[us.length - 1].seq,
      dictionaries: dictionaries(us),
      heldAt: 0
    }
    assert.deepEqual(third.dictionaries, second.dictionaries, 'no dictionary since the second')

    for (const [i, m] of [first, second, third].entries()) {
      const to = path.join(dir, `restored-${i}.db`)
      const r = await mesh(['restore', a.name, '--seq', String(m.seq), '--to', to, '--dir', b.dir, '--json'], {
        timeoutMs: 120_000
      })
      assert.equal(r.code, 0, r.stderr)
      const from = JSON.parse(r.stdout).from
      const d2 = second.dictionaries[1]
      if (i === 2) assert.ok(from > d2 && from <= m.seq, `replayed from a snapshot after block ${d2}: ${r.stdout}`)
      t.diagnostic(`moment ${i}: SEQ ${m.seq}, replayed from ${from}; dictionaries at ${m.dictionaries.join(', ')}`)
      assert.equal(JSON.stringify(dump(to)), m.state, `restored exactly at SEQ ${m.seq} from ${from}`)
    }
    const v = await mesh(['verify', a.name, '--dir', b.dir, '--json'], { timeoutMs: 120_000 })
    assert.equal(v.code, 0, `${v.stdout}${v.stderr}`)
  }
)
