/**
 * The capture loop of a dataset this site is the origin of: source database -> log.
 *
 * Order of every step: read a batch, append it to the log as one unit, flush the log to disk, and only then
 * acknowledge the batch at the source. A crash before the acknowledge leaves the batch at the source; the
 * restart finds its position at the log's tail and acknowledges it (CaptureSide.resume), so nothing is lost
 * and nothing is captured twice.
 */
import { EventEmitter } from 'node:events'
import {
  MeshError,
  packSnapshot,
  packTransaction,
  type Entry,
  type HeaderEntry,
  type SchemaEntry,
  type TableChanges,
  type TransactionEntry
} from '../protocol/index.ts'
import type { CaptureBatch, CaptureSide, CaptureStream, Logger } from '../adapters/index.ts'
import { silentLogger } from '../adapters/index.ts'
import { DEFAULT_UNIT_MEMORY, type DatasetLog } from './log.ts'

export interface CaptureLoopOptions {
  capture: CaptureSide
  log: DatasetLog
  /** Written as block 0 when the log is empty. */
  header: Omit<HeaderEntry, 'kind'>
  logger?: Logger
  /** Longest wait between two looks at the source when it is idle. */
  pollMs?: number
  /** Target size of a block. */
  blockBytes?: number
  /** Append a checkpoint (a digest of the source's whole state) at most this often, when idle (default 10 min). */
  checkpointMs?: number
  /** Rows per snapshot chunk. */
  snapshotRows?: number
  /**
   * Memory a unit may take while it is captured and appended (bytes; default DEFAULT_UNIT_MEMORY, 64 MB). A
   * larger batch is read and appended in parts of 1/64 of it (where the capture side can read in parts): all
   * but the unit's last block flagged
   * MORE, as for any unit, and acknowledged once its last block is flushed.
   */
  unitMemoryBytes?: number
  /**
   * Opens the log again after it failed with DISK_FULL or IO_ERROR. RocksDB (under hypercore) refuses every
   * write after a failed write-ahead-log append until it is reopened, so without this a full disk that is
   * cleared later would still stop capture.
   */
  reopenLog?: () => Promise<DatasetLog>
  /**
   * Batching for a metered or slow link (config `link.batchSeconds`; 0 or absent: none). Changes committed at
   * the source wait there (the SQLite change table, the PostgreSQL slot) until this loop has seen them waiting
   * this long, then everything committed by then is read and appended as ONE unit (one position in `mesh log`, one
   * database transaction at every replica, one compressed body). A group is closed early when the source holds
   * about `unitMemoryBytes / 16` of it. Nothing is read before, so nothing waits in memory and nothing is
   * acknowledged before the append: a node killed while a group waits loses nothing. stop() appends it first.
   */
  batchMs?: number
}

export interface CaptureStats {
  units: number
  rows: number
  lastUnitAt: number | null
  lastError: MeshError | null
  snapshotRows: number
  /** Whole copies made again because the source lost its position. */
  resnapshots: number
}

export class CaptureLoop extends EventEmitter {
  readonly stats: CaptureStats = {
    units: 0,
    rows: 0,
    lastUnitAt: null,
    lastError: null,
    snapshotRows: 0,
    resnapshots: 0
  }
  private readonly opts: CaptureLoopOptions
  private readonly logger: Logger
  private running = false
  /** With batching: when the group now waiting at the source was first seen (ms), null when none. */
  private groupSince: number | null = null
  /** Ends a wait for a group (stop, flush). */
  private wakeGroup: (() => void) | null = null
  private loop: Promise<void> | null = null
  private queue: Promise<unknown> = Promise.resolve()

  constructor(opts: CaptureLoopOptions) {
    super()
    this.opts = opts
    this.logger = opts.logger ?? silentLogger
  }

  /** Prepares the source and the log (header, initial snapshot), then captures in the background. */
  async start(): Promise<void> {
    await this.prepare()
    this.running = true
    this.loop = this.run()
  }

