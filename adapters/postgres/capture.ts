/**
 * PostgreSQL capture through logical decoding.
 *
 * How it works. The origin database has a publication FOR ALL TABLES and a durable logical replication slot
 * that uses the built-in `pgoutput` plugin (both created by `mesh init`/`mesh join --postgres URL`, or here
 * when missing). A replication connection streams the slot (START_REPLICATION, from the position the log
 * holds): PostgreSQL decodes each change once, as it is written, and its messages are kept here until the log
 * holds them. A read takes whole committed transactions from what was received, in commit order; reading
 * again without ack() returns at least the same. ack() drops them and tells the server (a standby status
 * update) that the slot may move past the last transaction the log holds; the node calls it only after the
 * log append is flushed, so a crash of the node loses nothing and repeats nothing. PostgreSQL makes a slot's
 * position durable only at its next checkpoint, so after a crash of PostgreSQL itself the slot may hand out
 * transactions again: every transaction that ends at or before the position the log holds (resume()) or
 * that was acknowledged is skipped.
 *
 * A batch is one or more whole transactions, each table's changes folded to their net effect (a row updated
 * twice travels once; a row inserted then deleted travels as a delete). It stops before a transaction that
 * changes the schema of a table, truncates one, or creates one, so the schema entry that describes those
 * changes comes first in the next unit.
 *
 * The initial copy reads every table under the snapshot exported when the slot is created, so it is exactly
 * the state the slot's stream continues from: nothing is doubled, even in tables without a primary key.
 * When the slot is found dropped behind our back, a new one is created and the whole database is copied
 * again (MeshError SOURCE_RESET tells the capture loop to do so, and why).
 *
 * Schema. Changes are followed by comparing shapes: each pgoutput Relation message (names and types of the
 * columns as the following rows have them) with the table as last sent, and, when the slot is idle, the
 * catalogs with what was last sent (new empty tables, dropped tables, indexes, columns altered with no row
 * written since). A replica migrates its tables to the new shape (adapters/postgres/apply.ts).
 *
 * Tables without a primary key are given REPLICA IDENTITY FULL, so updates and deletes carry the whole old
 * row, which identifies the row at the replica (like PostgreSQL's own logical replication).
 */
import { MeshError, sameBytes, type SchemaEntry, type SchemaObject, type TableChanges, type TableDef, type Value } from '../../protocol/index.ts'
import type { CaptureBatch, CaptureSide, Logger, SnapshotChunk } from '../types.ts'
import { silentLogger } from '../types.ts'
import {
  OWN_SCHEMA,
  SEQUENCES_TABLE,
  UNCHANGED,
  cannotCarry,
  connect,
  copyTables,
  digestPgTables,
  ensureIdentityFull,
  isShapeError,
  isUnchanged,
  pgError,
  quoteIdent,
  quoteLiteral,
  Session,
  readObjects,
  readSequences,
  readTables,
  redactUrl,
  toTableDef,
  type Client,
  type PgTable
} from './common.ts'
import { TableIds, adoptReplica } from './adopt.ts'
import { UNCHANGED_TOAST, decodeMessage, lsnText, parseLsn, type PgMessage, type TupleValue } from './pgoutput.ts'

export interface PostgresCaptureOptions {
  url: string
  /** Replication slot and publication; both default to `branchmesh_<dataset>`. */
  slot: string
  publication: string
  logger?: Logger
  /** Stop a batch once it holds this many row changes (whole transactions are never split). */
  maxChanges?: number
  /** Compare the catalogs with what was sent at most this often while idle. */
  catalogCheckMs?: number
  /** Gather changes that trickle in for this long before a read returns them (default 20 ms). */
  gatherMs?: number
}

/** What stops PostgreSQL capture, listed for the user. Empty when capture can run. */
export async function capturePrerequisites(client: Client, publication: string): Promise<string[]> {
  const r = await client.query(`
    SELECT current_setting('wal_level') AS wal, current_setting('max_replication_slots') AS slots,
           current_setting('server_version_num') AS version, r.rolsuper AS su, r.rolreplication AS repl, current_user AS who,
           EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1) AS pub
      FROM pg_roles r WHERE r.rolname = current_user`, [publication])
  const s = r.rows[0]
  const problems: string[] = []
  if (Number(s.version) < 130000) problems.push(`PostgreSQL ${s.version} is too old: logical capture needs version 13 or newer (slot WAL limits, wal_status)`)
  if (s.wal !== 'logical') problems.push(`wal_level is ${s.wal}: run ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL`)
  if (Number(s.slots) < 1) problems.push('max_replication_slots is 0: set it to at least 4 in postgresql.conf and restart PostgreSQL')
  if (s.su !== 't' && s.repl !== 't') problems.push(`the role ${s.who} may not use replication: run ALTER ROLE ${quoteIdent(s.who)} REPLICATION; as a superuser`)
  if (s.su !== 't' && s.pub !== 't') problems.push(`only a superuser can create the publication: run CREATE PUBLICATION ${quoteIdent(publication)} FOR ALL TABLES; as a superuser`)
  return problems
}

