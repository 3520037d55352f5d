/**
 * The cost of encrypted logs (hypercore block encryption under a dataset's data key, node/datakeys.ts): end
 * to end rows/s, commit at the origin -> applied at the replica (capture -> log -> replication -> apply, the
 * pipeline of bench/run.ts), with plaintext logs and with encrypted ones, alternating, median of `runs` each.
 * Aim: encryption costs 10% or less. The pipeline runs in this one process, so its CPU time (user + system,
 * process.cpuUsage) is printed too, as rows per CPU second: on a machine shared with other work the wall-clock
 * figure swings with the load, the CPU figure much less.
 *
 * What it does not measure: hyperswarm (the two stores replicate over an in-process stream) and a blind site
 * (it only stores and serves blocks, which encryption does not change).
 *
 * Run alone with `node --import tsx bench/encryption.ts [--json]`; `npm run bench` runs it after the end to
 * end figure of bench/run.ts.
 */
import Database from '../adapters/sqlite/better-sqlite3.ts'
import path from 'node:path'
import { pathToFileURL } from 'node:url'
import crypto from 'hypercore-crypto'
import { tmpDir } from '../test/helpers/db.ts'
import { startPipeline } from '../test/helpers/pipeline.ts'

export interface EncryptionBenchOptions {
  say?: (line: string) => void
  rows?: number
  runs?: number
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.floor(s.length / 2)]
}

/** One end to end run: `rows` in one transaction, until the replica has applied them all; rows/s, rows/CPU s. */
async function once(dir: string, rows: number, dataKey: Uint8Array | undefined): Promise<[number, number]> {
  const file = path.join(dir, 'origin.db')
  const db = new Database(file)
  db.pragma('journal_mode = WAL')
  db.pragma('synchronous = FULL')
  db.exec('CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT, amount REAL, note TEXT)')
  const p = await startPipeline(dir, file, { pollMs: 1, dataKey })
  try {
    const ins = db.prepare('INSERT INTO orders (customer, amount, note) VALUES (?, ?, ?)')
    const t0 = process.hrtime.bigint()
    const c0 = process.cpuUsage()
    db.transaction(() => {
      for (let i = 0; i < rows; i++) ins.run(`customer ${i % 5000}`, i * 0.25, 'x'.repeat(40))
    })()
    await p.settle()
    const cpu = process.cpuUsage(c0)
    return [rows / (Number(process.hrtime.bigint() - t0) / 1e9), rows / ((cpu.user + cpu.system) / 1e6)]
  } finally {
    await p.close()
    db.close()
  }
}

export async function encryptionBench(opts: EncryptionBenchOptions = {}): Promise<Record<string, number>> {
  const say = opts.say ?? (() => {})
  const rows = opts.rows ?? 200_000
  const runs = opts.runs ?? 5
  const plain: number[] = []
  const sealed: number[] = []
  const plainCpu: number[] = []
  const sealedCpu: number[] = []
  for (let r = 0; r < runs; r++) {
    for (const encrypted of r % 2 === 0 ? [false, true] : [true, false]) {
      const { dir, cleanup } = tmpDir('mesh-bench-enc-')
      try {
        const [rate, perCpu] = await once(dir, rows, encrypted ? crypto.randomBytes(32) : undefined)
        ;(encrypted ? sealed : plain).push(rate)
        ;(encrypted ? sealedCpu : plainCpu).push(perCpu)
      } finally {
        cleanup()
      }
    }
  }
  const a = median(plain)
  const b = median(sealed)
  const cost = (a - b) / a
  const ac = median(plainCpu)
  const bc = median(sealedCpu)
  const cpuCost = (ac - bc) / ac
  say(
    `encrypted logs, ${rows} rows in one transaction, commit -> applied, median of ${runs}: plaintext ` +
      `${Math.round(a)} rows/s, encrypted ${Math.round(b)} rows/s, ratio ${(b / a).toFixed(3)} ` +
      `(cost ${(cost * 100).toFixed(1)}%; aim <= 10%)`
  )
  say(
    `  per CPU second (this process: capture, log, replication, apply): plaintext ${Math.round(ac)} rows, ` +
      `encrypted ${Math.round(bc)} rows, ratio ${(bc / ac).toFixed(3)} (cost ${(cpuCost * 100).toFixed(1)}%)`
  )
  return {
    endToEndPlainRowsPerSec: Math.round(a),
    endToEndEncryptedRowsPerSec: Math.round(b),
    encryptionCost: +cost.toFixed(3),
    encryptionCpuCost: +cpuCost.toFixed(3)
  }
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const json = process.argv.includes('--json')
  const r = await encryptionBench({ say: json ? undefined : (s) => process.stdout.write(`${s}\n`) })
  if (json) process.stdout.write(`${JSON.stringify(r)}\n`)
}
