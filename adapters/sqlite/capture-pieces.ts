/**
 * Reading a large batch in pieces (issue 14; SqliteCapture.readStream holds the read transaction open across
 * them): how a row's memory is counted against the budget, and the pieces themselves. A small batch is read whole
 * and handed out as one piece (wholeStream, adapters/types.ts).
 */
import type { TableChanges, Value } from '../../protocol/index.ts'
import type { Logger } from '../types.ts'
import { type Captured, type Change, changesOf, upsertsOf } from './captured-table.ts'
import { SEQUENCE_TABLE } from './common.ts'
import { keyText } from './text.ts'

/** readStream reads a batch of at most this many changed keys whole, with read(). */
export const STREAM_ABOVE_ROWS = 1000

/**
 * Memory a row read takes in JS, near enough for a budget: an array of 8-byte slots with a header, a string a
 * byte per character (two for non-Latin-1: not told apart here) plus its header, a BLOB its bytes plus a
 * Buffer, a number or bigint a heap object.
 */
function rowSize(row: Value[]): number {
  let n = 32
  for (const v of row) {
    n += 8 + (typeof v === 'string' ? v.length + 24 : v instanceof Uint8Array ? v.byteLength + 96 : 24)
  }
  return n
}

function nonEmpty(ch: TableChanges): boolean {
  return ch.upserts.length > 0 || ch.deletes.length > 0
}

/** A row's key (`key`: its column indexes) when it holds a NULL, with a text to tell keys apart; else null. */
function keyWithNull(key: number[], row: Value[]): { key: Value[]; text: string } | null {
  if (!key.some((k) => row[k] === null)) return null
  const values = key.map((k) => row[k])
  return { key: values, text: keyText(values) }
}

/** What a read in pieces reads of one table: up to change seq `max`, or all of it (`reset`). */
export interface Planned {
  t: Captured
  max: number
  reset: boolean
}

/**
 * The pieces of a read (SqliteCapture.readStream) in its read transaction: the changes of each planned table in
 * pieces of about `budgetBytes` of row data, then `seq` (the origin's `sqlite_sequence` changes) in the last.
 */
export function* piecesOf(
  plan: Planned[],
  budgetBytes: number,
  seq: { changes: Value[][][] } | null,
  log: Logger
): Generator<{ changes: TableChanges[]; rows: number }> {
  let changes: TableChanges[] = []
  let bytes = 0
  let n = 0
  for (const p of plan) {
    const { t } = p
    if (!p.reset && p.max <= t.mark) continue
    let cur: TableChanges = { table: t.id, upserts: [], deletes: [] }
    changes.push(cur)
    // TEXT that is not UTF-8 (rare): the table is read again from its start with every value's bytes;
    // what went out before is sent again, which applies to the same rows (one read transaction).
    for (let exact = false; ; exact = true) {
      let again = false
      const it: Iterable<Change> = p.reset
        ? upsertsOf(exact ? t.allExact.iterate() : t.all.iterate(), exact)
        : changesOf(t, t.mark, p.max, exact, log)
      // The pass again with every value's bytes sends rows already sent: the same rows again, except that
      // a key holding a NULL stands for a group apply would then hold twice; its delete goes first.
      const resent = exact ? new Set<string>() : null
      for (const [kind, r] of it) {
        if (kind === 'again') {
          again = true
          break
        }
        const nullKey = resent !== null && kind === 'u' && t.info.key.length > 0 ? keyWithNull(t.info.key, r) : null
        if (nullKey !== null && !resent!.has(nullKey.text)) {
          resent!.add(nullKey.text)
          cur.deletes.push(nullKey.key)
        }
        if (kind === 'u') cur.upserts.push(r)
        else cur.deletes.push(r)
        bytes += rowSize(r)
        n++
        if (bytes >= budgetBytes) {
          yield { changes: changes.filter(nonEmpty), rows: n }
          changes = []
          cur = { table: t.id, upserts: [], deletes: [] }
          changes.push(cur)
          bytes = 0
          n = 0
        }
      }
      if (!again) break
    }
  }
  // Last, after the rows: sqlite_sequence as the origin has it in this same read transaction.
  if (seq !== null) changes.push({ table: SEQUENCE_TABLE, upserts: seq.changes[0], deletes: seq.changes[1] })
  yield { changes: changes.filter(nonEmpty), rows: n }
}
