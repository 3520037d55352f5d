/**
 * The mesh benchmark's application: a separate OS process that writes the origin database, as a shop's
 * application would, so its commits (and their fsyncs) never block the nodes' event loop.
 *
 * Started with child_process.fork; takes one request at a time over IPC and answers it. Times are
 * process.hrtime.bigint() (CLOCK_MONOTONIC, one clock for every process on the machine), sent as strings.
 *
 *   { cmd: 'raw', file, rows }                      -> { secs }           rows into a fresh file, no capture
 *   { cmd: 'trickle', file, count, minMs, maxMs }   -> { commits: [id, committedAt, startedAt][] }
 *   { cmd: 'bulk', file, rows }                     -> { firstId, lastId, startAt, committedAt }
 */
import Database from '../adapters/sqlite/better-sqlite3.ts'
import { pathToFileURL } from 'node:url'

export const ORDERS =
  'CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, customer TEXT, amount REAL, note TEXT)'

export type WriterRequest =
  | { cmd: 'raw'; file: string; rows: number }
  | { cmd: 'trickle'; file: string; count: number; minMs: number; maxMs: number }
  | { cmd: 'bulk'; file: string; rows: number }

/** The connection an application would have: WAL, synchronous=FULL (the benchmarks' anchor settings). */
export function openApp(file: string): Database.Database {
  const db = new Database(file, { timeout: 10_000 })
  db.pragma('journal_mode = WAL')
  db.pragma('synchronous = FULL')
  db.exec(ORDERS)
  return db
}

/** The bulk rows: the same as bench/run.ts writes. */
export function insertRows(db: Database.Database, rows: number): void {
  const ins = db.prepare('INSERT INTO orders (customer, amount, note) VALUES (?, ?, ?)')
  db.transaction(() => {
    for (let i = 0; i < rows; i++) ins.run(`customer ${i % 5000}`, i * 0.25, 'x'.repeat(40))
  })()
}

async function handle(req: WriterRequest): Promise<unknown> {
  const db = openApp(req.file)
  try {
    if (req.cmd === 'raw') {
      const t0 = process.hrtime.bigint()
      insertRows(db, req.rows)
      return { secs: Number(process.hrtime.bigint() - t0) / 1e9 }
    }
    if (req.cmd === 'bulk') {
      const before = Number(db.prepare('SELECT coalesce(max(id), 0) FROM orders').pluck().get())
      const startAt = process.hrtime.bigint()
      insertRows(db, req.rows)
      const committedAt = process.hrtime.bigint()
      const lastId = Number(db.prepare('SELECT max(id) FROM orders').pluck().get())
      return { firstId: before + 1, lastId, startAt: String(startAt), committedAt: String(committedAt) }
    }
    // One row per transaction (autocommit), a pause of minMs..maxMs between commits (fixed sequence).
    const ins = db.prepare('INSERT INTO orders (customer, amount, note) VALUES (?, ?, ?)')
    const commits: Array<[number, string, string]> = []
    let x = 0x9e3779b9
    for (let i = 0; i < req.count; i++) {
      const before = process.hrtime.bigint()
      const { lastInsertRowid } = ins.run('trickle', i, 'one small order')
      commits.push([Number(lastInsertRowid), String(process.hrtime.bigint()), String(before)])
      x = (Math.imul(x ^ (x >>> 15), 0x2c1b3c6d) + 0x6d2b79f5) >>> 0
      const pause = req.minMs + (x % (req.maxMs - req.minMs + 1))
      await new Promise((r) => setTimeout(r, pause))
    }
    return { commits }
  } finally {
    db.close()
  }
}

// Only as the forked child: bench/mesh.ts imports this file for its helpers.
if (process.send && process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  process.on('message', (req: WriterRequest) => {
    handle(req).then(
      (res) => process.send!({ ok: true, res }),
      (err: Error) => process.send!({ ok: false, error: err.stack ?? err.message })
    )
  })
  process.on('disconnect', () => process.exit(0))
}
