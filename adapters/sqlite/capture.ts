/**
 * SQLite capture.
 *
 * How it works. Every captured table gets triggers that append the *key* of each inserted, updated or deleted
 * row to a per-table change table (`_mesh_d<id>`), inside the writer's own transaction, so writes from any
 * process or connection are captured. A read opens one read transaction, takes the distinct keys changed
 * since the last acknowledged position and reads each key's row as it is now: present means upsert, absent
 * means delete. Because the whole batch comes from one read transaction, it moves the replica from one state
 * the origin really had to another; a transaction is never split.
 *
 * What it does not do. It does not keep every intermediate state: two transactions committed between two
 * reads reach the log as one unit (history granularity is the capture interval, milliseconds while the node
 * runs). Values never pass through the change table, so a damaged change row cannot put a wrong value in a
 * replica: at worst it makes a row be resent.
 *
 * Tables with no declared primary key are keyed by rowid. SQLite's VACUUM may renumber those rowids without
 * firing a trigger, and always bumps the schema cookie: so whenever the cookie moved since capture last saw it
 * (kept in _mesh_meta, so a VACUUM while the node was off counts too), every such table is resent in full.
 *
 * TEXT that is not valid UTF-8 is read with its bytes (text.ts), and the origin's `sqlite_sequence` travels as
 * table SEQUENCE_TABLE, read in the same read transaction as the rows, so a number used by a row that was
 * inserted and deleted before any read still reaches every replica.
 */
import c from 'compact-encoding'
import crypto from 'node:crypto'
import fs from 'node:fs'
import { MeshError, type SchemaEntry, type SchemaObject, type TableChanges, type Value } from '../../protocol/index.ts'
import type { CaptureBatch, CaptureSide, CaptureStream, Logger, SnapshotChunk } from '../types.ts'
import { silentLogger, wholeStream } from '../types.ts'
import {
  OWN_PREFIX,
  SEQUENCE_TABLE,
  digestTables,
  dropGuards,
  guardTriggersSql,
  openDatabase,
  quote,
  readObjects,
  readTables,
  sqliteError,
  toTableDef,
  type DB,
  type TableInfo
} from './common.ts'
import type Database from 'better-sqlite3'
import {
  compareFile,
  fileAt,
  probeFile,
  readCounters,
  replacedError,
  type Counters,
  type FileId,
  type Replaced
} from './capture-identity.ts'
import {
  changeTable,
  conflictTriggerNames,
  conflictTriggers,
  sameInfo,
  triggerNames,
  triggerSql
} from './capture-triggers.ts'
import { type Planned, STREAM_ABOVE_ROWS, piecesOf } from './capture-pieces.ts'
import { type Captured, changesOf, pagesOf, prepareTable, readAll } from './captured-table.ts'
import { IDENTITY_BYTES, decodeSqliteSource, sourceEnc, type SourcePos } from './position.ts'

export { decodeSqliteSource } from './position.ts'

/** Change rows deleted by one statement of an acknowledge. */
const ACK_DELETE_ROWS = 50_000

/** lag() measures the size of at most this many pending change rows per table, and scales. */
const LAG_SAMPLE = 10_000

/** Layout version of the tables and triggers capture installs in the origin database. */
const CAPTURE_LAYOUT = 1

export interface SqliteCaptureOptions {
  path: string
  /** Capture only these tables (default: every user table). */
  tables?: string[]
  logger?: Logger
  busyTimeoutMs?: number
  /** Delete acknowledged change rows at most this often, to keep writes to the origin rare. */
  ackIntervalMs?: number
}

export class SqliteCapture implements CaptureSide {
  readonly engine = 'sqlite' as const
  private readonly path: string
  private readonly only: Set<string> | null
  private readonly log: Logger
  private readonly busyTimeoutMs: number
  private readonly ackIntervalMs: number
  private db: DB | null = null
  private tables = new Map<number, Captured>()
  private objects: SchemaObject[] = []
  private skippedTables: Array<{ table: string; reason: string }> = []
  /** UNIQUE indexes on an expression already warned about (table/index). */
  private expressionWarned = new Set<string>()
  private schemaVersion = -1
  private dataVersion = -1
  private schemaPending = true
  /** Bumped whenever the schema changes, so an acknowledged batch clears only the schema it carried. */
  private schemaGen = 0
  /** The last batch read and not yet acknowledged; `readAt`: when its read began (see lag()). */
  private unacked: {
    source: Uint8Array
    schemaGen: number
    sequences?: Map<string, bigint>
    readAt: number
  } | null = null
  /** When the read in progress began. */
  private readAt = 0
  /** A time before which every change the file committed is in the log (see lag()). */
  private coveredAt = Date.now()
  private acked: SourcePos | null = null
  /** The `sqlite_sequence` rows the log holds (empty at start: the first read sends them all). */
  private sequencesLogged = new Map<string, bigint>()
  private sequenceRead: { schema: number; stmt: Database.Statement | null } | null = null
  private ackedApplied: SourcePos | null = null
  private lastAckWrite = 0
  /** The file the connection has open, to notice another one put at the path. */
  private file: FileId | null = null
  /** The open file's identity and capture counters, as this capture last wrote or read them. */
  private counters: Counters = {
    identity: null,
    resets: 0,
    nextTable: 0
  }
  /** A replacement found and reported (SOURCE_RESET), acted on at the next schema() or snapshot(). */
  private replaced: Replaced | null = null
  /** Whether open() was given the log's position (and so compared the file with it). */
  private opened = false
  /** Whether the file that was replaced has been read one last time. */
  private drained = false

  constructor(opts: SqliteCaptureOptions) {
    this.path = opts.path
    this.only = opts.tables ? new Set(opts.tables) : null
    this.log = opts.logger ?? silentLogger
    this.busyTimeoutMs = opts.busyTimeoutMs ?? 5000
    this.ackIntervalMs = opts.ackIntervalMs ?? 1000
  }

