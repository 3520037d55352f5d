/**
 * Bytes per row change (issue 16): the demo shop's workload (tools/demo/shop.ts, a point-of-sale application
 * writing its own SQLite file) over a day of sales, captured into a log with and without compression, and
 * replicated to a second corestore.
 *
 * Three figures per run, each divided by the number of row changes the log carries:
 *   rows   the changed rows themselves: their values in the log's value encoding (tag, varint integers,
 *          length-prefixed text), keys of deleted rows likewise; no entry framing. This is the anchor.
 *   log    the bytes appended to the origin's log (blocks as stored: framing, capture position, checksum).
 *   wire   the bytes the origin's replication stream sent to the replica for those blocks (hypercore's
 *          messages, Merkle proofs and signatures, inside Noise; without UDP, IP and UDX headers).
 *
 * Capture batching decides what compression can do. Without batching each block is compressed alone; with it
 * (compress "best"), a group's body is also compressed against a dictionary block that the log holds (format 3,
 * node/dictionary.ts: the last 16 KB of recent bodies, refreshed every 160 KB of them; the dictionary blocks are
 * counted in log and wire like every other block). "per sale" is a capture that keeps up with the till (one
 * unit per sale, as `mesh start` does with its default 50 ms poll);
 * "with link.batchSeconds 60" (and 300) is the capture loop itself with that batching (issue 16 item 3), the
 * till selling at the pace of the demo shop's day as the issue counts it (DAY_SALES over TRADING_SECONDS), on
 * a clock 100 times faster with the interval shortened as much, so each group holds a minute's sales;
 * "per 20 sales" and "per day" are a capture that reads changes that seldom by hand, or a node started after
 * the till's day (it reads the whole backlog at once). Nothing is asserted; run alone with
 * `node --import tsx bench/bytes.ts [--sales N] [--only Sale,Batch60,Batch300,Twenty,Day]`. The default is 1,000
 * sales (a bit over two hours of the shop's day); `--sales 7600 --only Batch60,Batch300` is the whole day of the
 * issue (about 25 minutes: the till sells on the bench's clock), which dictionaries favour: the first comes once
 * the log has 8 KB of bodies (about 6 one-minute groups), and each costs its block once per 160 KB of bodies.
 */
import Corestore from 'corestore'
import path from 'node:path'
import { Transform, pipeline } from 'node:stream'
import { pathToFileURL } from 'node:url'
import c from 'compact-encoding'
import { SqliteCapture } from '../adapters/index.ts'
import { DatasetLog } from '../node/index.ts'
import type { TableChanges } from '../protocol/index.ts'
import { value } from '../protocol/values.ts'
import { Shop } from '../tools/demo/shop.ts'
import { tmpDir } from '../test/helpers/db.ts'
import { captureLoop, openLog } from '../test/helpers/pipeline.ts'

export interface BytesBenchOptions {
  say?: (line: string) => void
  /** Sales (shop transactions) in the day. */
  sales?: number
  /** Only these cases (their keys: Sale, Batch60, Batch300, Twenty, Day); all by default. */
  only?: string[]
}

interface Figures {
  changes: number
  rows: number
  log: number
  wire: number
}

function rowsSize(changes: TableChanges[]): { n: number; bytes: number } {
  let n = 0
  const s = c.state()
  for (const t of changes) {
    for (const r of [...t.upserts, ...t.deletes]) {
      n++
      for (const v of r) value.preencode(s, v)
    }
  }
  return { n, bytes: s.end }
}

