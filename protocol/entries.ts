/**
 * Log entries: one entry per hypercore block.
 *
 * Wire layout of every entry (format version 1):
 *
 *   uint   version      FORMAT_VERSION; checked first, anything else is refused
 *   uint   kind         see Kind
 *   uint   flags        per-kind bits; an unknown bit is refused
 *   ...    body         per kind
 *   4 B    checksum     first 4 bytes of BLAKE2b-128 over everything before it
 *
 * The checksum is not the log's security (hypercore signs every block and verifies it on replication); it
 * makes a block damaged at rest fail loudly here instead of decoding into a different, valid-looking entry.
 *
 * Units. A log is read in units: a unit is a run of blocks where every block but the last has the MORE flag.
 * A unit is applied all-or-nothing, so a large transaction can span many blocks and still never be seen
 * half-applied. Header, checkpoint and fence entries are always units of their own.
 */
import c from 'compact-encoding'
import type { State } from 'compact-encoding'
import sodium from 'sodium-native'
import {
  againstDictionary,
  COMPRESSIBLE,
  compressedBody,
  decodeDictionaryBody,
  type Dictionary,
  dictionaryBody,
  F_COMPRESSED,
  F_DICTIONARY,
  inflatedBody,
  type Writer
} from './compressed-body.ts'
import { BEST_MAX_BYTES, deflateBody, deflateBodyAsync } from './compression.ts'
import { MeshError } from './errors.ts'
import { rawTextState, value, type Value } from './values.ts'

export const FORMAT_VERSION = 3

/**
 * The version a block is written with is the lowest that can express it: every entry of the kinds format 1
 * had is still written as version 1 (its layout did not change), so a 0.1 node reads every log that uses none
 * of version 2's additions; a fragment or abandon block is version 2, which a 0.1 node refuses
 * (UNKNOWN_VERSION) instead of misreading. See UPGRADE.md, format 2. A dictionary block is version 3 (UPGRADE.md,
 * format 3), which a node of format 2 refuses the same way.
 */
const VERSION_OF_KIND = [1, 1, 1, 1, 1, 1, 2, 2, 3]

/**
 * Largest block this code writes. Hypercore refuses a block above 15 MB (MAX_SUGGESTED_BLOCK_SIZE); an entry
 * whose encoding is larger is carried as fragments of FRAGMENT_BYTES (see encodeUnit).
 */
export const MAX_BLOCK_BYTES = 8 * 1024 * 1024
export const FRAGMENT_BYTES = 4 * 1024 * 1024

export const Kind = {
  header: 0,
  schema: 1,
  transaction: 2,
  snapshot: 3,
  checkpoint: 4,
  fence: 5
} as const
export type KindName = keyof typeof Kind

const KIND_NAMES: KindName[] = ['header', 'schema', 'transaction', 'snapshot', 'checkpoint', 'fence']

/**
 * Block kinds that are not entries (format 2). They never reach an apply side as entries: the log reader
 * (node/log.ts) reassembles fragments into the entry they carry, and turns an abandon block into the end of an
 * abandoned unit.
 */
const K_FRAGMENT = 6
const K_ABANDON = 7
/**
 * A compression dictionary (format 3): bytes that later blocks of the same log are compressed against
 * (F_DICTIONARY). Layout: compressed-body.ts (dictionaryBody). It is a unit of its own, that holds no entry:
 * readers pass over it as over an empty unit.
 */
const K_DICTIONARY = 8
/** Fragment flags: MORE (the unit goes on after this block) as in every spanning kind; END: the entry's last piece. */
const F_FRAG_END = 2

// Flag bits. MORE has the same bit in every kind that can span blocks.
const F_MORE = 1
const F_HEADER_PARENT = 1
/** Header: the signed promotion that started this epoch (a Statement's encoding; since branchmesh 0.3). */
const F_HEADER_PROMOTION = 2
const F_SNAPSHOT_FIRST = 2
const F_SNAPSHOT_LAST = 4
const F_TX_SOURCE = 2
/** Transaction and snapshot entries: some value is raw TEXT (value tag 6, since branchmesh 0.2). */
const F_RAW_TEXT = 8
// F_COMPRESSED (16) and F_DICTIONARY (32), on schema, transaction and snapshot entries (COMPRESSIBLE): the body
// is compressed; its layout is compressed-body.ts's.

const ALLOWED_FLAGS: Record<KindName, number> = {
  header: F_HEADER_PARENT | F_HEADER_PROMOTION,
  schema: F_MORE | F_COMPRESSED | F_DICTIONARY,
  transaction: F_MORE | F_TX_SOURCE | F_RAW_TEXT | F_COMPRESSED | F_DICTIONARY,
  snapshot: F_MORE | F_SNAPSHOT_FIRST | F_SNAPSHOT_LAST | F_RAW_TEXT | F_COMPRESSED | F_DICTIONARY,
  checkpoint: 0,
  fence: 0
}

const CHECKSUM_BYTES = 4

export type Engine = 'sqlite' | 'postgres'