  private get conn(): DB {
    if (this.db === null) throw MeshError.CLOSED('the SQLite capture is not open')
    return this.db
  }

  /**
   * Opens the file. With `source` (the position the log last holds), the file is first compared with it
   * (`probe`): a file put in place of the captured one (an old backup restored, the file deleted and created
   * again, moved and replaced) is not touched here; resume() then reports it (SOURCE_RESET) and the capture
   * loop decides, so that a file that is not this dataset's is never written to.
   */
  async open(opts: { source?: Uint8Array | null } = {}): Promise<void> {
    if (this.db !== null) return
    this.connect()
    try {
      const pre = probeFile(this.conn)
      const found = opts.source ? compareFile(decodeSqliteSource(opts.source), pre) : null
      if (found) this.replaced = found
      else {
        this.install()
        // A live database carries no replica guard: one a handover installed is gone if its node stopped mid-way.
        dropGuards(this.conn)
      }
      this.opened = opts.source !== undefined
    } catch (err) {
      this.disconnect()
      throw sqliteError(err, this.path, 'cannot prepare capture in')
    }
  }

  /** Opens the connection and notes the file it opened (device and inode). */
  private connect(): void {
    const db = openDatabase(this.path, { mustExist: true, busyTimeoutMs: this.busyTimeoutMs })
    this.db = db
    try {
      db.defaultSafeIntegers(true)
      const st = fs.statSync(this.path)
      this.file = { dev: st.dev, ino: st.ino }
      const mode = db.pragma('journal_mode', { simple: true })
      if (mode !== 'wal') {
        this.log.warn('the database is not in WAL mode: capture reads may make the application wait for a lock', {
          path: this.path,
          journalMode: mode,
          hint: "Switch it once with: sqlite3 FILE 'PRAGMA journal_mode=WAL'"
        })
      }
    } catch (err) {
      this.disconnect()
      throw sqliteError(err, this.path, 'cannot open')
    }
    this.schemaVersion = -1
    this.dataVersion = -1
  }

  private disconnect(): void {
    try {
      this.db?.close()
    } catch {
      // A file that went away under the connection: nothing left to close cleanly.
    }
    this.db = null
  }

  /** Creates (or checks) the capture state in the file and brings triggers in line with its tables. */
  private install(): void {
    const db = this.conn
    this.writeTx(() => {
      db.exec(`CREATE TABLE IF NOT EXISTS ${OWN_PREFIX}meta (k TEXT PRIMARY KEY, v) WITHOUT ROWID`)
      db.exec(
        `CREATE TABLE IF NOT EXISTS ${OWN_PREFIX}tables (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, ` +
          'sql TEXT NOT NULL, info TEXT NOT NULL, reset INTEGER NOT NULL DEFAULT 0)'
      )
      const layout = db.prepare(`SELECT v FROM ${OWN_PREFIX}meta WHERE k = 'layout'`).pluck().get() as
        | bigint
        | undefined
      if (layout === undefined) {
        db.prepare(`INSERT INTO ${OWN_PREFIX}meta (k, v) VALUES ('layout', ?)`).run(BigInt(CAPTURE_LAYOUT))
      } else if (Number(layout) !== CAPTURE_LAYOUT) {
        throw MeshError.UNKNOWN_VERSION(
          `capture layout ${layout} in ${this.path} is newer than this software (${CAPTURE_LAYOUT})`
        )
      }
      // A file captured by an older version has no identity yet: it gets one now, once.
      const id = crypto.randomBytes(IDENTITY_BYTES).toString('hex')
      db.prepare(`INSERT OR IGNORE INTO ${OWN_PREFIX}meta (k, v) VALUES ('identity', ?)`).run(id)
    })
    this.writeTx(() => this.syncSchema(true, this.adoptReplica()))
  }

  /**
   * Puts fresh capture state in a file that replaced the captured one: every branchmesh object it holds
   * (an older copy's change tables, a replica's bookkeeping) goes, it gets a new identity, and its tables get
   * ids never used before, so the schema entry that follows drops every table of the old file in each copy and
   * creates the new ones. Counters start above every one seen, so no earlier position matches this file.
   */
  private reinstall(r: Replaced): void {
    const db = this.conn
    this.writeTx(() => {
      const own = db
        .prepare(
          "SELECT type, name FROM main.sqlite_schema WHERE type IN ('table', 'trigger') AND substr(name, 1, 6) = ?"
        )
        .all(OWN_PREFIX) as Array<{ type: string; name: string }>
      for (const o of own) if (o.type === 'trigger') db.exec(`DROP TRIGGER IF EXISTS ${quote(o.name)}`)
      for (const o of own) if (o.type === 'table') db.exec(`DROP TABLE IF EXISTS ${quote(o.name)}`)
      db.exec(`CREATE TABLE ${OWN_PREFIX}meta (k TEXT PRIMARY KEY, v) WITHOUT ROWID`)
      const put = db.prepare(`INSERT INTO ${OWN_PREFIX}meta (k, v) VALUES (?, ?)`)
      put.run('layout', BigInt(CAPTURE_LAYOUT))
      put.run('identity', crypto.randomBytes(IDENTITY_BYTES).toString('hex'))
      put.run('reset', BigInt(Math.max(r.floor.resets, this.counters.resets)))
      put.run('next_table', BigInt(Math.max(r.floor.nextTable, this.counters.nextTable, 1)))
    })
    this.tables.clear()
    this.skippedTables = []
    this.acked = null
    this.ackedApplied = null
    this.unacked = null
    // Every table is new to the fresh state: it gets a new id and a pending reset, which the snapshot carries.
    this.install()
    this.replaced = null
    this.log.warn('fresh capture state installed in the database that replaced the captured one', {
      path: this.path,
      why: r.why
    })
  }

