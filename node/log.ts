/**
 * A dataset's log: a hypercore in the site's corestore, one encoded entry per block.
 *
 * Durability. hypercore 11 keeps its data in RocksDB and returns from append() once the write batch is in
 * RocksDB's write-ahead log, which is written but not fsynced: a killed process loses nothing, a power cut
 * could. flush() fsyncs those write-ahead log files, and the capture loop acknowledges a batch at the
 * source only after it, so a power cut cannot lose a change that the source has already forgotten.
 */
import fs from 'node:fs'
import path from 'node:path'
import type Corestore from 'corestore'
import type Hypercore from 'hypercore'
import {
  FRAGMENT_BYTES,
  MAX_BLOCK_BYTES,
  MeshError,
  continues,
  decodeBlock,
  decodeEntry,
  encodeAbandon,
  encodeDictionary,
  encodeUnitAsync,
  peekDictionary,
  peekEntry,
  peekInflated,
  type Block,
  type Dictionary,
  type EncodeOptions,
  type Entry,
  type HeaderEntry,
  UnitAssembler
} from '../protocol/index.ts'
import type { Unit } from '../adapters/index.ts'
import { DictionaryWriter } from './dictionary.ts'

/**
 * The memory a unit may take while it is captured or applied, by default (issue 14): above it, the capture and
 * apply loops work in parts of 1/64 of it (see bench/big.ts for the peak RSS this gives).
 */
export const DEFAULT_UNIT_MEMORY = 64 * 1024 * 1024

export function logName(dataset: string, epoch: number): string {
  return `dataset/${dataset}/epoch/${epoch}`
}

/** The dataset and epoch of a log's corestore name (logName, with or without a suffix); null for another name. */
export function logOfName(name: string): LogPlace | null {
  const m = /^dataset\/([^/]+)\/epoch\/(\d+)(\/|$)/.exec(name)
  return m ? { dataset: m[1], epoch: Number(m[2]) } : null
}

/** Which dataset, and which epoch of it, a log is. */
export interface LogPlace {
  dataset: string
  epoch: number
}

/**
 * Block encryption of a log (hypercore's `encryption` option): every block is encrypted before it is hashed and
 * signed, so a site without the key verifies and serves the ciphertext, and only a site with it reads entries.
 * null: the log is read and written as it is stored (a blind site, or a dataset from before encryption).
 */
export type LogEncryption = { key: Uint8Array } | null

function ioError(err: unknown, doing: string): MeshError {
  if (err instanceof MeshError) return err
  const code = (err as NodeJS.ErrnoException)?.code ?? (err as { cause?: NodeJS.ErrnoException })?.cause?.code
  const text = err instanceof Error ? err.message : String(err)
  if (code === 'ENOSPC' || /no space left/i.test(text)) {
    return MeshError.DISK_FULL(`${doing}: ${text}`, { cause: err })
  }
  return MeshError.IO_ERROR(`${doing}: ${text}`, { cause: err })
}

/** fsyncs the RocksDB write-ahead log files of a corestore kept at `storeDir`. */
/** How much of a unit is here (DatasetLog.scan). */
export interface UnitScan {
  next: number
  bytes: number
  end: number | null
  abandoned: boolean
}

export async function syncStore(storeDir: string): Promise<void> {
  const dbDir = path.join(storeDir, 'db')
  let names: string[]
  try {
    names = (await fs.promises.readdir(dbDir)).filter((n) => /^\d+\.log$/.test(n))
  } catch (err) {
    throw ioError(err, 'cannot find the log store files')
  }
  for (const n of names) {
    let fh: fs.promises.FileHandle | null = null
    try {
      fh = await fs.promises.open(path.join(dbDir, n), 'r')
      await fh.sync()
    } catch (err) {
      // A write-ahead log file that RocksDB retired between readdir and open needs no sync.
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw ioError(err, 'cannot flush the log to disk')
    } finally {
      await fh?.close()
    }
  }
}

