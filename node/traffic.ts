/**
 * A site's bandwidth budget (config `link`, issue 16) and the bytes it moves with each peer.
 *
 * Pacing. Every connection's raw stream (the UDX stream under hyperswarm's NoiseSecretStream) has its `write`
 * replaced: bytes go into a queue per connection, and one scheduler for the whole site writes them out in
 * pieces of at most CHUNK bytes (about one UDX packet), taking tokens from the site's bucket (`upKbps`) and
 * from the connection's own bucket (what the peer asked of this site: its `downKbps` split among its peers,
 * announced in the control channel's budget message). The scheduler serves the connections with bytes
 * waiting in turn, one piece each, so a site with several busy peers splits its budget evenly among them and
 * one busy peer gets all of it. Nothing is dropped and the order of the bytes is kept: when a queue holds more
 * than about a quarter second of its rate, `write` returns false and the secret stream waits for the 'drain'
 * this module emits, which holds up protomux and hypercore (hypercore stops answering requests until the
 * stream drains), so memory stays bounded. A stream's `end` waits for its queue.
 *
 * What it does not do: it paces the bytes of the encrypted stream, with each piece charged PACKET_OVERHEAD for
 * the headers around it; what UDX sent beyond that (acknowledgements, retransmissions) is charged after the
 * fact, every second, from UDX's own counts. The DHT's own traffic (lookups and announces, a few KB every few
 * minutes, more for a site that answers other DHT nodes) is counted apart (the messages its sockets send; what
 * the UDX instance received beyond the connections) and charged to the site's bucket after the fact, not paced.
 * A budget of exactly the line's rate leaves the shop nothing. It never slows what it receives: that is the
 * sender's pacing, asked for in the budget message; an older site, which has no such message, sends as fast as
 * this site asks.
 *
 * Counting: bytes written to each peer (at the raw stream) and read from it (the secret stream's count of
 * bytes read, sampled every second), per second over the last hour, and per day (kept in DIR/traffic.json so
 * that a restart keeps today's figures).
 */
import fs from 'node:fs'
import type { SwarmConnection } from 'hyperswarm'
import type { Budget } from '../protocol/index.ts'
import { DhtTraffic } from './dht-traffic.ts'
import { heldHere, type Uploads } from './held.ts'
import { writeFileAtomic } from './state.ts'
import type { SiteStatus } from './status.ts'
import { kbit, type LinkBudget, lossText, MIN_LINK_KBPS } from './defaults.ts'
import { judgeLoss, LinkLoss, type LossFigures, lossyText, type UdxLossCounts } from './loss.ts'
import { Meter, localDay } from './meter.ts'

export { kbit, type LinkBudget, lossText, lossyText, Meter, MIN_LINK_KBPS }

/** Largest piece written at once under a budget: about one UDX packet, so a big block never goes as a burst. */
export const CHUNK = 1024
/**
 * What each piece costs on the wire beyond its bytes, charged to the buckets so that the budget holds for what
 * the line carries: UDX (20), UDP (8), IPv4 (20) and Ethernet (14) headers, rounded up. Not counted in the
 * per-peer figures, which are the stream's bytes.
 */
