/**
 * `mesh demo`: three shops on this machine protecting each other, then a failover, with nothing to set up.
 *
 * It runs the real thing: a local DHT test network (in this process); for each shop a SQLite database written
 * by a simulated till (tools/demo-shop.ts, in this process, so the writes come from another process than the
 * node's, as in a real shop); and the real commands: `mesh init`, `invite`, `join` and `promote` run here
 * through their own `run` (their output kept, shown only if they fail), and each shop's node is `mesh start`
 * in its own OS process.
 *
 * The story: the copies converge; shop-east is cut off (its node SIGKILLed: no goodbye) while its till keeps
 * selling into its own database; shop-north promotes its copy of shop-east's data (`mesh promote`, tried
 * again while the refusal is ORIGIN_HEALTHY, as a killed node looks alive until it misses its heartbeats) and
 * a till for shop-east's business writes into the promoted file; shop-south follows the new epoch without a
 * command; shop-east's node comes back, is fenced, keeps its offline sales in a divergence folder and follows
 * as a copy. The demo then checks, row by row, that every copy of every shop's data equals its current origin
 * (shop-east's own database included, rebuilt), and that the divergence folder holds exactly the rows shop-east's
 * till wrote while cut off. Exit 0 only if so.
 *
 * What it does not show: sales still on their way when a shop is cut off do not reach the others; after a
 * failover they end up in that shop's divergence folder like the ones made while cut off. The demo waits until
 * they have arrived before it pulls the plug, so that the divergence holds exactly the offline sales, which
 * it checks. Nor does it fail back (`mesh promote --force` at shop-east would).
 *
 * Every child is stopped and the temporary folder removed, on success, on failure and on Ctrl-C. Each child
 * also stops itself if this process dies without cleaning up (its stdin, a pipe from here, closes).
 */
import { spawn, type ChildProcess } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import createTestnet, { type Testnet } from 'hyperdht/testnet'
import { MeshError } from '../../protocol/index.ts'
import { askNode, type PromoteResult, type SiteStatus } from '../../node/index.ts'
import { Shop, compareDatabases, copyDatabase, replaySql, type Comparison } from '../demo-shop.ts'
import { out, parse, type Command } from './common.ts'
import { command as initCommand } from './init.ts'
import { command as inviteCommand } from './invite.ts'
import { command as joinCommand } from './join.ts'
import { command as promoteCommand } from './promote.ts'

export const usage = `mesh demo [--keep]

Shows branchmesh at work on this machine, with nothing to set up and no internet: three shops (shop-north,
shop-south, shop-east), each with its own database and a node of its own, trade for a while and protect each
other. Then shop-east is lost (its node killed; its till keeps selling, cut off), shop-north takes over its
data with \`mesh promote\` and shop-east's business keeps selling there, shop-south follows by itself, and
shop-east comes back: it is fenced, keeps the sales it made while cut off in a folder for review, and follows
shop-north. The demo checks, row by row, that every copy of every shop's data equals its current origin and
that the folder holds exactly shop-east's offline sales. Takes about 40 seconds.
Everything happens in a temporary folder, removed at the end.
  --keep   keep the temporary folder (databases, copies, divergence folder, node logs) to look at afterwards
Exit code: 0 if every check passes, 1 if not (or if something failed).`

const MESH_JS = fileURLToPath(new URL('../mesh.js', import.meta.url))
/**
 * Each child runs tools/mesh.js behind this guard: when this process dies without stopping it (SIGKILL, a
 * crash), the child's stdin pipe closes and the child stops itself, so no node outlives the demo.
 */
const GUARD = `process.stdin.on('end', () => process.kill(process.pid, 'SIGTERM')); process.stdin.on('error', () => {}); process.stdin.resume(); await import(${JSON.stringify(pathToFileURL(MESH_JS).href)})`

/** The whole story must end by then (clean-up comes after, so the demo stays under about a minute). */
const TOTAL_LIMIT_MS = 58_000
const TRADE_MS = 10_000
const TRADE_EVERY_MS = 250
/** What shop-east's till sells while it is cut off: a few transactions, one every so often. */
const OFFLINE_SALES = 6
const OFFLINE_EVERY_MS = 500
/** A killed origin counts as healthy until it misses three 5 s heartbeats: promote is retried until then. */
const PROMOTE_WAIT_MS = 25_000
/** How long the table runs after the promotion, and after shop-east is fenced, at least. */
const FOLLOW_MS = 3_000
const RETURN_MS = 2_000

// --- small helpers ---------------------------------------------------------------------------------------------

class DemoFailure extends Error {
  constructor(
    message: string,
    readonly details: string[] = []
  ) {
    super(message)
  }
}

class Interrupted extends Error {}

/** The children get every flag they need: a MESH_DIR or MESH_BOOTSTRAP of the user's must not leak in. */
function childEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env }
  delete env.MESH_DIR
  delete env.MESH_BOOTSTRAP
  return env
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms))
const secs = (ms: number) => `${(ms / 1000).toFixed(1)} s`

/** A child process running `mesh ...`, its output kept in memory. */
class MeshProc {
  readonly proc: ChildProcess
  readonly stdout: string[] = []
  readonly stderr: string[] = []
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
  done = false
  /** Called with every JSON log line of level error or worse. */
  onError: ((line: { msg?: string; error?: string; [k: string]: unknown }) => void) | null = null
  private listeners: Array<(line: string) => void> = []