  /** What this capture has read so far, as a position: the yardstick for the file it has open. */
  private current(): SourcePos {
    return {
      identity: this.counters.identity ? Buffer.from(this.counters.identity, 'hex') : null,
      resets: this.counters.resets,
      nextTable: this.counters.nextTable,
      tables: [...this.tables.values()].map((t) => ({ id: t.id, seq: t.mark, reset: 0 }))
    }
  }

  /**
   * A promoted replica: its tables already hold the state the previous log ended at, so they keep the table
   * ids of that log and are not resent (promotion copies nothing). The origin's own triggers, which a
   * replica keeps only in its metadata, are created now. Runs in the transaction that installs capture, so a
   * crash leaves either a replica or an origin, never half of each.
   */
  private adoptReplica(): Map<string, number> {
    const db = this.conn
    const adopted = new Map<string, number>()
    const meta = `${OWN_PREFIX}replica`
    const has = db
      .prepare(`SELECT count(*) FROM main.sqlite_schema WHERE type = 'table' AND name = ?`)
      .pluck()
      .get(meta) as bigint
    if (has === 0n) return adopted
    const rows = new Map(
      (
        db.prepare(`SELECT k, v FROM ${meta} WHERE k IN ('tables', 'objects')`).all() as Array<{ k: string; v: string }>
      ).map((r) => [r.k, r.v])
    )
    const tables = JSON.parse(rows.get('tables') ?? '[]') as Array<{ id: number; name: string; sql: string }>
    const objects = JSON.parse(rows.get('objects') ?? '[]') as SchemaObject[]
    const existing = new Map(readTables(db).tables.map((t) => [t.name, t]))
    let max = 0
    for (const t of tables) {
      if (existing.get(t.name)?.sql === t.sql) adopted.set(t.name, t.id)
      max = Math.max(max, t.id)
    }
    const next = db.prepare(`SELECT v FROM ${OWN_PREFIX}meta WHERE k = 'next_table'`).pluck().get() as
      | bigint
      | undefined
    db.prepare(`INSERT OR REPLACE INTO ${OWN_PREFIX}meta (k, v) VALUES ('next_table', ?)`).run(
      BigInt(Math.max(max + 1, Number(next ?? 1n)))
    )
    for (const o of objects) {
      if (o.type !== 'trigger') continue
      const exists = db.prepare(`SELECT count(*) FROM main.sqlite_schema WHERE name = ?`).pluck().get(o.name) as bigint
      if (exists === 0n) db.exec(o.sql)
    }
    // The database is live now: every program may write it.
    dropGuards(db)
    db.exec(`DROP TABLE ${meta}`)
    this.log.info('promoted replica adopted as the live database; nothing copied', {
      path: this.path,
      tables: adopted.size
    })
    return adopted
  }

  /** Runs fn in a write transaction that takes the write lock up front (BEGIN IMMEDIATE). */
  private writeTx<T>(fn: () => T): T {
    const db = this.conn
    try {
      return db.transaction(fn).immediate()
    } catch (err) {
      throw sqliteError(err, this.path, 'cannot write capture state to')
    }
  }