async function until(cond: () => boolean, what: string): Promise<void> {
  const end = Date.now() + 120_000
  while (!cond()) {
    if (Date.now() > end) throw new Error(`bench: timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 10))
  }
}

/**
 * How the day is captured: `per` sales, read by hand every that many sales; or `batchMs`, the capture loop
 * running on its own with that batching interval (link.batchSeconds) while the till sells every `everyMs`.
 */
type Capture = { per: number } | { batchMs: number; everyMs: number }

/** One day of `sales` at a shop seeded with customers and orders, captured as `how` says. */
async function day(compress: boolean, sales: number, how: Capture): Promise<Figures> {
  const { dir, cleanup } = tmpDir('mesh-bytes-')
  try {
    const file = path.join(dir, 'shop.db')
    const shop = new Shop(file, 16)
    shop.seed(300, 500)
    const { store: storeA, log } = await openLog(path.join(dir, 'a'))
    log.compress = compress
    const capture = new SqliteCapture({ path: file, ackIntervalMs: 0 })
    const loop = captureLoop(capture, log, { pollMs: 5, batchMs: 'batchMs' in how ? how.batchMs : 0 })
    await loop.start()
    const drain = async () => {
      while ((await loop.step()) > 0) {}
    }
    await drain()
    const storeB = new Corestore(path.join(dir, 'b'))
    const replica = await DatasetLog.byKey(storeB, path.join(dir, 'b'), log.key)
    let wire = 0
    const count = new Transform({
      transform(chunk: Buffer, _enc, done) {
        wire += chunk.byteLength
        done(null, chunk)
      }
    })
    const sa = storeA.replicate(true)
    const sb = storeB.replicate(false)
    pipeline(sa, count, sb, sa, () => {})
    replica.core.download({ start: 0, end: -1 })
    // The day starts with the replica holding the shop's history (the snapshot), as after `mesh start`.
    await until(() => replica.core.contiguousLength === log.length && log.length > 0, 'the snapshot')
    const start = log.length
    const wireAtStart = wire
    if ('per' in how) {
      for (let i = 1; i <= sales; i++) {
        shop.step()
        if (i % how.per === 0) await drain()
      }
      await drain()
    } else {
      // The till sells at its pace, on its own clock; the loop groups what it finds.
      const t0 = Date.now()
      for (let i = 1; i <= sales; i++) {
        shop.step()
        const wait = t0 + i * how.everyMs - Date.now()
        if (wait > 0) await new Promise((r) => setTimeout(r, wait))
      }
      // Stopping sends the group that waits.
      await loop.stop()
    }
    await until(() => replica.core.contiguousLength === log.length, 'the day to replicate')
    const f: Figures = { changes: 0, rows: 0, log: 0, wire: wire - wireAtStart }
    for (let i = start; i < log.length; i++) f.log += ((await log.core.get(i)) as Buffer).byteLength
    for await (const { entry } of log.entries(start, log.length)) {
      if (entry.kind !== 'transaction') continue
      const r = rowsSize(entry.changes)
      f.changes += r.n
      f.rows += r.bytes
    }
    await loop.stop()
    await capture.close()
    shop.close()
    sa.destroy()
    sb.destroy()
    await storeA.close()
    await storeB.close()
    return f
  } finally {
    cleanup()
  }
}

/** The demo shop's day as the issue counts it: about 20,000 row changes (2.6 per sale) over 10 hours of trading. */
export const DAY_SALES = 7600
export const TRADING_SECONDS = 10 * 3600

export async function bytesBench(opts: BytesBenchOptions = {}): Promise<Record<string, number>> {
  const say = opts.say ?? ((s: string) => process.stdout.write(`${s}\n`))
  const sales = opts.sales ?? 1000
  const out: Record<string, number> = {}
  // link.batchSeconds 60 at the day's pace: a group holds the sales of a minute. The bench's clock runs
  // `speed` times faster (a minute's group every 600 ms), so the loop groups as it would at the shop.
  const speed = 100
  const batchMs = 60_000 / speed
  const everyMs = (1000 * TRADING_SECONDS) / DAY_SALES / speed
  const perGroup = (60 * DAY_SALES) / TRADING_SECONDS
  say(`bytes per row change, the demo shop's day of ${sales} sales (anchor: the rows themselves; aim <= 0.5x)`)
  for (const [label, how, key] of [
    ['per sale (batching off)', { per: 1 }, 'Sale'],
    [
      `with link.batchSeconds 60 (${perGroup.toFixed(1)} sales a minute; clock x${speed})`,
      { batchMs, everyMs },
      'Batch60'
    ],
    [
      `with link.batchSeconds 300 (${(5 * perGroup).toFixed(0)} sales in 5 minutes; clock x${speed})`,
      { batchMs: 5 * batchMs, everyMs },
      'Batch300'
    ],
    ['per 20 sales', { per: 20 }, 'Twenty'],
    ['per day', { per: sales }, 'Day']
  ] as const) {
    if (opts.only && !opts.only.includes(key)) continue
    const plain = await day(false, sales, how)
    const packed = await day(true, sales, how)
    const r = (x: number, f: Figures) => `${(x / f.changes).toFixed(1)} B (${(x / f.rows).toFixed(2)}x)`
    say(
      `  capture ${label}: ${packed.changes} row changes, rows ${(packed.rows / packed.changes).toFixed(1)} B; ` +
        `log plain ${r(plain.log, plain)}, compressed ${r(packed.log, packed)}; ` +
        `wire plain ${r(plain.wire, plain)}, compressed ${r(packed.wire, packed)}`
    )
    out[`bytesWireRatio${key}`] = +(packed.wire / packed.rows).toFixed(3)
    out[`bytesWirePlainRatio${key}`] = +(plain.wire / plain.rows).toFixed(3)
    out[`bytesLogRatio${key}`] = +(packed.log / packed.rows).toFixed(3)
    out[`bytesLogPlainRatio${key}`] = +(plain.log / plain.rows).toFixed(3)
    if (key === 'Sale' || key === 'Batch60' || key === 'Batch300') {
      const ratio = packed.wire / packed.rows
      // The aim is over a whole day: dictionaries pay for themselves over it, so a shorter run is no verdict.
      const verdict =
        sales >= DAY_SALES
          ? ratio <= 0.5
            ? 'met'
            : 'MISSED'
          : `no verdict: ${sales} of the day's ${DAY_SALES} sales; \`--sales ${DAY_SALES} --only ${key}\` for it`
      say(`    on the wire, compressed: ${ratio.toFixed(3)}x the rows (aim <= 0.5x over a day: ${verdict})`)
    }
  }
  return out
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const sales = process.argv.indexOf('--sales')
  const only = process.argv.indexOf('--only')
  await bytesBench({
    sales: sales > 0 ? Number(process.argv[sales + 1]) : undefined,
    only: only > 0 ? process.argv[only + 1].split(',') : undefined
  })
}
