/**
 * The history behind the dashboard's charts, kept small in DIR/dashboard-history.json: each copy's lag in
 * seconds, one sample per dataset and site per step (5 minutes by default), and the bytes each site applied
 * per UTC day, both for the last 30 days. At the default step a series is at most 8,640 small integers, so a
 * mesh of three sites and three datasets keeps well under a megabyte.
 *
 * Samples are taken from the status (status.ts), the same figures `mesh status` shows; nothing here reads a
 * log or a database. What is not kept: anything older than 30 days, and the bytes a site applied before the
 * history began (the first sample of a copy is its baseline).
 */
import fs from 'node:fs'
import path from 'node:path'
import type { SiteStatus } from '../status.ts'
import { writeFileAtomic } from '../state.ts'

export const HISTORY_FILE = 'dashboard-history.json'
export const KEEP_MS = 30 * 86_400_000
export const DEFAULT_STEP_MS = 5 * 60_000
const DAY_MS = 86_400_000

export interface LagSeries {
  dataset: string
  site: string
  /** The time of values[0], a multiple of the step. */
  t0: number
  /** Lag in whole seconds per step; null where no sample was taken (the node was off). */
  values: Array<number | null>
}

export interface ChartHistory {
  v: 1
  stepMs: number
  /** By `${dataset id}/${site key}`. */
  lag: Record<string, LagSeries>
  /** Bytes applied per UTC day (its start, ms, as a string key), by site key. */
  daily: Record<string, { site: string; days: Record<string, number> }>
  /** The last applied bytes seen of each copy, and of which log, to count what came since. */
  last: Record<string, { log: string; applied: number }>
}

export function emptyHistory(stepMs = DEFAULT_STEP_MS): ChartHistory {
  return { v: 1, stepMs, lag: {}, daily: {}, last: {} }
}

/** The history kept in `dir`; an empty one when there is none, or it is unreadable (it is only charts). */
export function readHistory(dir: string, stepMs = DEFAULT_STEP_MS): ChartHistory {
  try {
    const j = JSON.parse(fs.readFileSync(path.join(dir, HISTORY_FILE), 'utf8')) as ChartHistory
    if (j?.v !== 1 || typeof j.lag !== 'object' || typeof j.daily !== 'object') return emptyHistory(stepMs)
    // A new step starts the lag series afresh (their slots would not line up); the daily bytes stay.
    if (j.stepMs !== stepMs) return { ...emptyHistory(stepMs), daily: j.daily, last: j.last ?? {} }
    return { ...j, last: j.last ?? {} }
  } catch {
    return emptyHistory(stepMs)
  }
}

export function writeHistory(dir: string, h: ChartHistory): void {
  writeFileAtomic(path.join(dir, HISTORY_FILE), JSON.stringify(h))
}

/** Adds one sample of every copy in `s` at `now`, and drops what is older than 30 days. Pure but for `h`. */
export function sample(h: ChartHistory, s: SiteStatus, now: number): void {
  const step = h.stepMs
  const slot = Math.floor(now / step) * step
  const day = String(Math.floor(now / DAY_MS) * DAY_MS)
  for (const d of s.datasets) {
    for (const x of d.holders) {
      if (x.applied === null || x.role === 'blind') continue
      const id = `${d.id}/${x.key}`
      if (x.lagSeconds !== null) {
        let series = h.lag[id]
        if (!series) series = h.lag[id] = { dataset: d.name, site: x.site, t0: slot, values: [] }
        series.dataset = d.name
        series.site = x.site
        const i = (slot - series.t0) / step
        while (series.values.length < i) series.values.push(null)
        series.values[i] = Math.round(x.lagSeconds)
      }
      // Bytes a copy applied: the log's bytes less what it lacks. The origin applies nothing: it captures.
      if (x.role !== 'replica' || x.lagBytes === null) continue
      const applied = Math.max(0, d.bytes - x.lagBytes)
      const before = h.last[id]
      // A new epoch's log starts from nothing: all it holds came since. The first sight is the baseline only.
      const came = !before ? 0 : before.log !== d.log ? applied : Math.max(0, applied - before.applied)
      h.last[id] = { log: d.log, applied }
      const site = (h.daily[x.key] ??= { site: x.site, days: {} })
      site.site = x.site
      site.days[day] = (site.days[day] ?? 0) + came
    }
  }
  prune(h, now)
}

function prune(h: ChartHistory, now: number): void {
  const from = Math.floor((now - KEEP_MS) / h.stepMs) * h.stepMs
  for (const [id, series] of Object.entries(h.lag)) {
    if (series.t0 < from) {
      const drop = (from - series.t0) / h.stepMs
      series.values = series.values.slice(drop)
      series.t0 = from
    }
    // A series starts at its first sample: a gap at its start is not kept.
    const first = series.values.findIndex((v) => v !== null)
    if (first > 0) {
      series.values = series.values.slice(first)
      series.t0 += first * h.stepMs
    }
    if (!series.values.some((v) => v !== null)) delete h.lag[id]
  }
  for (const [key, site] of Object.entries(h.daily)) {
    for (const day of Object.keys(site.days)) if (Number(day) < now - KEEP_MS) delete site.days[day]
    if (Object.keys(site.days).length === 0) delete h.daily[key]
  }
}

/** Series aligned on one time axis (seconds), as the charting library takes them. */
export interface ChartData {
  x: number[]
  series: Array<{ label: string; values: Array<number | null> }>
}

/** Lag per dataset and site over the last 30 days. */
export function lagChart(h: ChartHistory, now: number): ChartData {
  const all = Object.values(h.lag).sort((a, b) => `${a.dataset} ${a.site}`.localeCompare(`${b.dataset} ${b.site}`))
  if (all.length === 0) return { x: [], series: [] }
  const step = h.stepMs
  const start = Math.min(...all.map((s) => s.t0))
  const end = Math.floor(now / step) * step
  const x: number[] = []
  for (let t = start; t <= end; t += step) x.push(t / 1000)
  return {
    x,
    series: all.map((s) => ({
      label: `${s.dataset} at ${s.site}`,
      values: x.map((t) => s.values[(t * 1000 - s.t0) / step] ?? null)
    }))
  }
}

/** Bytes each site applied per UTC day, over the last 30 days. */
export function dailyChart(h: ChartHistory, now: number): ChartData {
  const sites = Object.values(h.daily).sort((a, b) => a.site.localeCompare(b.site))
  const days = new Set<number>()
  for (const s of sites) for (const d of Object.keys(s.days)) days.add(Number(d))
  if (days.size === 0) return { x: [], series: [] }
  // Two days at least (the day before the first one at 0): a chart of one point has no time axis to speak of.
  const today = Math.floor(now / DAY_MS) * DAY_MS
  const first = Math.max(Math.min(...days, today - DAY_MS), Math.floor((now - KEEP_MS) / DAY_MS + 1) * DAY_MS)
  const x: number[] = []
  for (let t = first; t <= today; t += DAY_MS) x.push(t / 1000)
  return {
    x,
    series: sites.map((s) => ({ label: s.site, values: x.map((t) => s.days[String(t * 1000)] ?? 0) }))
  }
}