  /**
   * Brings triggers and change tables in line with the tables that exist. A table that is new, whose
   * definition changed, or whose triggers went missing is marked for a full resend (reset), in the same
   * transaction that installs its triggers, so a crash cannot lose the resend.
   */
  private syncSchema(force: boolean, adopted: Map<string, number> = new Map()): void {
    const db = this.conn
    const sv = Number(db.pragma('schema_version', { simple: true }))
    if (!force && sv === this.schemaVersion) return
    this.writeTx(() => {
      const vacuumed = this.cookieMoved()
      const { tables, skipped } = readTables(db)
      const wanted = this.only ? tables.filter((t) => this.only!.has(t.name)) : tables
      if (this.only) {
        for (const name of this.only) {
          if (!tables.some((t) => t.name === name) && !skipped.some((s) => s.table === name)) {
            skipped.push({ table: name, reason: 'it does not exist (yet); it is captured once it is created' })
          }
        }
      }
      for (const s of skipped) {
        if (!this.skippedTables.some((o) => o.table === s.table && o.reason === s.reason)) {
          this.log.warn(MeshError.CANNOT_CAPTURE(`table ${s.table} is not captured: ${s.reason}`).message, {
            table: s.table
          })
        }
      }
      this.skippedTables = skipped
      for (const t of wanted) {
        for (const ix of t.expressionUnique ?? []) {
          const what = `${t.name}/${ix}`
          if (this.expressionWarned.has(what)) continue
          this.expressionWarned.add(what)
          this.log.warn(
            `UNIQUE index ${ix} of table ${t.name} is on an expression: a row a REPLACE deletes through it ` +
              'reaches replicas only while the new row still conflicts when capture reads it',
            { table: t.name, index: ix, hint: 'an index on plain columns is covered; see README, Capture (SQLite)' }
          )
        }
      }
      const rows = db.prepare(`SELECT id, name, sql, info, reset FROM ${OWN_PREFIX}tables`).all() as Array<{
        id: bigint
        name: string
        sql: string
        info: string
        reset: bigint
      }>
      const byName = new Map(rows.map((r) => [r.name, r]))
      // Each capture trigger and the table it is on: a trigger follows its table through ALTER TABLE RENAME.
      const triggerOn = new Map(
        (
          db
            .prepare(
              `SELECT name, tbl_name FROM main.sqlite_schema WHERE type = 'trigger' AND name LIKE '${OWN_PREFIX}t%'`
            )
            .raw()
            .all() as Array<[string, string]>
        ).map(([n, tbl]) => [n, tbl])
      )
      const triggers = new Set(triggerOn.keys())
      const changeTables = new Set(
        db
          .prepare(`SELECT name FROM main.sqlite_schema WHERE type = 'table' AND name LIKE '${OWN_PREFIX}d%'`)
          .pluck()
          .all() as string[]
      )
      const nextReset = () => {
        const v = db.prepare(`SELECT v FROM ${OWN_PREFIX}meta WHERE k = 'reset'`).pluck().get() as bigint | undefined
        const n = Number(v ?? 0n) + 1
        db.prepare(`INSERT OR REPLACE INTO ${OWN_PREFIX}meta (k, v) VALUES ('reset', ?)`).run(BigInt(n))
        return n
      }
      const nextId = () => {
        const v = db.prepare(`SELECT v FROM ${OWN_PREFIX}meta WHERE k = 'next_table'`).pluck().get() as
          | bigint
          | undefined
        const n = Number(v ?? 1n)
        db.prepare(`INSERT OR REPLACE INTO ${OWN_PREFIX}meta (k, v) VALUES ('next_table', ?)`).run(BigInt(n + 1))
        return n
      }
      const keep = new Set<number>()
      for (const t of wanted) {
        const row = byName.get(t.name)
        let id: number
        let reset = row ? Number(row.reset) : 0
        let install = false
        if (row === undefined) {
          const kept = adopted.get(t.name)
          id = kept ?? nextId()
          reset = kept === undefined ? nextReset() : 0
          install = true
          db.prepare(`INSERT INTO ${OWN_PREFIX}tables (id, name, sql, info, reset) VALUES (?, ?, ?, ?, ?)`).run(
            BigInt(id),
            t.name,
            t.sql,
            JSON.stringify(t),
            BigInt(reset)
          )
        } else {
          id = Number(row.id)
          const old = JSON.parse(row.info) as TableInfo
          // A table renamed and another created under its old name with the same definition (an archive
          // rotation: `ALTER TABLE a RENAME TO a_old; CREATE TABLE a (...)`) in one capture step: the triggers of
          // this id went along to the renamed table, so the new one had none and kept the old rows at a replica.
          // Triggers on another table count as missing here, and the table is captured and resent afresh.
          const moved = triggerNames(id).some((n) => triggerOn.has(n) && triggerOn.get(n) !== t.name)
          const present = !moved && triggerNames(id).every((n) => triggers.has(n)) && changeTables.has(changeTable(id))
          const arityOk = present && this.changeTableArity(id) === (t.key.length || 1)
          if (!sameInfo(old, t) || !present || !arityOk) {
            if (moved) {
              this.log.info('table renamed and a new one created under its name: both are resent in full', {
                table: t.name
              })
            } else if (present && arityOk) {
              this.log.info('table definition changed: it is resent in full', { table: t.name })
            } else {
              this.log.warn(
                MeshError.CORRUPT_CHANGE(`capture triggers or change table of ${t.name} were missing or altered`)
                  .message,
                { table: t.name, hint: 'reinstalled; the table is resent in full' }
              )
            }
            reset = nextReset()
            install = true
            db.prepare(`UPDATE ${OWN_PREFIX}tables SET sql = ?, info = ?, reset = ? WHERE id = ?`).run(
              t.sql,
              JSON.stringify(t),
              BigInt(reset),
              BigInt(id)
            )
          } else {
            // Capture set up by a version without the REPLACE-conflict triggers (conflictTriggers) gets them
            // now, with no resend: the change table and its pending keys stay. The stored info is brought up to
            // date, so that a UNIQUE index created later counts as a change of the table (resent).
            const conflict = conflictTriggers(id, t)
            if (conflict.some((c) => !triggers.has(c.name))) {
              for (const n of conflictTriggerNames(id)) db.exec(`DROP TRIGGER IF EXISTS ${quote(n)}`)
              for (const c of conflict) db.exec(c.sql)
            }
            if (row.info !== JSON.stringify(t)) {
              db.prepare(`UPDATE ${OWN_PREFIX}tables SET info = ? WHERE id = ?`).run(JSON.stringify(t), BigInt(id))
            }
          }
          if (!install && vacuumed && t.key.length === 0 && !t.withoutRowid && reset === 0) {
            // Keyed by rowid, which a VACUUM may have renumbered: resent in full, in this transaction.
            reset = nextReset()
            db.prepare(`UPDATE ${OWN_PREFIX}tables SET reset = ? WHERE id = ?`).run(BigInt(reset), BigInt(id))
            const why = 'the schema cookie moved (VACUUM renumbers rowids): a table without a primary key is resent'
            this.log.info(why, { table: t.name })
          }
        }
        if (install) {
          for (const n of [...triggerNames(id), ...conflictTriggerNames(id)])
            db.exec(`DROP TRIGGER IF EXISTS ${quote(n)}`)
          db.exec(`DROP TABLE IF EXISTS ${quote(changeTable(id))}`)
          const arity = t.key.length === 0 ? 1 : t.key.length
          const cols = Array.from({ length: arity }, (_, i) => `k${i}`).join(', ')
          db.exec(`CREATE TABLE ${quote(changeTable(id))} (seq INTEGER PRIMARY KEY, ${cols})`)
          for (const sql of triggerSql(id, t)) db.exec(sql)
          // A recreated change table starts again from seq 1, so a mark from before must not hide its rows.
          const prev = this.tables.get(id)
          if (prev) prev.mark = 0
        }
        keep.add(id)
        this.tables.set(id, prepareTable(this.conn, id, t, reset, this.tables.get(id)?.mark ?? 0))
      }
      for (const row of rows) {
        const id = Number(row.id)
        if (keep.has(id)) continue
        for (const n of [...triggerNames(id), ...conflictTriggerNames(id)])
          db.exec(`DROP TRIGGER IF EXISTS ${quote(n)}`)
        db.exec(`DROP TABLE IF EXISTS ${quote(changeTable(id))}`)
        db.prepare(`DELETE FROM ${OWN_PREFIX}tables WHERE id = ?`).run(BigInt(id))
        this.tables.delete(id)
      }
      this.objects = readObjects(db, new Set(wanted.map((t) => t.name)))
      // After this transaction's own DDL: the next sync compares the cookie with this.
      const cookie = BigInt(db.pragma('schema_version', { simple: true }) as number | bigint)
      db.prepare(`INSERT OR REPLACE INTO ${OWN_PREFIX}meta (k, v) VALUES ('cookie', ?)`).run(cookie)
    })
    this.schemaVersion = Number(db.pragma('schema_version', { simple: true }))
    this.schemaPending = true
    this.schemaGen++
    this.counters = readCounters(this.conn)
  }

