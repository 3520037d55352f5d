/**
 * What the dashboard page shows: the status (status.ts) with a verdict for every site and every dataset, each
 * with the reasons for it. A pure function of the status.
 *
 * The status gives one verdict for the mesh as this site sees it, and reasons in words. A reason belongs to the
 * sites and datasets it names (site and dataset names are tokens of letters, digits, '.', '_' and '-', so a
 * name is matched as a whole word); one that names no site belongs to this site, whose view it is. This
 * does not attribute a reason that names a site without being about it (a hint "start shop-a") any
 * differently: such a reason shows at that site too, which is where the person has to act.
 */
import type { SiteStatus, Verdict } from '../status.ts'

export interface Judged {
  verdict: Verdict
  reasons: Array<{ level: Verdict; text: string }>
}

export interface DashboardView {
  status: SiteStatus
  /** By site key. */
  sites: Record<string, Judged>
  /** By dataset id. */
  datasets: Record<string, Judged>
}

const RANK: Record<Verdict, number> = { OK: 0, WARN: 1, CRIT: 2 }

function quoteRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
}

/** Whether `text` names `name` as a whole word (a trailing '.' ends a sentence, not the name). */
export function names(text: string, name: string): boolean {
  return new RegExp(`(^|[^A-Za-z0-9._-])${quoteRegExp(name)}($|[^A-Za-z0-9._-]|\\.(?=$|\\s))`).test(text)
}

function judge(reasons: Judged['reasons']): Judged {
  let verdict: Verdict = 'OK'
  for (const r of reasons) if (RANK[r.level] > RANK[verdict]) verdict = r.level
  return { verdict, reasons }
}

export function dashboardView(status: SiteStatus): DashboardView {
  const sites: DashboardView['sites'] = {}
  const datasets: DashboardView['datasets'] = {}
  const self = status.members.find((m) => m.self)
  const bySite = new Map<string, Judged['reasons']>(status.members.map((m) => [m.key, []]))
  for (const r of status.reasons) {
    const named = status.members.filter((m) => names(r.text, m.site))
    const to = named.length > 0 ? named : self ? [self] : []
    for (const m of to) bySite.get(m.key)?.push(r)
  }
  for (const m of status.members) sites[m.key] = judge(bySite.get(m.key) ?? [])
  for (const d of status.datasets) datasets[d.id] = judge(status.reasons.filter((r) => names(r.text, d.name)))
  return { status, sites, datasets }
}
