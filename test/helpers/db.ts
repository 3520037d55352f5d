/** Test helpers for SQLite files: a canonical dump that compares values by storage class and bits. */
import Database from 'better-sqlite3'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { valueTag } from '../../adapters/index.ts'
import { readTables } from '../../adapters/sqlite/common.ts'

export function tmpDir(prefix = 'mesh-test-'): { dir: string; cleanup: () => void } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix))
  return { dir, cleanup: () => fs.rmSync(dir, { recursive: true, force: true }) }
}

/** Every user table: its definition and its rows, each value tagged with its storage class, in key order. */
export function dump(file: string): Record<string, { sql: string; rows: string[] }> {
  const db = new Database(file, { readonly: true, fileMustExist: true })
  try {
    db.defaultSafeIntegers(true)
    const out: Record<string, { sql: string; rows: string[] }> = {}
    const { tables } = readTables(db)
    for (const t of tables) {
      const cols = t.columns.map((c) => `"${c.name.replaceAll('"', '""')}"`)
      const keyless = t.key.length === 0
      const select = keyless ? [t.rowidName!, ...cols] : cols
      const rows = db.prepare(`SELECT ${select.join(', ')} FROM "${t.name.replaceAll('"', '""')}"`).raw(true).all() as unknown[][]
      const lines = rows.map((r) => r.map(valueTag).join('|')).sort()
      out[t.name] = { sql: t.sql, rows: lines }
    }
    return out
  } finally {
    db.close()
  }
}

export function rowCount(file: string, table: string): number {
  const db = new Database(file, { readonly: true, fileMustExist: true })
  try {
    return Number(db.prepare(`SELECT count(*) AS n FROM "${table}"`).pluck().get())
  } finally {
    db.close()
  }
}

export function openWal(file: string): Database.Database {
  const db = new Database(file)
  db.pragma('journal_mode = WAL')
  return db
}

/**
 * A connection to a replica that gets past its guard (it defines the function the guard calls), as a careless
 * or hostile program could: to change a copy behind the mesh's back.
 */
export function openBehindTheMesh(file: string): Database.Database {
  const db = openWal(file)
  db.function('branchmesh_replica_is_read_only', () => 0)
  return db
}
