/**
 * What the PostgreSQL capture and apply sides share: connecting with clear errors, the session settings that
 * make every value's text form exact and the same on both sides, quoting, and reading the schema from the
 * catalogs.
 *
 * Values. Every column value travels as the text its type's output function prints (what pgoutput sends, and
 * what a SELECT returns here, as no value is parsed into a JS type), and is turned back into its type by the
 * type's input function at the replica. With the settings below that round trip is exact for every built-in
 * type: integers, numeric with its scale, real and double (shortest exact form), text, bytea (hex),
 * booleans, dates, timestamps (UTC, ISO), intervals, uuid, json (kept byte for byte) and jsonb, arrays,
 * enums. PostgreSQL rows therefore never hold a BLOB value; a zero-length BLOB in a PostgreSQL log marks a
 * TOASTed value that an update left unchanged (UNCHANGED below).
 *
 * Tables are named in the log by their quoted, schema-qualified name (`public.orders`, `"My Shop"."Orders"`)
 * and identified by their oid at the origin.
 */
import { createHash } from 'node:crypto'
import pg from 'pg'
import {
  MeshError,
  RawText,
  type ColumnDef,
  type SchemaObject,
  type TableChanges,
  type TableDef,
  type Value
} from '../../protocol/index.ts'

import { checkUrl, redactUrl } from './url.ts'

export { checkUrl, redactUrl, splitPassword } from './url.ts'

/** branchmesh's own schema in a PostgreSQL database; it is never captured. */
export const OWN_SCHEMA = '_mesh'

/** The table id that carries sequence positions: rows [sequence name, last value]. No relation has oid 0. */
export const SEQUENCES_TABLE = 0

/** The marker of an unchanged TOASTed value in a PostgreSQL row (see the module comment). */
export const UNCHANGED: Uint8Array = new Uint8Array(0)

export function isUnchanged(v: Value): boolean {
  return v instanceof Uint8Array && v.length === 0
}

/** Session settings under which every value's text form is exact and identical at both ends. */
const SESSION = [
  'DateStyle=ISO,YMD',
  'IntervalStyle=postgres',
  'TimeZone=UTC',
  'extra_float_digits=3',
  'bytea_output=hex',
  'client_encoding=UTF8'
]

/** Every value is returned as the text PostgreSQL sent, never parsed. */
const textTypes = { getTypeParser: () => (v: string) => v }

export function quoteIdent(name: string): string {
  return `"${name.replaceAll('"', '""')}"`
}

export function quoteLiteral(s: string): string {
  return `'${s.replaceAll("'", "''")}'`
}

/** Turns a pg error into a MeshError that says what to do; never includes the password. */
export function pgError(err: unknown, url: string, doing: string): MeshError {
  if (err instanceof MeshError) return err
  const e = err as { code?: string; message?: string; detail?: string }
  const code = e?.code ?? ''
  const text = e?.message ?? String(err)
  const where = redactUrl(url)
  const context = { url: where, pgCode: code }
  const msg = `${doing} (${where}): ${text}`
  if (
    ['ECONNREFUSED', 'ENOTFOUND', 'EHOSTUNREACH', 'ETIMEDOUT', 'ECONNRESET', 'EPIPE', 'EAI_AGAIN'].includes(code) ||
    /Connection terminated|timeout expired|not queryable/i.test(text)
  ) {
    return MeshError.PG_UNREACHABLE(msg, { context, cause: err })
  }
  if (
    code === '28P01' ||
    code === '28000' ||
    /password authentication failed|SASL|no password was provided/i.test(text)
  ) {
    return MeshError.PG_AUTH(msg, { context, cause: err })
  }
  if (code === '3D000') return MeshError.PG_NO_DATABASE(msg, { context, cause: err })
  // 57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect now, class 08: connection exception.
  if (code.startsWith('57P') || code.startsWith('08')) return MeshError.PG_UNREACHABLE(msg, { context, cause: err })
  if (code === '53100')
    return MeshError.DISK_FULL(msg, {
      context,
      cause: err,
      hint:
        'Free space on the disk holding the PostgreSQL data folder. Nothing was lost: the node resumes ' +
        'where it stopped.'
    })
  if (code === '53300')
    return MeshError.PG_UNREACHABLE(msg, {
      context,
      cause: err,
      hint: 'PostgreSQL has no free connection slot (max_connections). The node keeps trying.'
    })
  if (code === '40001' || code === '40P01' || code === '55P03')
    return MeshError.DATABASE_LOCKED(msg, { context, cause: err })
  return MeshError.DATABASE_ERROR(msg, { context, cause: err })
}