  /**
   * Whether the schema cookie moved since the last sync wrote it (or was never written: an origin set up by an
   * older version): someone else changed the schema, or ran VACUUM, which bumps the cookie and may renumber
   * the rowids of tables without an INTEGER PRIMARY KEY (always, here, for such a table with no index).
   */
  private cookieMoved(): boolean {
    const db = this.conn
    const stored = db.prepare(`SELECT v FROM ${OWN_PREFIX}meta WHERE k = 'cookie'`).pluck().get() as bigint | undefined
    return stored === undefined || stored !== BigInt(db.pragma('schema_version', { simple: true }) as number | bigint)
  }

  private changeTableArity(id: number): number {
    const cols = this.conn.prepare(`PRAGMA main.table_info(${quote(changeTable(id))})`).all() as Array<{ name: string }>
    if (cols.length === 0 || cols[0].name !== 'seq') return -1
    return cols.length - 1
  }

  /**
   * The origin's `sqlite_sequence` rows of captured tables, as changes against what the log holds (all of
   * them after a start, a snapshot or a table's resend, whose DROP at a replica removes its row).
   */
  private sequenceChanges(resent: boolean): { changes: Value[][][]; now: Map<string, bigint> } | null {
    const db = this.conn
    // Prepared once per schema: sqlite_sequence exists from the first AUTOINCREMENT table on.
    if (this.sequenceRead?.schema !== this.schemaVersion) {
      const exists = db.prepare(`SELECT count(*) FROM main.sqlite_schema WHERE name = 'sqlite_sequence'`).pluck().get()
      const stmt = (exists as bigint) > 0n ? db.prepare('SELECT name, seq FROM main.sqlite_sequence').raw(true) : null
      this.sequenceRead = { schema: this.schemaVersion, stmt }
    }
    const now = new Map<string, bigint>()
    if (this.sequenceRead.stmt !== null) {
      const names = new Set([...this.tables.values()].map((t) => t.info.name))
      for (const r of this.sequenceRead.stmt.all() as unknown[][]) {
        if (typeof r[0] === 'string' && typeof r[1] === 'bigint' && names.has(r[0])) now.set(r[0], r[1])
      }
    }
    const logged = resent ? new Map<string, bigint>() : this.sequencesLogged
    const upserts: Value[][] = []
    const deletes: Value[][] = []
    for (const [name, seq] of now) if (logged.get(name) !== seq) upserts.push([name, seq])
    for (const name of logged.keys()) if (!now.has(name)) deletes.push([name])
    if (upserts.length === 0 && deletes.length === 0) return null
    return { changes: [upserts, deletes], now }
  }

  async resume(source: Uint8Array | null): Promise<void> {
    if (this.replaced && source !== null) {
      // Asked again after a replacement was refused or not yet copied: look at whatever file is there now.
      this.disconnect()
      this.replaced = null
      await this.open({ source })
    }
    if (this.replaced) throw replacedError(this.path, this.replaced)
    if (source === null) return
    if (!this.opened) {
      const found = compareFile(decodeSqliteSource(source), probeFile(this.conn))
      this.opened = true
      if (found) {
        this.replaced = found
        throw replacedError(this.path, found)
      }
    }
    this.acknowledge(source)
    this.flushAck(true)
  }

  /** A replacement the capture loop accepted: fresh capture state in the new file, before it is copied. */
  private takeReplacement(): void {
    if (this.replaced) this.reinstall(this.replaced)
  }

  async schema(): Promise<SchemaEntry> {
    this.takeReplacement()
    this.syncSchema(false)
    return this.schemaEntry([])
  }

  private schemaEntry(reset: number[]): SchemaEntry {
    const tables = [...this.tables.values()].sort((a, b) => a.id - b.id).map((t) => toTableDef(t.id, t.info))
    return { kind: 'schema', more: false, tables, objects: this.objects, reset }
  }

  async *snapshot(opts: { chunkRows?: number } = {}): AsyncIterable<SnapshotChunk> {
    const chunkRows = opts.chunkRows ?? 5000
    this.takeReplacement()
    this.syncSchema(false)
    const tables = [...this.tables.values()].sort((a, b) => a.id - b.id)
    // The snapshot resends every table in full, which is what a pending reset asks for: the next read need
    // not resend them again, and its acknowledge clears the resets in the database.
    for (const t of tables) {
      if (t.reset > 0) t.ackReset = t.reset
      t.reset = 0
    }
    this.sequencesLogged = new Map()
    for (const t of tables) {
      yield* pagesOf(() => this.conn, this.path, t, chunkRows)
    }
  }

  async read(): Promise<CaptureBatch | null> {
    const at = this.db === null ? 'other' : fileAt(this.path, this.file)
    if (at !== 'same') {
      // The writes the old file took before it went are read from it first: the connection still holds it.
      if (!this.drained && this.db !== null && this.replaced === null) {
        this.drained = true
        const last = await this.readOpen().catch(() => null)
        if (last) return last
      }
      if (at === 'gone') {
        const what = `the database file ${this.path} is gone (deleted or moved away)`
        throw MeshError.NOT_FOUND(`${what}: nothing is captured until a database is back at that path`, {
          hint: 'Put the database back at its path; the node notices it by itself.',
          retryable: true,
          context: { path: this.path }
        })
      }
      this.drained = false
      this.switchFile()
    }
    if (this.replaced) throw replacedError(this.path, this.replaced)
    return this.readOpen()
  }

