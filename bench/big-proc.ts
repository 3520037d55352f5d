/**
 * One side of the huge-transaction benchmark (bench/big.ts), in a process of its own so that its peak RSS is
 * its own: `capture ORIGIN STORE BUDGET` prepares capture (triggers, header, snapshot) and captures until the
 * source is idle; `apply STORE REPLICA BUDGET` applies the log to a replica until caught up. Prints one JSON
 * line: rows (capture), seconds, peak RSS in bytes.
 */
import { SqliteApply, SqliteCapture } from '../adapters/index.ts'
import { applyLoop, captureLoop, openLog } from '../test/helpers/pipeline.ts'

const [mode, a, b, budget] = process.argv.slice(2)
const unitMemoryBytes = Number(budget)
const t0 = process.hrtime.bigint()
let rows = 0
if (mode === 'capture') {
  const { store, log } = await openLog(b)
  const side = new SqliteCapture({ path: a, ackIntervalMs: 0 })
  const loop = captureLoop(side, log, { unitMemoryBytes })
  await loop.prepare()
  for (;;) {
    const n = await loop.step()
    if (n === 0) break
    rows += n
  }
  await side.close()
  await store.close()
} else {
  const { store, log } = await openLog(a)
  const side = new SqliteApply({ path: b })
  const loop = applyLoop(log, side, { unitMemoryBytes })
  await side.open()
  await loop.catchUp()
  await side.close()
  await store.close()
}
const seconds = Number(process.hrtime.bigint() - t0) / 1e9
// maxRSS is in kilobytes: the process's peak resident set, all of its life.
process.stdout.write(`${JSON.stringify({ rows, seconds, peakRss: process.resourceUsage().maxRSS * 1024 })}\n`)