export type Client = pg.Client

/** Connects with the exact-text session settings. `replication` opens a walsender (replication) connection. */
export async function connect(url: string, opts: { replication?: boolean; doing?: string } = {}): Promise<pg.Client> {
  checkUrl(url)
  const client = new pg.Client({
    connectionString: url,
    types: textTypes,
    application_name: 'branchmesh',
    options: SESSION.map((s) => `-c ${s}`).join(' '),
    connectionTimeoutMillis: 10_000,
    ...(opts.replication ? { replication: 'database' } : {})
  } as pg.ClientConfig)
  // An error on an idle connection (the server restarted) must not crash the node; the next query fails.
  client.on('error', () => {})
  try {
    await client.connect()
  } catch (err) {
    await client.end().catch(() => {})
    throw pgError(err, url, opts.doing ?? 'cannot connect to PostgreSQL')
  }
  return client
}

// --- the schema ------------------------------------------------------------------------------------------------

export interface PgColumn {
  name: string
  type: string
  typeOid: number
  typmod: number
  /**
   * typtype of the column's type (or of its element type for arrays): b base, e enum, d domain, c composite, r range, m
   * multirange.
   */
  kind: string
  /** The type's schema, for user types (enums...). */
  typeSchema: string
  notNull: boolean
  default: string | null
  /** '' none, 'a' always, 'd' by default. */
  identity: string
  /** '' none, 's' stored generated (not sent by pgoutput: computed again at the replica). */
  generated: string
}

export interface PgTable {
  oid: number
  /** Quoted and schema-qualified, as format('%I.%I') prints it. */
  name: string
  /** The schema and the table's own name, unquoted. */
  nsp: string
  rel: string
  /** relreplident: d default (primary key), f full, n nothing, i index. */
  replident: string
  /** Every column, in attnum order, generated ones included. */
  all: PgColumn[]
  /** Names of the primary key's columns, in key order; empty when it has none. */
  pk: string[]
}

const TABLES_SQL = `
SELECT c.oid::int8 AS oid, format('%I.%I', n.nspname, c.relname) AS name, n.nspname AS nsp, c.relname AS rel,
       c.relreplident AS replident,
  (SELECT coalesce(json_agg(json_build_object(
      'name', a.attname, 'type', format_type(a.atttypid, a.atttypmod), 'typeOid', a.atttypid::int8,
      'typmod', a.atttypmod,
      'kind', coalesce(et.typtype, t.typtype), 'typeSchema', coalesce(etn.nspname, tn.nspname),
      'notNull', a.attnotnull,
      'default', pg_get_expr(d.adbin, d.adrelid), 'identity', a.attidentity,
      'generated', a.attgenerated) ORDER BY a.attnum), '[]')
     FROM pg_attribute a
     JOIN pg_type t ON t.oid = a.atttypid JOIN pg_namespace tn ON tn.oid = t.typnamespace
     LEFT JOIN pg_type et ON et.oid = t.typelem AND t.typcategory = 'A'
     LEFT JOIN pg_namespace etn ON etn.oid = et.typnamespace
     LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) AS columns,
  (SELECT coalesce(json_agg(a.attname ORDER BY k.i), '[]')
     FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, i)
     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
    WHERE i.indrelid = c.oid AND i.indisprimary) AS pk
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND c.relpersistence = 'p'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema', '${OWN_SCHEMA}')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
ORDER BY c.oid`

