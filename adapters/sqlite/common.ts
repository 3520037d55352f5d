/**
 * What the SQLite capture and apply sides share: opening a database with clear errors, quoting, and reading
 * a table's definition.
 */
import Database from './better-sqlite3.ts'
import { createHash } from 'node:crypto'
import fs from 'node:fs'
import { MeshError, RawText, type ColumnDef, type SchemaObject, type TableDef } from '../../protocol/index.ts'
import { exactColumns, exactRow, mayHoldRawText } from './text.ts'

export type DB = Database.Database

/** Prefix of every object branchmesh creates in a database; user objects with it are never captured. */
export const OWN_PREFIX = '_mesh_'

/**
 * The guard of a replica's tables: BEFORE INSERT, UPDATE and DELETE triggers that call this SQL function,
 * which only branchmesh's own connections define (openDatabase registers it, returning 0: pass). Any other
 * program (the till still pointed at a copy or at a fenced old origin, the sqlite3 shell) fails to prepare a
 * write with "no such function: branchmesh_replica_is_read_only", before anything is written. A program that
 * defines the function itself passes; that is still seen afterwards (SqliteApply.writtenByOthers).
 * The name is the message: it is all SQLite shows the application. A trigger runs per row, which would cost
 * apply about a fifth of its time, so apply drops the guard of a table it writes many rows into inside its
 * own transaction and creates it again before the COMMIT (SqliteApply.liftGuard): no other connection sees
 * the table unguarded.
 */
export const GUARD_FUNCTION = 'branchmesh_replica_is_read_only'
const GUARD_TRIGGER = `${OWN_PREFIX}g`

const GUARD_OPS = ['INSERT', 'UPDATE', 'DELETE'] as const
const guardName = (id: number, op: (typeof GUARD_OPS)[number]) => quote(`${GUARD_TRIGGER}${id}_${op.toLowerCase()}`)

/** The guard triggers of replica table `id` (see GUARD_FUNCTION). */
export function guardTriggersSql(id: number, table: string): string[] {
  const message = 'branchmesh: this database is a replica; write at the origin (mesh status names it)'
  return GUARD_OPS.map(
    (op) =>
      `CREATE TRIGGER IF NOT EXISTS ${guardName(id, op)} BEFORE ${op} ON ${quote(table)} ` +
      `WHEN ${GUARD_FUNCTION}() BEGIN SELECT RAISE(ABORT, '${message}'); END`
  )
}

/** Drops the guard triggers of replica table `id` (apply lifts a guard inside its own transaction only). */
export function dropGuardSql(id: number): string[] {
  return GUARD_OPS.map((op) => `DROP TRIGGER IF EXISTS ${guardName(id, op)}`)
}

/** Drops every guard trigger: the database becomes writable by any program (a restore, a promotion). */
export function dropGuards(db: DB): void {
  const names = db
    .prepare(`SELECT name FROM main.sqlite_schema WHERE type = 'trigger' AND substr(name, 1, ?) = ?`)
    .pluck()
    .all(GUARD_TRIGGER.length, GUARD_TRIGGER) as string[]
  for (const n of names) db.exec(`DROP TRIGGER IF EXISTS ${quote(n)}`)
}

/**
 * Table id 0 of a SQLite log carries the origin's `sqlite_sequence` (the next AUTOINCREMENT numbers): rows
 * `[table name, seq]`, deletes `[table name]`; it has no table definition. Captured tables start at id 1.
 */
export const SEQUENCE_TABLE = 0

export function quote(name: string): string {
  return `"${name.replaceAll('"', '""')}"`
}

