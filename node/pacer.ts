/**
 * Budget pacing (issue 16): what a site writes to its peers goes out no faster than its budget allows.
 *
 * Every connection's raw stream (the UDX stream under hyperswarm's NoiseSecretStream) has its `write` replaced
 * (node/traffic.ts attaches it): bytes go into a queue per connection, and one scheduler for the whole site
 * writes them out in pieces of one UDX packet's payload at most, taking tokens from the site's bucket (`upKbps`)
 * and from the connection's own bucket (what the peer asked of this site: its `downKbps` split among its peers,
 * announced in the control channel's budget message). The scheduler serves the connections with bytes waiting in
 * turn, one piece each, so a site with several busy peers splits its budget evenly among them and one busy peer
 * gets all of it. Nothing is dropped and the order of the bytes is kept: when a queue holds more than about a
 * quarter second of its rate, `write` returns false and the secret stream waits for the 'drain' this module
 * emits, which holds up protomux and hypercore (hypercore stops answering requests until the stream drains), so
 * memory stays bounded. A stream's `end` waits for its queue.
 *
 * Each piece is charged PACKET_OVERHEAD for the headers around it; what UDX sent beyond that (acknowledgements,
 * retransmissions) and the DHT's own traffic are charged after the fact (`charge`), by node/traffic.ts.
 *
 * Batching: on a paced connection the site's own protomux messages are held for BATCH_MS and go as one batch
 * (Pacer.batch).
 */
import type { UdxLossCounts } from './loss.ts'

/** A piece's size when the stream does not say its MTU: a little under UDX's first packet size (1200). */
export const CHUNK = 1024
/**
 * What each piece costs on the wire beyond its bytes, charged to the buckets so that the budget holds for what
 * the line carries: UDX (20), UDP (8), IPv4 (20) and Ethernet (14) headers, rounded up. Not counted in the
 * per-peer figures, which are the stream's bytes.
 */
export const PACKET_OVERHEAD = 64
/** Under a budget, the longest that less than a packet's worth waits for more to join it (ms; see holdMs). */
const HOLD_MS = 200
/** The most a bucket keeps of what accrued while bytes waited for it (ms of its rate; see Bucket). */
const LATE_CREDIT_MS = 1000
/**
 * On a paced connection, how long this site's outgoing protomux messages are held to go out together as one
 * batch (ms). A batch of hypercore's requests is answered by one batch (protomux replies to a batch with a
 * batch), so the answers travel in full packets with one frame's header where each answer had its own.
 */
const BATCH_MS = 100
/**
 * UDX, UDP and IP headers inside a UDX packet's MTU as libudx counts them for a socket bound to '::' (libudx's
 * UDX_IPV6_HEADER_SIZE): the DHT binds its socket dual-stack, and libudx then reaches an IPv4 peer at its
 * v4-mapped IPv6 address and leaves room for IPv6's headers, whatever the stream's remoteFamily says.
 */
const UDX_HEADERS = 20 + 8 + 40
/** The largest piece: a 1500-byte packet's payload (libudx's UDX_MTU_MAX). */
const MAX_PIECE = 1500 - UDX_HEADERS

/**
 * The bytes one UDX packet carries on a stream whose MTU is `mtu` (the packet with its UDX, UDP and IP headers;
 * libudx starts at 1200 and probes up to 1500): the size of a piece, so that each piece is one full packet and
 * never a packet and a runt. 1,432 bytes once the MTU is 1500, where a fixed 1 KB piece left a third of each
 * packet's room unused, each packet with its 62 bytes of headers. CHUNK when the stream does not say.
 */
export function pieceSize(mtu: number | undefined): number {
  if (typeof mtu !== 'number' || !Number.isFinite(mtu) || mtu <= 0) return CHUNK
  return Math.max(512, Math.min(MAX_PIECE, mtu - UDX_HEADERS))
}

/**
 * A token bucket in bytes. While bytes wait for it (`backlogged`), it keeps up to a second of its rate
 * (LATE_CREDIT_MS) instead of its burst: the timer that sends the next piece can fire hundreds of milliseconds
 * late on a busy PC or a virtual machine whose host takes its CPU away (seen here: 10 ms timers 500-1300 ms
 * late, several times a minute), and a bucket capped at its burst lost all that time, so the line stood idle
 * while bytes waited; a night off over 64 kbit/s under a budget at the line's rate took 2.7-3.5x the ideal
 * instead of 1.4x. What was kept goes at once when the pump runs again, a burst of at most what the line
 * would have carried meanwhile.
 */
