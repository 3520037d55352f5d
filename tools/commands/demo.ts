/**
 * `mesh demo`: three shops on this machine protecting each other, with nothing to set up.
 *
 * It runs the real thing: a local DHT test network (in this process); for each shop a SQLite database written
 * by a simulated shop (tools/demo-shop.ts, in this process, so the writes come from another process than the
 * node's, as in a real shop); and the real commands: `mesh init`, `invite` and `join` run here through their
 * own `run` (their output kept, shown only if they fail), and each shop's node is `mesh start` in its own OS
 * process. It shows the copies converge, switches one shop off (SIGKILL: no goodbye), and checks row by row
 * that the two others still hold all of its data and that every copy equals its origin. Exit 0 only if so.
 *
 * What it does not show: failover (promoting a copy to a new origin) is not built yet, so the shop that went
 * off stays off. And a shop switched off while its latest sales are still on their way loses those: the demo
 * waits until they have arrived before it pulls the plug, and says so.
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
import { askNode, type SiteStatus } from '../../node/index.ts'
import { Shop, compareDatabases, type Comparison } from '../demo-shop.ts'
import { out, parse, type Command } from './common.ts'
import { command as initCommand } from './init.ts'
import { command as inviteCommand } from './invite.ts'
import { command as joinCommand } from './join.ts'

export const usage = `mesh demo [--keep]

Shows branchmesh at work on this machine, with nothing to set up and no internet: three shops (shop-north,
shop-south, shop-east), each with its own database and a node of its own, trade for a while and protect each
other; then shop-east is switched off, and the demo checks, row by row, that the two others still hold all of
its data and that every copy equals the shop it came from. Takes about 30 seconds.
Everything happens in a temporary folder, removed at the end.
  --keep   keep the temporary folder (databases, copies, node logs) to look at afterwards
Exit code: 0 if every copy equals its origin, 1 if not (or if something failed).`

const MESH_JS = fileURLToPath(new URL('../mesh.js', import.meta.url))
/**
 * Each child runs tools/mesh.js behind this guard: when this process dies without stopping it (SIGKILL, a
 * crash), the child's stdin pipe closes and the child stops itself, so no node outlives the demo.
 */
const GUARD = `process.stdin.on('end', () => process.kill(process.pid, 'SIGTERM')); process.stdin.on('error', () => {}); process.stdin.resume(); await import(${JSON.stringify(pathToFileURL(MESH_JS).href)})`

/** The whole story must end by then (clean-up comes after, so the demo stays under a minute). */
const TOTAL_LIMIT_MS = 48_000
const TRADE_MS = 15_000
const AFTER_LOSS_MS = 6_000
const TRADE_EVERY_MS = 250

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
  shop: Shop
  node: MeshProc | null
  /** False once switched off. */
  alive: boolean
  /** The last length of its own log its node reported (kept after it is switched off). */
  lastLength: number | null
  /** Its node's last answer to a status request. */
  lastStatus: SiteStatus | null
  errorsShown: number
}

interface CopyView {
  holder: Site
  applied: number | null
}

interface DatasetView {
  origin: Site
  id: string | null
  name: string | null
  length: number | null
  copies: CopyView[]
}

// --- the demo ------------------------------------------------------------------------------------------------------

