/**
 * The bandwidth budget over a real slow link (issue 16, item 2): a shop on a 256 kbit/s line, the mesh capped
 * at 128 kbit/s (`--up-kbps 128 --down-kbps 128` at both sites), a 5 MB catch-up from site A to site B, and the
 * shop's till (a small request/response over TCP, bench/budget-till.ts) on the same line meanwhile.
 *
 * Setup (needs root): two network namespaces `bmb<pid>a` and `bmb<pid>b` joined by one veth pair, with
 * `tc ... tbf rate 256kbit` on both ends (netem is missing on these machines: no added delay). A's namespace
 * also runs the DHT test network; the nodes are `mesh start` processes (MESH_DIRECT=1). The till's server is in
 * A's namespace, its client in B's: the answers travel A to B, the way the catch-up does.
 *
 * What is measured: the bytes A's end of the line sent (the tbf's own count, so every header is in it), every
 * second; minus the till's answers (each 100 bytes and 66 of TCP/IP/Ethernet headers; the till's pure ACKs, if
 * any, stay counted as mesh traffic, so the mesh figure errs high). The aims: in every 10-second window of the
 * catch-up the mesh's rate is at most 1.1x the cap; the till's p95 latency stays under 300 ms.
 * Then, when the line drops packets (slower than the budget, tbf with a tiny queue), another 512 KB still
 * arrives byte-exact (hypercore verifies every block), how long until `mesh status` at A says LOSSY_LINK and,
 * once the line is mended, until it clears; and when the line collapses (a twentieth of the budget), how long until
 * `mesh status` at A warns of it.
 *
 * Run with `npm run bench -- --budget` (last; about 10 minutes, then bench/budget-split.ts), or alone:
 * `node --import tsx bench/budget.ts [--budget-mb 5] [--budget-link 256] [--budget-cap 128]`.
 */
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { pathToFileURL } from 'node:url'
import Database from '../adapters/sqlite/better-sqlite3.ts'
import { askNode, type SiteStatus } from '../node/index.ts'
import { tmpDir } from '../test/helpers/db.ts'
import { MESH, NsProc, meshIn, ROOT, SlowLine, sleep, startDht } from './netns.ts'

const TILL = path.join(ROOT, 'bench', 'budget-till.ts')
/** One till answer on the wire: 100 bytes and the TCP/IP/Ethernet headers (with timestamps). */
const TILL_WIRE = 100 + 66
const ROW = 16 * 1024

export interface BudgetBenchOptions {
  say?: (line: string) => void
  /** The catch-up, in MB of random (incompressible) rows. */
  mb?: number
  /** The line's rate, and the mesh's cap, kbit/s. */
  linkKbit?: number
  capKbit?: number
}

async function status(dir: string): Promise<SiteStatus | null> {
  const r = (await askNode(dir, 'status').catch(() => null)) as { status: SiteStatus } | null
  return r?.status ?? null
}

function rows(file: string): number {
  try {
    const db = new Database(file, { readonly: true, fileMustExist: true })
    try {
      return db.prepare('SELECT count(*) FROM photos').pluck().get() as number
    } finally {
      db.close()
    }
  } catch {
    return -1
  }
}

function digest(file: string): string {
  const db = new Database(file, { readonly: true, fileMustExist: true })
  try {
    const h = crypto.createHash('sha256')
    for (const r of db.prepare('SELECT id, img FROM photos ORDER BY id').iterate() as Iterable<{
      id: number
      img: Buffer
    }>) {
      h.update(String(r.id))
      h.update(r.img)
    }
    return h.digest('hex')
  } finally {
    db.close()
  }
}

function percentile(xs: number[], p: number): number {
  if (xs.length === 0) return Number.NaN
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]
}

