/**
 * The daily summary email and the alert messages, as pure functions of the status, the day's counter and the
 * clock (so they are tested with a fixed clock, and read the same wherever they are built).
 *
 * The day's counter (DaySample) is what the sending site saw of the mesh, sampled as it runs: each dataset's log
 * length and bytes, what each holder had applied, and this site's own checkpoint. The figures for the last 24
 * hours are the difference between now and the oldest sample of the last 24 hours; when the node has run for
 * less than that, the summary says since when. It does not count what happened while this node was off.
 */
import type { SiteStatus, Verdict } from './status.ts'
import { sizeText } from './disk.ts'

/** One look at the mesh: per dataset, the log's length and bytes, and each holder's applied count. */
export interface DaySample {
  at: number
  datasets: Record<string, { length: number; bytes: number; applied: Record<string, number> }>
}

/** What this site knows of its own copies that the status does not carry: its snapshots' times, per dataset. */
export interface OwnCopies {
  snapshots: Record<string, number[]>
  /** How many origin checkpoints this site's copy was seen to match in the last 24 hours, per dataset. */
  matched: Record<string, number>
}

export interface Message {
  subject: string
  text: string
  html: string
}

export function sample(s: SiteStatus, now: number): DaySample {
  const datasets: DaySample['datasets'] = {}
  for (const d of s.datasets) {
    const applied: Record<string, number> = {}
    for (const h of d.holders) if (h.applied !== null) applied[h.site] = h.applied
    datasets[d.id] = { length: d.length, bytes: d.bytes, applied }
  }
  return { at: now, datasets }
}

/** Keeps the samples of the last 25 hours, one per `everyMs` at most: the oldest of the last 24 is the baseline. */
export function addSample(list: DaySample[], s: DaySample, everyMs = 3600_000): DaySample[] {
  const kept = list.filter((x) => s.at - x.at <= 25 * 3600_000)
  const last = kept[kept.length - 1]
  if (!last || s.at - last.at >= everyMs) kept.push(s)
  return kept
}

const plural = (n: number, one: string, many: string) => `${n} ${n === 1 ? one : many}`
const bytesText = (n: number) => (n >= 1048576 ? sizeText(n) : `${Math.max(0, Math.round(n / 1024))} KB`)
const esc = (x: string) => x.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;')
const iso = (ms: number) => new Date(ms).toISOString().replace('T', ' ').slice(0, 16)

/**
 * The daily summary: for each site, its disk space, versions and what is wrong; for each dataset, what the last
 * 24 hours added (changes and bytes in its log, what each site applied), checkpoints matched and snapshots made
 * here, and the oldest moment this site can restore.
 */
