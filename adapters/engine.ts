/**
 * The engine seam: everything the node does with one kind of database, behind one interface, so that the node
 * never asks which engine it holds (as kysely's query builder never asks which dialect it talks to). A
 * database's `where` is a file path (SQLite) or a connection URL (PostgreSQL); an engine never reads the
 * configuration or the environment, and never prints.
 *
 * What an engine cannot do, or need not do, is an optional method; each says what the node does without it.
 * Failures are MeshError with a hint; which code each step returns is said on the step.
 */
import type { TableDef, Value } from '../protocol/index.ts'
import type { ApplySide, CaptureSide, DamageGuard, Logger, TableDiff } from './types.ts'

/** How an origin's changes are read: logical decoding (PostgreSQL's default), or triggers. */
export type CaptureMode = 'logical' | 'triggers'

/**
 * What a database is to branchmesh: 'origin' (capture is installed), 'replica' (apply made it), 'plain'
 * (neither: not ours), 'none' (no such database).
 */
export type DatabaseRole = 'origin' | 'replica' | 'plain' | 'none'

export interface CaptureOptions {
  dataset: string
  /** The epoch the capture writes (PostgreSQL: slot names are per epoch). */
  epoch: number
  /** Engines with one way of capturing ignore it. */
  mode?: CaptureMode
  logger?: Logger
}

export interface ApplyOptions {
  dataset: string
  logger?: Logger
  guard?: DamageGuard
  /** Compare origin checkpoints (replicas); off for restores, snapshots and scratch copies. */
  checkpoints?: boolean
  /**
   * Refuse writes by other programs (default true, replicas): off for databases built from the log for a
   * moment (restores, snapshots, scratch copies), which no application uses and which need not pay for it.
   */
  refuseWrites?: boolean
}

/** Where this site keeps its warm copies. */
export interface ReplicaPlace {
  /** The folder of replica files (DIR/replicas). */
  dir: string
  /** A PostgreSQL server URL for replica databases (config replicaPostgres), or null. */
  server: string | null
}

/** A database made for one job and dropped after it. */
export interface Scratch {
  where: string
  /** Removes it and everything it left; safe to call twice. */
  drop(): Promise<void>
}

/** SQL text of row changes, for a fenced origin's readable divergence (changes.sql, changes.jsonl). */
export interface Dialect {
  /** The columns a row carries in the log, in order. */
  rowColumns(def: TableDef): string[]
  /** The columns a delete's key carries. */
  keyColumns(def: TableDef): string[]
  upsert(def: TableDef, row: Value[]): string
  remove(def: TableDef, key: Value[]): string
  /** Tables the engine keeps for itself in the log (PostgreSQL's sequences): not the application's rows. */
  internal(table: number): boolean
  /**
   * Statements that follow the changes, given the tables rows were written to (PostgreSQL: each identity or
   * serial sequence moved past its column's highest value). Absent: nothing follows.
   */
  after?(tables: TableDef[]): string[]
}

/**
 * Snapshots of a dataset (see node/snapshots.ts): a database built from the log in a workspace, written out as
 * one file `<ms>.<ext>`, loaded again into a new database to start a restore from.
 */
export interface SnapshotFormat {
  ext: string
  /**
   * A new, empty database to build a snapshot in; `partial` is the file the snapshot is written to before it
   * takes its name. Throws NOT_FOUND, saying why, when this site cannot build snapshots of this engine.
   */
  workspace(partial: string, dataset: string, server: string | null): Promise<Scratch>
  /** Writes the database built in `where` out as the file `partial` (nothing else beside it). */
  write(where: string, partial: string): Promise<void>
  /**
   * Puts a snapshot file's contents into the new, empty database `to`, when the SHA-256 of its bytes is
   * `sha256` (undefined: not checked). Returns false, leaving `to` empty, when it is not: the file changed on
   * disk since it was written.
   */
  load(file: string, to: string, sha256: string | undefined): Promise<boolean>
  /** Whether snapshots can be loaded on this machine (a client program may be missing); absent: always. */
  canLoad?(): boolean
}