  /** Everything start() does before the loop: exposed so tools can capture once without a loop. */
  async prepare(): Promise<void> {
    const { capture, log } = this.opts
    this.compressBest(log)
    // A unit the log ends inside (a crash while it was appended in parts) is closed first.
    await this.closeDangling()
    // The capture side compares its database with the log's last position before it writes to it.
    await capture.open({ source: log.length > 0 ? (await log.captureState()).source : null })
    let continues = this.opts.header.parent !== null
    if (log.length === 0) {
      await log.appendUnit([{ kind: 'header', ...this.opts.header }])
    } else {
      const h = await log.header()
      if (h && h.dataset !== this.opts.header.dataset) {
        throw MeshError.LOG_MISMATCH(`the log belongs to dataset ${h.dataset}, not ${this.opts.header.dataset}`)
      }
      continues = h?.parent != null
    }
    const state = await log.captureState()
    // A later epoch's log continues from its parent's state, which the promoted database already holds: it
    // starts with no snapshot, whatever the size of the database.
    if (!state.snapshotDone && !continues) await this.snapshot()
    try {
      await capture.resume(state.source)
    } catch (err) {
      if ((err as MeshError).code !== 'SOURCE_RESET') throw err
      await this.resnapshot(err as MeshError)
    }
    // A log that ends in a checkpoint has one of this state already: none again until it grows.
    if (log.length > 0 && (await log.peek(log.length - 1))?.kind === 'checkpoint')
      this.lastCheckpoint.length = log.length
  }

  /**
   * The source lost its position (a dropped PostgreSQL slot, a SQLite file replaced) or `mesh resync` asked:
   * copy the whole database into the log again. A replacement that names its tables (err.context.tables) is
   * refused when none of them is in the log's newest schema: another application's database is never sent.
   * Until the copy is whole in the log, every step starts it again (a copy cut short by a full disk is not a
   * copy). Returns where it starts in this log, and the rows copied.
   */
  private async resnapshot(err: MeshError): Promise<{ length: number; rows: number }> {
    const tables = err.context.tables
    if (Array.isArray(tables)) await this.checkSameDatabase(tables as string[], err)
    this.resnapshotDue = err
    const length = this.opts.log.length
    this.stats.resnapshots++
    this.logger.warn('copying the whole database into the log again', {
      code: err.code,
      reason: err.message,
      at: length
    })
    const rows = await this.snapshot()
    this.resnapshotDue = null
    this.emit('resnapshot', { error: err, length, rows, resync: err.context.resync === true })
    return { length, rows }
  }

  private resnapshotDue: MeshError | null = null
  private carried: { length: number; names: string[] | null } | null = null

  private async checkSameDatabase(tables: string[], err: MeshError): Promise<void> {
    const { log } = this.opts
    if (this.carried?.length !== log.length) this.carried = { length: log.length, names: await log.lastSchemaTables() }
    const carried = this.carried.names
    if (carried === null || carried.length === 0) return
    const path = typeof err.context.path === 'string' ? err.context.path : 'the source'
    if (tables.length === 0) {
      // A file that was just made holds no table yet: the application is likely creating them now.
      throw MeshError.WRONG_DATABASE(
        `${path} was replaced by a database that holds no table yet; nothing is captured or sent until it does`,
        { context: { path } }
      )
    }
    if (tables.some((t) => carried.includes(t))) return
    const list = (l: string[]) => (l.length > 8 ? `${l.slice(0, 8).join(', ')}, ...` : l.join(', '))
    throw MeshError.WRONG_DATABASE(
      `${path} was replaced by a database that shares no table with what the log carries ` +
        `(it has ${list(tables)}; the log has ${list(carried)}): it looks like another application's database. ` +
        "Nothing is captured or sent; put the dataset's database back at that path",
      { context: { path, tables, carried } }
    )
  }

  /**
   * `mesh resync`: a fresh copy of the whole database appended to the log, in the same queue as the steps,
   * for a log that is itself wrong (a checkpoint differs while the copies equal the log).
   */
  resync(): Promise<{ length: number; rows: number }> {
    if (!this.running) {
      return Promise.reject(MeshError.NOT_RUNNING('capture is not running', { hint: 'mesh status says why.' }))
    }
    const asked = MeshError.SOURCE_RESET('mesh resync asked for a fresh copy', { context: { resync: true } })
    const next = this.queue.then(() => this.resnapshot(asked))
    this.queue = next.catch(() => {})
    return next
  }

