/**
 * Settings the command line reads and checks (status thresholds, snapshot policy) with their defaults, the
 * verdict's exit codes, and how a duration is written. A module of its own that imports nothing, so that
 * `mesh status` and the configuration (tools/config.ts) do not load the daemon (node/client.ts).
 */

export type Verdict = 'OK' | 'WARN' | 'CRIT'

export interface StatusThresholds {
  /** A holder behind its origin by this many seconds of writes is a warning / critical. */
  lagWarnSeconds: number
  lagCritSeconds: number
  /** A member not heard from for this long is a warning / critical. Sites switched off at night are normal. */
  silentWarnSeconds: number
  silentCritSeconds: number
  /** WAL a PostgreSQL origin's slot may keep on the database server's disk before it is a warning, in MB. */
  walWarnMB: number
  /**
   * An origin whose log lacks writes its database committed this many seconds ago (its capture lag) is a
   * warning / critical: until the log holds them, they exist at that site only.
   */
  captureLagWarnSeconds: number
  captureLagCritSeconds: number
  /** A member silent this long during hours it is usually up (usual-hours.ts) is a warning. */
  usualSilentSeconds: number
  /** Free disk space under this share (percent) or this many MB is a warning / critical (disk.ts). */
  diskWarnPercent: number
  diskWarnMB: number
  diskCritPercent: number
  diskCritMB: number
  /** A site on a Node.js line this many days past its end of life is a warning. */
  nodeEolGraceDays: number
}

export const DEFAULT_THRESHOLDS: StatusThresholds = {
  lagWarnSeconds: 3600,
  lagCritSeconds: 24 * 3600,
  silentWarnSeconds: 16 * 3600,
  silentCritSeconds: 24 * 3600,
  walWarnMB: 1024,
  captureLagWarnSeconds: 300,
  captureLagCritSeconds: 3600,
  usualSilentSeconds: 900,
  diskWarnPercent: 10,
  diskWarnMB: 2048,
  diskCritPercent: 2,
  diskCritMB: 500,
  nodeEolGraceDays: 0
}

export const VERDICT_EXIT: Record<Verdict, number> = { OK: 0, WARN: 1, CRIT: 2 }

/** "26 hours", "3 minutes", "40 seconds". */
export function duration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds))
  const unit = (n: number, w: string) => `${n} ${w}${n === 1 ? '' : 's'}`
  if (s < 120) return unit(s, 'second')
  if (s < 2 * 3600) return unit(Math.round(s / 60), 'minute')
  if (s < 3 * 86400) return unit(Math.round(s / 3600), 'hour')
  return unit(Math.round(s / 86400), 'day')
}

export interface SnapshotPolicy {
  /** Take a snapshot when the newest is this old (seconds). */
  everySeconds: number
  keepDaily: number
  keepWeekly: number
  keepMonthly: number
}

export const DEFAULT_SNAPSHOTS: SnapshotPolicy = { everySeconds: 86_400, keepDaily: 14, keepWeekly: 8, keepMonthly: 12 }

/** The budget of config.json `link`, in kbit/s (1000 bits per second); absent: no limit that way. */
export interface LinkBudget {
  upKbps?: number
  downKbps?: number
}

/** Below this a budget cannot carry the control traffic alone (reports, keep-alives, hypercore requests). */
export const MIN_LINK_KBPS = 8

/** The share of packets sent again, as a whole percent for people ("12%", "under 1%", "0%"). */
export function lossText(l: { packets: number; resent: number }): string {
  if (l.packets === 0 || l.resent === 0) return '0%'
  const pct = (l.resent * 100) / l.packets
  return pct < 1 ? 'under 1%' : `${Math.round(pct)}%`
}

/** "12.5 kbit/s" */
export function kbit(bps: number): string {
  return `${(bps / 1000).toFixed(bps < 10_000 ? 1 : 0)} kbit/s`
}
