/**
 * The fold: decoded pgoutput transactions into the net changes a log unit carries, each table's rows folded to
 * their net effect (a row updated twice travels once; a row inserted then deleted travels as a delete).
 *
 * Pure: no I/O, no client, no clock. Where the fold needs the origin database it yields what it needs as data
 * and goes on with the answer (capture.ts asks the database; a test answers by hand):
 * - `table`: rows of the batch's first transaction have a shape not known yet (a table created or altered);
 *   the answer is the table as those rows have it. A later transaction with a new shape, or one that
 *   truncates a table, ends the batch before it instead, so the schema entry that describes it comes first in
 *   the next unit.
 * - `rows`: rows whose primary key changed while a TOASTed value stayed as it was (see `Lookup`); the answer
 *   is each row as the origin holds it now, or null where it is gone.
 *
 * It takes whole transactions only: the messages of one that has not committed are left for the next read.
 * It does not decide which tables are captured (the caller names those that are not; branchmesh's own schema
 * never is), and does not remember what it folded: the caller drops the messages once the log holds them.
 */
import type { TableChanges, TableDef, Value } from '../../protocol/index.ts'
import { OWN_SCHEMA, UNCHANGED, isUnchanged } from './common.ts'
import { UNCHANGED_TOAST, type PgMessage, type TupleValue } from './pgoutput.ts'

export type RelationMessage = Extract<PgMessage, { tag: 'relation' }>
type RowMessage = Extract<PgMessage, { tag: 'insert' | 'update' | 'delete' }>

/** A table as the log describes it. */
export interface Known {
  def: TableDef
  /** Column names and type oids as pgoutput sends them; compared with each Relation message. */
  shape: string
  /** No primary key: rows are identified by all their values. */
  full: boolean
}

export interface FoldInput {
  /**
   * The Relation messages in force where `messages` start, by table oid: pgoutput sends one per session and
   * table, and again when the table changes. Not changed by the fold.
   */
  relations: ReadonlyMap<number, RelationMessage>
  /** The tables as the log last described them, by oid. Not changed by the fold. */
  tables: ReadonlyMap<number, Known>
  /** Tables (by oid) that are not captured. */
  skipped: { has(oid: number): boolean }
  /** Transactions ending at or before this LSN are in the log already (a slot that went back after a crash). */
  acked: bigint
  /** Stop after the transaction that brings the batch to this many row changes (none is ever split). */
  maxChanges: number
}

/** A row to read from the origin: the row of `def` whose key columns (`def.key`) have the values `key`. */
export interface Lookup {
  def: TableDef
  key: Value[]
}

export type FoldNeed = { need: 'table'; relation: RelationMessage } | { need: 'rows'; lookups: Lookup[] }
/** The answer to a `table` need, or to a `rows` need (one row or null per lookup, in order). */
export type FoldAnswer = Known | Array<Value[] | null>

export interface Folded {
  /** Each changed table's net changes. */
  changes: TableChanges[]
  /** Row changes (upserts and deletes) the transactions made, before netting. */
  rows: number
  /** Whole transactions folded (at least one). */
  txs: number
  /** End LSN and origin commit time of the last one. */
  end: bigint
  time: number
  /** Tables (by oid) they truncated: replicas drop those tables' rows before the changes. */
  truncated: number[]
}

/**
 * Folds the whole transactions in `messages` into one batch; null when none is new (acknowledged ones are
 * skipped). See the module comment for what it yields.
 */
