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
  sameBytes,
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
import { SqliteApply, diffDatabases, diffPgDatabases, mendPgDatabase, replaceContents, silentLogger, type ApplySide, type CaptureSide, type DamageAlert, type DamageGuard, type Logger } from '../adapters/index.ts'
import { checkRestoreTarget, finishRestore, openRestoreTarget, seedRestore, dropPgCapture, dropPgDatabase, ensurePgDatabase, pgScratchUrl, keepCopy, openApply, openCapture, pgDecodingProblems, pgReplicaUrl, resetPgDatabase, roleOf, shown, type CaptureMode } from './engines.ts'
import { ApplyLoop } from './apply-loop.ts'
import { CaptureLoop } from './capture-loop.ts'
import { locate, resolveChain, supersedes, type ChainSegment } from './chain.ts'
import { writeDivergence } from './divergence.ts'
import { History, findDataset, offsets, restorePoint, seqOf, type RestoreResult } from './history.ts'
import { DEFAULT_SNAPSHOTS, buildSnapshot, damagedSnapshots, listSnapshots, prune, snapshotPosition, type SnapshotPolicy } from './snapshots.ts'
import { DatasetLog, logName } from './log.ts'
import {
  readInvites,
  readMeshState,
  readReports,
  readSiteKey,
  sitePaths,
  withoutReviewed,
  writeInvites,
  writeMeshState,
  writeReports,
  type Invite,
  type LocalDataset,
  type MeshState,
  type SitePaths,
  type VerifyResult,
  type WrittenLog
} from './state.ts'
import { buildStatus, type SiteStatus, type StatusThresholds, DEFAULT_THRESHOLDS } from './status.ts'

const require = createRequire(import.meta.url)
const { MerkleTree } = require('hypercore/lib/merkle-tree') as {
  MerkleTree: { byteOffset(state: unknown, index: number): Promise<number> }
}

export interface OwnDataset {
  id: string
  name: string
  engine: 'sqlite' | 'postgres'
  /** The SQLite file, or the PostgreSQL connection URL. */
  path: string
  /** PostgreSQL: logical decoding (default), or triggers where logical decoding is not allowed. */
  capture?: CaptureMode
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
  /** Generational snapshots of SQLite datasets, built from their logs (default: daily, kept 14 days, 8 weeks, 12 months). */
  snapshots?: SnapshotPolicy
  /** An origin appends a checkpoint (its digest) at most this often, when idle (default 10 min). */
  checkpointMs?: number
  /** The mass-damage guard's thresholds (default: half of a table of 100 rows or more). */
  guard?: DamageGuard
  /**
   * A PostgreSQL server URL where this site keeps its replicas of PostgreSQL datasets, one database each,
   * created by the node. Without it such a dataset's log is still held here, but not applied.
   */
  replicaPostgres?: string
}

export function meshTopic(meshId: Uint8Array): Buffer {
  return crypto.hash([Buffer.from('branchmesh topic'), meshId])
}

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex')
/** A name as a file name: anything but letters, digits, '.', '_' and '-' becomes '_'. */
const fileSafe = (s: string) => s.replace(/[^A-Za-z0-9._-]+/g, '_')
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
  path: string
  log: DatasetLog
  side: CaptureSide
  loop: CaptureLoop
  error: MeshError | null
}

interface Replica {
  /** The newest epoch, whose log this replica follows. */
  info: DatasetInfo
  path: string
  chain: ChainSegment[]
  /** The newest epoch's log. */
  log: DatasetLog
  side: ApplySide
  loop: ApplyLoop
  damaged: number
  appliedWriteAt: number
}

/** What `mesh promote` did. */
export interface PromoteResult {
  dataset: string
  id: string
  epoch: number
  /** The database the application should use from now on. */
  path: string
  previousOrigin: string
  /** The length of the previous epoch's log the new epoch continues from. */
  branch: number
  forced: boolean
}

/** A restore the node runs for `mesh restore`, as the command sees it. */
export interface RestoreJob {
  state: 'running' | 'done' | 'failed'
  done: number
  total: number
  result: RestoreResult | null
  error: { code: string; message: string; hint: string | null } | null
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
  /** Every log of every dataset chain this node has open, by key. */
  private readonly logs = new Map<string, DatasetLog>()
  private readonly queues = new Map<string, Promise<unknown>>()
  /** Why a dataset could not be followed, for status. */
  private readonly settleErrors = new Map<string, MeshError>()
  /** When a newer report of each site last arrived, directly or relayed (this site's clock). */
  private readonly heardAt = new Map<string, number>()
  /** History reads over the logs this node holds (mesh log, mesh restore). */
  readonly history = new History(
    () => this.state.datasets,
    (k) => this.openLog(k)
  )
  private readonly jobs = new Map<string, RestoreJob>()
  /** Snapshots a restore is copying now: retention leaves them. */
  private readonly snapshotsInUse = new Set<string>()
  private snapshotting = false
  private pgSnapshotsUnavailable = false
  private readonly snapshotFailedAt = new Map<string, number>()

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

