/**
 * A dataset's history: its chain of logs read as one sequence of units, and a restore of any point of it.
 *
 * Positions. A position (`seq`) counts blocks along the chain: the blocks of epoch 0's log up to the point
 * where epoch 1 branched off, then epoch 1's log from its header on, and so on. `mesh log` prints them, and
 * `mesh restore --seq N` takes one. A restore always ends at a unit boundary (a unit is applied whole), the
 * last one at or before the position asked for.
 */
import type { ApplySide, Logger } from '../adapters/index.ts'
import { MeshError, type DatasetInfo, type Entry, type TableDef } from '../protocol/index.ts'
import { ApplyLoop } from './apply-loop.ts'
import { locate, resolveChain, type ChainSegment } from './chain.ts'
import Corestore from 'corestore'
import { DatasetLog } from './log.ts'
import { readMeshState, sitePaths } from './state.ts'

export interface HistoryUnit {
  /** Chain position of the unit's first block, and of the block after its last. */
  seq: number
  end: number
  epoch: number
  /** The unit's first block in its epoch's log. */
  block: number
  kind: Entry['kind']
  /** Origin commit time (transactions), or the log's start (its header); null for others. */
  time: number | null
  rows: number
  tables: Array<{ table: string; upserts: number; deletes: number }>
  /** The schema entry's tables (schema units), the fence's new epoch (fence units). */
  note: string
}

/** Where each segment starts on the chain, and the chain's length. */
export function offsets(chain: ChainSegment[]): { starts: number[]; length: number } {
  const starts: number[] = []
  let at = 0
  for (const s of chain) {
    starts.push(at)
    at += s.end ?? s.log.length
  }
  return { starts, length: at }
}

/**
 * The chain position of a position in one of the chain's logs (its key, and a length or block there); null
 * when it is on none of them, or past the point where the next epoch branched off.
 */
export function seqOf(chain: ChainSegment[], pos: { log: Uint8Array; length: number } | null): number | null {
  const at = pos && locate(chain, pos)
  return at ? offsets(chain).starts[at.index] + at.next : null
}

/**
 * Every unit of the chain in order, from chain position `from` on (units that start before it are skipped),
 * with the entries when `entries` is set. Reads only blocks this site holds.
 */
export async function* walk(chain: ChainSegment[], opts: { from?: number; entries?: boolean } = {}): AsyncGenerator<{ unit: HistoryUnit; entries: Entry[] }> {
  const { starts } = offsets(chain)
  const tables = new Map<number, TableDef>()
  for (let i = 0; i < chain.length; i++) {
    const seg = chain[i]
    const stop = seg.end ?? seg.log.length
    for (let b = 0; b < stop; ) {
      const u = await seg.log.unit(b, { wait: false })
      if (u === null) throw MeshError.REPLICA_NOT_READY(`this site does not hold block ${b} of the epoch-${seg.epoch} log yet`, { hint: 'Wait until `mesh status` shows the log downloaded here, then run the command again.' })
      const n = u.entries.length
      const first = u.entries[0]
      const counts = new Map<number, { upserts: number; deletes: number }>()
      let time: number | null = null
      let note = ''
      for (const e of u.entries) {
        if (e.kind === 'schema') {
          tables.clear()
          for (const t of e.tables) tables.set(t.id, t)
          note = `${e.tables.length} table${e.tables.length === 1 ? '' : 's'}${e.reset.length ? `, ${e.reset.length} reset` : ''}`
        }
        if (e.kind === 'header') {
          time = e.createdAt
          note = `${e.site} starts epoch ${e.epoch}${e.parent ? ` at ${e.parent.length} of the previous log` : ''}`
        }
        if (e.kind === 'fence') note = `sealed: epoch ${e.epoch} took over at block ${e.length}`
        if (e.kind === 'checkpoint') note = `checkpoint of block ${e.length}: ${e.rows} rows`
        if (e.kind === 'transaction' || e.kind === 'snapshot') {
          if (e.kind === 'transaction') time = e.time
          for (const ch of e.changes) {
            const c = counts.get(ch.table) ?? { upserts: 0, deletes: 0 }
            c.upserts += ch.upserts.length
            c.deletes += ch.deletes.length
            counts.set(ch.table, c)
          }
        }
      }
      const kind = u.entries.find((e) => e.kind === 'transaction')?.kind ?? first.kind
      const list = [...counts].map(([id, c]) => ({ table: tables.get(id)?.name ?? (id === 0 ? '(sequences)' : `#${id}`), ...c }))
      const unit: HistoryUnit = {
        seq: starts[i] + b,
        end: starts[i] + b + n,
        epoch: seg.epoch,
        block: b,
        kind,
        time,
        rows: list.reduce((s, t) => s + t.upserts + t.deletes, 0),
        tables: list,
        note
      }
      if (unit.seq >= (opts.from ?? 0)) yield { unit, entries: opts.entries ? u.entries : [] }
      b += n
    }
  }
}

/**
 * Blocks of a chain read by chain position, with only what finding a point in the history needs (kind, unit
 * continuation, time: DatasetLog.peek), so that a point is found in a few reads of the logs' blocks, not by
 * reading the whole history.
 */
