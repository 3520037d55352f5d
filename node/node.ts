/**
 * One site's node: the corestore with every log, the swarm, and the parts it hands work to, one file each:
 *
 * - admission.ts: who may connect (the firewall), and the join channel for a one-time invite;
 * - control.ts: the control channel with each member (members, datasets, reports; relayed);
 * - reports.ts: this site's signed report, every other site's, and the status built from them;
 * - roles.ts: each dataset's role here (capture as its origin, or apply as a replica), settled per epoch;
 * - failover.ts: promotion, fencing, rebuilding;
 * - upkeep.ts: snapshots, verify and repair, checkpoints on request, restore jobs;
 * - local.ts: the local socket the `mesh` commands use;
 * - statements.ts: signed statements (members, promotions, policies, keys), checked, kept and relayed;
 * - alarms.ts: what this site refused as a possible attack, shown as CRIT at every site;
 * - membership.ts: members from signed statements only, the credential step for new keys, removal, key rotation;
 * - policy.ts: who may promote each dataset;
 * - trust.ts: a new epoch is followed only on a signed promotion checked here (liveness.ts: when this site was up);
 * - handover.ts: `mesh handover`, a planned switch of origin with nothing lost;
 * - alerts.ts: email / webhook alerts when the verdict changes, and the daily summary (summary.ts).
 *
 * Logs are replicated whole by every holder, not only by their writer: every node opens every log it knows of
 * and keeps downloading it, so a site can fetch A's log from B while A is off.
 */
import { EventEmitter } from 'node:events'
import fs from 'node:fs'
import path from 'node:path'
import type net from 'node:net'
import Corestore from 'corestore'
import DHT, { type KeyPair } from 'hyperdht'
import Hyperswarm, { type SwarmConnection } from 'hyperswarm'
import crypto from 'hypercore-crypto'
import { MeshError, type MemberRole } from '../protocol/index.ts'
import { silentLogger, type CaptureMode, type DamageGuard, type Logger } from '../adapters/index.ts'
import { Admission } from './admission.ts'
import { Alarms } from './alarms.ts'
import { Alerts, type AlertOptions } from './alerts.ts'
import { BlindHolder } from './blind.ts'
import { ControlChannel } from './control.ts'
import { Uploads } from './held.ts'
import { addTraffic, lossyText, Traffic, type LinkBudget } from './traffic.ts'
import { DataKeys, datasetOfLog } from './datakeys.ts'
import { Failover, type PromoteResult } from './failover.ts'
import { handover, type HandoverResult } from './handover.ts'
import { History, findDataset } from './history.ts'
import { Liveness } from './liveness.ts'
import { closeLocal, listenLocal, type LocalRequest } from './local.ts'
import { DatasetLog, logName, logOfName, type LogPlace } from './log.ts'
import { Membership } from './membership.ts'
import { Policy } from './policy.ts'
import { Reconnect } from './reconnect.ts'
import { Reports } from './reports.ts'
import { Roles } from './roles.ts'
import { Statements } from './statements.ts'
import { Trust } from './trust.ts'
import { DEFAULT_SNAPSHOTS, type SnapshotPolicy } from './snapshots.ts'
import {
  readMeshState,
  readSiteKey,
  sitePaths,
  writeMeshState,
  type MeshState,
  type SitePaths,
  type WrittenLog
} from './state.ts'
import type { SiteStatus, StatusThresholds } from './status.ts'
import { Upkeep } from './upkeep.ts'
import { NodeDashboard, type DashboardConfig } from './dashboard/part.ts'
import { Health, type AppVersionSource } from './health.ts'
import type { VerifyResult } from './state.ts'
import { hex, short } from './util.ts'