export class Bucket {
  tokens: number
  private last: number
  /** A piece waited for this bucket's tokens at the last pump: what accrues since is kept beyond the burst. */
  private backlogged = false

  constructor(
    readonly rate: number,
    now: number
  ) {
    this.tokens = this.burst
    this.last = now
  }

  /** A small burst: an eighth of a second of the rate, at least two 1 KB pieces and never less than one full one. */
  get burst(): number {
    return Math.max(2 * (CHUNK + PACKET_OVERHEAD), MAX_PIECE + PACKET_OVERHEAD, this.rate / 8)
  }

  refill(now: number): void {
    const cap = this.backlogged ? Math.max(this.burst, (this.rate * LATE_CREDIT_MS) / 1000) : this.burst
    this.tokens = Math.min(cap, this.tokens + (Math.max(0, now - this.last) / 1000) * this.rate)
    this.last = now
  }

  /**
   * Whether a piece waits for this bucket's tokens now. From the moment one does, what accrues is kept beyond
   * the burst (refilled first, so that an idle spell before is not credited).
   */
  waiting(yes: boolean, now: number): void {
    if (yes && !this.backlogged) this.refill(now)
    this.backlogged = yes
  }

  /** Milliseconds until `n` bytes may go. */
  wait(n: number): number {
    return this.tokens >= n ? 0 : ((n - this.tokens) / this.rate) * 1000
  }

  /** Bytes that went out unpaced (acknowledgements, retransmissions, the DHT): paid back from what comes next. */
  charge(n: number): void {
    this.tokens = Math.max(-this.rate, this.tokens - n)
  }
}

/** The raw stream's parts the pacer and the counting use (udx-native's UDXStream). */
export interface RawStream extends UdxLossCounts {
  bytesTransmitted?: number
  bytesReceived?: number
  mtu?: number
  write(data: Uint8Array): boolean
  end(...args: unknown[]): unknown
  emit(event: string, ...args: unknown[]): boolean
  on(event: string, fn: (...args: unknown[]) => void): unknown
  destroyed?: boolean
}

/** The parts of a connection's protomux (its `userData`) that batching uses. */
interface Mux {
  isProtomux?: boolean
  drained?: boolean
  cork(): void
  uncork(): void
}

/** One connection's queue. */
export class PacedLink {
  readonly queue: Uint8Array[] = []
  /** Bytes of the head buffer already written. */
  offset = 0
  queued = 0
  /** `write` returned false: a 'drain' is owed once the queue is low. */
  owesDrain = false
  endArgs: unknown[] | null = null
  closed = false
  /** The peer's ask, as a bucket; null: it asked for no limit. */
  cap: Bucket | null = null
  /** Since when bytes have waited in the queue without a break (ms), or null while it is empty. */
  waitingSince: number | null = null
  /** A piece waited for `cap`'s tokens at the last pump. */
  capWaited = false
  /** The connection's protomux while the pacer holds it corked for the batch under way (Pacer.batch). */
  corked: Mux | null = null

  /** `conn`: the secret stream over `raw`, whose protomux (`userData`) batching corks; its `end` flushes first. */
  constructor(
    readonly raw: RawStream,
    readonly rawWrite: (b: Uint8Array) => boolean,
    readonly rawEnd: (...args: unknown[]) => unknown,
    readonly conn: { userData?: unknown; end?(...args: unknown[]): unknown } = {}
  ) {}

  /** The most one piece holds now: one UDX packet's payload (the stream's MTU grows as UDX probes it). */
  get piece(): number {
    return pieceSize(this.raw.mtu)
  }

  /** Bytes of queue above which `write` says wait: a quarter second at the rate that applies. */
  highWater(siteRate: number | null): number {
    const rate = Math.min(siteRate ?? Number.POSITIVE_INFINITY, this.cap?.rate ?? Number.POSITIVE_INFINITY)
    return Math.max(2 * this.piece, rate / 4)
  }