export const PACKET_OVERHEAD = 64
/** The headers under UDX's own, which its byte count leaves out: UDP, IPv4, Ethernet. */
const IP_OVERHEAD = 42
/** Under a budget, the longest that less than a packet's worth waits for more to join it (ms; see holdMs). */
const HOLD_MS = 200
/** The most a bucket keeps of what accrued while bytes waited for it (ms of its rate; see Bucket). */
const LATE_CREDIT_MS = 1000
/** A peer whose bytes waited this long without a break, getting under a tenth of its limit, is a WARN. */
const COLLAPSE_SECONDS = 30
/** Per peer, what `mesh status` shows. Rates are bits per second over the last 10 seconds. */
export interface PeerTrafficStatus {
  site: string
  key: string
  connected: boolean
  sent: { today: number; lastHour: number; bps: number }
  received: { today: number; lastHour: number; bps: number }
  /**
   * The most this site sends to the peer now (its up budget split among its connected peers, and what the peer
   * asked for), and the most it asked the peer to send it (its down budget split likewise); null: no limit.
   */
  upLimitBps: number | null
  downLimitBps: number | null
  /** The peer's own budget as it announced it (bits/s, 0 = no limit); null when it announced none. */
  peerBudget: { upBps: number; downBps: number } | null
  /** Bytes waiting in this site's queue for the peer (held back by the budget). */
  queued: number
  /**
   * What UDX says of the open connections to the peer, since each opened: bytes and packets it sent (headers,
   * acknowledgements and retransmissions included) and how many packets it sent again; null when unknown.
   */
  wire: { bytes: number; packets: number; retransmits: number } | null
  /**
   * The last minute (node/loss.ts) on the open connections to the peer, from UDX: packets sent, those sent again
   * (lost, or their acknowledgement was), and retransmission timeouts (nothing acknowledged for a whole timeout);
   * `lossy`: the LOSSY_LINK WARN is up for this peer. Null when UDX does not tell.
   */
  loss: { packets: number; resent: number; timeouts: number; lossy: boolean } | null
  /**
   * What the peer lacks of the datasets' newest writes (from its reports: applied bytes), and how long until it
   * has received what it still lacks (what hypercore says it holds, often more than it applied), at the rate it
   * gets now, capped by the budget; null: not moving.
   */
  lagBytes: number | null
  catchUpSeconds: number | null
}

export interface TrafficStatus {
  /** This site's budget in bits/s; null: none that way. */
  upBps: number | null
  downBps: number | null
  peers: PeerTrafficStatus[]
  /**
   * What the DHT moved (lookups, announces, answering other nodes, hole punching): the messages its sockets sent,
   * and what its UDX instance received beyond the connections (the set-up of each connection before the node
   * counts it included); null before the DHT is up.
   */
  dht: {
    sent: { today: number; lastHour: number; bps: number }
    received: { today: number; lastHour: number; bps: number }
  } | null
  /** What this site lacks, and how long it takes at the rate it receives now (null: not receiving). */
  lagBytes: number
  catchUpSeconds: number | null
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
  /** Bytes waited for this bucket at the last pump: what accrues since is kept beyond the burst. */
  backlogged = false

  constructor(
    readonly rate: number,
    now: number
  ) {
    this.tokens = this.burst
    this.last = now
  }

  /** A small burst: an eighth of a second of the rate, at least two pieces. */
  get burst(): number {
    return Math.max(2 * (CHUNK + PACKET_OVERHEAD), this.rate / 8)
  }

  refill(now: number): void {
    const cap = this.backlogged ? Math.max(this.burst, (this.rate * LATE_CREDIT_MS) / 1000) : this.burst
    this.tokens = Math.min(cap, this.tokens + (Math.max(0, now - this.last) / 1000) * this.rate)
    this.last = now
  }

  /** Milliseconds until `n` bytes may go. */
  wait(n: number): number {
    return this.tokens >= n ? 0 : ((n - this.tokens) / this.rate) * 1000
  }
}

interface RawStream extends UdxLossCounts {
  bytesTransmitted?: number
  bytesReceived?: number
  write(data: Uint8Array): boolean
  end(...args: unknown[]): unknown
  emit(event: string, ...args: unknown[]): boolean
  on(event: string, fn: (...args: unknown[]) => void): unknown
  destroyed?: boolean
}

/** One peer's figures, kept across its reconnections. */
class PeerTraffic {
  readonly sent = new Meter()
  readonly received = new Meter()
  /** What it asked of this site (bits/s; 0 = no limit) and its own budget, from its budget message. */
  budget: Budget | null = null
  /** The LOSSY_LINK WARN is up (node/loss.ts). */
  lossy = false

  constructor(
    readonly key: string,
    public site: string
  ) {}
}

/** One connection's queue. */
class Link {
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
  /** The secret stream's count of bytes read, at the last sample. */
  readSeen = 0
  /** UDX's count of bytes received, at the last sample (for the DHT's share of what the instance received). */
  udxRxSeen = 0
  /** UDX's counts of bytes and packets sent, at the last sample, and what the buckets were charged since. */
  wireSeen = 0
  packetsSeen = 0
  charged = 0
  /** Since when bytes have waited in the queue without a break (ms), or null while it is empty. */
  waitingSince: number | null = null
  /** UDX's packets sent, sent again and retransmission timeouts, per second (node/loss.ts). */
  readonly loss = new LinkLoss()

