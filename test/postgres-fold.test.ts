/**
 * The pgoutput fold (adapters/postgres/fold.ts) on made-up decoded messages: no database. Each test folds
 * transactions, applies the net changes to a replica held in memory the way PostgresApply does (deletes,
 * then upserts; a row with unchanged values updates only the others), and checks what a user would see there.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import type { Value } from '../protocol/index.ts'
import { UNCHANGED, isUnchanged } from '../adapters/postgres/common.ts'
import { foldTransactions, shapeOfRelation } from '../adapters/postgres/fold.ts'
import type { FoldAnswer, FoldInput, FoldNeed, Folded, Known, RelationMessage } from '../adapters/postgres/fold.ts'
import { UNCHANGED_TOAST, type PgMessage, type TupleValue } from '../adapters/postgres/pgoutput.ts'

const U: typeof UNCHANGED_TOAST = UNCHANGED_TOAST

interface Table {
  oid: number
  relation: RelationMessage
  known: Known
}

/** A table `public.<name>` of text columns; no `key`: REPLICA IDENTITY FULL, every column identifies a row. */
function table(oid: number, name: string, columns: string[], key: string[] = []): Table {
  const full = key.length === 0
  const relation: RelationMessage = {
    tag: 'relation',
    oid,
    namespace: 'public',
    name,
    identity: full ? 'f' : 'd',
    columns: columns.map((c) => ({ key: full || key.includes(c), name: c, typeOid: 25, typmod: -1 }))
  }
  const def = {
    id: oid,
    name: `public.${name}`,
    sql: '',
    columns: columns.map((c) => ({ name: c, type: 'text', notNull: key.includes(c) })),
    key: key.map((k) => columns.indexOf(k))
  }
  return { oid, relation, known: { def, shape: shapeOfRelation(relation), full } }
}

let lsn = 1000n
/** One committed transaction; its commit time is its end LSN (ms). */
function tx(...changes: PgMessage[]): PgMessage[] {
  const end = (lsn += 100n)
  return [
    { tag: 'begin', finalLsn: end - 8n, time: Number(end), xid: Number(end) },
    ...changes,
    { tag: 'commit', lsn: end - 8n, endLsn: end, time: Number(end) }
  ]
}
const endOf = (t: PgMessage[]) => (t.at(-1) as Extract<PgMessage, { tag: 'commit' }>).endLsn

const ins = (t: Table, ...row: TupleValue[]): PgMessage => ({ tag: 'insert', oid: t.oid, row })
/** An update; `old` as pgoutput sends it: the old key when the key changed, the whole old row with FULL. */
const upd = (t: Table, old: TupleValue[] | null, row: TupleValue[]): PgMessage => {
  const oldKind = old ? (t.known.full ? 'O' : 'K') : null
  return { tag: 'update', oid: t.oid, old, oldKind, row }
}
/** A delete: the old key (other columns null), or the whole old row with FULL. */
const del = (t: Table, ...old: TupleValue[]): PgMessage => {
  return { tag: 'delete', oid: t.oid, old, oldKind: t.known.full ? 'O' : 'K' }
}

function input(tables: Table[], more: Partial<FoldInput> = {}): FoldInput {
  return {
    relations: new Map(tables.map((t) => [t.oid, t.relation])),
    tables: new Map(tables.map((t) => [t.oid, t.known])),
    skipped: new Set<number>(),
    acked: 0n,
    maxChanges: 20_000,
    ...more
  }
}

const noQuestions = (need: FoldNeed): FoldAnswer => assert.fail(`the fold asked for ${need.need}`)

/** Runs the fold to its end; `answer` plays the origin database. */
function fold(messages: PgMessage[], inp: FoldInput, answer = noQuestions): Folded | null {
  const run = foldTransactions(messages, inp)
  let step = run.next()
  while (!step.done) step = run.next(answer(step.value))
  return step.value
}

type Replica = Map<number, Value[][]>

/** Applies a batch as PostgresApply does; `tables` are the definitions the replica holds. */
function apply(replica: Replica, tables: Table[], f: Folded): void {
  for (const ch of f.changes) {
    const { def, full } = tables.find((t) => t.known.def.id === ch.table)!.known
    const rows = replica.get(ch.table) ?? []
    const keyOf = (r: Value[]) => JSON.stringify(def.key.map((i) => r[i]))
    for (const d of ch.deletes) {
      const i = rows.findIndex((r) => (full ? JSON.stringify(r) : keyOf(r)) === JSON.stringify(d))
      if (full) assert.ok(i >= 0, `a deleted row the replica holds: ${JSON.stringify(d)}`)
      if (i >= 0) rows.splice(i, 1)
    }
    for (const u of ch.upserts) {
      const i = full ? -1 : rows.findIndex((r) => keyOf(r) === keyOf(u))
      if (u.some(isUnchanged)) {
        assert.ok(i >= 0, 'an update that leaves values unchanged names a row the replica holds')
        rows[i] = rows[i].map((v, j) => (isUnchanged(u[j]) ? v : u[j]))
      } else if (i >= 0) rows[i] = u
      else rows.push(u)
    }
    replica.set(ch.table, rows)
  }
}

