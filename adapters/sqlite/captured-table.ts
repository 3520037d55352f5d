/**
 * Reading one captured table: the statements prepared for it (prepareTable), and its changes in a range of its
 * change table (changesOf) or all its rows (readAll, upsertsOf), with TEXT that is not UTF-8 kept as its bytes.
 * Each runs in the caller's read transaction; none moves a mark (SqliteCapture.ack does). A snapshot's pages of
 * a table (pagesOf) each take a read transaction of their own.
 */
import type Database from 'better-sqlite3'
import { MeshError, type Value } from '../../protocol/index.ts'
import type { Logger, SnapshotChunk } from '../types.ts'
import { changeTable } from './capture-triggers.ts'
import { keyColumns, quote, sqliteError, type DB, type TableInfo } from './common.ts'
import { RawAware, bindValue, exactColumns, exactRow, hasRawText, mayHoldRawText } from './text.ts'

/** A captured table: its change table's position and the statements that read it. */
export interface Captured {
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
  lookup: RawAware
  /** The same lookup, reading storage classes and TEXT bytes (for rows with TEXT that is not UTF-8). */
  lookupExact: RawAware
  keysExact: Database.Statement
  /**
   * The rows of the keys changed in a range of seq, in one join (no lookup per key): each key that is a valid
   * key (validKey) and names a row. `gone` gives the others: keys of rows that are no longer there, and keys no
   * row could have (a damaged change row, warned about and skipped).
   */
  changed: Database.Statement
  gone: Database.Statement
  maxSeq: Database.Statement
  all: Database.Statement
  allExact: Database.Statement
}

/** One change read by changesOf. */
export type Change = ['u' | 'd', Value[]] | ['again', null]
export const AGAIN: Change = ['again', null]

/** A table's rows as changes (a resend): ['again'] at the first that may hold TEXT not UTF-8, unless exact. */
export function* upsertsOf(rows: Iterable<unknown>, exact: boolean): Generator<Change> {
  for (const r of rows as Iterable<unknown[]>) {
    if (exact) yield ['u', exactRow(r)]
    else if (mayHoldRawText(r)) return yield AGAIN
    else yield ['u', r as Value[]]
  }
}

export function prepareTable(db: DB, id: number, info: TableInfo, reset: number, mark: number): Captured {
  const table = quote(info.name)
  const d = quote(changeTable(id))
  const arity = info.key.length === 0 ? 1 : info.key.length
  const kcols = Array.from({ length: arity }, (_, i) => `k${i}`).join(', ')
  const cols = info.columns.map((col) => quote(col.name))
  const select = info.key.length === 0 ? [info.rowidName!, ...cols] : cols
  const where = (ph: (i: number) => string) =>
    info.key.length === 0
      ? `${info.rowidName} = ${ph(0)}`
      : keyColumns(info)
          .map((c, i) => `${c} IS ${ph(i)}`)
          .join(' AND ')
  const exact = exactColumns(select).join(', ')
  const kexact = exactColumns(kcols.split(', ')).join(', ')
  // The join: DISTINCT keys of the range, each row found by its key (IS: a NULL in a key matches as
  // lookupRow's WHERE does), valid keys only, as validKey says in SQL.
  const distinct = `SELECT DISTINCT ${kcols} FROM ${d} WHERE seq > ? AND seq <= ?`
  const on =
    info.key.length === 0
      ? `t.${info.rowidName} IS k.k0`
      : keyColumns(info, 't')
          .map((c, i) => `${c} IS k.k${i}`)
          .join(' AND ')
  const intKey = info.key.length === 0 || info.rowidKey === true
  const valid = intKey
    ? `typeof(k.k0) = 'integer'`
    : info.withoutRowid
      ? info.key.map((_, i) => `k.k${i} IS NOT NULL`).join(' AND ')
      : '1'
  const tcols = select.map((x) => `t.${x}`).join(', ')
  const intKeyName = info.key.length === 0 ? info.rowidName : quote(info.columns[info.key[0]].name)
  const found = `SELECT 1 FROM ${table} AS t WHERE ${on}`
  const kk = kcols
    .split(', ')
    .map((k) => `k.${k}`)
    .join(', ')
  return {
    id,
    info,
    arity,
    mark,
    reset,
    ackReset: 0,
    lookup: new RawAware(db, (ph) => `SELECT ${select.join(', ')} FROM ${table} WHERE ${where(ph)}`, { raw: true }),
    lookupExact: new RawAware(db, (ph) => `SELECT ${exact} FROM ${table} WHERE ${where(ph)}`, { raw: true }),
    keysExact: db.prepare(`SELECT DISTINCT ${kexact} FROM ${d} WHERE seq > ? AND seq <= ?`).raw(true),
    // An integer key (rowid): the keys as an IN list, each row found by its rowid, in key order (SQLite builds
    // the list once; measured about 7% less CPU than the DISTINCT join for 200k keys). Integer keys only, as
    // `valid` says; each key once either way.
    changed: db
      .prepare(
        intKey
          ? `SELECT ${tcols} FROM ${table} AS t WHERE t.${intKeyName} ` +
              `IN (SELECT k0 FROM ${d} WHERE seq > ? AND seq <= ? AND typeof(k0) = 'integer')`
          : `SELECT ${tcols} FROM (${distinct}) AS k JOIN ${table} AS t ON ${on} WHERE ${valid}`
      )
      .raw(),
    gone: db.prepare(`SELECT ${kk} FROM (${distinct}) AS k WHERE NOT (${valid}) OR NOT EXISTS (${found})`).raw(),
    maxSeq: db.prepare(`SELECT max(seq) FROM ${d}`).pluck(),
    all: db.prepare(`SELECT ${select.join(', ')} FROM ${table}`).raw(true),
    allExact: db.prepare(`SELECT ${exact} FROM ${table}`).raw(true)
  }
}

