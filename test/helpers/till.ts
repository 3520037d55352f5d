/**
 * A till: a separate OS process that sells one item every PAUSE_MS into a SQLite file (one transaction each,
 * sku till-N), like a shop's application during a handover. A write the database refuses (the origin stopped
 * taking writes) is counted and the till goes on. Usage: node --import tsx test/helpers/till.ts FILE PAUSE_MS
 * Runs until SIGTERM, then prints one JSON line: the skus committed, and how many writes were refused.
 */
import Database from '../../adapters/sqlite/better-sqlite3.ts'

const [file, pause] = process.argv.slice(2)
const db = new Database(file, { timeout: 10_000 })
db.pragma('journal_mode = WAL')
const committed: string[] = []
let refused = 0
let stop = false
let n = 0
process.on('SIGTERM', () => {
  stop = true
})
process.stdout.write('ready\n')
while (!stop) {
  const sku = `till-${++n}`
  try {
    db.prepare('INSERT INTO items (sku, qty, price, img) VALUES (?, ?, ?, ?)').run(sku, n, n / 4, null)
    committed.push(sku)
  } catch {
    refused++
  }
  await new Promise((r) => setTimeout(r, Number(pause)))
}
db.close()
process.stdout.write(`${JSON.stringify({ committed, refused })}\n`)
