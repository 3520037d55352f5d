/**
 * The apply loop of a replica: log -> replica database, one unit at a time, in log order.
 *
 * The loop never skips: a block that fails to decode (damaged, or from a newer format) stops this replica
 * at the unit before it, with the error kept for `mesh status`; it does not guess past it.
 */
import { EventEmitter } from 'node:events'
import { MeshError } from '../protocol/index.ts'
import type { ApplySide, Logger } from '../adapters/index.ts'
import { silentLogger } from '../adapters/index.ts'
import type { DatasetLog } from './log.ts'

export interface ApplyLoopOptions {
  log: DatasetLog
  apply: ApplySide
  logger?: Logger
  /**
   * Called when a block fails to decode in this site's copy of the log. It may drop the local copy and fetch
   * the block again (hypercore verifies what arrives against the writer's signature); true means try again.
   * Each block is repaired at most once: a block that is still bad came that way from its writer.
   */
  repair?: (block: number) => Promise<boolean>
}

export interface ApplyStats {
  applied: number
  units: number
  lastAppliedAt: number | null
  lastError: MeshError | null
  /** Set when applying stopped for good (a damaged block, a foreign log). */
  stopped: boolean
}

export class ApplyLoop extends EventEmitter {
  readonly stats: ApplyStats = { applied: 0, units: 0, lastAppliedAt: null, lastError: null, stopped: false }
  private readonly log: DatasetLog
  private readonly apply: ApplySide
  private readonly logger: Logger
  private readonly repair: ApplyLoopOptions['repair']
  private readonly repaired = new Set<number>()
  private running = false
  private loop: Promise<void> | null = null
  private wake: (() => void) | null = null
  private readonly onAppend = () => this.wake?.()

  constructor(opts: ApplyLoopOptions) {
    super()
    this.log = opts.log
    this.apply = opts.apply
    this.logger = opts.logger ?? silentLogger
    this.repair = opts.repair
  }

  async start(): Promise<void> {
    await this.apply.open()
    this.stats.applied = this.apply.position()?.length ?? 0
    this.running = true
    this.log.core.on('append', this.onAppend)
    this.loop = this.run()
  }

  /** Applies every complete unit that is here now. Returns how many units it applied. */
  async catchUp(): Promise<number> {
    let n = 0
    let epoch = this.apply.position()?.epoch ?? null
    for (;;) {
      const next = this.apply.position()?.length ?? 0
      if (next >= this.log.length) return n
      const unit = await this.log.unit(next, { wait: true })
      if (unit === null) return n
      if (epoch === null) {
        const header = unit.entries[0]
        if (header.kind !== 'header') throw MeshError.BAD_LOG('the log does not start with a header')
        epoch = header.epoch
      }
      const length = unit.start + unit.entries.length
      const treeHash = await this.log.treeHash(length)
      await this.apply.apply(unit, { log: this.log.key, epoch, length, treeHash })
      n++
      this.stats.units++
      this.stats.applied = length
      this.stats.lastAppliedAt = Date.now()
      let time: number | null = null
      for (const e of unit.entries) if (e.kind === 'transaction') time = Math.max(time ?? 0, e.time)
      this.emit('applied', { length, time })
    }
  }

  private async run(): Promise<void> {
    let backoff = 100
    while (this.running) {
      try {
        const n = await this.catchUp()
        if (this.stats.lastError && !this.stats.stopped) this.stats.lastError = null
        backoff = 100
        if (n === 0 && this.running) await this.idle(1000)
      } catch (err) {
        const e = MeshError.wrap(err, MeshError.IO_ERROR)
        this.stats.lastError = e
        this.emit('apply-error', e)
        const block = e.context.block
        if (e.code === 'BAD_ENTRY' && typeof block === 'number' && this.repair && !this.repaired.has(block)) {
          this.repaired.add(block)
          if (await this.repair(block)) continue
        }
        if (!e.retryable) {
          this.stats.stopped = true
          this.running = false
          this.logger.error('apply stopped', { code: e.code, error: e.message, block: e.context.block })
          return
        }
        this.logger.warn('apply failed, retrying', { code: e.code, error: e.message, retryInMs: backoff })
        await this.idle(backoff)
        backoff = Math.min(backoff * 2, 10_000)
      }
    }
  }

  private idle(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(done, ms)
      function done() {
        clearTimeout(t)
        resolve()
      }
      this.wake = () => {
        this.wake = null
        done()
      }
    })
  }

  /** Resolves once the replica has applied at least `length` blocks (or applying stopped). */
  async waitFor(length: number): Promise<void> {
    while (this.stats.applied < length && !this.stats.stopped) {
      await new Promise<void>((resolve) => {
        const done = () => {
          this.off('applied', done)
          this.off('apply-error', done)
          resolve()
        }
        this.on('applied', done)
        this.on('apply-error', done)
      })
    }
  }

  async stop(): Promise<void> {
    this.running = false
    this.log.core.off('append', this.onAppend)
    this.wake?.()
    await this.loop
    this.loop = null
  }
}