export interface OwnDataset {
  id: string
  name: string
  engine: string
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
  /** Generational snapshots, built from the logs (default: daily, kept 14 days, 8 weeks, 12 months). */
  snapshots?: SnapshotPolicy
  /** An origin appends a checkpoint (its digest) at most this often, when idle (default 10 min). */
  checkpointMs?: number
  /** The mass-damage guard's thresholds (default: half of a table of 100 rows or more). */
  guard?: DamageGuard
  /**
   * Memory one unit may take while it is captured or applied (bytes; default DEFAULT_UNIT_MEMORY): a larger one
   * is captured, appended and applied in parts (issue 14).
   */
  unitMemoryBytes?: number
  /**
   * Batching for a slow or metered link (config `link.batchSeconds`, issue 16): an origin appends what its
   * database committed at most about this often, as one unit (CaptureLoop batchMs). 0 or absent: at once.
   */
  batchMs?: number
  /**
   * A PostgreSQL server URL where this site keeps its replicas of PostgreSQL datasets, one database each,
   * created by the node. Without it such a dataset's log is still held here, but not applied.
   */
  replicaPostgres?: string
  /**
   * Whether a dataset this site creates gets a data key and encrypted logs (default true). Datasets created
   * before are not changed by it.
   */
  encryptNewDatasets?: boolean
  /** Where the business application's version is read from, for the versions view (health.ts). */
  appVersion?: AppVersionSource
  /**
   * Steps (ms) between tries to reach a member that is not connected (issue 16; default DEFAULT_RETRY_MS:
   * 1 s, 5 s, 15 s, then every 20 s; each at most MAX_RETRY_MS). Tests shorten them.
   */
  retryMs?: number[]
  /** How often the node looks for members it is not connected to, and for a network that came back. */
  reconnectWatchMs?: number
  /** Alerts and the daily summary (alerts.ts); absent: none sent from this site. */
  alerts?: AlertOptions
  /** The dashboard: where the node serves it (if anywhere) and how often its charts are sampled (dashboard/). */
  dashboard?: DashboardConfig
  /** The bandwidth budget of all this site's mesh traffic (traffic.ts); absent: no limit. */
  link?: LinkBudget
}