class Demo {
  readonly started = Date.now()
  readonly tmp: string
  readonly sites: Site[] = []
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
   * Runs a short command (init, invite, join) in this process, through its own `run`, as `mesh` would: its
   * output is kept (the demo tells the story instead) and shown only if it fails. Returns its output lines.
   */
  async mesh(cmd: Command, args: string[], timeoutMs = 25_000): Promise<string[]> {
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
      if (code !== 0) throw new DemoFailure(`${label} failed (exit ${code})`, lines)
      return lines
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

  /** Starts a site's node (`mesh start`) and waits until it says it is ready. */
  async startNode(site: Site): Promise<void> {
    const p = new MeshProc(`the node of ${site.name}`, ['start', '--dir', site.dir, '--log-json'])
    this.children.push(p)
    site.node = p
    site.alive = true
    p.onError = (j) => {
      if (site.errorsShown++ < 5) out(`   ! ${site.name} reports an error: ${j.msg ?? ''}${j.error ? `: ${j.error}` : ''}`)
    }
    p.exited.then(({ code, signal }) => {
      if (site.alive && !this.interrupted) {
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

  /** Per shop: its log's length (from its own node) and how far each other live shop has applied it (from that shop's node). */
  views(st: Map<Site, SiteStatus | null>): DatasetView[] {
    return this.sites.map((origin) => {
      const own = st.get(origin)?.datasets.find((d) => d.originSite === origin.name) ?? null
      if (own && origin.alive) origin.lastLength = own.length
      let id = own?.id ?? null
      let name = own?.name ?? null
      const copies: CopyView[] = []
      for (const holder of this.sites) {
        if (holder === origin || !holder.alive) continue
        const d = st.get(holder)?.datasets.find((x) => x.originSite === origin.name)
        if (d) {
          id ??= d.id
          name ??= d.name
        }
        const h = d?.holders.find((x) => x.site === holder.name)
        copies.push({ holder, applied: h?.applied ?? null })
      }
      return { origin, id, name, length: origin.lastLength, copies }
    })
  }

  static current(v: DatasetView, c: CopyView): boolean {
    return v.length !== null && v.length > 0 && c.applied !== null && c.applied >= v.length
  }

  // --- the live table ---

  private readonly COL = 24

  /** Each shop's log length when the previous row was printed, and when that was. */
  private readonly shown = new Map<Site, number>()
  private lastRow = 0

  tableHeader(): void {
    out(`   In each shop's column: the orders in its own database, then how many of the other running shops`)
    out(`   hold an up-to-date copy of it (✓: all of them, to within a second; -N: the slowest is N updates behind).`)
    out(`   ${'time'.padStart(5)}  ${this.sites.map((s) => s.name.padEnd(this.COL)).join('')}`.trimEnd())
  }

  tableRow(views: DatasetView[]): void {
    const cells = views.map((v) => {
      const orders = `${v.origin.shop.counts().orders} orders`.padEnd(11)
      const state = v.origin.alive ? '' : 'OFF '
      if (v.copies.length === 0) return `${state}${orders}no copy running`.padEnd(this.COL)
      if (v.length === null) return `${state}${orders}0/${v.copies.length} …`.padEnd(this.COL)
      // Changes made since the previous row may still be on their way (a few milliseconds): a copy that holds
      // everything the shop had then counts as up to date.
      const recent = Math.min(v.length, this.shown.get(v.origin) ?? v.length)
      this.shown.set(v.origin, v.length)
      const ok = v.copies.filter((c) => v.length! > 0 && c.applied !== null && c.applied >= recent)
      const behind = Math.max(...v.copies.map((c) => v.length! - (c.applied ?? 0)))
      const mark = ok.length === v.copies.length ? ' ✓' : ` -${behind}`
      return `${state}${orders}${ok.length}/${v.copies.length}${mark}`.padEnd(this.COL)
    })
    out(`   ${this.elapsed().padStart(5)}  ${cells.join('')}`.trimEnd())
  }

  /** Prints a row about every second for `ms`, or until `until` holds (checked at every poll). */
  async watch(ms: number, until?: (views: DatasetView[]) => boolean): Promise<DatasetView[]> {
    const end = Date.now() + ms
    let views: DatasetView[] = []
    for (;;) {
      this.checkShops()
      views = this.views(await this.within(this.statuses(), 8000, 'the nodes to answer a status request'))
      const done = until ? until(views) : false
      // A row about every second, and one at the end unless the last is very recent.
      const since = Date.now() - this.lastRow
      if (since >= 950 || ((done || Date.now() >= end) && since >= 400)) {
        this.tableRow(views)
        this.lastRow = Date.now()
      }
      if (done) return views
      if (Date.now() >= end) {
        if (until) throw new DemoFailure(`timed out after ${secs(ms)} waiting for the copies to catch up`, this.describe(views))
        return views
      }
      await this.pause(until ? 200 : Math.min(1000, end - Date.now()))
    }
  }

  describe(views: DatasetView[]): string[] {
    return views.flatMap((v) => [
      `${v.origin.name} (${v.origin.alive ? 'running' : 'switched off'}): its log has ${v.length ?? '?'} entries`,
      ...v.copies.map((c) => `  copy at ${c.holder.name}: applied ${c.applied ?? 'nothing yet'}`)
    ])
  }

  checkShops(): void {
    for (const s of this.sites) {
      if (s.shop.error) throw new DemoFailure(`the shop program of ${s.name} could not write its database: ${s.shop.error.message}`)
    }
  }

  /** Every live shop's copies hold all of the given shops' logs, and those logs have not grown for a moment. */
  async converge(origins: Site[], ms: number): Promise<void> {
    let stable = 0
    let lengths = ''
    await this.watch(ms, (views) => {
      const vs = views.filter((v) => origins.includes(v.origin))
      const now = vs.map((v) => v.length).join(',')
      const all = vs.every((v) => v.copies.length > 0 && v.copies.every((c) => Demo.current(v, c)))
      stable = all && now === lengths ? stable + 1 : 0
      lengths = now
      return stable >= 2
    })
  }

  // --- the comparison ---

  replicaFile(holder: Site, v: DatasetView): string {
    if (v.id === null || v.name === null) throw new DemoFailure(`${holder.name} does not know ${v.origin.name}'s dataset`)
    const safe = (s: string) => s.replace(/[^A-Za-z0-9._-]+/g, '_')
    return path.join(holder.dir, 'replicas', `${safe(v.origin.name)}-${safe(v.name)}-${v.id.slice(0, 8)}.db`)
  }

  // --- clean-up ---

  async cleanup(): Promise<void> {
    if (this.deadline) clearTimeout(this.deadline)
    for (const s of this.sites) s.shop.stop()
    for (const s of this.sites) s.alive = false
    if (this.interrupted) {
      // Ctrl-C in a terminal reaches the children too; give them a moment to stop by themselves.
      const t = Date.now()
      while (this.children.some((c) => !c.done) && Date.now() - t < 3000) await sleep(100)
    }
    await Promise.all(this.children.map((c) => c.stop(5000)))
    for (const s of this.sites) s.shop.close()
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
    out('branchmesh demo: three shops on this machine, each one a live backup of the other two.')
    out(`Everything happens in ${this.tmp}${this.keep ? ' (kept afterwards: --keep)' : ' and is removed at the end'}.`)
    out('')

    // 1. The shops and the network.
    out('1. Opening three shops')
    const names = ['shop-north', 'shop-south', 'shop-east']
    names.forEach((name, i) => {
      const root = path.join(this.tmp, name.replace(/^shop-/, ''))
      fs.mkdirSync(root)
      const db = path.join(root, 'shop.db')
      const shop = new Shop(db, 1000 + i * 7919)
      shop.seed(8 + i * 2, 12 + i * 3)
      this.sites.push({ name, root, dir: path.join(root, 'mesh'), db, shop, node: null, alive: false, lastLength: null, lastStatus: null, errorsShown: 0 })
    })
    for (const s of this.sites) {
      const c = s.shop.counts()
      out(`   ${s.name.padEnd(11)} has its own database: ${c.customers} customers, ${c.orders} orders, ${c.lines} order lines so far.`)
    }
    this.testnet = await this.within(createTestnet(3, { host: '127.0.0.1' }), 15_000, 'the local test network to start')
    this.bootstrap = this.testnet.bootstrap.map((b) => `${b.host}:${b.port}`).join(',')
    out(`   A private network for the shops to find each other runs on this machine (${this.bootstrap}).`)
    out('')

    // 2. The mesh.
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
      await this.mesh(initCommand, ['init', '--dir', north.dir, '--site', north.name, '--sqlite', north.db, '--bootstrap', this.bootstrap])
    })
    await step(`${north.name} starts its node`, () => this.startNode(north))
    for (const s of [south, east]) {
      await step(`${s.name} joins with a one-time join code from ${north.name}`, async () => {
        const lines = await this.mesh(inviteCommand, ['invite', '--dir', north.dir])
        const code = lines.filter((l) => l.trim()).at(-1)?.trim() ?? ''
        if (!/^bm\d*-/.test(code)) throw new DemoFailure('mesh invite printed no join code', lines.slice(-5))
        await this.mesh(joinCommand, ['join', code, '--dir', s.dir, '--site', s.name, '--sqlite', s.db, '--bootstrap', this.bootstrap, '--timeout', '20s'])
      })
    }
    await step(`${south.name} and ${east.name} start their nodes`, async () => {
      await Promise.all([this.startNode(south), this.startNode(east)])
    })
    await step('all three shops find each other', async () => {
      const t = Date.now()
      for (;;) {
        const st = await this.within(this.statuses(), 8000, 'the nodes to answer a status request')
        const ok = [...st.values()].every(
          (s) => s !== null && s.members.length === 3 && s.members.filter((m) => m.connected).length === 2 && s.datasets.length === 3
        )
        if (ok) return
        if (Date.now() - t > 20_000) throw new DemoFailure('the three shops did not all connect to each other', this.sites.flatMap((s) => s.node?.tail(5) ?? []))
        await this.pause(200)
      }
    })
    out('')

    // 3. Trading.
    out(`3. Trading: each shop takes orders, takes payments, edits and cancels orders, about ${Math.round(1000 / TRADE_EVERY_MS)} times a second.`)
    out('   Each change is captured by the shop\'s node and sent to the two other shops as it happens.')
    this.tableHeader()
    for (const s of this.sites) s.shop.open(TRADE_EVERY_MS)
    await this.watch(TRADE_MS)
    out('')

    // 4. Losing a shop.
    out(`4. ${east.name} loses power`)
    east.shop.stop()
    out(`   ${east.name} stops selling. Waiting until its last sales have reached the other two shops...`)
    await this.converge([east], 15_000)
    out(`   ${north.name} and ${south.name} now hold everything ${east.name} wrote.`)
    east.alive = false
    east.node!.signal('SIGKILL')
    await this.within(east.node!.exited, 5000, `the node of ${east.name} to die`)
    out(`   ${east.name}'s computer is switched off: its node is killed on the spot (SIGKILL), no goodbye.`)
    out(`   ${north.name} and ${south.name} keep trading and keep protecting each other:`)
    await this.watch(AFTER_LOSS_MS)
    out('')

    // 5. Closing time.
    out(`5. Closing time: ${north.name} and ${south.name} stop selling; their last changes travel to each other.`)
    north.shop.stop()
    south.shop.stop()
    await this.pause(300)
    await this.converge([north, south], 15_000)
    out('')

    // 6. The proof.
    out('6. Checking every copy, row by row and value by value, against the shop it came from')
    const final = this.views(await this.within(this.statuses(), 8000, 'the nodes to answer a status request'))
    const results: Array<{ origin: Site; holder: Site; cmp: Comparison }> = []
    // The status said every copy is current; should one still differ, give it a few more seconds in all.
    const graceUntil = Date.now() + 5000
    for (const origin of [east, north, south]) {
      const v = final.find((x) => x.origin === origin)!
      for (const holder of [north, south]) {
        if (holder === origin) continue
        let cmp = compareDatabases(origin.db, this.replicaFile(holder, v))
        while (!cmp.equal && Date.now() < graceUntil) {
          await this.pause(500)
          cmp = compareDatabases(origin.db, this.replicaFile(holder, v))
        }
        results.push({ origin, holder, cmp })
        const what = `${origin.name}'s data held at ${holder.name}${origin === east ? ` (${east.name} is off)` : ''}:`
        out(`   ${what.padEnd(56)} ${cmp.equal ? `identical (${cmp.tables} tables, ${cmp.rows} rows)` : `DIFFERENT: ${cmp.difference}`}`)
      }
    }
    const ok = results.every((r) => r.cmp.equal)
    const eastRows = results.find((r) => r.origin === east)?.cmp.rows ?? 0
    const total = (s: Site) => s.shop.stats.transactions
    const lines = ok
      ? [
          `PASS: every copy is identical to the shop it came from, row by row (${results.length} copies checked).`,
          `      ${east.name} is switched off, yet ${north.name} and ${south.name} each hold all ${eastRows} rows of its data.`,
          `      (${total(north) + total(south) + total(east)} transactions were made while the mesh ran; took ${secs(Date.now() - this.started)}.)`
        ]
      : [
          `FAIL: ${results.filter((r) => !r.cmp.equal).length} of ${results.length} copies differ from the shop they came from:`,
          ...results.filter((r) => !r.cmp.equal).map((r) => `      ${r.origin.name}'s data at ${r.holder.name}: ${r.cmp.difference}`)
        ]
    return { ok, lines }
  }
}

export const command: Command = {
  usage,
  summary: 'three shops on this machine protecting each other (about 30 s)',
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
