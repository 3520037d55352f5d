/**
 * Alarms: what this site refused because it could be an attack or would lose data (a forged statement, an
 * unsigned promotion, a branch point below what a site applied), kept in alarms.json and carried in this site's
 * signed report as notices of kind 'alarm', so that every site's `mesh status` shows it as CRIT, naming the
 * site it is about, for ALARM_MS. An alarm is cleared earlier when what it warned of is settled (the site
 * removed, the epoch accepted by a person).
 */
import type { Notice } from '../protocol/index.ts'
import type { MeshNode } from './node.ts'
import { readJsonFile, writeFileAtomic } from './state.ts'
import { ALARM_MS } from './status.ts'

export { ALARM_MS }

export interface Alarm {
  /** An error code (FORGED_STATEMENT, UNSIGNED_PROMOTION, BRANCH_POINT, ...). */
  code: string
  /** The site the alarm is about (the one that sent or signed what was refused). */
  site: string
  /** The dataset id it concerns; '' for the mesh as a whole. */
  dataset: string
  /** What happened and what to do, in one sentence a shop owner can act on. */
  text: string
  at: number
}

export class Alarms {
  private list: Alarm[] = []

  constructor(private readonly node: MeshNode) {}

  private get file(): string {
    return `${this.node.paths.dir}/alarms.json`
  }

  load(): void {
    this.list = ((readJsonFile(this.file) as Alarm[] | null) ?? []).filter((a) => Date.now() - a.at < ALARM_MS)
  }

  /** The live alarms, newest last. */
  current(now = Date.now()): Alarm[] {
    return this.list.filter((a) => now - a.at < ALARM_MS)
  }

  /** Raises an alarm (the same code, site, dataset and text within an hour is one alarm). */
  raise(a: Omit<Alarm, 'at'>): void {
    const now = Date.now()
    const same = this.list.find(
      (x) => x.code === a.code && x.site === a.site && x.dataset === a.dataset && x.text === a.text
    )
    if (same && now - same.at < 3600_000) return
    this.list = [...this.current(now).filter((x) => x !== same), { ...a, at: now }].slice(-50)
    this.node.logger.error('alarm', { code: a.code, site: a.site, dataset: a.dataset || undefined, text: a.text })
    this.save()
    this.node.reports.markDirty()
  }

  /** Clears the alarms `match` picks (their cause was settled); true if any was. */
  clear(match: (a: Alarm) => boolean): boolean {
    const before = this.list.length
    this.list = this.list.filter((a) => !match(a))
    if (this.list.length === before) return false
    this.save()
    this.node.reports.markDirty()
    return true
  }

  /** The live alarms as report notices (kind 'alarm'; seq 0; the text names the site). */
  notices(): Notice[] {
    return this.current().map((a) => ({
      dataset: a.dataset,
      kind: 'alarm',
      at: a.at,
      seq: 0,
      text: `${a.code}: ${a.text}`
    }))
  }

  private save(): void {
    writeFileAtomic(this.file, `${JSON.stringify(this.list, null, 2)}\n`, 0o600)
  }
}