export async function budgetBench(opts: BudgetBenchOptions = {}): Promise<Record<string, number>> {
  const say = opts.say ?? ((s: string) => process.stdout.write(`${s}\n`))
  const mb = opts.mb ?? 5
  const linkKbit = opts.linkKbit ?? 256
  const capKbit = opts.capKbit ?? 128
  const line = new SlowLine('bmb')
  const { dir, cleanup } = tmpDir('mesh-budget-')
  const procs: NsProc[] = []
  const out: Record<string, number> = {}
  const onSignal = () => {
    for (const p of procs) p.signal('SIGKILL')
    line.down()
    cleanup()
    process.exit(130)
  }
  process.once('SIGINT', onSignal)
  process.once('SIGTERM', onSignal)
  try {
    line.up(linkKbit)
    const bootstrap = await startDht(line.ns.a, line.addr.a, procs)
    const site = (k: 'a' | 'b') => ({ dir: path.join(dir, `shop-${k}`), db: path.join(dir, `shop-${k}.db`) })
    const A = site('a')
    const B = site('b')
    for (const s of [A, B]) {
      const db = new Database(s.db)
      db.pragma('journal_mode = WAL')
      db.exec('CREATE TABLE photos (id INTEGER PRIMARY KEY, img BLOB NOT NULL)')
      db.close()
    }
    const cap = ['--up-kbps', String(capKbit), '--down-kbps', String(capKbit)]
    meshIn(line.ns.a, ['init', '--dir', A.dir, '--site', 'shop-a', '--sqlite', A.db, '--bootstrap', bootstrap, ...cap])
    const start = async (k: 'a' | 'b', d: string) => {
      const p = new NsProc(line.ns[k], [MESH, 'start', '--dir', d, '--log-json'])
      procs.push(p)
      await p.line(/"msg":"ready"/, 120_000)
      return p
    }
    await start('a', A.dir)
    const code = meshIn(line.ns.a, ['invite', '--dir', A.dir]).trim().split('\n').pop()!
    const joinArgs = ['--dir', B.dir, '--site', 'shop-b', '--sqlite', B.db, '--bootstrap', bootstrap, ...cap]
    meshIn(line.ns.b, ['join', code, ...joinArgs, '--timeout', '120s'])
    await start('b', B.dir)
    const replicaAtB = () => {
      const f = fs.readdirSync(path.join(B.dir, 'replicas')).find((n) => n.startsWith('shop-a-') && n.endsWith('.db'))
      return f ? path.join(B.dir, 'replicas', f) : ''
    }
    const write = (bytes: number) => {
      const db = new Database(A.db, { timeout: 5000 })
      const ins = db.prepare('INSERT INTO photos (img) VALUES (?)')
      const n = Math.ceil(bytes / ROW)
      // Transactions of 8 rows (128 KB): a day of sales photos, not one huge unit.
      for (let i = 0; i < n; i += 8) {
        db.transaction(() => {
          for (let j = i; j < Math.min(n, i + 8); j++) ins.run(crypto.randomBytes(ROW))
        })()
      }
      db.close()
    }
    const waitFor = async (what: string, cond: () => Promise<boolean> | boolean, ms: number) => {
      const end = Date.now() + ms
      while (!(await cond())) {
        if (Date.now() > end) throw new Error(`bench: ${what} did not happen within ${ms / 1000} s`)
        await sleep(500)
      }
    }
    write(ROW)
    await waitFor('the first row at B', () => rows(replicaAtB()) === rows(A.db), 180_000)

    // The till, from B's namespace to a server in A's.
    const server = new NsProc(line.ns.a, ['--import', 'tsx', TILL, 'server', line.addr.a, '7070'])
    procs.push(server)
    await server.line(/^listening/, 30_000)
    const till = new NsProc(line.ns.b, ['--import', 'tsx', TILL, 'client', line.addr.a, '7070'])
    procs.push(till)
    const answers = () =>
      till.lines
        .filter((l) => l.startsWith('r '))
        .map((l) => {
          const [, at, ms] = l.split(' ')
          return { at: Number(at), ms: Number(ms) }
        })
    await sleep(10_000)
    const idle = answers().map((a) => a.ms)

    say(
      `bandwidth budget: a ${linkKbit} kbit/s line, the mesh capped at ${capKbit} kbit/s, a ${mb} MB catch-up ` +
        'with the till on the same line'
    )
    // Samples of A's end of the line, every second, through the catch-up.
    const samples: Array<{ at: number; bytes: number }> = []
    let sampling = true
    const sampler = (async () => {
      while (sampling) {
        samples.push({ at: Date.now(), bytes: line.sent('a').bytes })
        await sleep(1000)
      }
    })()
    const ideal = (mb * 1024 * 1024 * 8) / (capKbit * 1000)
    const t0 = Date.now()
    write(mb * 1024 * 1024)
    const target = rows(A.db)
    // shop-a's estimate of shop-b's catch-up, early (a tenth of the way by time as the cap allows it, once the
    // 10-second rate has settled) and halfway; set against how long it really took from then.
    const marks = [0.1, 0.5]
    const estimates: Array<{ mark: number; at: number; seconds: number | null; lagBytes: number | null }> = []
    await waitFor(
      'the catch-up',
      async () => {
        const have = rows(replicaAtB())
        const mark = marks[estimates.length]
        if (mark !== undefined && Date.now() - t0 >= ideal * 1000 * mark) {
          const s = await status(A.dir)
          const p = s?.traffic?.peers.find((x) => x.site === 'shop-b')
          estimates.push({ mark, at: Date.now(), seconds: p?.catchUpSeconds ?? null, lagBytes: p?.lagBytes ?? null })
        }
        return have === target
      },
      30 * 60_000
    )
    const t1 = Date.now()
    sampling = false
    await sampler
    const tillAnswers = answers().filter((a) => a.at >= t0 && a.at <= t1)
    // Every 10-second window, one second apart.
    let worst = 0
    let windows = 0
    const rates: Array<{ at: number; kbit: number }> = []
    for (let i = 0; i + 10 < samples.length; i++) {
      const from = samples[i]
      const to = samples[i + 10]
      const tillBytes = tillAnswers.filter((a) => a.at > from.at && a.at <= to.at).length * TILL_WIRE
      const kbit = ((to.bytes - from.bytes - tillBytes) * 8) / ((to.at - from.at) / 1000) / 1000
      worst = Math.max(worst, kbit)
      rates.push({ at: (to.at - t0) / 1000, kbit })
      windows++
    }
    const lat = tillAnswers.map((a) => a.ms)
    const catchUpS = (t1 - t0) / 1000
    const sa = await status(A.dir)
    const peer = sa?.traffic?.peers.find((x) => x.site === 'shop-b')
    say(
      `  mesh rate, worst 10-second window of ${windows}: ${worst.toFixed(1)} kbit/s ` +
        `(aim: <= ${(capKbit * 1.1).toFixed(1)}, 1.1x the cap) ${worst <= capKbit * 1.1 ? 'MET' : 'MISSED'}`
    )
    say(
      `  till latency during the catch-up: p50 ${percentile(lat, 50)} ms, p95 ${percentile(lat, 95)} ms, ` +
        `max ${Math.max(...lat)} ms over ${lat.length} requests (aim: p95 < 300 ms) ` +
        `${percentile(lat, 95) < 300 ? 'MET' : 'MISSED'}; idle line: p95 ${percentile(idle, 95)} ms`
    )
    say(`  catch-up of ${mb} MB: ${catchUpS.toFixed(0)} s (the cap alone allows ${ideal.toFixed(0)} s)`)
    for (const e of estimates) {
      const took = (t1 - e.at) / 1000
      say(
        `  at ${((e.at - t0) / 1000).toFixed(0)} s (${e.mark * 100}% of the cap's time) shop-a's status estimated ` +
          `${e.seconds ?? '-'} s to go (shop-b ${((e.lagBytes ?? 0) / 1024 / 1024).toFixed(2)} MB behind in bytes ` +
          `applied); it took ${took.toFixed(0)} s` +
          (e.seconds ? ` (estimate / real: ${(e.seconds / took).toFixed(2)})` : '')
      )
      out[`budgetEstimate${e.mark * 100}Ratio`] = e.seconds ? +(e.seconds / took).toFixed(2) : -1
    }
    const over = rates.filter((r) => r.kbit > capKbit * 1.1)
    say(
      `  10-second windows: median ${percentile(
        rates.map((r) => r.kbit),
        50
      ).toFixed(1)} kbit/s, ${over.length} over the aim` +
        (over.length ? ` (ending at ${over.map((r) => `${r.at.toFixed(0)} s`).join(', ')})` : '')
    )
    if (peer?.wire) {
      say(
        `  UDX to shop-b: ${(peer.wire.bytes / 1024 / 1024).toFixed(2)} MB in ${peer.wire.packets} packets, ` +
          `${peer.wire.retransmits} sent again; the stream's own bytes: ` +
          `${(peer.sent.today / 1024 / 1024).toFixed(2)} MB`
      )
    }
    if (peer) {
      say(
        `  shop-a's status for shop-b: sent ${(peer.sent.today / 1024 / 1024).toFixed(2)} MB today, ` +
          `${(peer.sent.lastHour / 1024 / 1024).toFixed(2)} MB in the last hour, received ` +
          `${(peer.received.today / 1024).toFixed(0)} KB`
      )
    }
    out.budgetWorstWindowKbit = +worst.toFixed(1)
    out.budgetCapKbit = capKbit
    out.budgetTillP95Ms = percentile(lat, 95)
    out.budgetTillP50Ms = percentile(lat, 50)
    out.budgetCatchUpSeconds = +catchUpS.toFixed(1)

    // A line that drops packets: slower than the budget (three eighths of it), with a tbf queue of a few ms, so
    // that UDX's congestion control meets losses. Nothing corrupt may be applied.
    const lossyKbit = Math.round((capKbit * 3) / 8)
    line.shape('a', lossyKbit, '2kb', '5ms', 'change')
    const dropped0 = line.sent('a').dropped
    const t2 = Date.now()
    write(512 * 1024)
    const lossTarget = rows(A.db)
    // Meanwhile, shop-a's status: when it first says LOSSY_LINK, and the worst share of packets sent again.
    const lossy = (s: SiteStatus | null) => s?.reasons.some((r) => r.text.startsWith('LOSSY_LINK:')) ?? false
    let lossyAfter = null as number | null
    let worstShare = 0
    await waitFor(
      'the catch-up over a lossy line',
      async () => {
        const s = await status(A.dir)
        const l = s?.traffic?.peers.find((x) => x.site === 'shop-b')?.loss
        if (l && l.packets > 0) worstShare = Math.max(worstShare, l.resent / l.packets)
        if (lossyAfter === null && lossy(s)) lossyAfter = (Date.now() - t2) / 1000
        return rows(replicaAtB()) === lossTarget
      },
      30 * 60_000
    )
    const same = digest(A.db) === digest(replicaAtB())
    const dropped = line.sent('a').dropped - dropped0
    say(
      `  a line that drops packets (${lossyKbit} kbit/s, a tbf queue of 5 ms; ${dropped} packets dropped): ` +
        `512 KB in ${((Date.now() - t2) / 1000).toFixed(0)} s, the copy ${same ? 'byte-exact' : 'DIFFERS'}; ` +
        (lossyAfter === null ? 'NO LOSSY_LINK WARN' : `LOSSY_LINK at shop-a after ${lossyAfter.toFixed(0)} s`) +
        `, at worst ${(worstShare * 100).toFixed(0)}% of the last minute's packets sent again`
    )
    out.budgetLossyDropped = dropped
    out.budgetLossyExact = same ? 1 : 0
    out.budgetLossyWarnSeconds = lossyAfter ?? -1
    // The line mended: how long until the WARN clears (a minute of figures rolls over).
    line.shape('a', linkKbit, '4kb', '400ms', 'change')
    const t2b = Date.now()
    let clearedAfter: number | null = null
    while (Date.now() - t2b < 180_000 && clearedAfter === null) {
      if (!lossy(await status(A.dir))) clearedAfter = (Date.now() - t2b) / 1000
      else await sleep(1000)
    }
    say(
      '  the line mended: ' +
        (clearedAfter === null
          ? 'LOSSY_LINK still up after 180 s'
          : `LOSSY_LINK cleared after ${clearedAfter.toFixed(0)} s`)
    )
    out.budgetLossyClearSeconds = clearedAfter ?? -1

    // A line that collapsed: a twentieth of the budget. Status should say so (a WARN) within a minute or so.
    const deadKbit = Math.max(2, Math.round(capKbit / 20))
    line.shape('a', deadKbit, '2kb', '50ms', 'change')
    const t3 = Date.now()
    write(256 * 1024)
    const deadTarget = rows(A.db)
    // Either WARN: the collapsed rate (the node's own queue) or LOSSY_LINK (UDX's packets sent again).
    let warnedAfter: number | null = null
    let warnedWith = ''
    while (Date.now() - t3 < 120_000 && warnedAfter === null) {
      const st = await status(A.dir)
      const r = st?.reasons.find((x) => /traffic to shop-b moves at|^LOSSY_LINK: the link to shop-b/.test(x.text))
      if (r) {
        warnedAfter = (Date.now() - t3) / 1000
        warnedWith = r.text.startsWith('LOSSY_LINK') ? 'LOSSY_LINK' : 'the collapsed rate'
      } else await sleep(2000)
    }
    line.shape('a', linkKbit, '4kb', '400ms', 'change')
    await waitFor('the catch-up once the line is back', () => rows(replicaAtB()) === deadTarget, 30 * 60_000)
    const sameAfter = digest(A.db) === digest(replicaAtB())
    say(
      `  a line that collapsed (${deadKbit} kbit/s): ` +
        (warnedAfter === null
          ? 'NO WARN in status within 120 s'
          : `a WARN in status after ${warnedAfter.toFixed(0)} s (${warnedWith})`) +
        `; once it was back, the copy ${sameAfter ? 'byte-exact' : 'DIFFERS'}`
    )
    out.budgetCollapseWarnSeconds = warnedAfter ?? -1
    return out
  } finally {
    for (const p of procs.reverse()) await p.stop()
    line.down()
    cleanup()
    process.removeListener('SIGINT', onSignal)
    process.removeListener('SIGTERM', onSignal)
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const arg = (name: string) => {
    const i = process.argv.indexOf(name)
    return i > 0 ? Number(process.argv[i + 1]) : undefined
  }
  await budgetBench({ mb: arg('--budget-mb'), linkKbit: arg('--budget-link'), capKbit: arg('--budget-cap') })
}