  constructor(
    readonly label: string,
    args: string[]
  ) {
    this.proc = spawn(process.execPath, ['--input-type=module', '-e', GUARD, MESH_JS, ...args], {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: childEnv()
    })
    // The pipe stays open while this process lives; its closing is the child's signal to stop.
    this.proc.stdin!.on('error', () => {})
    this.exited = new Promise((resolve) =>
      this.proc.on('exit', (code, signal) => {
        this.done = true
        resolve({ code, signal })
        for (const l of [...this.listeners]) l('')
      })
    )
    this.proc.on('error', () => {})
    this.lines(this.proc.stdout!, this.stdout)
    this.lines(this.proc.stderr!, this.stderr, (line) => {
      if (!line.startsWith('{')) return
      try {
        const j = JSON.parse(line)
        if (typeof j.level === 'number' && j.level >= 50) this.onError?.(j)
      } catch {
        // Not a log line.
      }
    })
  }

  private lines(stream: NodeJS.ReadableStream, into: string[], each?: (line: string) => void): void {
    let buf = ''
    stream.on('data', (d: Buffer) => {
      buf += d.toString()
      let i: number
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i)
        buf = buf.slice(i + 1)
        into.push(line)
        if (into.length > 2000) into.splice(0, 1000)
        each?.(line)
        for (const l of [...this.listeners]) l(line)
      }
    })
  }

  /** Resolves with the first stderr/stdout line matching `re`; rejects if the child exits first. */
  waitLine(re: RegExp, abort: Promise<never>): Promise<string> {
    const have = [...this.stderr, ...this.stdout].find((l) => re.test(l))
    if (have !== undefined) return Promise.resolve(have)
    const found = new Promise<string>((resolve, reject) => {
      const l = (line: string) => {
        if (re.test(line)) {
          this.listeners.splice(this.listeners.indexOf(l), 1)
          resolve(line)
        } else if (this.done) {
          this.listeners.splice(this.listeners.indexOf(l), 1)
          reject(new DemoFailure(`${this.label} stopped unexpectedly`, this.tail()))
        }
      }
      this.listeners.push(l)
    })
    return Promise.race([found, abort])
  }

  /** The last lines it printed, for a failure report. */
  tail(n = 12): string[] {
    return [...this.stdout.slice(-n), ...this.stderr.slice(-n)].map((l) => {
      if (!l.startsWith('{')) return l
      try {
        const j = JSON.parse(l) as Record<string, unknown>
        const { level, time, msg, ...rest } = j
        const lv = { 20: 'debug', 30: 'info', 40: 'warn', 50: 'error', 60: 'fatal' }[level as number] ?? String(level)
        return `${lv}: ${msg} ${Object.keys(rest).length ? JSON.stringify(rest) : ''}`.trim()
      } catch {
        return l
      }
    })
  }

  signal(sig: NodeJS.Signals): void {
    if (!this.done) this.proc.kill(sig)
  }

  /** SIGTERM, then SIGKILL if it has not exited after `graceMs`. */
  async stop(graceMs = 5000): Promise<void> {
    if (this.done) return
    this.signal('SIGTERM')
    const t = setTimeout(() => this.signal('SIGKILL'), graceMs)
    await this.exited
    clearTimeout(t)
  }
}

interface Site {
  name: string
  /** The shop's folder: its database, and the node's data directory under it. */
  root: string
  dir: string
  db: string
  /** The shop's own till, writing `db`. */
  shop: Shop
  node: MeshProc | null
  /** False while its node is off. */
  alive: boolean
  /** Its node's last answer to a status request. */
  lastStatus: SiteStatus | null
  errorsShown: number
}

/** One shop's data (its dataset), and where it lives now: at that shop, or, after a failover, at another. */
interface Business {
  owner: Site
  id: string
  name: string
  /** The site whose node captures the live database (the origin), and the epoch it writes. */
  origin: Site
  epoch: number
  /** The live database, and the till writing it. */
  file: string
  till: Shop
  /** Length of the current epoch's log, as its origin last reported it (kept while the origin is off). */
  length: number | null
  /** While the origin is cut off: the till's transaction count when it was; what it sells since reaches no one. */
  cutOffAt: number | null
}

interface CopyView {
  holder: Site
  applied: number | null
}

interface DatasetView {
  business: Business
  length: number | null
  copies: CopyView[]
}

/** One line of the final check. */
interface Check {
  what: string
  ok: boolean
  detail: string
}

const short = (site: string) => site.replace(/^shop-/, '')

// --- the demo ------------------------------------------------------------------------------------------------------

class Demo {
  readonly started = Date.now()
  readonly tmp: string
  readonly sites: Site[] = []
  readonly businesses: Business[] = []
  /** Every till, the sites' own and the one that carries on at the promoted database. */
  readonly shops: Shop[] = []
  readonly children: MeshProc[] = []
  testnet: Testnet | null = null
  bootstrap = ''
  interrupted = false
  /** Status requests that failed, by reason. */
  readonly statusFailures = new Map<string, number>()
  private abortReject!: (err: Error) => void
  readonly abort: Promise<never>
  private deadline: NodeJS.Timeout | null = null