class ChainPoints {
  /** How far this site holds every block, and the chain's length. */
  readonly length: number
  readonly full: number
  private readonly starts: number[]
  /** Position -> the time at or before it, for positions already looked at. */
  private readonly times = new Map<number, number | null>()

  constructor(private readonly chain: ChainSegment[]) {
    const o = offsets(chain)
    this.starts = o.starts
    // Only as far as this site holds every block: a point past that cannot be restored yet, and a search
    // must not read there.
    let length = o.length
    for (let i = 0; i < chain.length; i++) {
      const full = chain[i].end ?? chain[i].log.length
      const held = Math.min(full, chain[i].log.core.contiguousLength)
      if (held < full) {
        length = o.starts[i] + held
        break
      }
    }
    this.length = length
    this.full = o.length
  }

  private async at(q: number) {
    let i = this.starts.length - 1
    while (i > 0 && this.starts[i] > q) i--
    const seg = this.chain[i]
    const p = await seg.log.peek(q - this.starts[i])
    if (p === null) throw MeshError.REPLICA_NOT_READY(`this site does not hold block ${q - this.starts[i]} of the epoch-${seg.epoch} log yet`, { hint: 'Wait until `mesh status` shows the log downloaded here, then run the command again.' })
    return p
  }

  /** The last unit boundary at or before position q (a unit never spans two logs). */
  async boundary(q: number): Promise<number> {
    while (q > 0 && !this.starts.includes(q) && (await this.at(q - 1)).more) q--
    return q
  }

  /** The time of the nearest block at or before position q that has one (a transaction, a header); null if none. */
  async timeAt(q: number): Promise<number | null> {
    const seen: number[] = []
    let t: number | null = null
    for (let p = q; p >= 0; p--) {
      const known = this.times.get(p)
      if (known !== undefined) {
        t = known
        break
      }
      seen.push(p)
      const e = await this.at(p)
      if (e.time !== null) {
        t = e.time
        break
      }
    }
    for (const p of seen) this.times.set(p, t)
    return t
  }
}

/**
 * The chain position to restore to: for `seq`, the last unit boundary at or before it; for `at` (ms), the
 * start of the first unit committed after that moment (so every unit committed at or before it is in). Found
 * by a binary search over the blocks' times, not by reading it all: it assumes commit times grow along the
 * chain, which holds while the origins' clocks do not go back (a clock set back, or a promoted site whose
 * clock is behind the old origin's, can make `--at` land up to that difference off; `--seq` is exact).
 */
export async function restorePoint(chain: ChainSegment[], target: { seq?: number; at?: number }): Promise<{ seq: number; time: number | null }> {
  const c = new ChainPoints(chain)
  const notYet = () =>
    MeshError.REPLICA_NOT_READY(`this site holds the history only up to position ${c.length} of ${c.full} yet`, {
      hint: 'Wait until `mesh status` shows the log downloaded here, then run the command again.'
    })
  let point: number
  if (target.seq !== undefined) {
    if (target.seq > c.length && c.length < c.full) throw notYet()
    point = await c.boundary(Math.max(0, Math.min(target.seq, c.length)))
  } else {
    let lo = 0
    let hi = c.length
    while (lo < hi) {
      const mid = Math.floor((lo + hi) / 2)
      const t = await c.timeAt(mid)
      if (t !== null && t > target.at!) hi = mid
      else lo = mid + 1
    }
    // Every block held is at or before that moment: the ones not held yet may be too.
    if (lo === c.length && c.length < c.full) throw notYet()
    point = await c.boundary(lo)
  }
  if (point <= 1) {
    const first = c.length > 0 ? await c.timeAt(0) : null
    throw MeshError.USAGE(
      target.seq !== undefined
        ? `position ${target.seq} is before the dataset's first unit`
        : `${new Date(target.at!).toISOString()} is before the dataset's history begins${first !== null ? ` (${new Date(first).toISOString()})` : ''}`,
      { hint: 'Give a later time or position; `mesh log` lists them.' }
    )
  }
  return { seq: point, time: await c.timeAt(point - 1) }
}

/**
 * Builds `apply`'s database as the dataset was at chain position `seq` (a unit boundary): replays the chain
 * from its start up to there. `progress` gets the blocks done and the blocks in all.
 */
export async function replayTo(chain: ChainSegment[], seq: number, apply: ApplySide, opts: { logger?: Logger; progress?: (done: number, total: number) => void } = {}): Promise<void> {
  const { starts } = offsets(chain)
  let i = starts.length - 1
  while (i > 0 && starts[i] >= seq) i--
  const segments = chain.slice(0, i + 1).map((s, j) => ({ log: s.log, epoch: s.epoch, end: j === i ? seq - starts[i] : s.end }))
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
    if (n === 0) throw MeshError.REPLICA_NOT_READY('this site does not hold all of the history up to that point yet', { hint: 'Wait until `mesh status` shows the log downloaded here.' })
  }
}

