/**
 * PostgreSQL capture with triggers: the fallback where logical decoding is not allowed (a hosted server, no
 * REPLICATION role, wal_level not logical). Set "capture": "triggers" on the dataset in config.json.
 *
 * How it works. Every captured table gets a row trigger that records the key of each inserted, updated or
 * deleted row in `_mesh.changes`, with the id of the writing transaction, inside that transaction; and a
 * statement trigger that records a TRUNCATE. A read opens one REPEATABLE READ transaction, takes the change
 * rows its snapshot sees, and reads each changed key's row as it is in that snapshot: present means upsert,
 * absent means delete. The batch's source position is that snapshot, so ack() deletes exactly the change rows
 * the snapshot saw (pg_visible_in_snapshot): a transaction that was still running is not lost, and a crash
 * between append and ack repeats nothing (resume deletes them).
 *
 * What it does not do. Intermediate states between two reads are not kept (as with SQLite capture), tables
 * need a primary key (a table without one is left out, with the reason), and every write pays for one more
 * row insert. Needs PostgreSQL 13 or newer (pg_snapshot).
 */
import {
  MeshError,
  sameBytes,
  type SchemaEntry,
  type SchemaObject,
  type TableChanges,
  type TableDef,
  type Value
} from '../../protocol/index.ts'
import type { CaptureBatch, CaptureSide, CaptureStream, Logger, SnapshotChunk } from '../types.ts'
import { silentLogger } from '../types.ts'
import { TableIds, adoptReplica } from './adopt.ts'
import {
  OWN_SCHEMA,
  SEQUENCES_TABLE,
  Session,
  cannotCarry,
  copyTables,
  digestPgTables,
  isShapeError,
  pgError,
  quoteIdent,
  quoteLiteral,
  readObjects,
  readSequences,
  readTables,
  redactUrl,
  toTableDef,
  type Client,
  type PgTable
} from './common.ts'

export interface PostgresTriggerCaptureOptions {
  url: string
  logger?: Logger
}

const FUNCTION = `${OWN_SCHEMA}.capture`
const TRUNCATE_FUNCTION = `${OWN_SCHEMA}.capture_truncate`
const TRIGGER = 'zz_mesh_capture'
const TRUNCATE_TRIGGER = 'zz_mesh_capture_truncate'

const INSTALL_SQL = `
CREATE SCHEMA IF NOT EXISTS ${OWN_SCHEMA};
CREATE TABLE IF NOT EXISTS ${OWN_SCHEMA}.changes (seq bigserial PRIMARY KEY,
  xid xid8 NOT NULL DEFAULT pg_current_xact_id(), tbl oid NOT NULL, key text[]);
CREATE OR REPLACE FUNCTION ${FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $f$
DECLARE
  r jsonb;
  k text[] := '{}';
  o text[] := '{}';
  i int;
BEGIN
  IF TG_OP <> 'DELETE' THEN
    r := to_jsonb(NEW);
    FOR i IN 0 .. TG_NARGS - 1 LOOP k := k || (r ->> TG_ARGV[i]); END LOOP;
    INSERT INTO ${OWN_SCHEMA}.changes (tbl, key) VALUES (TG_RELID, k);
  END IF;
  IF TG_OP <> 'INSERT' THEN
    r := to_jsonb(OLD);
    FOR i IN 0 .. TG_NARGS - 1 LOOP o := o || (r ->> TG_ARGV[i]); END LOOP;
    IF TG_OP = 'DELETE' OR o IS DISTINCT FROM k THEN
      INSERT INTO ${OWN_SCHEMA}.changes (tbl, key) VALUES (TG_RELID, o);
    END IF;
  END IF;
  RETURN NULL;
END $f$;
CREATE OR REPLACE FUNCTION ${TRUNCATE_FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  INSERT INTO ${OWN_SCHEMA}.changes (tbl, key) VALUES (TG_RELID, NULL);
  RETURN NULL;
END $f$;`

