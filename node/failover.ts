/**
 * Failover: `mesh promote` makes this site's replica the live database and the start of the dataset's next
 * epoch; a site that was the origin and hears of a newer epoch is fenced: it stops capturing, keeps what it
 * wrote past the branch point (the divergence folder, never dropped), is rebuilt to where the newest epoch
 * began, and follows it.
 */
import fs from 'node:fs'
import path from 'node:path'
import { engineFor } from '../adapters/index.ts'
import {
  MeshError,
  StatementKind,
  decodeHandover,
  encodePromotion,
  encodeStatement,
  sameBytes,
  signStatement,
  type DatasetInfo,
  type Handover,
  type Statement
} from '../protocol/index.ts'
import { ApplyLoop } from './apply-loop.ts'
import { resolveChain, type ChainSegment } from './chain.ts'
import { writeDivergence } from './divergence.ts'
import { TAKEOVER_MS } from './trust.ts'
import { findDataset } from './history.ts'
import { logName } from './log.ts'
import type { MeshNode } from './node.ts'
import type { Origin } from './roles.ts'
import type { LocalDataset, WrittenLog } from './state.ts'
import { count, fileSafe, hex, sleep } from './util.ts'

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
  /** The old origin handed over (mesh handover): nothing diverged. */
  handover: boolean
}

export class Failover {
  constructor(private readonly node: MeshNode) {}

  /**
   * `mesh promote`: this site's replica becomes the live database and the start of the dataset's next epoch.
   * Nothing is copied: the replica is adopted as it is, and the new log starts where it stands.
   */
  async promote(dataset: string, force: boolean): Promise<PromoteResult> {
    const head = findDataset(this.node.state.datasets, dataset)
    return this.node.roles.enqueue(head.id, () => this.promoteNow(head.id, force))
  }

  /**
   * The named site's side of `mesh handover`: waits until it applied exactly the length the origin sealed its
   * log at, then starts the next epoch there with a promotion that carries the origin's signed handover.
   */
  async takeOver(s: Statement, h: Handover): Promise<PromoteResult> {
    const node = this.node
    const applied = () => {
      const r = node.roles.replicas.get(h.dataset)
      return r !== undefined && sameBytes(r.log.key, h.parent.key) && r.loop.stats.applied >= h.parent.length
    }
    const end = s.at + TAKEOVER_MS
    for (;;) {
      while (!applied()) {
        if (Date.now() > end || node.closing) {
          throw MeshError.HANDOVER_FAILED(
            `${node.opts.site} did not apply the ${h.parent.length} sealed entries in time`
          )
        }
        await sleep(50)
      }
      try {
        return await node.roles.enqueue(h.dataset, () => this.promoteNow(h.dataset, false, s))
      } catch (err) {
        // The replica's database lost its last units in a restart (promoteNow's flush found it): they are applied
        // again, then the handover goes on.
        if ((err as MeshError).code !== 'REPLICA_BEHIND' || Date.now() > end || node.closing) throw err
      }
    }
  }

