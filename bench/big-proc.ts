/**
 * One side of the huge-transaction benchmark (bench/big.ts), in a process of its own so that its peak RSS is
 * its own: `capture ORIGIN STORE BUDGET` prepares capture (triggers, header, snapshot) and captures until the
 * source is idle; `apply STORE REPLICA BUDGET` applies the log to a replica until caught up. `pg-capture URL
 * STORE BUDGET [ROWS]` and `pg-apply STORE URL BUDGET` do the same with a PostgreSQL origin (logical decoding
 * through the slot and publication `branchmesh_bench`) and replica database. PostgreSQL decodes a huge
 * transaction for a while before it sends the first message, and a read that finds nothing yet returns
 * nothing, so pg-capture goes on until it has captured ROWS row changes (default 0: until idle), for at most
 * an hour. `pgt-capture` is pg-capture with trigger capture instead (`"capture": "triggers"`). Prints one JSON
 * line: rows (capture), seconds, peak RSS in bytes.
 */
import {
  PostgresApply,
  PostgresCapture,
  PostgresTriggerCapture,
  SqliteApply,
  SqliteCapture,
  type CaptureSide
} from '../adapters/index.ts'
import { applyLoop, captureLoop, openLog } from '../test/helpers/pipeline.ts'

const [mode, a, b, budget, expect] = process.argv.slice(2)
const unitMemoryBytes = Number(budget)
const slot = 'branchmesh_bench'
const t0 = process.hrtime.bigint()
let rows = 0
if (mode === 'capture' || mode === 'pg-capture' || mode === 'pgt-capture') {
  const { store, log } = await openLog(b)
  const side: CaptureSide =
    mode === 'capture'
      ? new SqliteCapture({ path: a, ackIntervalMs: 0 })
      : mode === 'pg-capture'
        ? new PostgresCapture({ url: a, slot, publication: slot })
        : new PostgresTriggerCapture({ url: a })
  const loop = captureLoop(side, log, { unitMemoryBytes })
  await loop.prepare()
  const want = Number(expect ?? 0)
  const until = Date.now() + 3600_000
  for (;;) {
    const n = await loop.step()
    rows += n
    if (n > 0) continue
    if (rows >= want) break
    if (Date.now() > until) throw new Error(`captured ${rows} of ${want} row changes in an hour`)
    await side.wait(100)
  }
  await side.close()
  await store.close()
} else {
  const { store, log } = await openLog(a)
  const side = mode === 'apply' ? new SqliteApply({ path: b }) : new PostgresApply({ url: b, dataset: 'ds1' })
  const loop = applyLoop(log, side, { unitMemoryBytes })
  await side.open()
  await loop.catchUp()
  await side.close()
  await store.close()
}
const seconds = Number(process.hrtime.bigint() - t0) / 1e9
// maxRSS is in kilobytes: the process's peak resident set, all of its life.
process.stdout.write(`${JSON.stringify({ rows, seconds, peakRss: process.resourceUsage().maxRSS * 1024 })}\n`)
