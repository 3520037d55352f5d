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
 * PostgreSQL datasets have no snapshots yet (their restores replay from the start).
 */
import fs from 'node:fs'
import path from 'node:path'
import { openDatabase, SqliteApply, type Logger } from '../adapters/index.ts'
import type { DatasetInfo } from '../protocol/index.ts'
import { locate, type ChainSegment } from './chain.ts'
import { offsets, replayTo } from './history.ts'

export interface SnapshotPolicy {
  /** Take a snapshot when the newest is this old (seconds). */
  everySeconds: number
  keepDaily: number
  keepWeekly: number
  keepMonthly: number
}

export const DEFAULT_SNAPSHOTS: SnapshotPolicy = { everySeconds: 86_400, keepDaily: 14, keepWeekly: 8, keepMonthly: 12 }

export interface Snapshot {
  file: string
  /** When it was taken, ms. */
  at: number
}

export function snapshotDir(siteDir: string, dataset: string): string {
  return path.join(siteDir, 'snapshots', dataset)
}

export function listSnapshots(siteDir: string, dataset: string): Snapshot[] {
  const dir = snapshotDir(siteDir, dataset)
  if (!fs.existsSync(dir)) return []
  return fs
    .readdirSync(dir)
    .filter((f) => /^\d+\.db$/.test(f))
    .map((f) => ({ file: path.join(dir, f), at: Number(f.slice(0, -3)) }))
    .sort((a, b) => a.at - b.at)
}

/** The files of a SQLite database being written at `file`: the database and its journals. */
function sqliteFiles(file: string): string[] {
  return [file, `${file}-wal`, `${file}-shm`, `${file}-journal`]
}

/**
 * Puts the newest snapshot at or before chain position `seq` in place as a new database at `partial`;
 * returns the position it holds, or 0 (none: a replay starts from the beginning). A snapshot being copied is
 * in `inUse`, so that retention leaves it.
 */
export async function seedFromSnapshot(siteDir: string, dataset: string, partial: string, chain: ChainSegment[], seq: number, inUse?: Set<string>): Promise<number> {
  for (const f of sqliteFiles(partial)) fs.rmSync(f, { force: true })
  const { starts } = offsets(chain)
  for (const s of listSnapshots(siteDir, dataset).reverse()) {
    const pos = snapshotPosition(s.file)
    const at = pos && locate(chain, pos)
    if (!pos || !at) continue
    const from = starts[at.index] + at.next
    if (from > seq) continue
    inUse?.add(s.file)
    try {
      fs.copyFileSync(s.file, partial)
    } finally {
      inUse?.delete(s.file)
    }
    return from
  }
  return 0
}

/**
 * A new snapshot of a SQLite dataset at chain position `seq` (a unit boundary), built from the log: the
 * newest snapshot before it plus the units since, written under a temporary name and renamed when complete.
 * Null when the newest snapshot is at `seq` already (nothing new to keep).
 */
export async function buildSnapshot(
  siteDir: string,
  head: DatasetInfo,
  chain: ChainSegment[],
  seq: number,
  opts: { now?: number; logger?: Logger; inUse?: Set<string> } = {}
): Promise<Snapshot | null> {
  const now = opts.now ?? Date.now()
  const dir = snapshotDir(siteDir, head.id)
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 })
  const file = path.join(dir, `${now}.db`)
  const partial = `${file}.partial`
  const clean = () => {
    for (const f of sqliteFiles(partial)) fs.rmSync(f, { force: true })
  }
  try {
    const from = await seedFromSnapshot(siteDir, head.id, partial, chain, seq, opts.inUse)
    if (from === seq) {
      clean()
      return null
    }
    const side = new SqliteApply({ path: partial, dataset: head.id, logger: opts.logger })
    try {
      await replayTo(chain, seq, side, { logger: opts.logger })
    } finally {
      await side.close()
    }
    fs.renameSync(partial, file)
    return { file, at: now }
  } finally {
    clean()
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
    gone.push(s.file)
  }
  return gone
}

/** The applied position a snapshot holds (log key and length), read from its bookkeeping. */
export function snapshotPosition(file: string): { log: Uint8Array; length: number } | null {
  const db = openDatabase(file, { mustExist: true })
  try {
    const rows = db.prepare(`SELECT k, v FROM _mesh_replica WHERE k IN ('log', 'length')`).all() as Array<{ k: string; v: unknown }>
    const m = new Map(rows.map((r) => [r.k, r.v]))
    if (!m.get('log')) return null
    return { log: new Uint8Array(m.get('log') as Buffer), length: Number(m.get('length')) }
  } catch {
    return null
  } finally {
    db.close()
  }
}
