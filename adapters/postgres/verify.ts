/**
 * `mesh verify` and `mesh repair` for PostgreSQL replicas: a replica database compared row by row with a
 * scratch database the log was replayed into (the truth), and mended where it differs.
 *
 * Each table is first compared by its digest (see digestPgTables: only sums travel). A table that differs is
 * then read from both databases in the same order, through cursors, and merged: each row by the SHA-256 of its
 * text, by key (ordered by the MD5 of the key's text, which both sides compute alike whatever their
 * collations), or for a table with no key as a sorted list of row hashes. Memory holds a batch of rows and the
 * keys that differ, not the tables. A repair deletes the rows that are extra or changed and inserts the log's
 * rows for those missing or changed (a table with no key is replaced by the log's rows), every table in one
 * transaction, with the replica's deferred constraints checked at its commit.
 */
import { MeshError, sameBytes, type TableDef } from '../../protocol/index.ts'
import type { TableDiff } from '../types.ts'
import { OWN_SCHEMA, connect, digestPgTables, pgError, quoteIdent, redactUrl, type Client } from './common.ts'

/** Rows fetched per round trip from a cursor, and rows per statement of a repair. */
const BATCH = 5000

/** The tables the log holds, as the scratch database recorded them in its bookkeeping. */
async function logTables(db: Client): Promise<TableDef[]> {
  const r = await db.query(`SELECT tables FROM ${OWN_SCHEMA}.replica LIMIT 1`)
  return r.rows.length ? (JSON.parse(r.rows[0].tables) as TableDef[]) : []
}

async function exists(db: Client, name: string): Promise<boolean> {
  return (await db.query('SELECT (to_regclass($1) IS NOT NULL)::text AS ok', [name])).rows[0].ok === 'true'
}

let cursors = 0

/** The rows of a query, read through a cursor a batch at a time (the connection must be in a transaction). */
async function* rows(db: Client, sql: string): AsyncGenerator<string[]> {
  const name = `mesh_cursor_${++cursors}`
  await db.query(`DECLARE ${name} NO SCROLL CURSOR FOR ${sql}`)
  try {
    for (;;) {
      const r = await db.query({ text: `FETCH ${BATCH} FROM ${name}`, rowMode: 'array' })
      if (r.rows.length === 0) return
      yield* r.rows as string[][]
    }
  } finally {
    await db.query(`CLOSE ${name}`).catch(() => {})
  }
}

/** Where a table's rows differ: keys (each as its columns' text) missing, extra or changed in `mine`. */
interface TableCompare {
  missing: string[][]
  extra: string[][]
  changed: string[][]
  /** Counts for a table with no key (its rows cannot be named). */
  missingRows: number
  extraRows: number
}

/** Merges a table's rows of `mine` and `truth`, both read in the same order. */
async function compareTable(mine: Client, truth: Client, t: TableDef): Promise<TableCompare> {
  const cols = t.columns.map((c) => quoteIdent(c.name))
  const hash = `encode(sha256(textsend(ROW(${cols.join(', ')})::text)), 'hex')`
  const out: TableCompare = { missing: [], extra: [], changed: [], missingRows: 0, extraRows: 0 }
  // Keyed: [order, row hash, key columns' text...]; no key: [row hash].
  const keyCols = t.key.map((i) => cols[i])
  const sql = t.key.length
    ? `SELECT md5(ROW(${keyCols.join(', ')})::text), ${hash}, ` +
      `${keyCols.map((k) => `${k}::text`).join(', ')} FROM ONLY ${t.name} ORDER BY 1, ` +
      `ROW(${keyCols.join(', ')})::text COLLATE "C"`
    : `SELECT ${hash} FROM ONLY ${t.name} ORDER BY 1`
  const a = rows(mine, sql)
  const b = rows(truth, sql)
  let x = await a.next()
  let y = await b.next()
  while (!x.done || !y.done) {
    const order = x.done ? 1 : y.done ? -1 : x.value[0] < y.value[0] ? -1 : x.value[0] > y.value[0] ? 1 : 0
    if (order === 0) {
      if (t.key.length && x.value![1] !== y.value![1]) out.changed.push(y.value!.slice(2))
      x = await a.next()
      y = await b.next()
    } else if (order < 0) {
      if (t.key.length) out.extra.push(x.value!.slice(2))
      else out.extraRows++
      x = await a.next()
    } else {
      if (t.key.length) out.missing.push(y.value!.slice(2))
      else out.missingRows++
      y = await b.next()
    }
  }
  return out
}

/** Runs `fn` with both databases in a consistent read (the replica's transaction is read-write for a repair). */
async function withBoth<T>(
  mine: string,
  truth: string,
  write: boolean,
  fn: (a: Client, b: Client) => Promise<T>
): Promise<T> {
  const a = await connect(mine, { doing: 'cannot connect to the replica' })
  const b = await connect(truth, { doing: 'cannot connect to the scratch database' })
  try {
    if (write) await a.query('SET session_replication_role = replica').catch(() => {}) // allowed for a superuser
    await a.query(write ? 'BEGIN' : 'BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY')
    await b.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY')
    const r = await fn(a, b)
    await a.query('COMMIT')
    await b.query('COMMIT')
    return r
  } catch (err) {
    await a.query('ROLLBACK').catch(() => {})
    throw err
  } finally {
    await a.end().catch(() => {})
    await b.end().catch(() => {})
  }
}

