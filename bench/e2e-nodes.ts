/**
 * End to end through two node processes, the way a two-site mesh runs: this process is the application (it
 * inserts ROWS rows in one SQLite transaction into site a's database), site a's node (`mesh start`, the compiled
 * bin, its own OS process) captures them into its log, site b's node (another process) replicates that log over
 * hyperswarm on a local DHT test network on loopback and applies it to its replica. Measured: from the start of
 * the insert until b's replica holds the last row (b applies a unit all-or-nothing, so its last row there means
 * every row is), and the CPU seconds each process spent meanwhile (/proc/PID/stat, all threads).
 *
 * One mesh is set up (init, invite, join, start: seconds) and every run inserts ROWS more rows into the same
 * table, so a later run inserts into a larger table. The replica is watched with `SELECT max(id)` every 5 ms
 * from a read-only connection (an index lookup: it takes next to nothing from the nodes).
 */
import fs from 'node:fs'
import createTestnet from 'hyperdht/testnet.js'
import Database from '../adapters/sqlite/better-sqlite3.ts'
import { tmpDir } from '../test/helpers/db.ts'
import { TestSite, waitUntil } from '../test/helpers/mesh.ts'

export interface NodesRun {
  rowsPerSec: number
  /** CPU seconds of site a's node, site b's node and the inserting application, from the insert until applied. */
  cpu: { origin: number; replica: number; app: number }
}

/** CPU seconds (user + system, every thread) a process has used so far, from /proc. */
function cpuOf(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
  // Fields after the command name (which may hold spaces) start at state; utime and stime are fields 14 and 15.
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return (Number(f[11]) + Number(f[12])) / 100
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

export async function nodesBench(rows: number, runs: number): Promise<NodesRun[]> {
  const { dir, cleanup } = tmpDir('mesh-e2e-nodes-')
  const net = await createTestnet(3, { host: '127.0.0.1' })
  const bootstrap = net.bootstrap.map((b) => `${b.host}:${b.port}`).join(',')
  const a = new TestSite(dir, 'a', bootstrap)
  const b = new TestSite(dir, 'b', bootstrap)
  const out: NodesRun[] = []
  try {
    const app = new Database(a.db)
    app.pragma('journal_mode = WAL')
    app.pragma('synchronous = FULL')
    app.exec('CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT, amount REAL, note TEXT)')
    await a.init()
    await a.start()
    await b.join(await a.invite())
    await b.start()
    await waitUntil("b's replica of a", () => b.holdsExactly(a), 120_000, 100)
    const replica = new Database(b.replicaOf(a)!, { readonly: true })
    const maxId = replica.prepare('SELECT max(id) FROM orders').pluck()
    const ins = app.prepare('INSERT INTO orders (customer, amount, note) VALUES (?, ?, ?)')
    const pids = { origin: a.node!.proc.pid!, replica: b.node!.proc.pid! }
    for (let r = 0; r < runs; r++) {
      const before = { origin: cpuOf(pids.origin), replica: cpuOf(pids.replica) }
      const t0 = process.hrtime.bigint()
      const c0 = process.cpuUsage()
      let last = 0
      app.transaction(() => {
        for (let i = 0; i < rows; i++)
          last = Number(ins.run(`customer ${i % 5000}`, i * 0.25, 'x'.repeat(40)).lastInsertRowid)
      })()
      const c = process.cpuUsage(c0)
      const appCpu = (c.user + c.system) / 1e6
      const until = Date.now() + 300_000
      while (Number(maxId.get() ?? 0) < last) {
        if (Date.now() > until) throw new Error(`bench: b's replica did not reach row ${last} in 5 minutes`)
        await sleep(5)
      }
      const secs = Number(process.hrtime.bigint() - t0) / 1e9
      out.push({
        rowsPerSec: rows / secs,
        cpu: {
          origin: cpuOf(pids.origin) - before.origin,
          replica: cpuOf(pids.replica) - before.replica,
          app: appCpu
        }
      })
    }
    const n = replica.prepare('SELECT count(*) FROM orders').pluck().get()
    if (Number(n) !== rows * runs) throw new Error(`bench: b's replica holds ${n} rows, not ${rows * runs}`)
    replica.close()
    app.close()
  } finally {
    await a.stop('SIGTERM').catch(() => {})
    await b.stop('SIGTERM').catch(() => {})
    await net.destroy()
    cleanup()
  }
  return out
}
