/**
 * The PostgreSQL engine: a dataset is a database, named by a connection URL. Replicas and scratch databases
 * live on the site's replica server (config replicaPostgres), one database each; snapshots are pg_dump files.
 */
import fs from 'node:fs'
import path from 'node:path'
import { MeshError } from '../../protocol/index.ts'
import type { Engine, Scratch } from '../engine.ts'
import { hashFile } from '../files.ts'
import { ensurePgDatabase, dropPgDatabase, findPgProgram, pgScratchUrl, runPgProgram } from './admin.ts'
import { adoptReplica } from './adopt.ts'
import { CREATE_META, PostgresApply } from './apply.ts'
import { PostgresCapture } from './capture.ts'
import { capturePrerequisites } from './slot.ts'
import {
  SEQUENCES_TABLE,
  checkUrl,
  connect,
  ensureIdentityFull,
  pgAfterSql,
  pgDeleteSql,
  pgUpsertSql,
  quoteIdent,
  redactUrl,
  type Client
} from './common.ts'
import { PostgresTriggerCapture } from './triggers.ts'
import { diffPgDatabases, mendPgDatabase } from './verify.ts'

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

/** Runs `fn` on a connection to `url` that is closed afterwards, whatever happens. */
async function withClient<T>(url: string, doing: string, fn: (client: Client) => Promise<T>): Promise<T> {
  const client = await connect(url, { doing })
  try {
    return await fn(client)
  } finally {
    await client.end().catch(() => {})
  }
}

/** A replica database's URL: the site's replica server URL with a database name of its own per dataset. */
export function pgReplicaUrl(serverUrl: string, info: { id: string; name: string; originSite: string }): string {
  checkUrl(serverUrl)
  const u = new URL(serverUrl)
  const safe = (s: string) => s.toLowerCase().replace(/[^a-z0-9_]+/g, '_')
  u.pathname = `/${`mesh_${safe(info.originSite)}_${safe(info.name)}_${info.id.slice(0, 8)}`.slice(0, 63)}`
  return u.toString()
}

/**
 * Drops the dataset's replication slots in this database (any epoch), waiting (up to 10 s) for the server to
 * let go of a stream that was just closed: an active slot cannot be dropped, and a slot left behind keeps WAL
 * on the disk for ever. Slots of other databases on the same server are never touched.
 */
async function dropSlots(client: Client, dataset: string): Promise<void> {
  const list =
    'SELECT slot_name, active FROM pg_replication_slots WHERE slot_name LIKE $1 AND database = current_database()'
  for (let i = 0; i < 100; i++) {
    const r = await client.query(list, [slotPattern(dataset)])
    if (r.rows.length === 0) return
    for (const s of r.rows) {
      if (s.active !== 't') await client.query('SELECT pg_drop_replication_slot($1)', [s.slot_name]).catch(() => {})
    }
    if (r.rows.some((s) => s.active === 't')) await new Promise((resolve) => setTimeout(resolve, 100))
  }
  throw MeshError.DATABASE_ERROR(
    `a replication slot of this dataset is still in use; it keeps WAL until it is dropped`,
    {
      hint:
        'Find who reads it (SELECT slot_name, active_pid FROM pg_replication_slots WHERE database = ' +
        'current_database()) ' +
        'and drop it with pg_drop_replication_slot.'
    }
  )
}

/** Stops a PostgreSQL database from being captured: its slot (which holds WAL) and publication go. */
async function dropCapture(url: string, dataset: string): Promise<void> {
  await withClient(url, 'cannot connect to the fenced database', async (client) => {
    await dropSlots(client, dataset)
    await client.query(`DROP PUBLICATION IF EXISTS ${quoteIdent(pgSlotName(dataset))}`)
  })
}