function encodeSource(snapshot: string): Uint8Array {
  return Buffer.from(`2:${snapshot}`)
}

function decodeSource(src: Uint8Array): string {
  const s = Buffer.from(src.buffer, src.byteOffset, src.byteLength).toString()
  if (!s.startsWith('2:'))
    throw MeshError.BAD_LOG('this log was not written by PostgreSQL trigger capture (unknown source position)')
  return s.slice(2)
}

/**
 * A cheap version of the catalogs that the captured schema is read from (readTables, readObjects, the capture
 * triggers): per catalog, its row count and the sum and the largest of its rows' xmin. Any DDL inserts,
 * deletes or updates rows there, and an updated catalog row is a new row version with a newer xmin, so the
 * version moves; a version that did not move means the catalogs hold what they held. So a read compares this
 * (one query over a few thousand small rows) instead of reading the whole schema again on every poll. It may
 * move without a schema change (VACUUM FULL of a catalog, a rolled-back DDL): that costs one catalog read.
 * It is read in the same snapshot as the catalogs it vouches for, or before them, never after.
 */
const CATALOGS = [
  'pg_class',
  'pg_attribute',
  'pg_attrdef',
  'pg_type',
  'pg_enum',
  'pg_namespace',
  'pg_index',
  'pg_constraint',
  'pg_sequence',
  'pg_trigger'
]
const versionOf = (c: string) =>
  `(SELECT count(*) || '.' || coalesce(sum(xmin::text::int8), 0) || '.' || ` +
  `coalesce(max(xmin::text::int8), 0) FROM pg_catalog.${c})`
const CATALOG_VERSION_SQL = `SELECT ${CATALOGS.map(versionOf).join(" || ' ' || ")} AS v`

async function catalogVersion(db: Client): Promise<string> {
  return (await db.query(CATALOG_VERSION_SQL)).rows[0].v as string
}

/** Changed keys fetched from the read's cursor at a time; their rows are read with one query per table. */
const FETCH_KEYS = 1000
const KEYS_CURSOR = 'mesh_changed_keys'

/**
 * Memory a row read takes in JS, near enough for a budget: an array of 8-byte slots with a header, a string a
 * byte per character plus its header, anything else a small heap object (as SQLite capture counts it).
 */
function rowSize(row: Value[]): number {
  let n = 32
  for (const v of row)
    n += 8 + (typeof v === 'string' ? v.length + 24 : v instanceof Uint8Array ? v.byteLength + 96 : 24)
  return n
}

/**
 * The rows of `def` with the keys `keys` (each key as text, in key column order) as the open snapshot has
 * them: those present are upserts, the others deletes (their keys as the table prints them now).
 */
async function readKeys(
  db: Client,
  def: TableDef,
  keys: string[][]
): Promise<{ upserts: Value[][]; deletes: Value[][] }> {
  const cols = def.columns.map((c) => quoteIdent(c.name))
  const keyCols = def.key.map((i) => cols[i])
  const args = def.key.map((_, j) => `$${j + 1}::text[]`).join(', ')
  const casts = def.key.map((i, j) => `u.k${j}::${def.columns[i].type}`)
  const from = `unnest(${args}) AS u(${def.key.map((_, j) => `k${j}`).join(', ')})`
  const values = def.key.map((_, j) => keys.map((k) => k[j]))
  const found = await db.query({
    text:
      `SELECT ${cols.join(', ')} FROM ONLY ${def.name} ` +
      `WHERE (${keyCols.join(', ')}) IN (SELECT ${casts.join(', ')} FROM ${from})`,
    values,
    rowMode: 'array'
  })
  // Keys compare by their text as the table prints it now.
  const present = new Set((found.rows as Value[][]).map((row) => JSON.stringify(def.key.map((i) => row[i]))))
  const printed = await db.query({
    text: `SELECT ${casts.map((c) => `(${c})::text`).join(', ')} FROM ${from}`,
    values,
    rowMode: 'array'
  })
  const deletes = (printed.rows as Value[][]).filter((k) => !present.has(JSON.stringify(k)))
  return { upserts: found.rows as Value[][], deletes }
}