/** Turns a better-sqlite3 / SQLite error into a MeshError that says what to do. */
export function sqliteError(err: unknown, path: string, doing: string): MeshError {
  if (err instanceof MeshError) return err
  const code = (err as { code?: string })?.code ?? ''
  const text = err instanceof Error ? err.message : String(err)
  const context = { path, sqliteCode: code }
  const msg = `${doing} ${path}: ${text}`
  if (code === 'SQLITE_NOTADB' || code === 'SQLITE_CORRUPT' || code.startsWith('SQLITE_CORRUPT_')) {
    return MeshError.NOT_SQLITE(msg, { context, cause: err })
  }
  if (code.startsWith('SQLITE_BUSY') || code.startsWith('SQLITE_LOCKED')) {
    return MeshError.DATABASE_LOCKED(msg, { context, cause: err })
  }
  if (code === 'SQLITE_FULL' || (err as NodeJS.ErrnoException)?.code === 'ENOSPC') {
    return MeshError.DISK_FULL(msg, { context, cause: err })
  }
  if (code.startsWith('SQLITE_READONLY')) return MeshError.READ_ONLY(msg, { context, cause: err })
  if (code.startsWith('SQLITE_CANTOPEN')) {
    return MeshError.NOT_FOUND(msg, {
      context,
      cause: err,
      hint: 'Check that the file and its folder exist and that this user may read and write them.'
    })
  }
  if (code.startsWith('SQLITE_IOERR')) return MeshError.IO_ERROR(msg, { context, cause: err })
  return MeshError.DATABASE_ERROR(msg, { context, cause: err })
}

export interface OpenOptions {
  /** The file must exist already (an origin); a replica may be created. */
  mustExist: boolean
  busyTimeoutMs?: number
}

/** Opens a SQLite file and proves it is one (better-sqlite3 only finds out at the first query). */
export function openDatabase(path: string, opts: OpenOptions): DB {
  if (opts.mustExist) {
    let st: fs.Stats
    try {
      st = fs.statSync(path)
    } catch (err) {
      throw MeshError.NOT_FOUND(`no database at ${path}`, { context: { path }, cause: err })
    }
    if (!st.isFile()) throw MeshError.NOT_SQLITE(`${path} is not a file`, { context: { path } })
  }
  let db: DB
  try {
    db = new Database(path, { fileMustExist: opts.mustExist, timeout: opts.busyTimeoutMs ?? 5000 })
  } catch (err) {
    throw sqliteError(err, path, 'cannot open')
  }
  try {
    db.prepare('SELECT count(*) FROM sqlite_schema').get()
    // branchmesh's own connections pass a replica's guard (GUARD_FUNCTION).
    db.function(GUARD_FUNCTION, { deterministic: true }, () => 0)
  } catch (err) {
    db.close()
    throw sqliteError(err, path, 'cannot read')
  }
  return db
}

/** branchmesh's own tables: capture's state and change tables, a replica's bookkeeping. */
const OWN_TABLE = new RegExp(`^${OWN_PREFIX}(meta|tables|replica|d[0-9]+)$`)

/** A user table as capture and apply see it. */
export interface TableInfo {
  name: string
  sql: string
  /** Columns that travel in rows (not generated, not hidden). */
  columns: ColumnDef[]
  /** Indexes into `columns` of the key, in key order; empty for rowid identity. */
  key: number[]
  withoutRowid: boolean
  /**
   * For rowid tables, a name that addresses the rowid (one of rowid, _rowid_, oid not shadowed by a column);
   * null for WITHOUT ROWID tables. Tables with no declared key use it as their identity.
   */
  rowidName: string | null
  /**
   * Whether the key is the rowid itself (an INTEGER PRIMARY KEY), so it only ever holds integers. Not so for
   * `INTEGER PRIMARY KEY DESC` written as a column constraint (a quirk SQLite keeps): that column is an ordinary
   * key with integer affinity that may hold TEXT, REAL or NULL, and was once taken for the rowid by its type
   * alone, so capture skipped such rows as impossible keys and they never reached a replica. Absent in
   * TableInfo stored by older versions (only compared through sameInfo, which ignores it).
   */
  rowidKey?: boolean
  /**
   * The table's UNIQUE indexes other than its primary key, each as its columns with their collations (sorted by
   * index name); an index on an expression is left out (see triggerSql). Absent in TableInfo stored by versions
   * before it existed.
   */
  unique?: UniqueIndex[]
  /**
   * The collation of each key column in its PRIMARY KEY index (key order), where the PRIMARY KEY clause names
   * one (keyCollationsOf; else undefined): `PRIMARY KEY (k COLLATE NOCASE)` may differ from the column's own
   * collation, and two keys are the same row exactly when that index says so. Every comparison of keys
   * (capture's lookups, a snapshot's pages, apply's deletes) uses it (keyColumns). Absent in TableInfo stored
   * by older versions.
   */
  keyCollations?: string[]
  /** UNIQUE indexes on an expression, which the REPLACE-conflict triggers do not cover (capture warns). */
  expressionUnique?: string[]
}

