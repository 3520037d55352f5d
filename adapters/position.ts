/**
 * What every apply side checks before it writes a unit, whatever the engine: that the unit continues the
 * replica from exactly where it stands, and that a log header belongs to this replica.
 */
import { MeshError, sameBytes, type HeaderEntry, type Value } from '../protocol/index.ts'
import { unitEnd, type AppliedPosition, type DamageGuard, type Unit } from './types.ts'

/**
 * 'skip' for a unit the replica holds already (applying is idempotent by position), 'apply' for the next
 * one; LOG_MISMATCH for a gap, another log, or a next epoch's log that does not continue from here.
 * `where` names the replica in the error's context.
 */
export function unitFits(
  applied: { log: Uint8Array | null; length: number },
  unit: Unit,
  position: AppliedPosition,
  where: Record<string, unknown>
): 'skip' | 'apply' {
  const end = unitEnd(unit)
  if (position.length !== end) throw MeshError.BAD_LOG(`unit [${unit.start}, ${end}) given position ${position.length}`)
  if (applied.log !== null && !sameBytes(applied.log, position.log)) {
    // The next epoch's log: its header must continue from exactly where this replica stands.
    const h = unit.entries[0]
    const continues =
      unit.start === 0 &&
      h?.kind === 'header' &&
      h.parent !== null &&
      sameBytes(h.parent.key, applied.log) &&
      h.parent.length === applied.length
    if (!continues) {
      const logHex = Buffer.from(applied.log).toString('hex').slice(0, 16)
      throw MeshError.LOG_MISMATCH(
        `the replica follows log ${logHex}… at ${applied.length}, and this log does not continue from there`,
        {
          context: { ...where, applied: applied.length }
        }
      )
    }
    return 'apply'
  }
  if (applied.log !== null && end <= applied.length) return 'skip'
  if (unit.start !== applied.length) {
    throw MeshError.LOG_MISMATCH(`the replica is at ${applied.length} but the next unit starts at ${unit.start}`, {
      context: { ...where, applied: applied.length, start: unit.start }
    })
  }
  return 'apply'
}

/**
 * A unit's transaction changes per table, all its blocks together: a large transaction spans blocks, and the
 * mass-damage guard measures what the whole unit does to a table.
 */
export function unitChanges(unit: Unit): Map<number, { upserts: Value[][]; deletes: Value[][] }> {
  const out = new Map<number, { upserts: Value[][]; deletes: Value[][] }>()
  for (const e of unit.entries) {
    if (e.kind !== 'transaction') continue
    for (const ch of e.changes) {
      const t = out.get(ch.table) ?? { upserts: [], deletes: [] }
      for (const r of ch.upserts) t.upserts.push(r)
      for (const r of ch.deletes) t.deletes.push(r)
      out.set(ch.table, t)
    }
  }
  return out
}

/**
 * How far the guard needs to count a table's rows before a unit of `total` changes to it: a unit can flag a
 * table only if `share` of its rows is at most `total`, so a table with more rows than the returned count
 * cannot be flagged (the count stops there instead of reading the whole table).
 */
export function guardCountLimit(total: number, g: DamageGuard): number {
  return g.share > 0 ? Math.floor(total / g.share) + 1 : Number.MAX_SAFE_INTEGER
}

/** Checks a log header against the replica; returns the dataset it belongs to. */
export function headerFits(
  entry: HeaderEntry,
  engine: string,
  engineName: string,
  want: string | null,
  position: AppliedPosition
): string {
  if (entry.engine !== engine)
    throw MeshError.BAD_LOG(`log of a ${entry.engine} dataset cannot be applied to a ${engineName} replica`)
  if (want !== null && want !== entry.dataset)
    throw MeshError.LOG_MISMATCH(`the log is of dataset ${entry.dataset}, the replica of ${want}`)
  if (entry.epoch !== position.epoch)
    throw MeshError.BAD_LOG(`header epoch ${entry.epoch} but position epoch ${position.epoch}`)
  return entry.dataset
}