// Objects a replica needs besides tables: enum types, sequences (not those an identity column owns),
// indexes other than primary keys, unique and foreign-key constraints.
const OBJECTS_SQL = `
SELECT 'type' AS type, format('%I.%I', n.nspname, t.typname) AS name, '' AS tbl,
       format('CREATE TYPE %I.%I AS ENUM (%s)', n.nspname, t.typname,
              (SELECT string_agg(quote_literal(e.enumlabel), ', ' ORDER BY e.enumsortorder)
                 FROM pg_enum e WHERE e.enumtypid = t.oid)) AS sql
  FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
 WHERE t.typtype = 'e' AND n.nspname NOT IN ('pg_catalog', 'information_schema', '${OWN_SCHEMA}')
UNION ALL
SELECT 'sequence', format('%I.%I', n.nspname, c.relname), '',
       format('CREATE SEQUENCE IF NOT EXISTS %I.%I AS %s INCREMENT %s MINVALUE %s MAXVALUE %s START %s CACHE %s%s',
              n.nspname, c.relname, format_type(s.seqtypid, NULL),
              s.seqincrement, s.seqmin, s.seqmax, s.seqstart, s.seqcache,
              CASE WHEN s.seqcycle THEN ' CYCLE' ELSE '' END)
  FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', '${OWN_SCHEMA}')
   AND NOT EXISTS (SELECT 1 FROM pg_depend d
                    WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'i')
UNION ALL
SELECT 'index', format('%I.%I', n.nspname, ic.relname), format('%I.%I', n.nspname, tc.relname),
       pg_get_indexdef(i.indexrelid)
  FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_class tc ON tc.oid = i.indrelid
  JOIN pg_namespace n ON n.oid = tc.relnamespace
 WHERE NOT i.indisprimary AND tc.relkind = 'r'
   AND n.nspname NOT IN ('pg_catalog', 'information_schema', '${OWN_SCHEMA}')
   AND n.nspname NOT LIKE 'pg\\_toast%'
   AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid AND k.contype IN ('u', 'p', 'x'))
UNION ALL
SELECT 'constraint', format('%I.%I', n.nspname, k.conname), format('%I.%I', n.nspname, tc.relname),
       format('ALTER TABLE %I.%I ADD CONSTRAINT %I %s', n.nspname, tc.relname, k.conname, pg_get_constraintdef(k.oid))
  FROM pg_constraint k JOIN pg_class tc ON tc.oid = k.conrelid JOIN pg_namespace n ON n.oid = tc.relnamespace
 WHERE k.contype IN ('u', 'f') AND tc.relkind = 'r'
   AND n.nspname NOT IN ('pg_catalog', 'information_schema', '${OWN_SCHEMA}')
ORDER BY 1, 2`

export async function readTables(client: pg.Client): Promise<PgTable[]> {
  const r = await client.query(TABLES_SQL)
  return r.rows.map((row) => ({
    oid: Number(row.oid),
    name: row.name,
    nsp: row.nsp,
    rel: row.rel,
    replident: row.replident,
    all: JSON.parse(row.columns) as PgColumn[],
    pk: JSON.parse(row.pk) as string[]
  }))
}

export async function readObjects(client: pg.Client): Promise<SchemaObject[]> {
  const r = await client.query(OBJECTS_SQL)
  return r.rows.map((row) => ({ type: row.type, name: row.name, table: row.tbl, sql: row.sql }))
}

/** Why a table cannot be carried, or null when it can. */
export function cannotCarry(t: PgTable): string | null {
  for (const c of t.all) {
    if (c.kind === 'd')
      return `column ${c.name} has the domain type ${c.type}, which a replica cannot create; use the base type`
    if (c.kind === 'c' && c.typeSchema !== 'pg_catalog')
      return `column ${c.name} has the composite type ${c.type}, which a replica cannot create`
    if ((c.kind === 'r' || c.kind === 'm') && c.typeSchema !== 'pg_catalog')
      return `column ${c.name} has the user-defined range type ${c.type}`
  }
  return null
}

/**
 * The table as the log describes it: the columns pgoutput sends (generated ones are computed again at the
 * replica), and the primary key; a table without one has an empty key and is identified by all of its values
 * (REPLICA IDENTITY FULL).
 */
export function toTableDef(t: PgTable): TableDef {
  const sent = t.all.filter((c) => c.generated === '')
  const columns: ColumnDef[] = sent.map((c) => ({ name: c.name, type: c.type, notNull: c.notNull }))
  const key = t.pk.map((k) => sent.findIndex((c) => c.name === k))
  return { id: t.oid, name: t.name, sql: createTableSql(t), columns, key }
}

