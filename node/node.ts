/**
 * One site's node: the corestore with every log, the swarm, and the parts it hands work to, one file each:
 *
 * - admission.ts: who may connect (the firewall), and the join channel for a one-time invite;
 * - control.ts: the control channel with each member (members, datasets, reports; relayed);
 * - reports.ts: this site's signed report, every other site's, and the status built from them;
 * - roles.ts: each dataset's role here (capture as its origin, or apply as a replica), settled per epoch;
 * - failover.ts: promotion, fencing, rebuilding;
 * - upkeep.ts: snapshots, verify and repair, checkpoints on request, restore jobs;
 * - local.ts: the local socket the `mesh` commands use.
 *
 * Logs are replicated whole by every holder, not only by their writer: every node opens every log it knows of
 * and keeps downloading it, so a site can fetch A's log from B while A is off.
 */
import { EventEmitter } from 'node:events'
import fs from 'node:fs'
import type net from 'node:net'
import Corestore from 'corestore'
import DHT, { type KeyPair } from 'hyperdht'
import Hyperswarm, { type SwarmConnection } from 'hyperswarm'
import crypto from 'hypercore-crypto'
import { MeshError } from '../protocol/index.ts'
import { silentLogger, type CaptureMode, type DamageGuard, type Logger } from '../adapters/index.ts'
import { Admission } from './admission.ts'
import { ControlChannel } from './control.ts'
import { Failover, type PromoteResult } from './failover.ts'
import { History } from './history.ts'
import { closeLocal, listenLocal, type LocalRequest } from './local.ts'
import { DatasetLog, logName } from './log.ts'
import { Reports } from './reports.ts'
import { Roles } from './roles.ts'
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
   * A PostgreSQL server URL where this site keeps its replicas of PostgreSQL datasets, one database each,
   * created by the node. Without it such a dataset's log is still held here, but not applied.
   */
  replicaPostgres?: string
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
  /** History reads over the logs this node holds (mesh log, mesh restore, verify's replay). */
  readonly history: History
  /** Every log of every dataset chain this node has open, by key. */
  private readonly logs = new Map<string, DatasetLog>()
  private server: net.Server | null = null
  private timers: NodeJS.Timeout[] = []

  constructor(opts: MeshNodeOptions) {
    super()
    this.opts = opts
    this.paths = sitePaths(opts.dir)
    this.logger = opts.logger ?? silentLogger
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

    const net = this.opts.network
    this.dht = new DHT({ bootstrap: net.bootstrap, host: net.host, firewalled: net.firewalled, keyPair: this.keyPair })
    this.swarm = new Hyperswarm({
      keyPair: this.keyPair,
      dht: this.dht,
      firewall: (remote) => this.admission.firewall(remote)
    })
    this.swarm.on('connection', (conn: SwarmConnection) => this.admission.onConnection(conn))
    this.swarm.join(meshTopic(this.state.meshId), { server: true, client: true })
    for (const m of this.state.members) if (!this.key.equals(m.key)) this.swarm.joinPeer(m.key)

    this.reports.start(this.opts.heartbeatMs ?? 5000)
    const snaps = this.opts.snapshots ?? DEFAULT_SNAPSHOTS
    const every = Math.min(60_000, Math.max(200, (snaps.everySeconds * 1000) / 4))
    this.timers.push(setInterval(() => void this.upkeep.snapshotDatasets(snaps), every))
    this.logger.info('node started', {
      site: this.opts.site,
      key: short(this.key),
      datasets: this.opts.datasets.map((d) => d.name),
      replicas: [...this.replicas.values()].map((r) => r.info.name)
    })
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

  /** Opens a log of a dataset chain once and keeps downloading all of it, so this site can serve it. */
  async openLog(key: Uint8Array): Promise<DatasetLog> {
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

  /** The log with this key, if this node has it open. */
  heldLog(key: Uint8Array): DatasetLog | null {
    return this.logs.get(hex(key)) ?? null
  }

  /** Forgets an open log that was closed (it is opened again on the next use). */
  forgetLog(key: Uint8Array): void {
    this.logs.delete(hex(key))
  }

  /** A new log this site will write, kept open like every other. */
  async createLog(name: string): Promise<DatasetLog> {
    return this.keepOpen(await DatasetLog.named(this.store, this.paths.store, name))
  }

  /** A log this site wrote, checked to be the one its state names before it is used. */
  async openWritten(w: WrittenLog): Promise<DatasetLog> {
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

  /** Keeps a log open for the node's life: downloading all of it (so this site can serve it), status updated. */
  private keepOpen(log: DatasetLog): DatasetLog {
    this.logs.set(hex(log.key), log)
    log.core.download({ start: 0, end: -1 })
    log.core.on('append', () => this.reports.markDirty())
    log.core.on('download', () => this.reports.markDirty())
    return log
  }

  // --- what the commands ask ---------------------------------------------------------------------------------

  status(now = Date.now()): Promise<SiteStatus> {
    return this.reports.status(now)
  }

  promote(dataset: string, force: boolean): Promise<PromoteResult> {
    return this.failover.promote(dataset, force)
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
    switch (req.cmd) {
      case 'ping':
        return { ok: true, site: this.opts.site }
      case 'status':
        return { status: await this.status() }
      case 'log':
        return { log: await this.history.log(req.dataset, { from: req.from, limit: req.limit, full: req.full }) }
      case 'restore':
        return { job: await this.upkeep.startRestore(req.dataset, { seq: req.seq, at: req.at }, req.to) }
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
    // Let a promotion or a fence under way finish its step; each is safe to resume at the next start.
    await this.roles.drain(10_000)
    await this.roles.close()
    this.reports.close()
    await this.swarm?.destroy().catch(() => {})
    await this.store?.close().catch(() => {})
    if (this.server) await closeLocal(this.server, this.paths.socket)
    this.logger.info('node stopped', { site: this.opts.site })
  }
}

function nodesKnown(dht: DHT): boolean {
  const d = dht as unknown as { table?: { size?: number; toArray?(): unknown[] } }
  const n = d.table?.toArray?.().length ?? d.table?.size ?? 1
  return n > 0
}
