/**
 * Upkeep: the work that keeps history and proof current while the node runs. Generational snapshots of every
 * dataset whose log this site holds; `mesh verify` and `mesh repair` of a replica against the log; `mesh
 * checkpoint` at the origin; and restores run as jobs for `mesh restore` while the node holds the log store.
 */
import crypto from 'hypercore-crypto'
import { engineFor } from '../adapters/index.ts'
import { MeshError, type DatasetInfo } from '../protocol/index.ts'
import { offsets, resolveChain, seqOf } from './chain.ts'
import { findDataset, restorePoint, type RestoreResult, type RestoreTarget } from './history.ts'
import type { MeshNode } from './node.ts'
import { prove } from './roles.ts'
import { buildSnapshot, listSnapshots, prune, snapshotPosition, type SnapshotPolicy } from './snapshots.ts'
import type { VerifyResult } from './state.ts'

/** A restore the node runs for `mesh restore`, as the command sees it. */
export interface RestoreJob {
  state: 'running' | 'done' | 'failed'
  done: number
  total: number
  result: RestoreResult | null
  error: { code: string; message: string; hint: string | null } | null
}

export class Upkeep {
  /** Snapshots a restore is copying now: retention leaves them. */
  readonly snapshotsInUse = new Set<string>()
  private readonly jobs = new Map<string, RestoreJob>()
  private snapshotting = false
  /** Datasets this site cannot build snapshots of (said once). */
  private readonly noSnapshots = new Set<string>()
  private readonly snapshotFailedAt = new Map<string, number>()

  constructor(private readonly node: MeshNode) {}

  /**
   * Takes a snapshot of each dataset whose log this site holds (its own included) when the newest is
   * `everySeconds` old and the log has grown since, and prunes them by the generational policy. A snapshot is
   * built from the log (see snapshots.ts); capture and apply go on meanwhile.
   */
  async snapshotDatasets(p: SnapshotPolicy): Promise<void> {
    const node = this.node
    if (this.snapshotting || node.closing) return
    this.snapshotting = true
    try {
      for (const head of node.state.datasets) {
        if (node.closing || this.noSnapshots.has(head.id)) continue
        const newest = listSnapshots(node.paths.dir, head.id).pop()
        const now = Date.now()
        if (newest && now - newest.at < p.everySeconds * 1000) continue
        // After a failure, not again for a while (every build replays the log since the last snapshot).
        if (now - (this.snapshotFailedAt.get(head.id) ?? 0) < Math.min(p.everySeconds, 3600) * 1000) continue
        try {
          const chain = await resolveChain(head, (k) => node.openLog(k))
          const { length } = offsets(chain)
          if ((seqOf(chain, newest ? snapshotPosition(newest.file) : null) ?? -1) >= length) continue
          // A snapshot is a convenience (restores can replay the log): never worth filling the disk for.
          if (!node.health.roomForSnapshot(head.id)) continue
          const point = await restorePoint(chain, { seq: length })
          const s = await buildSnapshot(node.paths.dir, head, engineFor(head.engine), chain, point.seq, {
            now,
            logger: node.logger,
            inUse: this.snapshotsInUse,
            server: node.opts.replicaPostgres ?? null,
            onDamaged: (file) => this.snapshotDamaged(head, file)
          })
          const gone = prune(node.paths.dir, head.id, now, p, this.snapshotsInUse)
          if (s)
            node.logger.info('snapshot taken', {
              dataset: head.name,
              seq: point.seq,
              file: s.file,
              pruned: gone.length
            })
        } catch (err) {
          const e = MeshError.wrap(err, MeshError.IO_ERROR)
          if (e.code === 'REPLICA_NOT_READY' || e.code === 'USAGE') {
            node.logger.debug('no snapshot yet', { dataset: head.name, reason: e.message })
          } else if (e.code === 'NOT_FOUND') {
            // Said once: restores of this dataset replay from the start here.
            this.noSnapshots.add(head.id)
            node.logger.warn('no snapshots of this dataset at this site: restores replay from the start', {
              dataset: head.name,
              reason: e.message,
              hint:
                "For PostgreSQL datasets: set replicaPostgres, and install PostgreSQL's client programs " +
                '(pg_dump, pg_restore).'
            })
          } else {
            this.snapshotFailedAt.set(head.id, Date.now())
            node.logger.warn('cannot take a snapshot; trying again later', { dataset: head.name, error: e.message })
          }
        }
      }
    } finally {
      this.snapshotting = false
    }
  }

