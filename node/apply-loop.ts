/**
 * The apply loop of a replica: log -> replica database, one unit at a time, in log order.
 *
 * A dataset's history is a chain of logs, one per epoch: each later log starts with a header naming the log
 * and length it continues from. The loop is given that chain as segments and walks it: it applies a log up to
 * the point where the next epoch branched off, then the next log from its header on.
 *
 * The loop never skips: a block that fails to decode (damaged, or from a newer format) stops this replica
 * at the unit before it, with the error kept for `mesh status`; it does not guess past it.
 */
import { EventEmitter } from 'node:events'
import { MeshError, continues, sameBytes, type Entry } from '../protocol/index.ts'
import { locate, offsets, type ChainSegment, type Segment } from './chain.ts'
import type { AppliedPosition, ApplySide, Logger } from '../adapters/index.ts'
import { silentLogger, unitEnd } from '../adapters/index.ts'
import { DEFAULT_UNIT_MEMORY, type DatasetLog, type UnitScan } from './log.ts'

/**
 * How long a unit applied as it arrives (applyArriving) may wait for its next block with its database
 * transaction open: a writer appends a part every few milliseconds while it captures a large transaction.
 */
export const ARRIVING_STALL_MS = 5000

export interface ApplyLoopOptions {
  segments: Segment[]
  apply: ApplySide
  logger?: Logger
  /**
   * Called when a block fails to decode in this site's copy of the log. It may drop the local copy and fetch
   * the block again (hypercore verifies what arrives against the writer's signature); true means try again.
   * Each block is repaired at most once: a block that is still bad came that way from its writer.
   */
  repair?: (block: number, log: DatasetLog) => Promise<boolean>
  /**
   * Memory a unit may take while it is applied (default DEFAULT_UNIT_MEMORY, 64 MB). A unit whose blocks exceed
   * an eighth of it is read
   * and applied in parts inside one database transaction, where the apply side can (ApplySide.beginUnit).
   */
  unitMemoryBytes?: number
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
  private readonly segments: Segment[]
  private readonly apply: ApplySide
  private readonly logger: Logger
  private readonly repair: ApplyLoopOptions['repair']
  private readonly repaired = new Set<number>()
  private running = false
  /** The log the loop reads from now (the repair of a damaged block needs to know which). */
  private current: DatasetLog
  private loop: Promise<void> | null = null
  private wake: (() => void) | null = null
  private readonly onAppend = () => this.wake?.()

  constructor(opts: ApplyLoopOptions) {
    super()
    if (opts.segments.length === 0) throw new Error('an apply loop needs at least one log')
    this.segments = opts.segments
    this.current = opts.segments[0].log
    this.apply = opts.apply
    this.logger = opts.logger ?? silentLogger
    this.repair = opts.repair
    this.unitMemoryBytes = opts.unitMemoryBytes ?? DEFAULT_UNIT_MEMORY
  }

  private readonly unitMemoryBytes: number

  async start(): Promise<void> {
    await this.apply.open()
    this.stats.applied = this.appliedOnHead()
    this.running = true
    for (const s of this.segments) {
      s.log.core.on('append', this.onAppend)
      s.log.core.on('download', this.onAppend)
      s.log.core.download({ start: 0, end: -1 })
    }
    this.loop = this.run()
  }

  /** The newest epoch's log, the one the dataset's origin writes now. */
  get head(): DatasetLog {
    return this.segments[this.segments.length - 1].log
  }

  /** Blocks of the head log applied (0 while the replica is still on an earlier epoch's log). */
  appliedOnHead(): number {
    const pos = this.apply.position()
    return pos !== null && sameBytes(pos.log, this.head.key) ? pos.length : 0
  }

  /** Where the replica stands in the chain (see locate); LOG_MISMATCH when off it: it must be rebuilt. */
  where(): { index: number; next: number } {
    const pos = this.apply.position()
    const at = locate(this.segments, pos)
    if (at === null) {
      throw MeshError.LOG_MISMATCH(
        'the replica holds changes this dataset’s history does not ' +
          '(another log, or past the point where a newer epoch branched off)',
        {
          context: { applied: pos?.length }
        }
      )
    }
    return at
  }