export interface Engine {
  /** The engine's name in the log's header and in DatasetInfo.engine. */
  readonly name: string
  /** Where a database is, for messages and logs (a URL without its password). */
  shown(where: string): string
  /**
   * `mesh init` and `mesh join`: checks that a source database exists and can be captured, and creates what
   * capture needs before any node runs (PostgreSQL: publication and slot). Returns warnings for the user.
   * Throws NOT_FOUND, NOT_SQLITE, CANNOT_CAPTURE or a connection error, having created nothing.
   */
  checkSource(where: string, dataset: string, mode: CaptureMode): Promise<string[]>
  /** Undoes what checkSource created, for an init or join that failed after it. Absent: nothing to undo. */
  undoSource?(where: string, dataset: string): Promise<void>
  openCapture(where: string, opts: CaptureOptions): CaptureSide
  /**
   * How a promoted replica is captured: the engine's preferred mode where the database allows it, another
   * where it does not, with the reasons (a failover is no time to refuse). Absent: one mode only.
   */
  captureModeFor?(where: string, dataset: string): Promise<{ mode: CaptureMode; problems: string[] }>
  openApply(where: string, opts: ApplyOptions): ApplySide
  role(where: string, dataset: string): Promise<DatabaseRole>
  /** Where this site keeps its replica of a dataset. Throws NO_REPLICA_SERVER when it has no place for one. */
  replicaLocation(info: { id: string; name: string; originSite: string }, place: ReplicaPlace): string
  /**
   * Makes the replica's database ready before apply opens it (creates it; drops capture a fence left behind,
   * which would keep WAL for ever). Absent: openApply creates what it needs.
   */
  prepareReplica?(where: string, dataset: string, place: ReplicaPlace): Promise<void>
  /**
   * Empties a database of what the mesh carries, so that the whole chain of logs is applied into it again:
   * the tables `carried` names (a fenced origin's), or those its replica bookkeeping lists; other tables stay.
   * Absent: the node replays the sealed epochs into a scratch database and repairs the database from it.
   */
  reset?(where: string, dataset: string, carried: string[] | null): Promise<void>
  /** A new, empty database for `purpose`, next to `near` (a replica); `dir` is this site's replica folder. */
  scratch(near: string, dataset: string, purpose: 'verify' | 'rebuild', dir: string): Promise<Scratch>
  /** Where database `mine` parts from `truth`, per table (both hold the same dataset). */
  diff(mine: string, truth: string): Promise<TableDiff[]>
  /**
   * Makes `mine` hold what `truth` holds, in one transaction: the tables `tables` names (from diff), or
   * everything when null. `mine` is not open for apply meanwhile.
   */
  repair(mine: string, truth: string, tables: TableDiff[] | null): Promise<void>
  /**
   * Keeps a copy of the database as it is in folder `dir`, before a fence rebuilds it; returns README.txt's
   * line for it (or why there is no copy: the changes themselves are always kept).
   */
  keepCopy(where: string, dir: string, site: string): Promise<string>
  /** Refuses a restore target that is not new (USAGE, NOT_FOUND), or cannot be reached. */
  checkRestoreTarget(to: string): Promise<void>
  /** Where a restore into `to` writes until it is complete (SQLite: `<to>.partial`, so no half file has the name). */
  restoring(to: string): string
  /**
   * Ends a restore into `to`: `plain` makes it a database as the origin had it (its triggers, constraints and
   * sequences back, branchmesh's bookkeeping gone); otherwise it stays a replica (a scratch copy to compare).
   */
  finishRestore(to: string, opts: { plain: boolean }): Promise<void>
  /** An example restore target for a hint (`--to ...`). */
  exampleTarget(name: string, seq: number): string
  /** What an origin's capture keeps on the database server's disk. Absent: nothing. */
  walRetention?(
    where: string,
    dataset: string,
    epoch: number
  ): Promise<{ retainedBytes: number; limitBytes: number | null; status: string }>
  /**
   * For the owner's versions and disk view: the engine's version in a few words ('SQLite 3.40.1',
   * 'PostgreSQL 15.4') and the local folder whose disk holds the database, or null when that disk is not this
   * machine's or cannot be known (a remote PostgreSQL server). Throws when the database cannot be reached.
   * Absent: nothing to tell.
   */
  about?(where: string): Promise<{ version: string; folder: string | null }>
  readonly snapshots: SnapshotFormat
  readonly dialect: Dialect
}
