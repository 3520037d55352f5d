/**
 * What the node does differently per engine: which capture and apply sides it opens, where a replica lives,
 * what role a database plays, and how a copy is set aside. A dataset's `path` is a file for SQLite and a
 * connection URL for PostgreSQL.
 */
import fs from 'node:fs'
import path from 'node:path'
import {
  MeshError,
  type DatasetInfo
} from '../protocol/index.ts'
import {
  PostgresApply,
  PostgresCapture,
  PostgresTriggerCapture,
  capturePrerequisites,
  SqliteApply,
  SqliteCapture,
  backupDatabase,
  finishRestoredFile,
  checkUrl,
  databaseRole,
  redactUrl,
  type ApplySide,
  type CaptureSide,
  type DamageGuard,
  type Logger
} from '../adapters/index.ts'
import { connect, quoteIdent } from '../adapters/postgres/common.ts'
import { CREATE_META } from '../adapters/postgres/index.ts'
import type { ChainSegment } from './chain.ts'
import { seedFromSnapshot } from './snapshots.ts'
import { adoptReplica } from '../adapters/postgres/adopt.ts'
import { ensurePgDatabase, findPgDump, runPgProgram } from '../adapters/postgres/admin.ts'
export { dropPgDatabase, ensurePgDatabase, findPgDump, pgScratchUrl } from '../adapters/postgres/admin.ts'

/**
 * Replication slot and publication of a PostgreSQL dataset at its origin: `branchmesh_<dataset id>`, and for
 * a later epoch `..._e<N>` (slot names are server-wide: a promoted replica on the old origin's server must not
 * take the old origin's name).
 */
export function pgSlotName(dataset: string, epoch = 0): string {
  const base = `branchmesh_${dataset.replace(/[^a-z0-9_]/gi, '_').toLowerCase()}`
  return epoch === 0 ? base : `${base}_e${epoch}`
}

/** Matches every slot name of the dataset (any epoch), for a LIKE. */
function slotPattern(dataset: string): string {
  return `${pgSlotName(dataset).replace(/_/g, '\\_')}%`
}

export type CaptureMode = 'logical' | 'triggers'

export function openCapture(engine: string, where: string, dataset: string, logger: Logger, mode: CaptureMode = 'logical', epoch = 0): CaptureSide {
  if (engine === 'postgres' && mode === 'triggers') return new PostgresTriggerCapture({ url: where, logger })
  if (engine === 'postgres') return new PostgresCapture({ url: where, slot: pgSlotName(dataset, epoch), publication: pgSlotName(dataset), logger })
  return new SqliteCapture({ path: where, logger })
}

/** What stops logical decoding of this database (empty: it can be used). */
export async function pgDecodingProblems(url: string, dataset: string): Promise<string[]> {
  const client = await connect(url, { doing: 'cannot connect to the database' })
  try {
    return await capturePrerequisites(client, pgSlotName(dataset))
  } finally {
    await client.end().catch(() => {})
  }
}

export function openApply(engine: string, where: string, dataset: string, logger: Logger, guard?: DamageGuard): ApplySide {
  if (engine === 'postgres') return new PostgresApply({ url: where, dataset, logger, guard })
  return new SqliteApply({ path: where, dataset, logger, guard })
}

/** Where a database is, for messages and logs (a URL without its password). */
export function shown(engine: string, where: string): string {
  return engine === 'postgres' ? redactUrl(where) : where
}

/**
 * The role a database plays: 'origin' (capture installed: SQLite triggers, or a PostgreSQL slot for this
 * dataset), 'replica' (branchmesh's replica bookkeeping), 'plain' (neither), 'none' (no such database).
 */
export async function roleOf(engine: string, where: string, dataset: string): Promise<'origin' | 'replica' | 'plain' | 'none'> {
  if (engine !== 'postgres') return databaseRole(where)
  let client
  try {
    client = await connect(where, { doing: 'cannot look at the database' })
  } catch (err) {
    if ((err as MeshError).code === 'PG_NO_DATABASE') return 'none'
    throw err
  }
  try {
    const r = await client.query(
      `SELECT to_regclass('_mesh.replica') IS NOT NULL AS replica,
              EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name LIKE $1 AND database = current_database()) OR to_regclass('_mesh.changes') IS NOT NULL AS slot`,
      [slotPattern(dataset)]
    )
    if (r.rows[0].replica === 't') return 'replica'
    return r.rows[0].slot === 't' ? 'origin' : 'plain'
  } finally {
    await client.end().catch(() => {})
  }
}