export function* foldTransactions(
  messages: Iterable<PgMessage>,
  input: FoldInput
): Generator<FoldNeed, Folded | null, FoldAnswer> {
  // The columns each table's rows have at this point of the stream: pgoutput sends a Relation message once
  // per session and again when a table changes, so the state at the start of the unread part is kept.
  const rel = new Map(input.relations)
  // Tables whose shape was learned during this fold (answers to `table`), over `input.tables`.
  let learned: Map<number, Known> | null = null
  const tableOf = (oid: number): Known | undefined => learned?.get(oid) ?? input.tables.get(oid)
  const folds = new Map<number, TableFold>()
  const foldOf = (k: Known) => {
    let f = folds.get(k.def.id)
    if (!f) folds.set(k.def.id, (f = new TableFold(k.def, k.full)))
    return f
  }
  let txs = 0
  let end = input.acked
  let time = 0
  let total = 0
  // The current transaction's changes, folded into the batch at its commit.
  let pending: Array<() => void> = []
  let truncated: number[] = []
  const truncatedAll: number[] = []
  let stop = false
  // Rows whose primary key changed while a TOASTed value stayed as it was: the value is read at the end.
  const fills: Fill[] = []
  for (const m of messages) {
    switch (m.tag) {
      case 'begin':
        pending = []
        truncated = []
        break
      case 'relation':
        rel.set(m.oid, m)
        break
      case 'insert':
      case 'update':
      case 'delete': {
        const r = rel.get(m.oid)
        if (!r || r.namespace === OWN_SCHEMA || input.skipped.has(m.oid)) break
        if (tableOf(m.oid)?.shape !== shapeOfRelation(r)) {
          if (txs > 0) {
            stop = true // the schema entry for this table goes first in the next unit
            break
          }
          const k = (yield { need: 'table', relation: r }) as Known
          ;(learned ??= new Map()).set(m.oid, k)
        }
        // Mapped at the commit, onto the table's shape then: a transaction that altered the table between
        // two writes has rows of both shapes, carried by column name (a column a row lacks is NULL).
        pending.push(() => {
          const k = tableOf(m.oid)!
          applyChange(foldOf(k), k, reshape(m, r, k), fills)
        })
        break
      }
      case 'truncate': {
        const ours = m.oids.filter((o) => tableOf(o) !== undefined)
        if (ours.length === 0) break
        if (txs > 0) {
          stop = true
          break
        }
        truncated.push(...ours)
        // What this transaction did to those tables before the truncate is gone with it.
        pending.push(() => {
          for (const o of ours) folds.get(tableOf(o)!.def.id)?.clear()
        })
        break
      }
      case 'commit':
        if (m.endLsn <= input.acked) break // in the log already (a slot that went back after a crash)
        for (const p of pending) p()
        pending = []
        truncatedAll.push(...truncated)
        txs++
        end = m.endLsn
        time = m.time
        total = 0
        for (const f of folds.values()) total += f.rows
        if (total >= input.maxChanges) stop = true
        break
      default:
        break
    }
    if (stop) break
  }
  if (txs === 0) return null
  // A row whose primary key changed while a TOASTed value stayed as it was: pgoutput sends neither the value
  // nor the old row, and the row moves to a new key at the replica, so the value is read from the origin
  // (only for rows still the last change of their key). If the row is gone since, it went in a later
  // transaction: the replica only loses the old key now and the row never appears, which is where the later
  // delete would leave it anyway.
  const held = fills.filter((f) => folds.get(f.def.id)?.holds(f.row))
  if (held.length) {
    const lookups = held.map((f) => ({ def: f.def, key: f.def.key.map((i) => f.row[i]) }))
    const now = (yield { need: 'rows', lookups }) as Array<Value[] | null>
    held.forEach((f, j) => {
      const found = now[j]
      folds.get(f.def.id)!.replace(f.row, found ? f.row.map((v, i) => (isUnchanged(v) ? found[i] : v)) : null)
    })
  }
  const changes = [...folds.values()].map((f) => f.changes()).filter((c) => c.upserts.length || c.deletes.length)
  return { changes, rows: total, txs, end, time, truncated: truncatedAll }
}

/** A Relation message's shape: what `Known.shape` is compared with. */
export function shapeOfRelation(m: RelationMessage): string {
  return JSON.stringify([m.namespace, m.name, m.columns.map((c) => [c.name, c.typeOid, c.typmod])])
}

/** One table's changes in a batch, folded to their net effect. */
class TableFold {
  /** Keyed tables: the last operation per key. */
  private readonly byKey = new Map<string, { row?: Value[]; key?: Value[] }>()
  /** Tables with no key: a multiset of inserted rows, and of pre-existing rows deleted. */
  private readonly ins = new Map<string, { row: Value[]; n: number }>()
  private readonly del = new Map<string, { row: Value[]; n: number }>()
  rows = 0

  constructor(
    readonly def: TableDef,
    readonly full: boolean
  ) {}

