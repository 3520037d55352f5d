/**
 * Huge transactions (issue 14, item 5): one transaction of N rows at a SQLite origin, captured into the log
 * by one process and applied to a replica by another, each with the node's default memory budget per unit.
 * Prints each process's peak RSS against the 300 MB aim, and rows/s against raw SQLite inserting the same
 * rows in one transaction (the anchor of bench/run.ts). `--big-rows 200000,2000000,10000000` chooses the
 * sizes (default 200k and 2M; 10M takes minutes). Nothing is asserted.
 */
import Database from 'better-sqlite3'
import { execFileSync } from 'node:child_process'
import path from 'node:path'
import { DEFAULT_UNIT_MEMORY } from '../node/index.ts'
import { tmpDir } from '../test/helpers/db.ts'

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

function side(args: string[]): { rows: number; seconds: number; peakRss: number } {
  const script = path.join(import.meta.dirname, 'big-proc.ts')
  const out = execFileSync(process.execPath, ['--import', 'tsx', script, ...args, String(BUDGET)], {
    encoding: 'utf8',
    maxBuffer: 1 << 20
  })
  return JSON.parse(out.trim().split('\n').pop()!)
}

const mb = (n: number) => `${Math.round(n / 1024 / 1024)} MB`

export async function bigBench(opts: { say: (s: string) => void; rows?: number[] }): Promise<Record<string, number>> {
  const sizes = opts.rows ?? [200_000, 2_000_000]
  const out: Record<string, number> = {}
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
      const capRate = n / cap.seconds
      const appRate = n / app.seconds
      opts.say(
        `  ${n} rows: capture ${Math.round(capRate)} rows/s ` +
          `(${(raw / capRate).toFixed(1)}x slower than raw insert, ${Math.round(raw)} rows/s), ` +
          `peak RSS ${mb(cap.peakRss)}; ` +
          `apply ${Math.round(appRate)} rows/s (${(raw / appRate).toFixed(1)}x), peak RSS ${mb(app.peakRss)}; ` +
          `${cap.peakRss <= AIM && app.peakRss <= AIM ? 'within' : 'ABOVE'} the aim` +
          (got === n ? '' : `; REPLICA HAS ${got} ROWS`)
      )
      out[`big${n}CapturePeakRssMB`] = Math.round(cap.peakRss / 1024 / 1024)
      out[`big${n}ApplyPeakRssMB`] = Math.round(app.peakRss / 1024 / 1024)
      out[`big${n}CaptureRowsPerSec`] = Math.round(capRate)
      out[`big${n}ApplyRowsPerSec`] = Math.round(appRate)
      out[`big${n}RawRowsPerSec`] = Math.round(raw)
    } finally {
      cleanup()
    }
  }
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

if (process.argv[1] === import.meta.filename) {
  await bigBench({ say: (s) => process.stdout.write(`${s}\n`), rows: bigRowsArg(process.argv) })
}