  private async snapshot(): Promise<number> {
    const { capture, log } = this.opts
    const started = Date.now()
    await log.appendUnit([await capture.schema()])
    let first = true
    let rows = 0
    for await (const chunk of capture.snapshot({ chunkRows: this.opts.snapshotRows })) {
      await log.appendUnit(packSnapshot(chunk.changes, { first, last: false }, this.opts.blockBytes))
      first = false
      rows += chunk.rows
      this.stats.snapshotRows = rows
      this.emit('snapshot-progress', { rows })
    }
    await log.appendUnit(packSnapshot([], { first, last: true }, this.opts.blockBytes))
    this.logger.info('initial snapshot written to the log', { rows, ms: Date.now() - started })
    return rows
  }

  /**
   * Captures what is committed now. Returns the number of rows captured (0: nothing new). Calls are
   * serialized with the loop's own, so a caller may use it to catch up at once.
   */
  step(): Promise<number> {
    const next = this.queue.then(() => this.stepNow())
    this.queue = next.catch(() => {})
    return next
  }

  /** With batching a unit is appended at most about once a batch: its body is worth brotli's best quality. */
  private compressBest(log: DatasetLog): void {
    if ((this.opts.batchMs ?? 0) > 0 && log.compress === true) log.compress = 'best'
  }

  /** Closes a unit the log ends inside (a crash or a failed append while it was appended in parts). */
  private async closeDangling(): Promise<void> {
    const start = await this.opts.log.closeDangling()
    if (start !== null) {
      this.logger.warn('closed a unit that was left unfinished in the log; its changes are captured again', { start })
    }
  }

  private async stepNow(): Promise<number> {
    const { capture, log } = this.opts
    if (this.resnapshotDue) {
      await this.resnapshot(this.resnapshotDue)
      return 1
    }
    if (capture.readStream) return this.stepInParts()
    let batch: CaptureBatch | null
    try {
      batch = await capture.read()
    } catch (err) {
      if ((err as MeshError).code !== 'SOURCE_RESET') throw err
      await this.resnapshot(err as MeshError)
      return 1
    }
    if (batch === null) return 0
    const length = await log.appendUnit(packTransaction(batch, this.opts.blockBytes))
    await capture.ack(batch.source)
    this.stats.units++
    this.stats.rows += batch.rows
    this.stats.lastUnitAt = batch.time
    this.emit('unit', { length, rows: batch.rows, time: batch.time })
    return batch.rows
  }

  /**
   * A step for a capture side that reads in parts (issue 14): each part but the last is appended as soon as the
   * next one is read (so a unit never ends on it), the last with the source position; then ack. A failure
   * between leaves the log inside the unit: the next step (or start) closes it with an abandon block, and the
   * batch, never acknowledged, is read again whole.
   */
  private async stepInParts(): Promise<number> {
    const { capture, log } = this.opts
    if (this.dangling) {
      await this.closeDangling()
      this.dangling = false
    }
    // A part is 1/64 of the budget: the part being read, the part held, the part being appended, their encoding
    // and the log's copy are in memory at once, and V8 collects the garbage of the ones before lazily
    // (bench/big.ts measured the peak RSS: parts of 1/16 gave 330 MB for 2M rows, 1/64 255 MB, and went faster).
    const partBytes = Math.max(64 * 1024, Math.floor((this.opts.unitMemoryBytes ?? DEFAULT_UNIT_MEMORY) / 64))
    let s: CaptureStream | null
    try {
      s = await capture.readStream!(partBytes)
    } catch (err) {
      if ((err as MeshError).code !== 'SOURCE_RESET') throw err
      await this.resnapshot(err as MeshError)
      return 1
    }
    if (s === null) return 0
    // The schema entries that go before the held part: the batch's own, then one a later piece carries.
    let schemas: SchemaEntry[] = s.schema ? [s.schema] : []
    let held: TableChanges[] | null = null
    const pack = (changes: TableChanges[], source: Uint8Array | null): Entry[] => [
      ...schemas.map((e) => ({ ...e, more: true })),
      ...packTransaction({ schema: null, changes, time: s.time, source }, this.opts.blockBytes)
    ]
    // A part's append (its blocks written and the log flushed) is in flight while the next piece is read; the
    // next append starts only after it succeeded, so parts reach the log in order, and a failure ends the step
    // as before (the unit is left dangling and the batch is read again whole).
    let appending: Promise<number> | null = null
    let read = false
    try {
      for await (const piece of s.pieces) {
        if (held !== null) {
          const entries = pack(held, null)
          ;(entries[entries.length - 1] as TransactionEntry).more = true
          this.dangling = true
          if (appending) await appending
          appending = log.appendUnit(entries)
          // Handled here too: a failure while the next piece is read is no unhandled rejection (awaited later).
          appending.catch(() => {})
          schemas = []
        }
        if (piece.schema) schemas.push(piece.schema)
        held = piece.changes
      }
      read = true
    } finally {
      // Awaited whatever happened, so nothing is left running when the step ends; a failed read keeps its error.
      if (appending) await (read ? appending : appending.catch(() => 0))
    }
    const { source, rows } = s.end()
    const length = await log.appendUnit(pack(held ?? [], source))
    this.dangling = false
    await capture.ack(source)
    this.stats.units++
    this.stats.rows += rows
    this.stats.lastUnitAt = s.time
    this.emit('unit', { length, rows, time: s.time })
    return rows
  }

