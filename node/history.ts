/**
 * A dataset's history: its chain of logs read as one sequence of units, and a restore of any point of it.
 *
 * Positions. A position (`seq`) counts blocks along the chain: the blocks of epoch 0's log up to the point
 * where epoch 1 branched off, then epoch 1's log from its header on, and so on. `mesh log` prints them, and
 * `mesh restore --seq N` takes one. A restore always ends at a unit boundary (a unit is applied whole), the
 * last one at or before the position asked for.
 */
import { engineFor, unitEnd, type Dialect, type Logger } from '../adapters/index.ts'
import { MeshError, type DatasetInfo, type Entry, type TableDef } from '../protocol/index.ts'
import { replayTo } from './apply-loop.ts'
import { offsets, resolveChain, type ChainSegment } from './chain.ts'
import { record } from './divergence.ts'
import { seedFromSnapshot } from './snapshots.ts'
import Corestore from 'corestore'
import { datasetOfLog, encryptionWith, readDataKey } from './datakeys.ts'
import { DatasetLog } from './log.ts'
import { readMeshState, readSiteKey, sitePaths } from './state.ts'
import { count, nearest } from './util.ts'

/** A point of a dataset's history to restore (see restorePoint). */
export interface RestoreTarget {
  /** Through the unit at this position (mesh log's SEQ): `mesh restore --seq`. */
  through?: number
  /** Before this position: `mesh restore --before`. */
  seq?: number
  /** At this moment, ms. */
  at?: number
}

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

/**
 * Every unit of the chain in order, from chain position `from` on (units that start before it are skipped),
 * with the entries when `entries` is set. Reads only blocks this site holds.
 */
