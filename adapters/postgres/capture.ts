/**
 * PostgreSQL capture through logical decoding.
 *
 * How it works. The origin database has a publication FOR ALL TABLES and a durable logical replication slot
 * that uses the built-in `pgoutput` plugin (both created by `mesh init`/`mesh join --postgres URL`, or here
 * when missing). A replication connection streams the slot (START_REPLICATION, from the position the log
 * holds; stream.ts): PostgreSQL decodes each change once, as it is written, and its messages are kept until the
 * log holds them (except those of a huge transaction, handed out in pieces: readStream). A read takes whole
 * committed transactions from what was received, in commit order; reading again without ack() returns at least
 * the same. ack() drops them and tells the server (a standby status
 * update) that the slot may move past the last transaction the log holds; the node calls it only after the
 * log append is flushed, so a crash of the node loses nothing and repeats nothing. PostgreSQL makes a slot's
 * position durable only at its next checkpoint, so after a crash of PostgreSQL itself the slot may hand out
 * transactions again: every transaction that ends at or before the position the log holds (resume()) or
 * that was acknowledged is skipped.
 *
 * A batch is one or more whole transactions, each table's changes folded to their net effect (a row updated
 * twice travels once; a row inserted then deleted travels as a delete; fold.ts, a pure function). It stops
 * before a transaction that changes the schema of a table, truncates one, or creates one, so the schema entry
 * that describes those changes comes first in the next unit.
 *
 * The initial copy reads every table under the snapshot exported when the slot is created (slot.ts), so it is
 * exactly the state the slot's stream continues from: nothing is doubled, even in tables without a primary
 * key. When the slot is found dropped behind our back, a new one is created and the whole database is copied
 * again (MeshError SOURCE_RESET tells the capture loop to do so, and why).
 *
 * Schema. Changes are followed by comparing shapes (catalog.ts): each pgoutput Relation message (names and
 * types of the columns as the following rows have them) with the table as last sent, and, when the slot is
 * idle, the catalogs with what was last sent (new empty tables, dropped tables, indexes, columns altered with
 * no row written since). A replica migrates its tables to the new shape (adapters/postgres/apply.ts).
 *
 * Tables without a primary key are given REPLICA IDENTITY FULL, so updates and deletes carry the whole old
 * row, which identifies the row at the replica (like PostgreSQL's own logical replication).
 */
import { MeshError, sameBytes, type SchemaEntry, type TableChanges, type Value } from '../../protocol/index.ts'
import type { CaptureBatch, CaptureSide, CaptureStream, Logger, SnapshotChunk } from '../types.ts'
import { silentLogger, wholeStream } from '../types.ts'
import {
  OWN_SCHEMA,
  SEQUENCES_TABLE,
  copyTables,
  digestPgTables,
  ensureIdentityFull,
  isShapeError,
  pgError,
  quoteIdent,
  Session,
  readSequences,
  redactUrl,
  type Client
} from './common.ts'
import { adoptReplica } from './adopt.ts'
import { CaptureCatalog } from './catalog.ts'
import { SlotSnapshot, capturePrerequisites, slotWalRetention } from './slot.ts'
import { decodeMessage, parseLsn, type PgMessage } from './pgoutput.ts'
import { foldTransactions, type Known, type Lookup, type RelationMessage } from './fold.ts'
import { ReplicationStream, type Taken } from './stream.ts'

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
  /**
   * Gather changes still arriving for at most this long before a read returns them (default 20 ms); a read
   * returns at once when the stream has delivered nothing for 2 ms (ReplicationStream.take).
   */
  gatherMs?: number
  /**
   * readStream: a transaction of more than this many messages is read in pieces (default: one per 100 bytes of
   * the budget, at least 1000); smaller ones are read whole, with read().
   */
  streamAboveMessages?: number
}

/** JS memory a pgoutput message takes once decoded and folded, per byte of it, near enough for a budget. */
const BYTES_PER_MESSAGE_BYTE = 4