/** Block 0 of every log. */
export interface HeaderEntry {
  kind: 'header'
  /** Stable dataset id (survives failovers). */
  dataset: string
  /** Human name of the dataset. */
  name: string
  engine: string
  epoch: number
  /** The site that writes this log. */
  site: string
  /** Milliseconds since the epoch when the log was started. */
  createdAt: number
  /** The log (and its length) this one continues from, for epochs after the first. */
  parent: { key: Uint8Array; length: number } | null
  /**
   * The encoded signed promotion (protocol/statements.ts, kind promotion) that started this epoch, so that the
   * log carries the proof of its own right to exist; absent in logs written before branchmesh 0.3 and in epoch 0.
   */
  promotion?: Uint8Array | null
}

export interface ColumnDef {
  name: string
  /** Declared type, as the engine spells it. */
  type: string
  notNull: boolean
}

export interface TableDef {
  /** Id used by change entries; stable for the life of the table at the origin. */
  id: number
  name: string
  /** The engine's own definition (CREATE TABLE ...), used to create the table at a replica. */
  sql: string
  /** The columns whose values travel in rows, in order (generated columns are not among them). */
  columns: ColumnDef[]
  /**
   * Indexes into `columns` that identify a row. Empty means the engine's row id is the identity
   * (SQLite rowid tables with no declared key): every row then starts with the rowid.
   */
  key: number[]
}

export interface SchemaObject {
  /** SQLite: index, view, trigger. PostgreSQL adds type (enums), sequence and constraint (unique, foreign key). */
  type: 'index' | 'view' | 'trigger' | 'type' | 'sequence' | 'constraint'
  name: string
  table: string
  sql: string
}

/** The complete schema at a point in the log. */
export interface SchemaEntry {
  kind: 'schema'
  more: boolean
  tables: TableDef[]
  objects: SchemaObject[]
  /** Tables whose content a replica must drop; this unit resends them in full. */
  reset: number[]
}

/** The changes of one table within a unit. Rows and keys are laid out as the table's TableDef says. */
export interface TableChanges {
  table: number
  /** Full rows to insert or replace. */
  upserts: Value[][]
  /** Keys of rows to delete. */
  deletes: Value[][]
}

export interface TransactionEntry {
  kind: 'transaction'
  more: boolean
  /** Origin wall-clock time of the captured state, ms since the epoch. */
  time: number
  changes: TableChanges[]
  /**
   * The capture position this unit brings the log up to, opaque to everything but the adapter that
   * wrote it; set on the last block of a unit. After a crash the capture side resumes from here.
   */
  source: Uint8Array | null
}

export interface SnapshotEntry {
  kind: 'snapshot'
  more: boolean
  /** The first chunk: a replica empties every table before applying it. */
  first: boolean
  /** The last chunk. The replica is consistent again after the next transaction unit. */
  last: boolean
  changes: TableChanges[]
}

export interface CheckpointEntry {
  kind: 'checkpoint'
  /** The log length whose state the digest describes. */
  length: number
  digest: Uint8Array
  rows: number
}

export interface FenceEntry {
  kind: 'fence'
  /** The epoch that supersedes this log. */
  epoch: number
  /** The log of that epoch. */
  log: Uint8Array
  /** Where the new epoch branched off this log. */
  length: number
}

export type Entry = HeaderEntry | SchemaEntry | TransactionEntry | SnapshotEntry | CheckpointEntry | FenceEntry

// --- helpers -------------------------------------------------------------------------------------------------

/** An array encoder that refuses a length the remaining bytes cannot hold, before allocating anything. */
function array<T>(enc: { preencode(s: State, v: T): void; encode(s: State, v: T): void; decode(s: State): T }) {
  return {
    preencode(state: State, arr: T[]): void {
      c.uint.preencode(state, arr.length)
      for (const v of arr) enc.preencode(state, v)
    },
    encode(state: State, arr: T[]): void {
      c.uint.encode(state, arr.length)
      for (const v of arr) enc.encode(state, v)
    },
    decode(state: State): T[] {
      const n = c.uint.decode(state)
      if (n > state.end - state.start) throw new RangeError('array length exceeds block')
      const out: T[] = new Array(n)
      for (let i = 0; i < n; i++) out[i] = enc.decode(state)
      return out
    }
  }
}

const row = array(value)
const rows = array(row)
const uints = array(c.uint)

const columnDef = {
  preencode(s: State, col: ColumnDef) {
    c.string.preencode(s, col.name)
    c.string.preencode(s, col.type)
    c.bool.preencode(s, col.notNull)
  },
  encode(s: State, col: ColumnDef) {
    c.string.encode(s, col.name)
    c.string.encode(s, col.type)
    c.bool.encode(s, col.notNull)
  },
  decode(s: State): ColumnDef {
    return { name: c.string.decode(s), type: c.string.decode(s), notNull: c.bool.decode(s) }
  }
}
const columns = array(columnDef)

const tableDef = {
  preencode(s: State, t: TableDef) {
    c.uint.preencode(s, t.id)
    c.string.preencode(s, t.name)
    c.string.preencode(s, t.sql)
    columns.preencode(s, t.columns)
    uints.preencode(s, t.key)
  },
  encode(s: State, t: TableDef) {
    c.uint.encode(s, t.id)
    c.string.encode(s, t.name)
    c.string.encode(s, t.sql)
    columns.encode(s, t.columns)
    uints.encode(s, t.key)
  },
  decode(s: State): TableDef {
    const t: TableDef = {
      id: c.uint.decode(s),
      name: c.string.decode(s),
      sql: c.string.decode(s),
      columns: columns.decode(s),
      key: uints.decode(s)
    }
    for (const k of t.key) if (k >= t.columns.length) throw new RangeError('key column out of range')
    return t
  }
}
const tableDefs = array(tableDef)

