/**
 * One site's node: the corestore with every log, the swarm and its firewall, the control channel with each
 * member, the capture loop of each dataset this site is the origin of, and the apply loop of every other
 * dataset the mesh protects.
 *
 * Admission. The Noise handshake of every hyperswarm connection proves the remote's key. A key that is not in
 * the member list (mesh.json) is refused before anything else: by the DHT firewall when it calls us, and by
 * closing the connection at once when we called it (hyperswarm's firewall only guards incoming connections).
 * A one-time invite key (invites.json) is let in for the join channel only: such a connection never
 * replicates a log.
 *
 * Order on a member connection: the control channel's hello is checked first (protocol version and mesh id);
 * only then is the corestore replicated over the connection. A peer of another version gets nothing.
 *
 * Logs are replicated whole by every holder, not only by their writer: every node opens every log it knows of
 * and keeps downloading it, so a site can fetch A's log from B while A is off.
 */
import { EventEmitter } from 'node:events'
import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import { createRequire } from 'node:module'
import Corestore from 'corestore'
import DHT, { type KeyPair } from 'hyperdht'
import Hyperswarm, { type SwarmConnection } from 'hyperswarm'
import Protomux, { type Channel, type Message } from 'protomux'
import crypto from 'hypercore-crypto'
import {
  CONTROL_PROTOCOL,
  CONTROL_VERSION,
  JOIN_PROTOCOL,
  MeshError,
  datasetsMessage,
  helloEncoding,
  joinHelloEncoding,
  membersMessage,
  redeemMessage,
  refuseMessage,
  reportMessage,
  signReport,
  verifyReport,
  welcomeMessage,
  type DatasetInfo,
  type Hello,
  type Holding,
  type MemberInfo,
  type Redeem,
  type SignedReport
} from '../protocol/index.ts'
import { SqliteApply, SqliteCapture, silentLogger, type Logger } from '../adapters/index.ts'
import { ApplyLoop } from './apply-loop.ts'
import { CaptureLoop } from './capture-loop.ts'
import { DatasetLog } from './log.ts'
import {
  readInvites,
  readMeshState,
  readReports,
  readSiteKey,
  sitePaths,
  writeInvites,
  writeMeshState,
  writeReports,
  type Invite,
  type MeshState,
  type SitePaths
} from './state.ts'
import { buildStatus, type SiteStatus, type StatusThresholds, DEFAULT_THRESHOLDS } from './status.ts'

const require = createRequire(import.meta.url)
const { MerkleTree } = require('hypercore/lib/merkle-tree') as {
  MerkleTree: { byteOffset(state: unknown, index: number): Promise<number> }
}

export interface OwnDataset {
  id: string
  name: string
  engine: 'sqlite'
  path: string
}

export interface NetworkOptions {
  /** DHT bootstrap nodes; undefined means the public DHT. */
  bootstrap?: Array<{ host: string; port: number }>
  /** Address the DHT binds to (127.0.0.1 for a test network on loopback). */
  host?: string
  /** Set false on a private network where every node can reach every other directly. */
  firewalled?: boolean
}

export interface MeshNodeOptions {
  dir: string
  site: string
  datasets: OwnDataset[]
  network: NetworkOptions
  software: string
  logger?: Logger
  thresholds?: StatusThresholds
  /** Longest wait between two looks at an idle source database. */
  pollMs?: number
  /** Reports are sent on every change and at least this often. */
  heartbeatMs?: number
}

export function meshTopic(meshId: Uint8Array): Buffer {
  return crypto.hash([Buffer.from('branchmesh topic'), meshId])
}

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex')
const short = (b: Uint8Array) => hex(b).slice(0, 12)

interface Peer {
  conn: SwarmConnection
  key: Buffer
  site: string
  software: string
  channel: Channel
  members: Message<MemberInfo[]>
  datasets: Message<DatasetInfo[]>
  report: Message<SignedReport>
  ready: boolean
}

interface Origin {
  info: DatasetInfo
  own: OwnDataset
  log: DatasetLog
  side: SqliteCapture
  loop: CaptureLoop
  error: MeshError | null
}

interface Replica {
  info: DatasetInfo
  log: DatasetLog
  side: SqliteApply
  loop: ApplyLoop
  damaged: number
  appliedWriteAt: number
}

