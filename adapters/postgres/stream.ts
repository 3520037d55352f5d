/**
 * The logical replication stream of a slot: a replication connection running START_REPLICATION, each decoded
 * transaction's pgoutput messages kept here until the log holds them (confirm). PostgreSQL decodes each change
 * once, as it is written; a peek would decode again from the slot's restart point every time.
 *
 * It does not fold, skip or interpret changes (fold.ts does), and does not decide where to start: the caller
 * passes the position the log holds. It never confirms past what the caller confirmed, so the slot keeps
 * every transaction the log does not hold yet.
 */
import { MeshError } from '../../protocol/index.ts'
import { connect, pgError, quoteIdent, quoteLiteral, type Client, type Session } from './common.ts'
import { decodeMessage, lsnText, parseLsn, type PgMessage } from './pgoutput.ts'
import type { RelationMessage } from './fold.ts'

/** What the server says when the slot is gone (dropped, or invalidated by max_slot_wal_keep_size). */
const SLOT_GONE =
  /replication slot .* does not exist|can no longer get changes from replication slot|has been invalidated/i

/** take() stops gathering once the stream delivered nothing for this long (ms). */
const IDLE_MS = 2

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

export interface ReplicationStreamOptions {
  url: string
  slot: string
  publication: string
  /** An ordinary connection to the same database: the server's WAL position, and ending a stale stream. */
  session: Session
  /** Called when the server says the slot is gone (dropped or invalidated); returns the error to end with. */
  slotGone: () => MeshError
}

/** What take() hands over: the messages received so far, decoded as they are iterated. */
export interface Taken {
  /** The Relation messages in force before `messages` (those of the part the log holds), by table oid. */
  relations: ReadonlyMap<number, RelationMessage>
  messages: Iterable<PgMessage>
  count: number
}

export class ReplicationStream {
  private readonly opts: ReplicationStreamOptions
  private client: Client | null = null
  /** pgoutput messages not yet held by the log, in order. */
  private buf: Buffer[] = []
  /** Relation messages of the part already held by the log, by table oid. */
  private readonly rel = new Map<number, RelationMessage>()
  private paused = false
  /** The slot was still held by an earlier stream of this node (killed). */
  private stale = false
  /** How far the server's walsender has read the WAL, as its messages and keepalives say. */
  private sent = 0n
  /** How far the log holds the stream: what the standby status updates report. */
  private confirmed = 0n
  /** When the oldest message in `buf` arrived. */
  private firstAt = 0
  /** When the newest message arrived (ms, performance.now()). */
  private lastAt = 0
  /** The longest wait between two messages held, since the last take() (ms). */
  private gapMax = 0
  /** How many messages of `buf` the last take() handed over. */
  private seen = 0
  /** Commit messages in `buf`. */
  private commits = 0
  /** Messages of `buf` up to its last Commit: those of whole transactions. */
  private complete = 0
  /** The end LSN of the newest Commit message received. */
  private lastCommitEnd = 0n
  /** The server's flushed WAL position as last read (caughtUp), and when (ms). */
  private server = { at: 0n, readAt: 0 }
  private waiters: Array<() => void> = []
  /**
   * Set while a transaction is read in pieces (capture.ts readStream), to the messages held past which the stream
   * pauses, inside the transaction too (0: not set).
   */
  draining = 0
  private _ended = false
  private _error: MeshError | null = null
  private _received = 0

  constructor(opts: ReplicationStreamOptions) {
    this.opts = opts
  }

  /** Set once the connection ended or broke; a stream is not started again (make a new one). */
  get ended(): boolean {
    return this._ended
  }

  /** Why it ended, when it broke: to throw only after everything it delivered was taken. */
  get error(): MeshError | null {
    return this._error
  }

  /** Messages received in all, ever. */
  get received(): number {
    return this._received
  }

  /** Messages held: received and not yet confirmed. */
  get pending(): number {
    return this.buf.length
  }