  /**
   * The next `n` bytes queued (or all of them, if fewer), joined from as many buffers as they span: small messages
   * waiting for the budget (hypercore's requests and data, a few hundred bytes each) go out together, one packet
   * where each would have been a packet of its own with its 62 bytes of headers.
   */
  take(n: number): Uint8Array {
    const head = this.queue[0]
    if (head.byteLength - this.offset >= n || this.queue.length === 1) return this.takeFrom(head, n)
    const out = new Uint8Array(Math.min(n, this.queued))
    let filled = 0
    while (filled < out.byteLength) {
      const piece = this.takeFrom(this.queue[0], out.byteLength - filled)
      out.set(piece, filled)
      filled += piece.byteLength
    }
    return out
  }

  private takeFrom(head: Uint8Array, n: number): Uint8Array {
    const piece = head.subarray(this.offset, this.offset + n)
    this.offset += piece.byteLength
    this.queued -= piece.byteLength
    if (this.offset >= head.byteLength) {
      this.queue.shift()
      this.offset = 0
    }
    return piece
  }

  /** The connection closed: what waits is dropped with it. */
  drop(): void {
    this.closed = true
    this.queue.length = 0
    this.queued = 0
  }
}

/**
 * The site's scheduler: the site's bucket, the connections' queues, and the timer that writes what waits as the
 * buckets allow. `onSent` hears each piece written (its bytes and what the buckets were charged for it; 0 when no
 * budget applies and the bytes went straight through).
 */
export class Pacer<L extends PacedLink> {
  /** The site's up budget as a bucket; null: none. */
  readonly site: Bucket | null
  links: L[] = []
  private rr = 0
  private timer: NodeJS.Timeout | null = null
  private pumping = false
  private again = false
  private batcher: NodeJS.Timeout | null = null

  constructor(
    upBytesPerSecond: number | null,
    private readonly now: () => number,
    private readonly onSent: (link: L, bytes: number, cost: number, now: number) => void
  ) {
    this.site = upBytesPerSecond ? new Bucket(upBytesPerSecond, now()) : null
  }

  /**
   * Paces `link` from now on: its raw stream's write and end go through the queue, and a batch held when the
   * connection is ended goes first.
   */
  add(link: L): void {
    this.links.push(link)
    link.raw.write = (data: Uint8Array) => this.write(link, data)
    link.raw.end = (...args: unknown[]) => {
      if (link.queued === 0 || link.closed) return link.rawEnd(...args)
      link.endArgs = args
      return link.raw
    }
    const end = link.conn.end?.bind(link.conn)
    if (end) {
      link.conn.end = (...args: unknown[]) => {
        this.flush(link)
        return end(...args)
      }
    }
    if (this.site || link.cap) this.batching()
  }

  remove(link: L): void {
    this.flush(link)
    link.drop()
    this.links = this.links.filter((l) => l !== link)
  }

  /** The peer behind `link` asked for at most `bytesPerSecond` (0: no limit). */
  setCap(link: L, bytesPerSecond: number): void {
    link.cap = bytesPerSecond > 0 ? new Bucket(bytesPerSecond, this.now()) : null
    if (link.cap) this.batching()
  }

  close(): void {
    if (this.timer) clearTimeout(this.timer)
    if (this.batcher) clearInterval(this.batcher)
    this.timer = this.batcher = null
    for (const l of this.links) this.flush(l)
  }

  /** Starts the batches (once a budget applies to a connection: this site's, or a peer's ask). */
  private batching(): void {
    if (this.batcher) return
    this.batcher = setInterval(() => this.batch(), BATCH_MS)
    this.batcher.unref()
  }

  /**
   * Every BATCH_MS: what each paced connection's protomux held goes out as one batch, and the next batch begins.
   * Only where a budget applies (this site's, or the peer's ask): a line slow enough to need one gains a third of
   * each small message's cost back (its frame, its share of a packet), and a 100 ms wait is a few packets' time.
   */
  private batch(): void {
    const rate = this.site?.rate ?? null
    for (const l of this.links) {
      this.flush(l)
      const mux = l.conn.userData as Mux | null | undefined
      if (l.closed || !(this.site || l.cap) || mux?.isProtomux !== true) continue
      // A corked protomux takes every message without a word of backpressure: while the queue is full (hypercore
      // is told to wait), messages go one by one, and wait as they should.
      if (mux.drained === false || l.queued > l.highWater(rate)) continue
      mux.cork()
      l.corked = mux
    }
  }