export async function* walk(
  chain: ChainSegment[],
  opts: { from?: number; entries?: boolean } = {}
): AsyncGenerator<{ unit: HistoryUnit; entries: Entry[]; tables: Map<number, TableDef> }> {
  const { starts } = offsets(chain)
  const tables = new Map<number, TableDef>()
  let copies = 0
  for (let i = 0; i < chain.length; i++) {
    const seg = chain[i]
    const stop = seg.end ?? seg.log.length
    for (let b = 0; b < stop; ) {
      const u = await seg.log.unit(b, { wait: false })
      if (u === null)
        throw MeshError.REPLICA_NOT_READY(`this site does not hold block ${b} of the epoch-${seg.epoch} log yet`, {
          hint: 'Wait until `mesh status` shows the log downloaded here, then run the command again.'
        })
      const n = unitEnd(u) - b
      const first = u.entries[0] as Entry | undefined
      const counts = new Map<number, { upserts: number; deletes: number }>()
      let time: number | null = null
      let note = u.abandoned ? 'abandoned by its writer: applied as nothing' : ''
      if (u.dictionary) note = 'compression dictionary for the blocks after it'
      for (const e of u.entries) {
        if (e.kind === 'schema') {
          tables.clear()
          for (const t of e.tables) tables.set(t.id, t)
          const resets = e.reset.length ? `, ${e.reset.length} reset` : ''
          note = `${count(e.tables.length, 'table')}${resets}`
        }
        if (e.kind === 'header') {
          time = e.createdAt
          // Positions in notes are chain positions, as everywhere else: the parent's block L is at the parent's
          // start on the chain plus L.
          const at = e.parent && i > 0 ? `, continuing from position ${starts[i - 1] + e.parent.length}` : ''
          note = `${e.site} starts epoch ${e.epoch}${at}`
        }
        if (e.kind === 'fence') note = `sealed: epoch ${e.epoch} took over from position ${starts[i] + e.length}`
        if (e.kind === 'checkpoint') note = `checkpoint of position ${starts[i] + e.length}: ${count(e.rows, 'row')}`
        if (e.kind === 'snapshot' && e.first) {
          // The first whole copy is the dataset's start; any later one was made again by the origin.
          note =
            copies++ === 0 && seg.epoch === 0
              ? 'initial copy of the whole database'
              : 'whole database copied again (the origin file replaced, its capture position lost, or mesh resync): ' +
                'every copy is rebuilt from here; earlier positions keep the state before'
        }
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
      const kind = u.entries.find((e) => e.kind === 'transaction')?.kind ?? first?.kind ?? 'transaction'
      const list = [...counts].map(([id, c]) => ({
        table: tables.get(id)?.name ?? (id === 0 ? '(sequences)' : `#${id}`),
        ...c
      }))
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
      if (unit.seq >= (opts.from ?? 0)) yield { unit, entries: opts.entries ? u.entries : [], tables }
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
    if (p === null)
      throw MeshError.REPLICA_NOT_READY(
        `this site does not hold block ${q - this.starts[i]} of the epoch-${seg.epoch} log yet`,
        { hint: 'Wait until `mesh status` shows the log downloaded here, then run the command again.' }
      )
    return p
  }

  /** The last unit boundary at or before position q (a unit never spans two logs). */
  async boundary(q: number): Promise<number> {
    while (q > 0 && !this.starts.includes(q) && (await this.at(q - 1)).more) q--
    return q
  }

  /** The end of the unit position q is in (the position after its last block). */
  async endOf(q: number): Promise<number> {
    while ((await this.at(q)).more) q++
    return q + 1
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
 * The chain position to restore to (a unit boundary: every block before it is in). For `through`, a position
 * as `mesh log` shows it: the end of the unit at that position, so that unit is in (`mesh restore --seq`); for
 * `seq`, the last unit boundary at or before it, so the unit starting there is not (`mesh restore --before`,
 * and the node's own positions, which are boundaries); for `at` (ms), the
 * start of the first unit committed after that moment (so every unit committed at or before it is in). Found
 * by a binary search over the blocks' times, not by reading it all: it assumes commit times grow along the
 * chain, which holds while the origins' clocks do not go back (a clock set back, or a promoted site whose
 * clock is behind the old origin's, can make `--at` land up to that difference off; `--seq` is exact).
 */
export async function restorePoint(
  chain: ChainSegment[],
  target: RestoreTarget
): Promise<{ seq: number; last: number; time: number | null }> {
  const c = new ChainPoints(chain)
  const notYet = () =>
    MeshError.REPLICA_NOT_READY(`this site holds the history only up to position ${c.length} of ${c.full} yet`, {
      hint: 'Wait until `mesh status` shows the log downloaded here, then run the command again.'
    })
  let point: number
  if (target.through !== undefined) {
    if (target.through >= c.length && c.length < c.full) throw notYet()
    point = target.through >= c.length ? c.length : await c.endOf(target.through)
  } else if (target.seq !== undefined) {
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
      target.through !== undefined
        ? `position ${target.through} is the start of the log, before its first unit`
        : target.seq !== undefined
          ? `position ${target.seq} is before the dataset's first unit`
          : `${new Date(target.at!).toISOString()} is before the dataset's history begins` +
            (first !== null ? ` (${new Date(first).toISOString()})` : ''),
      { hint: 'Give a later time or position; `mesh log` lists them.' }
    )
  }
  return { seq: point, last: await c.boundary(point - 1), time: await c.timeAt(point - 1) }
}

/** A dataset by id or name; a name several datasets share is refused (give the id). */
export function findDataset(datasets: DatasetInfo[], dataset: string): DatasetInfo {
  const byId = datasets.find((d) => d.id === dataset)
  if (byId) return byId
  const byName = datasets.filter((d) => d.name === dataset)
  if (byName.length > 1) {
    throw MeshError.UNKNOWN_DATASET(
      `${byName.length} datasets are named ${dataset}: ` +
        byName.map((d) => `${d.id} (origin ${d.originSite})`).join(', '),
      {
        hint: 'Give the id instead of the name (mesh status --json lists them).'
      }
    )
  }
  if (!byName[0]) {
    const known = datasets.map((d) => d.name)
    const near = nearest(dataset, known)
    throw MeshError.UNKNOWN_DATASET(
      `no dataset named ${dataset} in this mesh ` +
        (known.length
          ? `(it has ${known.join(', ')})`
          : '(this site knows none yet: a dataset is made when the node of its site first starts)'),
      near === null
        ? {}
        : { hint: `Did you mean ${near}? Run \`mesh status\` to see the datasets of the mesh and their origins.` }
    )
  }
  return byName[0]
}

export interface RestoreResult {
  dataset: string
  id: string
  /**
   * Where the restore ends: every block before `seq` is in (so `seq` is the next unit's SEQ), `last` is the SEQ
   * of the last unit in it as `mesh log` shows it (`mesh restore --seq last` gives the same state), and `time`
   * the commit time of its last transaction.
   */
  seq: number
  last: number
  time: number | null
  to: string
  engine: string
  ms: number
  /** The chain position the replay started from: a snapshot's, or 0. */
  from: number
}

/** Where a site's snapshots are, which are being read, and who hears of one found damaged. */
export interface HistorySnapshots {
  dir: string
  inUse?: Set<string>
  onDamaged?: (head: DatasetInfo, file: string) => void
}

/**
 * History reads for `mesh log` and `mesh restore`, over the logs this site holds: by the running node (its
 * store), or by the command itself when no node runs.
 */
export class History {
  constructor(
    private readonly datasets: () => DatasetInfo[],
    private readonly open: (key: Uint8Array) => Promise<DatasetLog>,
    private readonly logger?: Logger,
    /** The site's snapshots, to start restores from (none: a restore replays from the start). */
    private readonly snapshots?: HistorySnapshots
  ) {}

  async chainOf(dataset: string): Promise<{ head: DatasetInfo; chain: ChainSegment[] }> {
    const head = findDataset(this.datasets(), dataset)
    return { head, chain: await resolveChain(head, this.open) }
  }

  /** Units from position `from` on (all when absent), at most `limit`; with their changes when `full`. */
  async log(dataset: string, opts: { from?: number; limit?: number; full?: boolean } = {}) {
    const { head, chain } = await this.chainOf(dataset)
    const units: Array<HistoryUnit & { changes?: ShownChange[] }> = []
    const limit = opts.limit ?? Infinity
    const dialect = engineFor(head.engine).dialect
    for await (const { unit, entries, tables } of walk(chain, { from: opts.from, entries: opts.full })) {
      if (units.length >= limit) break
      units.push(opts.full ? { ...unit, changes: shownChanges(entries, tables, dialect) } : unit)
    }
    return {
      dataset: head.name,
      id: head.id,
      engine: head.engine,
      epoch: head.epoch,
      length: offsets(chain).length,
      units
    }
  }

  /**
   * Builds a new database at `to` as the dataset was at `target`, with the dataset's engine. Nothing else is
   * touched. It starts from the nearest snapshot before that point when this history knows the site's
   * snapshots, and replays the log from there. `plain` (the default) makes it a database as the origin had
   * it; otherwise it stays a replica (verify's scratch copy).
   */
  async restore(
    dataset: string,
    target: RestoreTarget,
    to: string,
    opts: { progress?: (done: number, total: number) => void; plain?: boolean } = {}
  ): Promise<RestoreResult> {
    const started = Date.now()
    const { head, chain } = await this.chainOf(dataset)
    const engine = engineFor(head.engine)
    const point = await restorePoint(chain, target)
    const where = engine.restoring(to)
    const snaps = this.snapshots
    const onDamaged = (file: string) => snaps?.onDamaged?.(head, file)
    const from = snaps
      ? await seedFromSnapshot(snaps.dir, engine, head.id, where, chain, point.seq, snaps.inUse, onDamaged)
      : 0
    const side = engine.openApply(where, {
      dataset: head.id,
      logger: this.logger,
      checkpoints: false,
      refuseWrites: false
    })
    try {
      await replayTo(chain, point.seq, side, { logger: this.logger, progress: opts.progress })
      // A restore is done when it says so: what it applied is on disk, not only committed (ApplySide.flush).
      await side.flush?.()
    } finally {
      await side.close()
    }
    await engine.finishRestore(to, { plain: opts.plain ?? true })
    return {
      dataset: head.name,
      id: head.id,
      seq: point.seq,
      last: point.last,
      time: point.time,
      to,
      engine: head.engine,
      ms: Date.now() - started,
      from
    }
  }
}

/** An entry as JSON for `mesh log --show`: values as JSON (bytes as hex). */
/**
 * One change of a unit as `mesh log --show` shows it: by table and column name, each value as JSON can hold it
 * (integers beyond 2^53 and blobs as strings, see divergence.ts), and the same change as one SQL statement of
 * the dataset's engine, with its values as SQL literals.
 */
export interface ShownChange {
  op: 'upsert' | 'delete' | 'schema' | 'note'
  table: string
  /** The row (upserts) or its key (deletes), by column name. */
  values: Record<string, unknown>
  sql: string
}

function shownChanges(entries: Entry[], tables: Map<number, TableDef>, dialect: Dialect): ShownChange[] {
  const out: ShownChange[] = []
  for (const e of entries) {
    if (e.kind === 'schema') {
      for (const t of e.tables) out.push({ op: 'schema', table: t.name, values: {}, sql: t.sql.replace(/\s+/g, ' ') })
      continue
    }
    if (e.kind !== 'transaction' && e.kind !== 'snapshot') continue
    for (const ch of e.changes) {
      const def = tables.get(ch.table)
      if (def === undefined) {
        const n = ch.upserts.length + ch.deletes.length
        out.push({
          op: 'note',
          table: `#${ch.table}`,
          values: {},
          sql: `-- ${count(n, 'change')} of a table not defined here`
        })
        continue
      }
      const name = dialect.internal(ch.table) ? '(sequences)' : def.name
      for (const key of ch.deletes)
        out.push({
          op: 'delete',
          table: name,
          values: record(dialect.keyColumns(def), key),
          sql: dialect.remove(def, key)
        })
      for (const row of ch.upserts)
        out.push({
          op: 'upsert',
          table: name,
          values: record(dialect.rowColumns(def), row),
          sql: dialect.upsert(def, row)
        })
    }
  }
  return out
}

/** The same reads by a command when no node runs on `dir`: it opens the site's log store itself. */
export async function offlineHistory(
  dir: string,
  opts: { logger?: Logger; onDamaged?: (head: DatasetInfo, file: string) => void } = {}
): Promise<{ history: History; close(): Promise<void> }> {
  const paths = sitePaths(dir)
  const state = readMeshState(paths)
  const self = readSiteKey(paths).publicKey
  const me = state.members.find((m) => Buffer.from(m.key).equals(self))
  if (me?.role === 'blind') {
    throw MeshError.BLIND_SITE(`${me.site} is a blind site: it cannot read the logs it holds`)
  }
  if (me?.role === 'observer') throw MeshError.OBSERVER_SITE(`${me.site} is an observer: it holds no log`)
  const store = new Corestore(paths.store)
  try {
    await store.ready()
  } catch (err) {
    await store.close().catch(() => {})
    if (/could not be locked|resource temporarily unavailable/i.test((err as Error).message)) {
      throw MeshError.NODE_RUNNING(`the node on ${dir} holds the log store; ask it instead`, {
        hint: 'Run the command again: it asks the running node.'
      })
    }
    throw MeshError.wrap(err, MeshError.IO_ERROR, 'cannot open the log store')
  }
  const logs: DatasetLog[] = []
  const history = new History(
    () => state.datasets,
    async (key) => {
      // An encrypted dataset's logs are read with its data key (datakeys.ts); a blind site has none.
      const at = datasetOfLog(state, logs, key)
      const info = state.datasets.find((d) => d.id === at?.dataset)
      const encryption = at === null ? null : encryptionWith(readDataKey(dir, at.dataset), info, at.epoch)
      const log = await DatasetLog.byKey(store, paths.store, key, encryption)
      logs.push(log)
      return log
    },
    opts.logger,
    { dir, onDamaged: opts.onDamaged }
  )
  return {
    history,
    async close() {
      for (const l of logs) await l.close().catch(() => {})
      await store.close()
    }
  }
}