  constructor(
    readonly peer: PeerTraffic,
    readonly conn: { rawBytesRead?: number; _writableState?: { buffered?: number } },
    readonly raw: RawStream,
    readonly rawWrite: (b: Uint8Array) => boolean,
    readonly rawEnd: (...args: unknown[]) => unknown
  ) {}

  /** Bytes of queue above which `write` says wait: a quarter second at the rate that applies. */
  highWater(siteRate: number | null): number {
    const rate = Math.min(siteRate ?? Number.POSITIVE_INFINITY, this.cap?.rate ?? Number.POSITIVE_INFINITY)
    return Math.max(2 * CHUNK, rate / 4)
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
}

export class Traffic {
  readonly peers = new Map<string, PeerTraffic>()
  private links: Link[] = []
  private readonly site: Bucket | null
  private rr = 0
  private timer: NodeJS.Timeout | null = null
  private sampler: NodeJS.Timeout | null = null
  private pumping = false
  private again = false
  /** The DHT's own bytes (node/dht-traffic.ts). */
  readonly dht = new DhtTraffic()

  constructor(
    readonly budget: LinkBudget = {},
    private readonly file: string | null = null,
    private readonly now: () => number = Date.now,
    /** Hears when a peer's LOSSY_LINK WARN is raised (true) or cleared, with the last minute's figures. */
    private readonly onLoss?: (
      site: string,
      lossy: boolean,
      figures: { packets: number; resent: number; timeouts: number }
    ) => void
  ) {
    this.site = budget.upKbps ? new Bucket((budget.upKbps * 1000) / 8, now()) : null
  }

  get upBps(): number | null {
    return this.budget.upKbps ? Math.round(this.budget.upKbps * 1000) : null
  }

  get downBps(): number | null {
    return this.budget.downKbps ? Math.round(this.budget.downKbps * 1000) : null
  }

  /** Counts the DHT's own traffic from now on, charged to the site's budget (node/dht-traffic.ts). */
  watchDht(dht: unknown): void {
    this.sample()
    this.dht.watch(dht)
  }

  /** Samples what each connection read, every second; saves today's figures every minute. */
  start(): void {
    this.load()
    let n = 0
    this.sampler = setInterval(() => {
      this.sample()
      if (++n % 60 === 0) this.save()
    }, 1000)
    this.sampler.unref()
  }

  close(): void {
    if (this.sampler) clearInterval(this.sampler)
    if (this.timer) clearTimeout(this.timer)
    this.sampler = this.timer = null
    this.sample()
    this.save()
  }

  /** The budget message for a peer: the down budget split among the `peers` this site is connected to. */
  announcement(peers: number): Budget {
    const down = this.downBps ?? 0
    return { upBps: this.upBps ?? 0, downBps: down, askBps: down ? Math.floor(down / Math.max(1, peers)) : 0 }
  }

  /** A peer's budget message: from now on this site sends it at most what it asked for. */
  onBudget(key: string, b: Budget): void {
    const peer = this.peer(key, '')
    peer.budget = b
    for (const l of this.links) {
      if (l.peer !== peer) continue
      l.cap = b.askBps > 0 ? new Bucket(b.askBps / 8, this.now()) : null
    }
    this.pump()
  }

  /**
   * Counts and paces one connection (every connection, members' and guests' alike). Must run before anything
   * else writes to it: at hyperswarm's 'connection' event.
   */
  attach(conn: SwarmConnection, key: string, site: string): void {
    const c = conn as unknown as { rawStream?: RawStream | null; rawBytesRead?: number }
    const raw = c.rawStream
    if (!raw || typeof raw.write !== 'function' || typeof raw.end !== 'function') return
    const peer = this.peer(key, site)
    // A new connection with no other one open: what the peer asked last time holds no more (it asks again on
    // this one if it still has a budget).
    if (!this.links.some((l) => l.peer === peer)) peer.budget = null
    const link = new Link(peer, c, raw, raw.write.bind(raw), raw.end.bind(raw))
    link.readSeen = c.rawBytesRead ?? 0
    link.wireSeen = raw.bytesTransmitted ?? 0
    link.packetsSeen = raw.packetsTransmitted ?? 0
    link.udxRxSeen = raw.bytesReceived ?? 0
    link.loss.sample(raw, this.now())
    if (peer.budget?.askBps) link.cap = new Bucket(peer.budget.askBps / 8, this.now())
    this.links.push(link)
    raw.write = (data: Uint8Array) => this.write(link, data)
    raw.end = (...args: unknown[]) => {
      if (link.queued === 0 || link.closed) return link.rawEnd(...args)
      link.endArgs = args
      return raw
    }
    raw.on('close', () => {
      this.sampleLink(link, this.now())
      link.closed = true
      link.queue.length = 0
      link.queued = 0
      this.links = this.links.filter((l) => l !== link)
    })
  }