export class DatasetLog {
  readonly core: Hypercore
  private readonly storeDir: string
  /**
   * Whether appended entries are compressed where that saves bytes (issue 16, F_COMPRESSED; on by default).
   * A site of a version before compression cannot read them (UNKNOWN_FLAGS): see UPGRADE.md.
   */
  compress: boolean | 'best' = true

  /** With compress 'best': the dictionary blocks this log writes (format 3; node/dictionary.ts). */
  private readonly dictionaries = new DictionaryWriter()
  /** The dictionary block last read: the blocks that follow one name the same block for a while. */
  private dictionaryRead: Dictionary | null = null
  /** The last append handed to the hypercore, settled (with compress 'best' a unit waits for it: see appendUnit). */
  private lastAppend: Promise<unknown> = Promise.resolve()

  /** The header this log's block 0 decoded to, once read (a chain's walk reads its parent key from it). */
  private headerRead: HeaderEntry | null = null

  private constructor(storeDir: string, core: Hypercore) {
    this.storeDir = storeDir
    this.core = core
  }

  private static async open(
    store: Corestore,
    storeDir: string,
    which: { name: string } | { key: Uint8Array },
    encryption: LogEncryption
  ): Promise<DatasetLog> {
    const core = store.get(encryption ? { ...which, encryption: { key: Buffer.from(encryption.key) } } : which)
    try {
      await core.ready()
    } catch (err) {
      throw ioError(err, 'cannot open the log')
    }
    return new DatasetLog(storeDir, core)
  }

  /** A writable log under the conventional name of (dataset, epoch): epoch 0 of a dataset this site created. */
  static writable(
    store: Corestore,
    storeDir: string,
    dataset: string,
    epoch: number,
    encryption: LogEncryption = null
  ): Promise<DatasetLog> {
    return DatasetLog.open(store, storeDir, { name: logName(dataset, epoch) }, encryption)
  }

  /** A log this site writes, by the corestore name it was created under. */
  static named(
    store: Corestore,
    storeDir: string,
    name: string,
    encryption: LogEncryption = null
  ): Promise<DatasetLog> {
    return DatasetLog.open(store, storeDir, { name }, encryption)
  }

  /** Another site's log, by key. */
  static byKey(
    store: Corestore,
    storeDir: string,
    key: Uint8Array,
    encryption: LogEncryption = null
  ): Promise<DatasetLog> {
    return DatasetLog.open(store, storeDir, { key }, encryption)
  }

  /** The header of this log if it was read already (no I/O): its dataset, and its parent's key. */
  get knownHeader(): HeaderEntry | null {
    return this.headerRead
  }

  get key(): Uint8Array {
    return this.core.key
  }

  get length(): number {
    return this.core.length
  }

