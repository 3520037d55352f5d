/**
 * Whole-database operations used when a site's copy must go back to a state of the dataset's history
 * (fencing an old origin, or a replica that applied past the point where a new epoch branched off):
 *
 * - backupDatabase: a consistent copy of a live database (SQLite's online backup), kept before anything is
 *   rewritten, so nothing is ever dropped without a trace.
 * - replaceContents: makes a database hold exactly what another holds, in place and in one transaction. The
 *   application may keep its connection open: it sees the old contents or the new, never a mix. Everything
 *   in the target is replaced, capture triggers and change tables included, and the source's replica
 *   metadata comes along, so the target is a replica at the source's position afterwards.
 * - SQL text for rows, for the readable divergence file.
 */
import fs from 'node:fs'
import { RawText, type TableDef, type Value } from '../../protocol/index.ts'
import type { TableDiff } from '../types.ts'
import {
  dropGuards,
  openDatabase,
  quote,
  readTables,
  sqliteError,
  valueTag,
  type DB,
  type TableInfo
} from './common.ts'
import { exactColumns, exactRow } from './text.ts'

export async function backupDatabase(path: string, dest: string): Promise<void> {
  const db = openDatabase(path, { mustExist: true })
  try {
    await db.backup(dest)
    // A file to be read by a person: no -wal and -shm files appearing next to it when opened.
    const copy = openDatabase(dest, { mustExist: true })
    try {
      copy.pragma('journal_mode = DELETE')
    } finally {
      copy.close()
    }
  } catch (err) {
    fs.rmSync(dest, { force: true })
    throw sqliteError(err, path, 'cannot back up')
  } finally {
    db.close()
  }
}

/**
 * What a database file is to branchmesh: 'origin' (capture is installed), 'replica' (apply made it),
 * 'plain' (neither: not ours), or 'none' (no file).
 */
export function databaseRole(path: string): 'origin' | 'replica' | 'plain' | 'none' {
  if (!fs.existsSync(path)) return 'none'
  const db = openDatabase(path, { mustExist: true })
  try {
    const has = (name: string) =>
      (db.prepare('SELECT count(*) FROM main.sqlite_schema WHERE name = ?').pluck().get(name) as number) > 0
    if (has('_mesh_replica')) return 'replica'
    if (has('_mesh_meta')) return 'origin'
    return 'plain'
  } finally {
    db.close()
  }
}

interface SchemaRow {
  type: string
  name: string
  sql: string | null
}

export function replaceContents(target: string, source: string): void {
  const db = openDatabase(target, { mustExist: false })
  try {
    db.pragma('foreign_keys = OFF')
    db.prepare('ATTACH DATABASE ? AS src').run(source)
    try {
      db.transaction(() => {
        const mine = db
          .prepare(`SELECT type, name, sql FROM main.sqlite_schema WHERE name NOT LIKE 'sqlite_%'`)
          .all() as SchemaRow[]
        // Triggers first: dropping and refilling tables must fire nothing.
        for (const type of ['trigger', 'view', 'table']) {
          for (const o of mine.filter((r) => r.type === type))
            db.exec(`DROP ${type.toUpperCase()} IF EXISTS main.${quote(o.name)}`)
        }
        const theirs = db
          .prepare(`SELECT type, name, sql FROM src.sqlite_schema WHERE name NOT LIKE 'sqlite_%' ORDER BY rowid`)
          .all() as SchemaRow[]
        for (const t of theirs.filter((r) => r.type === 'table' && r.sql)) {
          db.exec(t.sql!)
          const cols = db.prepare(`SELECT name, hidden FROM pragma_table_xinfo(?, 'src')`).all(t.name) as Array<{
            name: string
            hidden: number
          }>
          const stored = cols.filter((c) => c.hidden === 0).map((c) => quote(c.name))
          const withoutRowid =
            (db
              .prepare(`SELECT wr FROM pragma_table_list WHERE schema = 'src' AND name = ?`)
              .pluck()
              .get(t.name) as number) === 1
          const names = new Set(cols.map((c) => c.name.toLowerCase()))
          const rowid = withoutRowid ? null : (['rowid', '_rowid_', 'oid'].find((n) => !names.has(n)) ?? null)
          const list = rowid ? [rowid, ...stored] : stored
          db.exec(
            `INSERT INTO main.${quote(t.name)} (${list.join(', ')}) SELECT ${list.join(', ')} FROM src.${quote(t.name)}`
          )
        }
        for (const o of theirs.filter((r) => r.type !== 'table' && r.sql)) db.exec(o.sql!)
        const seq = (schema: string) =>
          (db
            .prepare(`SELECT count(*) FROM ${schema}.sqlite_schema WHERE name = 'sqlite_sequence'`)
            .pluck()
            .get() as number) > 0
        if (seq('main') && seq('src')) {
          db.exec('DELETE FROM main.sqlite_sequence')
          db.exec('INSERT INTO main.sqlite_sequence (name, seq) SELECT name, seq FROM src.sqlite_sequence')
        }
      }).immediate()
    } finally {
      db.exec('DETACH DATABASE src')
    }
  } catch (err) {
    throw sqliteError(err, target, 'cannot rebuild')
  } finally {
    db.close()
  }
}