/** CREATE TABLE with one column per line (a replica takes a new column's clause from its line). */
export function createTableSql(t: PgTable): string {
  const cols = t.all.map((c) => {
    let s = `${quoteIdent(c.name)} ${c.type}`
    if (c.generated === 's') return `${s} GENERATED ALWAYS AS (${c.default}) STORED`
    if (c.identity === 'a') s += ' GENERATED ALWAYS AS IDENTITY'
    else if (c.identity === 'd') s += ' GENERATED BY DEFAULT AS IDENTITY'
    else if (c.default !== null) s += ` DEFAULT ${c.default}`
    if (c.notNull) s += ' NOT NULL'
    return s
  })
  if (t.pk.length) cols.push(`PRIMARY KEY (${t.pk.map(quoteIdent).join(', ')})`)
  return `CREATE TABLE ${t.name} (\n  ${cols.join(',\n  ')}\n)`
}

/** The positions of every sequence, as rows of the SEQUENCES_TABLE. */
export async function readSequences(client: pg.Client): Promise<Value[][]> {
  const r = await client.query(
    `SELECT format('%I.%I', schemaname, sequencename) AS name, last_value::text AS v FROM pg_sequences
      WHERE last_value IS NOT NULL AND schemaname NOT IN ('pg_catalog', 'information_schema', '${OWN_SCHEMA}')`
  )
  return r.rows.map((row) => [row.name, row.v])
}

// --- SQL text of changes (divergence files) ---------------------------------------------------------------------

function literal(v: Value, type: string): string {
  if (v === null) return 'NULL'
  if (v instanceof RawText) {
    throw MeshError.BAD_LOG('a PostgreSQL row holds TEXT that is not UTF-8, which PostgreSQL cannot store')
  }
  const s = typeof v === 'string' ? v : v instanceof Uint8Array ? `\\x${Buffer.from(v).toString('hex')}` : String(v)
  return `${quoteLiteral(s)}::${type}`
}

/**
 * How each column the log carries gets its values at the table's origin, read from the table's CREATE TABLE
 * text (`def.sql`, one column per line, as createTableSql writes it): 'always' (GENERATED ALWAYS AS IDENTITY,
 * which an INSERT may set only with OVERRIDING SYSTEM VALUE), 'identity' (GENERATED BY DEFAULT), 'serial'
 * (DEFAULT nextval(...)), or absent. Matches each line against the column's name and type, so a default
 * expression or a name that holds these words is not taken for them.
 */
export function columnFeeds(def: TableDef): Map<string, 'always' | 'identity' | 'serial'> {
  const feeds = new Map<string, 'always' | 'identity' | 'serial'>()
  const lines = new Set(def.sql.split('\n').map((l) => l.trim().replace(/,$/, '')))
  for (const c of def.columns) {
    const head = `${quoteIdent(c.name)} ${c.type} `
    for (const line of lines) {
      if (!line.startsWith(head)) continue
      const rest = line.slice(head.length)
      if (rest.startsWith('GENERATED ALWAYS AS IDENTITY')) feeds.set(c.name, 'always')
      else if (rest.startsWith('GENERATED BY DEFAULT AS IDENTITY')) feeds.set(c.name, 'identity')
      else if (rest.startsWith('DEFAULT nextval(')) feeds.set(c.name, 'serial')
    }
  }
  return feeds
}

/**
 * One row change as a PostgreSQL statement: an upsert by key, a partial update, or a plain insert (no key).
 * An INSERT into a table with a GENERATED ALWAYS identity column says OVERRIDING SYSTEM VALUE (the row keeps
 * the value it had at the origin; without it PostgreSQL refuses the value). A partial update never sets an
 * identity column it does not carry; one it carries as a key is in the WHERE, never the SET.
 */
export function pgUpsertSql(def: TableDef, row: Value[]): string {
  const cols = def.columns.map((c) => quoteIdent(c.name))
  if (def.key.length && row.some(isUnchanged)) {
    const set = def.columns.map((c, i) => ({ c, i })).filter(({ i }) => !isUnchanged(row[i]) && !def.key.includes(i))
    const where = def.key.map((i) => `${cols[i]} = ${literal(row[i], def.columns[i].type)}`).join(' AND ')
    return (
      `UPDATE ${def.name} SET ` +
      `${set.map(({ c, i }) => `${cols[i]} = ${literal(row[i], c.type)}`).join(', ')} WHERE ${where};`
    )
  }
  const always = [...columnFeeds(def).values()].includes('always')
  const values = row.map((v, i) => literal(v, def.columns[i].type)).join(', ')
  let sql = `INSERT INTO ${def.name} (${cols.join(', ')})${always ? ' OVERRIDING SYSTEM VALUE' : ''} VALUES (${values})`
  if (def.key.length) {
    const rest = def.columns.map((_, i) => i).filter((i) => !def.key.includes(i))
    sql +=
      ` ON CONFLICT (${def.key.map((i) => cols[i]).join(', ')}) DO ` +
      `${rest.length ? `UPDATE SET ${rest.map((i) => `${cols[i]} = EXCLUDED.${cols[i]}`).join(', ')}` : 'NOTHING'}`
  }
  return `${sql};`
}

