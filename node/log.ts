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
import { MeshError, decodeEntry, encodeEntry, peekEntry, type Entry, type HeaderEntry, UnitAssembler } from '../protocol/index.ts'
import type { Unit } from '../adapters/index.ts'

export function logName(dataset: string, epoch: number): string {
  return `dataset/${dataset}/epoch/${epoch}`
}

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

  private constructor(storeDir: string, core: Hypercore) {
    this.storeDir = storeDir
    this.core = core
  }

  private static async open(store: Corestore, storeDir: string, which: { name: string } | { key: Uint8Array }): Promise<DatasetLog> {
    const core = store.get(which)
    try {
      await core.ready()
    } catch (err) {
      throw ioError(err, 'cannot open the log')
    }
    return new DatasetLog(storeDir, core)
  }

  /** A writable log under the conventional name of (dataset, epoch): epoch 0 of a dataset this site created. */
  static writable(store: Corestore, storeDir: string, dataset: string, epoch: number): Promise<DatasetLog> {
    return DatasetLog.open(store, storeDir, { name: logName(dataset, epoch) })
  }

  /** A log this site writes, by the corestore name it was created under. */
  static named(store: Corestore, storeDir: string, name: string): Promise<DatasetLog> {
    return DatasetLog.open(store, storeDir, { name })
  }

  /** Another site's log, by key. */
  static byKey(store: Corestore, storeDir: string, key: Uint8Array): Promise<DatasetLog> {
    return DatasetLog.open(store, storeDir, { key })
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
    const blocks = entries.map(encodeEntry)
    try {
      const { length } = await this.core.append(blocks)
      await syncStore(this.storeDir)
      return length
    } catch (err) {
      throw ioError(err, 'cannot append to the log')
    }
  }

  /** Reads and decodes one block; waits for it to arrive unless `wait` is false (then null if absent). */
  entry(index: number, opts: { wait?: boolean; timeout?: number } = {}): Promise<Entry | null> {
    return this.read(index, opts, decodeEntry)
  }

  /** One block's kind, unit continuation and time, without decoding its rows (see peekEntry); null if absent. */
  peek(index: number): Promise<ReturnType<typeof peekEntry> | null> {
    return this.read(index, { wait: false }, peekEntry)
  }

  private async read<T>(index: number, opts: { wait?: boolean; timeout?: number }, decode: (block: Uint8Array) => T): Promise<T | null> {
    const block = await this.block(index, opts)
    if (block === null) return null
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
        throw MeshError.BAD_ENTRY(`block ${index} of the log is damaged on disk: ${(err as Error).message}`, { context: { block: index }, cause: err })
      }
      throw MeshError.wrap(err, MeshError.IO_ERROR, `cannot read block ${index} of the log`)
    }
  }

  async header(opts: { wait?: boolean } = {}): Promise<HeaderEntry | null> {
    if (this.core.length === 0 && opts.wait === false) return null
    const e = await this.entry(0, opts)
    if (e === null) return null
    if (e.kind !== 'header') throw MeshError.BAD_LOG('block 0 of the log is not a header')
    return e
  }

  /**
   * The unit that starts at `start`, or null if its blocks are not all here yet (with wait false) or the
   * log ends inside it.
   */
  async unit(start: number, opts: { wait?: boolean } = {}): Promise<Unit | null> {
    const asm = new UnitAssembler()
    for (let i = start; ; i++) {
      if (i >= this.core.length && opts.wait === false) return null
      const e = await this.entry(i, opts)
      if (e === null) return null
      const done = asm.push(e)
      if (done) return { start, entries: done }
    }
  }

  /**
   * What the capture side needs after a restart, read from the tail: the source position of the last
   * transaction unit, and whether the initial snapshot is complete. Walks back over whole units only.
   */
  async captureState(): Promise<{ source: Uint8Array | null; snapshotDone: boolean }> {
    for (let i = this.core.length - 1; i >= 1; i--) {
      const e = await this.entry(i, { wait: false })
      if (e === null) break
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