/** The capture position in the log: the end LSN of the last transaction a unit holds. */
function encodeSource(lsn: bigint): Uint8Array {
  const b = Buffer.alloc(9)
  b[0] = 1
  b.writeBigUInt64BE(lsn, 1)
  return b
}

function decodeSource(src: Uint8Array): bigint {
  const b = Buffer.from(src.buffer, src.byteOffset, src.byteLength)
  if (b.length !== 9 || b[0] !== 1)
    throw MeshError.BAD_LOG('this log was not written by PostgreSQL capture (unknown source position)')
  return b.readBigUInt64BE(1)
}

export class PostgresCapture implements CaptureSide {
  readonly engine = 'postgres' as const
  private readonly opts: PostgresCaptureOptions
  private readonly log: Logger
  private readonly session: Session
  /** The next batch starts with a schema entry. */
  private schemaPending = true
  /** Tables (by oid) whose content the next schema entry tells replicas to drop. */
  private readonly resetPending = new Set<number>()
  private readonly catalog: CaptureCatalog
  private stream: ReplicationStream | null = null
  /** Waits while no stream runs (a stream wakes its own). */
  private waiters: Array<() => void> = []
  /** Transactions ending at or before this are in the log already. */
  private acked = 0n
  private confirmed = 0n
  private slotMissing = false
  private ackedSeq = new Map<string, string>()
  private lastRead: { source: Uint8Array; schema: boolean; seq: Map<string, string> } | null = null
  /** The open snapshot of an initial copy: its transaction and the replication connection that exported it. */
  private snap: SlotSnapshot | null = null
  /** When the log last held everything the server had committed (as far as lag() or read() saw), ms. */
  private caughtUpAt = Date.now()

  constructor(opts: PostgresCaptureOptions) {
    this.opts = opts
    this.log = opts.logger ?? silentLogger
    this.session = new Session(opts.url, 'cannot connect to the origin database')
    this.catalog = new CaptureCatalog(this.session, this.log)
  }

  private get where(): string {
    return redactUrl(this.opts.url)
  }

  private db(): Promise<Client> {
    return this.session.db()
  }

  // biome-ignore lint/suspicious/noExplicitAny: pg returns rows untyped; callers read the columns they selected
  private query(sql: string, params: unknown[] = [], doing = 'capture failed'): Promise<{ rows: any[] }> {
    return this.session.run(doing, (db) => db.query(sql, params))
  }