/** The capture position in the log: the end LSN of the last transaction a unit holds. */
function encodeSource(lsn: bigint): Uint8Array {
  const b = Buffer.alloc(9)
  b[0] = 1
  b.writeBigUInt64BE(lsn, 1)
  return b
}

function decodeSource(src: Uint8Array): bigint {
  const b = Buffer.from(src.buffer, src.byteOffset, src.byteLength)
  if (b.length !== 9 || b[0] !== 1) throw MeshError.BAD_LOG('this log was not written by PostgreSQL capture (unknown source position)')
  return b.readBigUInt64BE(1)
}

/** Messages kept from the stream before the log holds them; past this, the stream is paused. */
const MAX_BUFFERED = 200_000

// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01), for the standby status time.
const PG_EPOCH_MS = 946_684_800_000

/** The part of pg's Connection used for a replication stream (pg has no public API for it). */
interface PgConnection {
  on(event: 'copyData', fn: (msg: { chunk: Buffer }) => void): void
  once(event: 'replicationStart', fn: () => void): void
  sendCopyFromChunk(chunk: Buffer): void
  stream: { pause(): void; resume(): void }
}

interface Stream {
  client: Client
  /** pgoutput messages not yet held by the log, in order. */
  buf: Buffer[]
  /** Relation messages of the part already held by the log, by table oid. */
  rel: Map<number, Extract<PgMessage, { tag: 'relation' }>>
  ended: boolean
  error: MeshError | null
  paused: boolean
  /** The slot was still held by an earlier stream of this node (killed). */
  stale?: boolean
  /** How far the server's walsender has read the WAL, as its messages and keepalives say. */
  sent: bigint
  /** When the oldest message in `buf` arrived. */
  firstAt: number
  /** How many messages of `buf` the last read looked at. */
  seen: number
  /** Commit messages in `buf`. */
  commits: number
  /** Messages received in all, ever. */
  received: number
}

interface Known {
  def: TableDef
  /** Column names and type oids as pgoutput sends them; compared with each Relation message. */
  shape: string
  /** No primary key: rows are identified by all their values. */
  full: boolean
}

/** One table's changes in a batch, folded to their net effect. */
class TableFold {
  /** Keyed tables: the last operation per key. */
  private readonly byKey = new Map<string, { row?: Value[]; key?: Value[] }>()
  /** Tables with no key: a multiset of inserted rows, and of pre-existing rows deleted. */
  private readonly ins = new Map<string, { row: Value[]; n: number }>()
  private readonly del = new Map<string, { row: Value[]; n: number }>()
  rows = 0

  constructor(readonly def: TableDef, readonly full: boolean) {}

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

export class PostgresCapture implements CaptureSide {
  readonly engine = 'postgres' as const
  private readonly opts: PostgresCaptureOptions
  private readonly log: Logger
  private readonly session: Session
  private readonly tables = new Map<number, Known>()
  private objects: SchemaObject[] = []
  private skippedTables: Array<{ table: string; reason: string; oid: number }> = []
  /** The next batch starts with a schema entry. */
  private schemaPending = true
  /** Tables (by oid) whose content the next schema entry tells replicas to drop. */
  private readonly resetPending = new Set<number>()
  private readonly ids = new TableIds()
  private stream: Stream | null = null
  private waiters: Array<() => void> = []
  /** Transactions ending at or before this are in the log already. */
  private acked = 0n
  private confirmed = 0n
  private slotMissing = false
  private lastCatalogCheck = 0
  private ackedSeq = new Map<string, string>()
  private lastRead: { source: Uint8Array; schema: boolean; seq: Map<string, string> } | null = null
  /** The open snapshot of an initial copy: its transaction and the replication connection that exported it. */
  private snap: { tx: Client; repl: Client } | null = null

  constructor(opts: PostgresCaptureOptions) {
    this.opts = opts
    this.log = opts.logger ?? silentLogger
    this.session = new Session(opts.url, 'cannot connect to the origin database')
  }

  private get where(): string {
    return redactUrl(this.opts.url)
  }

  private db(): Promise<Client> {
    return this.session.db()
  }

  private query(sql: string, params: unknown[] = [], doing = 'capture failed'): Promise<{ rows: any[] }> {
    return this.session.run(doing, (db) => db.query(sql, params))
  }