const sorted = (rows: Value[][]) => [...rows].sort((a, b) => (JSON.stringify(a) < JSON.stringify(b) ? -1 : 1))
const rowsOf = (replica: Replica, t: Table) => sorted(replica.get(t.oid) ?? [])
const changesOf = (f: Folded, t: Table) => {
  const ch = f.changes.find((c) => c.table === t.oid)
  return ch ? { upserts: sorted(ch.upserts), deletes: sorted(ch.deletes) } : null
}

test('inserts, updates and deletes of one transaction travel as one net change per key', () => {
  const items = table(16400, 'items', ['id', 'name'], ['id'])
  const replica: Replica = new Map([
    [
      items.oid,
      [
        ['1', 'one'],
        ['2', 'two']
      ]
    ]
  ])
  const f = fold(
    tx(
      ins(items, '3', 'three'),
      upd(items, null, ['3', 'THREE']),
      upd(items, null, ['1', 'uno']),
      upd(items, null, ['1', 'eins']),
      del(items, '2', null),
      ins(items, '4', 'four'),
      del(items, '4', null)
    ),
    input([items])
  )!
  assert.equal(f.txs, 1)
  assert.equal(f.rows, 7, 'every row change counts, before netting')
  assert.deepEqual(changesOf(f, items), {
    upserts: [
      ['1', 'eins'],
      ['3', 'THREE']
    ],
    deletes: [['2'], ['4']]
  })
  apply(replica, [items], f)
  assert.deepEqual(rowsOf(replica, items), [
    ['1', 'eins'],
    ['3', 'THREE']
  ])
})

test('a primary key change moves the row; a TOASTed value it left unchanged is read from the origin', () => {
  const docs = table(16410, 'docs', ['id', 'body', 'note'], ['id'])
  const move = tx(upd(docs, ['1', null, null], ['2', U, 'b']))
  const asked: FoldNeed[] = []
  const f = fold(move, input([docs]), (need) => {
    asked.push(need)
    return [['2', 'a long body', 'b']]
  })!
  assert.deepEqual(asked, [{ need: 'rows', lookups: [{ def: docs.known.def, key: ['2'] }] }])
  const replica: Replica = new Map([[docs.oid, [['1', 'a long body', 'a']]]])
  apply(replica, [docs], f)
  assert.deepEqual(rowsOf(replica, docs), [['2', 'a long body', 'b']])

  // Gone from the origin since (a later transaction deleted it): the old key goes, the row never appears.
  const gone = fold(move, input([docs]), () => [null])!
  assert.deepEqual(changesOf(gone, docs), { upserts: [], deletes: [['1'], ['2']] })

  // Written again in full later in the batch: nothing to read.
  const rewritten = fold([...move, ...tx(upd(docs, null, ['2', 'new body', 'c']))], input([docs]))!
  assert.deepEqual(changesOf(rewritten, docs), { upserts: [['2', 'new body', 'c']], deletes: [['1']] })

  // A key change that sends every value asks nothing.
  const plain = fold(tx(upd(docs, ['1', null, null], ['3', 'body', 'x'])), input([docs]))!
  assert.deepEqual(changesOf(plain, docs), { upserts: [['3', 'body', 'x']], deletes: [['1']] })
})

test('a TOASTed value an update left unchanged stays as the replica has it, or as the batch wrote it', () => {
  const docs = table(16420, 'docs', ['id', 'body', 'note'], ['id'])
  const replica: Replica = new Map([[docs.oid, [['1', 'a long body', 'x']]]])
  const f = fold(
    tx(upd(docs, null, ['1', U, 'y']), ins(docs, '5', 'body five', 'p'), upd(docs, null, ['5', U, 'q'])),
    input([docs])
  )!
  assert.deepEqual(changesOf(f, docs), {
    upserts: [
      ['1', UNCHANGED, 'y'],
      ['5', 'body five', 'q']
    ],
    deletes: []
  })
  apply(replica, [docs], f)
  assert.deepEqual(rowsOf(replica, docs), [
    ['1', 'a long body', 'y'],
    ['5', 'body five', 'q']
  ])
})