  snapshotDamaged(head: DatasetInfo, file: string): void {
    this.node.logger.warn(
      'a snapshot changed on disk since it was written: it is set aside and the next older one is used',
      {
        dataset: head.name,
        file: `${file}.damaged`
      }
    )
    this.node.reports.markDirty()
  }

  /**
   * `mesh restore` while the node runs: the node holds the log store, so it replays into the new database, as
   * a job the command follows (`job`) for its progress. The live database and the replicas are not touched.
   */
  async startRestore(dataset: string, target: RestoreTarget, to: string): Promise<string> {
    const node = this.node
    const head = findDataset(node.state.datasets, dataset)
    await engineFor(head.engine).checkRestoreTarget(to)
    const id = crypto.randomBytes(8).toString('hex')
    const job: RestoreJob = { state: 'running', done: 0, total: 0, result: null, error: null }
    this.jobs.set(id, job)
    node.history
      .restore(head.id, target, to, { progress: (done, total) => Object.assign(job, { done, total }) })
      .then((r) => {
        Object.assign(job, { state: 'done', result: r })
        node.logger.info('restored', { dataset: r.dataset, seq: r.seq, to: engineFor(r.engine).shown(r.to), ms: r.ms })
      })
      .catch((err) => {
        const e = MeshError.wrap(err, MeshError.IO_ERROR)
        Object.assign(job, { state: 'failed', error: { code: e.code, message: e.message, hint: e.hint ?? null } })
      })
    return id
  }

  job(id: string): RestoreJob | null {
    return this.jobs.get(id) ?? null
  }

  /**
   * `mesh verify` / `mesh repair`: this site's replica against the log. Apply pauses; the chain is replayed
   * from the nearest snapshot (built from the log, never from the replica) up to the replica's position into
   * a scratch copy, and the two are compared row by row. A repair then puts the log's contents in place, in one
   * transaction, and apply goes on.
   */
  async verify(dataset: string, repair: boolean): Promise<VerifyResult> {
    const node = this.node
    const head = findDataset(node.state.datasets, dataset)
    const engine = engineFor(head.engine)
    return node.roles.enqueue(head.id, async () => {
      const r = node.roles.replicas.get(head.id)
      if (!r && node.roles.origins.has(head.id)) {
        // The origin's database is what the log is made from: there is no copy here to check against it.
        const holders = node.reports.holdersOf(head).filter((x) => x !== node.opts.site)
        throw MeshError.USAGE(
          `${node.opts.site} is the origin of ${head.name}: its database is the source of the log, and mesh ` +
            'verify checks a copy against the log',
          {
            hint:
              `To check every copy against this database, run mesh checkpoint ${head.name} here: each copy ` +
              `compares itself when it applies it, and mesh status shows the result. To prove one copy equal to ` +
              `the log, run mesh verify ${head.name} at ${holders.join(' or ') || 'a site that holds a copy'}.`
          }
        )
      }
      if (!r) {
        throw MeshError.REPLICA_NOT_READY(`${node.opts.site} holds no replica of ${head.name} yet`, {
          hint: 'Wait until `mesh status` shows this site holding the dataset, then run the command again.'
        })
      }
      await r.loop.stop()
      let scratch: { where: string; drop(): Promise<void> } | null = null
      try {
        // The position verify compares at must be where the database stands for good (see ApplySide.flush).
        await r.side.flush?.()
        const pos = r.side.position()
        if (pos === null) throw MeshError.REPLICA_NOT_READY(`${node.opts.site} has applied nothing of ${head.name} yet`)
        const seq = seqOf(r.chain, pos)
        if (seq === null) {
          throw MeshError.REPLICA_NOT_READY(
            `${node.opts.site}'s copy of ${head.name} is not on the dataset's chain of logs yet`
          )
        }
        scratch = await engine.scratch(r.path, r.info.id, 'verify', node.paths.replicas)
        // The log replayed into the scratch database, kept as a replica is (its bookkeeping names its tables),
        // from the nearest snapshot: built from the log itself, and checked against its SHA-256.
        const replay = await node.history.restore(r.info.id, { seq }, scratch.where, { plain: false })
        const tables = await engine.diff(r.path, scratch.where)
        let repaired = false
        if (repair && tables.length > 0) {
          await r.side.close()
          await engine.repair(r.path, scratch.where, tables)
          await r.side.open()
          repaired = true
        }
        const local = node.roles.localOf(head)
        prove(local, seq, tables.length === 0)
        const parted = tables.length ? { lastEqual: local.proven!.equal, firstDiffers: local.proven!.differs! } : null
        if (repaired) prove(local, seq, true)
        const ok = tables.length === 0 || repaired
        // Proven equal to the log: whatever another program wrote before is gone or was never a difference.
        if (ok) r.side.forgetWrites?.()
        const result: VerifyResult = {
          dataset: head.name,
          seq,
          from: replay.from,
          at: Date.now(),
          ok,
          tables,
          repaired,
          parted
        }
        local.verified = result
        node.saveState()
        node.reports.markDirty()
        if (tables.length) {
          const what = repaired ? 'replica repaired from the log' : 'replica differs from the log'
          node.logger.warn(what, { dataset: head.name, seq, tables: tables.map((t) => t.table) })
        }
        return result
      } finally {
        await scratch
          ?.drop()
          .catch((err) =>
            node.logger.warn('cannot remove the scratch copy of a verify', { error: (err as Error).message })
          )
        await r.loop.start()
      }
    })
  }