/** A replica database's URL: the site's replica server URL with a database name of its own per dataset. */
export function pgReplicaUrl(serverUrl: string, info: DatasetInfo, suffix = ''): string {
  checkUrl(serverUrl)
  const u = new URL(serverUrl)
  const safe = (s: string) => s.toLowerCase().replace(/[^a-z0-9_]+/g, '_')
  u.pathname = '/' + `mesh_${safe(info.originSite)}_${safe(info.name)}_${info.id.slice(0, 8)}${suffix}`.slice(0, 63)
  return u.toString()
}

/** Stops a PostgreSQL database from being captured: its slot (which holds WAL) and publication go. */
export async function dropPgCapture(url: string, dataset: string): Promise<void> {
  const client = await connect(url, { doing: 'cannot connect to the fenced database' })
  try {
    await dropSlots(client, dataset)
    await client.query(`DROP PUBLICATION IF EXISTS ${quoteIdent(pgSlotName(dataset))}`)
  } finally {
    await client.end().catch(() => {})
  }
}

/**
 * Keeps a copy of the database as it is, before it is rebuilt, in `dir`; returns README.txt's line for it.
 * SQLite: before.db, a consistent backup. PostgreSQL: before.sql from pg_dump, when a pg_dump that can read
 * the server is found (on PATH, or in `pg_config --bindir`); otherwise a note says so.
 */
export async function keepCopy(engine: string, where: string, dir: string, site: string): Promise<string> {
  if (engine !== 'postgres') {
    await backupDatabase(where, path.join(dir, 'before.db'))
    return `before.db      ${site}'s database exactly as it was before it was rebuilt`
  }
  const file = path.join(dir, 'before.sql')
  const exe = findPgDump()
  let why = 'no pg_dump program was found on this machine (install PostgreSQL\'s client programs to get one)'
  if (exe) {
    // Not spawnSync: the node goes on answering its peers and `mesh status` while a large database is dumped.
    const r = await runPgProgram(exe, (url) => ['--no-owner', '--file', file, url], where)
    if (r.code === 0) {
      fs.chmodSync(file, 0o600)
      return `before.sql     ${site}'s database as it was before it was rebuilt (pg_dump; restore with psql -f)`
    }
    why = `pg_dump failed: ${r.stderr}`
  }
  fs.rmSync(file, { force: true })
  return `(no copy of the database as it was: ${why}; the changes above are complete)`
}

/**
 * Empties a PostgreSQL database of what the mesh carries, so that it can be built again from the chain of
 * logs: the tables `carried` names (for a fenced origin, what its capture carried), or those its replica
 * bookkeeping lists (a replica that applied past a branch point), with what depends on them (views), its
 * capture (publication, event trigger, then slot); and marks it a replica. Tables the mesh does not carry
 * are left as they are. One transaction, but for the slot.
 */
export async function resetPgDatabase(url: string, dataset: string, carried: string[] | null): Promise<void> {
  const client = await connect(url, { doing: 'cannot connect to the database to rebuild it' })
  try {
    await client.query('BEGIN')
    let tables = carried
    if (tables === null) {
      const meta = await client.query(`SELECT to_regclass('_mesh.replica') IS NOT NULL AS has`)
      tables = meta.rows[0].has === 't' ? ((await client.query('SELECT tables FROM _mesh.replica')).rows as Array<{ tables: string }>).flatMap((r) => (JSON.parse(r.tables) as Array<{ name: string }>).map((t) => t.name)) : []
    }
    for (const t of tables) await client.query(`DROP TABLE IF EXISTS ${t} CASCADE`)
    await client.query(`DROP SCHEMA IF EXISTS _mesh CASCADE`)
    await client.query(CREATE_META)
    await client.query(`DROP PUBLICATION IF EXISTS ${quoteIdent(pgSlotName(dataset))}`)
    await client.query('COMMIT')
    await dropSlots(client, dataset)
  } catch (err) {
    await client.query('ROLLBACK').catch(() => {})
    throw MeshError.wrap(err, MeshError.DATABASE_ERROR, `cannot empty ${redactUrl(url)} to rebuild it`)
  } finally {
    await client.end().catch(() => {})
  }
}