    // The datasets this site created: their database is the configured file, and epoch 0 is theirs.
    for (const own of this.opts.datasets) {
      let local = this.state.local.find((l) => l.dataset === own.id)
      if (!local) {
        local = { dataset: own.id, path: own.path, written: [], divergences: [] }
        this.state.local.push(local)
      }
      local.path = own.path
      if (!local.written.some((w) => w.epoch === 0)) {
        const name = logName(own.id, 0)
        local.written.unshift({ epoch: 0, key: (await this.createLog(name)).key, name, parent: null })
      }
      if (!this.state.datasets.some((d) => d.id === own.id)) {
        this.state.datasets.push({
          id: own.id,
          name: own.name,
          engine: own.engine,
          origin: this.key,
          originSite: this.opts.site,
          epoch: 0,
          log: local.written[0].key,
          createdAt: Date.now()
        })
      }
    }
    this.saveState()
    // Capture starts before the network: what was written while the node was off is in the log first.
    for (const info of this.state.datasets) {
      if (this.key.equals(Buffer.from(info.origin))) await this.enqueue(info.id, () => this.settle(info.id))
    }
    for (const info of this.state.datasets) {
      if (!this.key.equals(Buffer.from(info.origin))) this.settleLater(info.id)
    }

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
    const snaps = this.opts.snapshots ?? DEFAULT_SNAPSHOTS
    this.timers.push(setInterval(() => void this.snapshotDatasets(snaps), Math.min(60_000, Math.max(200, (snaps.everySeconds * 1000) / 4))))
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

  /**
   * Datasets as a peer knows them. A dataset not known here is followed; a newer epoch of a known one (see
   * chain.ts, supersedes) replaces it everywhere: this site follows it, or is fenced if it was the origin.
   */
  private onDatasets(from: Peer, list: DatasetInfo[]): void {
    let changed = false
    for (const d of list) {
      if (!this.isMember(d.origin)) {
        this.logger.warn('ignored a dataset whose origin is not a member', { dataset: d.name, from: from.site })
        continue
      }
      const have = this.state.datasets.find((x) => x.id === d.id)
      if (have && !supersedes(d, have)) continue
      const info: DatasetInfo = { ...d, origin: Buffer.from(d.origin), log: Buffer.from(d.log) }
      if (have) {
        this.state.datasets = this.state.datasets.map((x) => (x.id === d.id ? info : x))
        this.logger.info(have.epoch === d.epoch ? 'two promotions of the same epoch: following the one with the lower log key' : 'new epoch', {
          dataset: d.name,
          epoch: d.epoch,
          origin: d.originSite,
          from: from.site
        })
      } else {
        this.state.datasets.push(info)
        this.logger.info('new dataset', { dataset: d.name, origin: d.originSite, from: from.site })
      }
      changed = true
      this.settleLater(d.id)
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
    // A newer report than any before, directly or relayed: that site was alive a moment ago.
    this.heardAt.set(k, Date.now())
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
    for (const [id, e] of this.settleErrors) {
      const info = this.state.datasets.find((d) => d.id === id)
      if (!info || this.replicas.has(id) || this.origins.has(id)) continue
      // The log may still be held here (a dataset with no warm copy at this site): say how much of it.
      const core = this.logs.get(hex(info.log))?.core
      out.push({ dataset: id, log: info.log, epoch: info.epoch, length: core?.length ?? 0, byteLength: core?.byteLength ?? 0, downloaded: core?.contiguousLength ?? 0, applied: 0, appliedBytes: 0, lastWriteAt: 0, appliedWriteAt: 0, error: e.code, errorMessage: e.message, damaged: 0 })
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
      let err: { code: string; message: string } | null = r.loop.stats.lastError
      if (!err && r.side.writtenByOthers?.()) {
        err = {
          code: 'REPLICA_WRITTEN',
          message: `another program wrote to this site's copy (${r.path}); those writes are not protected and the next changes from ${r.info.originSite} may overwrite them: point the application at the origin`
        }
      }
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
      state: withoutReviewed(this.state),
      reports: [...this.reports.values()].map((r) => r.report),
      connected: new Set([...this.peers.values()].filter((p) => p.ready).map((p) => hex(p.key))),
      running: true,
      refused: this.refused,
      now,
      thresholds: this.opts.thresholds ?? DEFAULT_THRESHOLDS,
      snapshots: snapshotSummary(this.paths.dir, this.state)
    })
  }

  // --- datasets ----------------------------------------------------------------------------------------------
  //
  // Every dataset has one local database here: the configured file for a dataset this site created, a file
  // under replicas/ for the others. Its role follows the newest epoch: the origin captures it into the log
  // it writes; every other site applies the chain of logs into it. settle() brings the role in line with the
  // newest epoch; it runs in a per-dataset queue, so a promotion, a fence and a new epoch never interleave.

  /** Runs `fn` after everything queued before it for the same dataset. */
  private enqueue<T>(id: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.queues.get(id) ?? Promise.resolve()
    const next = prev.then(() => {
      if (this.closing) throw MeshError.CLOSED('the node is stopping')
      return fn()
    })
    this.queues.set(id, next.catch(() => {}))
    return next
  }

  /** settle() in the background; a failure is logged (and shown in status), never thrown. */
  private settleLater(id: string): void {
    this.enqueue(id, () => this.settle(id)).catch((err) => {
      const e = MeshError.wrap(err, MeshError.IO_ERROR)
      if (e.code === 'CLOSED' || this.closing) return
      this.settleErrors.set(id, e)
      this.markDirty()
      this.logger.error('cannot follow the dataset', { dataset: this.datasetName(id), code: e.code, error: e.message, hint: e.hint, retrying: e.retryable })
      // A locked database or a full disk passes: try again. Every step of settle() can be repeated.
      if (e.retryable) this.timers.push(setTimeout(() => this.settleLater(id), 5000))
    })
  }

  private datasetName(id: string): string {
    return this.state.datasets.find((d) => d.id === id)?.name ?? id
  }

  private localOf(info: DatasetInfo): LocalDataset {
    let l = this.state.local.find((x) => x.dataset === info.id)
    if (!l) {
      l = { dataset: info.id, path: this.replicaPath(info), written: [], divergences: [] }
      this.state.local.push(l)
      this.saveState()
    }
    return l
  }