  /** See promote(); with `handover`, the old origin's consent for this site to start the epoch at its seal. */
  async promoteNow(id: string, force: boolean, handover: Statement | null = null): Promise<PromoteResult> {
    const node = this.node
    const roles = node.roles
    const site = node.opts.site
    const head = node.state.datasets.find((d) => d.id === id)!
    if (roles.origins.has(id) || node.key.equals(Buffer.from(head.origin))) {
      throw MeshError.ALREADY_ORIGIN(`${site} is already the origin of ${head.name} (epoch ${head.epoch})`)
    }
    const r = roles.replicas.get(id)
    if (!r) {
      throw MeshError.REPLICA_NOT_READY(`${site} does not hold a copy of ${head.name} yet`, {
        hint: 'Wait until `mesh status` shows this site holding the dataset, then run the command again.'
      })
    }
    // Healthy: a new report of its own reached this site, directly or through another site, within three
    // heartbeats (a killed site's connection looks open for a while; its reports stop at once), and it
    // reports capturing without an error. --force does not override this: a live origin is never rewound
    // without its consent (mesh handover); every other site would refuse the promotion anyway (trust.ts).
    const heard = node.reports.lastHeard(head.origin)
    if (handover === null && Date.now() - heard < 3 * (node.opts.heartbeatMs ?? 5000)) {
      const reported = node.reports.originReported(head)
      if (reported && reported.error === '') {
        // Right after a crash the origin still looks healthy: say when it will count as lost.
        const lostAfter = 3 * (node.opts.heartbeatMs ?? 5000)
        const ago = Date.now() - heard
        const wait = Math.max(1, Math.ceil((lostAfter - ago) / 1000))
        throw MeshError.ORIGIN_HEALTHY(
          `${head.originSite}, the origin of ${head.name}, is reachable and capturing: its last report was ` +
            `${Math.round(ago / 1000)} s ago; a lost origin is seen as lost after ${Math.round(lostAfter / 1000)} s ` +
            `without one: if ${head.originSite} is down, try again in ${wait} s`,
          {
            context: { lastReportMs: ago, lostAfterMs: lostAfter, retryInSeconds: wait },
            hint:
              `Promote only when the origin is lost. To move ${head.name} here on purpose (a planned switch), ` +
              `run mesh handover ${head.name} --to ${site} at ${head.originSite}: it stops its writes there, ` +
              'seals its log and hands over with nothing lost.'
          }
        )
      }
    }
    // What this site holds of the log is applied in moments: give it that time before judging.
    const until = Date.now() + 10_000
    while (r.loop.stats.applied < r.log.core.contiguousLength && !r.loop.stats.stopped && Date.now() < until)
      await sleep(50)
    const applied = r.loop.stats.applied
    let best = { length: r.log.core.contiguousLength, site }
    for (const p of node.control.ready()) {
      const h = node.reports.signed
        .get(hex(p.key))
        ?.report.holdings.find((x) => x.dataset === id && sameBytes(x.log, head.log))
      if (h && h.downloaded > best.length) best = { length: h.downloaded, site: p.site }
    }
    if (!force && applied < best.length) {
      throw MeshError.REPLICA_BEHIND(
        `${site} applied ${applied} of the ${count(best.length, 'entry', 'entries')} of ${head.name} that ` +
          `${best.site === site ? 'it holds' : `${best.site} holds`}`,
        { context: { applied, held: best.length, by: best.site } }
      )
    }
    if (!force && r.side.state() !== 'ready') {
      throw MeshError.REPLICA_NOT_READY(
        `${site}'s copy of ${head.name} is still in its initial copy (${r.side.state()})`
      )
    }
    await r.loop.stop()
    // What the promotion keeps must be in the database for good before anything names it (the new log's
    // parent, the saved state): a PostgreSQL replica commits asynchronously, so its last units are flushed,
    // and its position read back (a server that restarted unseen may have lost them).
    const believed = r.loop.stats.applied
    try {
      await r.side.flush?.()
    } catch (err) {
      await r.loop.start()
      throw err
    }
    if (r.loop.appliedOnHead() < believed) {
      const now = r.loop.appliedOnHead()
      await r.loop.start()
      throw MeshError.REPLICA_BEHIND(
        `${site}'s replica database restarted and lost the last ${believed - now} entries it had applied of ` +
          `${head.name} (it stands at ${now}); they are being applied again from the log`,
        {
          context: { applied: now, held: believed, by: site },
          hint: 'Run the command again in a few seconds, once `mesh status` shows them applied.'
        }
      )
    }
    const pos = r.side.position()
    if (pos === null) {
      await r.loop.start()
      throw MeshError.REPLICA_NOT_READY(`${site} has applied nothing of ${head.name} yet`, {
        hint: 'Wait until `mesh status` shows this site holding the dataset, then run the command again.'
      })
    }
    if (handover) {
      const h = decodeHandover(handover.body)
      if (!sameBytes(pos.log, h.parent.key) || pos.length !== h.parent.length) {
        await r.loop.start()
        throw MeshError.HANDOVER_FAILED(
          `${site} stands at ${pos.length} of another log than the ${count(h.parent.length, 'entry', 'entries')} ` +
            `${head.originSite} sealed`
        )
      }
    }
    await roles.closeReplica(r)
    const epoch = head.epoch + 1
    const name = `${logName(id, epoch)}/${Date.now()}`
    const log = await node.createLog(name)
    const local = roles.localOf(head)
    // The signed promotion every site checks before following (trust.ts); it goes into the new log's header.
    const statement = signStatement(
      StatementKind.promotion,
      node.state.meshId,
      node.keyPair,
      encodePromotion({
        dataset: id,
        name: head.name,
        engine: head.engine,
        epoch,
        log: log.key,
        parent: { key: pos.log, length: pos.length },
        site,
        handover,
        forced: force
      })
    )
    const w: WrittenLog = {
      epoch,
      key: log.key,
      name,
      parent: { key: pos.log, length: pos.length },
      promotion: Buffer.from(encodeStatement(statement)).toString('hex')
    }
    local.written.push(w)
    const info: DatasetInfo = { ...head, origin: node.key, originSite: site, epoch, log: log.key }
    node.state.datasets = node.state.datasets.map((d) => (d.id === id ? info : d))
    node.saveState()
    await roles.openOrigin(info, local, w)
    await node.statements.publish(statement)
    node.control.broadcast((p) => p.send('datasets', node.state.datasets))
    node.reports.markDirty()
    const parentSite = r.info.originSite
    const shown = engineFor(head.engine).shown(local.path)
    node.logger.warn('promoted: this site is now the origin', {
      dataset: head.name,
      epoch,
      from: parentSite,
      branch: pos.length,
      path: shown,
      handover: handover !== null
    })
    return {
      dataset: head.name,
      id,
      epoch,
      path: shown,
      previousOrigin: parentSite,
      branch: pos.length,
      forced: force,
      handover: handover !== null
    }
  }