/**
 * The key columns of `t` as SQL, each with its PRIMARY KEY collation (TableInfo.keyCollations), prefixed by
 * `alias.` if given. Comparing `col IS ?` alone would use the column's collation: with
 * `k TEXT, PRIMARY KEY (k COLLATE NOCASE)` a row 'a' replaced by 'A' and deleted stayed at a replica, and with
 * `k TEXT COLLATE NOCASE, PRIMARY KEY (k COLLATE BINARY)` deleting row 'A' deleted row 'a' too.
 */
export function keyColumns(
  t: { columns: Array<{ name: string }>; key: number[]; keyCollations?: string[] },
  alias = ''
): string[] {
  return t.key.map((k, i) => {
    const col = `${alias ? `${alias}.` : ''}${quote(t.columns[k].name)}`
    const coll = t.keyCollations?.[i]
    return coll === undefined ? col : `${col} COLLATE ${quote(coll)}`
  })
}

/**
 * The collations of the PRIMARY KEY index of `table` (see TableInfo.keyCollations), or undefined where they
 * cannot differ from the columns' own: only a PRIMARY KEY written as a table constraint can name a collation of
 * its own (`PRIMARY KEY (k COLLATE NOCASE)`), and only then is it looked up (from the key's index). Elsewhere no
 * COLLATE is written, which matters beyond taste: SQLite does not seek an index for a row value comparison
 * whose terms carry COLLATE, so a snapshot's pages of a composite key would each scan the table from its start.
 */
export function keyCollationsOf(db: DB, table: string, sql: string, keyLength: number): string[] | undefined {
  const clause = /PRIMARY\s+KEY\s*\(([^)]*)\)/i.exec(sql)
  if (keyLength === 0 || clause === null || !/\bCOLLATE\b/i.test(clause[1])) return undefined
  const indexes = db
    .prepare(`PRAGMA main.index_list(${quote(table)})`)
    .safeIntegers(false)
    .all() as Array<{
    name: string
    origin: string
  }>
  const pk = indexes.find((i) => i.origin === 'pk')
  if (pk === undefined) return undefined
  const cols = (
    db
      .prepare(`PRAGMA main.index_xinfo(${quote(pk.name)})`)
      .safeIntegers(false)
      .all() as Array<{
      coll: string
      key: number
    }>
  ).filter((c) => c.key === 1)
  return cols.length === keyLength ? cols.map((c) => c.coll) : undefined
}

/** One UNIQUE index over plain columns: `columns[i]` compared under `collations[i]`. */
export interface UniqueIndex {
  name: string
  columns: string[]
  collations: string[]
}

export interface UncapturableTable {
  table: string
  reason: string
}

