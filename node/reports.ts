/**
 * Reports: what each site says of itself (how far it holds and has applied each dataset, its errors, its
 * peers), signed with its key, sent on every change and at least every heartbeat, relayed by every member, and
 * kept (reports.json) so that `mesh status` can speak with the node stopped. When a newer report of a site
 * last arrived is how this site knows that site is alive.
 */
import { createRequire } from 'node:module'
import { sameBytes, signReport, verifyReport, type Holding, type Notice, type SignedReport } from '../protocol/index.ts'
import type { DatasetInfo } from '../protocol/index.ts'
import type { Peer } from './control.ts'
import { readDataKey } from './datakeys.ts'
import type { MeshNode } from './node.ts'
import { damagedSnapshots, listSnapshots } from './snapshots.ts'
import {
  readMeshState,
  readReports,
  readSiteKey,
  sitePaths,
  withoutReviewed,
  writeReports,
  type MeshState
} from './state.ts'
import { buildStatus, DEFAULT_THRESHOLDS, NOTICE_MS, type SiteStatus, type StatusThresholds } from './status.ts'
import { readContacts } from './usual-hours.ts'
import { hex } from './util.ts'

const require = createRequire(import.meta.url)
const { MerkleTree } = require('hypercore/lib/merkle-tree') as {
  MerkleTree: { byteOffset(state: unknown, index: number): Promise<number> }
}

/** Under an up budget, reports sent for changes that keep coming: at most one in this long (ms). */
const REPORT_GAP_MS = 1000
/** With an up budget, changes are reported at most as often as keeps reports under this share of it. */
const REPORT_SHARE = 0.05

export class Reports {
  /** The newest signed report of every site, this one included, by key (hex). */
  readonly signed = new Map<string, SignedReport>()
  /** When a newer report of each site last arrived, directly or relayed (this site's clock). */
  private readonly heardAt = new Map<string, number>()
  private dirty = false
  private timer: NodeJS.Timeout | null = null
  private saveTimer: NodeJS.Timeout | null = null
  private heartbeat: NodeJS.Timeout | null = null

  constructor(private readonly node: MeshNode) {}

  /** Loads the reports kept on disk; those whose signature fails are left out. */
  load(): void {
    for (const r of readReports(this.node.paths)) if (verifyReport(r)) this.signed.set(hex(r.report.site), r)
  }

  start(heartbeatMs: number): void {
    this.heartbeat = setInterval(() => this.send(), heartbeatMs)
    this.markDirty()
  }

  /** When a new report of the site with this key last reached this site (0: never since the node started). */
  lastHeard(key: Uint8Array): number {
    return this.heardAt.get(hex(key)) ?? 0
  }

  /**
   * Something this site reports changed: send a new report soon, 100 ms after the first change; under a budget
   * (link.upKbps), while changes keep coming (a catch-up's progress, a busy origin's appends), at most once a
   * second, or less often where the budget is small (reportGapMs). A report every 100 ms took 40 % of a 64 kbit/s
   * uplink during a catch-up.
   */
  markDirty(): void {
    this.dirty = true
    if (this.timer || this.node.closing) return
    const wait = Math.max(100, this.lastSentAt + this.reportGapMs() - Date.now())
    this.timer = setTimeout(() => {
      this.timer = null
      if (this.dirty) this.send()
    }, wait)
  }

  private lastSentAt = 0
  /** The bytes of this site's last report as sent (body and signature). */
  private lastBytes = 0

  /**
   * The least time between two reports sent for changes (the heartbeat sends regardless): 100 ms without an up
   * budget; with one, a second, or as long as it takes for the report, sent to every connected peer, to use
   * REPORT_SHARE of the budget.
   */
  private reportGapMs(): number {
    const up = this.node.traffic.upBps
    // Without a budget the line is taken to be fast: every change is reported within 100 ms, as commands that
    // read other sites' reports right after a change (handover, verify's hints) expect.
    if (!up) return 100
    const bits = this.lastBytes * 8 * Math.max(1, this.node.control.ready().length)
    return Math.max(REPORT_GAP_MS, Math.round((bits * 1000) / (up * REPORT_SHARE)))
  }

