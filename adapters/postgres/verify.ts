/**
 * `mesh verify` and `mesh repair` for PostgreSQL replicas: a replica database compared row by row with a
 * scratch database the log was replayed into (the truth), and mended where it differs.
 *
 * Each table is first compared by its digest (see digestPgTables: only sums travel); a table that differs is
 * then compared row by row, each row by the SHA-256 of its text, by key (a table with no key: as a multiset of
 * rows). A repair deletes the rows that are extra or changed and inserts the log's rows for those missing or
 * changed, every table in one transaction, with the replica's deferred constraints checked at its commit.
 *
 * The row hashes of a table that differs are held in memory (about 100 bytes a row, both sides): fine for the
 * databases of the businesses this is for, not for a table of a hundred million rows.
 */
import { MeshError, type TableDef } from '../../protocol/index.ts'
import { OWN_SCHEMA, connect, digestPgTables, pgError, quoteIdent, redactUrl, type Client } from './common.ts'

export interface PgTableDiff {
  table: string
  /** Rows the log has and the replica lacks, rows it has that the log does not, rows that differ. */
  missing: number
  extra: number
  changed: number
  /** Up to 20 of the keys concerned (their text), or nothing for a table without a key. */
  keys: string[]
}

/** The tables the log holds, as the scratch database recorded them in its bookkeeping. */
async function logTables(db: Client): Promise<TableDef[]> {
  const r = await db.query(`SELECT tables FROM ${OWN_SCHEMA}.replica LIMIT 1`)
  return r.rows.length ? (JSON.parse(r.rows[0].tables) as TableDef[]) : []
}

async function exists(db: Client, name: string): Promise<boolean> {
  return (await db.query('SELECT (to_regclass($1) IS NOT NULL)::text AS ok', [name])).rows[0].ok === 'true'
}

/** Each row of `t` as key text -> row hash (a table with no key: row hash -> count). */
async function rowHashes(db: Client, t: TableDef): Promise<Map<string, string | number>> {
  const cols = t.columns.map((c) => quoteIdent(c.name))
  const hash = `encode(sha256(textsend(ROW(${cols.join(', ')})::text)), 'hex')`
  const out = new Map<string, string | number>()
  if (t.key.length === 0) {
    const r = await db.query({ text: `SELECT ${hash} FROM ONLY ${t.name}`, rowMode: 'array' })
    for (const [h] of r.rows as string[][]) out.set(h, ((out.get(h) as number | undefined) ?? 0) + 1)
    return out
  }
  const keys = t.key.map((i) => `${cols[i]}::text`)
  const r = await db.query({ text: `SELECT ${hash}, ${keys.join(', ')} FROM ONLY ${t.name}`, rowMode: 'array' })
  for (const [h, ...k] of r.rows as string[][]) out.set(JSON.stringify(k), h)
  return out
}

/** What differs between the replica (`mine`) and the scratch database the log was replayed into (`truth`). */
export async function diffPgDatabases(mine: string, truth: string): Promise<PgTableDiff[]> {
  const a = await connect(mine, { doing: 'cannot connect to the replica' })
  const b = await connect(truth, { doing: 'cannot connect to the scratch database' })
  try {
    const diffs: PgTableDiff[] = []
    for (const t of await logTables(b)) {
      const d: PgTableDiff = { table: t.name, missing: 0, extra: 0, changed: 0, keys: [] }
      if (!(await exists(a, t.name))) {
        d.missing = (await digestPgTables(b, [t])).rows
        d.keys.push('(the whole table: the copy has no such table)')
        diffs.push(d)
        continue
      }
      const [da, db] = [await digestPgTables(a, [t]), await digestPgTables(b, [t])]
      if (Buffer.from(da.digest).equals(Buffer.from(db.digest))) continue
      const want = await rowHashes(b, t)
      const have = await rowHashes(a, t)
      const note = (k: string) => {
        if (t.key.length && d.keys.length < 20) d.keys.push((JSON.parse(k) as string[]).join(', '))
      }
      if (t.key.length === 0) {
        for (const [h, n] of want) d.missing += Math.max(0, (n as number) - ((have.get(h) as number | undefined) ?? 0))
        for (const [h, n] of have) d.extra += Math.max(0, (n as number) - ((want.get(h) as number | undefined) ?? 0))
      } else {
        for (const [k, h] of want) {
          const mineH = have.get(k)
          if (mineH === undefined) d.missing++
          else if (mineH !== h) d.changed++
          else continue
          note(k)
        }
        for (const k of have.keys()) {
          if (want.has(k)) continue
          d.extra++
          note(k)
        }
      }
      if (d.missing + d.extra + d.changed > 0) diffs.push(d)
    }
    return diffs
  } catch (err) {
    throw pgError(err, mine, 'cannot compare the replica with the log')
  } finally {
    await a.end().catch(() => {})
    await b.end().catch(() => {})
  }
}