  /** Names the peer behind a key once its hello told it. */
  name(key: string, site: string): void {
    const p = this.peers.get(key)
    if (p && site) p.site = site
  }

  private peer(key: string, site: string): PeerTraffic {
    let p = this.peers.get(key)
    if (!p) {
      p = new PeerTraffic(key, site)
      this.peers.set(key, p)
    } else if (site) p.site = site
    return p
  }

  private write(link: Link, data: Uint8Array): boolean {
    if (link.closed) return link.rawWrite(data)
    if (link.queued === 0 && !this.site && !link.cap) {
      link.peer.sent.add(data.byteLength, this.now())
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
  private pump(): void {
    if (this.pumping) {
      this.again = true
      return
    }
    this.pumping = true
    if (this.timer) clearTimeout(this.timer)
    this.timer = null
    const drains: Link[] = []
    let wait = Number.POSITIVE_INFINITY
    do {
      this.again = false
      const now = this.now()
      this.site?.refill(now)
      let progress = true
      while (progress) {
        progress = false
        const n = this.links.length
        for (let i = 0; i < n; i++) {
          const link = this.links[(this.rr + i) % n]
          if (link.queued === 0) continue
          const size = Math.min(CHUNK, link.queued)
          // Less than a packet's worth under a budget: held a little from when its oldest byte came (holdMs), so
          // that more joins it in one packet.
          const held = link.waitingSince === null ? 0 : now - link.waitingSince
          const hold = this.holdMs(link)
          if (size < CHUNK && held < hold) {
            wait = Math.min(wait, hold - held)
            continue
          }
          const cost = size + PACKET_OVERHEAD
          link.cap?.refill(now)
          const w = Math.max(this.site?.wait(cost) ?? 0, link.cap?.wait(cost) ?? 0)
          if (w > 0) {
            wait = Math.min(wait, w)
            continue
          }
          if (this.site) this.site.tokens -= cost
          if (link.cap) link.cap.tokens -= cost
          link.charged += cost
          link.peer.sent.add(size, now)
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
    // Bytes still waiting keep their buckets' credit for the time until the pump runs again (Bucket).
    if (this.site) this.site.backlogged = this.links.some((l) => l.queued > 0)
    for (const l of this.links) if (l.cap) l.cap.backlogged = l.queued > 0
    this.pumping = false
    if (wait < Number.POSITIVE_INFINITY) {
      this.timer = setTimeout(() => this.pump(), Math.max(2, Math.ceil(wait)))
    }
    // Last: a drain lets the secret stream write again, which comes back here.
    for (const l of drains) if (!l.closed) l.raw.emit('drain')
  }

  /**
   * How long less than a packet's worth may wait for more to join it (ms): the time the budget takes to send one
   * packet (a packet's 62 bytes of headers were 15 % of a catch-up at 64 kbit/s, where a packet takes 136 ms),
   * at most HOLD_MS; 0 without a budget.
   */
  private holdMs(link: Link): number {
    const rate = Math.min(this.site?.rate ?? Number.POSITIVE_INFINITY, link.cap?.rate ?? Number.POSITIVE_INFINITY)
    return Number.isFinite(rate) ? Math.min(HOLD_MS, ((CHUNK + PACKET_OVERHEAD) / rate) * 1000) : 0
  }

  private sample(): void {
    const now = this.now()
    for (const l of this.links) this.sampleLink(l, now)
    this.sampleDht(now)
    this.judgeLoss(now)
  }

  /** What the DHT moved since the last sample; what it sent charged to the site's budget (as in chargeWire). */
  private sampleDht(now: number): void {
    const wire = this.dht.sample(now, IP_OVERHEAD)
    if (this.site && wire > 0) this.site.tokens = Math.max(-this.site.rate, this.site.tokens - wire)
  }

  private sampleLink(link: Link, now: number): void {
    const read = link.conn.rawBytesRead ?? 0
    if (read > link.readSeen) link.peer.received.add(read - link.readSeen, now)
    link.readSeen = read
    const rx = link.raw.bytesReceived
    if (typeof rx === 'number') {
      this.dht.streamReceived(Math.max(0, rx - link.udxRxSeen))
      link.udxRxSeen = rx
    }
    link.loss.sample(link.raw, now)
    this.chargeWire(link)
  }

  /** The last minute's loss figures over the peer's open connections; null when UDX does not tell. */
  private loss(peer: PeerTraffic, now: number): LossFigures | null {
    return LinkLoss.of(
      this.links.filter((l) => l.peer === peer).map((l) => l.loss),
      now
    )
  }

  /**
   * The LOSSY_LINK WARNs up now, each with the last minute's figures: carried in this site's report (notices of
   * kind 'link'), so that every site's status, and the alerts of whichever site sends them, say so too.
   */
  lossyLinks(): Array<{ site: string; text: string }> {
    const now = this.now()
    const out: Array<{ site: string; text: string }> = []
    for (const p of this.peers.values()) {
      const l = p.lossy ? this.loss(p, now) : null
      if (l) out.push({ site: p.site, text: lossyText(p.site, l) })
    }
    return out
  }

  /**
   * Raises or clears each peer's LOSSY_LINK WARN from the last minute's figures (every second, from the
   * sampler); `onLoss` hears of each change.
   */
  private judgeLoss(now: number): void {
    for (const p of this.peers.values()) {
      const l = this.loss(p, now)
      const lossy = judgeLoss(p.lossy, l)
      if (lossy === p.lossy) continue
      p.lossy = lossy
      this.onLoss?.(p.site, lossy, l ?? { packets: 0, resent: 0, timeouts: 0 })
    }
  }

  /**
   * What UDX sent beyond what the buckets were charged (retransmissions, acknowledgements, and pieces written
   * before a budget applied), charged now: the budget holds for what the line carries. A bucket may go below
   * zero by up to a second of its rate; the next pieces wait until it is paid back.
   */
  private chargeWire(link: Link): void {
    const bytes = link.raw.bytesTransmitted
    const packets = link.raw.packetsTransmitted
    if (typeof bytes !== 'number' || typeof packets !== 'number') return
    const wire = bytes - link.wireSeen + (packets - link.packetsSeen) * IP_OVERHEAD
    const extra = wire - link.charged
    link.wireSeen = bytes
    link.packetsSeen = packets
    link.charged = 0
    if (extra <= 0) return
    for (const b of [this.site, link.cap]) if (b) b.tokens = Math.max(-b.rate, b.tokens - extra)
  }

  /**
   * The figures for `mesh status`: each peer's, with what it lacks (`lag`, bytes by key, from the datasets'
   * status) and this site's own lack (`ownLag`).
   */
  status(
    connected: Set<string>,
    lag: Map<string, number>,
    ownLag: number,
    left: Map<string, number> = lag,
    ownLeft = ownLag
  ): TrafficStatus {
    const now = this.now()
    const n = Math.max(1, connected.size)
    const up = this.upBps
    const down = this.downBps
    const peers: PeerTrafficStatus[] = []
    let receiving = 0
    for (const p of this.peers.values()) {
      const sentBps = (p.sent.sum(10, now) / 10) * 8
      const recvBps = (p.received.sum(10, now) / 10) * 8
      receiving += recvBps
      const ask = p.budget?.askBps || null
      const share = up === null ? null : Math.floor(up / n)
      const upLimit = share === null ? ask : ask === null ? share : Math.min(share, ask)
      const lagBytes = lag.get(p.key) ?? null
      peers.push({
        site: p.site,
        key: p.key,
        connected: connected.has(p.key),
        sent: { today: p.sent.today, lastHour: p.sent.lastHour(now), bps: Math.round(sentBps) },
        received: { today: p.received.today, lastHour: p.received.lastHour(now), bps: Math.round(recvBps) },
        upLimitBps: upLimit,
        downLimitBps: down === null ? null : Math.floor(down / n),
        peerBudget: p.budget ? { upBps: p.budget.upBps, downBps: p.budget.downBps } : null,
        queued: this.links.filter((l) => l.peer === p).reduce((t, l) => t + l.queued, 0),
        wire: wire(this.links.filter((l) => l.peer === p)),
        loss: ((l) => (l ? { packets: l.packets, resent: l.resent, timeouts: l.timeouts, lossy: p.lossy } : null))(
          this.loss(p, now)
        ),
        lagBytes,
        // What it still has to receive, at the rate it gets now (never above what the budget lets it have).
        catchUpSeconds: eta(left.get(p.key) ?? lagBytes, upLimit === null ? sentBps : Math.min(sentBps, upLimit))
      })
    }
    peers.sort((a, b) => a.site.localeCompare(b.site))
    const inBps = down === null ? receiving : Math.min(receiving, down)
    const meter = (m: Meter) => ({
      today: m.today,
      lastHour: m.lastHour(now),
      bps: Math.round((m.sum(10, now) / 10) * 8)
    })
    const dht = this.dht.watching ? { sent: meter(this.dht.sent), received: meter(this.dht.received) } : null
    return { upBps: up, downBps: down, peers, dht, lagBytes: ownLag, catchUpSeconds: eta(ownLeft, inBps) }
  }

  /**
   * Bits per second sent to a peer over the last COLLAPSE_SECONDS, when bytes waited for it all that time
   * without a break (the WARN on a rate that collapsed); null otherwise.
   */
  waitingRate(key: string): number | null {
    const now = this.now()
    const waited = (l: Link) => l.waitingSince !== null && now - l.waitingSince >= COLLAPSE_SECONDS * 1000
    if (!this.links.some((l) => l.peer.key === key && waited(l))) return null
    return ((this.peers.get(key)?.sent.sum(COLLAPSE_SECONDS, now) ?? 0) * 8) / COLLAPSE_SECONDS
  }

  /**
   * Bytes on their way to the peer `key` that have not reached UDX: in this site's queue (the budget's) and in
   * the secret streams' write buffers above it, where hypercore's answers wait when the line is slow.
   */
  unsent(key: string): number {
    let n = 0
    for (const l of this.links) {
      if (l.peer.key !== key) continue
      n += l.queued + (l.conn._writableState?.buffered ?? 0)
    }
    return n
  }

  /** Today's figures as the last run saved them: every peer of them, connected or not. */
  private load(): void {
    if (!this.file) return
    let j: SavedTraffic
    try {
      j = JSON.parse(fs.readFileSync(this.file, 'utf8')) as SavedTraffic
    } catch {
      return // none yet, or unreadable: today's figures start at 0
    }
    if (j.day !== localDay(this.now()) || typeof j.peers !== 'object' || j.peers === null) return
    if (j.dht) {
      this.dht.sent.restore(j.day, this.dht.sent.today + (Number(j.dht.sent) || 0))
      this.dht.received.restore(j.day, this.dht.received.today + (Number(j.dht.received) || 0))
    }
    for (const [key, s] of Object.entries(j.peers)) {
      const p = this.peer(key, s.site ?? '')
      p.sent.restore(j.day, p.sent.today + (Number(s.sent) || 0))
      p.received.restore(j.day, p.received.today + (Number(s.received) || 0))
    }
  }

  private save(): void {
    if (!this.file) return
    const day = localDay(this.now())
    const peers: SavedTraffic['peers'] = {}
    for (const p of this.peers.values()) {
      peers[p.key] = {
        site: p.site,
        sent: p.sent.dayName === day ? p.sent.today : 0,
        received: p.received.dayName === day ? p.received.today : 0
      }
    }
    try {
      const dht = {
        sent: this.dht.sent.dayName === day ? this.dht.sent.today : 0,
        received: this.dht.received.dayName === day ? this.dht.received.today : 0
      }
      writeFileAtomic(this.file, `${JSON.stringify({ day, peers, dht })}\n`)
    } catch {
      // a full disk: the figures live on in memory
    }
  }
}

interface SavedTraffic {
  day: string
  peers: Record<string, { site: string; sent: number; received: number }>
  /** The DHT's own bytes today (absent in files from before it was counted). */
  dht?: { sent: number; received: number }
}

function wire(links: Link[]): PeerTrafficStatus['wire'] {
  const known = links.filter((l) => typeof l.raw.bytesTransmitted === 'number')
  if (known.length === 0) return null
  const sum = (f: (r: RawStream) => number | undefined) => known.reduce((t, l) => t + (f(l.raw) ?? 0), 0)
  return {
    bytes: sum((r) => r.bytesTransmitted),
    packets: sum((r) => r.packetsTransmitted),
    retransmits: sum((r) => r.retransmits)
  }
}

function eta(bytes: number | null, bps: number): number | null {
  if (bytes === null) return null
  if (bytes === 0) return 0
  return bps > 0 ? Math.round((bytes * 8) / bps) : null
}

/**
 * Adds the traffic figures to the running node's status: per peer, bytes today and in the last hour, the
 * rate against the limit, and how long until it has caught up at that rate (its lag in bytes, from the
 * datasets' holders); a WARN for a peer whose link drops packets (LOSSY_LINK, from UDX's retransmissions over
 * the last minute), and one for a peer whose rate collapsed while bytes waited for it (a link that drops
 * packets, or one shared with more traffic than the budget allows for).
 */
export function addTraffic(
  st: SiteStatus,
  t: Traffic,
  self: Uint8Array,
  connected: string[],
  coreOf: (log: string) => unknown = () => null,
  uploads: Uploads | null = null
): SiteStatus {
  const me = Buffer.from(self).toString('hex')
  const lag = new Map<string, number>()
  const left = new Map<string, number>()
  let own = 0
  let ownLeft = 0
  // A block hypercore uploaded may still wait in the streams' buffers: it is still to receive.
  const unsent = (k: string) => t.unsent(k)
  const add = (m: Map<string, number>, k: string, n: number) => m.set(k, (m.get(k) ?? 0) + n)
  for (const d of st.datasets) {
    const core = coreOf(d.log)
    const held = core && uploads ? uploads.heldByPeers(d.log, core) : new Map<string, number>()
    for (const h of d.holders) {
      if (h.role === 'origin' || h.lagBytes === null) continue
      // What is left to receive: what the log holds beyond what the holder has of it, never above its lag.
      const have = h.key === me ? (core ? heldHere(core) : null) : (held.get(h.key) ?? null)
      const toReceive = have === null ? h.lagBytes : Math.min(h.lagBytes, Math.max(0, d.bytes - have))
      if (h.key === me) {
        own += h.lagBytes
        ownLeft += toReceive
      } else {
        add(lag, h.key, h.lagBytes)
        add(left, h.key, toReceive)
      }
    }
  }
  for (const [k, n] of left) left.set(k, Math.min(lag.get(k) ?? n, n + unsent(k)))
  st.traffic = t.status(new Set(connected), lag, own, left, ownLeft)
  // A guest's connection (a join code being redeemed) is counted and paced, and not shown.
  const members = new Set(st.members.map((m) => m.key))
  st.traffic.peers = st.traffic.peers.filter((p) => p.connected || members.has(p.key))
  // This site's own LOSSY_LINK notices (its report, through buildStatus) give way to the live figures here.
  const ownNotice = `${st.site}: LOSSY_LINK: `
  st.reasons = st.reasons.filter((r) => !r.text.startsWith(ownNotice))
  for (const p of st.traffic.peers) {
    if (p.connected && p.loss?.lossy) {
      st.reasons.push({ level: 'WARN', text: lossyText(p.site, p.loss) })
      if (st.verdict === 'OK') st.verdict = 'WARN'
    }
    if (!p.connected || p.upLimitBps === null) continue
    const rate = t.waitingRate(p.key)
    if (rate === null || rate >= p.upLimitBps / 10) continue
    st.reasons.push({
      level: 'WARN',
      text:
        `traffic to ${p.site} moves at ${kbit(rate)} of the ${kbit(p.upLimitBps)} it may use, with ` +
        `${p.queued} bytes waiting: the link drops packets or carries more than the budget allows for; ` +
        'check the line, or lower link.upKbps'
    })
    if (st.verdict === 'OK') st.verdict = 'WARN'
  }
  return st
}
