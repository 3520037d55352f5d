/**
 * Packing changes into blocks, and reading blocks back as units.
 *
 * Hypercore replicates a few thousand blocks a second whatever their size, so many row changes go into each
 * block; a unit larger than one block spans several, all but the last flagged MORE, and is applied
 * all-or-nothing. Packing does no I/O.
 */
import { MeshError } from './errors.ts'
import type { Entry, SchemaEntry, SnapshotEntry, TableChanges, TransactionEntry } from './entries.ts'
import { RawText, type Value } from './values.ts'

/**
 * Target size of a block's row data. A row larger than this gets an entry of its own; an entry larger than
 * MAX_BLOCK_BYTES is then carried as fragments across consecutive blocks (encodeUnit, format 2).
 */
export const DEFAULT_BLOCK_BYTES = 256 * 1024

/**
 * About the bytes a row takes in a block: exact for every value but TEXT that is not ASCII (counted as one byte
 * a character, where UTF-8 takes up to three) and the length prefixes of values over 252 bytes (counted as one
 * byte). Blocks are cut by it (a target, not a limit), at a fraction of an exact count's cost.
 */
function rowBytes(row: Value[]): number {
  let n = 1
  for (let i = 0; i < row.length; i++) {
    const v = row[i]
    if (typeof v === 'string') n += 2 + v.length
    else if (typeof v === 'bigint') {
      // A tag and a zig-zag varint (see values.ts): 1, 3, 5 or 9 bytes by magnitude (big ones: 8 fixed).
      const x = Number(v)
      const a = x < 0 ? -x : x
      n += a < 126 ? 2 : a < 32767 ? 4 : a < 2147483647 ? 6 : 10
    } else if (typeof v === 'number') n += 9
    else if (v === null) n += 1
    else n += 2 + (v instanceof RawText ? v.bytes.byteLength : v.byteLength)
  }
  return n
}

/** Splits table changes into pieces of about maxBytes each, keeping row order within a table. */
export function splitChanges(changes: TableChanges[], maxBytes = DEFAULT_BLOCK_BYTES): TableChanges[][] {
  const pieces: TableChanges[][] = []
  let piece: TableChanges[] = []
  let size = 0
  const flush = () => {
    if (piece.length > 0) pieces.push(piece)
    piece = []
    size = 0
  }
  for (const ch of changes) {
    let cur: TableChanges | null = null
    const take = (kind: 'deletes' | 'upserts', row: Value[]) => {
      const n = rowBytes(row)
      if (size > 0 && size + n > maxBytes) {
        flush()
        cur = null
      }
      if (cur === null) {
        cur = { table: ch.table, upserts: [], deletes: [] }
        piece.push(cur)
        size += 8
      }
      cur[kind].push(row)
      size += n
    }
    // Deletes before upserts: with REPLACE semantics either order converges, this one is the natural read.
    for (const k of ch.deletes) take('deletes', k)
    for (const r of ch.upserts) take('upserts', r)
    if (ch.deletes.length === 0 && ch.upserts.length === 0 && cur === null) {
      piece.push({ table: ch.table, upserts: [], deletes: [] })
    }
  }
  flush()
  return pieces
}

/** The entries of one captured batch: an optional schema entry, then transaction entries; one unit. */
export function packTransaction(
  batch: { schema: SchemaEntry | null; changes: TableChanges[]; time: number; source: Uint8Array | null },
  maxBytes = DEFAULT_BLOCK_BYTES
): Entry[] {
  const out: Entry[] = []
  if (batch.schema) out.push({ ...batch.schema, more: true })
  const pieces = splitChanges(batch.changes, maxBytes)
  if (pieces.length === 0) pieces.push([])
  pieces.forEach((changes, i) => {
    const last = i === pieces.length - 1
    const tx: TransactionEntry = {
      kind: 'transaction',
      more: !last,
      time: batch.time,
      changes,
      source: last ? batch.source : null
    }
    out.push(tx)
  })
  return out
}

/** The entries of one snapshot chunk; each is a unit of its own. */
export function packSnapshot(
  changes: TableChanges[],
  flags: { first: boolean; last: boolean },
  maxBytes = DEFAULT_BLOCK_BYTES
): SnapshotEntry[] {
  const pieces = splitChanges(changes, maxBytes)
  if (pieces.length === 0) pieces.push([])
  return pieces.map((p, i) => ({
    kind: 'snapshot',
    more: false,
    first: flags.first && i === 0,
    last: flags.last && i === pieces.length - 1,
    changes: p
  }))
}

/**
 * Collects entries into units. push() returns a complete unit (its entries) when `entry` ends one, else null.
 * A header, checkpoint or fence inside an open unit means the log breaks the rules.
 */
export class UnitAssembler {
  private open: Entry[] = []

  get pending(): number {
    return this.open.length
  }

  push(entry: Entry): Entry[] | null {
    const spanning = entry.kind === 'schema' || entry.kind === 'transaction' || entry.kind === 'snapshot'
    if (!spanning && this.open.length > 0) {
      throw MeshError.BAD_LOG(`a ${entry.kind} entry inside an unfinished unit`)
    }
    this.open.push(entry)
    if (spanning && entry.more) return null
    const unit = this.open
    this.open = []
    return unit
  }

  reset(): void {
    this.open = []
  }
}
