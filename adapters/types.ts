/**
 * The two sides every engine adapter implements. The node drives them; an adapter never touches the log, the
 * network or the configuration, and never prints: it takes typed options and a logger.
 */
import type { Engine, Entry, SchemaEntry, TableChanges } from '../protocol/index.ts'

export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void
  info(msg: string, fields?: Record<string, unknown>): void
  warn(msg: string, fields?: Record<string, unknown>): void
  error(msg: string, fields?: Record<string, unknown>): void
}

export const silentLogger: Logger = {
  debug() {},
  info() {},
  warn() {},
  error() {}
}

/** One step of captured changes: everything committed between the previous read and this one. */
export interface CaptureBatch {
  /** Present when the schema changed since the last batch (or this is the first batch after open). */
  schema: SchemaEntry | null
  changes: TableChanges[]
  /** Origin wall-clock time of the state read, ms since the epoch. */
  time: number
  /** Rows (upserts + deletes) in `changes`, for progress and metrics. */
  rows: number
  /** Opaque capture position this batch reaches; pass it to ack() once the log holds the batch durably. */
  source: Uint8Array
}

/**
 * A batch read in pieces, for a transaction too large to hold whole (issue 14): the pieces come from one read
 * of the source (SQLite: one read transaction held open until the last piece), so together they are one
 * state the source had, exactly as one CaptureBatch would be.
 */
export interface CaptureStream {
  schema: CaptureBatch['schema']
  time: number
  /**
   * The changes in pieces of about the budget each. Ending the iteration early ends the read (nothing is acked).
   * A piece after the first may carry `schema`: the tables changed shape (or were truncated: its `reset`) inside
   * the batch, and the entry goes into the unit just before that piece's changes, which have the new shape.
   */
  pieces: AsyncIterable<{ changes: TableChanges[]; rows: number; schema?: SchemaEntry }>
  /** Once `pieces` has ended: the position the whole batch reaches (pass it to ack()) and its rows. */
  end(): { source: Uint8Array; rows: number }
}

/** A batch read whole, as a stream of one piece (a side's readStream for a batch too small to read in pieces). */
export function wholeStream(batch: CaptureBatch | null): CaptureStream | null {
  if (batch === null) return null
  return {
    schema: batch.schema,
    time: batch.time,
    pieces: (async function* () {
      yield { changes: batch.changes, rows: batch.rows }
    })(),
    end: () => ({ source: batch.source, rows: batch.rows })
  }
}

/** A piece of the initial snapshot of the existing data. */
export interface SnapshotChunk {
  changes: TableChanges[]
  rows: number
}

/**
 * The capture side: reads the committed changes of a source database, in commit order, as a stream of
 * batches, each a state the source database really had.
 *
 * Contract:
 * - read() never changes what it would return until ack(): reading twice without ack() returns a batch
 *   covering at least the same changes (reads are idempotent; nothing is forgotten before ack).
 * - ack(source) may forget every change up to `source`. The node calls it only after the log append that
 *   holds the batch is flushed to disk. Acknowledging the same or an older source again is a no-op.
 * - resume(source) is called once after open() with the source of the last batch the log holds (null when
 *   the log holds none); it acknowledges it, so that a crash between append and ack duplicates nothing.
 * - Failures are MeshError: DATABASE_LOCKED and DISK_FULL are retryable; NOT_SQLITE, NOT_FOUND,
 *   CANNOT_CAPTURE and CORRUPT_CHANGE say what to do in their hint.
 */
export interface CaptureSide {
  readonly engine: Engine
  /**
   * Installs whatever capture needs (triggers, slot) and checks the source. Idempotent. `source` is the
   * position the log last holds (null: none), for an engine that checks the database is still the one captured
   * before it writes to it; such an engine then reports another one from resume() as SOURCE_RESET, whose
   * context may name the database's `tables` for the capture loop to compare with the log's.
   */
  open(opts?: { source?: Uint8Array | null }): Promise<void>
  resume(source: Uint8Array | null): Promise<void>
  /** The full current schema (tables and other objects). */
  schema(): Promise<SchemaEntry>
  /**
   * The existing data, in chunks. The changes made while it runs are captured too and arrive in later
   * batches, so the snapshot need not be one consistent read: the replica is consistent again after the first
   * batch that follows the snapshot.
   */
  snapshot(opts?: { chunkRows?: number }): AsyncIterable<SnapshotChunk>
  /** The changes committed since the last acknowledged position, or null when there are none. */
  read(): Promise<CaptureBatch | null>
  /**
   * The same as read(), in pieces of about `budgetBytes` of row data each, so that a transaction of millions
   * of rows never sits in memory whole. Where an engine lacks it, the node uses read(). Idempotent as read():
   * an iteration that is not finished, or a batch not acknowledged, is read again whole.
   */
  readStream?(budgetBytes: number): Promise<CaptureStream | null>
  ack(source: Uint8Array): Promise<void>
  /** Resolves when new changes may have been committed, or after `ms`. */
  wait(ms: number): Promise<void>
  /** Tables that exist but are not captured, with the reason for each. */
  skipped(): Array<{ table: string; reason: string }>
  /**
   * A digest of the captured tables as they are now, when that is exactly the state the log holds (nothing
   * captured is unacknowledged, nothing committed is uncaptured); null otherwise. For checkpoints.
   */
  checkpoint?(): Promise<{ digest: Uint8Array; rows: number } | null>
  /** The tables this capture carries (quoted, qualified names), where the engine can list them. */
  carried?(): string[]
  /**
   * Refuses (hold true) or allows again (false) writes by every other program to the captured tables, for a
   * planned handover (`mesh handover`): nothing can be committed past the length the origin seals its log at.
   * This side's own connection still writes its bookkeeping. Absent: the engine cannot stop writes, and a
   * handover is refused.
   */
  holdWrites?(hold: boolean): void
  /**
   * What the source has committed that the log does not hold yet: `bytes` of the source's own change record
   * (PostgreSQL: WAL) and `seconds` since the oldest such change committed; zeros when the log holds
   * everything; null when it cannot tell now (an initial copy running, the source unreachable). May ask the
   * source database; never changes what read() returns. Absent: the engine cannot tell (status shows none).
   */
  lag?(): Promise<{ bytes: number; seconds: number } | null>
  close(): Promise<void>
}