/** What a PostgreSQL origin's slot keeps on the server's disk; status 'lost' when the slot is gone. */
export async function pgWalRetention(url: string, dataset: string, epoch = 0): Promise<{ retainedBytes: number; limitBytes: number | null; status: string }> {
  const capture = new PostgresCapture({ url, slot: pgSlotName(dataset, epoch), publication: pgSlotName(dataset) })
  try {
    return await capture.walRetention()
  } finally {
    await capture.close()
  }
}

/**
 * Drops the dataset's replication slots in this database (any epoch), waiting (up to 10 s) for the server to
 * let go of a stream that was just closed: an active slot cannot be dropped, and a slot left behind keeps WAL
 * on the disk for ever. Slots of other databases on the same server are never touched.
 */
async function dropSlots(client: Awaited<ReturnType<typeof connect>>, dataset: string): Promise<void> {
  for (let i = 0; i < 100; i++) {
    const r = await client.query('SELECT slot_name, active FROM pg_replication_slots WHERE slot_name LIKE $1 AND database = current_database()', [slotPattern(dataset)])
    if (r.rows.length === 0) return
    for (const s of r.rows) if (s.active !== 't') await client.query('SELECT pg_drop_replication_slot($1)', [s.slot_name]).catch(() => {})
    if (r.rows.some((s) => s.active === 't')) await new Promise((resolve) => setTimeout(resolve, 100))
  }
  throw MeshError.DATABASE_ERROR(`a replication slot of this dataset is still in use; it keeps WAL until it is dropped`, {
    hint: `Find who reads it (SELECT slot_name, active_pid FROM pg_replication_slots WHERE database = current_database()) and drop it with pg_drop_replication_slot.`
  })
}

// --- restore targets ---------------------------------------------------------------------------------------------

/** Refuses a restore target that is not new: an existing file, or a PostgreSQL database that holds tables. */
export async function checkRestoreTarget(engine: string, to: string): Promise<void> {
  if (engine !== 'postgres') {
    if (/^postgres(ql)?:\/\//.test(to)) throw MeshError.USAGE('this dataset is SQLite: give --to a new file path')
    if (fs.existsSync(to)) throw MeshError.USAGE(`${to} exists already`, { hint: 'Give a new file: a restore never overwrites anything.' })
    if (!fs.existsSync(path.dirname(path.resolve(to)))) throw MeshError.NOT_FOUND(`the folder of ${to} does not exist`)
    return
  }
  checkUrl(to)
  const client = await connect(to, { doing: 'cannot connect to the database to restore into' })
  try {
    const r = await client.query(
      `SELECT count(*)::int AS n FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'`
    )
    if (Number(r.rows[0].n) > 0) {
      throw MeshError.USAGE(`${redactUrl(to)} already holds tables`, { hint: 'Give an empty database (createdb NAME): a restore never overwrites anything.' })
    }
  } finally {
    await client.end().catch(() => {})
  }
}

/** The apply side a restore writes with: a SQLite restore goes to `<to>.partial` until it is complete. */
export function openRestoreTarget(engine: string, to: string, dataset: string, logger?: Logger): ApplySide {
  if (engine === 'postgres') return new PostgresApply({ url: to, dataset, logger, checkpoints: false })
  return new SqliteApply({ path: `${to}.partial`, dataset, logger, checkpoints: false })
}

/**
 * Puts the newest snapshot at or before chain position `seq` in place as the restore's starting file
 * (`<to>.partial`); returns the position it holds, or 0 (none: the replay starts from the beginning).
 */
export async function seedRestore(
  siteDir: string,
  engine: string,
  to: string,
  dataset: string,
  chain: ChainSegment[],
  seq: number,
  inUse?: Set<string>,
  onDamaged?: (file: string) => void
): Promise<number> {
  return seedFromSnapshot(siteDir, engine, dataset, engine === 'postgres' ? to : `${to}.partial`, chain, seq, inUse, onDamaged)
}

/**
 * Makes a restored database a plain one, as the origin had it: the origin's triggers (SQLite), unique indexes,
 * NOT NULL and sequences (PostgreSQL) are put back, and branchmesh's bookkeeping goes. SQLite: the file then
 * takes its name, in one rename, so a restore that failed leaves no file under that name.
 */
export async function finishRestore(engine: string, to: string): Promise<void> {
  if (engine === 'postgres') {
    const client = await connect(to, { doing: 'cannot connect to the restored database' })
    try {
      await adoptReplica(client)
      await client.query('DROP SCHEMA IF EXISTS _mesh CASCADE')
    } finally {
      await client.end().catch(() => {})
    }
    return
  }
  finishRestoredFile(`${to}.partial`, to)
}