/**
 * The changes of `t` with seq in (from, to], one per key: ['u', row] for a row that is there, ['d', key] for
 * one that is gone; a key no row can have is warned about and skipped. Without `exact`: rows and keys from
 * one join (Captured.changed, .gone), and ['again'] as soon as a value may be TEXT that is not UTF-8 (the
 * caller starts the table again with `exact`). With `exact`: keys read with their bytes, a lookup each.
 */
export function* changesOf(t: Captured, from: number, to: number, exact: boolean, log: Logger): Generator<Change> {
  if (!exact) {
    for (const row of t.changed.iterate(from, to) as Iterable<Value[]>) {
      if (mayHoldRawText(row)) return yield AGAIN
      yield ['u', row]
    }
    for (const key of t.gone.iterate(from, to) as Iterable<Value[]>) {
      if (mayHoldRawText(key)) return yield AGAIN
      if (validKey(t, key)) yield ['d', key]
      else impossibleKey(t, log)
    }
    return
  }
  for (const key of (t.keysExact.all(from, to) as unknown[][]).map(exactRow)) {
    if (!validKey(t, key)) {
      impossibleKey(t, log)
      continue
    }
    // A key holding a NULL (SQLite allows it in an ordinary table's PRIMARY KEY) may be several rows: all of
    // them go out, and apply replaces the whole group (as the join above finds them all, with IS).
    const rows = key.includes(null) && t.info.key.length > 0 ? lookupRows(t, key) : [lookupRow(t, key)]
    if (rows[0] === undefined) yield ['d', key]
    else for (const row of rows) yield ['u', row!]
  }
}

/** Every row with this key (one holding a NULL), as lookupRow reads one; none: [undefined]. */
function lookupRows(t: Captured, key: Value[]): Array<Value[] | undefined> {
  const raw = hasRawText(key)
  const args = raw ? key.map(bindValue) : key
  const rows = (raw ? t.lookup.stmt(key) : t.lookup.plain).all(...args) as Value[][]
  if (rows.length === 0) return [undefined]
  if (!rows.some(mayHoldRawText)) return rows
  return (t.lookupExact.stmt(key).all(...args) as unknown[][]).map(exactRow)
}

function impossibleKey(t: Captured, log: Logger): void {
  const e = MeshError.CORRUPT_CHANGE(`change row for table ${t.info.name} holds an impossible key`)
  log.warn(e.message, { table: t.info.name })
}

