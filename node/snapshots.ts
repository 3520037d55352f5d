/**
 * Generational snapshots: copies of a dataset as it stood at a point of its log, taken now and then (default
 * daily) at every site that holds the log, kept by age (the newest of each of the last 14 days, 8 weeks and
 * 12 months by default), so that a restore replays the log from the nearest snapshot before the moment asked
 * for instead of from the start of the history.
 *
 * A snapshot is built from the log, never copied from a live database: the newest snapshot (or an empty
 * file) plus the units since it. So a replica changed behind the mesh's back, or a damaged origin, never
 * passes its damage on to a restore; and an origin, or a site that keeps no warm copy, has snapshots too. The
 * file holds its own applied position (the bookkeeping table a replica has), so a restore copies it and
 * applies the chain from there on. Files: DIR/snapshots/<dataset id>/<ms>.db.
 *
 * PostgreSQL datasets: the snapshot is built the same way in a scratch database on the site's replicaPostgres
 * server (the newest snapshot restored with pg_restore, then the units since applied), written out with
 * `pg_dump -Fc` as <ms>.pgdump, with its position beside it (<ms>.pgdump.json), and the scratch database
 * dropped. A restore of a PostgreSQL dataset pg_restores the newest one before its moment into the empty
 * target database and replays the rest. Needs pg_dump and pg_restore (PostgreSQL's client programs) and a
 * replicaPostgres server; without them, restores of PostgreSQL datasets replay from the start.
 */
import fs from 'node:fs'
import path from 'node:path'
import { hashFile, type ApplySide, type Engine, type Logger } from '../adapters/index.ts'
import type { DatasetInfo } from '../protocol/index.ts'
import type { ChainSegment } from './chain.ts'
import { replayTo } from './apply-loop.ts'
import { seqOf } from './chain.ts'
import type { SnapshotPolicy } from './defaults.ts'

export { DEFAULT_SNAPSHOTS, type SnapshotPolicy } from './defaults.ts'

export interface Snapshot {
  file: string
  /** When it was taken, ms. */
  at: number
}

export function snapshotDir(siteDir: string, dataset: string): string {
  return path.join(siteDir, 'snapshots', dataset)
}

/** Snapshots found changed on disk and set aside (<file>.damaged). */
export function damagedSnapshots(siteDir: string, dataset: string): string[] {
  const dir = snapshotDir(siteDir, dataset)
  if (!fs.existsSync(dir)) return []
  return fs
    .readdirSync(dir)
    .filter((f) => f.endsWith('.damaged'))
    .map((f) => path.join(dir, f))
}

export function listSnapshots(siteDir: string, dataset: string): Snapshot[] {
  const dir = snapshotDir(siteDir, dataset)
  if (!fs.existsSync(dir)) return []
  return fs
    .readdirSync(dir)
    .filter((f) => /^\d+\.[a-z]+$/.test(f))
    .map((f) => ({ file: path.join(dir, f), at: Number(f.slice(0, f.indexOf('.'))) }))
    .sort((a, b) => a.at - b.at)
}

/** What is kept beside a snapshot (<file>.json): the position it holds and the SHA-256 of its bytes. */
interface SnapshotMeta {
  log: string
  length: number
  sha256: string
}

function readMeta(file: string): SnapshotMeta | null {
  try {
    return JSON.parse(fs.readFileSync(`${file}.json`, 'utf8')) as SnapshotMeta
  } catch {
    return null
  }
}

/** The snapshots at or before chain position `seq`, newest first, with the position each holds. */
function candidates(
  siteDir: string,
  dataset: string,
  chain: ChainSegment[],
  seq: number
): Array<{ snap: Snapshot; from: number }> {
  const out: Array<{ snap: Snapshot; from: number }> = []
  for (const snap of listSnapshots(siteDir, dataset).reverse()) {
    // Only snapshots built from the log, which keep their position and hash beside them: a file taken by an
    // earlier version was a copy of a live replica, and may hold damage the log does not.
    const from = seqOf(chain, snapshotPosition(snap.file))
    if (from !== null && from <= seq) out.push({ snap, from })
  }
  return out
}

/**
 * Puts the newest snapshot at or before chain position `seq` in place as a new database: a SQLite file at
 * `to` (copied), or an empty PostgreSQL database at `to` (pg_restore). Returns the position it holds, or 0
 * (none: a replay starts from the beginning). A snapshot being read is in `inUse`, so that retention leaves it.
 *
 * Each snapshot's bytes are checked against the SHA-256 kept beside it: one that changed on disk since it
 * was written is set aside (renamed <file>.damaged, and `onDamaged` told) and the next older one is used.
 */
export async function seedFromSnapshot(
  siteDir: string,
  engine: Engine,
  dataset: string,
  to: string,
  chain: ChainSegment[],
  seq: number,
  inUse?: Set<string>,
  onDamaged?: (file: string) => void
): Promise<number> {
  const fmt = engine.snapshots
  if (fmt.canLoad && !fmt.canLoad()) return 0
  for (const { snap, from } of candidates(siteDir, dataset, chain, seq)) {
    if (!snap.file.endsWith(`.${fmt.ext}`)) continue
    inUse?.add(snap.file)
    try {
      if (await fmt.load(snap.file, to, readMeta(snap.file)?.sha256)) return from
      // (Another reader may have set it aside first.)
      const aside = (from: string, to2: string) => fs.existsSync(from) && fs.renameSync(from, to2)
      aside(snap.file, `${snap.file}.damaged`)
      aside(`${snap.file}.json`, `${snap.file}.damaged.json`)
      onDamaged?.(snap.file)
    } finally {
      inUse?.delete(snap.file)
    }
  }
  return 0
}