  /**
   * A newer epoch exists and this site is still capturing: stop, keep what this site wrote past the branch
   * point (divergence folder), rebuild the database to where the newest epoch began, and follow it.
   */
  async fence(o: Origin, head: DatasetInfo, local: LocalDataset): Promise<void> {
    const node = this.node
    const name = o.info.name
    const engine = engineFor(head.engine)
    node.logger.warn('a newer epoch of this dataset took over elsewhere: this site stops taking its writes', {
      dataset: name,
      epoch: o.info.epoch,
      newEpoch: head.epoch,
      newOrigin: head.originSite
    })
    // The newest epoch's history first (its logs' headers may have to come from peers); capture goes on
    // meanwhile, and whatever it takes lands in the divergence.
    const chain = await resolveChain(head, (k) => node.openLog(k))
    await o.loop.stop()
    let uncaptured = false
    try {
      // The last committed changes go into this site's log too, so the divergence has every one of them.
      while ((await o.loop.step()) > 0) {}
    } catch (err) {
      uncaptured = true
      node.logger.error(
        'could not capture the last changes; they are kept in the copy of the database taken before rebuilding',
        {
          dataset: name,
          error: (err as Error).message
        }
      )
    }
    node.roles.origins.delete(o.info.id)
    node.reports.markDirty()
    // Where the newest epoch's chain leaves this site's log; all of it past the header if it is not in it.
    const from = chain.find((x) => sameBytes(x.log.key, o.log.key))?.end ?? 1
    let to = o.log.length
    const tail = to > 1 ? await o.log.entry(to - 1, { wait: false }) : null
    if (tail?.kind === 'fence') to--
    else await o.log.appendUnit([{ kind: 'fence', epoch: head.epoch, log: head.log, length: from }])
    // The tables the fenced database's capture carried: a rebuild that empties the database replaces those only.
    const carried = o.side.carried?.() ?? null
    await o.side.close()
    if (to > from || uncaptured) {
      const stamp = new Date().toISOString().replace(/[-:]/g, '').replace(/\..*/, '')
      // A fence that was interrupted before the rebuild is done again into the same folder.
      const again = local.divergences.find(
        (x) => x.epoch === o.info.epoch && x.fencedBy === head.epoch && fs.existsSync(x.dir)
      )
      const dir =
        again?.dir ?? path.join(node.paths.dir, 'divergence', `${fileSafe(name)}-epoch${o.info.epoch}-${stamp}`)
      fs.mkdirSync(dir, { recursive: true, mode: 0o700 })
      const kept = await engine.keepCopy(local.path, dir, node.opts.site)
      const changes = await writeDivergence({
        log: o.log,
        from,
        to,
        dir,
        dataset: { id: head.id, name },
        site: node.opts.site,
        epoch: o.info.epoch,
        fencedBy: { epoch: head.epoch, site: head.originSite, log: head.log },
        engine,
        kept
      })
      if (again) Object.assign(again, { changes, at: Date.now() })
      else local.divergences.push({ epoch: o.info.epoch, fencedBy: head.epoch, dir, changes, at: Date.now() })
      node.saveState()
      node.logger.warn('fenced: the changes this site made after the new epoch began are kept, not applied', {
        dataset: name,
        changes,
        divergence: dir,
        hint:
          `Review ${path.join(dir, 'changes.sql')} and re-enter what is needed at ${head.originSite}; ` +
          `then delete the folder.`
      })
    } else {
      node.logger.info('fenced: this site made no changes after the new epoch began', { dataset: name })
    }
    await node.roles.follow(head, local, true, carried)
  }

  /**
   * Rebuilds `where` to the state where the newest epoch began: replays every earlier epoch's log, up to its
   * branch point, into a scratch database, then puts its contents in place in one transaction.
   */
  async rebuild(head: DatasetInfo, chain: ChainSegment[], where: string): Promise<void> {
    const node = this.node
    const engine = engineFor(head.engine)
    const sealed = chain.slice(0, -1)
    const last = sealed[sealed.length - 1]
    const started = Date.now()
    const scratch = await engine.scratch(where, head.id, 'rebuild', node.paths.replicas)
    const side = engine.openApply(scratch.where, { dataset: head.id, logger: node.logger })
    try {
      const loop = new ApplyLoop({
        segments: sealed.length > 0 ? sealed : chain.slice(0, 1),
        apply: side,
        logger: node.logger
      })
      await side.open()
      const total = sealed.reduce((n, s) => n + (s.end ?? 0), 0)
      let lastLog = 0
      while (last !== undefined && !node.closing) {
        await loop.catchUp()
        const pos = side.position()
        if (pos !== null && sameBytes(pos.log, last.log.key) && pos.length === last.end) break
        if (Date.now() - lastLog > 5000) {
          lastLog = Date.now()
          node.logger.info('rebuilding: waiting for blocks of an earlier epoch from peers', {
            dataset: head.name,
            total
          })
        }
        await sleep(200)
      }
      if (node.closing) throw MeshError.CLOSED('the node is stopping')
      await side.close()
      await engine.repair(where, scratch.where, null)
      node.logger.info('rebuilt to the state where the newest epoch began', {
        dataset: head.name,
        epoch: head.epoch,
        blocks: total,
        ms: Date.now() - started
      })
    } finally {
      await side.close().catch(() => {})
      await scratch.drop()
    }
  }
}