  /** Appends one unit atomically (one hypercore batch) and makes it durable. */
  async appendUnit(entries: Entry[]): Promise<number> {
    if (entries.length === 0) return this.core.length
    // Units reach the hypercore in the order appendUnit was called, though a large body is compressed on the
    // thread pool meanwhile (encodeUnitAsync): each waits until the one called before it was handed over.
    const before = this.handedOver
    let handedOver = () => {}
    this.handedOver = new Promise<void>((resolve) => {
      handedOver = resolve
    })
    try {
      let opts: EncodeOptions = { compress: this.compress }
      let lead: Uint8Array[] = []
      if (this.compress === 'best') {
        // Compressed against a dictionary block (format 3), whose block number must be known: this unit waits
        // until the one before it is in the log. A batching log appends about once a batch, so nothing is lost.
        await before
        await this.lastAppend
        ;({ opts, lead } = await this.dictionaryStep())
      }
      // An entry larger than a block becomes fragments (format 2): memory holds the unit's encoding once.
      let blocks = await encodeUnitAsync(entries, MAX_BLOCK_BYTES, FRAGMENT_BYTES, opts)
      await before
      if (lead.length > 0 && this.core.length !== this.dictionaries.current?.seq) {
        // A block went in without appendUnit meanwhile (none does once capture runs): the new dictionary would
        // not be at the block its entries name. Without it, then.
        this.dictionaries.forget()
        lead = []
        blocks = await encodeUnitAsync(entries, MAX_BLOCK_BYTES, FRAGMENT_BYTES, { compress: this.compress })
      }
      let appended: Promise<{ length: number }>
      try {
        appended = this.core.append(lead.length > 0 ? [...lead, ...blocks] : blocks)
        // The next unit waits for this: if the new dictionary did not make it into the log, it is forgotten
        // before the next unit could name it.
        const withDictionary = lead.length > 0
        this.lastAppend = appended.then(
          () => {},
          () => {
            if (withDictionary) this.dictionaries.forget()
          }
        )
      } finally {
        handedOver()
      }
      try {
        const { length } = await appended
        await syncStore(this.storeDir)
        return length
      } catch (err) {
        throw ioError(err, 'cannot append to the log')
      }
    } finally {
      handedOver()
    }
  }

  /**
   * With compress 'best', before a unit is encoded: a new dictionary block to append just before it when one is
   * due (node/dictionary.ts) and the log is at a unit boundary, and the options that compress the unit against the
   * current dictionary and collect its bodies for the next.
   */
  private async dictionaryStep(): Promise<{ opts: EncodeOptions; lead: Uint8Array[] }> {
    const w = this.dictionaries
    const lead: Uint8Array[] = []
    const content = w.due()
    // Block 0 is the header; a dictionary never goes inside a unit (a large one is appended in parts).
    if (content !== null && this.core.length > 0 && !(await this.peek(this.core.length - 1))?.more) {
      lead.push(encodeDictionary(content))
      w.use({ seq: this.core.length, bytes: content })
    }
    return { opts: { compress: 'best', dictionary: w.current, onBody: (b) => w.add(b) }, lead }
  }

  /** Resolves once the last appendUnit called has handed its blocks to the hypercore (or failed before). */
  private handedOver: Promise<void> = Promise.resolve()

  /**
   * The entry block `index` holds, or is a fragment of (joined from its pieces); waits for its blocks to
   * arrive unless `wait` is false (then null if one is absent). Null for an abandon block, which holds no entry.
   */
  async entry(index: number, opts: { wait?: boolean; timeout?: number } = {}): Promise<Entry | null> {
    const it = await this.item(index, opts)
    return it !== null && it.block.type === 'entry' ? it.block.entry : null
  }

  /**
   * The block at `index` as an entry (a fragment's entry joined from its pieces, which are consecutive blocks)
   * or an abandon block, with the blocks it spans [first, next); null when one of them is absent (wait false)
   * or the log ends inside it. A run of fragments cut short by an abandon block (a writer that died while
   * appending a large entry) reads as that abandon block. Memory: the entry's encoding once, joined.
   */
  private async item(
    index: number,
    opts: { wait?: boolean; timeout?: number }
  ): Promise<{ block: Exclude<Block, { type: 'fragment' }>; first: number; next: number; bytes: number } | null> {
    const b = await this.blockAt(index, opts)
    if (b === null) return null
    if (b.type !== 'fragment') {
      const raw = b.raw
      return { block: b, first: index, next: index + 1, bytes: Math.max(raw.byteLength, peekInflated(raw) ?? 0) }
    }
    let first = index
    while (first > 0) {
      const p = await this.blockAt(first - 1, opts)
      if (p === null || p.type !== 'fragment' || p.fragment.end) break
      first--
    }
    const parts: Uint8Array[] = []
    let size = 0
    for (let i = first; ; i++) {
      if (i >= this.core.length && opts.wait === false) return null
      const p = i === index ? b : await this.blockAt(i, opts)
      if (p === null) return null
      if (p.type === 'abandon') return { block: p, first: i, next: i + 1, bytes: 0 }
      if (p.type !== 'fragment') {
        throw MeshError.BAD_LOG(`block ${i} interrupts the fragments of an entry that begins at block ${first}`, {
          context: { block: i }
        })
      }
      parts.push(p.fragment.bytes)
      size += p.fragment.bytes.byteLength
      if (!p.fragment.end) continue
      let entry: Entry
      try {
        entry = decodeEntry(Buffer.concat(parts, size))
      } catch (err) {
        const e = err as MeshError
        e.context.block = first
        throw e
      }
      parts.length = 0
      if (entry.kind !== p.fragment.kind || continues(entry) !== p.fragment.more) {
        throw MeshError.BAD_ENTRY(`the fragments at blocks ${first}-${i} do not match the entry they carry`, {
          context: { block: i }
        })
      }
      return { block: { type: 'entry', entry }, first, next: i + 1, bytes: size }
    }
  }