export interface Refusal {
  key: string
  reason: string
  at: number
}

export class MeshNode extends EventEmitter {
  readonly paths: SitePaths
  readonly opts: MeshNodeOptions
  readonly logger: Logger
  keyPair!: KeyPair
  state!: MeshState
  store!: Corestore
  dht!: DHT
  swarm!: Hyperswarm
  readonly origins = new Map<string, Origin>()
  readonly replicas = new Map<string, Replica>()
  readonly peers = new Map<string, Peer>()
  readonly reports = new Map<string, SignedReport>()
  readonly refused: Refusal[] = []
  private server: net.Server | null = null
  private closing = false
  private timers: NodeJS.Timeout[] = []
  private reportDirty = false
  private reportTimer: NodeJS.Timeout | null = null
  private lastRefusalLog = new Map<string, number>()
  private invites: Invite[] = []

  constructor(opts: MeshNodeOptions) {
    super()
    this.opts = opts
    this.paths = sitePaths(opts.dir)
    this.logger = opts.logger ?? silentLogger
  }

  get key(): Buffer {
    return this.keyPair.publicKey
  }

  async start(): Promise<void> {
    this.keyPair = readSiteKey(this.paths)
    this.state = readMeshState(this.paths)
    this.invites = readInvites(this.paths)
    for (const r of readReports(this.paths)) if (verifyReport(r)) this.reports.set(hex(r.report.site), r)

    this.store = new Corestore(this.paths.store)
    try {
      await this.store.ready()
    } catch (err) {
      await this.store.close().catch(() => {})
      if (/could not be locked|resource temporarily unavailable/i.test((err as Error).message)) {
        throw MeshError.NODE_RUNNING(`another node is already running on ${this.paths.dir}`, { context: { dir: this.paths.dir } })
      }
      throw MeshError.wrap(err, MeshError.IO_ERROR, 'cannot open the log store')
    }
    await this.listenLocal()
    fs.mkdirSync(this.paths.replicas, { recursive: true })

    for (const own of this.opts.datasets) await this.openOrigin(own)
    for (const info of this.state.datasets) {
      if (!this.origins.has(info.id)) await this.openReplica(info)
    }
    this.saveState()

    const net = this.opts.network
    this.dht = new DHT({
      bootstrap: net.bootstrap,
      host: net.host,
      firewalled: net.firewalled,
      keyPair: this.keyPair
    })
    this.swarm = new Hyperswarm({
      keyPair: this.keyPair,
      dht: this.dht,
      firewall: (remote) => this.firewall(remote)
    })
    this.swarm.on('connection', (conn: SwarmConnection) => this.onConnection(conn))
    this.swarm.join(meshTopic(this.state.meshId), { server: true, client: true })
    for (const m of this.state.members) if (!this.key.equals(m.key)) this.swarm.joinPeer(m.key)

    this.timers.push(setInterval(() => this.sendReport(), this.opts.heartbeatMs ?? 5000))
    this.markDirty()
    this.logger.info('node started', {
      site: this.opts.site,
      key: short(this.key),
      datasets: this.opts.datasets.map((d) => d.name),
      replicas: [...this.replicas.values()].map((r) => r.info.name)
    })
  }