  /** A report from a peer: kept and relayed when it is a member's, correctly signed, and newer than the one held. */
  receive(from: Peer, m: SignedReport): void {
    const node = this.node
    // A removed site's last report (or one under a key rotated away), still relayed by a site that held it.
    if (node.membership.isRemoved(m.report.site)) return
    if (!node.admission.isMember(m.report.site) || !verifyReport(m)) {
      node.logger.warn('dropped a report with a bad signature', { from: from.site })
      return
    }
    if (node.key.equals(m.report.site)) return
    const k = hex(m.report.site)
    const have = this.signed.get(k)
    if (have && have.report.at >= m.report.at) return
    this.signed.set(k, m)
    // A newer report than any before, directly or relayed: that site was alive a moment ago.
    this.heardAt.set(k, Date.now())
    node.health.heard(m.report.site)
    node.control.broadcast((p) => p.send('report', m), from)
    node.emit('report', m.report)
    this.scheduleSave()
  }

  /** A new peer gets this site's report and every other it holds. */
  sendAllTo(peer: Peer): void {
    this.build()
      .then(() => {
        for (const r of this.signed.values()) peer.send('report', r)
      })
      .catch((err) => this.node.logger.warn('cannot build a report', { error: (err as Error).message }))
  }

  /** The origin's own report of a dataset's log, if one has reached this site. */
  originReported(info: DatasetInfo): Holding | null {
    const r = this.signed.get(hex(info.origin))
    return r?.report.holdings.find((h) => h.dataset === info.id && sameBytes(h.log, info.log)) ?? null
  }

  /** The sites whose latest report says they hold an applied copy of the dataset (not its origin), by name. */
  holdersOf(info: DatasetInfo): string[] {
    const out: string[] = []
    for (const r of this.signed.values()) {
      if (sameBytes(r.report.site, info.origin)) continue
      if (r.report.holdings.some((h) => h.dataset === info.id && h.applied > 0)) out.push(r.report.siteName)
    }
    return out.sort()
  }

  /** The whole picture: what `mesh status` prints. */
  async status(now = Date.now()): Promise<SiteStatus> {
    const node = this.node
    await this.build()
    return buildStatus({
      self: node.key,
      site: node.opts.site,
      state: withoutReviewed(node.state),
      reports: [...this.signed.values()].map((r) => r.report),
      connected: new Set(node.control.ready().map((p) => hex(p.key))),
      running: true,
      refused: node.admission.refused,
      now,
      thresholds: node.opts.thresholds ?? DEFAULT_THRESHOLDS,
      dataKeys: node.state.datasets.filter((d) => node.dataKeys.get(d.id) !== null).map((d) => d.id),
      snapshots: snapshotSummary(node.paths.dir, node.state),
      contacts: node.health.history()
    })
  }

  close(): void {
    for (const t of [this.timer, this.saveTimer, this.heartbeat]) if (t) clearTimeout(t)
    try {
      writeReports(this.node.paths, [...this.signed.values()])
    } catch {
      // Not worth failing a shutdown over: status reads what the last save wrote.
    }
  }

  private send(): void {
    if (this.node.closing) return
    this.dirty = false
    this.lastSentAt = Date.now()
    this.node.logger.debug('report sent', { peers: this.node.control.ready().length })
    this.build()
      .then((r) => this.node.control.broadcast((p) => p.send('report', r)))
      .catch((err) => this.node.logger.warn('cannot build a report', { error: (err as Error).message }))
  }

  private scheduleSave(): void {
    if (this.saveTimer) return
    this.saveTimer = setTimeout(() => {
      this.saveTimer = null
      try {
        writeReports(this.node.paths, [...this.signed.values()])
      } catch (err) {
        this.node.logger.warn('cannot save reports', { error: (err as Error).message })
      }
    }, 1000)
  }

  private async build(): Promise<SignedReport> {
    const node = this.node
    const report = signReport(
      {
        site: node.key,
        siteName: node.opts.site,
        at: Date.now(),
        holdings: await this.holdings(),
        peers: node.control.ready().map((p) => p.key),
        software: node.opts.software,
        notices: [...this.notices(), ...node.alarms.notices(), ...node.alerts.notices(), ...this.linkNotices()],
        health: node.health.report()
      },
      node.keyPair.secretKey
    )
    this.signed.set(hex(node.key), report)
    this.lastBytes = report.body.byteLength + report.signature.byteLength
    this.scheduleSave()
    return report
  }

  /** This site's lossy links (node/traffic.ts): a WARN at every site while they last. */
  private linkNotices(): Notice[] {
    const at = Date.now()
    return this.node.traffic.lossyLinks().map((l) => ({ dataset: '', kind: 'link', at, seq: 0, text: l.text }))
  }