  /** Applies every complete unit that is here now. Returns how many units it applied. */
  async catchUp(): Promise<number> {
    let n = 0
    for (;;) {
      let { index, next } = this.where()
      let seg = this.segments[index]
      if (seg.end !== null && next === seg.end) {
        // The end of this epoch: go on with the next epoch's log, from its header.
        if (index + 1 >= this.segments.length) return n
        index++
        seg = this.segments[index]
        next = 0
      }
      this.current = seg.log
      const stop = seg.end ?? seg.log.length
      if (next >= Math.min(stop, seg.log.length)) return n
      // A unit larger than the memory budget: read and applied in parts, in one database transaction.
      const first = this.apply.beginUnit ? await seg.log.peek(next) : null
      // Not here yet: looking again once it is (the rest of the unit may arrive before unit() below reads it).
      if (this.apply.beginUnit && first === null) return n
      if (first?.more) {
        // Gone on from where the last look at this unit stopped: a large unit arrives block by block.
        const same = this.scanned !== null && this.scanned.log === seg.log && this.scanned.start === next
        const ext = await seg.log.scan(next, same ? this.scanned!.scan : undefined)
        this.scanned = { log: seg.log, start: next, scan: ext }
        if (ext.end === null) {
          // Still arriving: a unit already past the size applied in parts is applied as its blocks come.
          if (ext.bytes > this.unitMemoryBytes / 8 && (await this.applyArriving(seg, next))) {
            n++
            continue
          }
          return n
        }
        // A unit's rows take two to three times their encoding in memory, and more until V8 collects them.
        if (ext.bytes > this.unitMemoryBytes / 8 && !ext.abandoned) {
          await this.applyInParts(seg, next, ext.end)
          n++
          continue
        }
      }
      // Only blocks already here: waiting inside a read would keep stop() (and a promotion) waiting on a
      // block no reachable peer has. The loop wakes when blocks arrive.
      const unit = await seg.log.unit(next, { wait: false })
      if (unit === null) return n
      const length = unitEnd(unit)
      if (seg.end !== null && length > seg.end) throw pastBranch(seg)
      if (next === 0) {
        const header = unit.entries[0]
        if (header.kind !== 'header') throw MeshError.BAD_LOG('the log does not start with a header')
        if (header.epoch !== seg.epoch)
          throw MeshError.BAD_LOG(`the log of epoch ${seg.epoch} has a header for epoch ${header.epoch}`)
      }
      const treeHash = await seg.log.treeHash(length)
      await this.apply.apply(unit, { log: seg.log.key, epoch: seg.epoch, length, treeHash })
      n++
      this.stats.units++
      this.stats.applied = this.appliedOnHead()
      this.stats.lastAppliedAt = Date.now()
      let time: number | null = null
      for (const e of unit.entries) if (e.kind === 'transaction') time = Math.max(time ?? 0, e.time)
      this.emit('applied', { length: this.stats.applied, epoch: seg.epoch, time })
      const alerts = this.apply.alerts()
      if (alerts.length) this.emit('damage', { epoch: seg.epoch, start: unit.start, end: length, time, alerts })
    }
  }

  /**
   * One unit of blocks [start, end), all here, applied in parts of about 1/64 of the memory budget inside
   * one database transaction of the apply side: committed with the position after the last part, rolled back
   * on any error, so the replica holds all of it or none of it.
   */
  private async applyInParts(seg: Segment, start: number, end: number): Promise<void> {
    const apply = this.apply
    if (seg.end !== null && end > seg.end) throw pastBranch(seg)
    const position = { log: seg.log.key, epoch: seg.epoch, length: end, treeHash: await seg.log.treeHash(end) }
    let time: number | null = null
    if (await apply.beginUnit!({ start, end }, position)) {
      try {
        const parts = this.parts(position)
        for await (const { entry, bytes } of seg.log.entries(start, end)) {
          if (entry.kind === 'transaction') time = Math.max(time ?? 0, entry.time)
          await parts.add(entry, bytes)
        }
        await parts.flush()
        await apply.commitUnit!(position)
      } catch (err) {
        await apply.abortUnit?.()
        throw err
      }
    }
    this.unitApplied(seg, time)
  }

  /**
   * A unit still arriving whose blocks here already exceed the size that is applied in parts (an eighth of
   * the memory budget: so it would be applied in parts anyway, and the mass-damage guard measures neither) is
   * applied as its blocks arrive, in parts inside one database transaction, while its writer is still
   * appending the rest: the replica's work overlaps the origin's. True once committed. False, with the replica
   * as it was (the transaction rolled back), when the loop stops, when the unit turns out abandoned (the normal
   * path then skips it), or when no block came for ARRIVING_STALL_MS: the transaction is not held open for a
   * writer that stalled or a slow link, and that unit is then applied only once it is all here.
   */
  private async applyArriving(seg: Segment, start: number): Promise<boolean> {
    const apply = this.apply
    const log = seg.log
    const here = `${Buffer.from(log.key).toString('hex')}:${start}`
    if (!this.running || !apply.beginUnit || this.stalled === here) return false
    // Its end is not known yet: begun as [start, start + 1), checked and committed with its real end.
    const begun = { log: log.key, epoch: seg.epoch, length: start + 1, treeHash: new Uint8Array(32) }
    if (!(await apply.beginUnit({ start, end: start + 1 }, begun))) return false
    let time: number | null = null
    try {
      const parts = this.parts(begun)
      let lastArrival = Date.now()
      let i = start
      for (;;) {
        if (seg.end !== null && i >= seg.end) throw pastBranch(seg)
        const it = await log.arrived(i)
        if (it === null) {
          const waited = Date.now() - lastArrival
          if (!this.running || waited >= ARRIVING_STALL_MS) {
            if (this.running) this.stalled = here
            await apply.abortUnit!()
            return false
          }
          // What is held is applied while the next block is on its way.
          if (parts.held > 0) await parts.flush()
          await this.idle(ARRIVING_STALL_MS - waited)
          continue
        }
        lastArrival = Date.now()
        if (it.entry === null) {
          await apply.abortUnit!()
          return false
        }
        const e = it.entry
        if (e.kind !== 'schema' && e.kind !== 'transaction' && e.kind !== 'snapshot') {
          throw MeshError.BAD_LOG(`a ${e.kind} entry inside an unfinished unit`, { context: { block: i } })
        }
        if (e.kind === 'transaction') time = Math.max(time ?? 0, e.time)
        await parts.add(e, it.bytes)
        i = it.next
        if (!continues(e)) break
      }
      await parts.flush()
      await apply.commitUnit!({ log: log.key, epoch: seg.epoch, length: i, treeHash: await log.treeHash(i) })
    } catch (err) {
      await apply.abortUnit?.()
      throw err
    }
    this.unitApplied(seg, time)
    return true
  }