  async open(): Promise<void> {
    const db = await this.db()
    const problems = await capturePrerequisites(db, this.opts.publication).catch((err) => {
      throw pgError(err, this.opts.url, 'cannot check the origin database')
    })
    if (problems.length) {
      throw MeshError.CANNOT_CAPTURE(`PostgreSQL at ${this.where} does not allow logical decoding: ${problems.join('; ')}`, {
        hint: 'Make those changes, then start the node again; or, where logical decoding cannot be allowed (a hosted server), set "capture": "triggers" for this dataset in config.json.',
        context: { problems }
      })
    }
    const pub = await this.query('SELECT 1 FROM pg_publication WHERE pubname = $1', [this.opts.publication])
    if (pub.rows.length === 0) {
      await this.query(`CREATE PUBLICATION ${quoteIdent(this.opts.publication)} FOR ALL TABLES`, [], 'cannot create the publication')
    }
    const warning = await this.session.run('cannot set REPLICA IDENTITY FULL', (db) => ensureIdentityFull(db))
    if (warning) this.log.warn(warning)
    const replica = await this.query(`SELECT to_regclass('${OWN_SCHEMA}.replica') IS NOT NULL AS has`)
    if (replica.rows[0].has === 't') await this.adopt()
    await this.ids.load(await this.db())
    await this.loadCatalog()
    const slot = await this.query('SELECT confirmed_flush_lsn::text AS lsn, plugin FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database()', [this.opts.slot])
    if (slot.rows.length === 0) this.slotMissing = true
    else {
      if (slot.rows[0].plugin !== 'pgoutput') {
        throw MeshError.CANNOT_CAPTURE(`the replication slot ${this.opts.slot} uses the plugin ${slot.rows[0].plugin}, not pgoutput`, {
          hint: `Drop it (SELECT pg_drop_replication_slot('${this.opts.slot}')) and start the node again.`
        })
      }
      this.confirmed = this.acked = parseLsn(slot.rows[0].lsn)
    }
    this.schemaPending = true
  }

