/**
 * The row-by-row comparison `mesh demo` ends with, and the copies of a database it compares.
 *
 * The comparison does not use the adapters' code on purpose: it checks their work. It reads only user tables
 * (not `sqlite_*`, not branchmesh's own `_mesh_*` tables, which differ between an origin and its replica by
 * design) and compares each value with its storage class and exact bits (64-bit integers, REAL bits, text,
 * BLOB bytes, NULL), in primary key order.
 */
import fs from 'node:fs'
import Database from '../../adapters/sqlite/better-sqlite3.ts'
import { count, valueTag } from '../../node/index.ts'

export interface Comparison {
  equal: boolean
  tables: number
  rows: number
  /** The first difference found, in words; null when equal. */
  difference: string | null
}

/** A comparison in the words of the demo's checks. */
export function identical(cmp: Comparison): string {
  return cmp.equal
    ? `identical (${count(cmp.tables, 'table')}, ${count(cmp.rows, 'row')})`
    : `DIFFERENT: ${cmp.difference}`
}

function userTables(db: Database.Database): string[] {
  return (
    db.prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name").pluck().all() as string[]
  ).filter((n) => !n.startsWith('sqlite_') && !n.startsWith('_mesh_'))
}

const q = (name: string) => `"${name.replaceAll('"', '""')}"`

/** The ORDER BY of a table: its declared primary key, else its rowid. */
function keyOrder(db: Database.Database, table: string): string {
  const cols = db.prepare(`PRAGMA table_info(${q(table)})`).all() as Array<{ name: string; pk: number | bigint }>
  const pk = cols.filter((c) => Number(c.pk) > 0).sort((a, b) => Number(a.pk) - Number(b.pk))
  return pk.length > 0 ? pk.map((c) => q(c.name)).join(', ') : 'rowid'
}

/** Compares every user table of an origin database with a replica of it, row by row and value by value. */
export function compareDatabases(originFile: string, replicaFile: string): Comparison {
  const a = new Database(originFile, { readonly: true, fileMustExist: true, timeout: 10_000 })
  let b: Database.Database
  try {
    b = new Database(replicaFile, { readonly: true, fileMustExist: true, timeout: 10_000 })
  } catch (err) {
    a.close()
    return { equal: false, tables: 0, rows: 0, difference: `the copy cannot be opened: ${(err as Error).message}` }
  }
  a.defaultSafeIntegers(true)
  b.defaultSafeIntegers(true)
  try {
    const ta = userTables(a)
    const tb = userTables(b)
    if (ta.join('\n') !== tb.join('\n')) {
      const difference = `tables differ: origin has [${ta.join(', ')}], copy has [${tb.join(', ')}]`
      return { equal: false, tables: ta.length, rows: 0, difference }
    }
    let rows = 0
    // One read transaction on each side, so each side is read as one consistent state.
    a.exec('BEGIN')
    b.exec('BEGIN')
    try {
      for (const t of ta) {
        const read = (db: Database.Database) => {
          const stmt = db.prepare(`SELECT * FROM ${q(t)} ORDER BY ${keyOrder(db, t)}`).raw(true)
          return { columns: stmt.columns().map((c) => c.name), rows: stmt.all() as unknown[][] }
        }
        const ra = read(a)
        const rb = read(b)
        if (ra.columns.join(',') !== rb.columns.join(',')) {
          const difference = `${t}: columns differ (${ra.columns.join(', ')} / ${rb.columns.join(', ')})`
          return { equal: false, tables: ta.length, rows, difference }
        }
        const n = Math.max(ra.rows.length, rb.rows.length)
        for (let i = 0; i < n; i++) {
          const x = ra.rows[i]
          const y = rb.rows[i]
          if (!x || !y) {
            return {
              equal: false,
              tables: ta.length,
              rows,
              difference: `${t}: the origin has ${ra.rows.length} rows, the copy ${rb.rows.length}`
            }
          }
          for (let c = 0; c < x.length; c++) {
            const vx = valueTag(x[c])
            const vy = valueTag(y[c])
            if (vx !== vy) {
              return {
                equal: false,
                tables: ta.length,
                rows,
                difference:
                  `${t}, row ${i + 1} (key ${valueTag(x[0])}), column ${ra.columns[c]}: ` + `origin ${vx}, copy ${vy}`
              }
            }
          }
        }
        rows += ra.rows.length
      }
    } finally {
      a.exec('COMMIT')
      b.exec('COMMIT')
    }
    return { equal: true, tables: ta.length, rows, difference: null }
  } finally {
    a.close()
    b.close()
  }
}

/**
 * Copies a database as it is now into a new file (VACUUM INTO: one consistent state, even while another
 * connection writes). The copy is the whole file, branchmesh's own tables and triggers included.
 */
export function copyDatabase(from: string, to: string): void {
  const db = new Database(from, { readonly: true, fileMustExist: true, timeout: 10_000 })
  try {
    db.prepare('VACUUM INTO ?').run(to)
  } finally {
    db.close()
  }
}

/**
 * Runs an SQL script (a divergence folder's changes.sql) on a copy of `base`, written to `out`. Foreign keys
 * are not enforced: the script lists each unit's changes table by table, not in an order that keeps every
 * reference valid after each statement.
 */
export function replaySql(base: string, sqlFile: string, out: string): void {
  copyDatabase(base, out)
  const db = new Database(out)
  try {
    db.pragma('foreign_keys = OFF')
    db.exec(fs.readFileSync(sqlFile, 'utf8'))
  } finally {
    db.close()
  }
}
