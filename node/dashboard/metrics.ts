/**
 * Prometheus metrics (prom-client) at `/metrics` on the dashboard's listener: the status as this site sees it,
 * in base units (seconds, bytes), timestamps as Unix seconds, one registry per dashboard (never prom-client's
 * global one, so two dashboards in one process never mix).
 *
 * Each scrape sets every gauge afresh from one status: a site or dataset that left the mesh leaves the output.
 * Verdicts are numbers, 0 OK, 1 WARN, 2 CRIT, as `mesh status` exits.
 */
import { Counter, Gauge, Registry } from 'prom-client'
import type { SiteStatus, Verdict } from '../status.ts'
import type { DashboardView } from './view.ts'

const LEVEL: Record<Verdict, number> = { OK: 0, WARN: 1, CRIT: 2 }

export class DashboardMetrics {
  readonly registry = new Registry()
  readonly badTokens: Counter<string>
  private readonly gauges: Array<Gauge<string>> = []

  constructor() {
    this.badTokens = new Counter({
      name: 'branchmesh_dashboard_bad_token_requests_total',
      help: 'Dashboard requests refused for a wrong token since this dashboard started.',
      registers: [this.registry]
    })
  }

  private gauge(name: string, help: string, labelNames: string[] = []): Gauge<string> {
    const g = new Gauge({ name, help, labelNames, registers: [this.registry] })
    this.gauges.push(g)
    return g
  }

  private readonly verdict = this.gauge('branchmesh_verdict', "This site's verdict: 0 OK, 1 WARN, 2 CRIT.", ['site'])
  private readonly reasons = this.gauge('branchmesh_reasons', 'Reasons for the verdict, by level.', ['level'])
  private readonly siteVerdict = this.gauge(
    'branchmesh_site_verdict',
    "Each site's verdict as seen here (the reasons that name it): 0 OK, 1 WARN, 2 CRIT.",
    ['site', 'role']
  )
  private readonly connected = this.gauge('branchmesh_site_connected', '1 when the site is connected here now.', [
    'site'
  ])
  private readonly lastContact = this.gauge(
    'branchmesh_site_last_contact_timestamp_seconds',
    'When the site last wrote a report that reached here (its clock).',
    ['site']
  )
  private readonly diskFree = this.gauge('branchmesh_site_disk_free_bytes', 'Free space on a disk the site uses.', [
    'site',
    'disk'
  ])
  private readonly diskSize = this.gauge('branchmesh_site_disk_size_bytes', 'Size of a disk the site uses.', [
    'site',
    'disk'
  ])
  private readonly info = this.gauge('branchmesh_site_info', 'What the site runs (always 1).', [
    'site',
    'branchmesh',
    'nodejs',
    'os'
  ])
  private readonly lagSeconds = this.gauge(
    'branchmesh_lag_seconds',
    "Seconds of the origin's writes a copy lacks (at the origin: its capture lag).",
    ['dataset', 'site']
  )
  private readonly lagEntries = this.gauge('branchmesh_lag_entries', 'Log blocks a copy has not applied yet.', [
    'dataset',
    'site'
  ])
  private readonly lagBytes = this.gauge('branchmesh_lag_bytes', 'Log bytes a copy has not applied yet.', [
    'dataset',
    'site'
  ])
  private readonly logEntries = this.gauge('branchmesh_dataset_log_entries', "Blocks in the newest epoch's log.", [
    'dataset'
  ])
  private readonly logBytes = this.gauge('branchmesh_dataset_log_bytes', "Bytes in the newest epoch's log.", [
    'dataset'
  ])
  private readonly epoch = this.gauge('branchmesh_dataset_epoch', "The dataset's newest epoch.", ['dataset', 'origin'])
  private readonly copies = this.gauge(
    'branchmesh_dataset_copies',
    'Sites other than the origin that hold the newest write.',
    ['dataset']
  )
  private readonly lastWrite = this.gauge(
    'branchmesh_dataset_last_write_timestamp_seconds',
    'Origin commit time of the newest write.',
    ['dataset']
  )
  private readonly datasetVerdict = this.gauge(
    'branchmesh_dataset_verdict',
    "Each dataset's verdict as seen here: 0 OK, 1 WARN, 2 CRIT.",
    ['dataset']
  )
  private readonly snapshots = this.gauge('branchmesh_dataset_snapshots', 'Snapshots this site keeps.', ['dataset'])
  private readonly divergent = this.gauge(
    'branchmesh_dataset_divergent_changes',
    'Changes kept aside here by a fence, waiting for review.',
    ['dataset']
  )
  private readonly massChanges = this.gauge(
    'branchmesh_dataset_mass_changes',
    'Units this site saw delete or change a large share of a table (kept a week).',
    ['dataset']
  )
  private readonly checkpointOk = this.gauge(
    'branchmesh_dataset_checkpoint_ok',
    "Whether this copy matched the origin's last checkpoint (1) or not (0).",
    ['dataset']
  )
  private readonly verifyOk = this.gauge(
    'branchmesh_dataset_verify_ok',
    'Whether the last mesh verify here found this copy equal to the log (1) or not (0).',
    ['dataset']
  )

