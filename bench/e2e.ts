/**
 * End to end alone (the part of bench/run.ts): 200,000 rows in one SQLite transaction, commit -> applied at a
 * replica in the same process (capture -> log -> hypercore replication -> apply; test/helpers/pipeline.ts).
 * Prints the median of `--runs N` (default 3) fresh pipelines, against the aim (>= 150,000 rows/s). For profiling:
 * `node --cpu-prof --import tsx bench/e2e.ts --runs 1`.
 */
import Database from 'better-sqlite3'
import path from 'node:path'
import { tmpDir } from '../test/helpers/db.ts'
import { startPipeline } from '../test/helpers/pipeline.ts'

const at = process.argv.indexOf('--runs')
const runs = at > 0 ? Number(process.argv[at + 1]) : 3
const ROWS = 200_000
const rates: number[] = []
for (let r = 0; r < runs; r++) {
  const { dir, cleanup } = tmpDir('mesh-e2e-')
  try {
    const file = path.join(dir, 'origin.db')
    const origin = new Database(file)
    origin.pragma('journal_mode = WAL')
    origin.pragma('synchronous = FULL')
    origin.exec('CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT, amount REAL, note TEXT)')
    const p = await startPipeline(dir, file, { pollMs: 1 })
    const ins = origin.prepare('INSERT INTO orders (customer, amount, note) VALUES (?, ?, ?)')
    const t0 = process.hrtime.bigint()
    origin.transaction(() => {
      for (let i = 0; i < ROWS; i++) ins.run(`customer ${i % 5000}`, i * 0.25, 'x'.repeat(40))
    })()
    await p.settle()
    const secs = Number(process.hrtime.bigint() - t0) / 1e9
    rates.push(ROWS / secs)
    const n = new Database(path.join(dir, 'replica.db'), { readonly: true })
    const got = n.prepare('SELECT count(*) FROM orders').pluck().get()
    n.close()
    if (Number(got) !== ROWS) throw new Error(`replica holds ${got} rows, not ${ROWS}`)
    await p.close()
    origin.close()
  } finally {
    cleanup()
  }
}
rates.sort((a, b) => a - b)
process.stdout.write(
  `end to end, ${ROWS} rows in one transaction: median ${Math.round(rates[Math.floor(rates.length / 2)])} rows/s ` +
    `(runs: ${rates.map((x) => Math.round(x)).join(', ')}; aim >= 150000)\n`
)
