/**
 * Dataset roles. Every dataset has one local database here: the configured one for a dataset this site
 * created, one under replicas/ (or on the replica server) for the others. Its role follows the newest epoch:
 * the origin captures it into the log it writes; every other site applies the chain of logs into it. settle()
 * brings the role in line with the newest epoch; it runs in a per-dataset queue, so a promotion, a fence and a
 * new epoch never interleave.
 */
import {
  engineFor,
  type ApplySide,
  type CaptureMode,
  type CaptureSide,
  type DamageAlert,
  type ReplicaPlace
} from '../adapters/index.ts'
import { MeshError, sameBytes, type DatasetInfo } from '../protocol/index.ts'
import { ApplyLoop } from './apply-loop.ts'
import { CaptureLoop } from './capture-loop.ts'
import { locate, resolveChain, seqOf, type ChainSegment } from './chain.ts'
import type { DatasetLog } from './log.ts'
import type { MeshNode } from './node.ts'
import type { LocalDataset, WrittenLog } from './state.ts'
import { fileSafe } from './util.ts'

/** What the capture loop emits after it copied the whole database into the log again. */
interface ResnapshotEvent {
  error: MeshError
  length: number
  rows: number
  resync: boolean
}

/** A dataset this site is the origin of: its database captured into the log it writes. */
export interface Origin {
  info: DatasetInfo
  path: string
  log: DatasetLog
  side: CaptureSide
  loop: CaptureLoop
  error: MeshError | null
}

/** A dataset this site holds a warm copy of: the chain of logs applied into a local database. */
export interface Replica {
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

export class Roles {
  readonly origins = new Map<string, Origin>()
  readonly replicas = new Map<string, Replica>()
  /** Why a dataset could not be followed, for status. */
  readonly settleErrors = new Map<string, MeshError>()
  private readonly queues = new Map<string, Promise<unknown>>()

  constructor(private readonly node: MeshNode) {}

  /** Runs `fn` after everything queued before it for the same dataset. */
  enqueue<T>(id: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.queues.get(id) ?? Promise.resolve()
    const next = prev.then(() => {
      if (this.node.closing) throw MeshError.CLOSED('the node is stopping')
      return fn()
    })
    this.queues.set(
      id,
      next.catch(() => {})
    )
    return next
  }

  /** Resolves when every queued step is done, or after `ms`. */
  async drain(ms: number): Promise<void> {
    await Promise.race([Promise.all(this.queues.values()), new Promise((r) => setTimeout(r, ms))])
  }

  /** settle() in the background; a failure is logged (and shown in status), never thrown. */
  settleLater(id: string): void {
    const node = this.node
    this.enqueue(id, () => this.settle(id)).catch((err) => {
      const e = MeshError.wrap(err, MeshError.IO_ERROR)
      if (e.code === 'CLOSED' || node.closing) return
      this.settleErrors.set(id, e)
      node.reports.markDirty()
      const name = node.state.datasets.find((d) => d.id === id)?.name ?? id
      // The data key of a dataset just announced is on its way (its grant comes from any full member that
      // holds it, and settles the dataset again when it arrives): a wait, not an error; status says so.
      const log = e.code === 'DATA_KEY_MISSING' ? node.logger.info : node.logger.error
      log.call(node.logger, e.code === 'DATA_KEY_MISSING' ? 'waiting for the data key' : 'cannot follow the dataset', {
        dataset: name,
        code: e.code,
        error: e.message,
        hint: e.hint,
        retrying: e.retryable
      })
      // A locked database or a full disk passes: try again. Every step of settle() can be repeated.
      if (e.retryable) node.later(() => this.settleLater(id), 5000)
    })
  }

