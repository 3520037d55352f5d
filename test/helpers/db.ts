/**
 * Test helpers for SQLite files: temporary folders and connections that go when the test ends, and a
 * canonical dump that compares values by storage class and bits.
 */
import Database from 'better-sqlite3'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { valueTag } from '../../adapters/index.ts'
import { readTables } from '../../adapters/sqlite/common.ts'
import { teardown, type TestContext } from './teardown.ts'

/**
 * A new temporary folder. Given the test context: its path, and the folder is removed when the test ends.
 * Given only a prefix (the bench scripts): the folder and the function that removes it.
 */
export function tmpDir(t: TestContext, prefix?: string): string
export function tmpDir(prefix?: string): { dir: string; cleanup: () => void }
export function tmpDir(
  first?: TestContext | string,
  second?: string
): string | { dir: string; cleanup: () => void } {
  const t = typeof first === 'object' ? first : null
  const prefix = (t === null ? (first as string | undefined) : second) ?? 'mesh-test-'
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix))
  const cleanup = () => fs.rmSync(dir, { recursive: true, force: true })
  if (t === null) return { dir, cleanup }
  teardown(t, cleanup)
  return dir
}

/**
 * A connection to a SQLite file for this test, closed when the test ends unless the test closed it. In WAL
 * mode, as an application's (see openWal); `{ readonly: true }` opens it read-only and changes nothing.
 */
export function sqliteDb(t: TestContext, file: string, opts: { readonly?: boolean } = {}): Database.Database {
  const db = opts.readonly ? new Database(file, { readonly: true }) : openWal(file)
  teardown(t, () => {
    if (db.open) db.close()
  })
  return db
}

/** A temporary folder with `origin.db` in it, open in WAL mode: all of it gone when the test ends. */
export function sqliteOrigin(t: TestContext): { dir: string; file: string; db: Database.Database } {
  const dir = tmpDir(t)
  const file = path.join(dir, 'origin.db')
  return { dir, file, db: sqliteDb(t, file) }
}

/** Opens `file` read-only, returns what `fn` reads from it, and closes it again. */
export function readDb<T>(file: string, fn: (db: Database.Database) => T): T {
  const db = new Database(file, { readonly: true })
  try {
    return fn(db)
  } finally {
    db.close()
  }
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