/** Creates the publication and the slot (both named branchmesh_<dataset id>); returns warnings for the user. */
async function setUpLogical(client: Client, where: string, dataset: string): Promise<string[]> {
  const name = pgSlotName(dataset)
  const problems = await capturePrerequisites(client, name)
  if (problems.length) {
    throw MeshError.CANNOT_CAPTURE(
      `PostgreSQL at ${redactUrl(where)} does not allow logical decoding: ${problems.join('; ')}`,
      {
        hint:
          'Make those changes and run the command again, or give --capture triggers where logical decoding cannot be ' +
          'allowed (a hosted server). Nothing was created.',
        context: { problems }
      }
    )
  }
  const pub = await client.query('SELECT 1 FROM pg_publication WHERE pubname = $1', [name])
  if (pub.rows.length === 0) await client.query(`CREATE PUBLICATION ${quoteIdent(name)} FOR ALL TABLES`)
  const slotSql = 'SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database()'
  const slot = await client.query(slotSql, [name])
  if (slot.rows.length === 0) await client.query(`SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, [name])
  const keep = await client.query(`SELECT current_setting('max_slot_wal_keep_size') AS v`)
  const warnings: string[] = []
  const identity = await ensureIdentityFull(client)
  if (identity) warnings.push(identity)
  if (keep.rows[0].v === '-1') {
    warnings.push(
      `max_slot_wal_keep_size is unlimited: while this site's node is off, the slot ${name} keeps every WAL file on ` +
        `the database server's disk. Set a ceiling (ALTER SYSTEM SET max_slot_wal_keep_size = '10GB'; SELECT ` +
        `pg_reload_conf();); if it is ever reached, the node copies the whole database again instead of ` +
        `filling the disk.`
    )
  }
  return warnings
}

/** Checks that this site may keep PostgreSQL replicas on `url`'s server (it must connect and create databases). */
export async function checkReplicaServer(url: string): Promise<void> {
  checkUrl(url)
  await withClient(url, 'cannot connect to the PostgreSQL server for replicas', async (client) => {
    const r = await client.query('SELECT rolsuper OR rolcreatedb AS ok FROM pg_roles WHERE rolname = current_user')
    if (r.rows[0]?.ok !== 't') {
      throw MeshError.USAGE(
        `the user in ${redactUrl(url)} may not create databases, and each replica is a database of its own`,
        {
          hint: 'Run ALTER ROLE <user> CREATEDB; as a superuser, or give another user in the URL.'
        }
      )
    }
  })
}

/** A database on the server of `near`, dropped (through `near`) when done. */
async function scratchDatabase(near: string, url: string): Promise<Scratch> {
  await ensurePgDatabase(near, url, true)
  return { where: url, drop: () => dropPgDatabase(near, url) }
}