  /** Brings this site's role for a dataset in line with its newest epoch. */
  async settle(id: string): Promise<void> {
    const node = this.node
    const head = node.state.datasets.find((d) => d.id === id)
    if (!head) return
    // An observer holds nothing: it knows the datasets and every site's reports, never a log's blocks.
    if (node.role === 'observer') {
      this.settleErrors.delete(id)
      return
    }
    // A blind site only holds and serves the logs (blind.ts).
    if (node.role === 'blind') {
      await node.blind.hold(head)
      this.settleErrors.delete(id)
      return
    }
    const engine = engineFor(head.engine)
    if (!node.state.local.some((l) => l.dataset === id)) {
      try {
        engine.replicaLocation(head, this.place())
      } catch (err) {
        // No place for a warm copy here: the logs are still held (and served), which is history kept off-site.
        if ((err as MeshError).code === 'NO_REPLICA_SERVER') await resolveChain(head, (k) => node.openLog(k))
        throw err
      }
    }
    const local = this.localOf(head)
    const origin = this.origins.get(id)
    const replica = this.replicas.get(id)
    if (head.origin.length && node.key.equals(Buffer.from(head.origin))) {
      if (origin && sameBytes(origin.log.key, head.log)) return
      const w = local.written.find((x) => sameBytes(x.key, head.log))
      if (!w) {
        throw MeshError.BAD_LOG(
          `the mesh names this site the origin of ${head.name} (epoch ${head.epoch}), but it holds no such log`,
          {
            hint: 'Restore this data directory from a backup, or promote another site.'
          }
        )
      }
      if (replica) await this.closeReplica(replica)
      await this.openOrigin(head, local, w)
      this.settleErrors.delete(id)
      return
    }
    if (origin) {
      await node.failover.fence(origin, head, local)
      this.settleErrors.delete(id)
      return
    }
    if (replica && sameBytes(replica.info.log, head.log)) return
    if (replica) await this.closeReplica(replica)
    const w = local.written[local.written.length - 1]
    if (w && (await engine.role(local.path, head.id)) === 'origin') {
      // This site was the origin and stopped before its fence was done: capture what is left, then fence.
      const own: DatasetInfo = { ...head, origin: node.key, originSite: node.opts.site, epoch: w.epoch, log: w.key }
      const o = await this.openOrigin(own, local, w)
      await node.failover.fence(o, head, local)
    } else {
      await this.follow(head, local, false)
    }
    this.settleErrors.delete(id)
  }

  localOf(info: DatasetInfo): LocalDataset {
    const node = this.node
    let l = node.state.local.find((x) => x.dataset === info.id)
    if (!l) {
      l = { dataset: info.id, path: this.replicaPath(info), written: [], divergences: [] }
      node.state.local.push(l)
      node.saveState()
    }
    return l
  }

  /** Where this site keeps its warm copies. */
  place(): ReplicaPlace {
    return { dir: this.node.paths.replicas, server: this.node.opts.replicaPostgres ?? null }
  }

  /** Where a replica of a dataset is kept here; fixed when it is first opened (see LocalDataset.path). */
  replicaPath(info: DatasetInfo): string {
    return engineFor(info.engine).replicaLocation(info, this.place())
  }

  async openOrigin(info: DatasetInfo, local: LocalDataset, w: WrittenLog): Promise<Origin> {
    const node = this.node
    const log = await node.openWritten(w)
    const mode = await this.captureMode(info, local)
    const side = engineFor(info.engine).openCapture(local.path, {
      dataset: info.id,
      epoch: w.epoch,
      mode,
      logger: node.logger
    })
    const loop = new CaptureLoop({
      capture: side,
      log,
      header: {
        dataset: info.id,
        name: info.name,
        engine: info.engine,
        epoch: w.epoch,
        site: node.opts.site,
        createdAt: w.epoch === 0 ? info.createdAt : Date.now(),
        parent: w.parent ? { key: w.parent.key, length: w.parent.length } : null,
        promotion: w.promotion ? Buffer.from(w.promotion, 'hex') : null
      },
      logger: node.logger,
      pollMs: node.opts.pollMs ?? 50,
      checkpointMs: node.opts.checkpointMs,
      unitMemoryBytes: node.opts.unitMemoryBytes,
      batchMs: node.opts.batchMs,
      reopenLog: async () => {
        const o = this.origins.get(info.id)!
        await o.log.close().catch(() => {})
        node.forgetLog(w.key)
        o.log = await node.openWritten(w)
        return o.log
      }
    })
    const origin: Origin = { info, path: local.path, log, side, loop, error: null }
    this.origins.set(info.id, origin)
    loop.on('unit', () => node.reports.markDirty())
    loop.on('capture-error', () => node.reports.markDirty())
    loop.on('resnapshot', (e: ResnapshotEvent) => void this.recordCopy(info, local, w, e))
    await this.startCapture(origin, 500)
    return origin
  }