export function buildSummary(s: SiteStatus, samples: DaySample[], own: OwnCopies, now: number): Message {
  const since = samples.find((x) => now - x.at <= 24 * 3600_000) ?? null
  const lines: string[] = []
  const html: string[] = []
  const period = !since
    ? 'none yet (the node has just started)'
    : now - since.at >= 23 * 3600_000
      ? 'for the last 24 hours'
      : `since ${iso(since.at)} UTC (the node has not run for 24 hours)`
  lines.push(`Mesh status at ${s.site}: ${s.verdict}, ${iso(now)} UTC. Figures ${period}.`, '')
  html.push(`<p>Mesh status at ${esc(s.site)}: <b>${s.verdict}</b>, ${iso(now)} UTC. Figures ${esc(period)}.</p>`)

  lines.push('Sites')
  html.push('<h3>Sites</h3><ul>')
  for (const m of s.members) {
    const h = m.health
    const disks = h?.disks.length
      ? h.disks.map((d) => `${sizeText(d.free)} free of ${sizeText(d.total)} for its ${d.what} (${d.path})`)
      : ['disk space not reported']
    const versions = h
      ? [
          `branchmesh ${h.branchmesh || '?'}`,
          `Node.js ${h.node || '?'}`,
          h.sqlite && `SQLite ${h.sqlite}`,
          h.postgres && `PostgreSQL ${h.postgres}`,
          h.app && `application ${h.app}`
        ].filter(Boolean)
      : [m.software ?? 'versions not reported']
    const heard = m.self ? 'this site' : m.lastContact ? `last heard ${iso(m.lastContact)} UTC` : 'never heard from'
    lines.push(`- ${m.site} (${m.role}, ${heard})`)
    for (const d of disks) lines.push(`    disk: ${d}`)
    lines.push(`    runs: ${versions.join(', ')}`)
    html.push(
      `<li><b>${esc(m.site)}</b> (${m.role}, ${esc(heard)})<br>` +
        disks.map((d) => `disk: ${esc(d)}<br>`).join('') +
        `runs: ${esc(versions.join(', '))}</li>`
    )
  }
  html.push('</ul>')

  lines.push('', 'Datasets')
  html.push('<h3>Datasets</h3><ul>')
  for (const d of s.datasets) {
    const was = since?.datasets[d.id]
    const changes = d.length - (was?.length ?? 0)
    const bytes = d.bytes - (was?.bytes ?? 0)
    const applied = d.holders
      .filter((h) => h.role !== 'origin' && h.applied !== null)
      .map((h) => `${h.site} has applied ${h.applied} of ${d.length}`)
    const matched = own.matched[d.id] ?? 0
    const snaps = own.snapshots[d.id] ?? []
    const made = snaps.filter((at) => now - at <= 24 * 3600_000).length
    const oldest = snaps.length ? `${iso(Math.min(...snaps))} UTC` : 'none'
    const row = [
      `${plural(changes, 'new log entry', 'new log entries')}, ${bytesText(bytes)} (origin ${d.originSite}; ` +
        'an entry holds one or more transactions)',
      applied.length ? applied.join(', ') : 'no other site holds a copy yet',
      `${plural(matched, 'checkpoint', 'checkpoints')} matched and ${plural(made, 'snapshot', 'snapshots')} made at ` +
        s.site,
      `oldest snapshot here: ${oldest}; the log holds every change since the dataset began (mesh restore)`
    ]
    lines.push(`- ${d.name}: ${row[0]}`, ...row.slice(1).map((r) => `    ${r}`))
    html.push(`<li><b>${esc(d.name)}</b>: ${row.map(esc).join('<br>')}</li>`)
  }
  html.push('</ul>')

  const wrong = s.reasons.filter((r) => r.level !== 'OK')
  lines.push('', wrong.length ? 'Anything wrong' : 'Nothing is wrong.')
  html.push(wrong.length ? '<h3>Anything wrong</h3><ul>' : '<p>Nothing is wrong.</p>')
  for (const r of wrong) {
    lines.push(`- ${r.level} ${r.text}`)
    html.push(`<li><b>${r.level}</b> ${esc(r.text)}</li>`)
  }
  if (wrong.length) html.push('</ul>')
  const subject =
    s.verdict === 'OK' ? `branchmesh daily: all is well (${s.site})` : `branchmesh daily: ${s.verdict} (${s.site})`
  return { subject, text: `${lines.join('\n')}\n`, html: `<html><body>${html.join('\n')}</body></html>` }
}

/** One alert: the reasons raised and cleared since the last one, each with what to do (its text says it). */
export function buildAlert(
  site: string,
  verdict: Verdict,
  raised: Array<{ level: Verdict; text: string }>,
  cleared: Array<{ level: Verdict; text: string }>,
  now: number
): Message {
  const lines = [`Mesh status seen from ${site} at ${iso(now)} UTC: ${verdict}.`, '']
  const html = [`<p>Mesh status seen from ${esc(site)} at ${iso(now)} UTC: <b>${verdict}</b>.</p>`]
  if (raised.length) {
    lines.push('New problems:', ...raised.map((r) => `- ${r.level} ${r.text}`), '')
    html.push('<p>New problems:</p><ul>', ...raised.map((r) => `<li><b>${r.level}</b> ${esc(r.text)}</li>`), '</ul>')
  }
  if (cleared.length) {
    lines.push('Cleared (no longer seen):', ...cleared.map((r) => `- ${r.level} ${r.text}`), '')
    html.push('<p>Cleared (no longer seen):</p><ul>', ...cleared.map((r) => `<li>${esc(r.text)}</li>`), '</ul>')
  }
  lines.push(`Details: run mesh status at ${site}, or open the dashboard.`)
  const what = raised.length
    ? `${raised.some((r) => r.level === 'CRIT') ? 'CRIT' : 'WARN'}: ${raised[0].text.slice(0, 80)}`
    : `cleared: ${cleared[0]?.text.slice(0, 80) ?? ''}`
  const more = raised.length + cleared.length > 1 ? ` (+${raised.length + cleared.length - 1} more)` : ''
  return {
    subject: `branchmesh ${what}${more}`,
    text: `${lines.join('\n')}\n`,
    html: `<html><body>${html.join('\n')}</body></html>`
  }
}