  /** Resolves when the DHT has bootstrapped; false when no bootstrap node answered within `ms`. */
  async dhtReady(ms: number): Promise<boolean> {
    const t = new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), ms)
      timer.unref()
    })
    const ready = this.dht.fullyBootstrapped().then(() => this.dht.bootstrapped === true && nodesKnown(this.dht))
    return Promise.race([ready, t])
  }

  // --- admission ---------------------------------------------------------------------------------------------

  private isMember(key: Uint8Array): boolean {
    return this.state.members.some((m) => Buffer.from(m.key).equals(key))
  }

  private liveInvite(key: Uint8Array): Invite | null {
    const now = Date.now()
    const find = () => this.invites.find((i) => Buffer.from(i.key).equals(key) && i.expiresAt * 1000 > now) ?? null
    let found = find()
    if (found === null) {
      // `mesh invite` may have added one while the node runs: read the file again.
      try {
        this.invites = readInvites(this.paths)
      } catch (err) {
        this.logger.warn('cannot read the invites', { error: (err as Error).message })
      }
      found = find()
    }
    return found
  }

  /** hyperswarm's firewall: true refuses the connection before any data flows. */
  private firewall(remote: Buffer): boolean {
    if (this.isMember(remote) || this.liveInvite(remote)) return false
    this.refuse(remote, 'not a member of the mesh')
    return true
  }

  private refuse(key: Uint8Array, reason: string): void {
    const k = hex(key)
    const now = Date.now()
    this.refused.push({ key: k, reason, at: now })
    if (this.refused.length > 20) this.refused.shift()
    // One log line per key per minute: a stranger retrying must not flood the log.
    if ((this.lastRefusalLog.get(k) ?? 0) + 60_000 < now) {
      this.lastRefusalLog.set(k, now)
      this.logger.warn('refused a connection', { peer: short(key), reason })
    }
  }

  private onConnection(conn: SwarmConnection): void {
    const key = conn.remotePublicKey
    conn.on('error', (err: Error) => this.logger.debug('connection error', { peer: short(key), error: err.message }))
    if (this.closing) return void conn.destroy()
    if (this.isMember(key)) return this.onMember(conn)
    const invite = this.liveInvite(key)
    if (invite) return this.onGuest(conn, invite)
    this.refuse(key, 'not a member of the mesh')
    conn.destroy()
  }

  // --- the control channel -----------------------------------------------------------------------------------

  private onMember(conn: SwarmConnection): void {
    const key = conn.remotePublicKey
    conn.rawStream?.setNoDelay?.(true)
    const mux = Protomux.from(conn)
    const noise = conn as unknown as { userData: unknown; keepAlive: number; setKeepAlive(ms: number): void }
    if (noise.keepAlive === 0) noise.setKeepAlive(5000)
    noise.userData = mux
    const channel = mux.createChannel({
      protocol: CONTROL_PROTOCOL,
      unique: true,
      handshake: helloEncoding,
      onopen: (hello: Hello) => this.onHello(peer, hello),
      onclose: () => this.onPeerClosed(peer)
    })
    if (channel === null) return void conn.destroy()
    const peer: Peer = {
      conn,
      key,
      site: this.memberName(key),
      software: '',
      channel,
      members: channel.addMessage({ encoding: membersMessage, onmessage: (m: MemberInfo[]) => this.onMembers(peer, m) }),
      datasets: channel.addMessage({ encoding: datasetsMessage, onmessage: (m: DatasetInfo[]) => this.onDatasets(peer, m) }),
      report: channel.addMessage({ encoding: reportMessage, onmessage: (m: SignedReport) => this.onReport(peer, m) }),
      ready: false
    }
    channel.open({ version: CONTROL_VERSION, meshId: this.state.meshId, site: this.opts.site, software: this.opts.software })
    const timer = setTimeout(() => {
      if (!peer.ready && !conn.destroyed) {
        this.refuse(key, 'it did not open the branchmesh/1 control channel (an incompatible version?)')
        conn.destroy()
      }
    }, 20_000)
    conn.once('close', () => clearTimeout(timer))
  }

  private onHello(peer: Peer, hello: Hello): void {
    if (hello.version !== CONTROL_VERSION) {
      const e = MeshError.PROTOCOL_VERSION(`${peer.site} speaks control protocol version ${hello.version}; this site speaks ${CONTROL_VERSION}`)
      this.refuse(peer.key, e.message)
      this.logger.error('peer refused', { peer: peer.site, code: e.code, error: e.message, hint: e.hint })
      peer.conn.destroy()
      return
    }
    if (!hello.meshId || !Buffer.from(hello.meshId).equals(this.state.meshId)) {
      this.refuse(peer.key, 'it belongs to another mesh')
      peer.conn.destroy()
      return
    }
    const k = hex(peer.key)
    const old = this.peers.get(k)
    if (old && old !== peer) old.conn.destroy()
    peer.ready = true
    peer.site = hello.site || peer.site
    peer.software = hello.software
    this.peers.set(k, peer)
    this.logger.info('connected', { peer: peer.site, key: short(peer.key) })
    // Only now, with the hello checked, do the logs flow.
    this.store.replicate(peer.conn)
    peer.members.send(this.state.members)
    peer.datasets.send(this.state.datasets)
    this.buildReport()
      .then(() => {
        for (const r of this.reports.values()) peer.report.send(r)
      })
      .catch((err) => this.logger.warn('cannot build a report', { error: (err as Error).message }))
    this.emit('peer', peer.site)
  }

  private onPeerClosed(peer: Peer): void {
    const k = hex(peer.key)
    if (this.peers.get(k) === peer) {
      this.peers.delete(k)
      this.logger.info('disconnected', { peer: peer.site })
      this.markDirty()
    }
  }

  private memberName(key: Uint8Array): string {
    return this.state.members.find((m) => Buffer.from(m.key).equals(key))?.site ?? short(key)
  }

  private broadcast(send: (p: Peer) => void, except?: Peer): void {
    for (const p of this.peers.values()) if (p !== except && p.ready) send(p)
  }

  private onMembers(from: Peer, list: MemberInfo[]): void {
    let changed = false
    for (const m of list) {
      if (this.isMember(m.key)) continue
      this.state.members.push({ key: Buffer.from(m.key), site: m.site, addedAt: m.addedAt })
      changed = true
      this.logger.info('new member', { site: m.site, key: short(m.key), from: from.site })
      // A key our firewall refused before it was known is banned by hyperswarm: lift that.
      this.swarm.peers.get(hex(m.key))?.ban(false)
      this.swarm.joinPeer(m.key)
    }
    if (changed) {
      this.saveState()
      this.broadcast((p) => p.members.send(this.state.members), from)
    }
  }

  private onDatasets(from: Peer, list: DatasetInfo[]): void {
    let changed = false
    for (const d of list) {
      const have = this.state.datasets.find((x) => x.id === d.id)
      if (!have) {
        if (!this.isMember(d.origin)) {
          this.logger.warn('ignored a dataset whose origin is not a member', { dataset: d.name, from: from.site })
          continue
        }
        const info: DatasetInfo = { ...d, origin: Buffer.from(d.origin), log: Buffer.from(d.log) }
        this.state.datasets.push(info)
        changed = true
        this.logger.info('new dataset', { dataset: d.name, origin: d.originSite, from: from.site })
        if (!this.origins.has(d.id)) {
          this.openReplica(info).catch((err) => this.logger.error('cannot open a replica', { dataset: d.name, error: (err as Error).message }))
        }
      } else if (have.epoch === d.epoch && !Buffer.from(have.log).equals(d.log)) {
        this.logger.error('two logs claim the same dataset epoch; keeping the one known first', { dataset: d.name, epoch: d.epoch, from: from.site })
      }
      // A higher epoch (failover) is handled by the promotion milestone; until then the first log known stays.
    }
    if (changed) {
      this.saveState()
      this.broadcast((p) => p.datasets.send(this.state.datasets), from)
    }
  }

  private onReport(from: Peer, m: SignedReport): void {
    if (!this.isMember(m.report.site) || !verifyReport(m)) {
      this.logger.warn('dropped a report with a bad signature', { from: from.site })
      return
    }
    if (Buffer.from(m.report.site).equals(this.key)) return
    const k = hex(m.report.site)
    const have = this.reports.get(k)
    if (have && have.report.at >= m.report.at) return
    this.reports.set(k, m)
    this.broadcast((p) => p.report.send(m), from)
    this.emit('report', m.report)
    this.scheduleSave()
  }

  // --- reports -----------------------------------------------------------------------------------------------

  private saveTimer: NodeJS.Timeout | null = null
  private scheduleSave(): void {
    if (this.saveTimer) return
    this.saveTimer = setTimeout(() => {
      this.saveTimer = null
      try {
        writeReports(this.paths, [...this.reports.values()])
      } catch (err) {
        this.logger.warn('cannot save reports', { error: (err as Error).message })
      }
    }, 1000)
  }

  /** Something this site reports changed: send a new report soon (at most every 100 ms). */
  private markDirty(): void {
    this.reportDirty = true
    if (this.reportTimer || this.closing) return
    this.reportTimer = setTimeout(() => {
      this.reportTimer = null
      if (this.reportDirty) this.sendReport()
    }, 100)
  }

  private sendReport(): void {
    if (this.closing) return
    this.reportDirty = false
    this.buildReport()
      .then((r) => this.broadcast((p) => p.report.send(r)))
      .catch((err) => this.logger.warn('cannot build a report', { error: (err as Error).message }))
  }

  private async holdings(): Promise<Holding[]> {
    const out: Holding[] = []
    for (const o of this.origins.values()) {
      const core = o.log.core
      const err = o.error ?? o.loop.stats.lastError
      out.push({
        dataset: o.info.id,
        log: o.log.key,
        epoch: o.info.epoch,
        length: core.length,
        byteLength: core.byteLength,
        downloaded: core.length,
        applied: core.length,
        appliedBytes: core.byteLength,
        lastWriteAt: o.loop.stats.lastUnitAt ?? o.info.createdAt,
        appliedWriteAt: o.loop.stats.lastUnitAt ?? o.info.createdAt,
        error: err?.code ?? '',
        errorMessage: err?.message ?? '',
        damaged: 0
      })
    }
    for (const r of this.replicas.values()) {
      const core = r.log.core
      const applied = r.loop.stats.applied
      // hypercore keeps no byte offset per block; its merkle tree gives one, but in 11.37.1 it returns NaN for
      // any position past the tree's first root. Then the figure is an estimate in proportion to blocks.
      let appliedBytes = applied >= core.length ? core.byteLength : Math.floor((core.byteLength * applied) / Math.max(1, core.length))
      if (applied > 0 && applied < core.length) {
        try {
          const off = await MerkleTree.byteOffset((core as unknown as { state: unknown }).state, 2 * applied)
          if (Number.isSafeInteger(off) && off >= 0) appliedBytes = off
        } catch {
          // Keep the estimate.
        }
      }
      const err = r.loop.stats.lastError
      out.push({
        dataset: r.info.id,
        log: r.log.key,
        epoch: r.info.epoch,
        length: core.length,
        byteLength: core.byteLength,
        downloaded: core.contiguousLength,
        applied,
        appliedBytes,
        // The newest write as far as this site knows: what the origin last reported, or what it applied.
        lastWriteAt: Math.max(r.appliedWriteAt, this.originReported(r.info)?.lastWriteAt ?? 0),
        appliedWriteAt: r.appliedWriteAt,
        error: err?.code ?? '',
        errorMessage: err?.message ?? '',
        damaged: r.damaged
      })
    }
    return out
  }

  /** The origin's own report of a dataset's log, if one has reached this site. */
  private originReported(info: DatasetInfo): Holding | null {
    const r = this.reports.get(hex(info.origin))
    return r?.report.holdings.find((h) => h.dataset === info.id && Buffer.from(h.log).equals(info.log)) ?? null
  }

  private async buildReport(): Promise<SignedReport> {
    const report = signReport(
      {
        site: this.key,
        siteName: this.opts.site,
        at: Date.now(),
        holdings: await this.holdings(),
        peers: [...this.peers.values()].filter((p) => p.ready).map((p) => p.key),
        software: this.opts.software
      },
      this.keyPair.secretKey
    )
    this.reports.set(hex(this.key), report)
    this.scheduleSave()
    return report
  }

  /** The whole picture: what `mesh status` prints. */
  async status(now = Date.now()): Promise<SiteStatus> {
    await this.buildReport()
    return buildStatus({
      self: this.key,
      site: this.opts.site,
      state: this.state,
      reports: [...this.reports.values()].map((r) => r.report),
      connected: new Set([...this.peers.values()].filter((p) => p.ready).map((p) => hex(p.key))),
      running: true,
      refused: this.refused,
      now,
      thresholds: this.opts.thresholds ?? DEFAULT_THRESHOLDS
    })
  }

  // --- datasets ----------------------------------------------------------------------------------------------

  private async openOrigin(own: OwnDataset): Promise<void> {
    const log = await DatasetLog.writable(this.store, this.paths.store, own.id, 0)
    let info = this.state.datasets.find((d) => d.id === own.id)
    if (!info) {
      info = {
        id: own.id,
        name: own.name,
        engine: own.engine,
        origin: this.key,
        originSite: this.opts.site,
        epoch: 0,
        log: log.key,
        createdAt: Date.now()
      }
      this.state.datasets.push(info)
    }
    const side = new SqliteCapture({ path: own.path, logger: this.logger })
    const loop = new CaptureLoop({
      capture: side,
      log,
      header: { dataset: own.id, name: own.name, engine: own.engine, epoch: 0, site: this.opts.site, createdAt: info.createdAt, parent: null },
      logger: this.logger,
      pollMs: this.opts.pollMs ?? 50,
      reopenLog: async () => {
        const o = this.origins.get(own.id)!
        await o.log.close().catch(() => {})
        o.log = await DatasetLog.writable(this.store, this.paths.store, own.id, 0)
        return o.log
      }
    })
    const origin: Origin = { info, own, log, side, loop, error: null }
    this.origins.set(own.id, origin)
    loop.on('unit', () => this.markDirty())
    loop.on('capture-error', () => this.markDirty())
    log.core.download({ start: 0, end: -1 })
    await this.startCapture(origin, 500)
  }

  /** Starts capture; a retryable failure (a locked database, a full disk) is retried in the background. */
  private async startCapture(o: Origin, backoff: number): Promise<void> {
    if (this.closing) return
    try {
      await o.loop.start()
      o.error = null
      this.logger.info('capturing', { dataset: o.info.name, path: o.own.path })
    } catch (err) {
      const e = MeshError.wrap(err, MeshError.IO_ERROR)
      o.error = e
      this.markDirty()
      if (!e.retryable) {
        this.logger.error('cannot capture', { dataset: o.info.name, code: e.code, error: e.message, hint: e.hint })
        return
      }
      this.logger.warn('cannot capture yet, retrying', { dataset: o.info.name, code: e.code, error: e.message, retryInMs: backoff })
      const t = setTimeout(() => void this.startCapture(o, Math.min(backoff * 2, 30_000)), backoff)
      this.timers.push(t)
    }
  }

  replicaPath(info: DatasetInfo): string {
    const safe = (s: string) => s.replace(/[^A-Za-z0-9._-]+/g, '_')
    return path.join(this.paths.replicas, `${safe(info.originSite)}-${safe(info.name)}-${info.id.slice(0, 8)}.db`)
  }

  private async openReplica(info: DatasetInfo): Promise<void> {
    if (this.replicas.has(info.id) || this.closing) return
    const log = await DatasetLog.byKey(this.store, this.paths.store, info.log)
    log.core.download({ start: 0, end: -1 })
    const file = this.replicaPath(info)
    const side = new SqliteApply({ path: file, dataset: info.id, logger: this.logger })
    const replica: Replica = { info, log, side, loop: null as unknown as ApplyLoop, damaged: 0, appliedWriteAt: 0 }
    replica.loop = new ApplyLoop({
      log,
      apply: side,
      logger: this.logger,
      repair: (block) => this.repairBlock(replica, block)
    })
    replica.loop.on('applied', (e: { length: number; time: number | null }) => {
      if (e.time) replica.appliedWriteAt = Math.max(replica.appliedWriteAt, e.time)
      this.markDirty()
      this.emit('applied', { dataset: info.id, length: e.length })
    })
    replica.loop.on('apply-error', () => this.markDirty())
    log.core.on('append', () => this.markDirty())
    log.core.on('download', () => this.markDirty())
    this.replicas.set(info.id, replica)
    await replica.loop.start()
    this.logger.info('holding a replica', { dataset: info.name, origin: info.originSite, path: file })
  }

  /**
   * A block of another site's log that fails its checksum in this site's copy: drop the local copy and fetch
   * it again. hypercore verifies every block it receives against the origin's signed merkle tree, so what
   * comes back is the origin's block or nothing. Returns false when the block is damaged at the origin too.
   */
  private async repairBlock(r: Replica, block: number): Promise<boolean> {
    r.damaged++
    this.markDirty()
    this.logger.error('damaged block in this site’s copy of a log; rejected, fetching it again from peers', {
      dataset: r.info.name,
      block
    })
    try {
      await r.log.core.clear(block, block + 1)
    } catch (err) {
      this.logger.error('cannot drop the damaged block', { dataset: r.info.name, block, error: (err as Error).message })
      return false
    }
    // Wait for a peer that holds it for as long as the node runs; apply cannot pass this block anyway.
    while (!this.closing) {
      try {
        const again = await r.log.core.get(block, { wait: true, timeout: 5000 })
        if (again !== null) {
          this.logger.info('damaged block fetched again and verified', { dataset: r.info.name, block })
          return true
        }
      } catch (err) {
        if (!/timeout|timed out/i.test((err as Error).message)) {
          this.logger.error('cannot fetch the damaged block again', { dataset: r.info.name, block, error: (err as Error).message })
          return false
        }
      }
    }
    return false
  }

  // --- joining -----------------------------------------------------------------------------------------------

  /** A connection made with a one-time invite key: it may redeem the invite, and nothing else. */
  private onGuest(conn: SwarmConnection, invite: Invite): void {
    const mux = Protomux.from(conn)
    const ch = mux.createChannel({ protocol: JOIN_PROTOCOL, handshake: joinHelloEncoding })
    if (ch === null) return void conn.destroy()
    // Message slots in JoinMessage order: redeem 0, welcome 1, refuse 2.
    ch.addMessage({ encoding: redeemMessage, onmessage: (m: Redeem) => this.onRedeem(conn, invite, m, welcomeMsg, refuseMsg) })
    const welcomeMsg = ch.addMessage({ encoding: welcomeMessage, onmessage: () => {} })
    const refuseMsg = ch.addMessage({ encoding: refuseMessage, onmessage: () => {} })
    ch.open({ version: CONTROL_VERSION })
    const timer = setTimeout(() => conn.destroy(), 30_000)
    conn.once('close', () => clearTimeout(timer))
  }

  private onRedeem(
    conn: SwarmConnection,
    invite: Invite,
    m: Redeem,
    welcome: Message<{ version: number; meshId: Uint8Array; members: MemberInfo[]; datasets: DatasetInfo[] }>,
    refuse: Message<{ version: number; code: string; reason: string }>
  ): void {
    const now = Date.now()
    if (invite.expiresAt * 1000 <= now || !this.liveInvite(invite.key)) {
      refuse.send({ version: CONTROL_VERSION, code: 'JOIN_CODE_EXPIRED', reason: 'the join code expired or was already used' })
      return
    }
    if (this.state.members.some((x) => x.site === m.site && !Buffer.from(x.key).equals(m.key))) {
      refuse.send({ version: CONTROL_VERSION, code: 'USAGE', reason: `a site named ${m.site} is already a member; choose another --site name` })
      return
    }
    // One-time: the invite is gone before the welcome leaves, so a second use of the code is refused.
    this.invites = readInvites(this.paths).filter((i) => !Buffer.from(i.key).equals(invite.key))
    writeInvites(this.paths, this.invites)
    if (!this.isMember(m.key)) {
      this.state.members.push({ key: Buffer.from(m.key), site: m.site, addedAt: now })
      this.saveState()
      this.logger.info('new member joined with a join code', { site: m.site, key: short(m.key) })
      this.broadcast((p) => p.members.send(this.state.members))
      this.swarm.peers.get(hex(m.key))?.ban(false)
      this.swarm.joinPeer(m.key)
    }
    welcome.send({ version: CONTROL_VERSION, meshId: this.state.meshId, members: this.state.members, datasets: this.state.datasets })
    setTimeout(() => conn.end(), 1000).unref()
  }

  // --- the local socket ----------------------------------------------------------------------------------------

  private async listenLocal(): Promise<void> {
    const sock = this.paths.socket
    // A socket file left by a node that was killed: the store lock above proved no node runs here now.
    fs.rmSync(sock, { force: true })
    const server = net.createServer((c) => {
      let buf = ''
      c.on('error', () => {})
      c.on('data', (d) => {
        buf += d.toString()
        const i = buf.indexOf('\n')
        if (i < 0) return
        const line = buf.slice(0, i)
        buf = ''
        this.handleLocal(line)
          .then((res) => c.end(JSON.stringify(res) + '\n'))
          .catch((err) => c.end(JSON.stringify({ error: { code: (err as MeshError).code ?? 'IO_ERROR', message: (err as Error).message } }) + '\n'))
      })
    })
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(sock, () => {
        server.off('error', reject)
        resolve()
      })
    }).catch((err) => {
      throw MeshError.IO_ERROR(`cannot open the local socket ${sock}: ${(err as Error).message}`, {
        hint: 'The data directory path may be too long for a socket (over about 100 characters); use a shorter --dir.',
        retryable: false,
        cause: err
      })
    })
    fs.chmodSync(sock, 0o600)
    this.server = server
  }

  private async handleLocal(line: string): Promise<unknown> {
    const req = JSON.parse(line) as { cmd: string }
    if (req.cmd === 'status') return { status: await this.status() }
    if (req.cmd === 'ping') return { ok: true, site: this.opts.site }
    throw MeshError.USAGE(`unknown local request ${req.cmd}`)
  }

  // --- state ---------------------------------------------------------------------------------------------------

  private saveState(): void {
    try {
      writeMeshState(this.paths, this.state)
    } catch (err) {
      this.logger.error('cannot save the mesh state', { error: (err as Error).message })
    }
  }

  async close(): Promise<void> {
    if (this.closing) return
    this.closing = true
    for (const t of this.timers) clearTimeout(t)
    if (this.reportTimer) clearTimeout(this.reportTimer)
    if (this.saveTimer) clearTimeout(this.saveTimer)
    for (const o of this.origins.values()) {
      await o.loop.stop().catch(() => {})
      await o.side.close().catch(() => {})
    }
    for (const r of this.replicas.values()) {
      await r.loop.stop().catch(() => {})
      await r.side.close().catch(() => {})
    }
    try {
      writeReports(this.paths, [...this.reports.values()])
    } catch {
      // Not worth failing a shutdown over: status reads what the last save wrote.
    }
    await this.swarm?.destroy().catch(() => {})
    await this.store?.close().catch(() => {})
    if (this.server) {
      await new Promise<void>((resolve) => this.server!.close(() => resolve()))
      fs.rmSync(this.paths.socket, { force: true })
    }
    this.logger.info('node stopped', { site: this.opts.site })
  }
}

