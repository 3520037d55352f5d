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
import type { CaptureBatch, CaptureSide, Logger, SnapshotChunk } from '../types.ts'
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
  private lastRead: { source: Uint8Array; sent: string; resend: number[]; seq: Map<string, string> } | null = null

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
      return fresh
    })
  }

  async resume(source: Uint8Array | null): Promise<void> {
    if (source !== null) await this.ack(source)
  }

  async schema(): Promise<SchemaEntry> {
    return this.run('cannot read the schema', async (db) => {
      await this.loadCatalog(db)
      this.sent = this.fingerprint()
      return this.schemaEntry([])
    })
  }

  private fingerprint(): string {
    return JSON.stringify([[...this.tables.values()].map((t) => t.def), this.objects])
  }

  private schemaEntry(reset: number[]): SchemaEntry {
    return {
      kind: 'schema',
      more: false,
      tables: [...this.tables.values()].map((t) => t.def),
      objects: this.objects,
      reset
    }
  }

  private async loadCatalog(db: Client): Promise<void> {
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
    // New tables get their triggers (and are sent whole) within a second.
    if (Date.now() - this.lastInstall >= 1000) {
      this.lastInstall = Date.now()
      for (const oid of await this.install()) this.resend.add(oid)
    }
    return this.run('capture failed', async (db) => {
      await db.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY')
      const snap = (await db.query('SELECT pg_current_snapshot()::text AS s')).rows[0].s as string
      await this.loadCatalog(db)
      const changed = await db.query(
        // Every change row this snapshot sees: ack() deletes exactly those.
        `SELECT tbl::int8 AS tbl, key FROM (SELECT DISTINCT ON (tbl, key) tbl, key, seq FROM ` +
          `${OWN_SCHEMA}.changes ORDER BY tbl, key, seq) c ORDER BY seq`
      )
      const schemaChanged = this.fingerprint() !== this.sent
      const resend = [...this.resend].filter((oid) => this.tables.has(oid))
      const truncated = new Set<number>(changed.rows.filter((r) => r.key === null).map((r) => Number(r.tbl)))
      for (const oid of truncated) if (this.tables.has(oid)) resend.push(oid)
      const changes: TableChanges[] = []
      let rows = 0
      const byTable = new Map<number, string[][]>()
      for (const r of changed.rows) {
        const oid = Number(r.tbl)
        if (r.key === null || !this.tables.has(oid) || resend.includes(oid)) continue
        let keys = byTable.get(oid)
        if (!keys) byTable.set(oid, (keys = []))
        keys.push(parseTextArray(r.key))
      }
      for (const [oid, keys] of byTable) {
        const { def } = this.tables.get(oid)!
        const cols = def.columns.map((c) => quoteIdent(c.name))
        const keyCols = def.key.map((i) => cols[i])
        const args = def.key.map((_, j) => `$${j + 1}::text[]`).join(', ')
        const casts = def.key.map((i, j) => `u.k${j}::${def.columns[i].type}`).join(', ')
        const found = await db.query({
          text:
            `SELECT ${cols.join(', ')} FROM ONLY ${def.name} WHERE (${keyCols.join(', ')}) IN (SELECT ` +
            `${casts} FROM unnest(${args}) AS u(${def.key.map((_, j) => `k${j}`).join(', ')}))`,
          values: def.key.map((_, j) => keys.map((k) => k[j])),
          rowMode: 'array'
        })
        // Keys compare by their text as the table prints it now.
        const present = new Set((found.rows as Value[][]).map((row) => JSON.stringify(def.key.map((i) => row[i]))))
        const printed = await db.query({
          text: `SELECT ${casts
            .split(', ')
            .map((c) => `(${c})::text`)
            .join(', ')} FROM unnest(${args}) AS u(${def.key.map((_, j) => `k${j}`).join(', ')})`,
          values: def.key.map((_, j) => keys.map((k) => k[j])),
          rowMode: 'array'
        })
        const deletes = (printed.rows as Value[][]).filter((k) => !present.has(JSON.stringify(k)))
        changes.push({ table: def.id, upserts: found.rows as Value[][], deletes })
        rows += found.rows.length + deletes.length
      }
      for (const oid of resend) {
        const { def } = this.tables.get(oid)!
        const all = await db.query({
          text: `SELECT ${def.columns.map((c) => quoteIdent(c.name)).join(', ')} FROM ONLY ${def.name}`,
          rowMode: 'array'
        })
        changes.push({ table: def.id, upserts: all.rows as Value[][], deletes: [] })
        rows += all.rows.length
      }
      await db.query('COMMIT')
      const seq = await readSequences(db)
      const seqChanges = seq.filter(([n, v]) => this.ackedSeq.get(n as string) !== v)
      if (seqChanges.length) changes.push({ table: SEQUENCES_TABLE, upserts: seqChanges, deletes: [] })
      if (changed.rows.length === 0 && !schemaChanged && resend.length === 0 && seqChanges.length === 0) return null
      const source = encodeSource(snap)
      this.lastRead = {
        source,
        sent: this.fingerprint(),
        resend,
        seq: new Map(seq.map(([n, v]) => [n as string, v as string]))
      }
      const reset = resend.map((oid) => this.tables.get(oid)!.def.id)
      return {
        schema: schemaChanged || reset.length ? this.schemaEntry(reset) : null,
        changes,
        rows,
        time: Date.now(),
        source
      }
    })
  }

  async ack(source: Uint8Array): Promise<void> {
    const snap = decodeSource(source)
    await this.run('cannot acknowledge the captured changes', (db) =>
      db.query(`DELETE FROM ${OWN_SCHEMA}.changes WHERE pg_visible_in_snapshot(xid, $1::pg_snapshot)`, [snap])
    )
    if (this.lastRead && sameBytes(this.lastRead.source, source)) {
      this.sent = this.lastRead.sent
      for (const oid of this.lastRead.resend) this.resend.delete(oid)
      this.ackedSeq = this.lastRead.seq
      this.lastRead = null
    }
  }

  /**
   * The checkpoint digest, when the tables are exactly what the log holds: in one REPEATABLE READ snapshot
   * that sees no change row (every change it sees is in the log and acknowledged) and no new shape.
   */
  async checkpoint(): Promise<{ digest: Uint8Array; rows: number } | null> {
    if (this.lastRead !== null || this.resend.size > 0) return null
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