// New types are appended: an index never changes meaning.
const OBJECT_TYPES = ['index', 'view', 'trigger', 'type', 'sequence', 'constraint'] as const
const schemaObject = {
  preencode(s: State, o: SchemaObject) {
    s.end++
    c.string.preencode(s, o.name)
    c.string.preencode(s, o.table)
    c.string.preencode(s, o.sql)
  },
  encode(s: State, o: SchemaObject) {
    const t = OBJECT_TYPES.indexOf(o.type)
    if (t < 0) throw new RangeError(`unknown schema object type ${o.type}`)
    c.uint8.encode(s, t)
    c.string.encode(s, o.name)
    c.string.encode(s, o.table)
    c.string.encode(s, o.sql)
  },
  decode(s: State): SchemaObject {
    const type = OBJECT_TYPES[c.uint8.decode(s)]
    if (type === undefined) throw new RangeError('unknown schema object type')
    return { type, name: c.string.decode(s), table: c.string.decode(s), sql: c.string.decode(s) }
  }
}
const schemaObjects = array(schemaObject)

const tableChanges = {
  preencode(s: State, t: TableChanges) {
    c.uint.preencode(s, t.table)
    rows.preencode(s, t.upserts)
    rows.preencode(s, t.deletes)
  },
  encode(s: State, t: TableChanges) {
    c.uint.encode(s, t.table)
    rows.encode(s, t.upserts)
    rows.encode(s, t.deletes)
  },
  decode(s: State): TableChanges {
    return { table: c.uint.decode(s), upserts: rows.decode(s), deletes: rows.decode(s) }
  }
}
const changeList = array(tableChanges)

// --- per-kind bodies ---------------------------------------------------------------------------------------------

interface Body<E extends Entry> {
  flags(e: E): number
  preencode(s: State, e: E): void
  encode(s: State, e: E): void
  decode(s: State, flags: number): E
}

const header: Body<HeaderEntry> = {
  flags: (e) => (e.parent ? F_HEADER_PARENT : 0) | (e.promotion ? F_HEADER_PROMOTION : 0),
  preencode(s, e) {
    c.string.preencode(s, e.dataset)
    c.string.preencode(s, e.name)
    c.string.preencode(s, e.engine)
    c.uint.preencode(s, e.epoch)
    c.string.preencode(s, e.site)
    c.uint.preencode(s, e.createdAt)
    if (e.parent) {
      c.fixed32.preencode(s, e.parent.key)
      c.uint.preencode(s, e.parent.length)
    }
    if (e.promotion) c.uint8array.preencode(s, e.promotion)
  },
  encode(s, e) {
    c.string.encode(s, e.dataset)
    c.string.encode(s, e.name)
    c.string.encode(s, e.engine)
    c.uint.encode(s, e.epoch)
    c.string.encode(s, e.site)
    c.uint.encode(s, e.createdAt)
    if (e.parent) {
      c.fixed32.encode(s, e.parent.key)
      c.uint.encode(s, e.parent.length)
    }
    if (e.promotion) c.uint8array.encode(s, e.promotion)
  },
  decode(s, flags) {
    const e: HeaderEntry = {
      kind: 'header',
      dataset: c.string.decode(s),
      name: c.string.decode(s),
      engine: c.string.decode(s),
      epoch: c.uint.decode(s),
      site: c.string.decode(s),
      createdAt: c.uint.decode(s),
      parent: null
    }
    if (flags & F_HEADER_PARENT) {
      e.parent = { key: new Uint8Array(c.fixed32.decode(s)), length: c.uint.decode(s) }
    }
    if (flags & F_HEADER_PROMOTION) e.promotion = new Uint8Array(c.uint8array.decode(s))
    return e
  }
}

const schema: Body<SchemaEntry> = {
  flags: (e) => (e.more ? F_MORE : 0),
  preencode(s, e) {
    tableDefs.preencode(s, e.tables)
    schemaObjects.preencode(s, e.objects)
    uints.preencode(s, e.reset)
  },
  encode(s, e) {
    tableDefs.encode(s, e.tables)
    schemaObjects.encode(s, e.objects)
    uints.encode(s, e.reset)
  },
  decode(s, flags) {
    return {
      kind: 'schema',
      more: (flags & F_MORE) !== 0,
      tables: tableDefs.decode(s),
      objects: schemaObjects.decode(s),
      reset: uints.decode(s)
    }
  }
}

const transaction: Body<TransactionEntry> = {
  flags: (e) => (e.more ? F_MORE : 0) | (e.source ? F_TX_SOURCE : 0),
  preencode(s, e) {
    c.uint.preencode(s, e.time)
    changeList.preencode(s, e.changes)
    if (e.source) c.uint8array.preencode(s, e.source)
  },
  encode(s, e) {
    c.uint.encode(s, e.time)
    changeList.encode(s, e.changes)
    if (e.source) c.uint8array.encode(s, e.source)
  },
  decode(s, flags) {
    return {
      kind: 'transaction',
      more: (flags & F_MORE) !== 0,
      time: c.uint.decode(s),
      changes: changeList.decode(s),
      source: flags & F_TX_SOURCE ? new Uint8Array(c.uint8array.decode(s)) : null
    }
  }
}

