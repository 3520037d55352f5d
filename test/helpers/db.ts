/**
 * Test helpers for SQLite files: temporary folders and connections that go when the test ends, and a
 * canonical dump that compares values by storage class and bits.
 */
import Database from '../../adapters/sqlite/better-sqlite3.ts'
import { spawnSync } from 'node:child_process'
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
export function tmpDir(first?: TestContext | string, second?: string): string | { dir: string; cleanup: () => void } {
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
      const rows = db
        .prepare(`SELECT ${select.join(', ')} FROM "${t.name.replaceAll('"', '""')}"`)
        .raw(true)
        .all() as unknown[][]
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

/** A value read as [typeof(col), CAST(col AS BLOB) when TEXT] as a tag: storage class and exact bytes. */
function exactTag(type: unknown, v: unknown): string {
  switch (type) {
    case 'null':
      return 'NULL'
    case 'integer':
      return `INTEGER ${String(v)}`
    case 'real': {
      const b = Buffer.alloc(8)
      b.writeDoubleBE(Number(v))
      return `REAL ${b.toString('hex')}`
    }
    case 'text':
      return `TEXT ${Buffer.from(v as Uint8Array).toString('hex')}`
    case 'blob':
      return `BLOB ${Buffer.from(v as Uint8Array).toString('hex')}`
    default:
      throw new Error(`unexpected storage class ${String(type)}`)
  }
}

/**
 * Every user table compared byte by byte: each value's storage class and bytes (TEXT read with
 * `CAST(col AS BLOB)`, so TEXT that is not UTF-8 compares by its bytes, not as U+FFFD). Rows of a table without
 * a declared key are a sorted multiset of their values (no rowid: `{ rowids: true }` adds it). The
 * `sqlite_sequence` rows of those tables come as the table `(sqlite_sequence)`.
 */
export function dumpExact(
  file: string,
  opts: { rowids?: boolean } = {}
): Record<string, { sql: string; rows: string[] }> {
  const db = new Database(file, { readonly: true, fileMustExist: true })
  try {
    db.defaultSafeIntegers(true)
    const out: Record<string, { sql: string; rows: string[] }> = {}
    const { tables } = readTables(db)
    for (const t of tables) {
      const names = t.columns.map((c) => `"${c.name.replaceAll('"', '""')}"`)
      if (opts.rowids && t.key.length === 0) names.unshift(t.rowidName!)
      const select = names.flatMap((c) => [
        `typeof(${c})`,
        `CASE WHEN typeof(${c}) = 'text' THEN CAST(${c} AS BLOB) ELSE ${c} END`
      ])
      const from = `"${t.name.replaceAll('"', '""')}"`
      const rows = db
        .prepare(`SELECT ${select.join(', ')} FROM ${from}`)
        .raw(true)
        .all() as unknown[][]
      const lines = rows.map((r) => names.map((_, i) => exactTag(r[2 * i], r[2 * i + 1])).join('|')).sort()
      out[t.name] = { sql: t.sql, rows: lines }
    }
    const seq = db.prepare(`SELECT count(*) FROM sqlite_schema WHERE name = 'sqlite_sequence'`).pluck().get() as bigint
    if (seq > 0n) {
      const names = new Set(tables.map((t) => t.name))
      const rows = db.prepare('SELECT name, seq FROM sqlite_sequence').raw(true).all() as Array<[string, bigint]>
      const kept = rows.filter((r) => names.has(r[0])).map((r) => `${r[0]}|${r[1]}`)
      out['(sqlite_sequence)'] = { sql: '', rows: kept.sort() }
    }
    return out
  } finally {
    db.close()
  }
}

/**
 * Runs SQL in the `sqlite3` program (a writer that is not this process and not better-sqlite3), waiting up to
 * 10 s for a lock. Fails loudly when the program is missing.
 */
export function sqlite3(file: string, sql: string): string {
  const r = spawnSync('sqlite3', ['-bail', file], { input: `.timeout 10000\n${sql}\n`, encoding: 'utf8' })
  if (r.error && (r.error as NodeJS.ErrnoException).code === 'ENOENT') {
    throw new Error(
      'the sqlite3 program is not installed; these tests need it as their writer: apt-get install -y sqlite3'
    )
  }
  if (r.status !== 0) throw new Error(`sqlite3 ${file} failed (${r.status}): ${r.stderr}`)
  return r.stdout
}