  /**
   * A whole copy appended again: kept in mesh.json (the newest 10) and reported to every site, whose status
   * shows a replaced file or a lost position for a week.
   */
  private async recordCopy(info: DatasetInfo, local: LocalDataset, w: WrittenLog, e: ResnapshotEvent): Promise<void> {
    const node = this.node
    let seq = e.length
    try {
      const chain = await resolveChain(info, (k) => node.openLog(k))
      seq = seqOf(chain, { log: w.key, length: e.length }) ?? e.length
    } catch {
      // The position in this epoch's log is close enough for a note.
    }
    const replaced = typeof e.error.context.replaced === 'string' ? e.error.context.replaced : null
    const kind = e.resync ? 'resync' : replaced !== null ? 'replaced' : 'reset'
    const why = e.resync ? 'asked with mesh resync' : (replaced ?? e.error.message)
    const list = (local.copies ??= [])
    list.push({ kind, at: Date.now(), seq, why, rows: e.rows })
    if (list.length > 10) list.splice(0, list.length - 10)
    node.saveState()
    node.reports.markDirty()
    node.logger.warn('the whole database was copied into the log again', {
      dataset: info.name,
      kind,
      seq,
      why,
      rows: e.rows
    })
  }

  /** Starts capture; a retryable failure (a locked database, a full disk) is retried in the background. */
  private async startCapture(o: Origin, backoff: number): Promise<void> {
    const node = this.node
    if (node.closing || this.origins.get(o.info.id) !== o) return
    try {
      await o.loop.start()
      o.error = null
      node.logger.info('capturing', {
        dataset: o.info.name,
        epoch: o.info.epoch,
        path: engineFor(o.info.engine).shown(o.path)
      })
    } catch (err) {
      const e = MeshError.wrap(err, MeshError.IO_ERROR)
      o.error = e
      node.reports.markDirty()
      if (!e.retryable) {
        node.logger.error('cannot capture', { dataset: o.info.name, code: e.code, error: e.message, hint: e.hint })
        return
      }
      node.logger.warn('cannot capture yet, retrying', {
        dataset: o.info.name,
        code: e.code,
        error: e.message,
        retryInMs: backoff
      })
      node.later(() => void this.startCapture(o, Math.min(backoff * 2, 30_000)), backoff)
    }
  }

  /**
   * How a database this site is the origin of is captured: as its configuration says for the site's own
   * datasets; for a promoted replica, the engine's preferred mode where its database allows it, and another
   * where it does not (a failover is no time to refuse).
   */
  private async captureMode(info: DatasetInfo, local: LocalDataset): Promise<CaptureMode | undefined> {
    const own = this.node.opts.datasets.find((d) => d.id === info.id)
    if (own) return own.capture
    const best = await engineFor(info.engine).captureModeFor?.(local.path, info.id)
    if (best && best.problems.length > 0) {
      this.node.logger.warn(
        `this database does not allow its engine's preferred capture: capturing with ${best.mode}`,
        {
          dataset: info.name,
          problems: best.problems
        }
      )
    }
    return best?.mode
  }

  /**
   * Applies the dataset's chain of logs into the local database. A database that holds changes the chain
   * does not (it applied past a branch point, or it was the origin: `rebuild`) is first rebuilt, in place, to
   * the state where the newest epoch began.
   */
  async follow(
    head: DatasetInfo,
    local: LocalDataset,
    rebuild: boolean,
    carried: string[] | null = null
  ): Promise<void> {
    const node = this.node
    const engine = engineFor(head.engine)
    const chain = await resolveChain(head, (k) => node.openLog(k))
    await engine.prepareReplica?.(local.path, head.id, this.place())
    const side = engine.openApply(local.path, { dataset: head.id, logger: node.logger, guard: node.opts.guard })
    if (!rebuild) {
      await side.open()
      const pos = side.position()
      if (locate(chain, pos) === null) {
        await side.close()
        node.logger.warn('this copy applied changes that the newest epoch does not hold; rebuilding it', {
          dataset: head.name,
          epoch: head.epoch,
          applied: pos?.length
        })
        rebuild = true
      }
    }
    if (rebuild) {
      // An engine that can empty the database of what the mesh carries builds it again from the whole chain;
      // otherwise the sealed epochs are replayed into a scratch database whose contents are swapped in.
      if (engine.reset) await engine.reset(local.path, head.id, carried)
      else await node.failover.rebuild(head, chain, local.path)
      await side.open()
    }
    const replica: Replica = {
      info: head,
      path: local.path,
      chain,
      log: chain[chain.length - 1].log,
      side,
      loop: null as unknown as ApplyLoop,
      damaged: 0,
      appliedWriteAt: 0
    }
    replica.loop = new ApplyLoop({
      segments: chain,
      apply: side,
      logger: node.logger,
      unitMemoryBytes: node.opts.unitMemoryBytes,
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
        node.saveState()
      }
      node.reports.markDirty()
      node.emit('applied', { dataset: head.id, length: e.length })
    })
    replica.loop.on('apply-error', () => node.reports.markDirty())
    replica.loop.on('damage', (e: DamageEvent) => this.recordDamage(replica, local, e))
    this.replicas.set(head.id, replica)
    await replica.loop.start()
    node.reports.markDirty()
    node.logger.info('holding a replica', {
      dataset: head.name,
      origin: head.originSite,
      epoch: head.epoch,
      path: engine.shown(local.path)
    })
  }

