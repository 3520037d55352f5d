/**
 * A separate OS process that writes a random workload into a SQLite file, like a shop's application would.
 * Usage: node --import tsx test/helpers/writer.ts FILE SEED COUNT [PAUSE_MS]
 * COUNT 0 means until SIGTERM. Prints "done N" with the number of committed transactions.
 */
import Database from '../../adapters/sqlite/better-sqlite3.ts'
import { Workload, setup } from './workload.ts'

const [file, seed, count, pause] = process.argv.slice(2)
const db = new Database(file, { timeout: 10_000 })
db.pragma('journal_mode = WAL')
setup(db)
const w = new Workload(db, Number(seed))
const limit = Number(count)
let n = 0
let stop = false
process.on('SIGTERM', () => {
  stop = true
})
process.stdout.write('ready\n')
while (!stop && (limit === 0 || n < limit)) {
  w.transaction()
  n++
  if (Number(pause) > 0) await new Promise((r) => setTimeout(r, Number(pause)))
  else if (n % 50 === 0) await new Promise((r) => setImmediate(r))
}
db.close()
process.stdout.write(`done ${n}\n`)
