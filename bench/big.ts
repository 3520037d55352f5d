/**
 * Huge transactions (issue 14, item 5): one transaction of N rows at a SQLite origin, captured into the log
 * by one process and applied to a replica by another, each with the node's default memory budget per unit.
 * Prints each process's peak RSS against the 300 MB aim, and rows/s against raw SQLite inserting the same
 * rows in one transaction (the anchor of bench/run.ts). Then the same with a PostgreSQL origin and replica
 * (databases on one throwaway cluster, wal_level=logical, fsync on; capture by logical decoding), against
 * PostgreSQL inserting the rows in one transaction (INSERT ... SELECT, timed by the server's round trip).
 * `--big-rows 200000,2000000,10000000` chooses the sizes for both engines (default 200k and 2M; 10M takes
 * minutes, and on PostgreSQL a few GB of disk for the WAL and the decoder's spill files). Nothing is asserted.
 */
import Database from '../adapters/sqlite/better-sqlite3.ts'
import { execFileSync } from 'node:child_process'
import path from 'node:path'
import pg from 'pg'
import { DEFAULT_UNIT_MEMORY } from '../node/index.ts'
import { tmpDir } from '../test/helpers/db.ts'
import { startCluster } from '../test/helpers/pg.ts'

const AIM = 300 * 1024 * 1024
const BUDGET = DEFAULT_UNIT_MEMORY

function table(db: Database.Database) {
  db.pragma('journal_mode = WAL')
  db.pragma('synchronous = FULL')
  db.exec('CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, customer TEXT, amount REAL, note TEXT)')
}

/** Inserts rows in one transaction; rows/s. */
function insert(file: string, rows: number): number {
  const db = new Database(file)
  table(db)
  const ins = db.prepare('INSERT INTO orders (customer, amount, note) VALUES (?, ?, ?)')
  const t0 = process.hrtime.bigint()
  db.transaction(() => {
    for (let i = 0; i < rows; i++) ins.run(`customer ${i % 5000}`, i * 0.25, 'x'.repeat(40))
  })()
  const rate = rows / (Number(process.hrtime.bigint() - t0) / 1e9)
  db.close()
  return rate
}

function side(args: string[], more: string[] = []): { rows: number; seconds: number; peakRss: number } {
  const script = path.join(import.meta.dirname, 'big-proc.ts')
  const out = execFileSync(process.execPath, ['--import', 'tsx', script, ...args, String(BUDGET), ...more], {
    encoding: 'utf8',
    maxBuffer: 1 << 20
  })
  return JSON.parse(out.trim().split('\n').pop()!)
}

const mb = (n: number) => `${Math.round(n / 1024 / 1024)} MB`

/** One line of figures for a size, and the same figures for --json under `big<Prefix><rows>...`. */
function report(
  opts: { say: (s: string) => void },
  out: Record<string, number>,
  prefix: string,
  n: number,
  r: { raw: number; cap: { seconds: number; peakRss: number }; app: { seconds: number; peakRss: number }; got: number }
): void {
  const capRate = n / r.cap.seconds
  const appRate = n / r.app.seconds
  opts.say(
    `  ${n} rows: capture ${Math.round(capRate)} rows/s ` +
      `(${(r.raw / capRate).toFixed(1)}x slower than raw insert, ${Math.round(r.raw)} rows/s), ` +
      `peak RSS ${mb(r.cap.peakRss)}; ` +
      `apply ${Math.round(appRate)} rows/s (${(r.raw / appRate).toFixed(1)}x), peak RSS ${mb(r.app.peakRss)}; ` +
      `${r.cap.peakRss <= AIM && r.app.peakRss <= AIM ? 'within' : 'ABOVE'} the aim` +
      (r.got === n ? '' : `; REPLICA HAS ${r.got} ROWS`)
  )
  out[`big${prefix}${n}CapturePeakRssMB`] = Math.round(r.cap.peakRss / 1024 / 1024)
  out[`big${prefix}${n}ApplyPeakRssMB`] = Math.round(r.app.peakRss / 1024 / 1024)
  out[`big${prefix}${n}CaptureRowsPerSec`] = Math.round(capRate)
  out[`big${prefix}${n}ApplyRowsPerSec`] = Math.round(appRate)
  out[`big${prefix}${n}RawRowsPerSec`] = Math.round(r.raw)
}

const PG_TABLE = 'CREATE TABLE orders (id bigint PRIMARY KEY, customer text, amount float8, note text)'

/** The same rows as insert(), in one PostgreSQL transaction; rows/s. */
async function pgInsert(url: string, rows: number, from = 1): Promise<number> {
  const c = new pg.Client({ connectionString: url })
  await c.connect()
  try {
    const t0 = process.hrtime.bigint()
    await c.query(
      `INSERT INTO orders SELECT i, 'customer ' || (i % 5000), i * 0.25, repeat('x', 40) ` +
        'FROM generate_series($1::bigint, $2::bigint) i',
      [from, from + rows - 1]
    )
    return rows / (Number(process.hrtime.bigint() - t0) / 1e9)
  } finally {
    await c.end()
  }
}