export const postgresEngine: Engine = {
  name: 'postgres',
  shown: redactUrl,

  async checkSource(where, dataset, mode) {
    checkUrl(where)
    return withClient(where, 'cannot connect to the database to protect', async (client) => {
      try {
        if (mode === 'triggers') {
          const v = await client.query(`SELECT current_setting('server_version_num')::int AS v`)
          if (Number(v.rows[0].v) < 130000) {
            throw MeshError.CANNOT_CAPTURE(`trigger capture needs PostgreSQL 13 or newer (this is ${v.rows[0].v})`)
          }
          return []
        }
        return await setUpLogical(client, where, dataset)
      } catch (err) {
        throw MeshError.wrap(err, MeshError.DATABASE_ERROR, `cannot set up capture in ${redactUrl(where)}`)
      }
    })
  },

  async undoSource(where, dataset) {
    await withClient(where, 'cannot connect to the database to undo the set-up', async (client) => {
      const name = pgSlotName(dataset)
      await client.query(
        `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
          WHERE slot_name = $1 AND database = current_database() AND NOT active`,
        [name]
      )
      await client.query(`DROP PUBLICATION IF EXISTS ${quoteIdent(name)}`)
      await client.query(`DROP EVENT TRIGGER IF EXISTS branchmesh_identity_full`).catch(() => {})
      await client.query(`DROP FUNCTION IF EXISTS _mesh.identity_full()`).catch(() => {})
    })
  },

  openCapture(where, opts) {
    if (opts.mode === 'triggers') return new PostgresTriggerCapture({ url: where, logger: opts.logger })
    const slot = pgSlotName(opts.dataset, opts.epoch)
    return new PostgresCapture({ url: where, slot, publication: pgSlotName(opts.dataset), logger: opts.logger })
  },

  async captureModeFor(where, dataset) {
    const problems = await withClient(where, 'cannot connect to the database', (client) =>
      capturePrerequisites(client, pgSlotName(dataset))
    )
    return { mode: problems.length === 0 ? 'logical' : 'triggers', problems }
  },

  openApply: (where, opts) => new PostgresApply({ url: where, ...opts }),

  async role(where, dataset) {
    let client: Client
    try {
      client = await connect(where, { doing: 'cannot look at the database' })
    } catch (err) {
      if ((err as MeshError).code === 'PG_NO_DATABASE') return 'none'
      throw err
    }
    try {
      const r = await client.query(
        `SELECT to_regclass('_mesh.replica') IS NOT NULL AS replica,
                EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name LIKE $1 AND database = current_database())
                  OR to_regclass('_mesh.changes') IS NOT NULL AS slot`,
        [slotPattern(dataset)]
      )
      if (r.rows[0].replica === 't') return 'replica'
      return r.rows[0].slot === 't' ? 'origin' : 'plain'
    } finally {
      await client.end().catch(() => {})
    }
  },

  replicaLocation(info, place) {
    if (!place.server) {
      throw MeshError.NO_REPLICA_SERVER(
        `${info.name} is a PostgreSQL dataset and this site has no PostgreSQL server for replicas: its ` +
          `log is kept here, but no warm copy is built`
      )
    }
    return pgReplicaUrl(place.server, info)
  },

  async prepareReplica(where, dataset, place) {
    if (place.server && (await postgresEngine.role(where, dataset)) === 'none')
      await ensurePgDatabase(place.server, where, false)
    // A slot left by a fence that stopped half-way would keep WAL on the disk for ever.
    await dropCapture(where, dataset)
  },

  async reset(where, dataset, carried) {
    const client = await connect(where, { doing: 'cannot connect to the database to rebuild it' })
    try {
      await client.query('BEGIN')
      let tables = carried
      if (tables === null) {
        const meta = await client.query(`SELECT to_regclass('_mesh.replica') IS NOT NULL AS has`)
        const rows = meta.rows[0].has === 't' ? (await client.query('SELECT tables FROM _mesh.replica')).rows : []
        tables = (rows as Array<{ tables: string }>).flatMap((r) =>
          (JSON.parse(r.tables) as Array<{ name: string }>).map((t) => t.name)
        )
      }
      for (const t of tables) await client.query(`DROP TABLE IF EXISTS ${t} CASCADE`)
      await client.query(`DROP SCHEMA IF EXISTS _mesh CASCADE`)
      await client.query(CREATE_META)
      await client.query(`DROP PUBLICATION IF EXISTS ${quoteIdent(pgSlotName(dataset))}`)
      await client.query('COMMIT')
      await dropSlots(client, dataset)
    } catch (err) {
      await client.query('ROLLBACK').catch(() => {})
      throw MeshError.wrap(err, MeshError.DATABASE_ERROR, `cannot empty ${redactUrl(where)} to rebuild it`)
    } finally {
      await client.end().catch(() => {})
    }
  },

  scratch: (near, dataset, purpose) => scratchDatabase(near, pgScratchUrl(near, dataset, purpose)),
  diff: diffPgDatabases,

  async repair(mine, truth, tables) {
    await mendPgDatabase(mine, truth, tables ?? (await diffPgDatabases(mine, truth)))
  },

  async keepCopy(where, dir, site) {
    const file = path.join(dir, 'before.sql')
    const exe = findPgProgram('pg_dump')
    let why = "no pg_dump program was found on this machine (install PostgreSQL's client programs to get one)"
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
  },

  async checkRestoreTarget(to) {
    checkUrl(to)
    await withClient(to, 'cannot connect to the database to restore into', async (client) => {
      const r = await client.query(
        `SELECT count(*)::int AS n FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
            AND n.nspname NOT LIKE 'pg\\_%'`
      )
      if (Number(r.rows[0].n) > 0) {
        throw MeshError.USAGE(`${redactUrl(to)} already holds tables`, {
          hint: 'Give an empty database (createdb NAME): a restore never overwrites anything.'
        })
      }
    })
  },

  restoring: (to) => to,

  async finishRestore(to, opts) {
    if (!opts.plain) return
    await withClient(to, 'cannot connect to the restored database', async (client) => {
      await adoptReplica(client)
      await client.query('DROP SCHEMA IF EXISTS _mesh CASCADE')
    })
  },

  exampleTarget: () => 'postgres://USER@HOST/NEW_DATABASE',

  async about(where) {
    return withClient(where, 'cannot connect to read the server version', async (client) => {
      const v = await client.query(`SELECT current_setting('server_version') AS v`)
      // The server's data folder is this machine's disk only when the server runs here and its folder can be
      // read (a superuser or pg_read_all_settings may see data_directory).
      const host = new URL(where).hostname
      let folder: string | null = null
      if (host === '' || host === 'localhost' || host.startsWith('127.') || host === '[::1]') {
        const d = await client.query(`SELECT current_setting('data_directory', true) AS d`).catch(() => null)
        const dir = d?.rows[0]?.d as string | null | undefined
        if (dir && fs.existsSync(dir)) folder = dir
      }
      return { version: `PostgreSQL ${String(v.rows[0].v).split(' ')[0]}`, folder }
    })
  },

  async walRetention(where, dataset, epoch) {
    const capture = new PostgresCapture({
      url: where,
      slot: pgSlotName(dataset, epoch),
      publication: pgSlotName(dataset)
    })
    try {
      return await capture.walRetention()
    } finally {
      await capture.close()
    }
  },

  snapshots: {
    ext: 'pgdump',
    async workspace(_partial, dataset, server) {
      if (!server || findPgProgram('pg_dump') === null || findPgProgram('pg_restore') === null) {
        const why = server
          ? 'pg_dump and pg_restore are needed'
          : 'this site has no replicaPostgres server to build them on'
        throw MeshError.NOT_FOUND(`no snapshots of PostgreSQL datasets here: ${why}`)
      }
      return scratchDatabase(server, pgScratchUrl(server, dataset, 'snapshot'))
    },
    async write(where, partial) {
      const args = (url: string) => ['--format=custom', '--no-owner', '--no-privileges', '--file', partial, url]
      const r = await runPgProgram(findPgProgram('pg_dump')!, args, where)
      if (r.code !== 0) throw MeshError.DATABASE_ERROR(`cannot write a snapshot: pg_dump ${r.stderr}`)
    },
    async load(file, to, sha256) {
      if (sha256 !== undefined && (await hashFile(file)) !== sha256) return false
      const args = (url: string) => [
        '--no-owner',
        '--no-privileges',
        '--exit-on-error',
        '--single-transaction',
        '--dbname',
        url,
        file
      ]
      const r = await runPgProgram(findPgProgram('pg_restore')!, args, to)
      if (r.code !== 0) {
        throw MeshError.DATABASE_ERROR(`cannot restore the snapshot ${file}: pg_restore ${r.stderr}`, {
          hint: 'Check that pg_restore is as new as the server; or move the snapshot away to replay from the start.'
        })
      }
      return true
    },
    canLoad: () => findPgProgram('pg_restore') !== null
  },

  dialect: {
    // PostgreSQL rows and keyless deletes carry the table's columns as they are (no rowid).
    rowColumns: (def) => def.columns.map((c) => c.name),
    keyColumns: (def) => (def.key.length ? def.key.map((i) => def.columns[i].name) : def.columns.map((c) => c.name)),
    upsert: pgUpsertSql,
    remove: pgDeleteSql,
    internal: (table) => table === SEQUENCES_TABLE,
    after: pgAfterSql
  }
}