const snapshot: Body<SnapshotEntry> = {
  flags: (e) => (e.more ? F_MORE : 0) | (e.first ? F_SNAPSHOT_FIRST : 0) | (e.last ? F_SNAPSHOT_LAST : 0),
  preencode(s, e) {
    changeList.preencode(s, e.changes)
  },
  encode(s, e) {
    changeList.encode(s, e.changes)
  },
  decode(s, flags) {
    return {
      kind: 'snapshot',
      more: (flags & F_MORE) !== 0,
      first: (flags & F_SNAPSHOT_FIRST) !== 0,
      last: (flags & F_SNAPSHOT_LAST) !== 0,
      changes: changeList.decode(s)
    }
  }
}

const checkpoint: Body<CheckpointEntry> = {
  flags: () => 0,
  preencode(s, e) {
    c.uint.preencode(s, e.length)
    c.fixed32.preencode(s, e.digest)
    c.uint.preencode(s, e.rows)
  },
  encode(s, e) {
    c.uint.encode(s, e.length)
    c.fixed32.encode(s, e.digest)
    c.uint.encode(s, e.rows)
  },
  decode(s) {
    return {
      kind: 'checkpoint',
      length: c.uint.decode(s),
      digest: new Uint8Array(c.fixed32.decode(s)),
      rows: c.uint.decode(s)
    }
  }
}

const fence: Body<FenceEntry> = {
  flags: () => 0,
  preencode(s, e) {
    c.uint.preencode(s, e.epoch)
    c.fixed32.preencode(s, e.log)
    c.uint.preencode(s, e.length)
  },
  encode(s, e) {
    c.uint.encode(s, e.epoch)
    c.fixed32.encode(s, e.log)
    c.uint.encode(s, e.length)
  },
  decode(s) {
    return {
      kind: 'fence',
      epoch: c.uint.decode(s),
      log: new Uint8Array(c.fixed32.decode(s)),
      length: c.uint.decode(s)
    }
  }
}

const BODIES: { [K in KindName]: Body<Extract<Entry, { kind: K }>> } = {
  header,
  schema,
  transaction,
  snapshot,
  checkpoint,
  fence
}

function checksum(bytes: Uint8Array, start: number, end: number): Uint8Array {
  const out = Buffer.alloc(16)
  sodium.crypto_generichash(out, Buffer.from(bytes.buffer, bytes.byteOffset + start, end - start))
  return out.subarray(0, CHECKSUM_BYTES)
}

// --- public ----------------------------------------------------------------------------------------------------

/**
 * Whether to compress bodies. The protocol's default is off (its fixtures and tests write plain entries); the
 * node's log writes compressed (node/log.ts). A body is stored compressed only where that saves bytes.
 */
export interface EncodeOptions {
  /** 'best': brotli's best quality for small bodies (deflateBody), for a log that appends rarely (batching). */
  compress?: boolean | 'best'
  /**
   * With compress 'best': a dictionary block of the log being written (format 3), at block `seq` before the
   * blocks being encoded. A small body is compressed against it where that is smaller than brotli alone.
   */
  dictionary?: Dictionary | null
  /**
   * Called with each body small enough to be compressed against a dictionary (at most BEST_MAX_BYTES, its bytes
   * before compression), so that a writer builds its next dictionary from bodies like the ones that will use it.
   */
  onBody?: (body: Uint8Array) => void
}

export type { Dictionary }

/** Encodes an entry into one block. Throws MeshError.BAD_ENTRY for an entry that cannot be encoded. */
export function encodeEntry(entry: Entry, opts: EncodeOptions = {}): Uint8Array {
  const p = prepareEntry(entry, opts)
  if (p instanceof Uint8Array) return p
  let packed: Buffer | null
  try {
    packed = deflateBody(p.rest, opts.compress === 'best')
  } catch (err) {
    throw MeshError.wrap(err, MeshError.BAD_ENTRY, `cannot encode ${entry.kind} entry`)
  }
  return p.finish(packed, againstDictionary(p.rest, packed, opts))
}

/**
 * encodeEntry with a large body compressed on libuv's thread pool (zlib's asynchronous brotli, same parameters:
 * the same bytes as encodeEntry), so the caller's thread goes on meanwhile. Small bodies are compressed here, at
 * once: the pool's round trip would cost them more than it saves.
 */
export async function encodeEntryAsync(entry: Entry, opts: EncodeOptions = {}): Promise<Uint8Array> {
  const p = prepareEntry(entry, opts)
  if (p instanceof Uint8Array) return p
  let packed: Buffer | null
  try {
    const best = opts.compress === 'best'
    packed = p.rest.byteLength >= ASYNC_DEFLATE_BYTES ? await deflateBodyAsync(p.rest, best) : deflateBody(p.rest, best)
  } catch (err) {
    throw MeshError.wrap(err, MeshError.BAD_ENTRY, `cannot encode ${entry.kind} entry`)
  }
  return p.finish(packed, againstDictionary(p.rest, packed, opts))
}

