/**
 * The SQLite capture position a transaction entry carries (opaque to the log): the file's capture identity,
 * its counters and, per table, the change seq read up to. See UPGRADE.md (SQLite capture position 2).
 */
import c from 'compact-encoding'
import { MeshError } from '../../protocol/index.ts'

/**
 * The source position: per table, the change seq read up to, and the reset generation resent. Version 2 adds
 * what tells this file from another one put in its place (see `Probe`): the file's capture identity and its
 * two capture counters (resets and table ids handed out), which only grow in a live file.
 */
export interface SourcePos {
  /** The file's capture identity (16 bytes); null in a version-1 position. */
  identity: Uint8Array | null
  /** `_mesh_meta` reset and next_table when the batch was read (0 in a version-1 position). */
  resets: number
  nextTable: number
  tables: Array<{ id: number; seq: number; reset: number }>
}

export const POS_VERSION = 2
export const IDENTITY_BYTES = 16

export const sourceEnc = {
  preencode(s: c.State, p: SourcePos) {
    c.uint.preencode(s, POS_VERSION)
    c.fixed(IDENTITY_BYTES).preencode(s, p.identity ?? new Uint8Array(IDENTITY_BYTES))
    c.uint.preencode(s, p.resets)
    c.uint.preencode(s, p.nextTable)
    c.uint.preencode(s, p.tables.length)
    for (const t of p.tables) {
      c.uint.preencode(s, t.id)
      c.uint.preencode(s, t.seq)
      c.uint.preencode(s, t.reset)
    }
  },
  encode(s: c.State, p: SourcePos) {
    c.uint.encode(s, POS_VERSION)
    c.fixed(IDENTITY_BYTES).encode(s, p.identity ?? new Uint8Array(IDENTITY_BYTES))
    c.uint.encode(s, p.resets)
    c.uint.encode(s, p.nextTable)
    c.uint.encode(s, p.tables.length)
    for (const t of p.tables) {
      c.uint.encode(s, t.id)
      c.uint.encode(s, t.seq)
      c.uint.encode(s, t.reset)
    }
  },
  decode(s: c.State): SourcePos {
    const v = c.uint.decode(s)
    if (v !== 1 && v !== 2) throw new RangeError(`unknown capture position version ${v}`)
    let identity: Uint8Array | null = null
    let resets = 0
    let nextTable = 0
    if (v === 2) {
      identity = c.fixed(IDENTITY_BYTES).decode(s)
      resets = c.uint.decode(s)
      nextTable = c.uint.decode(s)
    }
    const n = c.uint.decode(s)
    if (n > s.end - s.start) throw new RangeError('bad capture position')
    const tables = []
    for (let i = 0; i < n; i++) tables.push({ id: c.uint.decode(s), seq: c.uint.decode(s), reset: c.uint.decode(s) })
    return { identity, resets, nextTable, tables }
  }
}

export function decodeSqliteSource(bytes: Uint8Array): SourcePos {
  try {
    return c.decode(sourceEnc, bytes)
  } catch (err) {
    throw MeshError.wrap(err, MeshError.BAD_LOG, 'unreadable SQLite capture position')
  }
}