export class PostgresTriggerCapture implements CaptureSide {
  readonly engine = 'postgres' as const
  private readonly opts: PostgresTriggerCaptureOptions
  private readonly log: Logger
  private readonly session: Session
  private tables = new Map<number, { def: TableDef; pg: PgTable }>()
  private objects: SchemaObject[] = []
  private skippedTables: Array<{ table: string; reason: string }> = []
  private sent = ''
  private resend = new Set<number>()
  private ackedSeq = new Map<string, string>()
  private readonly ids = new TableIds()
  private lastInstall = 0
  /** The catalog version (catalogVersion) the tables and objects held here were read at; '' before any. */
  private catalogAt = ''
  /** The catalog version install() last looked at: unchanged, no table can lack its triggers. */
  private installedAt = ''
  /** How often the schema was read from the catalogs, in all (the tests see that an idle poll does not). */
  catalogReads = 0
  /** The last batch read and not yet acknowledged; `readAt`: just before its snapshot was taken (see lag()). */
  private lastRead: {
    source: Uint8Array
    sent: string
    resend: number[]
    seq: Map<string, string>
    readAt: number
  } | null = null
  /** A time before which every change committed is in the log (see lag()), and the last bytes lag() measured. */
  private coveredAt = Date.now()
  private lagBytes = 0

  constructor(opts: PostgresTriggerCaptureOptions) {
    this.opts = opts
    this.log = opts.logger ?? silentLogger
    this.session = new Session(opts.url, 'cannot connect to the origin database')
  }

  private async run<T>(doing: string, fn: (db: Client) => Promise<T>): Promise<T> {
    try {
      return await this.session.run(doing, fn)
    } catch (err) {
      // A table or column dropped between reading the catalogs and reading its rows: read again.
      const code = (err as MeshError).context?.pgCode
      if (code === '42703' || code === '42P01') throw MeshError.IO_ERROR((err as Error).message, { cause: err })
      throw err
    }
  }

  async open(): Promise<void> {
    await this.run('cannot install trigger capture', async (db) => {
      const v = await db.query(`SELECT current_setting('server_version_num')::int AS v`)
      if (Number(v.rows[0].v) < 130000) {
        throw MeshError.CANNOT_CAPTURE(`trigger capture needs PostgreSQL 13 or newer (this is ${v.rows[0].v})`)
      }
      await db.query(INSTALL_SQL)
      if (await adoptReplica(db))
        this.log.info('the replica database is now the origin: capture triggers installed', { url: this.where })
      await this.ids.load(db)
    })
    // Tables created while the node was off have rows no trigger saw: they are sent whole.
    for (const oid of await this.install()) this.resend.add(oid)
  }