  async closeReplica(r: Replica): Promise<void> {
    if (this.replicas.get(r.info.id) === r) this.replicas.delete(r.info.id)
    await r.loop.stop().catch(() => {})
    await r.side.close().catch(() => {})
  }

  /** Stops every capture and apply loop and closes their databases. */
  async close(): Promise<void> {
    for (const o of this.origins.values()) {
      await o.loop.stop().catch(() => {})
      await o.side.close().catch(() => {})
    }
    for (const r of this.replicas.values()) {
      await r.loop.stop().catch(() => {})
      await r.side.close().catch(() => {})
    }
  }

  /**
   * A block of another site's log that fails its checksum in this site's copy: drop the local copy and fetch
   * it again. hypercore verifies every block it receives against the origin's signed merkle tree, so what
   * comes back is the origin's block or nothing. Returns false when the block is damaged at the origin too.
   */
  private async repairBlock(r: Replica, log: DatasetLog, block: number): Promise<boolean> {
    const node = this.node
    r.damaged++
    node.reports.markDirty()
    node.logger.error('damaged block in this site’s copy of a log; rejected, fetching it again from peers', {
      dataset: r.info.name,
      block
    })
    try {
      await log.core.clear(block, block + 1)
    } catch (err) {
      node.logger.error('cannot drop the damaged block', { dataset: r.info.name, block, error: (err as Error).message })
      return false
    }
    // Wait for a peer that holds it for as long as the node runs; apply cannot pass this block anyway.
    while (!node.closing) {
      try {
        const again = await log.core.get(block, { wait: true, timeout: 5000 })
        if (again !== null) {
          node.logger.info('damaged block fetched again and verified', { dataset: r.info.name, block })
          return true
        }
      } catch (err) {
        if (!/timeout|timed out/i.test((err as Error).message)) {
          node.logger.error('cannot fetch the damaged block again', {
            dataset: r.info.name,
            block,
            error: (err as Error).message
          })
          return false
        }
      }
    }
    return false
  }

  /** The mass-damage guard: a unit that deleted or changed a large share of a table is kept and reported. */
  private recordDamage(r: Replica, local: LocalDataset, e: DamageEvent): void {
    const node = this.node
    const log = r.chain.find((s) => s.epoch === e.epoch)?.log.key
    const base = (log && seqOf(r.chain, { log, length: 0 })) ?? 0
    const list = (local.damage ??= [])
    const engine = engineFor(r.info.engine)
    for (const a of e.alerts) {
      const rec = { seq: base + e.start, end: base + e.end, epoch: e.epoch, time: e.time, at: Date.now(), ...a }
      list.push(rec)
      const to = engine.exampleTarget(fileSafe(r.info.name), rec.seq)
      node.logger.warn(
        'a change deleted or rewrote a large share of a table: if it was not meant, restore the state before it',
        {
          dataset: r.info.name,
          table: a.table,
          changed: a.changed,
          before: a.before,
          seq: rec.seq,
          restore: `mesh restore ${r.info.name} --before ${rec.seq} --to ${to} --dir ${node.paths.dir}`
        }
      )
    }
    // The newest 100 are kept.
    if (list.length > 100) list.splice(0, list.length - 100)
    node.saveState()
    node.reports.markDirty()
  }
}

interface DamageEvent {
  epoch: number
  start: number
  end: number
  time: number | null
  alerts: DamageAlert[]
}

/**
 * Records a proof about a replica at chain position `seq`: equal to the log there, or not
 * (see LocalDataset.proven).
 */
export function prove(local: LocalDataset, seq: number, equal: boolean): void {
  const p = (local.proven ??= { equal: null, differs: null })
  if (equal) {
    p.equal = seq
    p.differs = null
  } else if (p.differs === null) p.differs = seq
}