  /**
   * Block `index` decoded, with its bytes; a block compressed against a dictionary (format 3) is decoded with the
   * dictionary block it names, read first (one block, cached). Null when either is absent (wait false).
   */
  private async blockAt(
    index: number,
    opts: { wait?: boolean; timeout?: number }
  ): Promise<(Block & { raw: Buffer }) | null> {
    const raw = await this.block(index, opts)
    if (raw === null) return null
    const seq = peekDictionary(raw)
    const dictionary = seq === null ? null : await this.dictionaryAt(index, seq, opts)
    if (seq !== null && dictionary === null) return null
    return { ...this.decode(index, raw, (b) => decodeBlock(b, { dictionary })), raw }
  }

  /**
   * The dictionary block `seq` that block `index` names. BAD_ENTRY when it is not a dictionary block before
   * `index` (a crafted or damaged block cannot make a reader follow it anywhere else); null when absent (wait false).
   */
  private async dictionaryAt(
    index: number,
    seq: number,
    opts: { wait?: boolean; timeout?: number }
  ): Promise<Dictionary | null> {
    if (seq >= index) {
      throw MeshError.BAD_ENTRY(`block ${index} names block ${seq} as its dictionary, which does not come before it`, {
        context: { block: index }
      })
    }
    if (this.dictionaryRead?.seq === seq) return this.dictionaryRead
    const raw = await this.block(seq, opts)
    if (raw === null) return null
    const d = this.decode(seq, raw, peekEntry).kind === 'dictionary' ? this.decode(seq, raw, decodeBlock) : null
    if (d === null || d.type !== 'dictionary') {
      throw MeshError.BAD_ENTRY(
        `block ${index} names block ${seq} as its dictionary, which is not a dictionary block`,
        {
          context: { block: index }
        }
      )
    }
    this.dictionaryRead = { seq, bytes: d.dictionary.bytes }
    return this.dictionaryRead
  }

  /** One block's kind, unit continuation and time, without decoding its rows (see peekEntry); null if absent. */
  peek(index: number): Promise<ReturnType<typeof peekEntry> | null> {
    return this.read(index, { wait: false }, peekEntry)
  }

  private async read<T>(
    index: number,
    opts: { wait?: boolean; timeout?: number },
    decode: (block: Uint8Array) => T
  ): Promise<T | null> {
    const block = await this.block(index, opts)
    if (block === null) return null
    return this.decode(index, block, decode)
  }

  private decode<T>(index: number, block: Uint8Array, decode: (block: Uint8Array) => T): T {
    try {
      return decode(block)
    } catch (err) {
      const e = err as MeshError
      e.context.block = index
      throw e
    }
  }