/**
 * What follows a divergence's changes: each identity or serial column of `tables` has its sequence moved past
 * the column's highest value, as a promotion does (adopt.ts), so the application's next insert does not take
 * an id that a re-entered row holds. Never moves a sequence back.
 */
export function pgAfterSql(tables: TableDef[]): string[] {
  const out: string[] = []
  for (const def of tables) {
    for (const [name, feed] of columnFeeds(def)) {
      const col = def.columns.find((c) => c.name === name)!
      if (!['int2', 'int4', 'int8', 'smallint', 'integer', 'bigint'].includes(col.type)) continue
      const seq = `pg_get_serial_sequence(${quoteLiteral(def.name)}, ${quoteLiteral(name)})`
      out.push(
        `-- ${def.name}.${quoteIdent(name)} (${feed}): its sequence past the highest value, so new rows take new ids`,
        `SELECT setval(s, m) FROM (SELECT ${seq} AS s, ` +
          `(SELECT max(${quoteIdent(name)})::int8 FROM ${def.name}) AS m) x ` +
          `WHERE s IS NOT NULL AND m > (SELECT coalesce(last_value, 0) FROM pg_sequences ` +
          `WHERE format('%I.%I', schemaname, sequencename) = s);`
      )
    }
  }
  return out
}

/** A delete by key, or of one row with exactly these values (no key). */
export function pgDeleteSql(def: TableDef, key: Value[]): string {
  if (def.key.length) {
    const where = def.key
      .map((i, j) => `${quoteIdent(def.columns[i].name)} = ${literal(key[j], def.columns[i].type)}`)
      .join(' AND ')
    return `DELETE FROM ${def.name} WHERE ${where};`
  }
  const match = def.columns
    .map((c, i) => `${quoteIdent(c.name)}::text IS NOT DISTINCT FROM (${literal(key[i], c.type)})::text`)
    .join(' AND ')
  return `DELETE FROM ${def.name} WHERE ctid = (SELECT ctid FROM ${def.name} WHERE ${match} LIMIT 1);`
}

/**
 * Every row of `tables` read through a cursor in chunks, inside the caller's transaction (whose snapshot
 * decides what is read), then the sequences' positions; as snapshot chunks.
 */
export async function* copyTables(
  tx: pg.Client,
  tables: Iterable<TableDef>,
  chunkRows: number
): AsyncGenerator<{ changes: TableChanges[]; rows: number }> {
  for (const def of tables) {
    const cols = def.columns.map((c) => quoteIdent(c.name)).join(', ')
    await tx.query(`DECLARE mesh_copy NO SCROLL CURSOR FOR SELECT ${cols} FROM ONLY ${def.name}`)
    for (;;) {
      const r = await tx.query({ text: `FETCH ${chunkRows} FROM mesh_copy`, rowMode: 'array' })
      if (r.rows.length === 0) break
      yield { changes: [{ table: def.id, upserts: r.rows as Value[][], deletes: [] }], rows: r.rows.length }
    }
    await tx.query('CLOSE mesh_copy')
  }
}

/**
 * One connection kept open and opened again after the server went away: `run` maps errors to MeshErrors,
 * rolls back an open transaction, and drops a connection that broke.
 */
export class Session {
  private client: pg.Client | null = null
  constructor(
    readonly url: string,
    private readonly doing: string
  ) {}

  async db(): Promise<pg.Client> {
    if (this.client) return this.client
    const client = await connect(this.url, { doing: this.doing })
    // A connection the server ended while idle (a restart, a dropped database) is replaced at the next use.
    client.on('error', () => {
      if (this.client === client) this.client = null
    })
    this.client = client
    return client
  }

  async run<T>(doing: string, fn: (db: pg.Client) => Promise<T>): Promise<T> {
    const db = await this.db()
    try {
      return await fn(db)
    } catch (err) {
      await db.query('ROLLBACK').catch(() => {})
      const e = pgError(err, this.url, doing)
      if (e.code === 'PG_UNREACHABLE') await this.close()
      throw e
    }
  }