  /**
   * Opens the replication connection and starts streaming the slot from `from` (START_REPLICATION skips what
   * is before it). When the slot is still held by this node's previous run (killed), that connection is
   * ended at the server and this start fails with DATABASE_LOCKED: the next start succeeds.
   */
  async start(from: bigint): Promise<void> {
    this.confirmed = from
    const client = await connect(this.opts.url, { replication: true, doing: 'cannot open a replication connection' })
    this.client = client
    const conn = (client as unknown as { connection: PgConnection }).connection
    conn.on('copyData', (msg: { chunk: Buffer }) => this.onData(msg.chunk, conn))
    client.on('error', (err) => this.fail(err))
    client.on('end', () => this.fail(new Error('Connection terminated')))
    const { slot, publication } = this.opts
    const started = new Promise<void>((resolve, reject) => {
      conn.once('replicationStart', resolve)
      client
        .query(
          `START_REPLICATION SLOT ${quoteIdent(slot)} LOGICAL ${lsnText(from)} ` +
            `(proto_version '1', publication_names ${quoteLiteral(publication)})`
        )
        .then(() => this.fail(new Error('Connection terminated: the replication stream stopped')))
        .catch((err) => {
          this.fail(err)
          reject(this._error)
        })
    })
    try {
      await started
    } catch (err) {
      await client.end().catch(() => {})
      if (this.stale) {
        await this.opts.session
          .run('cannot end the earlier replication connection', (db) =>
            db.query(
              `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 ` +
                `AND database = current_database() AND active AND active_pid <> pg_backend_pid()`,
              [slot]
            )
          )
          .catch(() => {})
      }
      throw err
    }
  }

  private onData(b: Buffer, conn: PgConnection): void {
    if (b[0] === 0x77) {
      // XLogData: 'w', start LSN, end LSN, send time (8 bytes each), then one pgoutput message.
      const end = b.readBigUInt64BE(9)
      if (end > this.sent) this.sent = end
      // A copy: pg's parser reuses the buffer the chunk points into.
      if (this.buf.length === 0) this.firstAt = Date.now()
      const now = performance.now()
      if (this.buf.length > 0 && now - this.lastAt > this.gapMax) this.gapMax = now - this.lastAt
      this.lastAt = now
      const payload = Buffer.from(b.subarray(25))
      this.buf.push(payload)
      this._received++
      if (payload[0] === 0x43) {
        this.commits++
        this.complete = this.buf.length
        this.lastCommitEnd = payload.readBigUInt64BE(10)
      }
      // Paused only while a whole transaction waits here: its read and confirm resume the stream. (pgoutput
      // sends a transaction at its commit: pausing inside one would wait for ever.)
      // Reading a transaction in pieces drops them as it goes (release): then it may pause inside one too.
      const limit = this.draining > 0 ? Math.min(this.draining, MAX_BUFFERED) : MAX_BUFFERED
      if (this.buf.length > limit && (this.commits > 0 || this.draining > 0) && !this.paused) {
        this.paused = true
        conn.stream.pause()
      }
      this.wake()
    } else if (b[0] === 0x6b) {
      // A keepalive: how far the walsender has read; it may ask for an answer.
      const end = b.readBigUInt64BE(1)
      if (end > this.sent) this.sent = end
      if (b[17] === 1) this.feedback()
      this.wake()
    }
  }

  private fail(err: unknown): void {
    if (this._ended) return
    let e = pgError(err, this.opts.url, 'the replication stream ended')
    if (SLOT_GONE.test(e.message)) {
      e = this.opts.slotGone()
    } else if (/is active for PID/i.test(e.message)) {
      // The stream of this node's previous run (killed) is still open at the server: it goes, and the
      // next read starts again.
      e = MeshError.DATABASE_LOCKED(e.message, {
        hint: 'The replication slot is still held by an earlier connection; the node ends it and retries.',
        cause: err
      })
      this.stale = true
    }
    this._error = e
    this._ended = true
    this.wake()
  }

  /**
   * Hands over the messages received so far (decoded as they are iterated), after gathering those that are
   * still arriving: for as long as the stream keeps delivering, and for at most `gatherMs` after the oldest
   * message held arrived or the last confirm(), whichever is later (confirm() restarts the window: under a
   * steady load a take gathers for about `gatherMs`, which keeps units few). The stream counts as quiet after
   * `idleMs` without a message, or twice the longest wait between
   * the messages held if that is longer (a steady load that arrives in bursts, as commits grouped by the server's
   * WAL flushes do, is not cut at each pause). Taking again without confirm() hands over at least the same.
   */
  async take(gatherMs: number, idleMs = IDLE_MS): Promise<Taken> {
    // Changes that trickle in are gathered: fewer, larger units cost the log, the network and every replica
    // less per change. Gathering stops as soon as the stream is quiet (the end of a burst, such as a load that
    // stopped), so it adds that much latency there, not `gatherMs`.
    while (this.buf.length > 0 && this.buf.length < 5000 && !this.ended) {
      const left = gatherMs - (Date.now() - this.firstAt)
      const quiet = performance.now() - this.lastAt
      const idle = Math.max(idleMs, 2 * this.gapMax)
      if (left <= 0 || quiet >= idle) break
      await this.sleep(Math.max(1, Math.min(left, idle - quiet)))
    }
    this.gapMax = 0
    this.seen = this.buf.length
    return { relations: this.rel, messages: decoded(this.buf.slice(0, this.seen)), count: this.seen }
  }