/** Bodies at least this large are compressed on the thread pool by encodeEntryAsync. */
const ASYNC_DEFLATE_BYTES = 64 * 1024

/**
 * An entry's block, or, for a body to compress, the body's bytes after what stays plain (`rest`) and what makes
 * the block from their compressed form (`finish`; null: they did not compress, the block is plain).
 */
function prepareEntry(
  entry: Entry,
  opts: EncodeOptions
): Uint8Array | { rest: Uint8Array; finish: (packed: Buffer | null, dict: Buffer | null) => Uint8Array } {
  const body = BODIES[entry.kind] as Body<Entry> | undefined
  if (body === undefined) throw MeshError.UNKNOWN_KIND(`cannot encode entry kind ${String(entry.kind)}`)
  const wrap = (err: unknown) => MeshError.wrap(err, MeshError.BAD_ENTRY, `cannot encode ${entry.kind} entry`)
  try {
    // The body's bytes, or at least its size, first: it says whether raw TEXT is in it, which the flags must tell.
    let bodyBytes = ONE_PASS.has(entry.kind) ? encodeOnce(body, entry) : null
    const bodySize = c.state()
    if (bodyBytes === null) {
      rawTextState.seen = 0
      body.preencode(bodySize, entry)
    } else bodySize.end = bodyBytes.byteLength
    // Only transaction and snapshot entries hold values; their flag tells older software it cannot read them.
    const flags = body.flags(entry) | (rawTextState.seen > 0 ? F_RAW_TEXT : 0)
    if (flags & ~ALLOWED_FLAGS[entry.kind]) throw new RangeError(`raw TEXT cannot be carried by a ${entry.kind} entry`)
    const kind = Kind[entry.kind]
    const write = (st: State) => {
      if (bodyBytes !== null) c.raw.encode(st, bodyBytes)
      else body.encode(st, entry)
    }
    const plain = () => {
      const pre = (st: State) => {
        st.end += bodySize.end
      }
      return seal(VERSION_OF_KIND[kind], kind, flags, pre, write)
    }
    if (!opts.compress || !COMPRESSIBLE.includes(entry.kind)) return plain()
    if (bodyBytes === null) {
      bodyBytes = Buffer.allocUnsafe(bodySize.end)
      const st = c.state(0, bodySize.end, bodyBytes)
      body.encode(st, entry)
      if (st.start !== bodySize.end) throw new RangeError('encoder size mismatch')
    }
    const { rest, finish } = compressible(kind, flags, bodyBytes, entry)
    if (rest.byteLength <= BEST_MAX_BYTES) opts.onBody?.(rest)
    return {
      rest,
      finish: (packed, dict) => {
        try {
          if (dict !== null && opts.dictionary) return finish(dict, opts.dictionary.seq) ?? plain()
          return (packed !== null ? finish(packed) : null) ?? plain()
        } catch (err) {
          throw wrap(err)
        }
      }
    }
  } catch (err) {
    throw wrap(err)
  }
}

/**
 * Kinds whose body is written in one pass (encodeOnce): the ones that carry rows, nearly all of a log's bytes.
 * The others are sized first (preencode), then written.
 */
const ONE_PASS = new Set<KindName>(['transaction', 'snapshot'])

/** encodeOnce's buffer: a body up to this size is written once into it and copied out. */
const ONCE_BYTES = 1024 * 1024
let onceBuffer: Buffer | null = null

/**
 * The body's bytes, written once into a scratch buffer without sizing them first (rawTextState.seen counted on
 * the way), or null when they do not fit in it or an encoder refused a value: the caller then sizes and writes
 * them as for any other kind (the same bytes; a refused value refused again, with its error).
 */
function encodeOnce(body: Body<Entry>, entry: Entry): Buffer | null {
  onceBuffer ??= Buffer.allocUnsafe(ONCE_BYTES)
  const st = c.state(0, ONCE_BYTES, onceBuffer)
  rawTextState.seen = 0
  try {
    body.encode(st, entry)
  } catch (err) {
    // Out of room (a write past the end) or a value no encoder takes: see above.
    if (err instanceof RangeError) return null
    throw err
  }
  // Typed-array writes past the end are dropped, not thrown: the position says whether all of it fitted.
  if (st.start > ONCE_BYTES) return null
  return Buffer.from(onceBuffer.subarray(0, st.start))
}

/**
 * The block of an entry whose body compresses (F_COMPRESSED), from the body's `bytes` (see compressedBody):
 * `finish` seals the block from `rest` compressed, or gives null when it did not compress.
 */
function compressible(
  kind: number,
  flags: number,
  bytes: Uint8Array,
  entry: Entry
): { rest: Uint8Array; finish: (packed: Buffer | null, dictionary?: number) => Uint8Array | null } {
  const { rest, finish } = compressedBody(bytes, entry)
  return {
    rest,
    finish: (packed, dictionary) => {
      const body = finish(packed, dictionary)
      return body === null ? null : seal(VERSION_OF_KIND[kind], kind, flags | body.how, body.pre, body.write)
    }
  }
}