  /**
   * Another file is at the path (the old one deleted or moved, a new one put there): opens it and compares it
   * with what this capture read so far. The same file under a new inode (a copy that kept its capture state
   * and numbering) is captured on; anything else is a replacement, reported as SOURCE_RESET.
   */
  private switchFile(): void {
    const known = this.current()
    this.disconnect()
    try {
      this.connect()
    } catch (err) {
      const e = MeshError.wrap(err, MeshError.IO_ERROR)
      if (e.code !== 'NOT_SQLITE') throw e
      throw MeshError.NOT_SQLITE(
        `the database file ${this.path} was replaced by a file that is not a SQLite database (or a damaged one): ` +
          "nothing is captured or sent; put the dataset's database back at that path",
        {
          retryable: true,
          context: { path: this.path },
          cause: err,
          hint: 'Put the database back at its path; the node notices it by itself.'
        }
      )
    }
    const found = compareFile(known, probeFile(this.conn))
    if (found) {
      this.replaced = found
      throw replacedError(this.path, found)
    }
    this.replaced = null
    this.install()
    this.log.info('the database file at the path is another inode of the captured file: capture goes on', {
      path: this.path
    })
  }

  /**
   * SQLite's data_version now. When another connection committed since the last read, the file is first
   * compared with what capture read so far (an old backup restored through SQLite writes a whole other database
   * into the same inode), and the schema synced.
   */
  private freshDataVersion(): number {
    const dv = Number(this.conn.pragma('data_version', { simple: true }))
    if (dv !== this.dataVersion) {
      const found = compareFile(this.current(), probeFile(this.conn))
      if (found) {
        this.replaced = found
        throw replacedError(this.path, found)
      }
      this.syncSchema(false)
    }
    return dv
  }

  private async readOpen(): Promise<CaptureBatch | null> {
    const db = this.conn
    let dv: number
    try {
      dv = this.freshDataVersion()
    } catch (err) {
      throw sqliteError(err, this.path, 'cannot read')
    }
    const pending = this.unacked !== null || [...this.tables.values()].some((t) => t.reset > 0)
    this.readAt = Date.now()
    if (dv === this.dataVersion && !this.schemaPending && !pending) {
      // No other connection committed since the last read, whose batch the log holds.
      this.coveredAt = this.readAt
      this.flushAck(false)
      return null
    }
    let batch: CaptureBatch | null | undefined
    try {
      // The schema is checked inside the read transaction: a VACUUM or DDL committed after the sync above
      // would make the change rows' keys name other rows (VACUUM renumbers rowids), so sync and read again.
      const inTx = db.transaction(() => {
        if (Number(db.pragma('schema_version', { simple: true })) !== this.schemaVersion) return undefined
        return this.readInTx()
      })
      for (batch = inTx(); batch === undefined; batch = inTx()) this.syncSchema(false)
    } catch (err) {
      throw sqliteError(err, this.path, 'cannot read changes from')
    }
    this.dataVersion = dv
    if (batch === null) this.coveredAt = this.readAt
    this.flushAck(false)
    return batch
  }

  private readInTx(): CaptureBatch | null {
    const changes: TableChanges[] = []
    const { identity, resets, nextTable } = this.current()
    const pos: SourcePos = { identity, resets, nextTable, tables: [] }
    const reset: number[] = []
    let rows = 0
    let any = false
    for (const t of [...this.tables.values()].sort((a, b) => a.id - b.id)) {
      const max = Number((t.maxSeq.get() as bigint | null) ?? 0n)
      const to = Math.max(max, t.mark)
      if (t.reset > 0) {
        const all = readAll(t)
        changes.push({ table: t.id, upserts: all, deletes: [] })
        reset.push(t.id)
        rows += all.length
        any = true
      } else if (max > t.mark) {
        let upserts: Value[][] = []
        let deletes: Value[][] = []
        // One that may be TEXT that is not UTF-8 starts the table again with every value's bytes.
        for (let exact = false; ; exact = true) {
          let again = false
          for (const [kind, v] of changesOf(t, t.mark, max, exact, this.log)) {
            if (kind === 'u') upserts.push(v)
            else if (kind === 'd') deletes.push(v)
            else if (kind === 'again') {
              again = true
              break
            }
          }
          if (!again) break
          upserts = []
          deletes = []
        }
        if (upserts.length || deletes.length) changes.push({ table: t.id, upserts, deletes })
        rows += upserts.length + deletes.length
        any = true
      }
      pos.tables.push({ id: t.id, seq: to, reset: t.reset > 0 ? t.reset : t.ackReset })
    }
    // Last, after the rows: a replica's own inserts may move its sqlite_sequence, this sets it as the origin's.
    const seq = this.sequenceChanges(reset.length > 0)
    if (seq !== null) {
      changes.push({ table: SEQUENCE_TABLE, upserts: seq.changes[0], deletes: seq.changes[1] })
      any = true
    }
    if (!any && !this.schemaPending) return null
    // Nothing moves here: marks, resets and the pending schema move only in ack(), so a batch whose append
    // failed is read again, whole, by the next read().
    const schema = this.schemaPending || reset.length > 0 ? this.schemaEntry(reset) : null
    const source = c.encode(sourceEnc, pos)
    this.unacked = { source, schemaGen: schema ? this.schemaGen : -1, sequences: seq?.now, readAt: this.readAt }
    return { schema, changes, time: Date.now(), rows, source }
  }

