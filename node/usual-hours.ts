/**
 * Usual hours: when each site is usually up, learned from when this site heard from it. Sites switched off at
 * night are normal, so the long silence thresholds (16 and 24 hours) stay; but a site that dies at 10 am while
 * its till keeps selling must not look fine until the next morning. This history lets status say "shop-east
 * is usually up at this hour" after 15 minutes of silence.
 *
 * Kept small in DIR/contacts.json: per member, per hour (counted from the Unix epoch, UTC) of the last four
 * weeks, a 12-bit mask of the five-minute parts of that hour in which a report of it arrived: at most 672
 * numbers per member. An hour of the week is "usual" when the site was heard through most of it (9 of its 12
 * parts) in at least half of the weeks on record, two weeks at least. Hours are UTC hours of the week, so a
 * change to or from summer time moves a site's usual hours by one for the weeks on either side of it; it does
 * not learn holidays (a shop closed on a usual day is a WARN that day).
 */
import fs from 'node:fs'
import path from 'node:path'
import { writeFileAtomic } from './state.ts'

const HOUR = 3_600_000
const WEEK_HOURS = 7 * 24
/** How far back the history goes. */
export const HISTORY_WEEKS = 4
/** Five-minute parts of an hour heard for the site to count as up through that hour. */
const UP_PARTS = 9

/** Per member (key hex): hour number -> mask of the five-minute parts of it in which the site was heard. */
export type ContactHistory = Record<string, Record<string, number>>

const popcount = (n: number) => {
  let c = 0
  for (let x = n; x; x &= x - 1) c++
  return c
}

/** Records that a report of `key` arrived at `at`; drops hours older than the history keeps. */
export function recordContact(h: ContactHistory, key: string, at: number): void {
  const hour = Math.floor(at / HOUR)
  const part = Math.floor((at % HOUR) / 300_000)
  const mine = (h[key] ??= {})
  mine[hour] = (mine[hour] ?? 0) | (1 << part)
  const oldest = Math.max(...Object.keys(mine).map(Number)) - HISTORY_WEEKS * WEEK_HOURS
  for (const k of Object.keys(mine)) if (Number(k) <= oldest) delete mine[k]
}

/**
 * Whether the site with `key` is usually up in the hour of the week that `now` falls in: heard through most of
 * that hour in at least half of the past weeks on record (two at least). The weeks on record start with the
 * first hour heard; the week of `now` itself is not counted (it is what is being judged).
 */
export function usuallyUp(h: ContactHistory, key: string, now: number): boolean {
  const mine = h[key]
  if (!mine) return false
  const hours = Object.keys(mine).map(Number)
  if (hours.length === 0) return false
  const first = Math.min(...hours)
  const hour = Math.floor(now / HOUR)
  let weeks = 0
  let up = 0
  for (let w = 1; w <= HISTORY_WEEKS; w++) {
    const then = hour - w * WEEK_HOURS
    if (then < first) break
    weeks++
    if (popcount(mine[then] ?? 0) >= UP_PARTS) up++
  }
  return weeks >= 2 && up * 2 >= weeks
}

/** The history kept in `dir`; empty when there is none or it cannot be read (it is learned again). */
export function readContacts(dir: string): ContactHistory {
  try {
    const j = JSON.parse(fs.readFileSync(path.join(dir, 'contacts.json'), 'utf8'))
    return typeof j === 'object' && j !== null && !Array.isArray(j) ? (j as ContactHistory) : {}
  } catch {
    return {}
  }
}

export function writeContacts(dir: string, h: ContactHistory): void {
  writeFileAtomic(path.join(dir, 'contacts.json'), `${JSON.stringify(h)}\n`)
}