/** One block: version, kind, flags, the body (`pre` sizes it, `enc` writes it), the checksum. */
function seal(version: number, kind: number, flags: number, pre: Writer, enc: Writer): Uint8Array {
  const state = c.state()
  c.uint.preencode(state, version)
  c.uint.preencode(state, kind)
  c.uint.preencode(state, flags)
  pre(state)
  const size = state.end
  state.end += CHECKSUM_BYTES
  state.buffer = Buffer.allocUnsafe(state.end)
  c.uint.encode(state, version)
  c.uint.encode(state, kind)
  c.uint.encode(state, flags)
  enc(state)
  if (state.start !== size) throw new RangeError('encoder size mismatch')
  state.buffer.set(checksum(state.buffer, 0, size), size)
  return state.buffer
}

/**
 * A piece of an entry too large for one block (format 2). `bytes` are a slice of the entry's own encoding
 * (with its checksum); the pieces of one entry are consecutive blocks of its unit, and their bytes joined
 * decode with decodeEntry. `kind` and `time` repeat the carried entry's, so that finding a point in the
 * history (peekEntry) needs no reassembly.
 */
export interface Fragment {
  /** The unit goes on after this block. */
  more: boolean
  /** This piece completes its entry. */
  end: boolean
  kind: KindName
  time: number | null
  bytes: Uint8Array
}

/**
 * Encodes a unit's entries into blocks: one block per entry, except that an entry whose encoding exceeds
 * `maxBlock` becomes consecutive fragment blocks of `fragmentBytes` each (format 2). A unit is still the run
 * of blocks that ends at the first block without MORE. The fragments of an entry are slices of its encoding:
 * memory holds the entry's encoding once, plus the blocks.
 */
export function encodeUnit(
  entries: Entry[],
  maxBlock = MAX_BLOCK_BYTES,
  fragmentBytes = FRAGMENT_BYTES,
  opts: EncodeOptions = {}
): Uint8Array[] {
  const out: Uint8Array[] = []
  for (const entry of entries) blocksOf(entry, encodeEntry(entry, opts), maxBlock, fragmentBytes, out)
  return out
}

/** encodeUnit with large bodies compressed on the thread pool (encodeEntryAsync): the same blocks. */
export async function encodeUnitAsync(
  entries: Entry[],
  maxBlock = MAX_BLOCK_BYTES,
  fragmentBytes = FRAGMENT_BYTES,
  opts: EncodeOptions = {}
): Promise<Uint8Array[]> {
  const out: Uint8Array[] = []
  for (const entry of entries) blocksOf(entry, await encodeEntryAsync(entry, opts), maxBlock, fragmentBytes, out)
  return out
}

/** The entry's encoding as blocks: itself, or fragments when it is larger than a block. */
function blocksOf(entry: Entry, bytes: Uint8Array, maxBlock: number, fragmentBytes: number, out: Uint8Array[]): void {
  if (bytes.byteLength <= maxBlock) {
    out.push(bytes)
    return
  }
  const time = entry.kind === 'transaction' ? entry.time : null
  for (let at = 0; at < bytes.byteLength; at += fragmentBytes) {
    const end = at + fragmentBytes >= bytes.byteLength
    out.push(
      encodeFragment({
        more: end ? continues(entry) : true,
        end,
        kind: entry.kind,
        time,
        bytes: bytes.subarray(at, at + fragmentBytes)
      })
    )
  }
}

export function encodeFragment(f: Fragment): Uint8Array {
  const flags = (f.more ? F_MORE : 0) | (f.end ? F_FRAG_END : 0)
  const pre = (s: State) => {
    c.uint.preencode(s, Kind[f.kind])
    c.uint.preencode(s, f.time ?? 0)
    c.uint8array.preencode(s, f.bytes)
  }
  const enc = (s: State) => {
    c.uint.encode(s, Kind[f.kind])
    c.uint.encode(s, f.time ?? 0)
    c.uint8array.encode(s, f.bytes)
  }
  return seal(VERSION_OF_KIND[K_FRAGMENT], K_FRAGMENT, flags, pre, enc)
}

/**
 * The block that closes a unit its writer abandoned (format 2): the capture side appended part of a unit,
 * then stopped (a crash, an error) before its last block. The log is append-only, so the unit's blocks stay;
 * this block ends the unit, and every reader discards it whole. `start` is the block the abandoned unit began at.
 */
export interface Abandon {
  start: number
}

export function encodeAbandon(a: Abandon): Uint8Array {
  const pre = (s: State) => c.uint.preencode(s, a.start)
  return seal(VERSION_OF_KIND[K_ABANDON], K_ABANDON, 0, pre, (s) => c.uint.encode(s, a.start))
}

/**
 * A compression dictionary block (format 3; see K_DICTIONARY). `bytes` is its content, which entries later in
 * the log that name this block (F_DICTIONARY) are compressed against.
 */
export function encodeDictionary(bytes: Uint8Array): Uint8Array {
  const { pre, write } = dictionaryBody(bytes)
  return seal(VERSION_OF_KIND[K_DICTIONARY], K_DICTIONARY, 0, pre, write)
}

export type Block =
  | { type: 'entry'; entry: Entry }
  | { type: 'fragment'; fragment: Fragment }
  | { type: 'abandon'; abandon: Abandon }
  | { type: 'dictionary'; dictionary: { bytes: Uint8Array } }

export interface DecodeOptions {
  verifyChecksum?: boolean
  /** The dictionary block the entry names, for an entry compressed against one (F_DICTIONARY; see peekDictionary). */
  dictionary?: Dictionary | null
}

