/** Setting up a site's data directory: used by `mesh init` and `mesh join` before any node runs. */
import fs from 'node:fs'
import path from 'node:path'
import { MeshError } from '../protocol/index.ts'
import { capturePrerequisites, checkUrl, connect, ensureIdentityFull, openDatabase, quoteIdent, redactUrl } from '../adapters/index.ts'
import { pgSlotName } from './engines.ts'

/**
 * Checks that a source database exists and can be captured; for PostgreSQL it also creates the publication
 * and the replication slot (both named branchmesh_<dataset id>). Returns warnings for the user (a slot that
 * may hold WAL without limit). SQLite files are only opened for reading here.
 */
export async function checkSource(engine: 'sqlite' | 'postgres', where: string, dataset: string, capture: 'logical' | 'triggers' = 'logical'): Promise<string[]> {
  if (engine === 'sqlite') {
    const db = openDatabase(where, { mustExist: true })
    db.close()
    return []
  }
  checkUrl(where)
  const client = await connect(where, { doing: 'cannot connect to the database to protect' })
  try {
    const name = pgSlotName(dataset)
    if (capture === 'triggers') {
      const v = await client.query(`SELECT current_setting('server_version_num')::int AS v`)
      if (Number(v.rows[0].v) < 130000) throw MeshError.CANNOT_CAPTURE(`trigger capture needs PostgreSQL 13 or newer (this is ${v.rows[0].v})`)
      return []
    }
    const problems = await capturePrerequisites(client, name)
    if (problems.length) {
      throw MeshError.CANNOT_CAPTURE(`PostgreSQL at ${redactUrl(where)} does not allow logical decoding: ${problems.join('; ')}`, {
        hint: 'Make those changes and run the command again, or give --capture triggers where logical decoding cannot be allowed (a hosted server). Nothing was created.',
        context: { problems }
      })
    }
    const pub = await client.query('SELECT 1 FROM pg_publication WHERE pubname = $1', [name])
    if (pub.rows.length === 0) await client.query(`CREATE PUBLICATION ${quoteIdent(name)} FOR ALL TABLES`)
    const slot = await client.query('SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database()', [name])
    if (slot.rows.length === 0) await client.query(`SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, [name])
    const keep = await client.query(`SELECT current_setting('max_slot_wal_keep_size') AS v`)
    const warnings: string[] = []
    const identity = await ensureIdentityFull(client)
    if (identity) warnings.push(identity)
    if (keep.rows[0].v === '-1') {
      warnings.push(
        `max_slot_wal_keep_size is unlimited: while this site's node is off, the slot ${name} keeps every WAL file on the database server's disk. Set a ceiling (ALTER SYSTEM SET max_slot_wal_keep_size = '10GB'; SELECT pg_reload_conf();); if it is ever reached, the node copies the whole database again instead of filling the disk.`
      )
    }
    return warnings
  } catch (err) {
    throw MeshError.wrap(err, MeshError.DATABASE_ERROR, `cannot set up capture in ${redactUrl(where)}`)
  } finally {
    await client.end().catch(() => {})
  }
}

/**
 * Undoes what checkSource created, for an init or join that failed after it: the slot (which would keep WAL
 * for ever), the publication and the event trigger. SQLite: nothing to undo.
 */
export async function undoSource(engine: 'sqlite' | 'postgres', where: string, dataset: string): Promise<void> {
  if (engine !== 'postgres') return
  const client = await connect(where, { doing: 'cannot connect to the database to undo the set-up' })
  try {
    const name = pgSlotName(dataset)
    await client.query(`SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database() AND NOT active`, [name])
    await client.query(`DROP PUBLICATION IF EXISTS ${quoteIdent(name)}`)
    await client.query(`DROP EVENT TRIGGER IF EXISTS branchmesh_identity_full`).catch(() => {})
    await client.query(`DROP FUNCTION IF EXISTS _mesh.identity_full()`).catch(() => {})
  } finally {
    await client.end().catch(() => {})
  }
}

/** Checks that this site may keep PostgreSQL replicas on `url`'s server (it must connect and create databases). */
export async function checkReplicaServer(url: string): Promise<void> {
  checkUrl(url)
  const client = await connect(url, { doing: 'cannot connect to the PostgreSQL server for replicas' })
  try {
    const r = await client.query('SELECT rolsuper OR rolcreatedb AS ok FROM pg_roles WHERE rolname = current_user')
    if (r.rows[0]?.ok !== 't') {
      throw MeshError.USAGE(`the user in ${redactUrl(url)} may not create databases, and each replica is a database of its own`, {
        hint: 'Run ALTER ROLE <user> CREATEDB; as a superuser, or give another user in the URL.'
      })
    }
  } finally {
    await client.end().catch(() => {})
  }
}

/**
 * Runs `build` in a new data directory and removes everything it created if `build` fails, so a failed
 * `mesh init` or `mesh join` can simply be run again. Refuses a directory that already holds a site.
 */
export async function createDataDir<T>(dir: string, marker: string, build: () => Promise<T>): Promise<T> {
  if (fs.existsSync(path.join(dir, marker)) || fs.existsSync(path.join(dir, 'site.key'))) {
    throw MeshError.ALREADY_INITIALIZED(`${dir} already holds a site`)
  }
  const existed = fs.existsSync(dir)
  if (existed && !fs.statSync(dir).isDirectory()) throw MeshError.USAGE(`${dir} is a file, not a directory`, { hint: 'Pass a folder for --dir.' })
  const before = existed ? new Set(fs.readdirSync(dir)) : new Set<string>()
  try {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 })
  } catch (err) {
    throw MeshError.READ_ONLY(`cannot create ${dir}: ${(err as Error).message}`, { hint: 'Choose a --dir this user may write to.' })
  }
  try {
    return await build()
  } catch (err) {
    if (!existed) fs.rmSync(dir, { recursive: true, force: true })
    else for (const n of fs.readdirSync(dir)) if (!before.has(n)) fs.rmSync(path.join(dir, n), { recursive: true, force: true })
    throw err
  }
}