  /** Opens a log of the dataset chain once and keeps downloading all of it, so this site can serve it. */
  private async openLog(key: Uint8Array): Promise<DatasetLog> {
    const k = hex(key)
    const have = this.logs.get(k)
    if (have) return have
    const log = await DatasetLog.byKey(this.store, this.paths.store, key)
    const again = this.logs.get(k)
    if (again) {
      await log.close().catch(() => {})
      return again
    }
    return this.keepOpen(log)
  }

  /** Keeps a log open for the node's life: downloading all of it (so this site can serve it), status updated. */
  private keepOpen(log: DatasetLog): DatasetLog {
    this.logs.set(hex(log.key), log)
    log.core.download({ start: 0, end: -1 })
    log.core.on('append', () => this.markDirty())
    log.core.on('download', () => this.markDirty())
    return log
  }

  /**
   * Takes a snapshot of each SQLite dataset whose log this site holds (its own included) when the newest is
   * `everySeconds` old and the log has grown since, and prunes them by the generational policy. A snapshot is
   * built from the log (see snapshots.ts); capture and apply go on meanwhile.
   */
  private async snapshotDatasets(p: SnapshotPolicy): Promise<void> {
    if (this.snapshotting || this.closing) return
    this.snapshotting = true
    try {
      for (const head of this.state.datasets) {
        if (this.closing) continue
        // PostgreSQL snapshots are built on this site's replicaPostgres server, with pg_dump and pg_restore.
        if (head.engine === 'postgres' && (!this.opts.replicaPostgres || this.pgSnapshotsUnavailable)) continue
        const newest = listSnapshots(this.paths.dir, head.id).pop()
        const now = Date.now()
        if (newest && now - newest.at < p.everySeconds * 1000) continue
        // After a failure, not again for a while (every build replays the log since the last snapshot).
        if (now - (this.snapshotFailedAt.get(head.id) ?? 0) < Math.min(p.everySeconds, 3600) * 1000) continue
        try {
          const chain = await resolveChain(head, (k) => this.openLog(k))
          const { length } = offsets(chain)
          if ((seqOf(chain, newest ? snapshotPosition(newest.file) : null) ?? -1) >= length) continue
          const point = await restorePoint(chain, { seq: length })
          const s = await buildSnapshot(this.paths.dir, head, chain, point.seq, {
            now,
            logger: this.logger,
            inUse: this.snapshotsInUse,
            pgServer: this.opts.replicaPostgres,
            onDamaged: (file) => this.snapshotDamaged(head, file)
          })
          const gone = prune(this.paths.dir, head.id, now, p, this.snapshotsInUse)
          if (s) this.logger.info('snapshot taken', { dataset: head.name, seq: point.seq, file: s.file, pruned: gone.length })
        } catch (err) {
          const e = MeshError.wrap(err, MeshError.IO_ERROR)
          if (e.code === 'REPLICA_NOT_READY' || e.code === 'USAGE') this.logger.debug('no snapshot yet', { dataset: head.name, reason: e.message })
          else if (e.code === 'NOT_FOUND') {
            // Said once: restores of PostgreSQL datasets replay from the start here.
            this.pgSnapshotsUnavailable = true
            this.logger.warn('no snapshots of PostgreSQL datasets at this site: restores replay from the start', { dataset: head.name, reason: e.message, hint: "Install PostgreSQL's client programs (pg_dump, pg_restore)." })
          }
          else {
            this.snapshotFailedAt.set(head.id, Date.now())
            this.logger.warn('cannot take a snapshot; trying again later', { dataset: head.name, error: e.message })
          }
        }
      }
    } finally {
      this.snapshotting = false
    }
  }

  private snapshotDamaged(head: DatasetInfo, file: string): void {
    this.logger.warn('a snapshot changed on disk since it was written: it is set aside and the next older one is used', { dataset: head.name, file: `${file}.damaged` })
    this.markDirty()
  }

  /**
   * `mesh restore` while the node runs: the node holds the log store, so it replays into the new database, as
   * a job the command follows (`job`) for its progress. The live database and the replicas are not touched.
   */
  private async startRestore(dataset: string, target: { seq?: number; at?: number }, to: string): Promise<string> {
    const head = findDataset(this.state.datasets, dataset)
    await checkRestoreTarget(head.engine, to)
    const id = crypto.randomBytes(8).toString('hex')
    const job: RestoreJob = { state: 'running', done: 0, total: 0, result: null, error: null }
    this.jobs.set(id, job)
    this.history
      .restore(head.id, target, to, (e, w, d) => openRestoreTarget(e, w, d, this.logger), finishRestore, (done, total) => Object.assign(job, { done, total }), (h, chain, seq) =>
        seedRestore(this.paths.dir, h.engine, to, h.id, chain, seq, this.snapshotsInUse, (file) => this.snapshotDamaged(h, file))
      )
      .then((r) => {
        Object.assign(job, { state: 'done', result: r })
        this.logger.info('restored', { dataset: r.dataset, seq: r.seq, to: shown(r.engine, r.to), ms: r.ms })
      })
      .catch((err) => {
        const e = MeshError.wrap(err, MeshError.IO_ERROR)
        Object.assign(job, { state: 'failed', error: { code: e.code, message: e.message, hint: e.hint ?? null } })
      })
    return id
  }

  /** A new log this site will write, kept open like every other. */
  private async createLog(name: string): Promise<DatasetLog> {
    return this.keepOpen(await DatasetLog.named(this.store, this.paths.store, name))
  }

  private async openWritten(w: WrittenLog): Promise<DatasetLog> {
    const have = this.logs.get(hex(w.key))
    if (have) return have
    const log = await DatasetLog.named(this.store, this.paths.store, w.name)
    if (!log.core.key.equals(Buffer.from(w.key))) {
      await log.close().catch(() => {})
      throw MeshError.BAD_LOG(`the log store no longer holds the log this site wrote for epoch ${w.epoch}`, {
        hint: 'The store was replaced or damaged. Restore the data directory from a backup.'
      })
    }
    return this.keepOpen(log)
  }