/** A value as an SQLite literal that reads back as exactly the same value and storage class. */
export function sqlLiteral(v: Value): string {
  if (v === null) return 'NULL'
  if (typeof v === 'bigint') return v.toString()
  if (typeof v === 'number') {
    if (Number.isNaN(v)) return 'NULL'
    if (!Number.isFinite(v)) return v > 0 ? '9e999' : '-9e999'
    const s = String(v)
    return /[.eE]/.test(s) ? s : `${s}.0`
  }
  if (typeof v === 'string') return `'${v.replace(/'/g, "''")}'`
  if (v instanceof RawText) return `CAST(X'${Buffer.from(v.bytes).toString('hex')}' AS TEXT)`
  return `X'${Buffer.from(v as Uint8Array).toString('hex')}'`
}

/** Column names of a row as it travels in the log: rowid tables with no declared key start with the rowid. */
export function rowColumns(def: TableDef): string[] {
  const cols = def.columns.map((c) => c.name)
  return def.key.length === 0 ? ['rowid', ...cols] : cols
}

export function keyColumns(def: TableDef): string[] {
  return def.key.length === 0 ? ['rowid'] : def.key.map((i) => def.columns[i].name)
}

export function upsertSql(def: TableDef, row: Value[]): string {
  const cols = rowColumns(def).map(quote)
  return `INSERT OR REPLACE INTO ${quote(def.name)} (${cols.join(', ')}) VALUES (${row.map(sqlLiteral).join(', ')});`
}

export function deleteSql(def: TableDef, key: Value[]): string {
  const where = keyColumns(def).map((c, i) => `${quote(c)} IS ${sqlLiteral(key[i])}`)
  return `DELETE FROM ${quote(def.name)} WHERE ${where.join(' AND ')};`
}

/**
 * A restored replica file made a plain database, as the origin had it: the origin's triggers (kept aside in
 * the replica's bookkeeping) are created and the bookkeeping goes, in one transaction; the file leaves WAL
 * mode (one file), then takes its final name in one rename.
 */
export function finishRestoredFile(partial: string, final: string): void {
  const db = openDatabase(partial, { mustExist: true })
  try {
    const has = db.prepare(`SELECT count(*) FROM sqlite_schema WHERE name = '_mesh_replica'`).pluck().get() as number
    const meta = has
      ? (db.prepare(`SELECT v FROM _mesh_replica WHERE k = 'objects'`).pluck().get() as string | undefined)
      : undefined
    db.transaction(() => {
      for (const o of JSON.parse(meta ?? '[]') as Array<{ type: string; sql: string }>)
        if (o.type === 'trigger') db.exec(o.sql)
      dropGuards(db)
      db.exec('DROP TABLE IF EXISTS _mesh_replica')
    })()
    db.pragma('journal_mode = DELETE')
  } catch (err) {
    throw sqliteError(err, partial, 'cannot finish the restored file')
  } finally {
    db.close()
  }
  fs.renameSync(partial, final)
}

/**
 * Where database `mine` parts from `truth` (both SQLite files with the same tables): per table, the rows
 * missing, extra and changed, compared by key (rowid for tables with no key) and value for value, with
 * storage classes. branchmesh's own tables are left out.
 */
export function diffDatabases(mine: string, truth: string): TableDiff[] {
  const a = openDatabase(mine, { mustExist: true })
  const b = openDatabase(truth, { mustExist: true })
  try {
    a.defaultSafeIntegers(true)
    b.defaultSafeIntegers(true)
    const rowsOf = (db: DB, t: TableInfo) => {
      const cols = t.columns.map((c) => quote(c.name))
      const keyless = t.key.length === 0
      const select = keyless ? [t.rowidName!, ...cols] : cols
      const keyAt = keyless ? [0] : t.key
      const out = new Map<string, string>()
      // Read with storage classes and TEXT bytes: TEXT that is not UTF-8 differs by its bytes, not as U+FFFD.
      const stmt = db.prepare(`SELECT ${exactColumns(select).join(', ')} FROM ${quote(t.name)}`).raw(true)
      for (const raw of stmt.iterate() as Iterable<unknown[]>) {
        const r = exactRow(raw)
        out.set(keyAt.map((i) => valueTag(r[i])).join(', '), r.map(valueTag).join('|'))
      }
      return out
    }
    const diffs: TableDiff[] = []
    const theirs = readTables(b).tables
    const ours = new Map(readTables(a).tables.map((t) => [t.name, t]))
    for (const t of theirs) {
      const mineT = ours.get(t.name)
      const want = rowsOf(b, t)
      const have = mineT ? rowsOf(a, mineT) : new Map<string, string>()
      const d: TableDiff = { table: t.name, missing: 0, extra: 0, changed: 0, keys: [] }
      for (const [k, v] of want) {
        const h = have.get(k)
        if (h === undefined) d.missing++
        else if (h !== v) d.changed++
        else continue
        if (d.keys.length < 20) d.keys.push(k)
      }
      for (const k of have.keys()) {
        if (want.has(k)) continue
        d.extra++
        if (d.keys.length < 20) d.keys.push(k)
      }
      if (d.missing + d.extra + d.changed > 0) diffs.push(d)
    }
    for (const name of ours.keys())
      if (!theirs.some((t) => t.name === name))
        diffs.push({
          table: name,
          missing: 0,
          extra: 1,
          changed: 0,
          keys: ['(the whole table: the log has no such table)']
        })
    return diffs
  } finally {
    a.close()
    b.close()
  }
}
