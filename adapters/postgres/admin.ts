/**
 * Administration of PostgreSQL databases branchmesh keeps (replicas, scratch databases, snapshots), and the
 * PostgreSQL client programs it runs (pg_dump, pg_restore).
 */
import { spawn, spawnSync } from 'node:child_process'
import path from 'node:path'
import { MeshError } from '../../protocol/index.ts'
import { connect, quoteIdent, redactUrl, splitPassword } from './common.ts'

/** Creates the database a replica URL names, when it does not exist; `fresh` drops an old one first. */
export async function ensurePgDatabase(serverUrl: string, url: string, fresh: boolean): Promise<void> {
  const name = decodeURIComponent(new URL(url).pathname.slice(1))
  const admin = await connect(serverUrl, {
    doing: 'cannot connect to the PostgreSQL server for replicas (replicaPostgres)'
  })
  try {
    if (fresh) await admin.query(`DROP DATABASE IF EXISTS ${quoteIdent(name)} WITH (FORCE)`)
    const has = await admin.query('SELECT 1 FROM pg_database WHERE datname = $1', [name])
    if (has.rows.length === 0) await admin.query(`CREATE DATABASE ${quoteIdent(name)}`)
  } catch (err) {
    throw MeshError.wrap(err, MeshError.DATABASE_ERROR, `cannot create the replica database ${name}`, {
      hint:
        'The user in replicaPostgres needs the CREATEDB privilege (ALTER ROLE ... CREATEDB), or create ' +
        'the database by hand.'
    })
  } finally {
    await admin.end().catch(() => {})
  }
}

/** Drops the database `url` names (connected through `adminUrl`, another database of the same server). */
export async function dropPgDatabase(adminUrl: string, url: string): Promise<void> {
  const name = decodeURIComponent(new URL(url).pathname.slice(1))
  const admin = await connect(adminUrl, { doing: 'cannot connect to the PostgreSQL server' })
  try {
    await admin.query(`DROP DATABASE IF EXISTS ${quoteIdent(name)} WITH (FORCE)`)
  } finally {
    await admin.end().catch(() => {})
  }
}

/**
 * A scratch database on the server of `url` (for `mesh verify`, or to build a snapshot): its own name, never a
 * replica's.
 */
export function pgScratchUrl(
  url: string,
  dataset: string,
  purpose: 'verify' | 'snapshot' | 'rebuild' = 'verify'
): string {
  const u = new URL(url)
  u.pathname = `/mesh_${purpose}_${dataset
    .slice(0, 16)
    .toLowerCase()
    .replace(/[^a-z0-9_]+/g, '_')}`
  return u.toString()
}

/** Programs found, by name. */
const found = new Map<string, string>()

/** A PostgreSQL client program, as an absolute path: on PATH, or in `pg_config --bindir`; null when there is none. */
export function findPgProgram(name: 'pg_dump' | 'pg_restore'): string | null {
  // Found once (each look runs programs); one not found is looked for again, in case it was installed since.
  const known = found.get(name)
  if (known) return known
  const tries: string[] = []
  const onPath = spawnSync('sh', ['-c', `command -v ${name}`], { encoding: 'utf8' })
  if (onPath.status === 0 && onPath.stdout.trim()) tries.push(onPath.stdout.trim())
  const conf = spawnSync('pg_config', ['--bindir'], { encoding: 'utf8' })
  if (conf.status === 0) tries.push(path.join(conf.stdout.trim(), name))
  for (const exe of tries) {
    const r = spawnSync(exe, ['--version'], { encoding: 'utf8' })
    if (r.status === 0) {
      found.set(name, exe)
      return exe
    }
  }
  return null
}

export function findPgDump(): string | null {
  return findPgProgram('pg_dump')
}

/**
 * Runs a PostgreSQL client program on the database `url` (`args` gets the URL without its password) and
 * resolves with its exit code and the first line of its errors, passwords removed. Not spawnSync: the node
 * goes on answering its peers meanwhile. The password goes through the environment, not the command line
 * (which `ps` shows), and the program gets only the environment it needs (the node reads no environment).
 */
export async function runPgProgram(
  exe: string,
  args: (url: string) => string[],
  url: string
): Promise<{ code: number | null; stderr: string }> {
  const { url: bare, password } = splitPassword(url)
  const env: Record<string, string> = { LC_ALL: 'C', ...(password !== null ? { PGPASSWORD: password } : {}) }
  const r = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
    const p = spawn(exe, args(bare), { env, stdio: ['ignore', 'ignore', 'pipe'] })
    let stderr = ''
    p.stderr.on('data', (d) => (stderr += d))
    p.on('error', (err) => resolve({ code: null, stderr: String(err) }))
    p.on('exit', (code) => resolve({ code, stderr }))
  })
  return { code: r.code, stderr: r.stderr.trim().split('\n')[0].replace(bare, redactUrl(bare)) }
}