  private async block(index: number, opts: { wait?: boolean; timeout?: number }): Promise<Buffer | null> {
    try {
      return await this.core.get(index, { wait: opts.wait ?? true, timeout: opts.timeout ?? 0 })
    } catch (err) {
      // The store's own checksums (RocksDB) caught damage on disk: the block is as bad as one that fails ours.
      if (/corrupt|checksum|crc mismatch/i.test((err as Error).message)) {
        throw MeshError.BAD_ENTRY(`block ${index} of the log is damaged on disk: ${(err as Error).message}`, {
          context: { block: index },
          cause: err
        })
      }
      throw MeshError.wrap(err, MeshError.IO_ERROR, `cannot read block ${index} of the log`)
    }
  }

  async header(opts: { wait?: boolean } = {}): Promise<HeaderEntry | null> {
    if (this.core.length === 0 && opts.wait === false) return null
    const e = await this.entry(0, opts)
    if (e === null) return null
    if (e.kind !== 'header') throw MeshError.BAD_LOG('block 0 of the log is not a header')
    this.headerRead = e
    return e
  }

  /**
   * The unit that starts at `start`, or null if its blocks are not all here yet (with wait false) or the
   * log ends inside it.
   */
  async unit(start: number, opts: { wait?: boolean } = {}): Promise<Unit | null> {
    const asm = new UnitAssembler()
    for (let i = start; ; ) {
      if (i >= this.core.length && opts.wait === false) return null
      const it = await this.item(i, opts)
      if (it === null) return null
      i = it.next
      // Its writer stopped inside this unit and closed it (format 2): none of it counts.
      if (it.block.type === 'abandon') return { start, entries: [], end: i, abandoned: true }
      // A compression dictionary (format 3) is a unit of its own that holds no entry.
      if (it.block.type === 'dictionary') {
        if (it.first !== start) throw MeshError.BAD_LOG(`a dictionary block at ${it.first} inside the unit at ${start}`)
        return { start, entries: [], end: i, dictionary: true }
      }
      const done = asm.push(it.block.entry)
      if (done) return { start, entries: done, end: i }
    }
  }

  /**
   * Where the unit that starts at `start` ends, and its size in bytes, read block by block without keeping
   * any (for a unit too large to hold: the apply loop then reads it in parts); null if its blocks are not all
   * here, or the log ends inside it. `abandoned`: its writer closed it unfinished (an abandon block).
   */
  async extent(start: number): Promise<{ end: number; bytes: number; abandoned: boolean } | null> {
    const s = await this.scan(start)
    return s.end === null ? null : { end: s.end, bytes: s.bytes, abandoned: s.abandoned }
  }

  /**
   * extent() that says how far it got: `next`, the first block of the unit not here yet, and `bytes`, the size
   * of those before it; `end` null until the unit is all here. `from`, an earlier scan of the same unit, is
   * gone on from, so a unit that arrives block by block is not read again from its start each time.
   */
  async scan(start: number, from?: UnitScan): Promise<UnitScan> {
    if (from !== undefined && from.end !== null) return from
    let bytes = from?.bytes ?? 0
    for (let i = from?.next ?? start; i < this.core.length; i++) {
      const raw = await this.block(i, { wait: false })
      if (raw === null) return { next: i, bytes, end: null, abandoned: false }
      // A compressed block takes its inflated size in memory once read: that is what a budget weighs.
      bytes += Math.max(raw.byteLength, peekInflated(raw) ?? 0)
      const p = this.decode(i, raw, peekEntry)
      if (p.more) continue
      const abandoned =
        p.time === null && p.kind === 'transaction' && this.decode(i, raw, decodeBlock).type === 'abandon'
      return { next: i + 1, bytes, end: i + 1, abandoned }
    }
    return { next: this.core.length, bytes, end: null, abandoned: false }
  }

