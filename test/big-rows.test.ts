/**
 * Issue 14, item 3: a row larger than a block. Hypercore refuses a block above 15 MB; an entry whose encoding
 * is larger travels as fragments across consecutive blocks of its unit (format 2) and is joined by the reader.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import Database from '../adapters/sqlite/better-sqlite3.ts'
import {
  MAX_BLOCK_BYTES,
  MeshError,
  decodeBlock,
  decodeEntry,
  encodeAbandon,
  encodeUnit,
  peekEntry,
  type Entry
} from '../protocol/index.ts'
import { resealBlock } from '../protocol/entries.ts'
import { blockSamples, samples, toJSON } from './fixtures/entries.ts'
import { sqliteOrigin } from './helpers/db.ts'
import { sqlitePipeline } from './helpers/pipeline.ts'

const fixtures = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fixtures')

function expectCode(fn: () => unknown, code: string) {
  assert.throws(fn, (err: unknown) => err instanceof MeshError && err.code === code)
}

/** Joins a unit's blocks as node/log.ts does, without a log: for the protocol tests. */
function join(blocks: Uint8Array[]): Entry[] {
  const out: Entry[] = []
  let parts: Uint8Array[] = []
  for (const b of blocks) {
    const d = decodeBlock(b)
    if (d.type === 'entry') out.push(d.entry)
    else if (d.type === 'fragment') {
      parts.push(d.fragment.bytes)
      if (d.fragment.end) {
        out.push(decodeEntry(Buffer.concat(parts)))
        parts = []
      }
    } else throw new Error('abandon')
  }
  return out
}

test('format 2 block fixtures still decode to what they recorded, and join into the entry they carry', () => {
  const dirs = fs.readdirSync(fixtures).filter((d) => /^format-\d+$/.test(d) && Number(d.slice(7)) >= 2)
  assert.ok(dirs.includes('format-2'))
  for (const v of dirs) {
    const files = fs
      .readdirSync(path.join(fixtures, v))
      .filter((f) => f.endsWith('.block'))
      .sort()
    assert.ok(files.length >= 3, v)
    for (const f of files) {
      const bytes = fs.readFileSync(path.join(fixtures, v, f))
      const want = fs.readFileSync(path.join(fixtures, v, `${f}.json`), 'utf8').trim()
      assert.equal(toJSON(decodeBlock(bytes)), want, `${v}/${f}`)
    }
    const frags = files.filter((f) => f.startsWith('transaction-fragment-'))
    const joined = join(frags.map((f) => fs.readFileSync(path.join(fixtures, v, f))))
    assert.equal(toJSON(joined), toJSON([samples.transaction]))
  }
  // Today's writer makes the same bytes.
  for (const [name, b] of Object.entries(blockSamples())) {
    assert.deepEqual(Buffer.from(b), fs.readFileSync(path.join(fixtures, 'format-2', `${name}.block`)), name)
  }
})

test('a unit is fragmented only where an entry exceeds the block size, and the blocks keep MORE and time', () => {
  const small = encodeUnit([samples.schema, samples.transaction])
  assert.equal(small.length, 2)
  // Entries of format 1's kinds are still written as version 1: a 0.1 node reads them.
  for (const b of small) assert.equal(b[0], 1)
  const blocks = encodeUnit([samples.schema, samples.transaction], 64, 50)
  assert.ok(blocks.length > 3)
  assert.equal(toJSON(join(blocks)), toJSON([samples.schema, samples.transaction]))
  for (const b of blocks) assert.ok(b.byteLength <= 64 + 50)
  // Every block but the last continues the unit; a transaction's fragments carry its time for `mesh restore`.
  for (const [i, b] of blocks.entries()) assert.equal(peekEntry(b).more, i < blocks.length - 1, `block ${i}`)
  assert.equal(peekEntry(blocks[blocks.length - 1]).time, (samples.transaction as { time: number }).time)
  // Fragment and abandon blocks are version 2, which a 0.1 node refuses as UNKNOWN_VERSION.
  assert.equal(blocks[blocks.length - 1][0], 2)
  assert.equal(encodeAbandon({ start: 3 })[0], 2)
})