  /**
   * A promoted replica becomes an origin: a slot is created first (nothing is copied: the new epoch's log
   * continues from the state the replica holds), then adopt.ts does the rest in one transaction.
   */
  private async adopt(): Promise<void> {
    const slot = await this.query('SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database()', [this.opts.slot])
    if (slot.rows.length === 0) {
      await this.query(`SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, [this.opts.slot], 'cannot create the replication slot')
    }
    try {
      await adoptReplica(await this.db())
    } catch (err) {
      throw pgError(err, this.opts.url, 'cannot turn the replica into the origin')
    }
    this.log.info('the replica database is now the origin: capture installed', { url: this.where })
  }

  /** The table as the log describes it, with its id in the log. */
  private async defOf(t: PgTable): Promise<TableDef> {
    return { ...toTableDef(t), id: await this.ids.of(await this.db(), t.oid) }
  }

  /** Reads the catalogs into the tables as last sent; gives tables with no key REPLICA IDENTITY FULL. */
  /**
   * `sameShape`: while changes flow, only what does not change a table's shape (NOT NULL, defaults, indexes,
   * constraints) is taken from the catalogs; a new shape comes with the stream's rows, in order.
   */
  private async loadCatalog(within?: Client, sameShape = false): Promise<boolean> {
    const tables = await readTables(within ?? (await this.db()))
    const objects = await readObjects(within ?? (await this.db()))
    let changed = JSON.stringify(objects) !== JSON.stringify(this.objects)
    this.objects = objects
    const seen = new Set<number>()
    const skipped: typeof this.skippedTables = []
    for (const t of tables) {
      const why = cannotCarry(t)
      if (why) {
        skipped.push({ table: t.name, reason: why, oid: t.oid })
        if (!this.skippedTables.some((s) => s.oid === t.oid && s.reason === why)) {
          this.log.warn(MeshError.UNSUPPORTED_TYPE(`table ${t.name} is not captured: ${why}`).message, { table: t.name })
        }
        continue
      }
      seen.add(t.oid)
      if (t.pk.length === 0 && t.replident !== 'f') {
        await this.query(`ALTER TABLE ${t.name} REPLICA IDENTITY FULL`, [], `cannot give ${t.name} (no primary key) REPLICA IDENTITY FULL`)
        t.replident = 'f'
      }
      const known: Known = { def: await this.defOf(t), shape: shapeOfTable(t), full: t.pk.length === 0 }
      const prev = this.tables.get(t.oid)
      if (sameShape && prev?.shape !== known.shape) continue
      if (!prev || JSON.stringify(prev.def) !== JSON.stringify(known.def)) {
        this.tables.set(t.oid, known)
        changed = true
      }
    }
    for (const oid of [...this.tables.keys()]) {
      if (!seen.has(oid) && !sameShape) {
        this.tables.delete(oid)
        changed = true
      }
    }
    this.skippedTables = skipped
    this.lastCatalogCheck = Date.now()
    return changed
  }

  async resume(source: Uint8Array | null): Promise<void> {
    if (this.slotMissing) throw this.slotGone()
    if (source === null) return
    // The stream starts from here (START_REPLICATION skips what is before it): no call on the slot, which
    // an earlier run's stream may still hold for a moment.
    const lsn = decodeSource(source)
    if (lsn > this.acked) this.acked = lsn
    if (lsn > this.confirmed) this.confirmed = lsn
  }

  private slotGone(): MeshError {
    return MeshError.SOURCE_RESET(
      `the replication slot ${this.opts.slot} at ${this.where} is gone (dropped, or invalidated by max_slot_wal_keep_size): the changes since it was lost cannot be read, so the whole database is copied into the log again`,
      { context: { slot: this.opts.slot } }
    )
  }

  async schema(): Promise<SchemaEntry> {
    // The schema starts an initial copy: the copy reads under the snapshot of a new slot.
    await this.beginSnapshot()
    await this.loadCatalog(this.snap!.tx)
    this.schemaPending = false
    this.resetPending.clear()
    return this.schemaEntry([])
  }

  private schemaEntry(reset: number[]): SchemaEntry {
    return { kind: 'schema', more: false, tables: [...this.tables.values()].map((k) => k.def), objects: this.objects, reset }
  }

  /** (Re)creates the slot over a replication connection and opens a transaction on the snapshot it exports. */
  private async beginSnapshot(): Promise<void> {
    await this.endSnapshot()
    await this.stopStream()
    const slot = this.opts.slot
    await this.query(`SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database() AND NOT active`, [slot], 'cannot replace the replication slot')
    const repl = await connect(this.opts.url, { replication: true, doing: 'cannot open a replication connection' })
    let tx: Client | null = null
    try {
      const r = await repl.query(`CREATE_REPLICATION_SLOT ${quoteIdent(slot)} LOGICAL pgoutput EXPORT_SNAPSHOT`).catch((err) => {
        throw pgError(err, this.opts.url, `cannot create the replication slot ${slot}`)
      })
      const { consistent_point: point, snapshot_name: name } = r.rows[0]
      tx = await connect(this.opts.url, { doing: 'cannot connect to the origin database' })
      await tx.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY')
      await tx.query(`SET TRANSACTION SNAPSHOT '${name}'`)
      this.snap = { tx, repl }
      this.confirmed = this.acked = parseLsn(point)
      this.slotMissing = false
      this.log.info('replication slot created; copying the database under its snapshot', { slot, at: point })
    } catch (err) {
      await tx?.end().catch(() => {})
      await repl.end().catch(() => {})
      throw pgError(err, this.opts.url, 'cannot start the initial copy')
    }
  }

  private async endSnapshot(): Promise<void> {
    if (!this.snap) return
    const { tx, repl } = this.snap
    this.snap = null
    await tx.query('COMMIT').catch(() => {})
    await tx.end().catch(() => {})
    await repl.end().catch(() => {})
  }

  async *snapshot(opts: { chunkRows?: number } = {}): AsyncIterable<SnapshotChunk> {
    if (!this.snap) await this.schema()
    const tx = this.snap!.tx
    const chunkRows = opts.chunkRows ?? 5000
    try {
      yield* copyTables(tx, [...this.tables.values()].map((k) => k.def), chunkRows)
      const seq = await readSequences(tx)
      this.ackedSeq = new Map(seq.map(([n, v]) => [n as string, v as string]))
      if (seq.length) yield { changes: [{ table: SEQUENCES_TABLE, upserts: seq, deletes: [] }], rows: 0 }
    } catch (err) {
      throw pgError(err, this.opts.url, 'the initial copy failed')
    } finally {
      await this.endSnapshot()
    }
  }

  async read(): Promise<CaptureBatch | null> {
    if (this.slotMissing) throw this.slotGone()
    const st = await this.streaming()
    await this.caughtUp(st)
    // Changes that trickle in are gathered for a few milliseconds: fewer, larger units cost the log, the
    // network and every replica less per change, for at most that much more latency.
    const gather = this.opts.gatherMs ?? 20
    if (st.buf.length > 0 && st.buf.length < 5000 && Date.now() - st.firstAt < gather) {
      await new Promise((resolve) => setTimeout(resolve, gather - (Date.now() - st.firstAt)))
    }
    st.seen = st.buf.length
    // Busy for a while: constraint and default changes, which rows do not show, are looked up now and then.
    if (st.seen > 0 && Date.now() - this.lastCatalogCheck >= 10 * (this.opts.catalogCheckMs ?? 1000)) {
      if (await this.loadCatalog(undefined, true)) this.schemaPending = true
    }
    const batch = await this.fold(st.buf.slice(0, st.seen))
    if (batch === null) {
      // Only now can a broken stream matter: everything it delivered has been read.
      if (st.error) {
        this.stream = null
        await st.client.end().catch(() => {})
        throw st.error
      }
      return this.idle()
    }
    return batch
  }

  /**
   * The stream of the slot's changes: a replication connection running START_REPLICATION, each decoded
   * transaction's messages kept in `buf` until the log holds them (ack). PostgreSQL decodes each change once,
   * as it is written; a peek would decode again from the slot's restart point every time.
   */
  private async streaming(): Promise<Stream> {
    if (this.stream && !this.stream.ended) return this.stream
    if (this.stream) {
      // Ended with nothing left to read: start again from what the log holds.
      const old = this.stream
      this.stream = null
      await old.client.end().catch(() => {})
      if (old.error && old.error.code !== 'PG_UNREACHABLE') throw old.error
    }
    const client = await connect(this.opts.url, { replication: true, doing: 'cannot open a replication connection' })
    const st: Stream = { client, buf: [], rel: new Map(), ended: false, error: null, paused: false, sent: 0n, firstAt: 0, seen: 0, commits: 0, received: 0 }
    const conn = (client as unknown as { connection: PgConnection }).connection
    const fail = (err: unknown) => {
      if (st.ended) return
      let e = pgError(err, this.opts.url, 'the replication stream ended')
      if (/replication slot .* does not exist|can no longer get changes from replication slot|has been invalidated/i.test(e.message)) {
        this.slotMissing = true
        e = this.slotGone()
      } else if (/is active for PID/i.test(e.message)) {
        // The stream of this node's previous run (killed) is still open at the server: it goes, and the
        // next read starts again.
        e = MeshError.DATABASE_LOCKED(e.message, { hint: 'The replication slot is still held by an earlier connection; the node ends it and retries.', cause: err })
        st.stale = true
      }
      st.error = e
      st.ended = true
      this.wake()
    }
    conn.on('copyData', (msg: { chunk: Buffer }) => {
      const b = msg.chunk
      if (b[0] === 0x77) {
        // XLogData: 'w', start LSN, end LSN, send time (8 bytes each), then one pgoutput message.
        const end = b.readBigUInt64BE(9)
        if (end > st.sent) st.sent = end
        // A copy: pg's parser reuses the buffer the chunk points into.
        if (st.buf.length === 0) st.firstAt = Date.now()
        const payload = Buffer.from(b.subarray(25))
        st.buf.push(payload)
        st.received++
        if (payload[0] === 0x43) st.commits++
        // Paused only while a whole transaction waits here: its read and ack resume the stream. (pgoutput
        // sends a transaction at its commit: pausing inside one would wait for ever.)
        if (st.buf.length > MAX_BUFFERED && st.commits > 0 && !st.paused) {
          st.paused = true
          conn.stream.pause()
        }
        this.wake()
      } else if (b[0] === 0x6b) {
        // A keepalive: how far the walsender has read; it may ask for an answer.
        const end = b.readBigUInt64BE(1)
        if (end > st.sent) st.sent = end
        if (b[17] === 1) this.feedback(st)
        this.wake()
      }
    })
    client.on('error', fail)
    client.on('end', () => fail(new Error('Connection terminated')))
    const started = new Promise<void>((resolve, reject) => {
      conn.once('replicationStart', resolve)
      client
        .query(`START_REPLICATION SLOT ${quoteIdent(this.opts.slot)} LOGICAL ${lsnText(this.confirmed)} (proto_version '1', publication_names ${quoteLiteral(this.opts.publication)})`)
        .then(() => fail(new Error('Connection terminated: the replication stream stopped')))
        .catch((err) => {
          fail(err)
          reject(st.error)
        })
    })
    try {
      await started
    } catch (err) {
      await client.end().catch(() => {})
      if (st.stale) {
        await this.query(
          `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database() AND active AND active_pid <> pg_backend_pid()`,
          [this.opts.slot],
          'cannot end the earlier replication connection'
        ).catch(() => {})
      }
      throw err
    }
    this.stream = st
    return st
  }

  /**
   * Waits (up to 2 s) until the stream has delivered everything committed before this call: the server's
   * flushed WAL position now, against how far its walsender has read, which a keepalive it is asked for
   * reports after every message before it. So a read returns every change committed before it began.
   */
  private async caughtUp(st: Stream, upTo?: bigint): Promise<boolean> {
    const target = upTo ?? parseLsn((await this.query('SELECT pg_current_wal_flush_lsn()::text AS lsn', [], 'cannot read the server position')).rows[0].lsn)
    const until = Date.now() + 2000
    while (st.sent < target && !st.ended && Date.now() < until) {
      this.feedback(st, true)
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, 50)
        this.waiters.push(() => {
          clearTimeout(t)
          resolve()
        })
      })
    }
    return st.sent >= target && !st.ended
  }

  /**
   * The checkpoint digest, when the tables are exactly what the log holds. The stream is caught up with
   * nothing unread before the digest's snapshot is taken, and after it up to the WAL insert position read in
   * that snapshot (every transaction it sees wrote its commit record before that point, flushed or not: with
   * synchronous_commit off a commit is visible before it is flushed and streamed), with no message in
   * between: then no transaction committed between the two, so the snapshot saw exactly what the log holds.
   */
  async checkpoint(): Promise<{ digest: Uint8Array; rows: number } | null> {
    const st = this.stream
    if (this.lastRead !== null || this.schemaPending || this.slotMissing || this.snap !== null || !st || st.ended) return null
    if (!(await this.caughtUp(st)) || st.buf.length > 0) return null
    const received = st.received
    const defs = [...this.tables.values()].map((k) => k.def)
    let d: { digest: Uint8Array; rows: number; insert: bigint }
    try {
      d = await this.session.run('cannot take a checkpoint', async (db) => {
        await db.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY')
        try {
          // The first statement takes the snapshot; the position is read after it.
          let insert = parseLsn((await db.query('SELECT pg_current_wal_insert_lsn()::text AS lsn')).rows[0].lsn)
          // At the start of a WAL page the insert position is past the page's header, where no record ends.
          const page = insert % 8192n
          if (page === 24n || page === 40n) insert -= page
          return { ...(await digestPgTables(db, defs)), insert }
        } finally {
          await db.query('COMMIT').catch(() => {})
        }
      })
    } catch (err) {
      if (isShapeError(err)) return null
      throw err
    }
    if (!(await this.caughtUp(st, d.insert)) || st.buf.length > 0 || st.received !== received) return null
    return { digest: d.digest, rows: d.rows }
  }

  /** Tells the server how far the log holds the stream (its slot may let go of the WAL before it). */
  private feedback(st: Stream, askReply = false): void {
    if (st.ended) return
    const b = Buffer.alloc(34)
    b[0] = 0x72 // 'r': standby status update
    b.writeBigUInt64BE(this.confirmed, 1) // written
    b.writeBigUInt64BE(this.confirmed, 9) // flushed
    b.writeBigUInt64BE(this.confirmed, 17) // applied
    b.writeBigInt64BE(BigInt(Date.now() - PG_EPOCH_MS) * 1000n, 25)
    b[33] = askReply ? 1 : 0
    try {
      ;(st.client as unknown as { connection: PgConnection }).connection.sendCopyFromChunk(b)
    } catch {
      // A connection that broke: the stream's error handler says so.
    }
  }

  private wake(): void {
    const w = this.waiters
    this.waiters = []
    for (const f of w) f()
  }

  /** Nothing to read: look for schema changes no row has shown yet, and for sequences that moved. */
  private async idle(): Promise<CaptureBatch | null> {
    let schema = this.schemaPending
    if (Date.now() - this.lastCatalogCheck >= (this.opts.catalogCheckMs ?? 1000)) {
      if (await this.loadCatalog()) schema = true
      const seq = await this.sequenceChanges()
      if (schema || seq.upserts.length) {
        return this.finish({ schema, changes: seq.upserts.length ? [seq] : [], rows: 0, end: this.acked, time: Date.now(), seq })
      }
    } else if (schema) {
      return this.finish({ schema, changes: [], rows: 0, end: this.acked, time: Date.now(), seq: null })
    }
    return null
  }

  private async sequenceChanges(): Promise<TableChanges & { values: Map<string, string> }> {
    const seq = await readSequences(await this.db())
    const values = new Map(seq.map(([n, v]) => [n as string, v as string]))
    const upserts = seq.filter(([n, v]) => this.ackedSeq.get(n as string) !== v)
    return { table: SEQUENCES_TABLE, upserts, deletes: [], values }
  }

  private finish(b: { schema: boolean; changes: TableChanges[]; rows: number; end: bigint; time: number; seq: { values: Map<string, string> } | null }): CaptureBatch {
    const source = encodeSource(b.end)
    const reset = [...this.resetPending].map((oid) => this.tables.get(oid)?.def.id).filter((id): id is number => id !== undefined)
    this.lastRead = { source, schema: b.schema, seq: b.seq?.values ?? this.ackedSeq }
    return { schema: b.schema ? this.schemaEntry(reset) : null, changes: b.changes, rows: b.rows, time: b.time, source }
  }

  /** Folds the decoded messages into one batch of whole transactions; null when none is new. */
  private async fold(rows: Buffer[]): Promise<CaptureBatch | null> {
    // The columns each table's rows have at this point of the stream: pgoutput sends a Relation message once
    // per session and again when a table changes, so the state at the start of the unread part is kept.
    const rel = new Map(this.stream?.rel ?? [])
    const folds = new Map<number, TableFold>()
    const foldOf = (k: Known) => {
      let f = folds.get(k.def.id)
      if (!f) folds.set(k.def.id, (f = new TableFold(k.def, k.full)))
      return f
    }
    let txs = 0
    let end = this.acked
    let time = Date.now()
    let total = 0
    // The current transaction's changes, folded into the batch at its commit.
    let pending: Array<(f: (k: Known) => TableFold) => void> = []
    let truncated: number[] = []
    let stop = false
    // Rows whose primary key changed while a TOASTed value stayed as it was: the value is read at the end.
    const fills: Fill[] = []
    for (let i = 0; i < rows.length && !stop; i++) {
      let m: PgMessage
      try {
        m = decodeMessage(rows[i])
      } catch (err) {
        throw MeshError.DATABASE_ERROR(`cannot decode a pgoutput message: ${(err as Error).message}`, { cause: err })
      }
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
          if (!r || r.namespace === OWN_SCHEMA || this.skippedTables.some((s) => s.oid === m.oid)) break
          if (this.tables.get(m.oid)?.shape !== shapeOfRelation(r)) {
            if (txs > 0) {
              stop = true // the schema entry for this table goes first in the next unit
              break
            }
            await this.learnRelation(r)
          }
          if (!this.tables.has(m.oid)) break
          // Mapped at the commit, onto the table's shape then: a transaction that altered the table between
          // two writes has rows of both shapes, carried by column name (a column a row lacks is NULL).
          pending.push((f) => {
            const k = this.tables.get(m.oid)!
            applyChange(f(k), k, reshape(m, r, k), fills)
          })
          break
        }
        case 'truncate': {
          const ours = m.oids.filter((o) => this.tables.has(o))
          if (ours.length === 0) break
          if (txs > 0) {
            stop = true
            break
          }
          truncated.push(...ours)
          // What this transaction did to those tables before the truncate is gone with it.
          pending.push(() => {
            for (const o of ours) folds.get(this.tables.get(o)!.def.id)?.clear()
          })
          break
        }
        case 'commit':
          if (m.endLsn <= this.acked) break // in the log already (a slot that went back after a crash)
          for (const p of pending) p(foldOf)
          pending = []
          if (truncated.length) {
            for (const o of truncated) this.resetPending.add(o)
            this.schemaPending = true
          }
          txs++
          end = m.endLsn
          time = m.time
          total = 0
          for (const f of folds.values()) total += f.rows
          if (total >= (this.opts.maxChanges ?? 20_000)) stop = true
          break
        default:
          break
      }
    }
    if (txs === 0) return null
    await this.fill(fills, folds)
    const changes = [...folds.values()].map((f) => f.changes()).filter((c) => c.upserts.length || c.deletes.length)
    const seq = await this.sequenceChanges()
    if (seq.upserts.length) changes.push(seq)
    const schema = this.schemaPending
    return this.finish({ schema, changes, rows: total, end, time, seq })
  }

  /**
   * A row whose primary key changed while a TOASTed value stayed as it was: pgoutput sends neither the value
   * nor the old row, and the row moves to a new key at the replica, so the value is read from the origin
   * now. If the row is gone since, it went in a later transaction: the replica only loses the old key now
   * and the row never appears, which is where the later delete would leave it anyway.
   */
  private async fill(fills: Fill[], folds: Map<number, TableFold>): Promise<void> {
    for (const f of fills) {
      const fold = folds.get(f.def.id)
      if (!fold || !fold.holds(f.row)) continue
      const cols = f.def.columns.map((c) => quoteIdent(c.name)).join(', ')
      const where = f.def.key.map((i, j) => `${quoteIdent(f.def.columns[i].name)} = $${j + 1}::${f.def.columns[i].type}`).join(' AND ')
      const r = await this.session.run('cannot read a moved row', (db) =>
        db.query({ text: `SELECT ${cols} FROM ONLY ${f.def.name} WHERE ${where}`, values: f.def.key.map((i) => f.row[i]), rowMode: 'array' })
      )
      const now = r.rows[0] as Value[] | undefined
      if (now) fold.replace(f.row, f.row.map((v, i) => (isUnchanged(v) ? now[i] : v)))
      else fold.replace(f.row, null)
    }
  }

  /** A table whose rows now have a shape not sent yet: its definition as the rows have it goes out first. */
  private async learnRelation(m: Extract<PgMessage, { tag: 'relation' }>): Promise<void> {
    const tables = await readTables(await this.db())
    const t = tables.find((x) => x.oid === m.oid)
    const shape = shapeOfRelation(m)
    let known: Known
    if (t && shapeOfTable(t) === shape) {
      known = { def: await this.defOf(t), shape, full: t.pk.length === 0 }
    } else {
      // The catalogs have moved on already (a later ALTER): describe the table as these rows have it.
      const types = await this.query(
        `SELECT format_type(t, m) AS type, format('%I.%I', $3::text, $4::text) AS name FROM unnest($1::oid[], $2::int[]) WITH ORDINALITY AS u(t, m, i) ORDER BY i`,
        [m.columns.map((c) => c.typeOid), m.columns.map((c) => c.typmod), m.namespace, m.name]
      )
      const name = types.rows.length ? types.rows[0].name : `${quoteIdent(m.namespace)}.${quoteIdent(m.name)}`
      const full = m.identity === 'f' || !m.columns.some((c) => c.key)
      if (m.identity === 'd' && full) await this.query(`ALTER TABLE ${name} REPLICA IDENTITY FULL`, [], `cannot give ${name} (no primary key) REPLICA IDENTITY FULL`)
      const pg: PgTable = {
        oid: m.oid,
        name,
        nsp: m.namespace,
        rel: m.name,
        replident: m.identity,
        all: m.columns.map((c, i) => ({
          name: c.name,
          type: types.rows[i].type,
          typeOid: c.typeOid,
          typmod: c.typmod,
          kind: 'b',
          typeSchema: '',
          notNull: !full && c.key,
          default: null,
          identity: '',
          generated: ''
        })),
        pk: full ? [] : m.columns.filter((c) => c.key).map((c) => c.name)
      }
      known = { def: await this.defOf(pg), shape, full }
    }
    this.tables.set(m.oid, known)
    this.objects = await readObjects(await this.db())
    this.schemaPending = true
  }

  async ack(source: Uint8Array): Promise<void> {
    const lsn = decodeSource(source)
    if (lsn > this.acked) this.acked = lsn
    if (this.lastRead && sameBytes(this.lastRead.source, source)) {
      if (this.lastRead.schema) {
        this.schemaPending = false
        this.resetPending.clear()
      }
      this.ackedSeq = this.lastRead.seq
      this.lastRead = null
    }
    if (lsn > this.confirmed) this.confirmed = lsn
    const st = this.stream
    if (st) {
      // Drop every message of the transactions the log now holds; keep the tables' shapes they carried.
      let cut = 0
      for (let i = 0; i < st.buf.length; i++) {
        const b = st.buf[i]
        if (b[0] === 0x43 && b.readBigUInt64BE(10) <= lsn) cut = i + 1
        else if (b[0] === 0x43) break
      }
      for (let i = 0; i < cut; i++) {
        if (st.buf[i][0] === 0x43) st.commits--
        if (st.buf[i][0] === 0x52) {
          const m = decodeMessage(st.buf[i])
          if (m.tag === 'relation') st.rel.set(m.oid, m)
        }
      }
      st.buf.splice(0, cut)
      st.seen = Math.max(0, st.seen - cut)
      st.firstAt = Date.now()
      if (st.paused && st.buf.length < MAX_BUFFERED / 2) {
        st.paused = false
        ;(st.client as unknown as { connection: PgConnection }).connection.stream.resume()
      }
      this.feedback(st)
    }
  }

  async wait(ms: number): Promise<void> {
    // Messages that arrived since the last read; not the ones it saw (a transaction still arriving).
    if (this.stream && this.stream.buf.length > this.stream.seen) return
    await new Promise<void>((resolve) => {
      const t = setTimeout(resolve, ms)
      this.waiters.push(() => {
        clearTimeout(t)
        resolve()
      })
    })
  }

  skipped(): Array<{ table: string; reason: string }> {
    return this.skippedTables.map(({ table, reason }) => ({ table, reason }))
  }

  /** The tables this capture carries (quoted, qualified names). */
  carried(): string[] {
    return [...this.tables.values()].map((k) => k.def.name)
  }

  /** How much WAL the slot keeps on the origin's disk, and the server's limit. */
  async walRetention(): Promise<{ retainedBytes: number; limitBytes: number | null; status: string }> {
    const r = await this.query(
      `SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8::text AS retained, wal_status AS status,
              pg_size_bytes(current_setting('max_slot_wal_keep_size') || CASE WHEN current_setting('max_slot_wal_keep_size') ~ '^-?[0-9]+$' THEN 'MB' ELSE '' END)::text AS lim
         FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database()`,
      [this.opts.slot]
    )
    if (r.rows.length === 0) return { retainedBytes: 0, limitBytes: null, status: 'lost' }
    const lim = Number(r.rows[0].lim)
    return { retainedBytes: Number(r.rows[0].retained ?? 0), limitBytes: lim < 0 ? null : lim, status: r.rows[0].status ?? 'lost' }
  }

  private async stopStream(): Promise<void> {
    const st = this.stream
    this.stream = null
    if (st) {
      st.ended = true
      await st.client.end().catch(() => {})
    }
    this.wake()
  }

  async close(): Promise<void> {
    await this.stopStream()
    await this.endSnapshot()
    await this.session.close()
  }
}

function shapeOfRelation(m: Extract<PgMessage, { tag: 'relation' }>): string {
  return JSON.stringify([m.namespace, m.name, m.columns.map((c) => [c.name, c.typeOid, c.typmod])])
}

function shapeOfTable(t: PgTable): string {
  return JSON.stringify([t.nsp, t.rel, t.all.filter((c) => c.generated === '').map((c) => [c.name, c.typeOid, c.typmod])])
}

interface Fill {
  def: TableDef
  row: Value[]
}

type RowMessage = Extract<PgMessage, { tag: 'insert' | 'update' | 'delete' }>

/** The message with its tuples laid out as `k` says, by column name (identity when the shapes agree). */
function reshape(m: RowMessage, r: Extract<PgMessage, { tag: 'relation' }>, k: Known): RowMessage {
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
