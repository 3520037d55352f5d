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
 * Tables with no declared primary key are keyed by rowid. SQLite's VACUUM may renumber those rowids; a
 * replica is then only repaired by a full resend of the table (see README, Limits).
 */
import c from 'compact-encoding'
import { MeshError, type SchemaEntry, type SchemaObject, type TableChanges, type Value } from '../../protocol/index.ts'
import type { CaptureBatch, CaptureSide, CaptureStream, Logger, SnapshotChunk } from '../types.ts'
import { silentLogger } from '../types.ts'
import {
  OWN_PREFIX,
  digestTables,
  dropGuards,
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

/** Change rows deleted by one statement of an acknowledge. */
const ACK_DELETE_ROWS = 50_000

/** readStream reads a batch of at most this many changed keys whole, with read(). */
const STREAM_ABOVE_ROWS = 1000

/**
 * Memory a row read takes in JS, near enough for a budget: an array of 8-byte slots with a header, a string a
 * byte per character (two for non-Latin-1: not told apart here) plus its header, a BLOB its bytes plus a
 * Buffer, a number or bigint a heap object.
 */
function rowSize(row: Value[]): number {
  let n = 32
  for (const v of row) {
    n += 8 + (typeof v === 'string' ? v.length + 24 : v instanceof Uint8Array ? v.byteLength + 96 : 24)
  }
  return n
}

function nonEmpty(ch: TableChanges): boolean {
  return ch.upserts.length > 0 || ch.deletes.length > 0
}

/** A batch read whole, as a stream of one piece. */
function wholeStream(batch: CaptureBatch | null): CaptureStream | null {
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

interface Captured {
  id: number
  info: TableInfo
  /** Number of key columns in the change table (1 for rowid identity). */
  arity: number
  /** Highest change-table seq already covered by a read (not necessarily acknowledged). */
  mark: number
  /** Reset generation pending in _mesh_tables (0: none): the next read resends the table in full. */
  reset: number
  /** Reset generation already resent by a snapshot, to clear in _mesh_tables at the next acknowledge. */
  ackReset: number
  lookup: Database.Statement
  keys: Database.Statement
  maxSeq: Database.Statement
  all: Database.Statement
}

/** The source position: per table, the change seq read up to, and the reset generation resent. */
interface SourcePos {
  tables: Array<{ id: number; seq: number; reset: number }>
}

const sourceEnc = {
  preencode(s: c.State, p: SourcePos) {
    c.uint.preencode(s, 1)
    c.uint.preencode(s, p.tables.length)
    for (const t of p.tables) {
      c.uint.preencode(s, t.id)
      c.uint.preencode(s, t.seq)
      c.uint.preencode(s, t.reset)
    }
  },
  encode(s: c.State, p: SourcePos) {
    c.uint.encode(s, 1)
    c.uint.encode(s, p.tables.length)
    for (const t of p.tables) {
      c.uint.encode(s, t.id)
      c.uint.encode(s, t.seq)
      c.uint.encode(s, t.reset)
    }
  },
  decode(s: c.State): SourcePos {
    const v = c.uint.decode(s)
    if (v !== 1) throw new RangeError(`unknown capture position version ${v}`)
    const n = c.uint.decode(s)
    if (n > s.end - s.start) throw new RangeError('bad capture position')
    const tables = []
    for (let i = 0; i < n; i++) tables.push({ id: c.uint.decode(s), seq: c.uint.decode(s), reset: c.uint.decode(s) })
    return { tables }
  }
}

export function decodeSqliteSource(bytes: Uint8Array): SourcePos {
  try {
    return c.decode(sourceEnc, bytes)
  } catch (err) {
    throw MeshError.wrap(err, MeshError.BAD_LOG, 'unreadable SQLite capture position')
  }
}

function triggerNames(id: number): string[] {
  return ['ins', 'upd', 'updk', 'del'].map((s) => `${OWN_PREFIX}t${id}_${s}`)
}

function changeTable(id: number): string {
  return `${OWN_PREFIX}d${id}`
}

function keyExprs(t: TableInfo, alias: 'NEW' | 'OLD'): string[] {
  if (t.key.length === 0) return [`${alias}.${t.rowidName}`]
  return t.key.map((i) => `${alias}.${quote(t.columns[i].name)}`)
}

function triggerSql(id: number, t: TableInfo): string[] {
  const [ins, upd, updk, del] = triggerNames(id)
  const table = quote(t.name)
  const d = quote(changeTable(id))
  const arity = t.key.length === 0 ? 1 : t.key.length
  const cols = Array.from({ length: arity }, (_, i) => `k${i}`).join(', ')
  const oldK = keyExprs(t, 'OLD')
  const newK = keyExprs(t, 'NEW')
  const changed = oldK.map((o, i) => `${o} IS NOT ${newK[i]}`).join(' OR ')
  return [
    `CREATE TRIGGER ${quote(ins)} AFTER INSERT ON ${table} BEGIN INSERT INTO ${d} (${cols}) VALUES (${newK.join(', ')}); END`,
    `CREATE TRIGGER ${quote(upd)} AFTER UPDATE ON ${table} BEGIN INSERT INTO ${d} (${cols}) VALUES (${newK.join(', ')}); END`,
    `CREATE TRIGGER ${quote(updk)} AFTER UPDATE ON ${table} WHEN ${changed} BEGIN INSERT INTO ${d} (${cols}) VALUES (${oldK.join(', ')}); END`,
    `CREATE TRIGGER ${quote(del)} AFTER DELETE ON ${table} BEGIN INSERT INTO ${d} (${cols}) VALUES (${oldK.join(', ')}); END`
  ]
}

function sameInfo(a: TableInfo, b: TableInfo): boolean {
  return a.sql === b.sql && a.name === b.name && JSON.stringify(a.key) === JSON.stringify(b.key) && a.rowidName === b.rowidName
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
  private schemaVersion = -1
  private dataVersion = -1
  private schemaPending = true
  /** Bumped whenever the schema changes, so an acknowledged batch clears only the schema it carried. */
  private schemaGen = 0
  /** The last batch read and not yet acknowledged. */
  private unacked: { source: Uint8Array; schemaGen: number } | null = null
  private acked: SourcePos | null = null
  private ackedApplied: SourcePos | null = null
  private lastAckWrite = 0

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

  async open(): Promise<void> {
    if (this.db !== null) return
    const db = openDatabase(this.path, { mustExist: true, busyTimeoutMs: this.busyTimeoutMs })
    this.db = db
    try {
      db.defaultSafeIntegers(true)
      const mode = db.pragma('journal_mode', { simple: true })
      if (mode !== 'wal') {
        this.log.warn('the database is not in WAL mode: capture reads may make the application wait for a lock', {
          path: this.path,
          journalMode: mode,
          hint: "Switch it once with: sqlite3 FILE 'PRAGMA journal_mode=WAL'"
        })
      }
      this.writeTx(() => {
        db.exec(`CREATE TABLE IF NOT EXISTS ${OWN_PREFIX}meta (k TEXT PRIMARY KEY, v) WITHOUT ROWID`)
        db.exec(
          `CREATE TABLE IF NOT EXISTS ${OWN_PREFIX}tables (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, sql TEXT NOT NULL, info TEXT NOT NULL, reset INTEGER NOT NULL DEFAULT 0)`
        )
        const layout = db.prepare(`SELECT v FROM ${OWN_PREFIX}meta WHERE k = 'layout'`).pluck().get() as bigint | undefined
        if (layout === undefined) {
          db.prepare(`INSERT INTO ${OWN_PREFIX}meta (k, v) VALUES ('layout', ?)`).run(BigInt(CAPTURE_LAYOUT))
        } else if (Number(layout) !== CAPTURE_LAYOUT) {
          throw MeshError.UNKNOWN_VERSION(`capture layout ${layout} in ${this.path} is newer than this software (${CAPTURE_LAYOUT})`)
        }
      })
      this.writeTx(() => this.syncSchema(true, this.adoptReplica()))
    } catch (err) {
      db.close()
      this.db = null
      throw sqliteError(err, this.path, 'cannot prepare capture in')
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
    const has = db.prepare(`SELECT count(*) FROM main.sqlite_schema WHERE type = 'table' AND name = ?`).pluck().get(meta) as bigint
    if (has === 0n) return adopted
    const rows = new Map(
      (db.prepare(`SELECT k, v FROM ${meta} WHERE k IN ('tables', 'objects')`).all() as Array<{ k: string; v: string }>).map((r) => [r.k, r.v])
    )
    const tables = JSON.parse(rows.get('tables') ?? '[]') as Array<{ id: number; name: string; sql: string }>
    const objects = JSON.parse(rows.get('objects') ?? '[]') as SchemaObject[]
    const existing = new Map(readTables(db).tables.map((t) => [t.name, t]))
    let max = 0
    for (const t of tables) {
      if (existing.get(t.name)?.sql === t.sql) adopted.set(t.name, t.id)
      max = Math.max(max, t.id)
    }
    const next = db.prepare(`SELECT v FROM ${OWN_PREFIX}meta WHERE k = 'next_table'`).pluck().get() as bigint | undefined
    db.prepare(`INSERT OR REPLACE INTO ${OWN_PREFIX}meta (k, v) VALUES ('next_table', ?)`).run(BigInt(Math.max(max + 1, Number(next ?? 1n))))
    for (const o of objects) {
      if (o.type !== 'trigger') continue
      const exists = db.prepare(`SELECT count(*) FROM main.sqlite_schema WHERE name = ?`).pluck().get(o.name) as bigint
      if (exists === 0n) db.exec(o.sql)
    }
    // The database is live now: every program may write it.
    dropGuards(db)
    db.exec(`DROP TABLE ${meta}`)
    this.log.info('promoted replica adopted as the live database; nothing copied', { path: this.path, tables: adopted.size })
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
          this.log.warn(MeshError.CANNOT_CAPTURE(`table ${s.table} is not captured: ${s.reason}`).message, { table: s.table })
        }
      }
      this.skippedTables = skipped
      const rows = db.prepare(`SELECT id, name, sql, info, reset FROM ${OWN_PREFIX}tables`).all() as Array<{
        id: bigint
        name: string
        sql: string
        info: string
        reset: bigint
      }>
      const byName = new Map(rows.map((r) => [r.name, r]))
      const triggers = new Set(
        db
          .prepare(`SELECT name FROM main.sqlite_schema WHERE type = 'trigger' AND name LIKE '${OWN_PREFIX}t%'`)
          .pluck()
          .all() as string[]
      )
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
        const v = db.prepare(`SELECT v FROM ${OWN_PREFIX}meta WHERE k = 'next_table'`).pluck().get() as bigint | undefined
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
          const present = triggerNames(id).every((n) => triggers.has(n)) && changeTables.has(changeTable(id))
          const arityOk = present && this.changeTableArity(id) === (t.key.length || 1)
          if (!sameInfo(old, t) || !present || !arityOk) {
            if (present && arityOk) {
              this.log.info('table definition changed: it is resent in full', { table: t.name })
            } else {
              this.log.warn(
                MeshError.CORRUPT_CHANGE(`capture triggers or change table of ${t.name} were missing or altered`).message,
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
          }
        }
        if (install) {
          for (const n of triggerNames(id)) db.exec(`DROP TRIGGER IF EXISTS ${quote(n)}`)
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
        this.tables.set(id, this.prepareTable(id, t, reset, this.tables.get(id)?.mark ?? 0))
      }
      for (const row of rows) {
        const id = Number(row.id)
        if (keep.has(id)) continue
        for (const n of triggerNames(id)) db.exec(`DROP TRIGGER IF EXISTS ${quote(n)}`)
        db.exec(`DROP TABLE IF EXISTS ${quote(changeTable(id))}`)
        db.prepare(`DELETE FROM ${OWN_PREFIX}tables WHERE id = ?`).run(BigInt(id))
        this.tables.delete(id)
      }
      this.objects = readObjects(db, new Set(wanted.map((t) => t.name)))
    })
    this.schemaVersion = Number(db.pragma('schema_version', { simple: true }))
    this.schemaPending = true
    this.schemaGen++
  }

  private changeTableArity(id: number): number {
    const cols = this.conn.prepare(`PRAGMA main.table_info(${quote(changeTable(id))})`).all() as Array<{ name: string }>
    if (cols.length === 0 || cols[0].name !== 'seq') return -1
    return cols.length - 1
  }

  private prepareTable(id: number, info: TableInfo, reset: number, mark: number): Captured {
    const db = this.conn
    const table = quote(info.name)
    const d = quote(changeTable(id))
    const arity = info.key.length === 0 ? 1 : info.key.length
    const kcols = Array.from({ length: arity }, (_, i) => `k${i}`).join(', ')
    const cols = info.columns.map((col) => quote(col.name))
    const select = info.key.length === 0 ? [info.rowidName!, ...cols] : cols
    const where =
      info.key.length === 0
        ? `${info.rowidName} = ?`
        : info.key.map((i) => `${quote(info.columns[i].name)} IS ?`).join(' AND ')
    return {
      id,
      info,
      arity,
      mark,
      reset,
      ackReset: 0,
      lookup: db.prepare(`SELECT ${select.join(', ')} FROM ${table} WHERE ${where}`).raw(true),
      keys: db.prepare(`SELECT DISTINCT ${kcols} FROM ${d} WHERE seq > ? AND seq <= ?`).raw(true),
      maxSeq: db.prepare(`SELECT max(seq) FROM ${d}`).pluck(),
      all: db.prepare(`SELECT ${select.join(', ')} FROM ${table}`).raw(true)
    }
  }

  async resume(source: Uint8Array | null): Promise<void> {
    if (source === null) return
    this.acknowledge(source)
    this.flushAck(true)
  }

  async schema(): Promise<SchemaEntry> {
    this.syncSchema(false)
    return this.schemaEntry([])
  }

  private schemaEntry(reset: number[]): SchemaEntry {
    const tables = [...this.tables.values()].sort((a, b) => a.id - b.id).map((t) => toTableDef(t.id, t.info))
    return { kind: 'schema', more: false, tables, objects: this.objects, reset }
  }

  async *snapshot(opts: { chunkRows?: number } = {}): AsyncIterable<SnapshotChunk> {
    const chunkRows = opts.chunkRows ?? 5000
    this.syncSchema(false)
    const tables = [...this.tables.values()].sort((a, b) => a.id - b.id)
    // The snapshot resends every table in full, which is what a pending reset asks for: the next read need
    // not resend them again, and its acknowledge clears the resets in the database.
    for (const t of tables) {
      if (t.reset > 0) t.ackReset = t.reset
      t.reset = 0
    }
    for (const t of tables) {
      // Pages in short read transactions: no long lock on the origin. Rows changed while this runs are in
      // the change table, so the first batch after the snapshot makes the replica exact. Rowid tables page by
      // rowid, which is never NULL (a declared key may hold NULLs in legacy SQLite tables).
      const { info } = t
      const cols = info.columns.map((col) => quote(col.name))
      const byRowid = info.rowidName !== null
      const order = byRowid ? [info.rowidName!] : info.key.map((i) => quote(info.columns[i].name))
      const select = [...(byRowid ? [info.rowidName!] : []), ...cols]
      const strip = byRowid && info.key.length > 0 ? 1 : 0
      const pageKey = byRowid ? [0] : info.key
      const from = quote(info.name)
      const orderBy = order.join(', ')
      const first = this.conn.prepare(`SELECT ${select.join(', ')} FROM ${from} ORDER BY ${orderBy} LIMIT ?`).raw(true)
      const next = this.conn
        .prepare(
          `SELECT ${select.join(', ')} FROM ${from} WHERE (${orderBy}) > (${order.map(() => '?').join(', ')}) ORDER BY ${orderBy} LIMIT ?`
        )
        .raw(true)
      let last: Value[] | null = null
      for (;;) {
        let page: Value[][]
        try {
          page = (last === null ? first.all(chunkRows) : next.all(...last, chunkRows)) as Value[][]
        } catch (err) {
          throw sqliteError(err, this.path, `cannot read table ${info.name} of`)
        }
        if (page.length === 0) break
        const tail = page[page.length - 1]
        last = pageKey.map((i) => tail[i])
        const rows = strip ? page.map((r) => r.slice(strip)) : page
        yield { changes: [{ table: t.id, upserts: rows, deletes: [] }], rows: rows.length }
        if (page.length < chunkRows) break
      }
    }
  }

  async read(): Promise<CaptureBatch | null> {
    const db = this.conn
    let dv: number
    try {
      dv = Number(db.pragma('data_version', { simple: true }))
      if (dv !== this.dataVersion) this.syncSchema(false)
    } catch (err) {
      throw sqliteError(err, this.path, 'cannot read')
    }
    const pending = this.unacked !== null || [...this.tables.values()].some((t) => t.reset > 0)
    if (dv === this.dataVersion && !this.schemaPending && !pending) {
      this.flushAck(false)
      return null
    }
    let batch: CaptureBatch | null
    try {
      batch = db.transaction(() => this.readInTx())()
    } catch (err) {
      throw sqliteError(err, this.path, 'cannot read changes from')
    }
    this.dataVersion = dv
    this.flushAck(false)
    return batch
  }

  private readInTx(): CaptureBatch | null {
    const changes: TableChanges[] = []
    const pos: SourcePos = { tables: [] }
    const reset: number[] = []
    let rows = 0
    let any = false
    for (const t of [...this.tables.values()].sort((a, b) => a.id - b.id)) {
      const max = Number((t.maxSeq.get() as bigint | null) ?? 0n)
      const to = Math.max(max, t.mark)
      if (t.reset > 0) {
        const all = (t.all.all() as Value[][])
        changes.push({ table: t.id, upserts: all, deletes: [] })
        reset.push(t.id)
        rows += all.length
        any = true
      } else if (max > t.mark) {
        const upserts: Value[][] = []
        const deletes: Value[][] = []
        for (const key of t.keys.iterate(t.mark, max) as Iterable<Value[]>) {
          if (!this.validKey(t, key)) {
            this.log.warn(MeshError.CORRUPT_CHANGE(`change row for table ${t.info.name} holds an impossible key`).message, {
              table: t.info.name
            })
            continue
          }
          const row = t.lookup.get(...key) as Value[] | undefined
          if (row === undefined) deletes.push(key)
          else upserts.push(row)
        }
        if (upserts.length || deletes.length) changes.push({ table: t.id, upserts, deletes })
        rows += upserts.length + deletes.length
        any = true
      }
      pos.tables.push({ id: t.id, seq: to, reset: t.reset > 0 ? t.reset : t.ackReset })
    }
    if (!any && !this.schemaPending) return null
    // Nothing moves here: marks, resets and the pending schema move only in ack(), so a batch whose append
    // failed is read again, whole, by the next read().
    const schema = this.schemaPending || reset.length > 0 ? this.schemaEntry(reset) : null
    const source = c.encode(sourceEnc, pos)
    this.unacked = { source, schemaGen: schema ? this.schemaGen : -1 }
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
      dv = Number(db.pragma('data_version', { simple: true }))
      if (dv !== this.dataVersion) this.syncSchema(false)
      this.flushAck(false)
    } catch (err) {
      throw sqliteError(err, this.path, 'cannot read')
    }
    const plan: Array<{ t: Captured; max: number; reset: boolean }> = []
    try {
      db.exec('BEGIN')
      for (const t of [...this.tables.values()].sort((a, b) => a.id - b.id)) {
        plan.push({ t, max: Number((t.maxSeq.get() as bigint | null) ?? 0n), reset: t.reset > 0 })
      }
    } catch (err) {
      if (db.inTransaction) db.exec('ROLLBACK')
      throw sqliteError(err, this.path, 'cannot read changes from')
    }
    const reset = plan.filter((p) => p.reset).map((p) => p.t.id)
    const schema = this.schemaPending || reset.length > 0 ? this.schemaEntry(reset) : null
    const schemaGen = this.schemaGen
    const pos: SourcePos = {
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
        let changes: TableChanges[] = []
        let bytes = 0
        let n = 0
        for (const p of plan) {
          const { t } = p
          if (!p.reset && p.max <= t.mark) continue
          let cur: TableChanges = { table: t.id, upserts: [], deletes: [] }
          changes.push(cur)
          const it = (p.reset ? t.all.iterate() : t.keys.iterate(t.mark, p.max)) as Iterable<Value[]>
          for (const r of it) {
            if (p.reset) cur.upserts.push(r)
            else if (!self.validKey(t, r)) {
              const e = MeshError.CORRUPT_CHANGE(`change row for table ${t.info.name} holds an impossible key`)
              self.log.warn(e.message, { table: t.info.name })
              continue
            } else {
              const row = t.lookup.get(...r) as Value[] | undefined
              if (row === undefined) cur.deletes.push(r)
              else cur.upserts.push(row)
            }
            bytes += rowSize(cur.upserts.length > 0 ? cur.upserts[cur.upserts.length - 1] : r)
            n++
            if (bytes >= budgetBytes) {
              rows += n
              yield { changes: changes.filter(nonEmpty), rows: n }
              changes = []
              cur = { table: t.id, upserts: [], deletes: [] }
              changes.push(cur)
              bytes = 0
              n = 0
            }
          }
        }
        rows += n
        yield { changes: changes.filter(nonEmpty), rows: n }
        done = true
        self.unacked = { source, schemaGen: schema ? schemaGen : -1 }
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
    if (this.unacked !== null || this.schemaPending || this.streaming) return null
    const db = this.conn
    try {
      // One read transaction: the change tables say nothing is pending, and the digest reads that same state.
      return db.transaction(() => {
        for (const t of this.tables.values()) {
          if (t.reset > 0 || Number((t.maxSeq.get() as bigint | null) ?? 0n) > t.mark) return null
        }
        const captured = new Set([...this.tables.values()].map((t) => t.info.name))
        return digestTables(db, readTables(db).tables.filter((t) => captured.has(t.name)))
      })()
    } catch (err) {
      throw sqliteError(err, this.path, 'cannot take a checkpoint of')
    }
  }

  private validKey(t: Captured, key: Value[]): boolean {
    if (key.length !== t.arity) return false
    if (t.info.key.length === 0) return typeof key[0] === 'bigint'
    if (t.info.withoutRowid) return key.every((k) => k !== null)
    if (t.info.key.length === 1 && t.info.columns[t.info.key[0]].type.toUpperCase() === 'INTEGER') {
      return typeof key[0] === 'bigint'
    }
    return true
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
      this.unacked = null
    }
    this.acked = pos
  }

  /** Deletes acknowledged change rows and clears acknowledged resets, at most every ackIntervalMs. */
  private flushAck(force: boolean): void {
    const pos = this.acked
    if (pos === null || pos === this.ackedApplied) return
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
          if (t.reset > 0) db.prepare(`UPDATE ${OWN_PREFIX}tables SET reset = 0 WHERE id = ? AND reset = ?`).run(BigInt(t.id), BigInt(t.reset))
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