test('fragment and abandon blocks refuse what is not theirs with typed errors', () => {
  const frag = Buffer.from(encodeUnit([samples.transaction], 64, 50)[0])
  expectCode(() => decodeEntry(frag), 'BAD_ENTRY')
  const flipped = Buffer.from(frag)
  flipped[10] ^= 1
  expectCode(() => decodeBlock(flipped), 'BAD_ENTRY')
  const flags = Buffer.from(frag)
  flags[2] = 0x40
  resealBlock(flags)
  expectCode(() => decodeBlock(flags), 'UNKNOWN_FLAGS')
  // A format-2 kind under version 1 is an unknown kind, as a 0.1 node sees it.
  const v1 = Buffer.from(frag)
  v1[0] = 1
  resealBlock(v1)
  expectCode(() => decodeBlock(v1), 'UNKNOWN_KIND')
  // A version-2 block of a format-1 kind comes from no format this software knows.
  const cp = Buffer.from(encodeUnit([samples.checkpoint])[0])
  cp[0] = 2
  resealBlock(cp)
  expectCode(() => decodeBlock(cp), 'UNKNOWN_VERSION')
  const ab = Buffer.from(encodeAbandon({ start: 9 }))
  expectCode(() => decodeEntry(ab), 'BAD_ENTRY')
  for (let n = 0; n < ab.length; n++) expectCode(() => decodeBlock(ab.subarray(0, n)), 'BAD_ENTRY')
})

function sha(v: Uint8Array | string): string {
  return crypto.createHash('sha256').update(v).digest('hex')
}

test('20 MB BLOB and TEXT rows reach the replica byte for byte, and capture of other rows goes on', async (t) => {
  const { dir, file, db } = sqliteOrigin(t)
  db.exec('CREATE TABLE photos (id INTEGER PRIMARY KEY, name TEXT, data BLOB, note TEXT)')
  const p = await sqlitePipeline(t, dir, file)
  const blob = crypto.randomBytes(20 * 1024 * 1024)
  blob[0] = 0
  // TEXT of 20 MB with multi-byte characters and a NUL, as SQLite stores it.
  const text = `naïve ☕ \u0000 ${'x'.repeat(1000)}`.repeat(20 * 1024)
  assert.ok(Buffer.byteLength(text) > MAX_BLOCK_BYTES * 2)
  db.prepare('INSERT INTO photos VALUES (1, ?, ?, ?)').run('big', blob, text)
  db.prepare('INSERT INTO photos VALUES (2, ?, ?, ?)').run('small', Buffer.from([1, 2, 3]), 'hi')
  await p.settle()
  assert.ok(p.originLog.length > 6, 'the big row spans several blocks')
  db.prepare('INSERT INTO photos VALUES (3, ?, ?, ?)').run('after', Buffer.from([4]), 'later')
  db.prepare('UPDATE photos SET note = ? WHERE id = 2').run('changed')
  await p.settle()
  const r = new Database(path.join(dir, 'replica.db'), { readonly: true })
  t.after(() => r.close())
  const rows = r
    .prepare('SELECT id, name, data, typeof(data) AS td, note, typeof(note) AS tn FROM photos ORDER BY id')
    .all() as Array<Record<string, unknown>>
  assert.equal(rows.length, 3)
  assert.equal(rows[0].td, 'blob')
  assert.equal(rows[0].tn, 'text')
  assert.equal(sha(rows[0].data as Buffer), sha(blob))
  assert.equal(sha(rows[0].note as string), sha(text))
  // The stored bytes of the TEXT value, not only the JS string.
  const bytes = (q: Database.Database) =>
    (q.prepare('SELECT CAST(note AS BLOB) AS b FROM photos WHERE id = 1').get() as { b: Buffer }).b
  assert.equal(sha(bytes(r)), sha(bytes(db)))
  assert.equal(rows[1].note, 'changed')
  assert.equal(rows[2].name, 'after')
})

test('a 120 MB BLOB value reaches the replica byte for byte', async (t) => {
  const { dir, file, db } = sqliteOrigin(t)
  db.exec('CREATE TABLE files (id INTEGER PRIMARY KEY, data BLOB)')
  const p = await sqlitePipeline(t, dir, file)
  const size = 120 * 1024 * 1024
  const blob = Buffer.allocUnsafe(size)
  for (let i = 0; i < size; i += 1024 * 1024) crypto.randomFillSync(blob, i, Math.min(1024 * 1024, size - i))
  db.prepare('INSERT INTO files VALUES (1, ?)').run(blob)
  const want = sha(blob)
  await p.settle()
  const r = new Database(path.join(dir, 'replica.db'), { readonly: true })
  t.after(() => r.close())
  const got = r.prepare('SELECT length(data) AS n, data FROM files WHERE id = 1').get() as { n: number; data: Buffer }
  assert.equal(got.n, size)
  assert.equal(sha(got.data), want)
})