export function meshTopic(meshId: Uint8Array): Buffer {
  return crypto.hash([Buffer.from('branchmesh topic'), meshId])
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
  closing = false
  readonly admission = new Admission(this)
  readonly control = new ControlChannel(this)
  readonly reports = new Reports(this)
  readonly roles = new Roles(this)
  readonly failover = new Failover(this)
  readonly upkeep = new Upkeep(this)
  readonly health = new Health(this)
  readonly statements = new Statements(this)
  readonly alarms = new Alarms(this)
  readonly alerts = new Alerts(this)
  readonly policy = new Policy(this)
  readonly membership = new Membership(this)
  /** Data keys of encrypted datasets, and their grants to full members (after statements: it registers there). */
  readonly dataKeys = new DataKeys(this)
  /** What a blind site holds instead of replicas. */
  readonly blind = new BlindHolder(this)
  readonly trust = new Trust(this)
  readonly liveness = new Liveness(this)
  readonly reconnect = new Reconnect(this)
  /** The dashboard page, its charts' history and its metrics (node/dashboard/). */
  readonly dashboard = new NodeDashboard(this)
  /** History reads over the logs this node holds (mesh log, mesh restore, verify's replay). */
  readonly history: History
  /** The bandwidth budget: every connection paced and counted (traffic.ts). */
  readonly traffic: Traffic
  /** The blocks of each log uploaded to each peer: what a peer still has to receive, for its catch-up estimate. */
  private readonly uploads = new Uploads()
  /** Every log of every dataset chain this node has open, by key. */
  private readonly logs = new Map<string, DatasetLog>()
  private server: net.Server | null = null
  private timers: NodeJS.Timeout[] = []
  /** The store opened: this node got as far as running (a second node on a running one's DIR never does). */
  private opened = false

  constructor(opts: MeshNodeOptions) {
    super()
    this.opts = opts
    this.paths = sitePaths(opts.dir)
    this.logger = opts.logger ?? silentLogger
    this.traffic = new Traffic(opts.link ?? {}, path.join(opts.dir, 'traffic.json'), Date.now, (site, lossy, l) => {
      if (lossy) this.logger.warn('a lossy link', { peer: site, text: lossyText(site, l) })
      else this.logger.info('the lossy link recovered', { peer: site, packets: l.packets, resent: l.resent })
      // Every site's status says so too (a notice in this site's report).
      this.reports.markDirty()
    })
    this.history = new History(
      () => this.state.datasets,
      (k) => this.openLog(k),
      undefined,
      { dir: opts.dir, inUse: this.upkeep.snapshotsInUse, onDamaged: (h, file) => this.upkeep.snapshotDamaged(h, file) }
    )
  }

  get key(): Buffer {
    return this.keyPair.publicKey
  }

  /** This site's role in the mesh, as its admission gave it ('full' unless it joined with a blind invite). */
  get role(): MemberRole {
    return this.admission.roleOf(this.key) ?? 'full'
  }

  get origins() {
    return this.roles.origins
  }

  get replicas() {
    return this.roles.replicas
  }

  get peers() {
    return this.control.peers
  }

  async start(): Promise<void> {
    this.keyPair = readSiteKey(this.paths)
    this.state = readMeshState(this.paths)
    this.admission.start()
    this.reports.load()
    this.alarms.load()
    this.statements.load()
    await this.membership.start()
    // Data keys a welcome brought (sealed to this site in statements.json) are in DIR/keys before any log opens.
    this.dataKeys.adoptHeld()
    this.liveness.load()
    this.trust.start()
    // A new report of another member: this site is running and connected (what an origin asks of a promotion).
    this.on('report', () => this.liveness.heard())

    this.store = new Corestore(this.paths.store)
    try {
      await this.store.ready()
    } catch (err) {
      await this.store.close().catch(() => {})
      if (/could not be locked|resource temporarily unavailable/i.test((err as Error).message)) {
        throw MeshError.NODE_RUNNING(`another node is already running on ${this.paths.dir}`, {
          context: { dir: this.paths.dir }
        })
      }
      throw MeshError.wrap(err, MeshError.IO_ERROR, 'cannot open the log store')
    }
    this.opened = true
    this.server = await listenLocal(this.paths.socket, (req) => this.handleLocal(req))
    fs.mkdirSync(this.paths.replicas, { recursive: true })

    await this.registerOwnDatasets()
    this.saveState()
    // Capture starts before the network: what was written while the node was off is in the log first.
    for (const info of this.state.datasets) {
      if (this.key.equals(Buffer.from(info.origin))) await this.roles.enqueue(info.id, () => this.roles.settle(info.id))
    }
    for (const info of this.state.datasets) {
      if (!this.key.equals(Buffer.from(info.origin))) this.roles.settleLater(info.id)
    }

    this.traffic.start()
    this.startSwarm()

    this.health.start()
    this.reports.start(this.opts.heartbeatMs ?? 5000)
    this.dataKeys.start()
    this.alerts.start()
    await this.dashboard.start(this.opts.dashboard)
    const snaps = this.opts.snapshots ?? DEFAULT_SNAPSHOTS
    const every = Math.min(60_000, Math.max(200, (snaps.everySeconds * 1000) / 4))
    // A blind site cannot read a log, so it builds no snapshot of one.
    if (this.role === 'full') this.timers.push(setInterval(() => void this.upkeep.snapshotDatasets(snaps), every))
    this.logger.info('node started', {
      site: this.opts.site,
      key: short(this.key),
      datasets: this.opts.datasets.map((d) => d.name),
      replicas: [...this.replicas.values()].map((r) => r.info.name)
    })
  }

  /** The DHT and the swarm under this site's key: the mesh topic, and every member dialled by key. */
  private startSwarm(): void {
    const net = this.opts.network
    this.dht = new DHT({ bootstrap: net.bootstrap, host: net.host, firewalled: net.firewalled, keyPair: this.keyPair })
    // The DHT's own bytes, counted apart in the site's traffic.
    this.traffic.watchDht(this.dht)
    this.swarm = new Hyperswarm({
      keyPair: this.keyPair,
      dht: this.dht,
      firewall: (remote) => this.admission.firewall(remote),
      ...this.reconnect.swarmOptions()
    })
    this.swarm.on('connection', (conn: SwarmConnection) => this.admission.onConnection(conn))
    if (this.membership.removedSelf) return
    this.swarm.join(meshTopic(this.state.meshId), { server: true, client: true })
    for (const m of this.state.members) if (!this.key.equals(m.key)) this.swarm.joinPeer(m.key)
  }

  /** After a key rotation: the swarm again under the new key (every connection is made anew). */
  async restartSwarm(): Promise<void> {
    if (this.closing) return
    await this.swarm.destroy().catch(() => {})
    await this.dht.destroy().catch(() => {})
    if (this.closing) return
    this.startSwarm()
    this.logger.info('the node now connects under its new key', { key: short(this.key) })
  }

  /** The datasets this site created: their database is the configured one, and epoch 0 is theirs. */
  private async registerOwnDatasets(): Promise<void> {
    for (const own of this.opts.datasets) {
      let local = this.state.local.find((l) => l.dataset === own.id)
      if (!local) {
        local = { dataset: own.id, path: own.path, written: [], divergences: [] }
        this.state.local.push(local)
      }
      local.path = own.path
      const created = !local.written.some((w) => w.epoch === 0)
      if (created) {
        // A dataset made now is encrypted from its first block: the key exists before its log does.
        if (this.opts.encryptNewDatasets !== false) this.dataKeys.create(own.id)
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
          createdAt: Date.now(),
          ...(this.dataKeys.get(own.id) ? { encryptedFrom: 0 } : {})
        })
      }
    }
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

  /** Runs `fn` after `ms` unless the node stops first. */
  later(fn: () => void, ms: number): void {
    this.timers.push(setTimeout(fn, ms))
  }

  // --- the logs ----------------------------------------------------------------------------------------------

  /**
   * Opens a log of a dataset chain once and keeps downloading all of it, so this site can serve it. `place`:
   * which dataset and epoch the log is, when the caller knows and this site's state does not say yet (a new
   * epoch's log announced but not followed yet): its encryption depends on it.
   */
  async openLog(key: Uint8Array, place: LogPlace | null = null): Promise<DatasetLog> {
    const k = hex(key)
    const have = this.logs.get(k)
    if (have) return have
    const log = await DatasetLog.byKey(
      this.store,
      this.paths.store,
      key,
      this.dataKeys.encryptionOf(place ?? this.datasetOfLog(key))
    )
    const again = this.logs.get(k)
    if (again) {
      await log.close().catch(() => {})
      return again
    }
    return this.keepOpen(log)
  }

  /** The dataset and epoch a log is, as far as this site knows without reading it (see datakeys.ts). */
  datasetOfLog(key: Uint8Array): LogPlace | null {
    return datasetOfLog(this.state, this.logs.values(), key)
  }

  /** The log with this key, if this node has it open. */
  heldLog(key: Uint8Array): DatasetLog | null {
    return this.logs.get(hex(key)) ?? null
  }

  /** Forgets an open log that was closed (it is opened again on the next use). */
  forgetLog(key: Uint8Array): void {
    this.logs.delete(hex(key))
  }

  /**
   * A new log this site will write, kept open like every other. It is encrypted when its dataset's logs are from
   * its epoch on (datakeys.ts): `place` says which dataset and epoch it is, read from a logName()-based name
   * when not given. A name of another form with no place makes a plaintext log.
   */
  async createLog(name: string, place: LogPlace | null = logOfName(name)): Promise<DatasetLog> {
    const encryption = this.dataKeys.encryptionOf(place)
    return this.keepOpen(await DatasetLog.named(this.store, this.paths.store, name, encryption))
  }

  /** A log this site wrote, checked to be the one its state names before it is used. */
  async openWritten(w: WrittenLog): Promise<DatasetLog> {
    const have = this.logs.get(hex(w.key))
    if (have) return have
    const encryption = this.dataKeys.encryptionOf(this.datasetOfLog(w.key) ?? logOfName(w.name))
    const log = await DatasetLog.named(this.store, this.paths.store, w.name, encryption)
    if (!log.core.key.equals(Buffer.from(w.key))) {
      await log.close().catch(() => {})
      throw MeshError.BAD_LOG(`the log store no longer holds the log this site wrote for epoch ${w.epoch}`, {
        hint: 'The store was replaced or damaged. Restore the data directory from a backup.'
      })
    }
    return this.keepOpen(log)
  }

  /** Keeps a log open for the node's life: downloading all of it (so this site can serve it), status updated. */
  private keepOpen(log: DatasetLog): DatasetLog {
    this.logs.set(hex(log.key), log)
    this.uploads.watch(hex(log.key), log.core)
    log.core.download({ start: 0, end: -1 })
    log.core.on('append', () => this.reports.markDirty())
    log.core.on('download', () => this.reports.markDirty())
    return log
  }

  // --- what the commands ask ---------------------------------------------------------------------------------

  async status(now = Date.now()): Promise<SiteStatus> {
    const st = this.dashboard.annotate(this.policy.annotate(this.membership.annotate(await this.reports.status(now))))
    return addTraffic(
      st,
      this.traffic,
      this.key,
      this.control.ready().map((p) => hex(p.key)),
      (log) => this.logs.get(log)?.core ?? null,
      this.uploads
    )
  }

  async promote(dataset: string, force: boolean): Promise<PromoteResult> {
    if (this.role === 'blind') {
      throw MeshError.BLIND_SITE(
        `${this.opts.site} is a blind site: it holds the logs of ${dataset} encrypted, and no copy`
      )
    }
    // The policy first: a site it does not name is refused before anything is checked or stopped.
    this.policy.checkPromote(dataset)
    // The new epoch's log is encrypted when the dataset's logs are from it on: without the key, say so first.
    const head = findDataset(this.state.datasets, dataset)
    this.dataKeys.encryptionOf({ dataset: head.id, epoch: head.epoch + 1 })
    return this.failover.promote(dataset, force)
  }

  handover(dataset: string, to: string, timeoutMs?: number): Promise<HandoverResult> {
    return handover(this, dataset, to, timeoutMs)
  }

  verify(dataset: string, repair: boolean): Promise<VerifyResult> {
    return this.upkeep.verify(dataset, repair)
  }

  checkpoint(dataset: string): Promise<{ dataset: string; seq: number; rows: number }> {
    return this.upkeep.checkpoint(dataset)
  }

  /** Where a replica of a dataset is kept here (see Roles.replicaPath). */
  replicaPath(info: Parameters<Roles['replicaPath']>[0]): string {
    return this.roles.replicaPath(info)
  }

  private async handleLocal(req: LocalRequest): Promise<unknown> {
    if (this.role === 'observer' && !['ping', 'status'].includes(req.cmd)) {
      throw MeshError.OBSERVER_SITE(`${this.opts.site} is an observer: it holds no log and no data (mesh ${req.cmd})`)
    }
    if (this.role === 'blind' && !['ping', 'status', 'promote'].includes(req.cmd)) {
      throw MeshError.BLIND_SITE(
        `${this.opts.site} is a blind site: it cannot read the logs it holds (mesh ${req.cmd})`
      )
    }
    switch (req.cmd) {
      case 'ping':
        return { ok: true, site: this.opts.site }
      case 'status':
        return { status: await this.status() }
      case 'alerts':
        if (req.what !== 'test' && req.what !== 'daily') throw MeshError.USAGE(`mesh alerts ${req.what}: test or daily`)
        return req.what === 'daily' ? this.alerts.daily() : this.alerts.test()
      case 'log':
        return { log: await this.history.log(req.dataset, { from: req.from, limit: req.limit, full: req.full }) }
      case 'restore':
        return {
          job: await this.upkeep.startRestore(req.dataset, { through: req.through, seq: req.seq, at: req.at }, req.to)
        }
      case 'job':
        return { job: this.upkeep.job(req.job) }
      case 'checkpoint':
        return { checkpoint: await this.checkpoint(req.dataset) }
      case 'resync':
        return { resync: await this.upkeep.resync(req.dataset) }
      case 'verify':
      case 'repair':
        return { verify: await this.verify(req.dataset, req.cmd === 'repair') }
      case 'promote':
        return { promoted: await this.promote(req.dataset, req.force === true) }
      case 'remove':
        return { removed: await this.membership.remove(req.site, req.reason ?? '') }
      case 'rotate-key':
        return { rotated: await this.membership.rotateKey() }
      case 'policy':
        return { policy: await this.policy.set(req.dataset, req.promote) }
      case 'encrypt':
        return { encrypt: this.dataKeys.encryptFrom(req.dataset) }
      case 'handover':
        return { handover: await this.handover(req.dataset, req.to, req.timeoutMs) }
      case 'accept':
        return { accepted: this.trust.accept(req.dataset, req.epoch) }
    }
  }

  // --- state -------------------------------------------------------------------------------------------------

  saveState(): void {
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
    await this.dashboard.close()
    // Let a promotion or a fence under way finish its step; each is safe to resume at the next start.
    await this.roles.drain(10_000)
    await this.roles.close()
    this.trust.close()
    this.liveness.close()
    this.health.close()
    this.alerts.close()
    this.reports.close()
    this.dataKeys.close()
    this.reconnect.close()
    await this.swarm?.destroy().catch(() => {})
    if (this.opened) this.traffic.close()
    await this.store?.close().catch(() => {})
    if (this.server) await closeLocal(this.server, this.paths.socket)
    if (this.opened) this.logger.info('node stopped', { site: this.opts.site })
  }
}

function nodesKnown(dht: DHT): boolean {
  const d = dht as unknown as { table?: { size?: number; toArray?(): unknown[] } }
  const n = d.table?.toArray?.().length ?? d.table?.size ?? 1
  return n > 0
}