  private flush(l: L): void {
    const mux = l.corked
    l.corked = null
    mux?.uncork()
  }

  private write(link: L, data: Uint8Array): boolean {
    if (link.closed) return link.rawWrite(data)
    if (link.queued === 0 && !this.site && !link.cap) {
      this.onSent(link, data.byteLength, 0, this.now())
      return link.rawWrite(data)
    }
    if (data.byteLength === 0) return true
    if (link.queued === 0) link.waitingSince = this.now()
    link.queue.push(data)
    link.queued += data.byteLength
    this.pump()
    if (link.queued > link.highWater(this.site?.rate ?? null)) {
      link.owesDrain = true
      return false
    }
    return true
  }

  /** Writes what the buckets allow, one piece per waiting connection in turn; then waits for tokens. */
  pump(): void {
    if (this.pumping) {
      this.again = true
      return
    }
    this.pumping = true
    if (this.timer) clearTimeout(this.timer)
    this.timer = null
    const drains: L[] = []
    let wait = Number.POSITIVE_INFINITY
    let siteWaited = false
    let now = this.now()
    do {
      this.again = false
      now = this.now()
      siteWaited = false
      for (const l of this.links) l.capWaited = false
      this.site?.refill(now)
      let progress = true
      while (progress) {
        progress = false
        const n = this.links.length
        for (let i = 0; i < n; i++) {
          const link = this.links[(this.rr + i) % n]
          if (link.queued === 0) continue
          const full = link.piece
          const size = Math.min(full, link.queued)
          // Less than a packet's worth under a budget: held a little from when its oldest byte came (holdMs), so
          // that more joins it in one packet.
          const held = link.waitingSince === null ? 0 : now - link.waitingSince
          const hold = this.holdMs(link, full)
          if (size < full && held < hold) {
            wait = Math.min(wait, hold - held)
            continue
          }
          const cost = size + PACKET_OVERHEAD
          link.cap?.refill(now)
          const ws = this.site?.wait(cost) ?? 0
          const wc = link.cap?.wait(cost) ?? 0
          if (ws > 0 || wc > 0) {
            wait = Math.min(wait, Math.max(ws, wc))
            if (ws > 0) siteWaited = true
            if (wc > 0) link.capWaited = true
            continue
          }
          if (this.site) this.site.tokens -= cost
          if (link.cap) link.cap.tokens -= cost
          this.onSent(link, size, cost, now)
          link.rawWrite(link.take(size))
          if (link.queued === 0) link.waitingSince = null
          progress = true
          if (link.queued === 0 && link.endArgs) {
            const args = link.endArgs
            link.endArgs = null
            link.rawEnd(...args)
          }
          if (link.owesDrain && link.queued <= link.highWater(this.site?.rate ?? null) / 2) {
            link.owesDrain = false
            drains.push(link)
          }
        }
        this.rr = n ? (this.rr + 1) % n : 0
      }
      wait = this.links.some((l) => l.queued > 0) ? wait : Number.POSITIVE_INFINITY
    } while (this.again)
    // A bucket a piece waits for keeps its credit for the time until the pump runs again (Bucket).
    this.site?.waiting(siteWaited, now)
    for (const l of this.links) l.cap?.waiting(l.capWaited, now)
    this.pumping = false
    if (wait < Number.POSITIVE_INFINITY) {
      this.timer = setTimeout(() => this.pump(), Math.max(2, Math.ceil(wait)))
    }
    // Last: a drain lets the secret stream write again, which comes back here.
    for (const l of drains) if (!l.closed) l.raw.emit('drain')
  }

  /**
   * How long less than a packet's worth may wait for more to join it (ms): the time the budget takes to send one
   * full packet (a packet's 62 bytes of headers were 15 % of a catch-up at 64 kbit/s, where a 1 KB packet takes
   * 136 ms), at most HOLD_MS; 0 without a budget.
   */
  private holdMs(link: L, piece: number): number {
    const rate = Math.min(this.site?.rate ?? Number.POSITIVE_INFINITY, link.cap?.rate ?? Number.POSITIVE_INFINITY)
    return Number.isFinite(rate) ? Math.min(HOLD_MS, ((piece + PACKET_OVERHEAD) / rate) * 1000) : 0
  }
}
