/**
 * Generational snapshots: copies of a SQLite replica taken now and then (default daily), kept by age (the
 * newest of each of the last 14 days, 8 weeks and 12 months by default), so that a restore replays the log
 * from the nearest snapshot before the moment asked for instead of from the start of the history.
 *
 * A snapshot is the replica file as SQLite's online backup copies it, consistent and with its own applied
 * position inside (the replica's bookkeeping table), so nothing else is needed to continue from it: a restore
 * copies it and applies the chain from that position on. Files: DIR/snapshots/<dataset id>/<ms>.db.
 *
 * PostgreSQL replicas have no snapshots yet (their restores replay from the start).
 */
import fs from 'node:fs'
import path from 'node:path'
import { backupDatabase, openDatabase } from '../adapters/index.ts'

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

/** Copies the replica file into a new snapshot (a temporary name, renamed when complete). */
export async function takeSnapshot(siteDir: string, dataset: string, replica: string, now = Date.now()): Promise<Snapshot> {
  const dir = snapshotDir(siteDir, dataset)
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 })
  const file = path.join(dir, `${now}.db`)
  const tmp = `${file}.partial`
  fs.rmSync(tmp, { force: true })
  await backupDatabase(replica, tmp)
  fs.renameSync(tmp, file)
  return { file, at: now }
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