  /** Resolves when messages arrive that the last take() did not hand over, the stream ends, or after `ms`. */
  async wait(ms: number): Promise<void> {
    // Messages that arrived since the last take; not the ones it saw (a transaction still arriving).
    if (this.buf.length > this.seen) return
    await this.sleep(ms)
  }

  /**
   * Waits (up to 2 s) until the stream has delivered everything committed before this call: the server's
   * flushed WAL position now (or `upTo`), against how far its walsender has read, which a keepalive it is
   * asked for reports after every message before it. So a read returns every change committed before it began.
   */
  async caughtUp(upTo?: bigint, enough = Infinity, enoughHeld = Infinity): Promise<boolean> {
    const target = upTo ?? (await this.serverPosition())
    const until = Date.now() + 2000
    // `enough`: a caller that takes at most that many messages stops waiting once that many of whole
    // transactions are here (a stream draining a backlog is behind the server for as long as the backlog
    // lasts: waiting would only slow it). Messages of a transaction still arriving do not count there;
    // `enoughHeld` counts them (a caller that reads a large transaction in pieces as it arrives).
    // Every message wakes the wait; the server is asked for a keepalive at most every 50 ms (asking on every
    // message sent the server a status update per message while a backlog streamed in).
    let asked = 0
    const enoughHere = () => this.complete >= enough || this.buf.length >= enoughHeld
    while (this.sent < target && !this.ended && Date.now() < until && !enoughHere()) {
      if (Date.now() - asked >= 50) {
        this.feedback(true)
        asked = Date.now()
      }
      await this.sleep(50)
    }
    return this.sent >= target && !this.ended
  }

  /** The server's flushed WAL position, asked now. */
  async serverPosition(): Promise<bigint> {
    const r = await this.opts.session.run('cannot read the server position', (db) =>
      db.query('SELECT pg_current_wal_flush_lsn()::text AS lsn')
    )
    this.server = { at: parseLsn(r.rows[0].lsn), readAt: Date.now() }
    return this.server.at
  }

  /**
   * How far the log (holding every transaction ending at or before `held`) is behind the server, whose WAL was
   * at `server`: the WAL of the transactions received and not confirmed, or, while the walsender has not sent
   * everything up to `server`, all of the WAL up to there (an upper bound: it includes WAL of no interest to
   * the slot, such as other databases' writes). `oldest`: the commit time (ms) of the oldest transaction
   * received and not confirmed, or null when none is. Asks nothing of the server.
   */
  behind(held: bigint, server: bigint = this.server.at): { bytes: bigint; oldest: number | null } {
    let oldest: number | null = null
    for (const b of this.buf) {
      // Begin: final LSN (8 bytes), then the commit time (microseconds since 2000-01-01).
      if (b[0] !== 0x42) continue
      if (b.readBigUInt64BE(1) <= held) continue
      oldest = Number(b.readBigInt64BE(9) / 1000n) + PG_EPOCH_MS
      break
    }
    const received = this.lastCommitEnd > held ? this.lastCommitEnd : held
    const end = this.sent < server ? server : received
    return { bytes: end > held ? end - held : 0n, oldest }
  }

  /** When the server's position was last read (ms; 0: never), and what it was. */
  get serverRead(): { at: bigint; readAt: number } {
    return this.server
  }

  /**
   * The log holds every transaction ending at or before `lsn`: their messages are dropped (the tables' shapes
   * they carried are kept) and the server is told that the slot may move past them.
   */
  confirm(lsn: bigint): void {
    if (lsn > this.confirmed) this.confirmed = lsn
    let cut = 0
    for (let i = 0; i < this.buf.length; i++) {
      const b = this.buf[i]
      if (b[0] === 0x43 && b.readBigUInt64BE(10) <= lsn) cut = i + 1
      else if (b[0] === 0x43) break
    }
    for (let i = 0; i < cut; i++) {
      if (this.buf[i][0] === 0x43) this.commits--
      if (this.buf[i][0] === 0x52) {
        const m = decodeMessage(this.buf[i])
        if (m.tag === 'relation') this.rel.set(m.oid, m)
      }
    }
    this.buf.splice(0, cut)
    this.complete = Math.max(0, this.complete - cut)
    this.seen = Math.max(0, this.seen - cut)
    this.firstAt = Date.now()
    if (this.paused && this.buf.length < MAX_BUFFERED / 2) {
      this.paused = false
      ;(this.client as unknown as { connection: PgConnection }).connection.stream.resume()
    }
    this.feedback()
  }