  /** Brings this site's role for a dataset in line with its newest epoch. */
  private async settle(id: string): Promise<void> {
    const head = this.state.datasets.find((d) => d.id === id)
    if (!head) return
    if (head.engine === 'postgres' && !this.opts.replicaPostgres && !this.state.local.some((l) => l.dataset === id)) {
      // No server for a warm copy here: the logs are still held (and served), which is history kept off-site.
      await resolveChain(head, (k) => this.openLog(k))
      throw MeshError.NO_REPLICA_SERVER(`${head.name} is a PostgreSQL dataset and this site has no PostgreSQL server for replicas: its log is kept here, but no warm copy is built`)
    }
    const local = this.localOf(head)
    const origin = this.origins.get(id)
    const replica = this.replicas.get(id)
    if (head.origin.length && this.key.equals(Buffer.from(head.origin))) {
      if (origin && sameBytes(origin.log.key, head.log)) return
      const w = local.written.find((x) => sameBytes(x.key, head.log))
      if (!w) {
        throw MeshError.BAD_LOG(`the mesh names this site the origin of ${head.name} (epoch ${head.epoch}), but it holds no such log`, {
          hint: 'Restore this data directory from a backup, or promote another site.'
        })
      }
      if (replica) await this.closeReplica(replica)
      await this.openOrigin(head, local, w)
      this.settleErrors.delete(id)
      return
    }
    if (origin) {
      await this.fence(origin, head, local)
      this.settleErrors.delete(id)
      return
    }
    if (replica && sameBytes(replica.info.log, head.log)) return
    if (replica) await this.closeReplica(replica)
    const w = local.written[local.written.length - 1]
    if (w && (await roleOf(head.engine, local.path, head.id)) === 'origin') {
      // This site was the origin and stopped before its fence was done: capture what is left, then fence.
      const own: DatasetInfo = { ...head, origin: this.key, originSite: this.opts.site, epoch: w.epoch, log: w.key }
      const o = await this.openOrigin(own, local, w)
      await this.fence(o, head, local)
    } else {
      await this.follow(head, local, false)
    }
    this.settleErrors.delete(id)
  }

  private async openOrigin(info: DatasetInfo, local: LocalDataset, w: WrittenLog): Promise<Origin> {
    const log = await this.openWritten(w)
    const side = openCapture(info.engine, local.path, info.id, this.logger, await this.captureMode(info, local), w.epoch)
    const loop = new CaptureLoop({
      capture: side,
      log,
      header: {
        dataset: info.id,
        name: info.name,
        engine: info.engine,
        epoch: w.epoch,
        site: this.opts.site,
        createdAt: w.epoch === 0 ? info.createdAt : Date.now(),
        parent: w.parent ? { key: w.parent.key, length: w.parent.length } : null
      },
      logger: this.logger,
      pollMs: this.opts.pollMs ?? 50,
      checkpointMs: this.opts.checkpointMs,
      reopenLog: async () => {
        const o = this.origins.get(info.id)!
        await o.log.close().catch(() => {})
        this.logs.delete(hex(w.key))
        o.log = await this.openWritten(w)
        return o.log
      }
    })
    const origin: Origin = { info, path: local.path, log, side, loop, error: null }
    this.origins.set(info.id, origin)
    loop.on('unit', () => this.markDirty())
    loop.on('capture-error', () => this.markDirty())
    await this.startCapture(origin, 500)
    return origin
  }