  /** Puts the capture triggers on every table that can be captured and lacks them; returns the new ones. */
  private async install(): Promise<number[]> {
    return this.run('cannot install the capture triggers', async (db) => {
      // Read before the tables: a DDL committed in between moves it again, and the next look reads again.
      const version = await catalogVersion(db)
      if (version === this.installedAt) return []
      this.catalogReads++
      const tables = await readTables(db)
      const fresh: number[] = []
      const skipped: typeof this.skippedTables = []
      const have = await db.query(`SELECT tgrelid::int8 AS oid FROM pg_trigger WHERE tgname = $1`, [TRIGGER])
      const installed = new Set(have.rows.map((r) => Number(r.oid)))
      for (const t of tables) {
        const why =
          cannotCarry(t) ??
          (t.pk.length === 0
            ? 'it has no primary key, which trigger capture needs to find its rows (add one, or use logical decoding)'
            : null)
        if (why) {
          skipped.push({ table: t.name, reason: why })
          if (!this.skippedTables.some((s) => s.table === t.name && s.reason === why)) {
            this.log.warn(MeshError.CANNOT_CAPTURE(`table ${t.name} is not captured: ${why}`).message, {
              table: t.name
            })
          }
          continue
        }
        if (!installed.has(t.oid)) {
          const args = t.pk.map(quoteLiteral).join(', ')
          await db.query(`BEGIN`)
          await db.query(
            `CREATE TRIGGER ${TRIGGER} AFTER INSERT OR UPDATE OR DELETE ON ${t.name} FOR EACH ROW ` +
              `EXECUTE FUNCTION ${FUNCTION}(${args})`
          )
          await db.query(
            `CREATE TRIGGER ${TRUNCATE_TRIGGER} AFTER TRUNCATE ON ${t.name} FOR EACH STATEMENT EXECUTE ` +
              `FUNCTION ${TRUNCATE_FUNCTION}()`
          )
          await db.query(`COMMIT`)
          fresh.push(t.oid)
        }
      }
      this.skippedTables = skipped
      // Triggers just created moved the version: looked at again next time (finds nothing new).
      this.installedAt = fresh.length ? '' : version
      return fresh
    })
  }

  async resume(source: Uint8Array | null): Promise<void> {
    if (source !== null) await this.ack(source)
  }

  async schema(): Promise<SchemaEntry> {
    return this.run('cannot read the schema', async (db) => {
      await this.loadCatalog(db, true)
      this.sent = this.fingerprint()
      return this.schemaEntry([])
    })
  }

  /** The tables and objects as last read from the catalogs, as one string (kept with them: see loadCatalog). */
  private fingerprint(): string {
    return this.print
  }

  private print = ''

  private schemaEntry(reset: number[]): SchemaEntry {
    return {
      kind: 'schema',
      more: false,
      tables: [...this.tables.values()].map((t) => t.def),
      objects: this.objects,
      reset
    }
  }

  /**
   * Reads the captured tables and objects from the catalogs, unless the catalog version is the one they were
   * read at (`force`: read them anyway). In a transaction, the version and the catalogs are of its snapshot;
   * outside one, the version is read first, so a DDL committed in between makes the next look read again.
   */
  private async loadCatalog(db: Client, force = false): Promise<void> {
    const version = await catalogVersion(db)
    if (!force && version === this.catalogAt) return
    this.catalogAt = ''
    this.catalogReads++
    const tables = await readTables(db)
    const ok = new Set(
      (await db.query(`SELECT tgrelid::int8 AS oid FROM pg_trigger WHERE tgname = $1`, [TRIGGER])).rows.map((r) =>
        Number(r.oid)
      )
    )
    this.tables = new Map()
    for (const t of tables)
      if (ok.has(t.oid)) this.tables.set(t.oid, { def: { ...toTableDef(t), id: await this.ids.of(db, t.oid) }, pg: t })
    this.objects = (await readObjects(db)).filter((o) => !o.name.startsWith(`${OWN_SCHEMA}.`))
    this.print = JSON.stringify([[...this.tables.values()].map((t) => t.def), this.objects])
    this.catalogAt = version
  }

  async *snapshot(opts: { chunkRows?: number } = {}): AsyncIterable<SnapshotChunk> {
    const db = await this.session.db()
    try {
      await db.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY')
      yield* copyTables(
        db,
        [...this.tables.values()].map((t) => t.def),
        opts.chunkRows ?? 5000
      )
      // Change rows of writes made before this copy stay: reading them again resends rows as they are.
      await db.query(`COMMIT`)
      const seq = await readSequences(db)
      this.ackedSeq = new Map(seq.map(([n, v]) => [n as string, v as string]))
      if (seq.length) yield { changes: [{ table: SEQUENCES_TABLE, upserts: seq, deletes: [] }], rows: 0 }
    } catch (err) {
      await db.query('ROLLBACK').catch(() => {})
      throw pgError(err, this.opts.url, 'the initial copy failed')
    }
  }