  constructor(readonly keep: boolean) {
    this.tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'branchmesh-demo-'))
    this.abort = new Promise<never>((_, reject) => (this.abortReject = reject))
    this.abort.catch(() => {})
  }

  elapsed(): string {
    return `${Math.round((Date.now() - this.started) / 1000)}s`
  }

  /** A path inside the temporary folder, as shown to the user. */
  rel(p: string): string {
    return path.relative(this.tmp, p)
  }

  stopAll(reason: Error): void {
    this.abortReject(reason)
  }

  armDeadline(): void {
    this.deadline = setTimeout(
      () => this.stopAll(new DemoFailure(`the demo did not finish within ${TOTAL_LIMIT_MS / 1000} seconds`)),
      TOTAL_LIMIT_MS
    )
  }

  /** Waits for `p`, failing with `what` after `ms`, or at once on Ctrl-C / the overall deadline. */
  async within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
    let t: NodeJS.Timeout | undefined
    const timeout = new Promise<never>((_, reject) => {
      t = setTimeout(() => reject(new DemoFailure(`timed out after ${secs(ms)}: ${what}`)), ms)
    })
    try {
      return await Promise.race([p, timeout, this.abort])
    } finally {
      clearTimeout(t)
    }
  }

  async pause(ms: number): Promise<void> {
    await Promise.race([sleep(ms), this.abort])
  }

  // --- the commands ---

  /**
   * Runs a short command (init, invite, join, promote) in this process, through its own `run`, as `mesh`
   * would, its output kept (the demo tells the story instead). Returns its exit code and output lines; a
   * thrown error becomes a DemoFailure with that output.
   */
  async capture(cmd: Command, args: string[], timeoutMs: number): Promise<{ code: number; lines: string[] }> {
    const label = `mesh ${args[0]}`
    const lines: string[] = []
    let partial = ''
    const capture = (chunk: unknown, ...rest: unknown[]): boolean => {
      const text = partial + (typeof chunk === 'string' ? chunk : Buffer.from(chunk as Uint8Array).toString())
      const parts = text.split('\n')
      partial = parts.pop() ?? ''
      lines.push(...parts)
      const cb = rest.find((r) => typeof r === 'function') as (() => void) | undefined
      cb?.()
      return true
    }
    const stdout = process.stdout.write
    const stderr = process.stderr.write
    process.stdout.write = capture as typeof process.stdout.write
    process.stderr.write = capture as typeof process.stderr.write
    try {
      const code = await this.within(cmd.run(args.slice(1)), timeoutMs, label)
      if (partial) lines.push(partial)
      return { code, lines }
    } catch (err) {
      if (partial) lines.push(partial)
      if (err instanceof Interrupted) throw err
      if (err instanceof DemoFailure) throw err.details.length > 0 ? err : new DemoFailure(err.message, lines)
      const what = err instanceof MeshError ? `${err.message}${err.hint ? ` (${err.hint})` : ''}` : String((err as Error)?.message ?? err)
      throw new DemoFailure(`${label} failed: ${what}`, lines)
    } finally {
      process.stdout.write = stdout
      process.stderr.write = stderr
    }
  }

  /** Runs a command that must succeed (init, invite, join); returns its output lines. */
  async mesh(cmd: Command, args: string[], timeoutMs = 25_000): Promise<string[]> {
    const { code, lines } = await this.capture(cmd, args, timeoutMs)
    if (code !== 0) throw new DemoFailure(`mesh ${args[0]} failed (exit ${code})`, lines)
    return lines
  }

  /** `mesh promote DATASET --dir DIR --json` at `site`: the promotion, or the refusal with its code. */
  async promote(site: Site, b: Business): Promise<{ promoted: PromoteResult | null; error: { code: string; message: string; hint: string | null } | null }> {
    const { lines } = await this.capture(promoteCommand, ['promote', b.name, '--dir', site.dir, '--json'], 60_000)
    const json = lines.find((l) => l.trim().startsWith('{'))
    let r: { promoted?: boolean; error?: { code: string; message: string; hint: string | null } } & Partial<PromoteResult>
    try {
      r = JSON.parse(json ?? '')
    } catch {
      throw new DemoFailure('mesh promote printed no result', lines)
    }
    if (r.promoted === true) return { promoted: r as PromoteResult, error: null }
    return { promoted: null, error: r.error ?? { code: 'UNKNOWN', message: lines.join(' '), hint: null } }
  }

  /** Starts a site's node (`mesh start`) and waits until it says it is ready. */
  async startNode(site: Site): Promise<void> {
    const p = new MeshProc(`the node of ${site.name}`, ['start', '--dir', site.dir, '--log-json'])
    this.children.push(p)
    site.node = p
    site.alive = true
    site.errorsShown = 0
    p.onError = (j) => {
      if (site.errorsShown++ < 5) out(`   ! ${site.name} reports an error: ${j.msg ?? ''}${j.error ? `: ${j.error}` : ''}`)
    }
    p.exited.then(({ code, signal }) => {
      if (site.alive && site.node === p && !this.interrupted) {
        this.stopAll(new DemoFailure(`the node of ${site.name} stopped on its own (exit ${code ?? signal})`, p.tail()))
      }
    })
    await this.within(p.waitLine(/"msg":"ready"/, this.abort), 20_000, `the node of ${site.name} to start`).catch((err) => {
      throw err instanceof DemoFailure && err.details.length === 0 ? new DemoFailure(err.message, p.tail()) : err
    })
  }

  // --- status ---

  /**
   * Asks every running node for its status. A node that does not answer (or answers with an error) counts as
   * a failed request, and its previous answer is used; the failures are listed at the end, as they may point
   * at a bug in the node.
   */
  async statuses(): Promise<Map<Site, SiteStatus | null>> {
    const live = this.sites.filter((s) => s.alive)
    const res = await Promise.all(
      live.map(async (s) => {
        let why: string
        try {
          const r = (await askNode(s.dir, 'status', 3000)) as { status?: SiteStatus; error?: { code: string; message: string } } | null
          if (r?.status) {
            s.lastStatus = r.status
            return r.status
          }
          why = r?.error ? `${r.error.code}: ${r.error.message}` : 'the node is not listening'
        } catch (err) {
          why = (err as Error).message
        }
        this.statusFailures.set(why, (this.statusFailures.get(why) ?? 0) + 1)
        return s.lastStatus
      })
    )
    return new Map(live.map((s, i) => [s, res[i]]))
  }

  async statusNow(): Promise<Map<Site, SiteStatus | null>> {
    return this.within(this.statuses(), 8000, 'the nodes to answer a status request')
  }

  /**
   * Per shop's data: its log's length in the current epoch (from its origin's node) and how far each other
   * running site has applied that log (from that site's node; nothing while that site is still on another epoch).
   */
  views(st: Map<Site, SiteStatus | null>): DatasetView[] {
    return this.businesses.map((b) => {
      const own = b.origin.alive ? st.get(b.origin)?.datasets.find((d) => d.id === b.id) : undefined
      if (own && own.epoch === b.epoch && own.originSite === b.origin.name) b.length = own.length
      const copies: CopyView[] = []
      for (const holder of this.sites) {
        if (holder === b.origin || !holder.alive) continue
        const d = st.get(holder)?.datasets.find((x) => x.id === b.id)
        const h = d && d.epoch === b.epoch ? d.holders.find((x) => x.site === holder.name) : undefined
        copies.push({ holder, applied: h?.applied ?? null })
      }
      return { business: b, length: b.length, copies }
    })
  }

  static current(v: DatasetView, c: CopyView): boolean {
    return v.length !== null && v.length > 0 && c.applied !== null && c.applied >= v.length
  }

  // --- the live table ---

  private readonly COL = 27

  /** Each shop's data's epoch and log length when the previous row was printed. */
  private readonly shown = new Map<Business, { epoch: number; length: number }>()
  private lastRow = 0

  tableHeader(): void {
    out(`   In each shop's column: the orders in its live database, then how many of the other running shops`)
    out(`   hold an up-to-date copy of it (✓: all of them, to within a second; -N: the slowest is N updates behind).`)
    out(`   ${'time'.padStart(5)}  ${this.businesses.map((b) => b.owner.name.padEnd(this.COL)).join('')}`.trimEnd())
  }

  tableRow(views: DatasetView[]): void {
    const cells = views.map((v) => {
      const b = v.business
      const orders = `${b.till.counts().orders} orders`.padEnd(11)
      if (!b.origin.alive) return `OFF ${orders}${b.till.stats.transactions - (b.cutOffAt ?? 0)} unsent`.padEnd(this.COL)
      const where = b.origin === b.owner ? '' : `@${short(b.origin.name)} e${b.epoch} `
      if (v.copies.length === 0) return `${orders}${where}no copy running`.padEnd(this.COL)
      if (v.length === null) return `${orders}${where}0/${v.copies.length} …`.padEnd(this.COL)
      // Changes made since the previous row may still be on their way (a few milliseconds): a copy that holds
      // everything the shop had then counts as up to date.
      const before = this.shown.get(b)
      const recent = before && before.epoch === b.epoch ? Math.min(v.length, before.length) : v.length
      this.shown.set(b, { epoch: b.epoch, length: v.length })
      const ok = v.copies.filter((c) => v.length! > 0 && c.applied !== null && c.applied >= recent)
      const behind = Math.max(...v.copies.map((c) => v.length! - (c.applied ?? 0)))
      const mark = ok.length === v.copies.length ? ' ✓' : ` -${behind}`
      return `${orders}${where}${ok.length}/${v.copies.length}${mark}`.padEnd(this.COL)
    })
    out(`   ${this.elapsed().padStart(5)}  ${cells.join('')}`.trimEnd())
  }

  /**
   * Prints a row about every second for `ms`, or until `until` holds (checked at every poll); then fails with
   * `what` if it never did.
   */
  async watch(ms: number, until?: (views: DatasetView[], st: Map<Site, SiteStatus | null>) => boolean | Promise<boolean>, what = 'the copies to catch up'): Promise<DatasetView[]> {
    const end = Date.now() + ms
    let views: DatasetView[] = []
    for (;;) {
      this.checkShops()
      const st = await this.statusNow()
      views = this.views(st)
      const done = until ? await until(views, st) : false
      // A row about every second, and one at the end unless the last is very recent.
      const since = Date.now() - this.lastRow
      if (since >= 950 || ((done || Date.now() >= end) && since >= 400)) {
        this.tableRow(views)
        this.lastRow = Date.now()
      }
      if (done) return views
      if (Date.now() >= end) {
        if (until) throw new DemoFailure(`timed out after ${secs(ms)} waiting for ${what}`, this.describe(views))
        return views
      }
      await this.pause(until ? 200 : Math.min(1000, end - Date.now()))
    }
  }

  describe(views: DatasetView[]): string[] {
    return views.flatMap((v) => [
      `${v.business.owner.name}'s data, at ${v.business.origin.name} (epoch ${v.business.epoch}, ${v.business.origin.alive ? 'running' : 'switched off'}): its log has ${v.length ?? '?'} entries`,
      ...v.copies.map((c) => `  copy at ${c.holder.name}: applied ${c.applied ?? 'nothing of this epoch yet'}`)
    ])
  }

  checkShops(): void {
    for (const s of this.shops) {
      if (s.error) throw new DemoFailure(`a till could not write its database ${this.rel(s.file)}: ${s.error.message}`)
    }
  }

  /** Every running site holds all of the given shops' data, and their logs have not grown for a moment. */
  async converge(bs: Business[], ms: number): Promise<void> {
    let stable = 0
    let lengths = ''
    await this.watch(ms, (views) => {
      const vs = views.filter((v) => bs.includes(v.business))
      const now = vs.map((v) => v.length).join(',')
      const all = vs.every((v) => v.copies.length > 0 && v.copies.every((c) => Demo.current(v, c)))
      stable = all && now === lengths ? stable + 1 : 0
      lengths = now
      return stable >= 2
    })
  }

  // --- the comparison ---

  /**
   * The database a site holds of a shop's data: the shop's own file at the shop itself, else its replica file.
   * A replica's file name is fixed when it is first opened, after the origin of that time: the shop itself.
   */
  copyFile(holder: Site, b: Business): string {
    if (holder === b.owner) return b.owner.db
    const safe = (s: string) => s.replace(/[^A-Za-z0-9._-]+/g, '_')
    return path.join(holder.dir, 'replicas', `${safe(b.owner.name)}-${safe(b.name)}-${b.id.slice(0, 8)}.db`)
  }

  /** Compares `copy` with `origin`, giving a copy that differs a few more seconds (until `graceUntil`). */
  async compare(origin: string, copy: string, graceUntil: number): Promise<Comparison> {
    let cmp = compareDatabases(origin, copy)
    while (!cmp.equal && Date.now() < graceUntil) {
      await this.pause(500)
      cmp = compareDatabases(origin, copy)
    }
    return cmp
  }

  // --- clean-up ---

  async cleanup(): Promise<void> {
    if (this.deadline) clearTimeout(this.deadline)
    for (const s of this.shops) s.stop()
    for (const s of this.sites) s.alive = false
    if (this.interrupted) {
      // Ctrl-C in a terminal reaches the children too; give them a moment to stop by themselves.
      const t = Date.now()
      while (this.children.some((c) => !c.done) && Date.now() - t < 3000) await sleep(100)
    }
    await Promise.all(this.children.map((c) => c.stop(5000)))
    for (const s of this.shops) s.close()
    if (this.testnet) {
      await Promise.race([this.testnet.destroy().catch(() => {}), sleep(3000)])
      this.testnet = null
    }
    if (!this.keep) fs.rmSync(this.tmp, { recursive: true, force: true })
  }

  /** The last resort when the process exits without cleanup(): nothing may stay behind. */
  emergency(): void {
    for (const c of this.children) {
      try {
        if (!c.done) c.proc.kill('SIGKILL')
      } catch {
        // Already gone.
      }
    }
    if (!this.keep) fs.rmSync(this.tmp, { recursive: true, force: true })
  }

  // --- the story ---

  async run(): Promise<{ ok: boolean; lines: string[] }> {
    this.armDeadline()
    out('branchmesh demo: three shops on this machine, each one a live backup of the other two; one is lost, another takes over.')
    out(`Everything happens in ${this.tmp}${this.keep ? ' (kept afterwards: --keep)' : ' and is removed at the end'}.`)
    out('')

    // 1. The shops and the network.
    out('1. Opening three shops')
    const names = ['shop-north', 'shop-south', 'shop-east']
    names.forEach((name, i) => {
      const root = path.join(this.tmp, short(name))
      fs.mkdirSync(root)
      const db = path.join(root, 'shop.db')
      const shop = new Shop(db, 1000 + i * 7919)
      shop.seed(8 + i * 2, 12 + i * 3)
      this.shops.push(shop)
      this.sites.push({ name, root, dir: path.join(root, 'mesh'), db, shop, node: null, alive: false, lastStatus: null, errorsShown: 0 })
    })
    for (const s of this.sites) {
      const c = s.shop.counts()
      out(`   ${s.name.padEnd(11)} has its own database: ${c.customers} customers, ${c.orders} orders, ${c.lines} order lines so far.`)
    }
    this.testnet = await this.within(createTestnet(3, { host: '127.0.0.1' }), 15_000, 'the local test network to start')
    this.bootstrap = this.testnet.bootstrap.map((b) => `${b.host}:${b.port}`).join(',')
    out(`   A private network for the shops to find each other runs on this machine (${this.bootstrap}).`)
    out('')

    // 2. The mesh. Each shop's data is a dataset named after the shop, so that `mesh promote shop-east` says
    // which one it means.
    out('2. Connecting them, with the real commands: mesh init, invite, join and start')
    const [north, south, east] = this.sites
    const step = async (text: string, f: () => Promise<void>) => {
      const t = Date.now()
      process.stdout.write(`   ${text.padEnd(60)}`)
      try {
        await f()
      } catch (err) {
        out('FAILED')
        throw err
      }
      out(`done (${secs(Date.now() - t)})`)
    }
    await step(`${north.name} starts a mesh to protect its database`, async () => {
      await this.mesh(initCommand, ['init', '--dir', north.dir, '--site', north.name, '--sqlite', north.db, '--dataset', north.name, '--bootstrap', this.bootstrap])
    })
    await step(`${north.name} starts its node`, () => this.startNode(north))
    for (const s of [south, east]) {
      await step(`${s.name} joins with a one-time join code from ${north.name}`, async () => {
        const lines = await this.mesh(inviteCommand, ['invite', '--dir', north.dir])
        const code = lines.filter((l) => l.trim()).at(-1)?.trim() ?? ''
        if (!/^bm\d*-/.test(code)) throw new DemoFailure('mesh invite printed no join code', lines.slice(-5))
        await this.mesh(joinCommand, ['join', code, '--dir', s.dir, '--site', s.name, '--sqlite', s.db, '--dataset', s.name, '--bootstrap', this.bootstrap, '--timeout', '20s'])
      })
    }
    await step(`${south.name} and ${east.name} start their nodes`, async () => {
      await Promise.all([this.startNode(south), this.startNode(east)])
    })
    await step('all three shops find each other', async () => {
      const t = Date.now()
      for (;;) {
        const st = await this.statusNow()
        const ok = [...st.values()].every(
          (s) => s !== null && s.members.length === 3 && s.members.filter((m) => m.connected).length === 2 && s.datasets.length === 3
        )
        if (ok) {
          for (const s of this.sites) {
            const d = st.get(s)!.datasets.find((x) => x.originSite === s.name)
            if (!d) throw new DemoFailure(`${s.name}'s node does not list its own dataset`)
            this.businesses.push({ owner: s, id: d.id, name: d.name, origin: s, epoch: d.epoch, file: s.db, till: s.shop, length: null, cutOffAt: null })
          }
          return
        }
        if (Date.now() - t > 20_000) throw new DemoFailure('the three shops did not all connect to each other', this.sites.flatMap((s) => s.node?.tail(5) ?? []))
        await this.pause(200)
      }
    })
    const eb = this.businesses[2]
    out('')

    // 3. Trading.
    out(`3. Trading: each shop takes orders, takes payments, edits and cancels orders, about ${Math.round(1000 / TRADE_EVERY_MS)} times a second.`)
    out('   Each change is captured by the shop\'s node and sent to the two other shops as it happens.')
    this.tableHeader()
    for (const s of this.sites) s.shop.open(TRADE_EVERY_MS)
    await this.watch(TRADE_MS)
    out('')

    // 4. Losing a shop.
    const checks: Check[] = []
    const checkDir = path.join(this.tmp, 'checks')
    fs.mkdirSync(checkDir)
    out(`4. ${east.name} is cut off`)
    east.shop.stop()
    out(`   ${east.name}'s till pauses. Waiting until its last sales have reached the other two shops...`)
    await this.converge([eb], 15_000)
    out(`   ${north.name} and ${south.name} now hold everything ${east.name} wrote.`)
    east.alive = false
    eb.cutOffAt = east.shop.stats.transactions
    east.node!.signal('SIGKILL')
    const lostAt = Date.now()
    await this.within(east.node!.exited, 5000, `the node of ${east.name} to die`)
    out(`   ${east.name}'s node is killed on the spot (SIGKILL, no goodbye): the shop is cut off from the others.`)
    // Its database as it went dark: the point the divergence starts from. The copies cannot move until a
    // promotion (nothing else writes them), so they are compared with it now.
    const wentDark = path.join(checkDir, 'east-when-cut-off.db')
    copyDatabase(east.db, wentDark)
    for (const holder of [north, south]) {
      const cmp = compareDatabases(wentDark, this.copyFile(holder, eb))
      checks.push({ what: `${east.name}'s data as it went dark, held at ${holder.name}`, ok: cmp.equal, detail: cmp.equal ? `identical (${cmp.tables} tables, ${cmp.rows} rows)` : `DIFFERENT: ${cmp.difference}` })
    }
    const dark = checks.slice(-2)
    out(`   Its data at ${north.name} and ${south.name}, checked row by row against its database: ${dark.every((c) => c.ok) ? dark[0].detail : dark.map((c) => c.detail).join('; ')}.`)
    out(`   Its till, which knows nothing of branchmesh, keeps selling into its own database; those sales reach no one.`)
    out(`   (In ${east.name}'s column: OFF, the orders in its own database, and the till's changes that reached no one.)`)
    const offlineRows = east.shop.track()
    east.shop.open(OFFLINE_EVERY_MS, OFFLINE_SALES)
    await this.watch(15_000, () => !east.shop.trading, `${east.name}'s till to make its ${OFFLINE_SALES} sales`)
    const offlineSales = east.shop.stats.transactions - eb.cutOffAt
    const untilReturn = path.join(checkDir, 'east-before-it-returns.db')
    copyDatabase(east.db, untilReturn)
    out('')

    // 5. The failover.
    out(`5. ${north.name} takes over ${east.name}'s data: mesh promote ${eb.name} --dir ${this.rel(north.dir)}`)
    let attempt = await this.promote(north, eb)
    if (attempt.error?.code === 'ORIGIN_HEALTHY') {
      out(`   Refused at first, ORIGIN_HEALTHY: ${attempt.error.message.replace(/^[A-Z_]+: /, '')}.`)
      out(`   A node killed without a goodbye looks alive until it misses its heartbeats (up to 15 s): trying again every second.`)
      let last = Date.now()
      await this.watch(
        PROMOTE_WAIT_MS,
        async () => {
          if (Date.now() - last < 1000) return false
          last = Date.now()
          attempt = await this.promote(north, eb)
          return attempt.error?.code !== 'ORIGIN_HEALTHY'
        },
        `${east.name} to stop counting as healthy at ${north.name}`
      )
    }
    if (!attempt.promoted) {
      const e = attempt.error!
      throw new DemoFailure(`mesh promote ${eb.name} was refused at ${north.name}: ${e.code}: ${e.message.replace(/^[A-Z_]+: /, '')}${e.hint ? ` (${e.hint})` : ''}`)
    }
    const p = attempt.promoted
    out(`   Done, ${secs(Date.now() - lostAt)} after ${east.name} was cut off: ${north.name} is the origin of ${p.dataset} now (epoch ${p.epoch}),`)
    out(`   continuing from entry ${p.branch} of ${p.previousOrigin}'s log. The database to use from now on, as mesh promote printed it:`)
    out(`     ${p.path}`)
    eb.origin = north
    eb.epoch = p.epoch
    eb.file = p.path
    eb.length = null
    eb.cutOffAt = null
    const moved = new Shop(p.path, 4242)
    this.shops.push(moved)
    eb.till = moved
    moved.open(TRADE_EVERY_MS)
    out(`   ${east.name}'s business carries on in that file: a till for it writes there now (its copy was promoted, nothing copied).`)
    out(`   In ${east.name}'s column from now on, @${short(north.name)} e${p.epoch}: its data lives at ${north.name}, epoch ${p.epoch}. ${south.name} is told nothing:`)
    const followStart = Date.now()
    let southView: { applied: number; length: number; origin: string; epoch: number } | null = null
    await this.watch(
      15_000,
      (views, st) => {
        const d = st.get(south)?.datasets.find((x) => x.id === eb.id)
        const c = views.find((v) => v.business === eb)?.copies.find((x) => x.holder === south)
        if (d && c && d.epoch === eb.epoch && d.originSite === north.name && c.applied !== null && c.applied > 1) {
          southView = { applied: c.applied, length: d.length, origin: d.originSite, epoch: d.epoch }
        }
        return southView !== null && Date.now() - followStart >= FOLLOW_MS
      },
      `${south.name} to follow ${north.name}'s epoch ${p.epoch} of ${eb.name}`
    )
    const sv = southView!
    out(`   ${south.name}'s node follows by itself: its status says ${eb.name} has origin ${sv.origin}, epoch ${sv.epoch}, and it has applied ${sv.applied} of ${sv.length} entries.`)
    out('')

    // 6. The lost shop comes back.
    out(`6. ${east.name} comes back: its node starts again, with its database as its till left it`)
    east.lastStatus = null
    await step(`${east.name}'s node starts`, () => this.startNode(east))
    let fenced: SiteStatus['datasets'][number]['divergences'][number] | null = null
    let fencedAt = 0
    await this.watch(
      20_000,
      (views, st) => {
        const d = st.get(east)?.datasets.find((x) => x.id === eb.id)
        if (!fenced && d && d.epoch === eb.epoch && d.divergences.length > 0) {
          fenced = d.divergences[d.divergences.length - 1]
          fencedAt = Date.now()
        }
        const following = views.every((v) => v.copies.some((c) => c.holder === east && c.applied !== null))
        return fenced !== null && following && Date.now() - fencedAt >= RETURN_MS
      },
      `${east.name} to be fenced and to follow`
    )
    const div = fenced!
    const files = fs.existsSync(div.dir) ? fs.readdirSync(div.dir).sort() : []
    out(`   It learnt that ${north.name} took over ${eb.name} (epoch ${eb.epoch}) and was fenced: it stopped capturing its database,`)
    out(`   and kept aside the ${div.changes} row change${div.changes === 1 ? '' : 's'} its till made while cut off (${offlineSales} transactions), in`)
    out(`     ${this.rel(div.dir)}/  (${files.join(', ')})`)
    out(`   neither applied nor dropped (checked below), for someone to review and re-enter at ${north.name}; its mesh status warns`)
    out(`   about that folder until then. Its database was rebuilt to ${north.name}'s and follows it now, as a copy.`)
    out('')

    // 7. Closing time.
    out(`7. Closing time: the tills stop; their last changes travel to every shop.`)
    for (const s of this.shops) s.stop()
    await this.pause(300)
    await this.converge(this.businesses, 20_000)
    out('')

    // 8. The proof.
    out('8. Checking every copy, row by row and value by value, against its current origin')
    // The status said every copy is current; should one still differ, give it a few more seconds in all.
    const graceUntil = Date.now() + 5000
    for (const c of checks) out(`   ${(c.what + ':').padEnd(60)} ${c.detail}`)
    let copies = 0
    for (const b of this.businesses) {
      for (const holder of this.sites) {
        if (holder === b.origin) continue
        const cmp = await this.compare(b.file, this.copyFile(holder, b), graceUntil)
        copies++
        const what =
          holder === b.owner
            ? `${b.owner.name}'s data at ${holder.name} itself (origin ${b.origin.name})`
            : `${b.owner.name}'s data held at ${holder.name}${b.origin !== b.owner ? ` (origin ${b.origin.name})` : ''}`
        const c: Check = { what, ok: cmp.equal, detail: cmp.equal ? `identical (${cmp.tables} tables, ${cmp.rows} rows)` : `DIFFERENT: ${cmp.difference}` }
        checks.push(c)
        out(`   ${(c.what + ':').padEnd(60)} ${c.detail}`)
      }
    }

    out(`   ${east.name}'s divergence folder, against what its till did while cut off (${offlineSales} transactions, ${offlineRows.size} rows):`)
    const divChecks: Check[] = []
    {
      // The rows: every row change kept is one the till made while cut off, and every row it changed is kept.
      let kept: string[] = []
      let detail: string
      try {
        const lines = fs.readFileSync(path.join(div.dir, 'changes.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l))
        const ops = lines.filter((l) => l.op === 'upsert' || l.op === 'delete')
        kept = ops.map((l) => `${l.table}:${(l.op === 'upsert' ? l.row : l.key).id}`)
        const keptSet = new Set(kept)
        const missing = [...offlineRows].filter((k) => !keptSet.has(k))
        const extra = kept.filter((k) => !offlineRows.has(k))
        const twice = kept.length - keptSet.size
        const ok = missing.length === 0 && extra.length === 0 && twice === 0 && ops.length === div.changes
        detail = ok
          ? `the same ${kept.length} rows, none missing, none extra`
          : `DIFFERENT: ${ops.length} changes kept (status says ${div.changes}); missing ${missing.slice(0, 5).join(', ') || 'none'}; extra ${extra.slice(0, 5).join(', ') || 'none'}; twice ${twice}`
        divChecks.push({ what: `the rows in changes.jsonl`, ok, detail })
      } catch (err) {
        divChecks.push({ what: `the rows in changes.jsonl`, ok: false, detail: `cannot be read: ${(err as Error).message}` })
      }
      // The values: the kept changes, replayed onto the data as it went dark, give the database as the till left it.
      const replayed = path.join(checkDir, 'east-replayed.db')
      let cmp: Comparison
      try {
        replaySql(wentDark, path.join(div.dir, 'changes.sql'), replayed)
        cmp = compareDatabases(untilReturn, replayed)
      } catch (err) {
        cmp = { equal: false, tables: 0, rows: 0, difference: `changes.sql cannot be replayed: ${(err as Error).message}` }
      }
      divChecks.push({
        what: 'changes.sql replayed onto its data as it went dark',
        ok: cmp.equal,
        detail: cmp.equal ? `gives its database as the till left it (${cmp.rows} rows)` : `DIFFERENT: ${cmp.difference}`
      })
      // Compared as a copy: opening the file itself would leave SQLite's -wal and -shm files in that folder.
      const beforeCopy = path.join(checkDir, 'before.db')
      for (const ext of ['', '-wal']) {
        if (fs.existsSync(path.join(div.dir, `before.db${ext}`))) fs.copyFileSync(path.join(div.dir, `before.db${ext}`), `${beforeCopy}${ext}`)
      }
      const before = compareDatabases(untilReturn, beforeCopy)
      divChecks.push({
        what: 'before.db',
        ok: before.equal,
        detail: before.equal ? `is its database as the till left it (${before.rows} rows)` : `DIFFERENT: ${before.difference}`
      })
    }
    for (const c of divChecks) out(`     ${(c.what + ':').padEnd(58)} ${c.detail}`)
    checks.push(...divChecks.map((c) => ({ ...c, what: `${east.name}'s divergence folder: ${c.what}` })))

    const ok = checks.every((c) => c.ok)
    const total = this.shops.reduce((n, s) => n + s.stats.transactions, 0)
    const lines = ok
      ? [
          `PASS: every copy of every shop's data is identical to its current origin, row by row (${copies} copies checked),`,
          `      and ${east.name}'s divergence folder holds exactly the ${div.changes} rows its till changed while cut off (${offlineSales} transactions).`,
          `      ${east.name} was lost; ${north.name} took over its data (epoch ${eb.epoch}) and its business kept selling there;`,
          `      ${east.name} came back, was fenced, kept its offline sales aside, and now follows ${north.name} like ${south.name} does.`,
          `      (${total} transactions were made while the mesh ran; took ${secs(Date.now() - this.started)}.)`
        ]
      : [
          `FAIL: ${checks.filter((c) => !c.ok).length} of ${checks.length} checks failed:`,
          ...checks.filter((c) => !c.ok).map((c) => `      ${c.what}: ${c.detail}`)
        ]
    return { ok, lines }
  }
}

export const command: Command = {
  usage,
  summary: 'three shops on this machine protecting each other, then a failover (about 40 s)',
  async run(args) {
    const { values } = parse('demo', args, { keep: { type: 'boolean' } })
    if (values.dir !== undefined || values.bootstrap !== undefined) {
      throw MeshError.USAGE('mesh demo takes neither --dir nor --bootstrap: it makes its own temporary folder and test network', {
        hint: 'Try: mesh demo'
      })
    }
    const demo = new Demo(values.keep === true)
    const onExit = () => demo.emergency()
    let signals = 0
    const onSignal = (sig: NodeJS.Signals) => {
      signals++
      if (signals > 1) {
        // A second Ctrl-C: stop everything now.
        demo.emergency()
        process.exit(130)
      }
      demo.interrupted = true
      demo.stopAll(new Interrupted(sig))
    }
    process.on('exit', onExit)
    process.on('SIGINT', onSignal)
    process.on('SIGTERM', onSignal)

    let verdict: string[]
    let code: number
    try {
      const r = await demo.run()
      verdict = r.lines
      code = r.ok ? 0 : 1
    } catch (err) {
      code = err instanceof Interrupted ? 130 : 1
      if (err instanceof Interrupted) verdict = ['Interrupted: the demo was stopped before it could check the copies.']
      else if (err instanceof DemoFailure) {
        verdict = [`FAIL: ${err.message}.`, ...(err.details.length ? ['      What it printed last:', ...err.details.map((d) => `        ${d}`)] : [])]
      } else verdict = [`FAIL: unexpected error: ${(err as Error)?.stack ?? String(err)}`]
    }
    out('')
    process.stdout.write('Cleaning up: stopping the nodes and the test network' + (demo.keep ? '' : ', removing the temporary folder') + '... ')
    try {
      await demo.cleanup()
      out('done.')
    } catch (err) {
      out(`failed: ${(err as Error).message}`)
      demo.emergency()
    }
    if (demo.keep) out(`The databases, the copies and each node's log (mesh/node.log) are in ${demo.tmp}`)
    if (demo.statusFailures.size > 0) {
      const n = [...demo.statusFailures.values()].reduce((a, b) => a + b, 0)
      out('')
      out(`Note: ${n} status request${n === 1 ? '' : 's'} to the nodes failed; the demo used the previous answer instead:`)
      for (const [why, k] of demo.statusFailures) out(`  ${k} x ${why}`)
    }
    out('')
    for (const l of verdict) out(l)
    process.off('exit', onExit)
    process.off('SIGINT', onSignal)
    process.off('SIGTERM', onSignal)
    return code
  }
}