/** Reads the user tables of the main schema; returns those that can be captured and those that cannot. */
export function readTables(db: DB): { tables: TableInfo[]; skipped: UncapturableTable[] } {
  const list = db.prepare('PRAGMA main.table_list').safeIntegers(false).all() as Array<{
    name: string
    type: string
    wr: number
  }>
  const sqlOf = new Map(
    (
      db.prepare("SELECT name, sql FROM main.sqlite_schema WHERE type = 'table'").all() as Array<{
        name: string
        sql: string
      }>
    ).map((r) => [r.name, r.sql])
  )
  const virtuals = list.filter((t) => t.type === 'virtual').map((t) => t.name)
  const tables: TableInfo[] = []
  const skipped: UncapturableTable[] = []
  for (const t of list) {
    if (t.name.startsWith('sqlite_')) continue
    if (t.name.startsWith(OWN_PREFIX)) {
      // Not captured, and before it was not said: a user table that happens to take branchmesh's prefix is named.
      if (!OWN_TABLE.test(t.name)) {
        skipped.push({
          table: t.name,
          reason: `its name starts with ${OWN_PREFIX}, which branchmesh keeps for its own tables: rename it`
        })
      }
      continue
    }
    if (t.type === 'view') continue
    if (t.type === 'virtual') {
      skipped.push({
        table: t.name,
        reason: 'virtual table (for example FTS or R*Tree): triggers cannot be created on it'
      })
      continue
    }
    if (t.type === 'shadow') {
      const owner = virtuals.find((v) => t.name.startsWith(`${v}_`)) ?? 'a virtual table'
      skipped.push({ table: t.name, reason: `shadow table of ${owner}, which is not captured` })
      continue
    }
    const xinfo = db
      .prepare(`PRAGMA main.table_xinfo(${quote(t.name)})`)
      .safeIntegers(false)
      .all() as Array<{
      name: string
      type: string
      notnull: number
      pk: number
      hidden: number
    }>
    const visible = xinfo.filter((c) => c.hidden === 0)
    const columns = visible.map((c) => ({ name: c.name, type: c.type, notNull: c.notnull === 1 }))
    const pk = visible
      .map((c, i) => ({ i, pk: c.pk }))
      .filter((c) => c.pk > 0)
      .sort((a, b) => a.pk - b.pk)
      .map((c) => c.i)
    if (xinfo.some((c) => c.pk > 0 && c.hidden !== 0)) {
      skipped.push({ table: t.name, reason: 'its primary key includes a generated column' })
      continue
    }
    let rowidName: string | null = null
    if (t.wr !== 1) {
      const names = new Set(xinfo.map((c) => c.name.toLowerCase()))
      rowidName = ['rowid', '_rowid_', 'oid'].find((n) => !names.has(n)) ?? null
      if (rowidName === null && pk.length === 0) {
        skipped.push({
          table: t.name,
          reason: 'it has no primary key and columns named rowid, _rowid_ and oid hide the row id'
        })
        continue
      }
    }
    // A declared key that is not the rowid has an index of its own (origin 'pk'); the rowid's alias has none.
    const indexes = db
      .prepare(`PRAGMA main.index_list(${quote(t.name)})`)
      .safeIntegers(false)
      .all() as Array<{
      name: string
      unique: number
      origin: string
    }>
    const rowidKey =
      t.wr !== 1 &&
      pk.length === 1 &&
      columns[pk[0]].type.toUpperCase() === 'INTEGER' &&
      !indexes.some((i) => i.origin === 'pk')
    const unique: UniqueIndex[] = []
    const expressionUnique: string[] = []
    for (const ix of indexes.filter((i) => i.unique === 1 && i.origin !== 'pk')) {
      const cols = (
        db
          .prepare(`PRAGMA main.index_xinfo(${quote(ix.name)})`)
          .safeIntegers(false)
          .all() as Array<{
          cid: number
          name: string | null
          coll: string
          key: number
        }>
      ).filter((c) => c.key === 1)
      // A rowid in the index (cid -1) conflicts only where the key does; an expression (cid -2) is not covered.
      if (cols.some((c) => c.cid === -2)) expressionUnique.push(ix.name)
      if (cols.some((c) => c.cid < 0 || c.name === null)) continue
      unique.push({ name: ix.name, columns: cols.map((c) => c.name!), collations: cols.map((c) => c.coll) })
    }
    unique.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
    tables.push({
      name: t.name,
      sql: sqlOf.get(t.name) ?? '',
      columns,
      key: pk,
      withoutRowid: t.wr === 1,
      rowidName,
      rowidKey,
      unique,
      keyCollations: keyCollationsOf(db, t.name, sqlOf.get(t.name) ?? '', pk.length),
      ...(expressionUnique.length > 0 ? { expressionUnique } : {})
    })
  }
  tables.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
  return { tables, skipped }
}