  /** The message held at `i` (0: the oldest not released or confirmed), undecoded; undefined past the end. */
  at(i: number): Buffer | undefined {
    return this.buf[i]
  }

  /** The Relation messages in force before the messages held (see Taken.relations). */
  get relations(): ReadonlyMap<number, RelationMessage> {
    return this.rel
  }

  /** Resolves when more than `count` messages are held, the stream ends, or after `ms`. */
  async more(count: number, ms: number): Promise<void> {
    if (this.buf.length > count || this.ended) return
    await this.sleep(ms)
  }

  /**
   * Drops the `n` messages held after the first (the Begin of a transaction read in pieces, kept for behind()),
   * whose pieces the log holds in a unit not finished yet (capture.ts readStream), so that memory stays
   * bounded. Not a confirm: the server is not told,
   * and the slot keeps the whole transaction until confirm() passes its end. The caller never releases a
   * Commit, and after a failure it does not read from this stream again (the messages are gone from it): a new
   * stream starts from the position confirmed, where the slot sends the transaction again whole.
   */
  release(n: number): void {
    for (let i = 1; i <= n; i++) {
      const b = this.buf[i]
      if (b[0] === 0x43) throw new Error('release(): a Commit message is released only by confirm()')
      if (b[0] === 0x52) {
        const m = decodeMessage(b)
        if (m.tag === 'relation') this.rel.set(m.oid, m)
      }
    }
    this.buf.splice(1, n)
    this.complete = Math.max(0, this.complete - n)
    this.seen = Math.max(0, this.seen - n)
    const limit = this.draining > 0 ? Math.min(this.draining, MAX_BUFFERED) : MAX_BUFFERED
    if (this.paused && this.buf.length < limit / 2) {
      this.paused = false
      ;(this.client as unknown as { connection: PgConnection }).connection.stream.resume()
    }
    // The position confirmed, unchanged: a stream paused for long is still heard from (wal_sender_timeout).
    this.feedback()
  }

  /** Ends the connection (no error is recorded) and wakes whoever waits. */
  async close(): Promise<void> {
    this._ended = true
    await this.client?.end().catch(() => {})
    this.wake()
  }

  /** Tells the server how far the log holds the stream (its slot may let go of the WAL before it). */
  private feedback(askReply = false): void {
    if (this.ended || !this.client) return
    const b = Buffer.alloc(34)
    b[0] = 0x72 // 'r': standby status update
    b.writeBigUInt64BE(this.confirmed, 1) // written
    b.writeBigUInt64BE(this.confirmed, 9) // flushed
    b.writeBigUInt64BE(this.confirmed, 17) // applied
    b.writeBigInt64BE(BigInt(Date.now() - PG_EPOCH_MS) * 1000n, 25)
    b[33] = askReply ? 1 : 0
    try {
      ;(this.client as unknown as { connection: PgConnection }).connection.sendCopyFromChunk(b)
    } catch {
      // A connection that broke: the stream's error handler says so.
    }
  }

  private sleep(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const t = setTimeout(resolve, ms)
      this.waiters.push(() => {
        clearTimeout(t)
        resolve()
      })
    })
  }

  private wake(): void {
    const w = this.waiters
    this.waiters = []
    for (const f of w) f()
  }
}

/** The messages decoded one at a time as they are iterated (a fold that stops early decodes no more). */
function decoded(bufs: Buffer[]): Iterable<PgMessage> {
  return {
    [Symbol.iterator]: () => {
      let i = 0
      return {
        next: (): IteratorResult<PgMessage> =>
          i < bufs.length ? { done: false, value: decode(bufs[i++]) } : { done: true, value: undefined }
      }
    }
  }
}

function decode(b: Buffer): PgMessage {
  try {
    return decodeMessage(b)
  } catch (err) {
    throw MeshError.DATABASE_ERROR(`cannot decode a pgoutput message: ${(err as Error).message}`, { cause: err })
  }
}