  async open(): Promise<void> {
    const db = await this.db()
    const problems = await capturePrerequisites(db, this.opts.publication).catch((err) => {
      throw pgError(err, this.opts.url, 'cannot check the origin database')
    })
    if (problems.length) {
      throw MeshError.CANNOT_CAPTURE(
        `PostgreSQL at ${this.where} does not allow logical decoding: ${problems.join('; ')}`,
        {
          hint:
            'Make those changes, then start the node again; or, where logical decoding cannot be allowed ' +
            '(a hosted server), set "capture": "triggers" for this dataset in config.json.',
          context: { problems }
        }
      )
    }
    const pub = await this.query('SELECT 1 FROM pg_publication WHERE pubname = $1', [this.opts.publication])
    if (pub.rows.length === 0) {
      await this.query(
        `CREATE PUBLICATION ${quoteIdent(this.opts.publication)} FOR ALL TABLES`,
        [],
        'cannot create the publication'
      )
    }
    const warning = await this.session.run('cannot set REPLICA IDENTITY FULL', (db) => ensureIdentityFull(db))
    if (warning) this.log.warn(warning)
    const replica = await this.query(`SELECT to_regclass('${OWN_SCHEMA}.replica') IS NOT NULL AS has`)
    if (replica.rows[0].has === 't') await this.adopt()
    await this.catalog.loadIds()
    await this.catalog.load()
    const slot = await this.query(
      'SELECT confirmed_flush_lsn::text AS lsn, plugin FROM pg_replication_slots WHERE slot_name = $1 ' +
        'AND database = current_database()',
      [this.opts.slot]
    )
    if (slot.rows.length === 0) this.slotMissing = true
    else {
      if (slot.rows[0].plugin !== 'pgoutput') {
        throw MeshError.CANNOT_CAPTURE(
          `the replication slot ${this.opts.slot} uses the plugin ${slot.rows[0].plugin}, not pgoutput`,
          {
            hint: `Drop it (SELECT pg_drop_replication_slot('${this.opts.slot}')) and start the node again.`
          }
        )
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
    const slot = await this.query(
      'SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database()',
      [this.opts.slot]
    )
    if (slot.rows.length === 0) {
      await this.query(
        `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`,
        [this.opts.slot],
        'cannot create the replication slot'
      )
    }
    try {
      await adoptReplica(await this.db())
    } catch (err) {
      throw pgError(err, this.opts.url, 'cannot turn the replica into the origin')
    }
    this.log.info('the replica database is now the origin: capture installed', { url: this.where })
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
      `the replication slot ${this.opts.slot} at ${this.where} is gone (dropped, or invalidated by ` +
        `max_slot_wal_keep_size): the changes since it was lost cannot be read, so the whole database is ` +
        `copied into the log again`,
      { context: { slot: this.opts.slot } }
    )
  }

  async schema(): Promise<SchemaEntry> {
    // The schema starts an initial copy: the copy reads under the snapshot of a new slot.
    await this.beginSnapshot()
    await this.catalog.load(this.snap!.tx)
    this.schemaPending = false
    this.resetPending.clear()
    return this.catalog.entry([])
  }

  /** (Re)creates the slot and opens a transaction on the snapshot it exports (slot.ts). */
  private async beginSnapshot(): Promise<void> {
    await this.endSnapshot()
    await this.stopStream()
    const slot = this.opts.slot
    this.snap = await SlotSnapshot.create(this.opts.url, slot, this.session)
    this.confirmed = this.acked = parseLsn(this.snap.point)
    this.slotMissing = false
    this.log.info('replication slot created; copying the database under its snapshot', { slot, at: this.snap.point })
  }

  private async endSnapshot(): Promise<void> {
    const snap = this.snap
    this.snap = null
    await snap?.end()
  }

  async *snapshot(opts: { chunkRows?: number } = {}): AsyncIterable<SnapshotChunk> {
    if (!this.snap) await this.schema()
    const tx = this.snap!.tx
    const chunkRows = opts.chunkRows ?? 5000
    try {
      yield* copyTables(tx, this.catalog.defs(), chunkRows)
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
    // Everything committed before this read, unless a full batch is here already: a stream draining a backlog
    // (a node restarted under load) stays behind the server until the end of it, and waiting for it on every
    // read made the drain run at one batch per wait.
    const caughtUp = await st.caughtUp(undefined, this.opts.maxChanges ?? 20_000)
    return this.take(caughtUp)
  }

  /** read() once the stream has delivered what it waits for (`caughtUp`: all of it). */
  private async take(caughtUp: boolean): Promise<CaptureBatch | null> {
    const st = this.stream!
    const taken = await st.take(this.opts.gatherMs ?? 20)
    // Busy for a while: constraint and default changes, which rows do not show, are looked up now and then.
    if (taken.count > 0 && Date.now() - this.catalog.lastCheck >= 10 * (this.opts.catalogCheckMs ?? 1000)) {
      if (await this.catalog.load(undefined, true)) this.schemaPending = true
    }
    const batch = await this.fold(taken)
    if (batch === null) {
      // Only now can a broken stream matter: everything it delivered has been read.
      if (st.error) {
        this.stream = null
        await st.close()
        throw st.error
      }
      if (caughtUp) this.caughtUpAt = Date.now()
      return this.idle()
    }
    return batch
  }

  /**
   * read() in pieces (issue 14): when the next transaction to capture has more than `streamAboveMessages`
   * messages, it is handed out in pieces of about `budgetBytes` as its messages arrive, each piece folded on its
   * own (net per key within the piece: the pieces applied in order leave the same rows as the whole), and its
   * messages dropped from the stream once folded (ReplicationStream.release), so the transaction is never held
   * whole. Non-streaming pgoutput sends a transaction only after it committed, so a prefix handed out before
   * its Commit message arrived is of a committed transaction. The position (the transaction's end LSN) comes
   * with the last piece, and nothing is confirmed to the server before ack(), as with read(). If the stream
   * breaks, or the pieces are not all read, the stream is closed: the next read starts a new one from the
   * position confirmed, which sends the whole transaction again (the capture loop abandons the unfinished unit).
   *
   * A transaction that changes a table's shape (ALTER TABLE, CREATE TABLE) or truncates one after its first
   * piece is read in pieces too: the piece where that happens carries a schema entry (the tables as its rows
   * have them; `reset`, the tables it truncated), which the unit holds just before that piece's changes, so the
   * replica migrates or empties the table at that point of the same database transaction. As in read(), the
   * rows of one piece all travel in the newest shape it saw (by column name). Smaller transactions, and several
   * of them, are read with read().
   */
  async readStream(budgetBytes: number): Promise<CaptureStream | null> {
    if (this.slotMissing) throw this.slotGone()
    const st = await this.streaming()
    const above = this.opts.streamAboveMessages ?? Math.max(1000, Math.floor(budgetBytes / 100))
    // What committed before this read, as read() waits for it, but no longer than until a large transaction is
    // arriving (read() would wait for all of it).
    const caughtUp = await st.caughtUp(undefined, this.opts.maxChanges ?? 20_000, above + 1)
    const first = st.at(0)
    if (first === undefined || first[0] !== 0x42 || st.pending <= above) return wholeStream(await this.take(caughtUp))
    const begin = decodeMessage(first)
    // A transaction the log holds already (a slot that went back after a crash of PostgreSQL): read() skips it.
    if (begin.tag !== 'begin' || begin.finalLsn < this.acked) return wholeStream(await this.read())
    for (let i = 1; i <= above; i++) if (st.at(i)![0] === 0x43) return wholeStream(await this.take(caughtUp))
    // The stream holds a few pieces' worth at most, then pauses until pieces are read.
    st.draining = Math.max(10_000, 4 * above)
    this.pieceRead = true
    let relations = new Map(st.relations)
    let rows = 0
    // Whether a piece after the first carried a schema entry: then ack() clears what is pending, as for the first.
    let laterSchema = false
    let end: { source: Uint8Array; seq: { values: Map<string, string> } } | null = null
    const fail = async (err: unknown): Promise<never> => {
      if (this.stream === st) this.stream = null
      await st.close()
      throw err
    }
    // Folds the next piece: messages from index 1 (0 is the Begin, kept until the end) up to about the budget,
    // or to the Commit. Its messages are released once folded.
    type Piece = { changes: TableChanges[]; rows: number; last: boolean; schema?: SchemaEntry }
    const next = async (firstPiece: boolean): Promise<Piece> => {
      const msgs: PgMessage[] = []
      let bytes = 0
      let i = 1
      let commit: Extract<PgMessage, { tag: 'commit' }> | null = null
      // A stream that broke ends the read even with messages still held: the transaction is read again whole.
      if (st.error) return fail(st.error)
      for (;;) {
        const b = st.at(i)
        if (b === undefined) {
          if (st.ended)
            return fail(st.error ?? MeshError.PG_UNREACHABLE('the replication stream ended inside a transaction'))
          if (msgs.length > 0 && bytes * BYTES_PER_MESSAGE_BYTE >= budgetBytes / 4) break
          await st.more(i, 1000)
          continue
        }
        const m = decodeMessage(b)
        if (m.tag === 'commit') {
          commit = m
          break
        }
        msgs.push(m)
        bytes += b.length
        i++
        if (bytes * BYTES_PER_MESSAGE_BYTE >= budgetBytes) break
      }
      const close = { tag: 'commit' as const, lsn: begin.finalLsn, endLsn: commit?.endLsn ?? begin.finalLsn + 1n }
      const folded = await this.foldPiece([begin, ...msgs, { ...close, time: begin.time }], relations)
      let schema: SchemaEntry | undefined
      if (!firstPiece && (folded.learned || folded.truncated.length > 0)) {
        // Only this piece's truncates: a reset sent again would empty rows of the pieces before.
        const reset = folded.truncated
          .map((oid) => this.catalog.tables.get(oid)?.def.id)
          .filter((id): id is number => id !== undefined)
        schema = this.catalog.entry(reset)
        laterSchema = true
      } else if (folded.truncated.length) {
        for (const o of folded.truncated) this.resetPending.add(o)
        this.schemaPending = true
      }
      relations = new Map(relations)
      for (const m of msgs) if (m.tag === 'relation') relations.set(m.oid, m)
      st.release(i - 1)
      rows += folded.rows
      const changes = folded.changes
      if (commit !== null) {
        const seq = await this.sequenceChanges()
        if (seq.upserts.length) changes.push(seq)
        end = { source: encodeSource(commit.endLsn), seq }
      }
      return { changes, rows: folded.rows, last: commit !== null, schema }
    }
    let piece: Awaited<ReturnType<typeof next>>
    try {
      piece = await next(true)
    } catch (err) {
      st.draining = 0
      this.pieceRead = false
      // Messages may be released already: the next read starts a new stream.
      if (this.stream === st) this.stream = null
      await st.close()
      throw err
    }
    const schemaFlag = this.schemaPending
    const reset = [...this.resetPending]
      .map((oid) => this.catalog.tables.get(oid)?.def.id)
      .filter((id): id is number => id !== undefined)
    const schema = schemaFlag ? this.catalog.entry(reset) : null
    let done = false
    const self = this
    async function* pieces(): AsyncGenerator<{ changes: TableChanges[]; rows: number; schema?: SchemaEntry }> {
      try {
        yield { changes: piece.changes, rows: piece.rows }
        while (!piece.last) {
          piece = await next(false)
          yield { changes: piece.changes, rows: piece.rows, schema: piece.schema }
        }
        const e = end!
        self.lastRead = { source: e.source, schema: schemaFlag || laterSchema, seq: e.seq.values }
        done = true
      } finally {
        st.draining = 0
        self.pieceRead = false
        // Pieces not all read: their messages are gone from this stream, so the next read starts a new one.
        if (!done && self.stream === st) {
          self.stream = null
          await st.close()
        }
      }
    }
    return {
      schema,
      time: begin.time,
      pieces: pieces(),
      end() {
        if (!done) throw MeshError.BAD_LOG('the end of a capture read whose pieces were not all read')
        return { source: end!.source, rows }
      }
    }
  }

  /** Set while readStream hands out pieces: no checkpoint then. */
  private pieceRead = false

  /** Folds one piece of a transaction (its messages between a Begin and a made-up Commit), see fold(). */
  private async foldPiece(
    messages: PgMessage[],
    relations: ReadonlyMap<number, RelationMessage>
  ): Promise<{ changes: TableChanges[]; rows: number; truncated: number[]; learned: boolean }> {
    let learned = false
    const run = foldTransactions(messages, {
      relations,
      tables: this.catalog.tables,
      skipped: { has: (oid) => this.catalog.skipped.some((s) => s.oid === oid) },
      acked: -1n,
      maxChanges: Infinity
    })
    let step = run.next()
    while (!step.done) {
      const need = step.value
      if (need.need === 'table') learned = true
      step = run.next(need.need === 'table' ? await this.learn(need.relation) : await this.readRows(need.lookups))
    }
    const b = step.value
    if (b === null) return { changes: [], rows: 0, truncated: [], learned }
    return { changes: b.changes, rows: b.rows, truncated: b.truncated, learned }
  }

  /** The stream of the slot's changes (stream.ts), from the position the log holds. */
  private async streaming(): Promise<ReplicationStream> {
    if (this.stream && !this.stream.ended) return this.stream
    if (this.stream) {
      // Ended with nothing left to read: start again from what the log holds.
      const old = this.stream
      this.stream = null
      await old.close()
      if (old.error && old.error.code !== 'PG_UNREACHABLE') throw old.error
    }
    const st = new ReplicationStream({
      url: this.opts.url,
      slot: this.opts.slot,
      publication: this.opts.publication,
      session: this.session,
      slotGone: () => {
        this.slotMissing = true
        return this.slotGone()
      }
    })
    await st.start(this.confirmed)
    this.stream = st
    return st
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
    if (this.lastRead !== null || this.schemaPending || this.slotMissing || this.snap !== null || !st || st.ended)
      return null
    if (this.pieceRead) return null
    if (!(await st.caughtUp()) || st.pending > 0) return null
    const received = st.received
    const defs = this.catalog.defs()
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
    if (!(await st.caughtUp(d.insert)) || st.pending > 0 || st.received !== received) return null
    return { digest: d.digest, rows: d.rows }
  }

  private wake(): void {
    const w = this.waiters
    this.waiters = []
    for (const f of w) f()
  }

  /** Nothing to read: look for schema changes no row has shown yet, and for sequences that moved. */
  private async idle(): Promise<CaptureBatch | null> {
    let schema = this.schemaPending
    if (Date.now() - this.catalog.lastCheck >= (this.opts.catalogCheckMs ?? 1000)) {
      if (await this.catalog.load()) schema = true
      const seq = await this.sequenceChanges()
      if (schema || seq.upserts.length) {
        return this.finish({
          schema,
          changes: seq.upserts.length ? [seq] : [],
          rows: 0,
          end: this.acked,
          time: Date.now(),
          seq
        })
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

  private finish(b: {
    schema: boolean
    changes: TableChanges[]
    rows: number
    end: bigint
    time: number
    seq: { values: Map<string, string> } | null
  }): CaptureBatch {
    const source = encodeSource(b.end)
    const reset = [...this.resetPending]
      .map((oid) => this.catalog.tables.get(oid)?.def.id)
      .filter((id): id is number => id !== undefined)
    this.lastRead = { source, schema: b.schema, seq: b.seq?.values ?? this.ackedSeq }
    const schema = b.schema ? this.catalog.entry(reset) : null
    return { schema, changes: b.changes, rows: b.rows, time: b.time, source }
  }

  /**
   * Folds the messages taken from the stream into one batch of whole transactions (fold.ts), answering what
   * the fold asks of the database; null when no transaction is new.
   */
  private async fold(taken: Taken): Promise<CaptureBatch | null> {
    const run = foldTransactions(taken.messages, {
      relations: taken.relations,
      tables: this.catalog.tables,
      skipped: { has: (oid) => this.catalog.skipped.some((s) => s.oid === oid) },
      acked: this.acked,
      maxChanges: this.opts.maxChanges ?? 20_000
    })
    let step = run.next()
    while (!step.done) {
      const need = step.value
      step = run.next(need.need === 'table' ? await this.learn(need.relation) : await this.readRows(need.lookups))
    }
    const b = step.value
    if (b === null) return null
    if (b.truncated.length) {
      for (const o of b.truncated) this.resetPending.add(o)
      this.schemaPending = true
    }
    const seq = await this.sequenceChanges()
    if (seq.upserts.length) b.changes.push(seq)
    const schema = this.schemaPending
    return this.finish({ schema, changes: b.changes, rows: b.rows, end: b.end, time: b.time, seq })
  }

  /** Rows the fold needs as the origin holds them now (see fold.ts), in order; null for a row gone since. */
  private async readRows(lookups: Lookup[]): Promise<Array<Value[] | null>> {
    const found: Array<Value[] | null> = []
    for (const { def, key } of lookups) {
      const cols = def.columns.map((c) => quoteIdent(c.name)).join(', ')
      const where = def.key
        .map((i, j) => `${quoteIdent(def.columns[i].name)} = $${j + 1}::${def.columns[i].type}`)
        .join(' AND ')
      const r = await this.session.run('cannot read a moved row', (db) =>
        db.query({ text: `SELECT ${cols} FROM ONLY ${def.name} WHERE ${where}`, values: key, rowMode: 'array' })
      )
      found.push((r.rows[0] as Value[] | undefined) ?? null)
    }
    return found
  }

  /** A table whose rows now have a shape not sent yet: its definition as the rows have it goes out first. */
  private async learn(m: RelationMessage): Promise<Known> {
    const known = await this.catalog.learn(m)
    this.schemaPending = true
    return known
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
    // Drops every message of the transactions the log now holds, and tells the server.
    this.stream?.confirm(lsn)
  }

  async wait(ms: number): Promise<void> {
    if (this.stream) return this.stream.wait(ms)
    await new Promise<void>((resolve) => {
      const t = setTimeout(resolve, ms)
      this.waiters.push(() => {
        clearTimeout(t)
        resolve()
      })
    })
  }

  skipped(): Array<{ table: string; reason: string }> {
    return this.catalog.skipped.map(({ table, reason }) => ({ table, reason }))
  }

  /** The tables this capture carries (quoted, qualified names). */
  carried(): string[] {
    return this.catalog.defs().map((d) => d.name)
  }

  /**
   * What the server has committed that the log does not hold yet (see CaptureSide.lag): the WAL from the end
   * of the last transaction the log holds to the end of the newest one received, or to the server's flushed
   * position while the stream has not sent everything up to it (then an upper bound); and the seconds since
   * the oldest transaction received and not held committed, or, before any has arrived, since capture was
   * last seen caught up (or opened). Null during an initial copy, and when the slot is gone. Asks the server
   * only while no stream runs.
   */
  async lag(): Promise<{ bytes: number; seconds: number } | null> {
    if (this.snap !== null || this.slotMissing) return null
    const st = this.stream
    const now = Date.now()
    let server: bigint
    // With a stream, the position its reads last asked for (a read that waits on the database must not make
    // the report wait too; the stream's own messages say what arrived since).
    if (st && !st.ended) server = st.serverRead.at
    else {
      const doing = 'cannot read the server position'
      server = parseLsn((await this.query('SELECT pg_current_wal_flush_lsn()::text AS lsn', [], doing)).rows[0].lsn)
    }
    const b =
      st && !st.ended
        ? st.behind(this.acked, server)
        : { bytes: server > this.acked ? server - this.acked : 0n, oldest: null }
    if (b.bytes === 0n) {
      this.caughtUpAt = now
      return { bytes: 0, seconds: 0 }
    }
    const since = b.oldest ?? this.caughtUpAt
    return { bytes: Number(b.bytes), seconds: Math.max(0, (now - since) / 1000) }
  }

  /** How much WAL the slot keeps on the origin's disk, and the server's limit. */
  async walRetention(): Promise<{ retainedBytes: number; limitBytes: number | null; status: string }> {
    return slotWalRetention(this.session, this.opts.slot)
  }

  private async stopStream(): Promise<void> {
    const st = this.stream
    this.stream = null
    await st?.close()
    this.wake()
  }

  async close(): Promise<void> {
    await this.stopStream()
    await this.endSnapshot()
    await this.session.close()
  }
}
