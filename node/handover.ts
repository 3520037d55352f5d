/**
 * `mesh handover DATASET --to SITE`, at the origin: a planned switch in which nothing diverges and no one needs
 * --force. The origin (1) stops taking writes (the engine's holdWrites: SQLite installs the replica guard on the
 * live file), (2) captures what is still pending, (3) seals its log at length L, (4) signs a handover (its
 * consent that SITE starts the next epoch exactly at L) and publishes it; (5) the named site applies exactly L
 * and starts its epoch with a promotion carrying that handover (failover.ts, takeOver); this site sees its own
 * consent and follows, with nothing to keep aside.
 *
 * If the named site does not take over within the timeout, the handover is withdrawn here (a promotion carrying
 * it is refused at this site from then on), writes are allowed again and capture resumes. The withdrawal is
 * this site's memory only (not kept across a restart) and no other site hears of it: one that already followed
 * a late take-over is told by this site's ORIGIN_LIVE alarm. An engine that cannot stop writes (PostgreSQL here)
 * is refused rather than handed over with writes still coming in.
 */
import { MeshError, StatementKind, encodeHandover, sameBytes, signStatement, statementId } from '../protocol/index.ts'
import { engineFor } from '../adapters/index.ts'
import { findDataset } from './history.ts'
import type { MeshNode } from './node.ts'
import { HANDOVER_MIN_MS, Trust } from './trust.ts'

/** How long a handover waits for the named site's report to show its copy (ms). */
const REPORT_WAIT_MS = 2500

export interface HandoverResult {
  dataset: string
  /** The epoch the named site started. */
  epoch: number
  to: string
  /** The length this site sealed its log at, where the new epoch starts. */
  sealedAt: number
  /** What was done, in order, with the milliseconds since the command started. */
  steps: Array<{ step: string; ms: number }>
  /** This site's database, a guarded replica now. */
  path: string
}

export async function handover(
  node: MeshNode,
  dataset: string,
  toSite: string,
  timeoutMs = 60_000
): Promise<HandoverResult> {
  const started = Date.now()
  // Longer than the named site may take (trust.ts, TAKEOVER_MS): no take-over after this site took writes again.
  timeoutMs = Math.max(timeoutMs, HANDOVER_MIN_MS)
  const steps: HandoverResult['steps'] = []
  const step = (s: string) => {
    steps.push({ step: s, ms: Date.now() - started })
    node.logger.info(`handover: ${s}`, { dataset })
  }
  const head = findDataset(node.state.datasets, dataset)
  const refuse = (msg: string, hint: string) => MeshError.HANDOVER_FAILED(msg, { hint, retryable: false })
  const o = node.roles.origins.get(head.id)
  if (!o || !sameBytes(o.log.key, head.log)) {
    throw refuse(
      `${node.opts.site} is not the origin of ${head.name}: ${head.originSite} is`,
      `Run mesh handover ${head.name} --to ${toSite} at ${head.originSite}.`
    )
  }
  const to = node.state.members.find((m) => m.site === toSite)
  if (!to) throw refuse(`no member of the mesh is named ${toSite}`, 'Run `mesh status` to see the sites, and name one.')
  if (node.key.equals(Buffer.from(to.key))) {
    throw refuse(`${toSite} is this site, already the origin`, 'Name the site that should take the writes.')
  }
  const may = node.policy.mayPromote(head.id, to.key)
  if (!may.ok) throw refuse(may.reason, 'Name a full member of the mesh.')
  if (!node.control.ready().some((p) => p.key.equals(Buffer.from(to.key)))) {
    throw refuse(
      `${toSite} is not connected to this site`,
      'Start its node, wait until `mesh status` shows it, and run the command again.'
    )
  }
  const holds = () =>
    node.reports.signed
      .get(Buffer.from(to.key).toString('hex'))
      ?.report.holdings.some((h) => h.dataset === head.id && sameBytes(h.log, head.log) && h.error === '')
  // Its copy may be newer than its last report: a site reports changes at most once a second while they keep
  // coming (node/reports.ts). Waited for a little longer than that before refusing.
  for (const until = Date.now() + REPORT_WAIT_MS; !holds() && Date.now() < until; ) {
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  if (!holds()) {
    throw refuse(
      `${toSite} holds no working copy of ${head.name}`,
      'Wait until `mesh status` shows it holding the dataset.'
    )
  }
  if (!o.side.holdWrites) {
    throw refuse(
      `the ${head.engine} engine cannot stop the application's writes here, so a handover could lose some`,
      'Stop the application, wait until `mesh status` shows the site caught up, stop this node, then run ' +
        `mesh promote ${head.name} at ${toSite}.`
    )
  }
  const epoch = head.epoch + 1
  const { sealed, id } = await node.roles.enqueue(head.id, async () => {
    if (node.roles.origins.get(head.id) !== o)
      throw refuse(`${head.name} changed origin meanwhile`, 'Run `mesh status`.')
    o.side.holdWrites!(true)
    step('writes stopped')
    try {
      await o.loop.stop()
      let n = 0
      for (let k = await o.loop.step(); k > 0; k = await o.loop.step()) n += k
      step(`captured what was pending (${n})`)
    } catch (err) {
      o.side.holdWrites!(false)
      await o.loop.start().catch(() => {})
      throw MeshError.wrap(err, MeshError.HANDOVER_FAILED, 'could not capture the last changes')
    }
    const L = o.log.length
    step(`log sealed at ${L}`)
    const s = signStatement(
      StatementKind.handover,
      node.state.meshId,
      node.keyPair,
      encodeHandover({ dataset: head.id, epoch, parent: { key: o.log.key, length: L }, to: to.key, toSite })
    )
    await node.statements.publish(s)
    step(`handover to ${toSite} signed and sent`)
    return { sealed: L, id: statementId(s) }
  })
  const taken = () => {
    const d = node.state.datasets.find((x) => x.id === head.id)
    return d !== undefined && d.epoch >= epoch && sameBytes(d.origin, to.key)
  }
  if (await Trust.until(taken, timeoutMs, () => node.closing)) {
    step(`${toSite} started epoch ${epoch}`)
    // This site's fence (no divergence: nothing was written past the seal) runs in the dataset's queue.
    await node.roles.enqueue(head.id, async () => {})
    step('this site follows it')
    return {
      dataset: head.name,
      epoch,
      to: toSite,
      sealedAt: sealed,
      steps,
      path: engineFor(head.engine).shown(o.path)
    }
  }
  node.trust.withdrawn.add(id)
  await node.roles.enqueue(head.id, async () => {
    if (node.roles.origins.get(head.id) !== o) return
    o.side.holdWrites!(false)
    await o.loop.start()
  })
  node.logger.warn('handover: the named site did not take over in time; this site takes writes again', {
    dataset: head.name,
    to: toSite
  })
  throw MeshError.HANDOVER_FAILED(
    `${toSite} did not start epoch ${epoch} of ${head.name} within ${Math.round(timeoutMs / 1000)} s; the ` +
      `handover is withdrawn and ${node.opts.site} takes writes again`
  )
}