  async read(): Promise<CaptureBatch | null> {
    const s = await this.readStream(Infinity)
    if (s === null) return null
    const changes: TableChanges[] = []
    for await (const piece of s.pieces) changes.push(...piece.changes)
    const { source, rows } = s.end()
    return { schema: s.schema, changes, rows, time: s.time, source }
  }

  /**
   * read() in pieces of about `budgetBytes` of rows each (issue 14), so that a transaction of millions of rows
   * is never held whole: the read's REPEATABLE READ transaction stays open until the last piece, and the
   * changed keys come from a cursor in that snapshot (PostgreSQL sorts them on its side), FETCH_KEYS at a time,
   * each lot's rows read as the snapshot has them; tables sent whole (new, or truncated) are read through a
   * cursor too. So the pieces together are exactly one state of the database, as one batch would be, and the
   * source position is that snapshot. Sequences go with the last piece. The schema is read once, at the
   * start: inside one snapshot it cannot change, so no piece carries one.
   */
  async readStream(budgetBytes: number): Promise<CaptureStream | null> {
    // New tables get their triggers (and are sent whole) within a second.
    if (Date.now() - this.lastInstall >= 1000) {
      this.lastInstall = Date.now()
      for (const oid of await this.install()) this.resend.add(oid)
    }
    const readAt = Date.now()
    // From here to the last piece the connection is in the read's transaction: lag() keeps off it.
    this.reading = true
    let conn: Client | null = null
    const planned = this.run('capture failed', async (db) => {
      conn = db
      await db.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY')
      const snap = (await db.query('SELECT pg_current_snapshot()::text AS s')).rows[0].s as string
      await this.loadCatalog(db)
      const sent = this.fingerprint()
      const schemaChanged = sent !== this.sent
      const resend = [...this.resend].filter((oid) => this.tables.has(oid))
      // A TRUNCATE is a change row with no key: the table is sent whole.
      const truncated = await db.query(`SELECT DISTINCT tbl::int8 AS tbl FROM ${OWN_SCHEMA}.changes WHERE key IS NULL`)
      for (const r of truncated.rows) {
        const oid = Number(r.tbl)
        if (this.tables.has(oid) && !resend.includes(oid)) resend.push(oid)
      }
      // Every change row this snapshot sees is acknowledged with it (those of tables not captured too).
      const any = (await db.query(`SELECT 1 FROM ${OWN_SCHEMA}.changes LIMIT 1`)).rows.length > 0
      // Read inside the snapshot: at least as new as any value its rows took.
      const seq = await readSequences(db)
      const seqChanges = seq.filter(([n, v]) => this.ackedSeq.get(n as string) !== v)
      if (!any && !schemaChanged && resend.length === 0 && seqChanges.length === 0) {
        await db.query('COMMIT')
        // The snapshot saw no change row: every change committed before it is in the log.
        if (this.lastRead === null) this.coveredAt = readAt
        return null
      }
      await db.query(
        `DECLARE ${KEYS_CURSOR} NO SCROLL CURSOR FOR SELECT tbl::int8 AS tbl, key FROM (SELECT DISTINCT ON ` +
          `(tbl, key) tbl, key, seq FROM ${OWN_SCHEMA}.changes WHERE key IS NOT NULL ORDER BY tbl, key, seq) c ` +
          'ORDER BY seq'
      )
      return { snap, sent, schemaChanged, resend, seq, seqChanges }
    })
    const plan = await planned.catch((err) => {
      this.reading = false
      throw err
    })
    if (plan === null) {
      this.reading = false
      return null
    }
    const { resend, seq, seqChanges, sent } = plan
    const source = encodeSource(plan.snap)
    const reset = resend.map((oid) => this.tables.get(oid)!.def.id)
    const schema = plan.schemaChanged || reset.length ? this.schemaEntry(reset) : null
    const tables = new Map(this.tables)
    let rows = 0
    let done = false
    const self = this
    // The rest of the read runs in the transaction on `conn`: a connection the session replaced meanwhile (the
    // server ended the old one) has neither the snapshot nor the cursor, so the read ends as unreachable.
    const inRead = async <T>(fn: (db: Client) => Promise<T>): Promise<T> => {
      if ((await self.session.db()) !== conn)
        throw MeshError.PG_UNREACHABLE('the connection to the origin was lost in the middle of a capture read')
      return self.run('capture failed', fn)
    }
    async function* pieces(): AsyncGenerator<{ changes: TableChanges[]; rows: number }> {
      let piece = new Map<number, TableChanges>()
      let bytes = 0
      let n = 0
      const add = (id: number, upserts: Value[][], deletes: Value[][]) => {
        let ch = piece.get(id)
        if (!ch) piece.set(id, (ch = { table: id, upserts: [], deletes: [] }))
        for (const r of upserts) {
          ch.upserts.push(r)
          bytes += rowSize(r)
        }
        for (const k of deletes) {
          ch.deletes.push(k)
          bytes += rowSize(k)
        }
        n += upserts.length + deletes.length
      }
      const out = () => {
        const p = { changes: [...piece.values()], rows: n }
        rows += n
        piece = new Map()
        bytes = 0
        n = 0
        return p
      }
      try {
        for (;;) {
          const lot = await inRead((db) => db.query(`FETCH ${FETCH_KEYS} FROM ${KEYS_CURSOR}`))
          if (lot.rows.length === 0) break
          const byTable = new Map<number, string[][]>()
          for (const r of lot.rows) {
            const oid = Number(r.tbl)
            if (!tables.has(oid) || resend.includes(oid)) continue
            let keys = byTable.get(oid)
            if (!keys) byTable.set(oid, (keys = []))
            keys.push(parseTextArray(r.key))
          }
          for (const [oid, keys] of byTable) {
            const { def } = tables.get(oid)!
            const found = await inRead((db) => readKeys(db, def, keys))
            add(def.id, found.upserts, found.deletes)
          }
          if (bytes >= budgetBytes) yield out()
        }
        for (const oid of resend) {
          const { def } = tables.get(oid)!
          const chunks = copyTables(conn!, [def], FETCH_KEYS)
          for (;;) {
            const next = await inRead(() => chunks.next())
            if (next.done) break
            add(def.id, next.value.changes[0].upserts, [])
            if (bytes >= budgetBytes) yield out()
          }
        }
        await inRead((db) => db.query('COMMIT'))
        if (seqChanges.length) piece.set(SEQUENCES_TABLE, { table: SEQUENCES_TABLE, upserts: seqChanges, deletes: [] })
        yield out()
        done = true
        self.lastRead = {
          source,
          sent,
          resend: resend,
          seq: new Map(seq.map(([n, v]) => [n as string, v as string])),
          readAt
        }
      } finally {
        self.reading = false
        // Pieces not all read, or a failure: the snapshot goes; nothing is acknowledged, the next read starts over.
        if (!done) await conn!.query('ROLLBACK').catch(() => {})
      }
    }
    return {
      schema,
      time: Date.now(),
      pieces: pieces(),
      end() {
        if (!done) throw MeshError.BAD_LOG('the end of a capture read whose pieces were not all read')
        return { source, rows }
      }
    }
  }

