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
import { openDatabase, PostgresApply, SqliteApply, type ApplySide, type Logger } from '../adapters/index.ts'
import { ensurePgDatabase, dropPgDatabase, findPgProgram, pgScratchUrl, runPgProgram } from '../adapters/postgres/admin.ts'
import { MeshError, type DatasetInfo } from '../protocol/index.ts'
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
    .filter((f) => /^\d+\.(db|pgdump)$/.test(f))
    .map((f) => ({ file: path.join(dir, f), at: Number(f.slice(0, f.indexOf('.'))) }))
    .sort((a, b) => a.at - b.at)
}

/** The files of a SQLite database being written at `file`: the database and its journals. */
function sqliteFiles(file: string): string[] {
  return [file, `${file}-wal`, `${file}-shm`, `${file}-journal`]
}

/** The newest snapshot at or before chain position `seq`, with the position it holds; null when none is. */
function newestBefore(siteDir: string, dataset: string, chain: ChainSegment[], seq: number): { snap: Snapshot; from: number } | null {
  const { starts } = offsets(chain)
  for (const snap of listSnapshots(siteDir, dataset).reverse()) {
    const pos = snapshotPosition(snap.file)
    const at = pos && locate(chain, pos)
    if (!pos || !at) continue
    const from = starts[at.index] + at.next
    if (from <= seq) return { snap, from }
  }
  return null
}

/**
 * Puts the newest snapshot at or before chain position `seq` in place as a new database: a SQLite file at
 * `to` (copied), or an empty PostgreSQL database at `to` (pg_restore). Returns the position it holds, or 0
 * (none: a replay starts from the beginning). A snapshot being read is in `inUse`, so that retention leaves it.
 */
export async function seedFromSnapshot(siteDir: string, engine: string, dataset: string, to: string, chain: ChainSegment[], seq: number, inUse?: Set<string>): Promise<number> {
  if (engine !== 'postgres') for (const f of sqliteFiles(to)) fs.rmSync(f, { force: true })
  const found = newestBefore(siteDir, dataset, chain, seq)
  if (found === null || !found.snap.file.endsWith(engine === 'postgres' ? '.pgdump' : '.db')) return 0
  inUse?.add(found.snap.file)
  try {
    if (engine !== 'postgres') fs.copyFileSync(found.snap.file, to)
    else {
      const exe = findPgProgram('pg_restore')
      if (exe === null) return 0
      const r = await runPgProgram(exe, (url) => ['--no-owner', '--no-privileges', '--exit-on-error', '--single-transaction', '--dbname', url, found.snap.file], to)
      if (r.code !== 0) throw MeshError.DATABASE_ERROR(`cannot restore the snapshot ${found.snap.file}: pg_restore ${r.stderr}`, { hint: 'Check that pg_restore is as new as the server; or move the snapshot away to replay from the start.' })
    }
  } finally {
    inUse?.delete(found.snap.file)
  }
  return found.from
}

/**
 * A new snapshot of a dataset at chain position `seq` (a unit boundary), built from the log: the newest
 * snapshot before it plus the units since, written under a temporary name and renamed when complete. Null
 * when the newest snapshot is at `seq` already (nothing new to keep). PostgreSQL datasets need `pgServer`
 * (the site's replicaPostgres), pg_dump and pg_restore.
 */
export async function buildSnapshot(
  siteDir: string,
  head: DatasetInfo,
  chain: ChainSegment[],
  seq: number,
  opts: { now?: number; logger?: Logger; inUse?: Set<string>; pgServer?: string | null } = {}
): Promise<Snapshot | null> {
  const now = opts.now ?? Date.now()
  const dir = snapshotDir(siteDir, head.id)
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 })
  const pg = head.engine === 'postgres'
  const file = path.join(dir, `${now}.${pg ? 'pgdump' : 'db'}`)
  const partial = `${file}.partial`
  let dump: string | null = null
  let work = partial
  if (pg) {
    dump = findPgProgram('pg_dump')
    if (!opts.pgServer || dump === null || findPgProgram('pg_restore') === null) {
      throw MeshError.NOT_FOUND(`no snapshots of ${head.name}: ${opts.pgServer ? 'pg_dump and pg_restore are needed' : 'this site has no replicaPostgres server to build them on'}`)
    }
    work = pgScratchUrl(opts.pgServer, head.id, 'snapshot')
    await ensurePgDatabase(opts.pgServer, work, true)
  }
  const clean = async () => {
    for (const f of sqliteFiles(partial)) fs.rmSync(f, { force: true })
    if (pg) await dropPgDatabase(opts.pgServer!, work)
  }
  try {
    const from = await seedFromSnapshot(siteDir, head.engine, head.id, work, chain, seq, opts.inUse)
    if (from === seq) return null
    const side: ApplySide = pg ? new PostgresApply({ url: work, dataset: head.id, logger: opts.logger }) : new SqliteApply({ path: partial, dataset: head.id, logger: opts.logger })
    try {
      await replayTo(chain, seq, side, { logger: opts.logger })
    } finally {
      await side.close()
    }
    if (pg) {
      const r = await runPgProgram(dump!, (url) => ['--format=custom', '--no-owner', '--no-privileges', '--file', partial, url], work)
      if (r.code !== 0) throw MeshError.DATABASE_ERROR(`cannot write the snapshot of ${head.name}: pg_dump ${r.stderr}`)
      const pos = side.position()!
      fs.writeFileSync(`${file}.json`, JSON.stringify({ log: Buffer.from(pos.log).toString('hex'), length: pos.length }), { mode: 0o600 })
    }
    fs.chmodSync(partial, 0o600)
    fs.renameSync(partial, file)
    return { file, at: now }
  } finally {
    await clean()
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

/** The applied position a snapshot holds (log key and length), read from its bookkeeping. */
export function snapshotPosition(file: string): { log: Uint8Array; length: number } | null {
  if (file.endsWith('.pgdump')) {
    try {
      const p = JSON.parse(fs.readFileSync(`${file}.json`, 'utf8')) as { log: string; length: number }
      return { log: new Uint8Array(Buffer.from(p.log, 'hex')), length: p.length }
    } catch {
      return null
    }
  }
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