  /** The whole copies this site appended again as an origin in the last week, for every site to show. */
  private notices(): Notice[] {
    const since = Date.now() - NOTICE_MS
    const out: Notice[] = []
    for (const l of this.node.state.local) {
      for (const x of l.copies ?? []) {
        if (x.at >= since) out.push({ dataset: l.dataset, kind: x.kind, at: x.at, seq: x.seq, text: x.why })
      }
    }
    return out
  }

  private async holdings(): Promise<Holding[]> {
    const node = this.node
    const roles = node.roles
    const out: Holding[] = []
    for (const o of roles.origins.values()) {
      const core = o.log.core
      const err = o.error ?? o.loop.stats.lastError
      // What the database committed that the log does not hold yet; unknown (null) when it cannot be read.
      const captureLag = o.side.lag && o.loop.active ? await within(o.side.lag(), 1000) : null
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
        damaged: 0,
        captureLag,
        ...(node.opts.batchMs ? { batchSeconds: node.opts.batchMs / 1000 } : {})
      })
    }
    for (const [id, e] of roles.settleErrors) {
      const info = node.state.datasets.find((d) => d.id === id)
      if (!info || roles.replicas.has(id) || roles.origins.has(id)) continue
      // The log may still be held here (a dataset with no warm copy at this site): say how much of it.
      const core = node.heldLog(info.log)?.core
      out.push({
        dataset: id,
        log: info.log,
        epoch: info.epoch,
        length: core?.length ?? 0,
        byteLength: core?.byteLength ?? 0,
        downloaded: core?.contiguousLength ?? 0,
        applied: 0,
        appliedBytes: 0,
        lastWriteAt: 0,
        appliedWriteAt: 0,
        error: e.code,
        errorMessage: e.message,
        damaged: 0
      })
    }
    out.push(...node.blind.holdings())
    for (const r of roles.replicas.values()) {
      const core = r.log.core
      const applied = r.loop.stats.applied
      let err: { code: string; message: string } | null = r.loop.stats.lastError
      if (!err && r.side.writtenByOthers?.()) {
        err = {
          code: 'REPLICA_WRITTEN',
          message:
            `another program wrote to this site's copy (${r.path}); those writes are not protected and ` +
            `the next changes from ${r.info.originSite} may overwrite them: point the application at the ` +
            `origin`
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
        appliedBytes: await appliedBytes(core, applied),
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
}

/** What `p` resolves to, or null when it fails or takes longer than `ms` (a report never waits on a database). */
async function within<T>(p: Promise<T>, ms: number): Promise<T | null> {
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<null>((resolve) => (timer = setTimeout(() => resolve(null), ms)))
  try {
    return await Promise.race([p.catch(() => null), late])
  } finally {
    clearTimeout(timer)
  }
}

/**
 * The log bytes up to block `applied`. hypercore keeps no byte offset per block; its merkle tree gives one,
 * but in 11.37.1 it returns NaN for any position past the tree's first root. Then the figure is an estimate
 * in proportion to blocks.
 */
async function appliedBytes(core: { length: number; byteLength: number }, applied: number): Promise<number> {
  let bytes =
    applied >= core.length ? core.byteLength : Math.floor((core.byteLength * applied) / Math.max(1, core.length))
  if (applied > 0 && applied < core.length) {
    try {
      const off = await MerkleTree.byteOffset((core as unknown as { state: unknown }).state, 2 * applied)
      if (Number.isSafeInteger(off) && off >= 0) bytes = off
    } catch {
      // Keep the estimate.
    }
  }
  return bytes
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
    dataKeys: state.datasets.filter((d) => readDataKey(dir, d.id) !== null).map((d) => d.id),
    snapshots: snapshotSummary(dir, state),
    contacts: readContacts(dir)
  })
}

/** How many snapshots this site keeps of each dataset, and when the newest was taken. */
function snapshotSummary(
  dir: string,
  state: MeshState
): Record<string, { count: number; newestAt: number | null; damaged: string[] }> {
  const out: Record<string, { count: number; newestAt: number | null; damaged: string[] }> = {}
  for (const d of state.datasets) {
    const list = listSnapshots(dir, d.id)
    out[d.id] = {
      count: list.length,
      newestAt: list.length ? list[list.length - 1].at : null,
      damaged: damagedSnapshots(dir, d.id)
    }
  }
  return out
}