  /** Set while the log ends inside a unit this loop is appending in parts. */
  private dangling = false

  private lastCheckpoint = { at: 0, length: -1 }
  private checkpointRetry = { at: 0, wait: 0 }
  /** Callers of checkpointNow() waiting for the next checkpoint. */
  private asked: Array<{ resolve: (c: { length: number; rows: number }) => void; reject: (e: Error) => void }> = []

  /**
   * A checkpoint: when the log has grown since the last one and the interval has passed, or when one was asked
   * for, the source's digest at exactly the log's state goes into the log, for every replica to compare with
   * its own. Taken only while the source is idle (the capture side returns null otherwise: tried again later).
   */
  private async maybeCheckpoint(): Promise<void> {
    const { capture, log } = this.opts
    const every = this.opts.checkpointMs ?? 600_000
    if (!capture.checkpoint || Date.now() < this.checkpointRetry.at) return
    if (
      this.asked.length === 0 &&
      (Date.now() - this.lastCheckpoint.at < every || log.length === this.lastCheckpoint.length)
    )
      return
    const d = await capture.checkpoint()
    if (d === null) {
      // Not quiet enough (a digest read while something committed is thrown away): wait longer each time.
      this.checkpointRetry.wait = Math.min(every, this.checkpointRetry.wait * 2 || 1000)
      this.checkpointRetry.at = Date.now() + this.checkpointRetry.wait
      return
    }
    this.checkpointRetry = { at: 0, wait: 0 }
    const length = log.length
    await log.appendUnit([{ kind: 'checkpoint', length, digest: d.digest, rows: d.rows }])
    this.lastCheckpoint = { at: Date.now(), length: log.length }
    this.emit('checkpoint', { length, rows: d.rows })
    for (const a of this.asked.splice(0)) a.resolve({ length, rows: d.rows })
  }

  /**
   * Asks for a checkpoint now (`mesh checkpoint`): resolves with the log position it describes (the checkpoint
   * is the block at that position) once it is in the log, which is as soon as the source is idle.
   */
  checkpointNow(timeoutMs: number): Promise<{ length: number; rows: number }> {
    if (!this.opts.capture.checkpoint) return Promise.reject(MeshError.USAGE('this capture cannot take checkpoints'))
    if (!this.running)
      return Promise.reject(MeshError.NOT_RUNNING('capture is not running', { hint: 'mesh status says why.' }))
    this.checkpointRetry = { at: 0, wait: 0 }
    return new Promise((resolve, reject) => {
      const waiter = {
        resolve: (c: { length: number; rows: number }) => {
          clearTimeout(timer)
          resolve(c)
        },
        reject: (e: Error) => {
          clearTimeout(timer)
          reject(e)
        }
      }
      const timer = setTimeout(() => {
        this.asked = this.asked.filter((w) => w !== waiter)
        reject(
          MeshError.REPLICA_BEHIND(
            `the database did not go quiet within ${Math.round(timeoutMs / 1000)} s, ` +
              'and a checkpoint is taken only then',
            {
              hint: 'Run the command again at a quieter moment; the periodic checkpoint is taken when it is idle.'
            }
          )
        )
      }, timeoutMs)
      this.asked.push(waiter)
    })
  }

