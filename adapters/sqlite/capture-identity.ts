/**
 * Whether the file at the capture's path is still the file it captured: what a file says about its own capture
 * state (probeFile), compared with a position from the log or with what the capture read so far (compareFile),
 * and the SOURCE_RESET a replacement is reported with. Nothing here writes to the file.
 */
import fs from 'node:fs'
import { MeshError } from '../../protocol/index.ts'
import { changeTable } from './capture-triggers.ts'
import { OWN_PREFIX, quote, readTables, sqliteError, type DB } from './common.ts'
import type { SourcePos } from './position.ts'

const TABLE_EXISTS = "SELECT count(*) FROM main.sqlite_schema WHERE type = 'table' AND name = ?"
const OLDER = 'it is an older copy of the captured file (a backup restored over it)'

/**
 * What a file says about its own capture state, read without writing: whether branchmesh ever captured it,
 * its identity and counters, each change table's highest seq, and its user tables. Compared with a position
 * (from the log, or what this capture last read) it tells the file captured so far from another one.
 */
export interface Probe {
  captured: boolean
  identity: string | null
  resets: number
  nextTable: number
  /** Table id -> max(seq) of its change table (0 when empty), for the change tables that exist. */
  seqs: Map<number, number>
  /** The user tables of the file (read when asked). */
  names: () => string[]
}

/** A replacement found, not yet acted on: why, and whether the file is an older copy of the captured one. */
export interface Replaced {
  why: string
  sameFile: boolean
  names: string[]
  /** Counters the fresh capture state must start above, so that no old position matches it. */
  floor: { resets: number; nextTable: number }
}

/** The device and inode of the file a connection has open, to notice another one put at the path. */
export interface FileId {
  dev: number
  ino: number
}

/** A file's capture identity and counters (`_mesh_meta`), as the capture last wrote or read them. */
export interface Counters {
  identity: string | null
  resets: number
  nextTable: number
}

/** Reads the file's capture state without writing (see Probe). */
export function probeFile(db: DB): Probe {
  const has = (name: string) => (db.prepare(TABLE_EXISTS).pluck().get(name) as bigint) > 0n
  const names = () => {
    const { tables, skipped } = readTables(db)
    return [...tables.map((t) => t.name), ...skipped.map((t) => t.table)]
  }
  return db.transaction((): Probe => {
    if (!has(`${OWN_PREFIX}meta`)) {
      return { captured: false, identity: null, resets: 0, nextTable: 0, seqs: new Map(), names }
    }
    const rows = db.prepare(`SELECT k, v FROM ${OWN_PREFIX}meta`).all() as Array<{ k: string; v: unknown }>
    const meta = new Map(rows.map((r) => [r.k, r.v]))
    const seqs = new Map<number, number>()
    if (has(`${OWN_PREFIX}tables`)) {
      for (const id of db.prepare(`SELECT id FROM ${OWN_PREFIX}tables`).pluck().all() as bigint[]) {
        if (!has(changeTable(Number(id)))) continue
        const d = quote(changeTable(Number(id)))
        const max = db.prepare(`SELECT max(seq) FROM ${d}`).pluck().get() as bigint | null
        seqs.set(Number(id), Number(max ?? 0n))
      }
    }
    const identity = meta.get('identity')
    return {
      captured: true,
      identity: typeof identity === 'string' ? identity : null,
      resets: Number(meta.get('reset') ?? 0n),
      nextTable: Number(meta.get('next_table') ?? 0n),
      seqs,
      names
    }
  })()
}

/**
 * Whether the file is the one a position was read from. Its identity tells another file; its counters and
 * change-table numbering, which only grow in a live file, tell an older copy of the same file (a backup
 * restored over it). An older copy equal to the position in every number holds the same captured state, so
 * it needs nothing. Returns what was found, or null.
 */
export function compareFile(pos: SourcePos, p: Probe): Replaced | null {
  const floor = {
    resets: pos.resets,
    nextTable: Math.max(pos.nextTable, ...pos.tables.map((t) => t.id + 1))
  }
  const hexId = pos.identity ? Buffer.from(pos.identity).toString('hex') : null
  const found = (why: string, sameFile: boolean): Replaced => ({ why, sameFile, names: p.names(), floor })
  if (!p.captured) {
    return found(
      'it holds no capture state: it was deleted and created again, or replaced by a file that was never captured',
      false
    )
  }
  if (hexId !== null && p.identity !== hexId) {
    return found('it is another file than the one captured (its capture identity differs)', false)
  }
  if (p.resets < pos.resets || p.nextTable < pos.nextTable) {
    return found(`${OLDER}: its capture counters went back`, true)
  }
  for (const t of pos.tables) {
    const seq = p.seqs.get(t.id)
    if (seq !== undefined && seq < t.seq) {
      return found(`${OLDER}: change numbering went back (table id ${t.id}: ${seq} < ${t.seq})`, true)
    }
  }
  return null
}

/** The SOURCE_RESET a replacement is reported with; the capture loop checks `tables` before it copies. */
export function replacedError(path: string, r: Replaced): MeshError {
  return MeshError.SOURCE_RESET(`the database file ${path} was replaced: ${r.why}`, {
    hint:
      'If that was meant (a backup restored, the file made again), nothing to do: the whole database is copied ' +
      'into the log again and every copy rebuilt from it; the state before stays in history ' +
      '(mesh log, mesh restore).',
    context: { path, replaced: r.why, tables: r.sameFile ? undefined : r.names }
  })
}

/** Whether the path still names the file the connection has open. */
export function fileAt(path: string, file: FileId | null): 'same' | 'other' | 'gone' {
  let st: fs.Stats
  try {
    st = fs.statSync(path)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 'gone'
    throw sqliteError(err, path, 'cannot look at')
  }
  return file !== null && st.dev === file.dev && st.ino === file.ino ? 'same' : 'other'
}

/** The file's identity and capture counters, read from `_mesh_meta`. */
export function readCounters(db: DB): Counters {
  const rows = db.prepare(`SELECT k, v FROM ${OWN_PREFIX}meta`).all() as Array<{ k: string; v: unknown }>
  const meta = new Map(rows.map((r) => [r.k, r.v]))
  const identity = meta.get('identity')
  return {
    identity: typeof identity === 'string' ? identity : null,
    resets: Number(meta.get('reset') ?? 0n),
    nextTable: Number(meta.get('next_table') ?? 0n)
  }
}