  /**
   * read() in pieces of about `budgetBytes` of row data (issue 14). A batch of up to STREAM_ABOVE_ROWS changed
   * keys is read by read() and handed out as one piece; a larger one is read in ONE read transaction (BEGIN,
   * then COMMIT when the last piece is handed out or the iteration is ended) held open across the awaits of
   * the caller's appends, with the change-table iterator open across them too: only this connection's reads run
   * meanwhile (better-sqlite3 allows reads while iterating; the capture loop calls nothing else in between).
   * Memory is then a piece, plus SQLite's own temporary b-tree for DISTINCT (on disk past its cache).
   * What it does not do: move marks or forget anything; ack() does that, as for read().
   */
  async readStream(budgetBytes: number): Promise<CaptureStream | null> {
    // A file that went or was replaced, and a replacement already found: read() says what happened.
    if (this.db === null || this.replaced !== null || fileAt(this.path, this.file) !== 'same')
      return wholeStream(await this.read())
    const db = this.conn
    let upper = 0
    try {
      for (const t of this.tables.values()) {
        upper += t.reset > 0 ? Infinity : Math.max(0, Number((t.maxSeq.get() as bigint | null) ?? 0n) - t.mark)
      }
    } catch (err) {
      throw sqliteError(err, this.path, 'cannot read changes from')
    }
    if (upper <= STREAM_ABOVE_ROWS) return wholeStream(await this.read())
    let dv: number
    try {
      dv = this.freshDataVersion()
      this.flushAck(false)
    } catch (err) {
      throw sqliteError(err, this.path, 'cannot read')
    }
    const readAt = Date.now()
    const plan: Planned[] = []
    let seq: ReturnType<SqliteCapture['sequenceChanges']> = null
    try {
      // The schema is checked inside the read transaction (a VACUUM renumbers rowids): sync and begin again.
      for (let tries = 0; ; tries++) {
        db.exec('BEGIN')
        if (Number(db.pragma('schema_version', { simple: true })) === this.schemaVersion) break
        db.exec('ROLLBACK')
        if (tries >= 10) throw MeshError.DATABASE_LOCKED('the schema keeps changing while capture reads')
        this.syncSchema(false)
      }
      for (const t of [...this.tables.values()].sort((a, b) => a.id - b.id)) {
        plan.push({ t, max: Number((t.maxSeq.get() as bigint | null) ?? 0n), reset: t.reset > 0 })
      }
      seq = this.sequenceChanges(plan.some((p) => p.reset))
    } catch (err) {
      if (db.inTransaction) db.exec('ROLLBACK')
      throw sqliteError(err, this.path, 'cannot read changes from')
    }
    const reset = plan.filter((p) => p.reset).map((p) => p.t.id)
    const schema = this.schemaPending || reset.length > 0 ? this.schemaEntry(reset) : null
    const schemaGen = this.schemaGen
    const { identity, resets, nextTable } = this.current()
    const pos: SourcePos = {
      identity,
      resets,
      nextTable,
      tables: plan.map((p) => ({
        id: p.t.id,
        seq: Math.max(p.max, p.t.mark),
        reset: p.reset ? p.t.reset : p.t.ackReset
      }))
    }
    const source = c.encode(sourceEnc, pos)
    let rows = 0
    let done = false
    const self = this
    this.streaming = true
    async function* pieces(): AsyncGenerator<{ changes: TableChanges[]; rows: number }> {
      try {
        for (const piece of piecesOf(plan, budgetBytes, seq, self.log)) {
          rows += piece.rows
          yield piece
        }
        done = true
        self.unacked = { source, schemaGen: schema ? schemaGen : -1, sequences: seq?.now, readAt }
        self.dataVersion = dv
      } catch (err) {
        throw sqliteError(err, self.path, 'cannot read changes from')
      } finally {
        self.streaming = false
        if (db.inTransaction) db.exec('COMMIT')
      }
    }
    return {
      schema,
      time: Date.now(),
      pieces: pieces(),
      end() {
        if (!done) throw MeshError.BAD_LOG('the end of a capture read whose pieces were not all read')
        return { source, rows }
      }
    }
  }

  /**
   * Set while readStream's read transaction (and its iterator) is open across awaits: nothing else may run a
   * statement on the connection then (better-sqlite3: "connection is busy"), so wait() and checkpoint() step aside.
   */
  private streaming = false

  async checkpoint(): Promise<{ digest: Uint8Array; rows: number } | null> {
    if (this.unacked !== null || this.schemaPending || this.replaced !== null || this.db === null) return null
    if (this.streaming) return null
    const db = this.conn
    try {
      // One read transaction: the change tables say nothing is pending, and the digest reads that same state.
      return db.transaction(() => {
        for (const t of this.tables.values()) {
          if (t.reset > 0 || Number((t.maxSeq.get() as bigint | null) ?? 0n) > t.mark) return null
        }
        const captured = new Set([...this.tables.values()].map((t) => t.info.name))
        return digestTables(
          db,
          readTables(db).tables.filter((t) => captured.has(t.name))
        )
      })()
    } catch (err) {
      throw sqliteError(err, this.path, 'cannot take a checkpoint of')
    }
  }

  async ack(source: Uint8Array): Promise<void> {
    this.acknowledge(source)
    this.flushAck(false)
  }

  /** Moves marks, resets and the pending schema past a batch the log now holds durably. */
  private acknowledge(source: Uint8Array): void {
    const pos = decodeSqliteSource(source)
    for (const t of pos.tables) {
      const cap = this.tables.get(t.id)
      if (cap === undefined) continue
      if (t.seq > cap.mark) cap.mark = t.seq
      if (t.reset > 0 && cap.reset === t.reset) cap.reset = 0
      if (t.reset > 0 && cap.ackReset === t.reset) cap.ackReset = 0
    }
    const u = this.unacked
    if (u !== null && Buffer.compare(Buffer.from(u.source), Buffer.from(source)) === 0) {
      if (u.schemaGen === this.schemaGen) this.schemaPending = false
      if (u.sequences) this.sequencesLogged = u.sequences
      this.coveredAt = u.readAt
      this.unacked = null
    }
    this.acked = pos
  }