test('a table altered between two writes of one transaction: rows of both shapes, carried by column name', () => {
  const before = table(16430, 'shop', ['id', 'a'], ['id'])
  const after = table(16430, 'shop', ['id', 'a', 'b'], ['id'])
  const asked: FoldNeed[] = []
  const f = fold(
    tx(
      before.relation,
      ins(before, '1', 'x'),
      after.relation,
      ins(after, '2', 'y', 'z'),
      upd(after, null, ['3', 'w', 'v'])
    ),
    input([before], { relations: new Map() }),
    (need) => {
      asked.push(need)
      return after.known
    }
  )!
  assert.deepEqual(asked, [{ need: 'table', relation: after.relation }], 'the new shape is asked for once')
  assert.deepEqual(changesOf(f, after), {
    upserts: [
      ['1', 'x', null],
      ['2', 'y', 'z'],
      ['3', 'w', 'v']
    ],
    deletes: []
  })

  // In a later transaction of the batch, a new shape ends the batch before it instead.
  const first = tx(ins(before, '1', 'x'))
  const later = fold([...first, ...tx(after.relation, ins(after, '2', 'y', 'z'))], input([before]))!
  assert.equal(later.txs, 1)
  assert.equal(later.end, endOf(first))
  assert.deepEqual(changesOf(later, before), { upserts: [['1', 'x']], deletes: [] })
})

test('REPLICA IDENTITY FULL (no key): duplicates, an update and a delete identify rows by all their values', () => {
  const ledger = table(16440, 'ledger', ['tid', 'delta', 'note'])
  const replica: Replica = new Map([
    [
      ledger.oid,
      [
        ['1', '10', 'x'],
        ['1', '10', 'x'],
        ['2', '20', 'long note']
      ]
    ]
  ])
  const f = fold(
    tx(
      del(ledger, '1', '10', 'x'),
      upd(ledger, ['2', '20', 'long note'], ['2', '25', U]),
      ins(ledger, '9', '9', 'in and out'),
      del(ledger, '9', '9', 'in and out'),
      ins(ledger, '3', '30', null),
      ins(ledger, '3', '30', null)
    ),
    input([ledger])
  )!
  assert.deepEqual(changesOf(f, ledger), {
    upserts: [
      ['2', '25', 'long note'],
      ['3', '30', null],
      ['3', '30', null]
    ],
    deletes: [
      ['1', '10', 'x'],
      ['2', '20', 'long note']
    ]
  })
  apply(replica, [ledger], f)
  assert.deepEqual(rowsOf(replica, ledger), [
    ['1', '10', 'x'],
    ['2', '25', 'long note'],
    ['3', '30', null],
    ['3', '30', null]
  ])
})

test('several transactions fold in commit order; acknowledged ones are skipped; maxChanges ends a batch', () => {
  const items = table(16450, 'items', ['id', 'name'], ['id'])
  const t1 = tx(ins(items, '1', 'a'))
  const t2 = tx(upd(items, null, ['1', 'b']))
  const t3 = tx(del(items, '1', null), ins(items, '2', 'c'))
  const all = [...t1, ...t2, ...t3]
  const f = fold(all, input([items]))!
  assert.deepEqual({ txs: f.txs, end: f.end, time: f.time }, { txs: 3, end: endOf(t3), time: Number(endOf(t3)) })
  assert.deepEqual(changesOf(f, items), { upserts: [['2', 'c']], deletes: [['1']] })

  const replica: Replica = new Map()
  apply(replica, [items], fold(all, input([items], { maxChanges: 2 }))!)
  assert.deepEqual(rowsOf(replica, items), [['1', 'b']], 'the batch ends with the transaction that reached maxChanges')
  apply(replica, [items], fold(all, input([items], { acked: endOf(t2) }))!)
  assert.deepEqual(rowsOf(replica, items), [['2', 'c']], 'the next batch starts after what the log holds')

  assert.equal(fold(all, input([items], { acked: endOf(t3) })), null, 'nothing new')
  assert.equal(fold(t1.slice(0, -1), input([items])), null, 'a transaction not committed yet waits')
})

test('a truncate drops what its transaction wrote before it and is reported; untracked tables are left out', () => {
  const items = table(16460, 'items', ['id', 'name'], ['id'])
  const other = table(16461, 'other', ['id'], ['id'])
  const own = table(16462, 'replica', ['id'], ['id'])
  own.relation.namespace = '_mesh' // branchmesh's own schema
  const f = fold(
    tx(
      ins(items, '1', 'a'),
      { tag: 'truncate', oids: [items.oid], cascade: false, restartIdentity: false },
      ins(items, '2', 'b'),
      ins(other, '7'),
      ins(own, '8')
    ),
    input([items, other, own], { skipped: new Set([other.oid]) })
  )!
  assert.deepEqual(f.truncated, [items.oid])
  assert.deepEqual(
    f.changes.map((c) => c.table),
    [items.oid]
  )
  assert.deepEqual(changesOf(f, items), { upserts: [['2', 'b']], deletes: [] })
})