/** What differs between the replica (`mine`) and the scratch database the log was replayed into (`truth`). */
export async function diffPgDatabases(mine: string, truth: string): Promise<TableDiff[]> {
  try {
    return await withBoth(mine, truth, false, async (a, b) => {
      const diffs: TableDiff[] = []
      for (const t of await logTables(b)) {
        if (!(await exists(a, t.name))) {
          diffs.push({
            table: t.name,
            missing: (await digestPgTables(b, [t])).rows,
            extra: 0,
            changed: 0,
            keys: ['(the whole table: the copy has no such table)']
          })
          continue
        }
        const [da, db] = [await digestPgTables(a, [t]), await digestPgTables(b, [t])]
        if (sameBytes(da.digest, db.digest)) continue
        const c = await compareTable(a, b, t)
        const d: TableDiff = {
          table: t.name,
          missing: c.missing.length + c.missingRows,
          extra: c.extra.length + c.extraRows,
          changed: c.changed.length,
          keys: [...c.missing, ...c.changed, ...c.extra].slice(0, 20).map((k) => k.join(', '))
        }
        if (d.missing + d.extra + d.changed > 0) diffs.push(d)
      }
      return diffs
    })
  } catch (err) {
    throw pgError(err, mine, 'cannot compare the replica with the log')
  }
}

/**
 * Puts the log's rows in place in the replica wherever its tables differ from `truth`, in one transaction. A
 * table the replica lacks is not created here (apply creates tables): the repair refuses.
 */
export async function mendPgDatabase(mine: string, truth: string, diffs: TableDiff[]): Promise<void> {
  try {
    await withBoth(mine, truth, true, async (a, b) => {
      await a.query('SET CONSTRAINTS ALL DEFERRED')
      const tables = new Map((await logTables(b)).map((t) => [t.name, t]))
      for (const d of diffs) {
        const t = tables.get(d.table)
        if (!t) continue
        if (!(await exists(a, t.name))) {
          throw MeshError.BAD_REPLICA(`the copy has no table ${t.name}`, {
            hint: 'Rebuild the copy: stop the node, drop its replica database, and start the node again.'
          })
        }
        await mendTable(a, b, t)
      }
    })
  } catch (err) {
    throw pgError(err, mine, `cannot repair the replica ${redactUrl(mine)}`)
  }
}

async function mendTable(a: Client, b: Client, t: TableDef): Promise<void> {
  const cols = t.columns.map((c) => quoteIdent(c.name))
  const unnest = (n: number, name: string) =>
    `unnest(${Array.from({ length: n }, (_, j) => `$${j + 1}::text[]`).join(', ')}) AS ` +
    `u(${Array.from({ length: n }, (_, j) => `${name}${j}`).join(', ')})`
  const insert = async (list: string[][]) => {
    for (let i = 0; i < list.length; i += BATCH) {
      const part = list.slice(i, i + BATCH)
      await a.query(
        `INSERT INTO ${t.name} (${cols.join(', ')}) OVERRIDING SYSTEM VALUE SELECT ` +
          `${t.columns.map((c, j) => `u.v${j}::${c.type}`).join(', ')} FROM ${unnest(cols.length, 'v')}`,
        cols.map((_, j) => part.map((r) => r[j]))
      )
    }
  }
  const select = `SELECT ${cols.map((c) => `${c}::text`).join(', ')} FROM ONLY ${t.name}`
  if (t.key.length === 0) {
    // No key to tell rows apart: the table is replaced by the log's rows.
    await a.query(`DELETE FROM ONLY ${t.name}`)
    let batch: string[][] = []
    for await (const r of rows(b, select)) {
      batch.push(r)
      if (batch.length >= BATCH) {
        await insert(batch)
        batch = []
      }
    }
    await insert(batch)
    return
  }
  const c = await compareTable(a, b, t)
  const keyCols = t.key.map((i) => cols[i])
  const keyIn = (keys: string[][]) => ({
    sql:
      `(${keyCols.join(', ')}) IN (SELECT ` +
      `${t.key.map((i, j) => `u.k${j}::${t.columns[i].type}`).join(', ')} FROM ${unnest(t.key.length, 'k')})`,
    values: t.key.map((_, j) => keys.map((k) => k[j]))
  })
  const wrong = [...c.extra, ...c.changed]
  for (let i = 0; i < wrong.length; i += BATCH) {
    const w = keyIn(wrong.slice(i, i + BATCH))
    await a.query(`DELETE FROM ONLY ${t.name} WHERE ${w.sql}`, w.values)
  }
  const needed = [...c.missing, ...c.changed]
  for (let i = 0; i < needed.length; i += BATCH) {
    const w = keyIn(needed.slice(i, i + BATCH))
    await insert(
      (await b.query({ text: `${select} WHERE ${w.sql}`, values: w.values, rowMode: 'array' })).rows as string[][]
    )
  }
}