  private keyOf(row: Value[]): string {
    return JSON.stringify(this.def.key.map((i) => row[i]))
  }

  upsert(row: Value[]): void {
    this.rows++
    if (this.full) {
      bump(this.ins, row, 1)
      return
    }
    const k = this.keyOf(row)
    const prev = this.byKey.get(k)
    if (prev?.row && row.some(isUnchanged)) row = row.map((v, i) => (isUnchanged(v) ? prev.row![i] : v))
    this.byKey.delete(k)
    this.byKey.set(k, { row })
  }

  /** `old` is the key (keyed tables) or the whole row (no key). */
  delete(old: Value[]): void {
    this.rows++
    if (this.full) {
      const s = JSON.stringify(old)
      if (this.ins.has(s)) bump(this.ins, old, -1)
      else bump(this.del, old, 1)
      return
    }
    const k = JSON.stringify(old)
    this.byKey.delete(k)
    this.byKey.set(k, { key: old })
  }

  /** Whether `row` (this very array) is the last change of its key. */
  holds(row: Value[]): boolean {
    return this.byKey.get(this.keyOf(row))?.row === row
  }

  /** Puts `next` in place of `row` as its key's change; null: the key is deleted instead. */
  replace(row: Value[], next: Value[] | null): void {
    const k = this.keyOf(row)
    this.byKey.set(k, next ? { row: next } : { key: this.def.key.map((i) => row[i]) })
  }

  /** Drops every change: the table was truncated. */
  clear(): void {
    this.byKey.clear()
    this.ins.clear()
    this.del.clear()
  }

  changes(): TableChanges {
    const upserts: Value[][] = []
    const deletes: Value[][] = []
    for (const op of this.byKey.values()) {
      if (op.row) upserts.push(op.row)
      else deletes.push(op.key!)
    }
    for (const { row, n } of this.ins.values()) for (let i = 0; i < n; i++) upserts.push(row)
    for (const { row, n } of this.del.values()) for (let i = 0; i < n; i++) deletes.push(row)
    return { table: this.def.id, upserts, deletes }
  }
}

function bump(m: Map<string, { row: Value[]; n: number }>, row: Value[], by: number): void {
  const s = JSON.stringify(row)
  const e = m.get(s)
  if (!e) m.set(s, { row, n: by })
  else if ((e.n += by) === 0) m.delete(s)
}

const toValue = (v: TupleValue): Value => (v === UNCHANGED_TOAST ? UNCHANGED : v)

interface Fill {
  def: TableDef
  row: Value[]
}

/** The message with its tuples laid out as `k` says, by column name (identity when the shapes agree). */
function reshape(m: RowMessage, r: RelationMessage, k: Known): RowMessage {
  const names = k.def.columns.map((c) => c.name)
  if (r.columns.length === names.length && r.columns.every((c, i) => c.name === names[i])) return m
  const at = names.map((n) => r.columns.findIndex((c) => c.name === n))
  const map = (t: TupleValue[]) => at.map((i) => (i < 0 ? null : t[i]))
  if (m.tag === 'insert') return { ...m, row: map(m.row) }
  if (m.tag === 'delete') return { ...m, old: map(m.old) }
  return { ...m, row: map(m.row), old: m.old ? map(m.old) : null }
}

function applyChange(f: TableFold, k: Known, m: PgMessage, fills: Fill[]): void {
  const keyOf = (row: Value[]) => k.def.key.map((i) => row[i])
  if (m.tag === 'insert') {
    f.upsert(m.row.map(toValue))
    return
  }
  if (m.tag === 'delete') {
    const old = m.old.map(toValue)
    f.delete(k.full ? old : keyOf(old))
    return
  }
  if (m.tag !== 'update') return
  let row = m.row.map(toValue)
  if (m.old) {
    const old = m.old.map(toValue)
    if (k.full) {
      row = row.map((v, i) => (isUnchanged(v) ? old[i] : v))
      f.delete(old)
      f.upsert(row)
      return
    }
    const oldKey = keyOf(old)
    if (JSON.stringify(oldKey) !== JSON.stringify(keyOf(row))) {
      f.delete(oldKey)
      if (row.some(isUnchanged)) fills.push({ def: k.def, row })
    }
  }
  f.upsert(row)
}
