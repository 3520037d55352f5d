/**
 * A site's bandwidth budget (config `link`, issue 16) and the bytes it moves with each peer.
 *
 * Pacing (node/pacer.ts): every connection's raw stream goes through the site's pacer, which writes what waits
 * as the site's budget and the peer's ask allow. It paces the bytes of the encrypted stream, with each piece
 * charged PACKET_OVERHEAD for the headers around it; what UDX sent beyond that (acknowledgements,
 * retransmissions) is charged after the fact, every second, from UDX's own counts. The DHT's own traffic
 * (lookups and announces, a few KB every few minutes, more for a site that answers other DHT nodes) is counted
 * apart (the messages its sockets send; what the UDX instance received beyond the connections) and charged to
 * the site's bucket after the fact, not paced. A budget of exactly the line's rate leaves the shop nothing. It
 * never slows what it receives: that is the sender's pacing, asked for in the budget message; an older site,
 * which has no such message, sends as fast as this site asks.
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
import { judgeLoss, LinkLoss, type LossFigures, lossyText } from './loss.ts'
import { Meter, localDay } from './meter.ts'
import { Pacer, PacedLink, type RawStream } from './pacer.ts'

export { kbit, type LinkBudget, lossText, lossyText, Meter, MIN_LINK_KBPS }

/** The headers under UDX's own, which its byte count leaves out: UDP, IPv4, Ethernet. */
const IP_OVERHEAD = 42
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

/** One connection: its queue (the pacer's) and what it moved. */
class Link extends PacedLink {
  /** The secret stream's count of bytes read, at the last sample. */
  readSeen = 0
  /** UDX's count of bytes received, at the last sample (for the DHT's share of what the instance received). */
  udxRxSeen = 0
  /** UDX's counts of bytes and packets sent, at the last sample, and what the buckets were charged since. */
  wireSeen = 0
  packetsSeen = 0
  charged = 0
  /** UDX's packets sent, sent again and retransmission timeouts, per second (node/loss.ts). */
  readonly loss = new LinkLoss()

  constructor(
    readonly peer: PeerTraffic,
    override readonly conn: {
      rawBytesRead?: number
      _writableState?: { buffered?: number }
      userData?: unknown
      end?(...args: unknown[]): unknown
    },
    raw: RawStream
  ) {
    super(raw, raw.write.bind(raw), raw.end.bind(raw), conn)
  }
}

export class Traffic {
  readonly peers = new Map<string, PeerTraffic>()
  private readonly pacer: Pacer<Link>
  private sampler: NodeJS.Timeout | null = null
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
    this.pacer = new Pacer<Link>(budget.upKbps ? (budget.upKbps * 1000) / 8 : null, now, (link, bytes, cost, at) => {
      link.charged += cost
      link.peer.sent.add(bytes, at)
    })
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
    this.pacer.close()
    this.sampler = null
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
    for (const l of this.links) if (l.peer === peer) this.pacer.setCap(l, b.askBps / 8)
    this.pacer.pump()
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
    const link = new Link(peer, c, raw)
    link.readSeen = c.rawBytesRead ?? 0
    link.wireSeen = raw.bytesTransmitted ?? 0
    link.packetsSeen = raw.packetsTransmitted ?? 0
    link.udxRxSeen = raw.bytesReceived ?? 0
    link.loss.sample(raw, this.now())
    if (peer.budget?.askBps) this.pacer.setCap(link, peer.budget.askBps / 8)
    this.pacer.add(link)
    raw.on('close', () => {
      this.sampleLink(link, this.now())
      this.pacer.remove(link)
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

  /** The connections open now. */
  private get links(): Link[] {
    return this.pacer.links
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
    if (wire > 0) this.pacer.site?.charge(wire)
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
    this.pacer.site?.charge(extra)
    link.cap?.charge(extra)
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