  /** Starts capture; a retryable failure (a locked database, a full disk) is retried in the background. */
  private async startCapture(o: Origin, backoff: number): Promise<void> {
    if (this.closing || this.origins.get(o.info.id) !== o) return
    try {
      await o.loop.start()
      o.error = null
      this.logger.info('capturing', { dataset: o.info.name, epoch: o.info.epoch, path: shown(o.info.engine, o.path) })
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

  /** Where a replica of a dataset is kept here; fixed when it is first opened (see LocalDataset.path). */
  replicaPath(info: DatasetInfo): string {
    if (info.engine === 'postgres') {
      if (!this.opts.replicaPostgres) {
        throw MeshError.NO_REPLICA_SERVER(`${info.name} is a PostgreSQL dataset and this site has no PostgreSQL server for replicas: its log is kept here, but no warm copy is built`)
      }
      return pgReplicaUrl(this.opts.replicaPostgres, info)
    }
    return path.join(this.paths.replicas, `${fileSafe(info.originSite)}-${fileSafe(info.name)}-${info.id.slice(0, 8)}.db`)
  }

  /**
   * Applies the dataset's chain of logs into the local database. A database that holds changes the chain
   * does not (it applied past a branch point, or it was the origin: `rebuild`) is first rebuilt, in place, to
   * the state where the newest epoch began.
   */
  private async follow(head: DatasetInfo, local: LocalDataset, rebuild: boolean, carried: string[] | null = null): Promise<void> {
    const chain = await resolveChain(head, (k) => this.openLog(k))
    const pg = head.engine === 'postgres'
    if (pg && this.opts.replicaPostgres && (await roleOf('postgres', local.path, head.id)) === 'none') {
      await ensurePgDatabase(this.opts.replicaPostgres, local.path, false)
    }
    // A slot left by a fence that stopped half-way would keep WAL on the disk for ever.
    if (pg) await dropPgCapture(local.path, head.id)
    const side = openApply(head.engine, local.path, head.id, this.logger, this.opts.guard)
    if (!rebuild) {
      await side.open()
      const pos = side.position()
      if (locate(chain, pos) === null) {
        await side.close()
        this.logger.warn('this copy applied changes that the newest epoch does not hold; rebuilding it', {
          dataset: head.name,
          epoch: head.epoch,
          applied: pos?.length
        })
        rebuild = true
      }
    }
    if (rebuild && pg) {
      // PostgreSQL: the database is emptied of what the mesh carries and built again from the whole chain.
      await resetPgDatabase(local.path, head.id, carried)
      await side.open()
    } else if (rebuild) {
      await this.rebuild(head, chain, local.path)
      await side.open()
    }
    const replica: Replica = { info: head, path: local.path, chain, log: chain[chain.length - 1].log, side, loop: null as unknown as ApplyLoop, damaged: 0, appliedWriteAt: 0 }
    replica.loop = new ApplyLoop({
      segments: chain,
      apply: side,
      logger: this.logger,
      repair: (block, log) => this.repairBlock(replica, log, block)
    })
    replica.loop.on('applied', (e: { length: number; time: number | null }) => {
      if (e.time) replica.appliedWriteAt = Math.max(replica.appliedWriteAt, e.time)
      const c = side.checkpoint()
      if (c && c.at !== local.checkpoint?.at) {
        const pos = side.position()
        const seq = seqOf(replica.chain, pos && { log: pos.log, length: c.length }) ?? c.length
        local.checkpoint = { ...c, seq }
        prove(local, seq, c.ok)
        this.saveState()
      }
      this.markDirty()
      this.emit('applied', { dataset: head.id, length: e.length })
    })
    replica.loop.on('apply-error', () => this.markDirty())
    replica.loop.on('damage', (e: { epoch: number; start: number; end: number; time: number | null; alerts: DamageAlert[] }) => this.recordDamage(replica, local, e))
    this.replicas.set(head.id, replica)
    await replica.loop.start()
    this.markDirty()
    this.logger.info('holding a replica', { dataset: head.name, origin: head.originSite, epoch: head.epoch, path: shown(head.engine, local.path) })
  }

  /**
   * `mesh verify` / `mesh repair`: this site's replica against the log. Apply pauses; the chain is replayed
   * from the nearest snapshot (built from the log, never from the replica) up to the replica's position into
   * a scratch copy, and the two are compared row by row. A repair then puts the log's contents in place, in one
   * transaction, and apply goes on.
   */
  async verify(dataset: string, repair: boolean): Promise<VerifyResult> {
    const head = findDataset(this.state.datasets, dataset)
    return this.enqueue(head.id, async () => {
      const r = this.replicas.get(head.id)
      if (!r) {
        throw MeshError.REPLICA_NOT_READY(`${this.opts.site} holds no replica of ${head.name}${this.origins.has(head.id) ? ' (it is the origin: verify at a site that holds a copy)' : ''}`)
      }
      await r.loop.stop()
      const pg = r.info.engine === 'postgres'
      const tmp = pg ? pgScratchUrl(r.path, r.info.id) : path.join(this.paths.replicas, `.verify-${r.info.id}.db`)
      const clean = async () => {
        if (pg) await dropPgDatabase(r.path, tmp)
        else for (const f of [tmp, `${tmp}.partial`, `${tmp}-wal`, `${tmp}-shm`, `${tmp}.partial-wal`, `${tmp}.partial-shm`]) fs.rmSync(f, { force: true })
      }
      try {
        const pos = r.side.position()
        if (pos === null) throw MeshError.REPLICA_NOT_READY(`${this.opts.site} has applied nothing of ${head.name} yet`)
        const seq = seqOf(r.chain, pos)
        if (seq === null) throw MeshError.REPLICA_NOT_READY(`${this.opts.site}'s copy of ${head.name} is not on the dataset's chain of logs yet`)
        await clean()
        if (pg) await ensurePgDatabase(r.path, tmp, true)
        // The log replayed into the scratch database, kept as a replica is (its bookkeeping names its tables),
        // from the nearest snapshot: built from the log itself, and checked against its SHA-256.
        const keep = async () => {
          if (!pg) fs.renameSync(`${tmp}.partial`, tmp)
        }
        const replay = await this.history.restore(r.info.id, { seq }, tmp, (e, w, d) => openRestoreTarget(e, w, d, this.logger), keep, undefined, (h, chain, at) =>
          seedRestore(this.paths.dir, h.engine, tmp, h.id, chain, at, this.snapshotsInUse, (file) => this.snapshotDamaged(h, file))
        )
        const tables = pg ? await diffPgDatabases(r.path, tmp) : diffDatabases(r.path, tmp)
        let repaired = false
        if (repair && tables.length > 0) {
          if (pg) await mendPgDatabase(r.path, tmp, tables)
          else {
            await r.side.close()
            replaceContents(r.path, tmp)
            await r.side.open()
          }
          repaired = true
        }
        const local = this.localOf(head)
        prove(local, seq, tables.length === 0)
        const parted = tables.length ? { lastEqual: local.proven!.equal, firstDiffers: local.proven!.differs! } : null
        if (repaired) prove(local, seq, true)
        const result: VerifyResult = { dataset: head.name, seq, from: replay.from, at: Date.now(), ok: tables.length === 0 || repaired, tables, repaired, parted }
        local.verified = result
        this.saveState()
        this.markDirty()
        if (tables.length) this.logger.warn(repaired ? 'replica repaired from the log' : 'replica differs from the log', { dataset: head.name, seq, tables: tables.map((t) => t.table) })
        return result
      } finally {
        await clean().catch((err) => this.logger.warn('cannot remove the scratch copy of a verify', { error: (err as Error).message }))
        await r.loop.start()
      }
    })
  }

  /**
   * `mesh checkpoint`: the origin appends its digest now (as soon as its database is idle), for every copy to
   * compare with its own. Returns the chain position the checkpoint describes.
   */
  async checkpoint(dataset: string): Promise<{ dataset: string; seq: number; rows: number }> {
    const head = findDataset(this.state.datasets, dataset)
    const o = this.origins.get(head.id)
    if (!o) {
      throw MeshError.USAGE(`${this.opts.site} is not the origin of ${head.name}: ${head.originSite} is`, { hint: `Run mesh checkpoint ${head.name} at ${head.originSite}.` })
    }
    const c = await o.loop.checkpointNow(120_000)
    const chain = await resolveChain(head, (k) => this.openLog(k))
    return { dataset: head.name, seq: seqOf(chain, { log: o.log.key, length: c.length }) ?? c.length, rows: c.rows }
  }

  /** The mass-damage guard: a unit that deleted or changed a large share of a table is kept and reported. */
  private recordDamage(r: Replica, local: LocalDataset, e: { epoch: number; start: number; end: number; time: number | null; alerts: DamageAlert[] }): void {
    const log = r.chain.find((s) => s.epoch === e.epoch)?.log.key
    const base = (log && seqOf(r.chain, { log, length: 0 })) ?? 0
    const list = (local.damage ??= [])
    for (const a of e.alerts) {
      const rec = { seq: base + e.start, end: base + e.end, epoch: e.epoch, time: e.time, at: Date.now(), ...a }
      list.push(rec)
      this.logger.warn('a change deleted or rewrote a large share of a table: if it was not meant, restore the state before it', {
        dataset: r.info.name,
        table: a.table,
        changed: a.changed,
        before: a.before,
        seq: rec.seq,
        restore: `mesh restore ${r.info.name} --seq ${rec.seq} --to ${fileSafe(r.info.name)}-before-${rec.seq}.db --dir ${this.paths.dir}`
      })
    }
    // The newest 100 are kept.
    if (list.length > 100) list.splice(0, list.length - 100)
    this.saveState()
    this.markDirty()
  }

  private async closeReplica(r: Replica): Promise<void> {
    if (this.replicas.get(r.info.id) === r) this.replicas.delete(r.info.id)
    await r.loop.stop().catch(() => {})
    await r.side.close().catch(() => {})
  }

  /**
   * Rebuilds `file` to the state where the newest epoch began: replays every earlier epoch's log, up to its
   * branch point, into a new file, then swaps the contents in one transaction.
   */
  private async rebuild(head: DatasetInfo, chain: ChainSegment[], file: string): Promise<void> {
    const sealed = chain.slice(0, -1)
    const last = sealed[sealed.length - 1]
    const tmp = `${file}.rebuild`
    const rmTmp = () => {
      for (const f of [tmp, `${tmp}-wal`, `${tmp}-shm`]) fs.rmSync(f, { force: true })
    }
    rmTmp()
    const started = Date.now()
    const side = new SqliteApply({ path: tmp, dataset: head.id, logger: this.logger })
    try {
      const loop = new ApplyLoop({ segments: sealed.length > 0 ? sealed : chain.slice(0, 1), apply: side, logger: this.logger })
      await side.open()
      const total = sealed.reduce((n, s) => n + (s.end ?? 0), 0)
      let lastLog = 0
      while (last !== undefined && !this.closing) {
        await loop.catchUp()
        const pos = side.position()
        if (pos !== null && sameBytes(pos.log, last.log.key) && pos.length === last.end) break
        if (Date.now() - lastLog > 5000) {
          lastLog = Date.now()
          this.logger.info('rebuilding: waiting for blocks of an earlier epoch from peers', { dataset: head.name, total })
        }
        await new Promise((r) => setTimeout(r, 200))
      }
      if (this.closing) throw MeshError.CLOSED('the node is stopping')
      await side.close()
      replaceContents(file, tmp)
      this.logger.info('rebuilt to the state where the newest epoch began', { dataset: head.name, epoch: head.epoch, blocks: total, ms: Date.now() - started })
    } finally {
      await side.close().catch(() => {})
      rmTmp()
    }
  }

  /**
   * A newer epoch exists and this site is still capturing: stop, keep what this site wrote past the branch
   * point (divergence folder), rebuild the database to where the newest epoch began, and follow it.
   */
  private async fence(o: Origin, head: DatasetInfo, local: LocalDataset): Promise<void> {
    const name = o.info.name
    this.logger.warn('a newer epoch of this dataset took over elsewhere: this site stops taking its writes', {
      dataset: name,
      epoch: o.info.epoch,
      newEpoch: head.epoch,
      newOrigin: head.originSite
    })
    // The newest epoch's history first (its logs' headers may have to come from peers); capture goes on
    // meanwhile, and whatever it takes lands in the divergence.
    const chain = await resolveChain(head, (k) => this.openLog(k))
    await o.loop.stop()
    let uncaptured = false
    try {
      // The last committed changes go into this site's log too, so the divergence has every one of them.
      while ((await o.loop.step()) > 0) {}
    } catch (err) {
      uncaptured = true
      this.logger.error('could not capture the last changes; they are kept in the copy of the database taken before rebuilding', {
        dataset: name,
        error: (err as Error).message
      })
    }
    this.origins.delete(o.info.id)
    this.markDirty()
    // Where the newest epoch's chain leaves this site's log; all of it past the header if it is not in it.
    const from = chain.find((x) => sameBytes(x.log.key, o.log.key))?.end ?? 1
    let to = o.log.length
    const tail = to > 1 ? await o.log.entry(to - 1, { wait: false }) : null
    if (tail?.kind === 'fence') to--
    else await o.log.appendUnit([{ kind: 'fence', epoch: head.epoch, log: head.log, length: from }])
    // The tables the fenced database's capture carried: a PostgreSQL rebuild replaces those and no other.
    const carried = o.side.carried?.() ?? null
    await o.side.close()
    if (to > from || uncaptured) {
      const stamp = new Date().toISOString().replace(/[-:]/g, '').replace(/\..*/, '')
      // A fence that was interrupted before the rebuild is done again into the same folder.
      const again = local.divergences.find((x) => x.epoch === o.info.epoch && x.fencedBy === head.epoch && fs.existsSync(x.dir))
      const dir = again?.dir ?? path.join(this.paths.dir, 'divergence', `${fileSafe(name)}-epoch${o.info.epoch}-${stamp}`)
      fs.mkdirSync(dir, { recursive: true, mode: 0o700 })
      const kept = await keepCopy(head.engine, local.path, dir, this.opts.site)
      const changes = await writeDivergence({
        log: o.log,
        from,
        to,
        dir,
        dataset: { id: head.id, name },
        site: this.opts.site,
        epoch: o.info.epoch,
        fencedBy: { epoch: head.epoch, site: head.originSite, log: head.log },
        engine: head.engine,
        kept
      })
      if (again) Object.assign(again, { changes, at: Date.now() })
      else local.divergences.push({ epoch: o.info.epoch, fencedBy: head.epoch, dir, changes, at: Date.now() })
      this.saveState()
      this.logger.warn('fenced: the changes this site made after the new epoch began are kept, not applied', {
        dataset: name,
        changes,
        divergence: dir,
        hint: `Review ${path.join(dir, 'changes.sql')} and re-enter what is needed at ${head.originSite}; then delete the folder.`
      })
    } else {
      this.logger.info('fenced: this site made no changes after the new epoch began', { dataset: name })
    }
    await this.follow(head, local, true, carried)
  }

  /**
   * `mesh promote`: this site's replica becomes the live database and the start of the dataset's next epoch.
   * Nothing is copied: the replica file is adopted as it is, and the new log starts where it stands.
   */
  async promote(dataset: string, force: boolean): Promise<PromoteResult> {
    const head = findDataset(this.state.datasets, dataset)
    return this.enqueue(head.id, () => this.promoteNow(head.id, force))
  }

  private async promoteNow(id: string, force: boolean): Promise<PromoteResult> {
    const head = this.state.datasets.find((d) => d.id === id)!
    if (this.origins.has(id) || this.key.equals(Buffer.from(head.origin))) {
      throw MeshError.ALREADY_ORIGIN(`${this.opts.site} is already the origin of ${head.name} (epoch ${head.epoch})`)
    }
    const r = this.replicas.get(id)
    if (!r) {
      throw MeshError.REPLICA_NOT_READY(`${this.opts.site} does not hold a copy of ${head.name} yet`, {
        hint: 'Wait until `mesh status` shows this site holding the dataset, then run the command again.'
      })
    }
    // Healthy: a new report of its own reached this site, directly or through another site, within three
    // heartbeats (a killed site's connection looks open for a while; its reports stop at once), and it
    // reports capturing without an error.
    const heard = this.heardAt.get(hex(head.origin)) ?? 0
    if (!force && Date.now() - heard < 3 * (this.opts.heartbeatMs ?? 5000)) {
      const reported = this.reports.get(hex(head.origin))?.report.holdings.find((h) => h.dataset === id && sameBytes(h.log, head.log))
      if (reported && reported.error === '') {
        throw MeshError.ORIGIN_HEALTHY(`${head.originSite}, the origin of ${head.name}, is reachable and capturing (its last report arrived ${Math.round((Date.now() - heard) / 1000)} s ago)`)
      }
    }
    // What this site holds of the log is applied in moments: give it that time before judging.
    const until = Date.now() + 10_000
    while (r.loop.stats.applied < r.log.core.contiguousLength && !r.loop.stats.stopped && Date.now() < until) {
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
    const applied = r.loop.stats.applied
    let best = { length: r.log.core.contiguousLength, site: this.opts.site }
    for (const p of this.peers.values()) {
      if (!p.ready) continue
      const h = this.reports.get(hex(p.key))?.report.holdings.find((x) => x.dataset === id && sameBytes(x.log, head.log))
      if (h && h.downloaded > best.length) best = { length: h.downloaded, site: p.site }
    }
    if (!force && applied < best.length) {
      throw MeshError.REPLICA_BEHIND(
        `${this.opts.site} applied ${applied} of the ${best.length} entries of ${head.name} that ${best.site === this.opts.site ? 'it holds' : `${best.site} holds`}`,
        { context: { applied, held: best.length, by: best.site } }
      )
    }
    if (!force && r.side.state() !== 'ready') {
      throw MeshError.REPLICA_NOT_READY(`${this.opts.site}'s copy of ${head.name} is still in its initial copy (${r.side.state()})`)
    }
    await r.loop.stop()
    const pos = r.side.position()
    if (pos === null) {
      await r.loop.start()
      throw MeshError.REPLICA_NOT_READY(`${this.opts.site} has applied nothing of ${head.name} yet`, {
        hint: 'Wait until `mesh status` shows this site holding the dataset, then run the command again.'
      })
    }
    await this.closeReplica(r)
    const epoch = head.epoch + 1
    const name = `${logName(id, epoch)}/${Date.now()}`
    const log = await this.createLog(name)
    const local = this.localOf(head)
    const w: WrittenLog = { epoch, key: log.key, name, parent: { key: pos.log, length: pos.length } }
    local.written.push(w)
    const info: DatasetInfo = { ...head, origin: this.key, originSite: this.opts.site, epoch, log: log.key }
    this.state.datasets = this.state.datasets.map((d) => (d.id === id ? info : d))
    this.saveState()
    await this.openOrigin(info, local, w)
    this.broadcast((p) => p.datasets.send(this.state.datasets))
    this.markDirty()
    const parentSite = r.info.originSite
    this.logger.warn('promoted: this site is now the origin', { dataset: head.name, epoch, from: parentSite, branch: pos.length, path: shown(head.engine, local.path) })
    return { dataset: head.name, id, epoch, path: shown(head.engine, local.path), previousOrigin: parentSite, branch: pos.length, forced: force }
  }

  /**
   * How a PostgreSQL database this site is the origin of is captured: as its configuration says for the
   * site's own datasets; for a promoted replica, logical decoding where its server allows it, and triggers
   * where it does not (a failover is no time to refuse).
   */
  private async captureMode(info: DatasetInfo, local: LocalDataset): Promise<CaptureMode> {
    if (info.engine !== 'postgres') return 'logical'
    const own = this.opts.datasets.find((d) => d.id === info.id)
    if (own) return own.capture ?? 'logical'
    const problems = await pgDecodingProblems(local.path, info.id)
    if (problems.length === 0) return 'logical'
    this.logger.warn('this PostgreSQL server does not allow logical decoding: capturing with triggers', { dataset: info.name, problems })
    return 'triggers'
  }

  /**
   * A block of another site's log that fails its checksum in this site's copy: drop the local copy and fetch
   * it again. hypercore verifies every block it receives against the origin's signed merkle tree, so what
   * comes back is the origin's block or nothing. Returns false when the block is damaged at the origin too.
   */
  private async repairBlock(r: Replica, log: DatasetLog, block: number): Promise<boolean> {
    r.damaged++
    this.markDirty()
    this.logger.error('damaged block in this site’s copy of a log; rejected, fetching it again from peers', {
      dataset: r.info.name,
      block
    })
    try {
      await log.core.clear(block, block + 1)
    } catch (err) {
      this.logger.error('cannot drop the damaged block', { dataset: r.info.name, block, error: (err as Error).message })
      return false
    }
    // Wait for a peer that holds it for as long as the node runs; apply cannot pass this block anyway.
    while (!this.closing) {
      try {
        const again = await log.core.get(block, { wait: true, timeout: 5000 })
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
          .catch((err) => {
            const e = MeshError.wrap(err, MeshError.IO_ERROR)
            c.end(JSON.stringify({ error: { code: e.code, message: e.message, hint: e.hint ?? null, context: e.context } }) + '\n')
          })
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
    const req = JSON.parse(line) as {
      cmd: string
      dataset?: string
      force?: boolean
      from?: number
      limit?: number
      full?: boolean
      seq?: number
      at?: number
      to?: string
      job?: string
    }
    if (req.cmd === 'status') return { status: await this.status() }
    if (req.cmd === 'log') return { log: await this.history.log(String(req.dataset ?? ''), { from: req.from, limit: req.limit, full: req.full }) }
    if (req.cmd === 'restore') return { job: await this.startRestore(String(req.dataset ?? ''), { seq: req.seq, at: req.at }, String(req.to ?? '')) }
    if (req.cmd === 'job') return { job: this.jobs.get(String(req.job)) ?? null }
    if (req.cmd === 'checkpoint') return { checkpoint: await this.checkpoint(String(req.dataset ?? '')) }
    if (req.cmd === 'verify' || req.cmd === 'repair') return { verify: await this.verify(String(req.dataset ?? ''), req.cmd === 'repair') }
    if (req.cmd === 'promote') return { promoted: await this.promote(String(req.dataset ?? ''), req.force === true) }
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
    // Let a promotion or a fence under way finish its step; each is safe to resume at the next start.
    await Promise.race([Promise.all(this.queues.values()), new Promise((r) => setTimeout(r, 10_000))])
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
export async function askNode(dir: string, cmd: string | Record<string, unknown>, timeoutMs = 5000): Promise<unknown | null> {
  const sock = sitePaths(dir).socket
  if (!fs.existsSync(sock)) return null
  return new Promise((resolve, reject) => {
    const c = net.connect(sock)
    let buf = ''
    const timer = setTimeout(() => {
      c.destroy()
      reject(MeshError.IO_ERROR(`the node on ${dir} did not answer within ${timeoutMs} ms`, { hint: 'It may be overloaded or hung; check its log, or restart it.' }))
    }, timeoutMs)
    c.on('connect', () => c.write(JSON.stringify(typeof cmd === 'string' ? { cmd } : cmd) + '\n'))
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
    state: withoutReviewed(state),
    reports: reports.map((r) => r.report),
    connected: new Set(),
    running: false,
    refused: [],
    now,
    thresholds,
    snapshots: snapshotSummary(dir, state)
  })
}

/** How many snapshots this site keeps of each dataset, and when the newest was taken. */
function snapshotSummary(dir: string, state: MeshState): Record<string, { count: number; newestAt: number | null; damaged: string[] }> {
  const out: Record<string, { count: number; newestAt: number | null; damaged: string[] }> = {}
  for (const d of state.datasets) {
    const list = listSnapshots(dir, d.id)
    out[d.id] = { count: list.length, newestAt: list.length ? list[list.length - 1].at : null, damaged: damagedSnapshots(dir, d.id) }
  }
  return out
}

/** Records a proof about a replica at chain position `seq`: equal to the log there, or not (see LocalDataset.proven). */
function prove(local: LocalDataset, seq: number, equal: boolean): void {
  const p = (local.proven ??= { equal: null, differs: null })
  if (equal) {
    p.equal = seq
    p.differs = null
  } else if (p.differs === null) p.differs = seq
}