/**
 * A unit that deleted or changed at least a given share of a table's rows (ransomware rewriting every row, a
 * mass delete by mistake): the apply side measures it against the replica as it was before the unit.
 */
export interface DamageAlert {
  table: string
  /** Rows of the table the unit deleted or changed, and the rows it had before. */
  changed: number
  before: number
}

/** When a unit counts as mass damage: `share` of a table's rows (0..1), in tables of at least `minRows`. */
export interface DamageGuard {
  share: number
  minRows: number
}

export const DEFAULT_GUARD: DamageGuard = { share: 0.5, minRows: 100 }

/** Where a replica stands in a log: enough to detect a gap or a fork, not just a counter. */
export interface AppliedPosition {
  /** The log's hypercore key. */
  log: Uint8Array
  epoch: number
  /** Log length applied (the index of the next block to apply). */
  length: number
  /** The log's merkle tree hash at `length`, when the caller knows it. */
  treeHash: Uint8Array | null
}

export type ReplicaState = 'empty' | 'seeding' | 'settling' | 'ready'

/**
 * One unit of the log: the entries of blocks [start, end). `end` is start + entries.length unless an entry
 * spans several blocks (fragments, format 2) or the unit was abandoned; use unitEnd().
 */
export interface Unit {
  start: number
  entries: Entry[]
  /** The block after the unit's last (default start + entries.length). */
  end?: number
  /**
   * Its writer stopped before finishing it and closed it with an abandon block (format 2): entries is empty,
   * and applying it changes nothing but the position.
   */
  abandoned?: boolean
  /**
   * A compression dictionary block (format 3): entries is empty, applying it changes nothing but the position;
   * later blocks of the log are compressed against it.
   */
  dictionary?: boolean
}

export function unitEnd(unit: Unit): number {
  return unit.end ?? unit.start + unit.entries.length
}

/**
 * The apply side: builds a replica database by applying the log's units in order.
 *
 * Contract:
 * - apply(unit, position) applies every entry of one unit and records `position` in one database
 *   transaction: after a crash the replica holds either all of the unit and the new position, or none of it.
 *   The commit need not be durable when it returns (PostgreSQL commits asynchronously): a crash of the
 *   database server may lose the last units together with their position, and the side then says so with a
 *   retryable REPLICA_REWOUND once it reconnects; the node applies them again from its log. flush() makes
 *   them durable where something must rely on them.
 * - A unit that ends at or before the recorded length is skipped (applying is idempotent by position); a
 *   unit that does not start at the recorded length (a gap) or comes from another log than the recorded one
 *   throws MeshError.LOG_MISMATCH.
 * - Entries the side cannot apply throw MeshError.BAD_LOG and leave the replica as it was.
 */
export interface ApplySide {
  readonly engine: Engine
  open(): Promise<void>
  position(): AppliedPosition | null
  state(): ReplicaState
  apply(unit: Unit, position: AppliedPosition): Promise<void>
  /**
   * A unit too large to hold in memory (issue 14), applied in pieces inside ONE database transaction: begin
   * (false: the replica holds it already, nothing begun), any number of parts in order, then commit with the
   * position, which writes the position and commits, or abort, which rolls all of it back. A crash or an
   * error before commit leaves the replica as it was before the unit: all-or-nothing as apply(). The mass-damage
   * guard does not measure such a unit (it would need all of it at once). Where an engine lacks these, the
   * node reads the unit whole and calls apply().
   */
  beginUnit?(unit: { start: number; end: number }, position: AppliedPosition): Promise<boolean>
  applyPart?(entries: Entry[], position: AppliedPosition): Promise<void>
  commitUnit?(position: AppliedPosition): Promise<void>
  abortUnit?(): Promise<void>
  /** Units of the last apply() that deleted or changed a large share of a table (see DamageAlert). */
  alerts(): DamageAlert[]
  /** The last origin checkpoint this replica compared itself with, or null. */
  checkpoint(): ReplicaCheckpoint | null
  /**
   * Makes everything applied so far durable and reads position() back from the database, where apply()
   * commits asynchronously (PostgreSQL): called before anything acts on position() beyond applying (a
   * promotion, verify). Absent where every commit is durable already (SQLite).
   */
  flush?(): Promise<void>
  /** Whether a program other than branchmesh wrote to the replica (where the engine can tell). */
  writtenByOthers?(): boolean
  /** The replica was just proven equal to the log (verify, repair): writes by others before now no longer count. */
  forgetWrites?(): void
  close(): Promise<void>
}

/** A replica's comparison with an origin checkpoint: the checkpoint's block, whether it matched, the row counts. */
export interface ReplicaCheckpoint {
  length: number
  ok: boolean
  rows: number
  originRows: number
  at: number
}

/** Where a replica parts from the log (`mesh verify`), per table. */
export interface TableDiff {
  table: string
  /** Rows the log has and the replica lacks, rows it has that the log does not, rows that differ. */
  missing: number
  extra: number
  changed: number
  /** Up to 20 keys of such rows, as text (none for a table without a key, in PostgreSQL). */
  keys: string[]
}