  /** Set while readStream's transaction is open across awaits: nothing else may use the connection then. */
  private reading = false

  async ack(source: Uint8Array): Promise<void> {
    const snap = decodeSource(source)
    await this.run('cannot acknowledge the captured changes', (db) =>
      db.query(`DELETE FROM ${OWN_SCHEMA}.changes WHERE pg_visible_in_snapshot(xid, $1::pg_snapshot)`, [snap])
    )
    if (this.lastRead && sameBytes(this.lastRead.source, source)) {
      this.sent = this.lastRead.sent
      for (const oid of this.lastRead.resend) this.resend.delete(oid)
      this.ackedSeq = this.lastRead.seq
      this.coveredAt = this.lastRead.readAt
      this.lastRead = null
    }
  }

  /**
   * What the database committed that the log does not hold yet (CaptureSide.lag). `bytes`: the change rows
   * left in _mesh.changes, as PostgreSQL stores them (acknowledging deletes the rows the log holds, and
   * rows of transactions still open are not seen); `seconds`: since the snapshot of the last read whose whole
   * batch the log holds (every change row left committed after it), or, before any, since capture opened: at
   * most one read more than the oldest pending change's age. Zeros when nothing is pending. While a read in
   * pieces holds the connection, `bytes` is the last measured.
   */
  async lag(): Promise<{ bytes: number; seconds: number } | null> {
    const now = Date.now()
    if (this.reading) return { bytes: this.lagBytes, seconds: Math.max(0, (now - this.coveredAt) / 1000) }
    const r = await this.run('cannot measure the capture lag', (db) =>
      db.query(
        `SELECT count(*)::int8 AS n, coalesce(sum(pg_column_size(c.*)), 0)::int8 AS b FROM ${OWN_SCHEMA}.changes c`
      )
    )
    const n = Number(r.rows[0].n)
    this.lagBytes = Number(r.rows[0].b)
    if (n === 0 && this.lastRead === null && this.resend.size === 0) {
      this.coveredAt = now
      return { bytes: 0, seconds: 0 }
    }
    return { bytes: this.lagBytes, seconds: Math.max(0, (now - this.coveredAt) / 1000) }
  }

