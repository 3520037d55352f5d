/**
 * How the demo watches the mesh: it asks every running node for its status, prints a row of the live table
 * about every second (each shop's orders and how many up-to-date copies of its data the others hold), and
 * waits until a condition on those answers holds.
 */
import { askNode, count, type SiteStatus } from '../../node/index.ts'
import { out } from '../commands/common.ts'
import { DemoFailure, secs, short, type Business, type Demo, type Site } from './stage.ts'

export type Statuses = Map<Site, SiteStatus | null>

export interface CopyView {
  holder: Site
  applied: number | null
}

export interface DatasetView {
  business: Business
  length: number | null
  copies: CopyView[]
}

/**
 * Asks every running node for its status. A node that does not answer (or answers with an error) counts as
 * a failed request, and its previous answer is used; the failures are listed at the end, as they may point
 * at a bug in the node.
 */
async function statuses(demo: Demo): Promise<Statuses> {
  const live = demo.sites.filter((s) => s.alive)
  const res = await Promise.all(
    live.map(async (s) => {
      let why: string
      try {
        type Answer = { status?: SiteStatus; error?: { code: string; message: string } } | null
        const r = (await askNode(s.dir, 'status', 3000)) as Answer
        if (r?.status) {
          s.lastStatus = r.status
          return r.status
        }
        why = r?.error ? `${r.error.code}: ${r.error.message}` : 'the node is not listening'
      } catch (err) {
        why = (err as Error).message
      }
      demo.statusFailures.set(why, (demo.statusFailures.get(why) ?? 0) + 1)
      return s.lastStatus
    })
  )
  return new Map(live.map((s, i) => [s, res[i]]))
}

export async function statusNow(demo: Demo): Promise<Statuses> {
  return demo.within(statuses(demo), 8000, 'the nodes to answer a status request')
}

/**
 * Per shop's data: its log's length in the current epoch (from its origin's node) and how far each other
 * running site has applied that log (from that site's node; nothing while that site is still on another epoch).
 */
function views(demo: Demo, st: Statuses): DatasetView[] {
  return demo.businesses.map((b) => {
    const own = b.origin.alive ? st.get(b.origin)?.datasets.find((d) => d.id === b.id) : undefined
    if (own && own.epoch === b.epoch && own.originSite === b.origin.name) b.length = own.length
    const copies: CopyView[] = []
    for (const holder of demo.sites) {
      if (holder === b.origin || !holder.alive) continue
      const d = st.get(holder)?.datasets.find((x) => x.id === b.id)
      const h = d && d.epoch === b.epoch ? d.holders.find((x) => x.site === holder.name) : undefined
      copies.push({ holder, applied: h?.applied ?? null })
    }
    return { business: b, length: b.length, copies }
  })
}

function current(v: DatasetView, c: CopyView): boolean {
  return v.length !== null && v.length > 0 && c.applied !== null && c.applied >= v.length
}

function describe(views: DatasetView[]): string[] {
  return views.flatMap((v) => {
    const b = v.business
    const state = `epoch ${b.epoch}, ${b.origin.alive ? 'running' : 'switched off'}`
    const length = v.length === null ? '? entries' : count(v.length, 'entry', 'entries')
    return [
      `${b.owner.name}'s data, at ${b.origin.name} (${state}): its log has ${length}`,
      ...v.copies.map((c) => `  copy at ${c.holder.name}: applied ${c.applied ?? 'nothing of this epoch yet'}`)
    ]
  })
}

const COL = 27

/** The live table's header. */
export function tableHeader(demo: Demo): void {
  out(`   In each shop's column: the orders in its live database, then how many of the other running shops`)
  out(`   hold an up-to-date copy of it (✓: all of them, to within a second; -N: the slowest is N updates behind).`)
  out(`   ${'time'.padStart(5)}  ${demo.businesses.map((b) => b.owner.name.padEnd(COL)).join('')}`.trimEnd())
}

function tableRow(demo: Demo, views: DatasetView[]): void {
  const cells = views.map((v) => cell(demo, v).padEnd(COL))
  out(`   ${demo.elapsed().padStart(5)}  ${cells.join('')}`.trimEnd())
  demo.table.lastRow = Date.now()
}

function cell(demo: Demo, v: DatasetView): string {
  const b = v.business
  const orders = `${b.till.counts().orders} orders`.padEnd(11)
  if (!b.origin.alive) return `OFF ${orders}${b.till.stats.transactions - (b.cutOffAt ?? 0)} unsent`
  const where = b.origin === b.owner ? '' : `@${short(b.origin.name)} e${b.epoch} `
  if (v.copies.length === 0) return `${orders}${where}no copy running`
  if (v.length === null) return `${orders}${where}0/${v.copies.length} …`
  // Changes made since the previous row may still be on their way (a few milliseconds): a copy that holds
  // everything the shop had then counts as up to date.
  const before = demo.table.shown.get(b)
  const recent = before && before.epoch === b.epoch ? Math.min(v.length, before.length) : v.length
  demo.table.shown.set(b, { epoch: b.epoch, length: v.length })
  const ok = v.copies.filter((c) => v.length! > 0 && c.applied !== null && c.applied >= recent)
  const behind = Math.max(...v.copies.map((c) => v.length! - (c.applied ?? 0)))
  const mark = ok.length === v.copies.length ? ' ✓' : ` -${behind}`
  return `${orders}${where}${ok.length}/${v.copies.length}${mark}`
}

export type Until = (views: DatasetView[], st: Statuses) => boolean | Promise<boolean>

/**
 * Prints a row about every second for `ms`, or until `until` holds (checked at every poll); then fails with
 * `what` if it never did.
 */
export async function watch(demo: Demo, ms: number, until?: Until, what = 'the copies to catch up'): Promise<void> {
  const end = Date.now() + ms
  for (;;) {
    demo.checkShops()
    const st = await statusNow(demo)
    const vs = views(demo, st)
    const done = until ? await until(vs, st) : false
    // A row about every second, and one at the end unless the last is very recent.
    const since = Date.now() - demo.table.lastRow
    if (since >= 950 || ((done || Date.now() >= end) && since >= 400)) tableRow(demo, vs)
    if (done) return
    if (Date.now() >= end) {
      if (until) throw new DemoFailure(`timed out after ${secs(ms)} waiting for ${what}`, describe(vs))
      return
    }
    await demo.pause(until ? 200 : Math.min(1000, end - Date.now()))
  }
}

/** Every running site holds all of the given shops' data, and their logs have not grown for a moment. */
export async function converge(demo: Demo, bs: Business[], ms: number): Promise<void> {
  let stable = 0
  let lengths = ''
  await watch(demo, ms, (vs) => {
    const mine = vs.filter((v) => bs.includes(v.business))
    const now = mine.map((v) => v.length).join(',')
    const all = mine.every((v) => v.copies.length > 0 && v.copies.every((c) => current(v, c)))
    stable = all && now === lengths ? stable + 1 : 0
    lengths = now
    return stable >= 2
  })
}