/** A dataset by id or name; a name several datasets share is refused (give the id). */
export function findDataset(datasets: DatasetInfo[], dataset: string): DatasetInfo {
  const byId = datasets.find((d) => d.id === dataset)
  if (byId) return byId
  const byName = datasets.filter((d) => d.name === dataset)
  if (byName.length > 1) {
    throw MeshError.UNKNOWN_DATASET(`${byName.length} datasets are named ${dataset}: ${byName.map((d) => `${d.id} (origin ${d.originSite})`).join(', ')}`, {
      hint: 'Give the id instead of the name (mesh status --json lists them).'
    })
  }
  if (!byName[0]) {
    const known = datasets.map((d) => d.name)
    throw MeshError.UNKNOWN_DATASET(`no dataset named ${dataset} in this mesh${known.length ? ` (it has ${known.join(', ')})` : ''}`)
  }
  return byName[0]
}

export interface RestoreResult {
  dataset: string
  id: string
  /** The chain position restored, and the commit time of its last unit. */
  seq: number
  time: number | null
  to: string
  engine: string
  ms: number
  /** The chain position the replay started from: a snapshot's, or 0. */
  from: number
}

/**
 * History reads for `mesh log` and `mesh restore`, over the logs this site holds: by the running node (its
 * store), or by the command itself when no node runs.
 */
export class History {
  constructor(
    private readonly datasets: () => DatasetInfo[],
    private readonly open: (key: Uint8Array) => Promise<DatasetLog>,
    private readonly logger?: Logger
  ) {}

  async chainOf(dataset: string): Promise<{ head: DatasetInfo; chain: ChainSegment[] }> {
    const head = findDataset(this.datasets(), dataset)
    return { head, chain: await resolveChain(head, this.open) }
  }

  /** Units from position `from` on (all when absent), at most `limit`; with their changes when `full`. */
  async log(dataset: string, opts: { from?: number; limit?: number; full?: boolean } = {}) {
    const { head, chain } = await this.chainOf(dataset)
    const units: Array<HistoryUnit & { changes?: unknown[] }> = []
    const limit = opts.limit ?? Infinity
    for await (const { unit, entries } of walk(chain, { from: opts.from, entries: opts.full })) {
      if (units.length >= limit) break
      units.push(opts.full ? { ...unit, changes: entries.map(jsonEntry) } : unit)
    }
    return { dataset: head.name, id: head.id, engine: head.engine, epoch: head.epoch, length: offsets(chain).length, units }
  }

  /**
   * Builds a new database at `to` as the dataset was at `target`. Nothing else is touched. `seed` may put a
   * snapshot in place to start from (returns the chain position it holds, or 0 for none).
   */
  async restore(
    dataset: string,
    target: { seq?: number; at?: number },
    to: string,
    openTarget: (engine: string, where: string, dataset: string) => ApplySide,
    finish: (engine: string, where: string) => Promise<void>,
    progress?: (done: number, total: number) => void,
    seed?: (head: DatasetInfo, chain: ChainSegment[], seq: number) => Promise<number>
  ): Promise<RestoreResult> {
    const started = Date.now()
    const { head, chain } = await this.chainOf(dataset)
    const point = await restorePoint(chain, target)
    const from = seed ? await seed(head, chain, point.seq) : 0
    const side = openTarget(head.engine, to, head.id)
    try {
      await replayTo(chain, point.seq, side, { logger: this.logger, progress })
    } finally {
      await side.close()
    }
    await finish(head.engine, to)
    return { dataset: head.name, id: head.id, seq: point.seq, time: point.time, to, engine: head.engine, ms: Date.now() - started, from }
  }
}

/** An entry as JSON for `mesh log --show`: values as JSON (bytes as hex). */
function jsonEntry(e: Entry): unknown {
  return JSON.parse(JSON.stringify(e, (_k, v) => (typeof v === 'bigint' ? v.toString() : v instanceof Uint8Array ? { hex: Buffer.from(v).toString('hex') } : v)))
}

/** The same reads by a command when no node runs on `dir`: it opens the site's log store itself. */
export async function offlineHistory(dir: string, logger?: Logger): Promise<{ history: History; close(): Promise<void> }> {
  const paths = sitePaths(dir)
  const state = readMeshState(paths)
  const store = new Corestore(paths.store)
  try {
    await store.ready()
  } catch (err) {
    await store.close().catch(() => {})
    if (/could not be locked|resource temporarily unavailable/i.test((err as Error).message)) {
      throw MeshError.NODE_RUNNING(`the node on ${dir} holds the log store; ask it instead`, { hint: 'Run the command again: it asks the running node.' })
    }
    throw MeshError.wrap(err, MeshError.IO_ERROR, 'cannot open the log store')
  }
  const logs: DatasetLog[] = []
  const history = new History(
    () => state.datasets,
    async (key) => {
      const log = await DatasetLog.byKey(store, paths.store, key)
      logs.push(log)
      return log
    },
    logger
  )
  return {
    history,
    async close() {
      for (const l of logs) await l.close().catch(() => {})
      await store.close()
    }
  }
}