  /**
   * What the file committed that the log does not hold yet (CaptureSide.lag). `bytes`: the change rows past
   * the acknowledged position, as their keys take in the change tables (the change record holds keys, not
   * rows), measured on up to LAG_SAMPLE rows per table and scaled to their number. `seconds`: since the start
   * of the last read whose whole batch the log holds (a read sees everything committed before it began, so
   * every change still pending committed after it), or, before any, since capture opened: at most one read
   * more than the oldest pending change's age. Zeros when nothing is pending. Null while no file is open or it
   * was replaced; while a read in pieces holds its transaction open, `bytes` is what that read's snapshot shows.
   */
  async lag(): Promise<{ bytes: number; seconds: number } | null> {
    if (this.db === null || this.replaced !== null) return null
    const now = Date.now()
    let bytes = 0
    let pending = this.unacked !== null || this.schemaPending
    try {
      for (const t of this.tables.values()) {
        const max = Number((t.maxSeq.get() as bigint | null) ?? 0n)
        if (t.reset > 0) pending = true
        if (max <= t.mark) continue
        pending = true
        const n = max - t.mark
        const sample = this.lagSample(t).get(t.mark) as { rows: number; bytes: number | null }
        if (sample.rows > 0) bytes += Math.round(((sample.bytes ?? 0) / sample.rows) * n)
      }
    } catch (err) {
      throw sqliteError(err, this.path, 'cannot read changes from')
    }
    if (!pending) {
      // Read outside any transaction of ours: everything committed until now is in the log.
      if (!this.streaming && !this.conn.inTransaction) this.coveredAt = now
      return { bytes: 0, seconds: 0 }
    }
    return { bytes, seconds: Math.max(0, (now - this.coveredAt) / 1000) }
  }

  /** Per change table (for the schema it was made with): the size of up to LAG_SAMPLE pending change rows. */
  private lagSamples = new WeakMap<Captured, Database.Statement>()
  private lagSample(t: Captured): Database.Statement {
    let st = this.lagSamples.get(t)
    if (st === undefined) {
      const size = (k: string) =>
        `CASE typeof(${k}) WHEN 'null' THEN 0 WHEN 'integer' THEN 8 WHEN 'real' THEN 8 ` +
        `ELSE length(CAST(${k} AS BLOB)) END`
      const keys = Array.from({ length: t.arity }, (_, i) => size(`k${i}`)).join(' + ')
      st = this.conn
        .prepare(
          `SELECT count(*) AS rows, sum(8 + ${keys}) AS bytes FROM (SELECT * FROM ${quote(changeTable(t.id))} ` +
            `WHERE seq > ? ORDER BY seq LIMIT ${LAG_SAMPLE})`
        )
        .safeIntegers(false)
      this.lagSamples.set(t, st)
    }
    return st
  }

  /** Deletes acknowledged change rows and clears acknowledged resets, at most every ackIntervalMs. */
  private flushAck(force: boolean): void {
    const pos = this.acked
    if (pos === null || pos === this.ackedApplied || this.replaced !== null || this.db === null) return
    const now = Date.now()
    if (!force && now - this.lastAckWrite < this.ackIntervalMs) return
    const db = this.conn
    try {
      this.writeTx(() => {
        for (const t of pos.tables) {
          if (!this.tables.has(t.id)) continue
          // The newest row stays: an empty table would hand out seq 1 again, below the marks in the log.
          const d = quote(changeTable(t.id))
          // In ranges of ACK_DELETE_ROWS: SQLite collects the rowids a DELETE ... WHERE removes in memory first,
          // which for the change rows of a 10M-row transaction was 100+ MB (issue 14). One transaction still.
          const del = db.prepare(`DELETE FROM ${d} WHERE seq > ? AND seq <= ? AND seq < (SELECT max(seq) FROM ${d})`)
          let lo = Number((db.prepare(`SELECT min(seq) FROM ${d}`).pluck().get() as bigint | number | null) ?? 0) - 1
          while (lo < t.seq) {
            const hi = Math.min(t.seq, lo + ACK_DELETE_ROWS)
            del.run(BigInt(lo), BigInt(hi))
            lo = hi
          }
          if (t.reset > 0)
            db.prepare(`UPDATE ${OWN_PREFIX}tables SET reset = 0 WHERE id = ? AND reset = ?`).run(
              BigInt(t.id),
              BigInt(t.reset)
            )
        }
      })
    } catch (err) {
      const e = sqliteError(err, this.path, 'cannot delete acknowledged change rows from')
      if (e.retryable && !force) {
        this.log.debug('acknowledge deferred', { code: e.code })
        return
      }
      throw e
    }
    this.ackedApplied = pos
    this.lastAckWrite = now
  }

  async wait(ms: number): Promise<void> {
    const db = this.conn
    const until = Date.now() + ms
    for (;;) {
      if (this.streaming) return
      let dv: number
      try {
        dv = Number(db.pragma('data_version', { simple: true }))
      } catch (err) {
        throw sqliteError(err, this.path, 'cannot read')
      }
      if (dv !== this.dataVersion) return
      const left = until - Date.now()
      if (left <= 0) return
      await new Promise((resolve) => setTimeout(resolve, Math.min(left, 3)))
    }
  }

  skipped(): Array<{ table: string; reason: string }> {
    return [...this.skippedTables]
  }

  /** The replica's guard triggers (common.ts, GUARD_FUNCTION) on the captured tables, or none again. */
  holdWrites(hold: boolean): void {
    const db = this.conn
    try {
      if (!hold) {
        dropGuards(db)
        return
      }
      db.transaction(() => {
        for (const t of this.tables.values()) for (const sql of guardTriggersSql(t.id, t.info.name)) db.exec(sql)
      })()
    } catch (err) {
      throw sqliteError(err, this.path, hold ? 'cannot stop the writes to' : 'cannot allow the writes to')
    }
  }

  async close(): Promise<void> {
    if (this.db === null) return
    try {
      this.flushAck(true)
    } catch (err) {
      this.log.warn('could not delete acknowledged change rows at close; they are deleted at the next start', {
        code: (err as MeshError).code
      })
    }
    this.db.close()
    this.db = null
  }
}