/** Indexes, views and triggers of the user tables (not branchmesh's own). */
export function readObjects(db: DB, tableNames: Set<string>): SchemaObject[] {
  const rows = db
    .prepare(
      "SELECT type, name, tbl_name AS tbl, sql FROM main.sqlite_schema WHERE type IN ('index', 'view', " +
        "'trigger') AND sql IS NOT NULL ORDER BY type, name"
    )
    .all() as Array<{ type: 'index' | 'view' | 'trigger'; name: string; tbl: string; sql: string }>
  return rows
    .filter((r) => !r.name.startsWith(OWN_PREFIX))
    .filter((r) => r.type === 'view' || tableNames.has(r.tbl))
    .map((r) => ({ type: r.type, name: r.name, table: r.tbl, sql: r.sql }))
}

export function toTableDef(id: number, t: TableInfo): TableDef {
  return { id, name: t.name, sql: t.sql, columns: t.columns, key: t.key }
}

/**
 * A value as text that keeps its SQLite storage class and exact bits (a REAL's 8 bytes, an INTEGER read as
 * bigint): two values are the same to SQLite exactly when their tags are equal. Used to compare databases.
 */
export function valueTag(v: unknown): string {
  if (v === null) return 'NULL'
  if (typeof v === 'bigint') return `INTEGER ${v.toString()}`
  if (typeof v === 'number') {
    const b = Buffer.alloc(8)
    b.writeDoubleBE(v)
    return `REAL ${b.toString('hex')} (${v})`
  }
  if (typeof v === 'string') return `TEXT ${JSON.stringify(v)}`
  // Not UTF-8: its bytes (a string never gets this tag, so the tags of valid TEXT are as they always were).
  if (v instanceof RawText) return `TEXT bytes ${Buffer.from(v.bytes).toString('hex')}`
  if (v instanceof Uint8Array) return `BLOB ${Buffer.from(v).toString('hex')}`
  throw new Error(`unexpected value ${String(v)}`)
}

/**
 * A digest of every row of `tables`, in key order (rowid order for tables with no key), each value with its
 * storage class: two databases with the same digest hold the same rows. The origin's capture and a replica
 * compute it the same way over the same tables (a checkpoint).
 */
export function digestTables(db: DB, tables: TableInfo[]): { digest: Uint8Array; rows: number } {
  let h = createHash('sha256')
  let rows = 0
  for (const t of [...tables].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
    const cols = t.columns.map((c) => quote(c.name))
    const keyless = t.key.length === 0
    const select = keyless ? [t.rowidName!, ...cols] : cols
    const order = keyless ? [t.rowidName!] : keyColumns(t)
    h.update(`table ${t.name}\n`)
    const from = `FROM ${quote(t.name)} ORDER BY ${order.join(', ')}`
    const stmt = db.prepare(`SELECT ${select.join(', ')} ${from}`).raw(true)
    stmt.safeIntegers(true)
    // A table with TEXT that is not UTF-8 is read again with its bytes, from the state before it.
    const before = h.copy()
    const counted = rows
    let raw = false
    for (const r of stmt.iterate() as Iterable<unknown[]>) {
      if (mayHoldRawText(r)) {
        raw = true
        break
      }
      h.update(r.map(valueTag).join('|'))
      h.update('\n')
      rows++
    }
    if (!raw) continue
    h = before
    rows = counted
    const exact = db.prepare(`SELECT ${exactColumns(select).join(', ')} ${from}`).raw(true)
    exact.safeIntegers(true)
    for (const r of exact.iterate() as Iterable<unknown[]>) {
      h.update(exactRow(r).map(valueTag).join('|'))
      h.update('\n')
      rows++
    }
  }
  return { digest: new Uint8Array(h.digest()), rows }
}