  /**
   * The checkpoint digest, when the tables are exactly what the log holds: in one REPEATABLE READ snapshot
   * that sees no change row (every change it sees is in the log and acknowledged) and no new shape.
   */
  async checkpoint(): Promise<{ digest: Uint8Array; rows: number } | null> {
    if (this.lastRead !== null || this.resend.size > 0 || this.reading) return null
    try {
      return await this.session.run('cannot take a checkpoint', async (db) => {
        await db.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY')
        try {
          await this.loadCatalog(db)
          if (this.fingerprint() !== this.sent) return null
          if ((await db.query(`SELECT 1 FROM ${OWN_SCHEMA}.changes LIMIT 1`)).rows.length > 0) return null
          return await digestPgTables(
            db,
            [...this.tables.values()].map((t) => t.def)
          )
        } finally {
          await db.query('COMMIT').catch(() => {})
        }
      })
    } catch (err) {
      if (isShapeError(err)) return null
      throw err
    }
  }

  async wait(ms: number): Promise<void> {
    await new Promise((resolve) => setTimeout(resolve, ms))
  }

  skipped(): Array<{ table: string; reason: string }> {
    return [...this.skippedTables]
  }

  /** The tables this capture carries (quoted, qualified names). */
  carried(): string[] {
    return [...this.tables.values()].map((t) => t.def.name)
  }

  async close(): Promise<void> {
    await this.session.close()
  }

  get where(): string {
    return redactUrl(this.opts.url)
  }
}

/** Parses PostgreSQL's text form of a text[] ({a,"b c",NULL}). */
export function parseTextArray(s: string): string[] {
  const out: string[] = []
  let i = 1
  while (i < s.length - 1) {
    if (s[i] === '"') {
      let v = ''
      i++
      while (s[i] !== '"') {
        if (s[i] === '\\') i++
        v += s[i++]
      }
      i++
      out.push(v)
    } else {
      const j = s.indexOf(',', i)
      const end = j < 0 || j > s.length - 1 ? s.length - 1 : j
      const v = s.slice(i, end)
      out.push(v === 'NULL' ? (null as unknown as string) : v)
      i = end
    }
    if (s[i] === ',') i++
  }
  return out
}