function nodesKnown(dht: DHT): boolean {
  const d = dht as unknown as { table?: { size?: number; toArray?(): unknown[] } }
  const n = d.table?.toArray?.().length ?? d.table?.size ?? 1
  return n > 0
}

/** Whether a node runs on `dir`: asks its local socket. */
export async function askNode(dir: string, cmd: string, timeoutMs = 5000): Promise<unknown | null> {
  const sock = sitePaths(dir).socket
  if (!fs.existsSync(sock)) return null
  return new Promise((resolve, reject) => {
    const c = net.connect(sock)
    let buf = ''
    const timer = setTimeout(() => {
      c.destroy()
      reject(MeshError.IO_ERROR(`the node on ${dir} did not answer within ${timeoutMs} ms`, { hint: 'It may be overloaded or hung; check its log, or restart it.' }))
    }, timeoutMs)
    c.on('connect', () => c.write(JSON.stringify({ cmd }) + '\n'))
    c.on('data', (d) => (buf += d.toString()))
    c.on('end', () => {
      clearTimeout(timer)
      try {
        resolve(JSON.parse(buf))
      } catch (err) {
        reject(MeshError.IO_ERROR(`the node on ${dir} gave an unreadable answer`, { cause: err }))
      }
    })
    c.on('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer)
      // A socket file left by a node that was killed: nobody is listening.
      if (err.code === 'ECONNREFUSED' || err.code === 'ENOENT') resolve(null)
      else reject(MeshError.IO_ERROR(`cannot reach the node on ${dir}: ${err.message}`, { cause: err }))
    })
  })
}


/** `mesh status` when no node runs on `dir`: the last reports it saved, and the verdict that it is not running. */
export function statusFromDisk(dir: string, site: string, thresholds: StatusThresholds, now = Date.now()): SiteStatus {
  const paths = sitePaths(dir)
  const keyPair = readSiteKey(paths)
  const state = readMeshState(paths)
  const reports = readReports(paths).filter(verifyReport)
  return buildStatus({
    self: keyPair.publicKey,
    site,
    state,
    reports: reports.map((r) => r.report),
    connected: new Set(),
    running: false,
    refused: [],
    now,
    thresholds
  })
}