  /**
   * `mesh resync`: the origin appends a fresh copy of its whole database to the log (taken online, in short
   * read transactions, through the same path as a copy after a replaced file), for when the log itself is
   * wrong: a checkpoint differs while mesh verify finds the copies equal to the log. Every copy becomes exact
   * from it. Then a checkpoint, once the database is idle, for every copy to prove it; none when it does not
   * go idle within a minute (the periodic one follows).
   */
  async resync(dataset: string): Promise<{ dataset: string; seq: number; rows: number; checkpoint: number | null }> {
    const node = this.node
    const head = findDataset(node.state.datasets, dataset)
    const o = node.roles.origins.get(head.id)
    if (!o) {
      const who = `${node.opts.site} is not the origin of ${head.name}: ${head.originSite} is`
      throw MeshError.USAGE(`${who}, and only it can copy its database`, {
        hint: `Run mesh resync ${head.name} at ${head.originSite}.`
      })
    }
    const copy = await o.loop.resync()
    const chain = await resolveChain(head, (k) => node.openLog(k))
    const seq = seqOf(chain, { log: o.log.key, length: copy.length }) ?? copy.length
    let checkpoint: number | null = null
    try {
      const c = await o.loop.checkpointNow(60_000)
      checkpoint = seqOf(chain, { log: o.log.key, length: c.length }) ?? c.length
    } catch (err) {
      node.logger.info('no checkpoint right after the resync; the periodic one follows', {
        error: (err as Error).message
      })
    }
    return { dataset: head.name, seq, rows: copy.rows, checkpoint }
  }

  /**
   * `mesh checkpoint`: the origin appends its digest now (as soon as its database is idle), for every copy to
   * compare with its own. Returns the chain position the checkpoint describes.
   */
  async checkpoint(dataset: string): Promise<{ dataset: string; seq: number; rows: number }> {
    const node = this.node
    const head = findDataset(node.state.datasets, dataset)
    const o = node.roles.origins.get(head.id)
    if (!o) {
      throw MeshError.USAGE(`${node.opts.site} is not the origin of ${head.name}: ${head.originSite} is`, {
        hint: `Run mesh checkpoint ${head.name} at ${head.originSite}.`
      })
    }
    const c = await o.loop.checkpointNow(120_000)
    const chain = await resolveChain(head, (k) => node.openLog(k))
    return { dataset: head.name, seq: seqOf(chain, { log: o.log.key, length: c.length }) ?? c.length, rows: c.rows }
  }
}