  /** The metrics in Prometheus' text format, from one view of the status. */
  async render(view: DashboardView): Promise<string> {
    for (const g of this.gauges) g.reset()
    const s: SiteStatus = view.status
    this.verdict.set({ site: s.site }, LEVEL[s.verdict])
    for (const level of ['WARN', 'CRIT'] as const)
      this.reasons.set({ level }, s.reasons.filter((r) => r.level === level).length)
    for (const m of s.members) {
      this.siteVerdict.set({ site: m.site, role: m.role }, LEVEL[view.sites[m.key]?.verdict ?? 'OK'])
      this.connected.set({ site: m.site }, m.self || m.connected ? 1 : 0)
      if (m.lastContact !== null) this.lastContact.set({ site: m.site }, m.lastContact / 1000)
      const h = m.health
      if (!h) continue
      this.info.set({ site: m.site, branchmesh: h.branchmesh, nodejs: h.node, os: h.os }, 1)
      for (const d of h.disks) {
        this.diskFree.set({ site: m.site, disk: d.path }, d.free)
        this.diskSize.set({ site: m.site, disk: d.path }, d.total)
      }
    }
    for (const d of s.datasets) {
      const dataset = d.name
      this.logEntries.set({ dataset }, d.length)
      this.logBytes.set({ dataset }, d.bytes)
      this.epoch.set({ dataset, origin: d.originSite }, d.epoch)
      this.copies.set({ dataset }, d.heldBy)
      if (d.lastWriteAt !== null) this.lastWrite.set({ dataset }, d.lastWriteAt / 1000)
      this.datasetVerdict.set({ dataset }, LEVEL[view.datasets[d.id]?.verdict ?? 'OK'])
      this.snapshots.set({ dataset }, d.snapshots.count)
      this.divergent.set(
        { dataset },
        d.divergences.reduce((n, x) => n + x.changes, 0)
      )
      this.massChanges.set({ dataset }, d.damage.length)
      if (d.checkpoint) this.checkpointOk.set({ dataset }, d.checkpoint.ok ? 1 : 0)
      if (d.verified) this.verifyOk.set({ dataset }, d.verified.ok ? 1 : 0)
      for (const h of d.holders) {
        if (h.lagSeconds !== null) this.lagSeconds.set({ dataset, site: h.site }, h.lagSeconds)
        if (h.lagEntries !== null) this.lagEntries.set({ dataset, site: h.site }, h.lagEntries)
        if (h.lagBytes !== null) this.lagBytes.set({ dataset, site: h.site }, h.lagBytes)
      }
    }
    return this.registry.metrics()
  }
}
