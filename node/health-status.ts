/**
 * What status makes of each site's health (versions, disk space) and of its usual hours: pure functions of the
 * reports, the contact history and the clock, like the rest of buildStatus.
 */
import type { Report, SiteHealth } from '../protocol/index.ts'
import { diskLevel, sizeText } from './disk.ts'
import type { MemberStatus, StatusThresholds, Verdict } from './status.ts'
import { usuallyUp, type ContactHistory } from './usual-hours.ts'
import { compareVersions, nodeEndOfLife } from './versions.ts'

export interface MemberHealth extends SiteHealth {
  /** When the site's Node.js line reaches or reached its end of life (this site's table), ms; null if unknown. */
  nodeEndOfLife: number | null
  nodePastEndOfLife: boolean
}

const DAY = 86_400_000

export function memberHealth(r: Report | undefined, now: number): MemberHealth | null {
  if (!r?.health) return null
  const eol = nodeEndOfLife(r.health.node)
  return { ...r.health, nodeEndOfLife: eol, nodePastEndOfLife: eol !== null && now >= eol }
}

/** The warnings every member's health calls for. */
export function healthReasons(
  members: MemberStatus[],
  now: number,
  t: StatusThresholds
): Array<{ level: Verdict; text: string }> {
  const out: Array<{ level: Verdict; text: string }> = []
  // branchmesh's version: from the health section, or for software before it from the report's `software`.
  const versionOf = (m: MemberStatus) => m.health?.branchmesh || /^branchmesh\/(.+)$/.exec(m.software ?? '')?.[1] || ''
  const known = members.filter((m) => versionOf(m))
  const newest = known.reduce<MemberStatus | null>(
    (a, m) => (!a || compareVersions(versionOf(m), versionOf(a)) > 0 ? m : a),
    null
  )
  for (const m of members) {
    if (newest && versionOf(m) && compareVersions(versionOf(m), versionOf(newest)) < 0) {
      out.push({
        level: 'WARN',
        text:
          `${m.site} runs branchmesh ${versionOf(m)}, older than ${versionOf(newest)} at ${newest.site}: ` +
          `upgrade it there (sites of one mesh should run the same version)`
      })
    }
    const h = m.health
    if (!h) continue
    if (h.nodeEndOfLife !== null && now >= h.nodeEndOfLife + t.nodeEolGraceDays * DAY) {
      const day = new Date(h.nodeEndOfLife).toISOString().slice(0, 10)
      out.push({
        level: 'WARN',
        text:
          `${m.site} runs Node.js ${h.node}, whose line reached its end of life on ${day} and gets no ` +
          `security fixes: install a supported Node.js there`
      })
    }
    for (const d of h.disks) {
      const level = diskLevel(d.free, d.total, t)
      if (!level) continue
      const pct = d.total > 0 ? Math.floor((d.free * 100) / d.total) : 0
      out.push({
        level,
        text:
          `${m.site} has ${sizeText(d.free)} free of ${sizeText(d.total)} (${pct}%) on the disk of its ` +
          `${d.what} (${d.path}): free some space there` +
          (level === 'CRIT' ? ' now: a full disk stops capture and replication' : '')
      })
    }
    if (h.paused) out.push({ level: 'WARN', text: `snapshots at ${m.site} are paused: ${h.paused}` })
    if (h.appError) {
      out.push({
        level: 'WARN',
        text: `${m.site} cannot read the application's version: ${h.appError} (fix appVersion in its config.json)`
      })
    }
  }
  return out
}

/**
 * The warning for a member silent for `usualSilentSeconds` or more during an hour it is usually up; null when
 * there is no such warning (no history for it yet: the long thresholds cover it).
 */
export function usualHoursReason(
  m: MemberStatus,
  contacts: ContactHistory | undefined,
  now: number,
  t: StatusThresholds
): string | null {
  if (!contacts || m.lastContact === null) return null
  const silent = (now - m.lastContact) / 1000
  if (silent < t.usualSilentSeconds || !usuallyUp(contacts, m.key, now)) return null
  const minutes = Math.round(silent / 60)
  const since = minutes < 120 ? `${minutes} minutes` : `${Math.round(minutes / 60)} hours`
  return (
    `${m.site} has not been heard from for ${since}, and it is usually up at this hour: check that ` +
    `its machine and node are running (\`mesh service status\` there)`
  )
}