/**
 * Decodes one block of any kind. Returns a well-formed block or throws a MeshError (BAD_ENTRY,
 * UNKNOWN_VERSION, UNKNOWN_KIND, UNKNOWN_FLAGS); it never throws anything else and never returns a partly
 * read entry.
 */
export function decodeBlock(block: Uint8Array, opts: DecodeOptions = {}): Block {
  if (!(block instanceof Uint8Array)) throw MeshError.BAD_ENTRY('a block must be bytes')
  if (block.byteLength < 3 + CHECKSUM_BYTES) {
    throw MeshError.BAD_ENTRY(`block of ${block.byteLength} bytes is too short to be an entry`)
  }
  const end = block.byteLength - CHECKSUM_BYTES
  const state = c.state(0, end, block)
  let version: number
  try {
    version = c.uint.decode(state)
  } catch (err) {
    throw MeshError.wrap(err, MeshError.BAD_ENTRY, 'unreadable version')
  }
  const unknownVersion = () =>
    // The version is read before the checksum so a newer format is reported as such, not as damage.
    MeshError.UNKNOWN_VERSION(`entry format version ${version}; this software reads versions 1 to ${FORMAT_VERSION}`, {
      context: { version }
    })
  if (version < 1 || version > FORMAT_VERSION) throw unknownVersion()
  let kindNo: number
  let flags: number
  try {
    kindNo = c.uint.decode(state)
    flags = c.uint.decode(state)
  } catch (err) {
    throw MeshError.wrap(err, MeshError.BAD_ENTRY, 'unreadable entry prefix')
  }
  // Each version writes only the kinds it added (VERSION_OF_KIND): a version-2 block of a format-1 kind comes
  // from a format this software does not know; a version-1 block of a format-2 kind is refused as a 0.1 node
  // refuses it.
  if (version > 1 && VERSION_OF_KIND[kindNo] !== version) throw unknownVersion()
  if (opts.verifyChecksum !== false) {
    const want = checksum(block, 0, end)
    for (let i = 0; i < CHECKSUM_BYTES; i++) {
      if (block[end + i] !== want[i]) throw MeshError.BAD_ENTRY('checksum mismatch: the block is damaged')
    }
  }
  if (version === 2 && kindNo === K_FRAGMENT) {
    return { type: 'fragment', fragment: decodeFragmentBody(state, flags, end) }
  }
  if (version === 2 && kindNo === K_ABANDON) {
    if (flags !== 0) {
      const bits = flags.toString(16)
      throw MeshError.UNKNOWN_FLAGS(`abandon block has unknown flag bits 0x${bits}`, { context: { flags } })
    }
    let start: number
    try {
      start = c.uint.decode(state)
    } catch (err) {
      throw MeshError.wrap(err, MeshError.BAD_ENTRY, 'truncated or corrupt abandon block')
    }
    if (state.start !== end) throw MeshError.BAD_ENTRY(`${end - state.start} unread bytes after an abandon block`)
    return { type: 'abandon', abandon: { start } }
  }
  if (version === 3 && kindNo === K_DICTIONARY) {
    return { type: 'dictionary', dictionary: { bytes: decodeDictionaryBody(flags, block, state, end) } }
  }
  const kind = VERSION_OF_KIND[kindNo] === 1 ? KIND_NAMES[kindNo] : undefined
  if (kind === undefined) throw MeshError.UNKNOWN_KIND(`entry kind ${kindNo} is unknown`, { context: { kind: kindNo } })
  const unknown = flags & ~ALLOWED_FLAGS[kind]
  if (unknown !== 0) {
    throw MeshError.UNKNOWN_FLAGS(`${kind} entry has unknown flag bits 0x${unknown.toString(16)}`, {
      context: { flags }
    })
  }
  // A compressed body is inflated (bounded) first; the rest reads it as a plain one.
  const packed = (flags & (F_COMPRESSED | F_DICTIONARY)) !== 0
  const bodyState = packed ? inflatedBody(kind, flags, block, state, end, opts.dictionary ?? null) : state
  const bodyEnd = packed ? bodyState.end : end
  let entry: Entry
  try {
    rawTextState.allowed = (flags & F_RAW_TEXT) !== 0
    entry = BODIES[kind].decode(bodyState, flags)
  } catch (err) {
    throw MeshError.wrap(err, MeshError.BAD_ENTRY, `truncated or corrupt ${kind} entry`)
  } finally {
    rawTextState.allowed = false
  }
  if (bodyState.start !== bodyEnd) {
    throw MeshError.BAD_ENTRY(`${bodyEnd - bodyState.start} unread bytes after a ${kind} entry`)
  }
  return { type: 'entry', entry }
}