  async close(): Promise<void> {
    const c = this.client
    this.client = null
    await c?.end().catch(() => {})
  }
}

/**
 * Tables without a primary key need REPLICA IDENTITY FULL once a publication FOR ALL TABLES exists: without
 * it PostgreSQL refuses the application's UPDATE and DELETE on them. Gives it to every such table now, and
 * installs an event trigger (superusers only) that gives it to each new one at once; returns a warning when
 * the trigger cannot be installed (the node then does it within a second of seeing the table).
 */
export async function ensureIdentityFull(client: pg.Client): Promise<string | null> {
  const tables = await readTables(client)
  for (const t of tables) {
    if (t.pk.length === 0 && t.replident === 'd') await client.query(`ALTER TABLE ${t.name} REPLICA IDENTITY FULL`)
  }
  try {
    await client.query(IDENTITY_TRIGGER_SQL)
    return null
  } catch (err) {
    return (
      `cannot install the event trigger that gives new tables without a primary key REPLICA IDENTITY FULL ` +
      `(${(err as Error).message}): until the node sees such a table, PostgreSQL refuses UPDATE and DELETE ` +
      `on it. Create tables with a primary key, or run mesh init as a superuser.`
    )
  }
}

const IDENTITY_TRIGGER_SQL = `
CREATE SCHEMA IF NOT EXISTS ${OWN_SCHEMA};
CREATE OR REPLACE FUNCTION ${OWN_SCHEMA}.identity_full() RETURNS event_trigger LANGUAGE plpgsql AS $f$
DECLARE r record;
BEGIN
  FOR r IN SELECT c.oid::regclass AS t FROM pg_event_trigger_ddl_commands() d JOIN pg_class c ON c.oid = d.objid
            WHERE d.classid = 'pg_class'::regclass AND c.relkind = 'r' AND c.relpersistence = 'p'
              AND c.relreplident = 'd'
              AND c.relnamespace::regnamespace::text <> '${OWN_SCHEMA}'
              AND NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) LOOP
    EXECUTE format('ALTER TABLE %s REPLICA IDENTITY FULL', r.t);
  END LOOP;
END $f$;
DROP EVENT TRIGGER IF EXISTS branchmesh_identity_full;
CREATE EVENT TRIGGER branchmesh_identity_full ON ddl_command_end
  WHEN TAG IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO', 'ALTER TABLE')
  EXECUTE FUNCTION ${OWN_SCHEMA}.identity_full();`

/**
 * A digest of every row of `tables` (the columns the log carries, in its order), whatever order the rows are
 * stored in: for each table its row count and the sums of the two 64-bit halves of the first 128 bits of each
 * row's SHA-256 (of the row's text, under connect()'s fixed settings), so duplicate rows count too. The sums
 * are computed by the server; only they travel. An origin's capture and a PostgreSQL replica compute it the
 * same way over the same tables (a checkpoint): equal digests, equal rows.
 */
export async function digestPgTables(db: Client, tables: TableDef[]): Promise<{ digest: Uint8Array; rows: number }> {
  const h = createHash('sha256')
  let rows = 0
  const half = (from: number) => `coalesce(sum(('x' || substr(h, ${from}, 16))::bit(64)::int8::numeric), 0)::text`
  for (const t of [...tables].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
    const cols = t.columns.map((c) => quoteIdent(c.name)).join(', ')
    const r = await db.query(
      `SELECT count(*)::text AS n, ${half(1)} AS a, ${half(17)} AS b FROM (SELECT ` +
        `encode(sha256(textsend(ROW(${cols})::text)), 'hex') AS h FROM ONLY ${t.name}) s`
    )
    const { n, a, b } = r.rows[0] as { n: string; a: string; b: string }
    h.update(`table ${t.name} ${n} ${a} ${b}\n`)
    rows += Number(n)
  }
  return { digest: new Uint8Array(h.digest()), rows }
}

/** A schema change the capture has not seen yet makes a digest's query fail this way: try again later. */
export function isShapeError(err: unknown): boolean {
  const e = err as { code?: string; context?: { pgCode?: string }; cause?: { code?: string } }
  const code = e?.context?.pgCode ?? e?.cause?.code ?? e?.code
  return code === '42703' || code === '42P01' || code === '42704'
}