  /**
   * The entry at block `index` (fragments joined) when all its blocks are here, with the block after it and
   * its encoded size; `entry` null for an abandon block (its writer closed the unit unfinished) or a
   * dictionary; null when a block of it has not arrived yet.
   */
  async arrived(index: number): Promise<{ entry: Entry | null; next: number; bytes: number } | null> {
    if (index >= this.core.length) return null
    const it = await this.item(index, { wait: false })
    if (it === null) return null
    // A compression dictionary (format 3) is a unit of its own, never inside one: as an abandon block, the
    // caller gives the unit up here, and the path that waits for whole units reads it.
    return { entry: it.block.type === 'entry' ? it.block.entry : null, next: it.next, bytes: it.bytes }
  }

  /** The entries of blocks [start, end), one at a time (fragments joined), with their encoded size. */
  async *entries(start: number, end: number): AsyncGenerator<{ entry: Entry; bytes: number }> {
    for (let i = start; i < end; ) {
      const it = await this.item(i, { wait: false })
      if (it === null) throw MeshError.BAD_LOG(`block ${i} of the log went missing while it was read`)
      if (it.block.type === 'abandon') throw MeshError.BAD_LOG(`an abandon block at ${i} inside a unit read in parts`)
      // A compression dictionary (format 3) holds no entry.
      if (it.block.type === 'entry') yield { entry: it.block.entry, bytes: it.bytes }
      i = it.next
    }
  }

  /**
   * If the log ends inside a unit (its writer appended part of a unit too large to hold, then crashed or
   * failed), closes that unit with an abandon block, so every reader discards it, and returns where it began;
   * null when the log ends on a unit boundary. The unit's changes were never acknowledged at the source, so
   * the capture reads them again.
   */
  async closeDangling(): Promise<number | null> {
    if (this.core.length <= 1) return null
    const tail = await this.peek(this.core.length - 1)
    if (tail === null || !tail.more) return null
    let start = this.core.length - 1
    while (start > 1 && (await this.peek(start - 1))?.more) start--
    try {
      await this.core.append([encodeAbandon({ start })])
      await syncStore(this.storeDir)
    } catch (err) {
      throw ioError(err, 'cannot append to the log')
    }
    return start
  }

  /**
   * What the capture side needs after a restart, read from the tail: the source position of the last
   * transaction unit, and whether the initial snapshot is complete. Walks back over whole units only.
   */
  async captureState(): Promise<{ source: Uint8Array | null; snapshotDone: boolean }> {
    for (let i = this.core.length - 1; i >= 1; i--) {
      const it = await this.item(i, { wait: false })
      if (it === null) break
      // An abandoned unit holds nothing: look before it.
      if (it.block.type === 'abandon') {
        i = Math.min(i, it.block.abandon.start)
        continue
      }
      i = it.first
      if (it.block.type === 'dictionary') continue
      const e = it.block.entry
      if (e.kind === 'transaction' && !e.more) return { source: e.source, snapshotDone: true }
      if (e.kind === 'snapshot') return { source: null, snapshotDone: e.last }
      if (e.kind === 'checkpoint' || e.kind === 'fence') continue
      // A schema or header on its own: the snapshot that follows it never finished.
      return { source: null, snapshotDone: false }
    }
    return { source: null, snapshotDone: false }
  }

  /**
   * The table names of the newest schema entry in the log (a schema entry may span blocks), or null when the
   * log holds none. Reads backwards with peek() until it finds one: meant for rare checks (a replaced source),
   * not for every batch.
   */
  async lastSchemaTables(): Promise<string[] | null> {
    for (let i = this.core.length - 1; i >= 1; i--) {
      const p = await this.peek(i)
      if (p === null) return null
      if (p.kind !== 'schema') continue
      const names: string[] = []
      for (let j = i; j >= 1; j--) {
        const e = await this.entry(j, { wait: false })
        if (e === null || e.kind !== 'schema' || (j < i && !e.more)) break
        names.push(...e.tables.map((t) => t.name))
      }
      return names
    }
    return null
  }

  async treeHash(length: number): Promise<Uint8Array> {
    return this.core.treeHash(length)
  }

  async close(): Promise<void> {
    await this.core.close()
  }
}