function decodeFragmentBody(state: State, flags: number, end: number): Fragment {
  const unknown = flags & ~(F_MORE | F_FRAG_END)
  if (unknown !== 0) {
    const bits = unknown.toString(16)
    throw MeshError.UNKNOWN_FLAGS(`fragment block has unknown flag bits 0x${bits}`, { context: { flags } })
  }
  let f: Fragment
  try {
    const kind = KIND_NAMES[c.uint.decode(state)]
    if (kind === undefined) throw new RangeError('a fragment of an unknown kind')
    const time = c.uint.decode(state)
    // A view into the block, not a copy: the reader joins the pieces into one buffer anyway.
    const bytes = c.uint8array.decode(state)
    const more = (flags & F_MORE) !== 0
    f = { more, end: (flags & F_FRAG_END) !== 0, kind, time: kind === 'transaction' ? time : null, bytes }
  } catch (err) {
    throw MeshError.wrap(err, MeshError.BAD_ENTRY, 'truncated or corrupt fragment block')
  }
  if (state.start !== end) throw MeshError.BAD_ENTRY(`${end - state.start} unread bytes after a fragment block`)
  if (!f.end && !f.more) throw MeshError.BAD_ENTRY("a fragment that is not its entry's last ends its unit")
  return f
}

/**
 * Decodes one block that holds a whole entry. Returns a well-formed entry or throws a MeshError (BAD_ENTRY,
 * UNKNOWN_VERSION, UNKNOWN_KIND, UNKNOWN_FLAGS); it never throws anything else and never returns a partly
 * read entry. A fragment or abandon block is BAD_ENTRY here: the log's reader (node/log.ts) handles them.
 */
export function decodeEntry(block: Uint8Array, opts: DecodeOptions = {}): Entry {
  const b = decodeBlock(block, opts)
  if (b.type !== 'entry') throw MeshError.BAD_ENTRY(`a ${b.type} block is not a whole entry`)
  return b.entry
}

/** What peekEntry tells of a block; kind 'dictionary' for a dictionary block (format 3), which holds no entry. */
export interface Peek {
  kind: KindName | 'dictionary'
  more: boolean
  time: number | null
}

/**
 * What finding a point in the history needs of a block, without decoding its rows: its kind, whether its unit
 * continues in the next block, and its time (a transaction's commit time, a header's creation time; null for
 * the rest). The body is decoded only for a header (a small block). Damage is found when the block is applied.
 */
export function peekEntry(block: Uint8Array): Peek {
  const state = c.state(0, block.byteLength, block)
  try {
    const version = c.uint.decode(state)
    if (version !== 1) return fullPeek(block)
    const kind = KIND_NAMES[c.uint.decode(state)]
    const flags = c.uint.decode(state)
    if (kind === undefined) return fullPeek(block)
    if (kind === 'header') return fullPeek(block)
    const more = kind !== 'checkpoint' && kind !== 'fence' && (flags & F_MORE) !== 0
    return { kind, more, time: kind === 'transaction' ? c.uint.decode(state) : null }
  } catch {
    return fullPeek(block)
  }
}

/**
 * The size a compressed entry's body inflates to (what it declares, at most MAX_INFLATED_BYTES), read from the
 * block's first bytes without inflating it; null for a block that is not a compressed entry. What a unit of
 * compressed blocks takes in memory once read is this, not the blocks' size.
 */
export function peekInflated(block: Uint8Array): number | null {
  const state = c.state(0, block.byteLength, block)
  try {
    if (c.uint.decode(state) !== 1) return null
    const kind = KIND_NAMES[c.uint.decode(state)]
    const flags = c.uint.decode(state)
    if (kind === undefined || !(flags & (F_COMPRESSED | F_DICTIONARY))) return null
    if (kind === 'transaction') c.uint.decode(state)
    return c.uint.decode(state)
  } catch {
    return null
  }
}

/**
 * The block number of the dictionary a block is compressed against (F_DICTIONARY, format 3), read from its first
 * bytes; null for any other block. A reader fetches and decodes that block (it must be a dictionary block before
 * this one) and passes it to decodeBlock. A block too damaged to tell is null here, and BAD_ENTRY when decoded.
 */
export function peekDictionary(block: Uint8Array): number | null {
  const state = c.state(0, block.byteLength, block)
  try {
    if (c.uint.decode(state) !== 1) return null
    const kind = KIND_NAMES[c.uint.decode(state)]
    const flags = c.uint.decode(state)
    if (kind === undefined || !(flags & F_DICTIONARY) || !COMPRESSIBLE.includes(kind)) return null
    if (kind === 'transaction') c.uint.decode(state)
    c.uint.decode(state)
    return c.uint.decode(state)
  } catch {
    return null
  }
}

/**
 * The same by decoding the whole block (which throws what decodeBlock throws). A fragment answers for the
 * entry it carries; an abandon block ends a unit that has no time.
 */
function fullPeek(block: Uint8Array): Peek {
  const b = decodeBlock(block)
  if (b.type === 'fragment') return { kind: b.fragment.kind, more: b.fragment.more, time: b.fragment.time }
  if (b.type === 'abandon') return { kind: 'transaction', more: false, time: null }
  if (b.type === 'dictionary') return { kind: 'dictionary', more: false, time: null }
  const e = b.entry
  return {
    kind: e.kind,
    more: continues(e),
    time: e.kind === 'transaction' ? e.time : e.kind === 'header' ? e.createdAt : null
  }
}

/** Whether the unit that contains this entry continues in the next block. */
export function continues(entry: Entry): boolean {
  return 'more' in entry && entry.more
}

/** Recomputes the checksum of a block in place (for tests that corrupt the body but not the checksum). */
export function resealBlock(block: Uint8Array): void {
  const end = block.byteLength - CHECKSUM_BYTES
  block.set(checksum(block, 0, end), end)
}
