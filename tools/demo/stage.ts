/**
 * What every step of `mesh demo` works on: the temporary folder, the shops (sites) and their data
 * (businesses), the child processes, the overall deadline and Ctrl-C, and the clean-up.
 */
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import type { Testnet } from 'hyperdht/testnet.js'
import type { SiteStatus } from '../../node/index.ts'
import type { NodeProc } from '../proc.ts'
import type { Shop } from './shop.ts'

/**
 * The story takes about a minute; this deadline only stops one that hangs. A busy or slow PC takes longer, and
 * a demo that fails there for time alone would tell the user something false about the mesh.
 */
const TOTAL_LIMIT_MS = 180_000

/** The demo cannot go on: the reason, and what the process concerned printed last. */
export class DemoFailure extends Error {
  constructor(
    message: string,
    readonly details: string[] = []
  ) {
    super(message)
  }
}

/** Ctrl-C (or SIGTERM) stopped the demo. */
export class Interrupted extends Error {}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms))
export const secs = (ms: number) => `${(ms / 1000).toFixed(1)} s`
export const short = (site: string) => site.replace(/^shop-/, '')

export interface Site {
  name: string
  /** The shop's folder: its database, and the node's data directory under it. */
  root: string
  dir: string
  db: string
  /** The shop's own till, writing `db`. */
  shop: Shop
  node: NodeProc | null
  /** False while its node is off. */
  alive: boolean
  /** Its node's last answer to a status request. */
  lastStatus: SiteStatus | null
  errorsShown: number
}

/** One shop's data (its dataset), and where it lives now: at that shop, or, after a failover, at another. */
export interface Business {
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

/** One line of the final check. */
export interface Check {
  what: string
  ok: boolean
  detail: string
}

export class Demo {
  readonly started = Date.now()
  readonly tmp: string
  readonly sites: Site[] = []
  readonly businesses: Business[] = []
  /** Every till, the sites' own and the one that carries on at the promoted database. */
  readonly shops: Shop[] = []
  readonly children: NodeProc[] = []
  testnet: Testnet | null = null
  bootstrap = ''
  interrupted = false
  /** Status requests that failed, by reason. */
  readonly statusFailures = new Map<string, number>()
  /** The live table: each shop's data's epoch and log length when the previous row was printed, and when. */
  readonly table = { shown: new Map<Business, { epoch: number; length: number }>(), lastRow: 0 }
  private readonly stopper = new AbortController()
  /** Fires on Ctrl-C, at the overall deadline, or when a node stops on its own; its reason says which. */
  readonly signal = this.stopper.signal
  /** Rejects with that reason. */
  readonly abort: Promise<never>
  private deadline: NodeJS.Timeout | null = null

  constructor(readonly keep: boolean) {
    this.tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'branchmesh-demo-'))
    this.abort = new Promise<never>((_, reject) => {
      this.signal.addEventListener('abort', () => reject(this.signal.reason), { once: true })
    })
    this.abort.catch(() => {})
  }

  elapsed(): string {
    return `${Math.round((Date.now() - this.started) / 1000)}s`
  }

  /** A path inside the temporary folder, as shown to the user. */
  rel(p: string): string {
    return path.relative(this.tmp, p)
  }

  /** Stops the story with `reason` (the first reason given wins). */
  stopAll(reason: Error): void {
    this.stopper.abort(reason)
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

  checkShops(): void {
    for (const s of this.shops) {
      if (s.error) throw new DemoFailure(`a till could not write its database ${this.rel(s.file)}: ${s.error.message}`)
    }
  }

  /**
   * The database a site holds of a shop's data: the shop's own file at the shop itself, else its replica file.
   * A replica's file name is fixed when it is first opened, after the origin of that time: the shop itself.
   */
  copyFile(holder: Site, b: Business): string {
    if (holder === b.owner) return b.owner.db
    const safe = (s: string) => s.replace(/[^A-Za-z0-9._-]+/g, '_')
    return path.join(holder.dir, 'replicas', `${safe(b.owner.name)}-${safe(b.name)}-${b.id.slice(0, 8)}.db`)
  }

  async cleanup(): Promise<void> {
    if (this.deadline) clearTimeout(this.deadline)
    for (const s of this.shops) s.stop()
    for (const s of this.sites) s.alive = false
    if (this.interrupted) {
      // Ctrl-C in a terminal reaches the children too; give them a moment to stop by themselves.
      const t = Date.now()
      while (this.children.some((c) => c.running) && Date.now() - t < 3000) await sleep(100)
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
        c.signal('SIGKILL')
      } catch {
        // Already gone.
      }
    }
    if (!this.keep) fs.rmSync(this.tmp, { recursive: true, force: true })
  }
}