  private async run(): Promise<void> {
    const pollMs = this.opts.pollMs ?? 50
    let backoff = 100
    while (this.running) {
      try {
        if ((this.opts.batchMs ?? 0) > 0) {
          const due = await this.groupDue()
          if (!this.running) break
          if (due === 'idle') {
            await this.maybeCheckpoint()
            if (this.running) await this.opts.capture.wait(pollMs)
            continue
          }
          if (typeof due === 'number') {
            await this.sleepGroup(due)
            continue
          }
        }
        const rows = await this.step()
        if (this.stats.lastError) {
          this.logger.info('capture recovered', { code: this.stats.lastError.code })
          this.stats.lastError = null
        }
        backoff = 100
        if (rows === 0 && this.running) await this.maybeCheckpoint()
        if (rows === 0 && this.running) await this.opts.capture.wait(pollMs)
      } catch (err) {
        const e = MeshError.wrap(err, MeshError.IO_ERROR)
        this.stats.lastError = e
        this.emit('capture-error', e)
        if (!e.retryable) {
          this.logger.error('capture stopped', { code: e.code, error: e.message, hint: e.hint })
          this.running = false
          for (const a of this.asked.splice(0)) a.reject(e)
          return
        }
        this.logger.warn('capture failed, retrying', { code: e.code, error: e.message, retryInMs: backoff })
        await new Promise((resolve) => setTimeout(resolve, backoff))
        if ((e.code === 'DISK_FULL' || e.code === 'IO_ERROR') && this.opts.reopenLog && this.running) {
          try {
            this.opts.log = await this.opts.reopenLog()
            this.compressBest(this.opts.log)
          } catch (err) {
            this.logger.warn('cannot reopen the log yet', { error: (err as Error).message })
          }
        }
        backoff = Math.min(backoff * 2, 10_000)
      }
    }
  }

  /**
   * With batching: whether the group waiting at the source is due. 'idle': nothing waits; 'now': read and
   * append it; a number: look again after that many ms. Asked through the capture side's lag() (how old the
   * oldest change the log lacks is, and its size), in the steps' queue; a side that cannot tell is read now.
   */
  private async groupDue(): Promise<'idle' | 'now' | number> {
    const { capture } = this.opts
    if (!capture.lag || this.resnapshotDue) return 'now'
    const next = this.queue.then(() => capture.lag!())
    this.queue = next.catch(() => {})
    const lag = await next
    if (lag === null) return 'now'
    if (lag.bytes === 0 && lag.seconds === 0) {
      this.groupSince = null
      return 'idle'
    }
    // The group's age counts from when this loop first saw it waiting: lag().seconds counts from when the
    // source last had nothing waiting, which under a steady trickle is long before the group began.
    const now = Date.now()
    this.groupSince ??= now
    const batchMs = this.opts.batchMs ?? 0
    const closeBytes = (this.opts.unitMemoryBytes ?? DEFAULT_UNIT_MEMORY) / 16
    const left = batchMs - (now - this.groupSince)
    if (left <= 0 || lag.bytes >= closeBytes) {
      this.groupSince = null
      return 'now'
    }
    // Looked at again at least every half second, so that a group growing fast is closed early.
    return Math.min(left, 500)
  }

  private sleepGroup(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms)
      function done() {
        clearTimeout(timer)
        resolve()
      }
      this.wakeGroup = () => {
        this.wakeGroup = null
        done()
      }
    })
  }

  get active(): boolean {
    return this.running
  }

  /**
   * Stops after the current step; the source keeps whatever was not acknowledged. With batching, the group
   * waiting at the source is appended first (`mesh stop`, SIGTERM): a failure to do so leaves it at the source,
   * captured at the next start.
   */
  async stop(): Promise<void> {
    const flush = this.running && (this.opts.batchMs ?? 0) > 0
    this.running = false
    this.wakeGroup?.()
    await this.loop
    this.loop = null
    if (flush) {
      try {
        // A capture side may hand a backlog out in several batches (PostgreSQL: maxChanges each).
        for (let i = 0; i < 1000 && (await this.step()) > 0; i++);
      } catch (err) {
        this.logger.warn('the waiting group stays at the source until the next start', {
          error: (err as Error).message
        })
      }
    }
    for (const a of this.asked.splice(0))
      a.reject(MeshError.NOT_RUNNING('capture stopped before the checkpoint was taken'))
  }
}