/** The row with this key as it is now, or undefined; TEXT that is not UTF-8 kept as its bytes. */
function lookupRow(t: Captured, key: Value[]): Value[] | undefined {
  // Keys come from the change table as better-sqlite3 values (bytes as Buffers): bound as they are, unless raw.
  const raw = hasRawText(key)
  const args = raw ? key.map(bindValue) : key
  const row = (raw ? t.lookup.stmt(key) : t.lookup.plain).get(...args) as Value[] | undefined
  if (row === undefined || !mayHoldRawText(row)) return row
  const exact = t.lookupExact.stmt(key).get(...args) as unknown[] | undefined
  return exact === undefined ? undefined : exactRow(exact)
}

/** Every row of the table (a resend); TEXT that is not UTF-8 kept as its bytes. */
export function readAll(t: Captured): Value[][] {
  const all = t.all.all() as Value[][]
  if (!all.some(mayHoldRawText)) return all
  return (t.allExact.all() as unknown[][]).map(exactRow)
}

function validKey(t: Captured, key: Value[]): boolean {
  if (key.length !== t.arity) return false
  if (t.info.key.length === 0) return typeof key[0] === 'bigint'
  if (t.info.withoutRowid) return key.every((k) => k !== null)
  if (t.info.rowidKey === true) return typeof key[0] === 'bigint'
  return true
}

/**
 * A snapshot's chunks of one table, of `chunkRows` rows each, every page read in a read transaction of its own
 * on `conn()` (the capture's connection, asked for at each page).
 */
export function* pagesOf(conn: () => DB, path: string, t: Captured, chunkRows: number): Generator<SnapshotChunk> {
  // Pages in short read transactions: no long lock on the origin. Rows changed while this runs are in
  // the change table, so the first batch after the snapshot makes the replica exact. Rowid tables page by
  // rowid, which is never NULL (a declared key may hold NULLs in legacy SQLite tables).
  const { info } = t
  const cols = info.columns.map((col) => quote(col.name))
  const byRowid = info.rowidName !== null
  const order = byRowid ? [info.rowidName!] : keyColumns(info)
  const select = [...(byRowid ? [info.rowidName!] : []), ...cols]
  const strip = byRowid && info.key.length > 0 ? 1 : 0
  const pageKey = byRowid ? [0] : info.key
  const from = quote(info.name)
  const orderBy = order.join(', ')
  // A page is read in the plain form, and again in the exact form (TEXT bytes) when it holds U+FFFD; the
  // key it continues from may then be raw TEXT, bound by a variant that casts it back.
  const pageSql = (cols: string, after: boolean) => (ph: (i: number) => string) =>
    after
      ? `SELECT ${cols} FROM ${from} WHERE (${orderBy}) > (${order.map((_, i) => ph(i)).join(', ')}) ` +
        `ORDER BY ${orderBy} LIMIT ${ph(order.length)}`
      : `SELECT ${cols} FROM ${from} ORDER BY ${orderBy} LIMIT ${ph(0)}`
  const exactCols = exactColumns(select).join(', ')
  const first = new RawAware(conn(), pageSql(select.join(', '), false), { raw: true })
  const next = new RawAware(conn(), pageSql(select.join(', '), true), { raw: true })
  const firstExact = new RawAware(conn(), pageSql(exactCols, false), { raw: true })
  const nextExact = new RawAware(conn(), pageSql(exactCols, true), { raw: true })
  const readPage = (last: Value[] | null): Value[][] => {
    const args: Value[] = last === null ? [BigInt(chunkRows)] : [...last, BigInt(chunkRows)]
    const bound = args.map(bindValue)
    const rows = (last === null ? first : next).stmt(args).all(...bound) as Value[][]
    if (!rows.some(mayHoldRawText)) return rows
    return ((last === null ? firstExact : nextExact).stmt(args).all(...bound) as unknown[][]).map(exactRow)
  }
  let last: Value[] | null = null
  for (;;) {
    let page: Value[][]
    try {
      page = conn().transaction(readPage)(last)
    } catch (err) {
      throw sqliteError(err, path, `cannot read table ${info.name} of`)
    }
    if (page.length === 0) break
    const tail = page[page.length - 1]
    last = pageKey.map((i) => tail[i])
    const rows = strip ? page.map((r) => r.slice(strip)) : page
    yield { changes: [{ table: t.id, upserts: rows, deletes: [] }], rows: rows.length }
    if (page.length < chunkRows) break
  }
}
