/**
 * End to end alone (the part of bench/run.ts): 200,000 rows in one SQLite transaction, commit -> applied at a
 * replica in the same process (capture -> log -> hypercore replication -> apply; test/helpers/pipeline.ts).
 * Prints the median of `--runs N` (default 3) fresh pipelines, against the aim (>= 150,000 rows/s). For profiling:
 * `node --cpu-prof --import tsx bench/e2e.ts --runs 1 --nodes-runs 0`.
 *
 * Then the same through two node processes (bench/e2e-nodes.ts: site a's `mesh start` captures, site b's
 * replicates over hyperswarm and applies), `--nodes-runs N` (default: as many as --runs; 0: not at all).
 */
import Database from '../adapters/sqlite/better-sqlite3.ts'
import path from 'node:path'
import { tmpDir } from '../test/helpers/db.ts'
import { startPipeline } from '../test/helpers/pipeline.ts'
import { nodesBench } from './e2e-nodes.ts'

const at = process.argv.indexOf('--runs')
const runs = at > 0 ? Number(process.argv[at + 1]) : 3
const atNodes = process.argv.indexOf('--nodes-runs')
const nodesRuns = atNodes > 0 ? Number(process.argv[atNodes + 1]) : runs
const ROWS = 200_000
const rates: number[] = []
/** CPU seconds of this process (all its threads) from the insert until applied: less at the mercy of other load. */
const cpus: number[] = []
for (let r = 0; r < runs; r++) {
  const { dir, cleanup } = tmpDir('mesh-e2e-')
  try {
    const file = path.join(dir, 'origin.db')
    const origin = new Database(file)
    origin.pragma('journal_mode = WAL')
    origin.pragma('synchronous = FULL')
    origin.exec('CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT, amount REAL, note TEXT)')
    const p = await startPipeline(dir, file, { pollMs: 1 })
    // The first checkpoint (a digest of every row) is due at once, and taken when the origin is first idle: taken
    // now, the next is 10 minutes away, not in the middle of the measurement (where it cost about 1.2 s).
    await p.capture.checkpointNow(30_000)
    const ins = origin.prepare('INSERT INTO orders (customer, amount, note) VALUES (?, ?, ?)')
    const t0 = process.hrtime.bigint()
    const c0 = process.cpuUsage()
    origin.transaction(() => {
      for (let i = 0; i < ROWS; i++) ins.run(`customer ${i % 5000}`, i * 0.25, 'x'.repeat(40))
    })()
    await p.settle()
    const secs = Number(process.hrtime.bigint() - t0) / 1e9
    rates.push(ROWS / secs)
    const c = process.cpuUsage(c0)
    cpus.push((c.user + c.system) / 1e6)
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
const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
if (runs > 0)
  process.stdout.write(
    `end to end, ${ROWS} rows in one transaction: median ${Math.round(med(rates))} rows/s ` +
      `(runs: ${rates.map((x) => Math.round(x)).join(', ')}; aim >= 150000); CPU ${med(cpus).toFixed(2)} s ` +
      `(runs: ${cpus.map((x) => x.toFixed(2)).join(', ')}), ${Math.round(ROWS / med(cpus))} rows per CPU second\n`
  )
if (nodesRuns > 0) {
  const got = await nodesBench(ROWS, nodesRuns)
  const rate = got.map((g) => g.rowsPerSec)
  const f2 = (x: number) => x.toFixed(2)
  process.stdout.write(
    `through two node processes (a's mesh start -> hyperswarm -> b's mesh start), ${ROWS} rows in one ` +
      `transaction: median ${Math.round(med(rate))} rows/s (runs: ${rate.map((x) => Math.round(x)).join(', ')}; ` +
      `aim >= 150000); CPU s origin node ${f2(med(got.map((g) => g.cpu.origin)))}, replica node ` +
      `${f2(med(got.map((g) => g.cpu.replica)))}, inserting application ${f2(med(got.map((g) => g.cpu.app)))} ` +
      `(runs: ${got.map((g) => `${f2(g.cpu.origin)}+${f2(g.cpu.replica)}+${f2(g.cpu.app)}`).join(', ')})\n`
  )
}