async function pgCount(url: string): Promise<number> {
  const c = new pg.Client({ connectionString: url })
  await c.connect()
  try {
    return Number((await c.query('SELECT count(*) AS n FROM orders')).rows[0].n)
  } finally {
    await c.end()
  }
}

/**
 * The PostgreSQL half: a fresh cluster per size, so that no size inherits another's WAL or spill files.
 * `triggers`: trigger capture instead of logical decoding (the origin's insert then fires the capture triggers).
 */
async function pgBig(
  opts: { say: (s: string) => void },
  out: Record<string, number>,
  sizes: number[],
  triggers = false
) {
  opts.say(
    `Huge transactions, one PostgreSQL transaction of N rows (${triggers ? 'trigger capture' : 'logical decoding'}), ` +
      `capture and apply in processes of their own (budget ${mb(BUDGET)} per unit; aim: peak RSS <= ${mb(AIM)})`
  )
  const mode = triggers ? 'pgt-capture' : 'pg-capture'
  for (const n of sizes) {
    const cluster = await startCluster({ durable: true })
    const { dir, cleanup } = tmpDir('mesh-bench-pgbig-')
    try {
      const rawUrl = await cluster.createDatabase('raw')
      const origin = await cluster.createDatabase('origin')
      const replica = await cluster.createDatabase('replica')
      await cluster.query(PG_TABLE, [], 'raw')
      await cluster.query(PG_TABLE, [], 'origin')
      const raw = await pgInsert(rawUrl, n)
      await cluster.query('DROP TABLE orders', [], 'raw')
      const store = path.join(dir, 'store')
      side([mode, origin, store]) // slot and publication or triggers, header, empty snapshot
      await pgInsert(origin, n)
      const cap = side([mode, origin, store], [String(n)])
      const app = side(['pg-apply', store, replica])
      report(opts, out, triggers ? 'PgTriggers' : 'Pg', n, { raw, cap, app, got: await pgCount(replica) })
    } finally {
      await cluster.stop()
      cleanup()
    }
  }
}

export async function bigBench(opts: {
  say: (s: string) => void
  rows?: number[]
  /**
   * Leave out the PostgreSQL half (`--big-engine sqlite`), or the SQLite half (`--big-engine postgres`);
   * `--big-engine postgres-triggers`: PostgreSQL with trigger capture only (not in the default run).
   */
  engines?: Array<'sqlite' | 'postgres' | 'postgres-triggers'>
}): Promise<Record<string, number>> {
  const sizes = opts.rows ?? [200_000, 2_000_000]
  const out: Record<string, number> = {}
  const engines = opts.engines ?? ['sqlite', 'postgres']
  if (engines.includes('postgres-triggers')) await pgBig(opts, out, sizes, true)
  if (!engines.includes('sqlite')) {
    if (engines.includes('postgres')) await pgBig(opts, out, sizes)
    return out
  }
  opts.say(
    'Huge transactions, one SQLite transaction of N rows, capture and apply in processes of their own ' +
      `(budget ${mb(BUDGET)} per unit; aim: peak RSS <= ${mb(AIM)})`
  )
  for (const n of sizes) {
    const { dir, cleanup } = tmpDir('mesh-bench-big-')
    try {
      const raw = insert(path.join(dir, 'raw.db'), n)
      const origin = path.join(dir, 'origin.db')
      const store = path.join(dir, 'store')
      const created = new Database(origin)
      table(created)
      created.close()
      side(['capture', origin, store]) // triggers, header, empty snapshot
      insert(origin, n)
      const cap = side(['capture', origin, store])
      const app = side(['apply', store, path.join(dir, 'replica.db')])
      const replica = new Database(path.join(dir, 'replica.db'), { readonly: true })
      const got = replica.prepare('SELECT count(*) FROM orders').pluck().get() as number
      replica.close()
      report(opts, out, '', n, { raw, cap, app, got })
    } finally {
      cleanup()
    }
  }
  if (engines.includes('postgres')) await pgBig(opts, out, sizes)
  return out
}

/** `--big-rows 200000,2000000` from the command line, or undefined. */
export function bigRowsArg(argv: string[]): number[] | undefined {
  const i = argv.indexOf('--big-rows')
  if (i < 0) return undefined
  const list = (argv[i + 1] ?? '').split(',').map((s) => Number(s.replace(/_/g, '')))
  if (list.length === 0 || list.some((x) => !Number.isInteger(x) || x <= 0)) {
    throw new Error('--big-rows takes a comma-separated list of row counts, e.g. --big-rows 200000,2000000,10000000')
  }
  return list
}

/** `--big-engine sqlite|postgres|postgres-triggers` from the command line: that one only. */
export function bigEngineArg(argv: string[]): Array<'sqlite' | 'postgres' | 'postgres-triggers'> | undefined {
  const i = argv.indexOf('--big-engine')
  if (i < 0) return undefined
  const e = argv[i + 1]
  if (e !== 'sqlite' && e !== 'postgres' && e !== 'postgres-triggers')
    throw new Error('--big-engine takes sqlite, postgres or postgres-triggers')
  return [e]
}

if (process.argv[1] === import.meta.filename) {
  await bigBench({
    say: (s) => process.stdout.write(`${s}\n`),
    rows: bigRowsArg(process.argv),
    engines: bigEngineArg(process.argv)
  })
}