/**
 * Puts the log's rows in place in the replica wherever `diffs` says it differs, in one transaction. A table
 * the replica lacks is not created here (apply creates tables): the repair refuses.
 */
export async function mendPgDatabase(mine: string, truth: string, diffs: PgTableDiff[]): Promise<void> {
  const a = await connect(mine, { doing: 'cannot connect to the replica' })
  const b = await connect(truth, { doing: 'cannot connect to the scratch database' })
  try {
    const tables = new Map((await logTables(b)).map((t) => [t.name, t]))
    // The origin's triggers do not fire again for rows it already wrote (allowed for a superuser).
    await a.query('SET session_replication_role = replica').catch(() => {})
    await a.query('BEGIN')
    await a.query('SET CONSTRAINTS ALL DEFERRED')
    for (const d of diffs) {
      const t = tables.get(d.table)
      if (!t) continue
      if (!(await exists(a, t.name))) {
        throw MeshError.BAD_REPLICA(`the copy has no table ${t.name}`, { hint: 'Rebuild the copy: stop the node, drop its replica database, and start the node again.' })
      }
      const cols = t.columns.map((c) => quoteIdent(c.name))
      const want = await rowHashes(b, t)
      const have = await rowHashes(a, t)
      const unnest = (n: number, name: string) => `unnest(${Array.from({ length: n }, (_, j) => `$${j + 1}::text[]`).join(', ')}) AS u(${Array.from({ length: n }, (_, j) => `${name}${j}`).join(', ')})`
      const insert = async (rows: string[][]) => {
        if (rows.length === 0) return
        await a.query(
          `INSERT INTO ${t.name} (${cols.join(', ')}) OVERRIDING SYSTEM VALUE SELECT ${t.columns.map((c, i) => `u.v${i}::${c.type}`).join(', ')} FROM ${unnest(cols.length, 'v')}`,
          cols.map((_, i) => rows.map((r) => r[i]))
        )
      }
      const select = `SELECT ${cols.map((c) => `${c}::text`).join(', ')} FROM ONLY ${t.name}`
      if (t.key.length === 0) {
        // No key to tell rows apart: the table is replaced by the log's rows.
        await a.query(`DELETE FROM ONLY ${t.name}`)
        await insert((await b.query({ text: select, rowMode: 'array' })).rows as string[][])
        continue
      }
      const wrong = [...have].filter(([k, h]) => want.get(k) !== h).map(([k]) => JSON.parse(k) as string[])
      const needed = [...want].filter(([k, h]) => have.get(k) !== h).map(([k]) => JSON.parse(k) as string[])
      const keyCols = t.key.map((i) => cols[i])
      const keyIn = (keys: string[][]) => ({
        sql: `(${keyCols.join(', ')}) IN (SELECT ${t.key.map((i, j) => `u.k${j}::${t.columns[i].type}`).join(', ')} FROM ${unnest(t.key.length, 'k')})`,
        values: t.key.map((_, j) => keys.map((k) => k[j]))
      })
      if (wrong.length) {
        const w = keyIn(wrong)
        await a.query(`DELETE FROM ONLY ${t.name} WHERE ${w.sql}`, w.values)
      }
      if (needed.length) {
        const w = keyIn(needed)
        await insert((await b.query({ text: `${select} WHERE ${w.sql}`, values: w.values, rowMode: 'array' })).rows as string[][])
      }
    }
    await a.query('COMMIT')
  } catch (err) {
    await a.query('ROLLBACK').catch(() => {})
    throw pgError(err, mine, `cannot repair the replica ${redactUrl(mine)}`)
  } finally {
    await a.end().catch(() => {})
    await b.end().catch(() => {})
  }
}