/**
 * A new snapshot of a dataset at chain position `seq` (a unit boundary), built from the log: the newest
 * snapshot before it plus the units since, written under a temporary name and renamed when complete, with its
 * position and the SHA-256 of its bytes beside it (<file>.json). Null when the newest snapshot is at `seq`
 * already (nothing new to keep). PostgreSQL datasets need `pgServer` (the site's replicaPostgres), pg_dump and
 * pg_restore.
 */
export async function buildSnapshot(
  siteDir: string,
  head: DatasetInfo,
  engine: Engine,
  chain: ChainSegment[],
  seq: number,
  opts: {
    now?: number
    logger?: Logger
    inUse?: Set<string>
    server?: string | null
    onDamaged?: (file: string) => void
  } = {}
): Promise<Snapshot | null> {
  const now = opts.now ?? Date.now()
  const dir = snapshotDir(siteDir, head.id)
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 })
  const file = path.join(dir, `${now}.${engine.snapshots.ext}`)
  const partial = `${file}.partial`
  // What a build cut off by a crash left behind: it is never a snapshot.
  for (const f of fs.readdirSync(dir))
    if (/\.partial(-wal|-shm|-journal)?$/.test(f)) fs.rmSync(path.join(dir, f), { force: true })
  const work = await engine.snapshots.workspace(partial, head.id, opts.server ?? null)
  try {
    const from = await seedFromSnapshot(siteDir, engine, head.id, work.where, chain, seq, opts.inUse, opts.onDamaged)
    if (from === seq) return null
    const side: ApplySide = engine.openApply(work.where, {
      dataset: head.id,
      logger: opts.logger,
      checkpoints: false,
      refuseWrites: false
    })
    let pos: { log: Uint8Array; length: number } | null = null
    try {
      await replayTo(chain, seq, side, { logger: opts.logger })
      pos = side.position()
    } finally {
      await side.close()
    }
    await engine.snapshots.write(work.where, partial)
    // Gone before the snapshot appears: a build whose file is there is over.
    await work.drop()
    const meta: SnapshotMeta = {
      log: Buffer.from(pos!.log).toString('hex'),
      length: pos!.length,
      sha256: await hashFile(partial)
    }
    fs.writeFileSync(`${file}.json`, JSON.stringify(meta), { mode: 0o600 })
    fs.chmodSync(partial, 0o600)
    fs.renameSync(partial, file)
    return { file, at: now }
  } finally {
    const clean = async () => {
      await work.drop()
      fs.rmSync(partial, { force: true })
    }
    await clean().catch((err) =>
      opts.logger?.warn('cannot remove what building a snapshot left', { error: (err as Error).message })
    )
  }
}

/**
 * The snapshots a generational policy keeps: the newest one of each of the last `keepDaily` days, `keepWeekly`
 * weeks and `keepMonthly` months (UTC), and always the newest of all.
 */
export function toKeep(snaps: Snapshot[], now: number, p: SnapshotPolicy): Set<string> {
  const keep = new Set<string>()
  const newest = [...snaps].sort((a, b) => b.at - a.at)
  if (newest[0]) keep.add(newest[0].file)
  const bucket = (span: number, count: number, key: (t: number) => number) => {
    const seen = new Set<number>()
    for (const s of newest) {
      if (now - s.at > span * count) continue
      const k = key(s.at)
      if (seen.has(k)) continue
      seen.add(k)
      keep.add(s.file)
    }
  }
  const day = 86_400_000
  bucket(day, p.keepDaily, (t) => Math.floor(t / day))
  bucket(7 * day, p.keepWeekly, (t) => Math.floor((t / day + 3) / 7))
  bucket(31 * day, p.keepMonthly, (t) => {
    const d = new Date(t)
    return d.getUTCFullYear() * 12 + d.getUTCMonth()
  })
  return keep
}

/** Deletes the snapshots the policy does not keep, except those `inUse`. Returns the files deleted. */
export function prune(siteDir: string, dataset: string, now: number, p: SnapshotPolicy, inUse: Set<string>): string[] {
  const snaps = listSnapshots(siteDir, dataset)
  const keep = toKeep(snaps, now, p)
  const gone: string[] = []
  for (const s of snaps) {
    if (keep.has(s.file) || inUse.has(s.file)) continue
    fs.rmSync(s.file, { force: true })
    fs.rmSync(`${s.file}.json`, { force: true })
    gone.push(s.file)
  }
  return gone
}

/**
 * The position a snapshot holds (log key and length), kept beside it; null for a file without (not built from the log).
 */
export function snapshotPosition(file: string): { log: Uint8Array; length: number } | null {
  const meta = readMeta(file)
  return meta ? { log: new Uint8Array(Buffer.from(meta.log, 'hex')), length: meta.length } : null
}