  /**
   * A unit's entries gathered into parts of about 1/64 of the memory budget, each handed to the apply side's
   * applyPart as it fills (flush(): the rest, possibly none). 1/64: a part's blocks, its decoded rows (two to
   * three times their encoding) and the garbage of the parts before, which V8 collects lazily, are in memory
   * at once; bench/big.ts measured the peak RSS.
   */
  private parts(position: AppliedPosition): {
    held: number
    add(e: Entry, bytes: number): Promise<void>
    flush(): Promise<void>
  } {
    const apply = this.apply
    const partBytes = Math.max(64 * 1024, Math.floor(this.unitMemoryBytes / 64))
    let part: Entry[] = []
    let bytes = 0
    const flush = async () => {
      const p = part
      part = []
      bytes = 0
      await apply.applyPart!(p, position)
    }
    return {
      get held() {
        return part.length
      },
      async add(e, b) {
        part.push(e)
        bytes += b
        if (bytes >= partBytes) await flush()
      },
      flush
    }
  }

  /** How much of the unit at `start` the last look found here. */
  private scanned: { log: DatasetLog; start: number; scan: UnitScan } | null = null

  /** The unit applyArriving gave up on for a stall (log key and start), applied only once it is all here. */
  private stalled: string | null = null

  private unitApplied(seg: Segment, time: number | null): void {
    this.stats.units++
    this.stats.applied = this.appliedOnHead()
    this.stats.lastAppliedAt = Date.now()
    this.emit('applied', { length: this.stats.applied, epoch: seg.epoch, time })
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
          if (await this.repair(block, this.current)) continue
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
    for (const s of this.segments) {
      s.log.core.off('append', this.onAppend)
      s.log.core.off('download', this.onAppend)
    }
    this.wake?.()
    await this.loop
    this.loop = null
  }
}

/**
 * Builds `apply`'s database as the dataset was at chain position `seq` (a unit boundary): replays the chain
 * from its start up to there. `progress` gets the blocks done and the blocks in all.
 */
export async function replayTo(
  chain: ChainSegment[],
  seq: number,
  apply: ApplySide,
  opts: { logger?: Logger; progress?: (done: number, total: number) => void } = {}
): Promise<void> {
  const { starts } = offsets(chain)
  let i = starts.length - 1
  while (i > 0 && starts[i] >= seq) i--
  const segments = chain
    .slice(0, i + 1)
    .map((s, j) => ({ log: s.log, epoch: s.epoch, end: j === i ? seq - starts[i] : s.end }))
  const loop = new ApplyLoop({ segments, apply, logger: opts.logger })
  loop.on('applied', (e: { length: number; epoch: number }) => {
    const k = segments.findIndex((s) => s.epoch === e.epoch)
    opts.progress?.(starts[k] + e.length, seq)
  })
  await apply.open()
  for (;;) {
    const n = await loop.catchUp()
    const pos = apply.position()
    const last = segments[segments.length - 1]
    if (pos !== null && Buffer.from(pos.log).equals(Buffer.from(last.log.key)) && pos.length === last.end) return
    if (n === 0)
      throw MeshError.REPLICA_NOT_READY('this site does not hold all of the history up to that point yet', {
        hint: 'Wait until `mesh status` shows the log downloaded here.'
      })
  }
}

/** A unit that runs past the point where the next epoch's log branched off this one. */
function pastBranch(seg: Segment): MeshError {
  return MeshError.BAD_LOG(
    `a unit of epoch ${seg.epoch} runs past the point (${seg.end}) where the next epoch branched off`
  )
}
