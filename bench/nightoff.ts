/**
 * A night off over a 64 kbit/s link (issue 16): site B's PC was off while shop A sold a day (about 20,000 row
 * changes, the demo shop's workload, tools/demo/shop.ts); B comes back. How long until B holds the day, against
 * the ideal: the day's log bytes divided by the link's rate. Aim: at most 1.3x the ideal.
 *
 * Setup (needs root): network namespaces joined by veth pairs (bench/netns.ts, prefix `bmn`), each site's link
 * limited with `tc ... tbf` to `--nightoff-kbit` (default 64) each way; nodes run as `mesh start` processes.
 * A is set up with `mesh init --batch-seconds` (default 60, `--nightoff-batch N`; 0 for none). The day runs on a
 * faster clock (`speed`, default 300: 10 hours of trading in 2 minutes, the batching interval divided by as
 * much), so the log holds the units a real day would. The clock starts when B is connected again (reconnecting
 * is bench/reconnect.ts's business). Also shown: the bytes and packets the link carried toward B (tc's counter:
 * IP, UDP, hypercore's messages and proofs) against the log's, and when B's copy had applied all of it; what
 * each tbf dropped (toward B at A's end and at the hub's, toward A likewise); and what UDX says each site sent
 * the other on the connection, packets sent again included (from `mesh status`, the peer's `wire` figures).
 *
 * Run with `npm run bench -- --nightoff`, or alone: `node --import tsx bench/nightoff.ts [--nightoff-kbit N]
 * [--nightoff-batch N] [--nightoff-sales N] [--nightoff-budget KBIT]`. `npm run bench` runs it twice: without a
 * budget, and with the budget set to the line's rate.
 */
import { execFileSync } from 'node:child_process'
import path from 'node:path'
import { pathToFileURL } from 'node:url'
import { askNode, type SiteStatus } from '../node/index.ts'
import { tmpDir } from '../test/helpers/db.ts'
import { Shop } from '../tools/demo/shop.ts'
import { DAY_SALES, TRADING_SECONDS } from './bytes.ts'
import { MESH, Net, NsProc, meshIn, sleep, startDht } from './netns.ts'

export interface NightOffBenchOptions {
  say?: (line: string) => void
  /** Each site's link, each way. */
  kbit?: number
  /** A's link.batchSeconds (on the day's clock). */
  batchSeconds?: number
  /** Sales in the day (default DAY_SALES, about 20,000 row changes). */
  sales?: number
  /** How much faster than a real day the day runs. */
  speed?: number
  /**
   * Both sites' bandwidth budget, link.upKbps and link.downKbps (kbit/s); none by default. A shop on a slow line
   * sets it to the line's rate: the node then paces what it sends and joins small messages into full packets.
   */
  budget?: number
}

async function status(dir: string): Promise<SiteStatus | null> {
  const r = (await askNode(dir, 'status').catch(() => null)) as { status: SiteStatus } | null
  return r?.status ?? null
}

/** What the qdisc on `dev` in namespace `ns` has sent (bytes, packets) and dropped (packets) so far. */
function sent(ns: string, dev: string): { bytes: number; packets: number; dropped: number } {
  const text = execFileSync('ip', ['netns', 'exec', ns, 'tc', '-s', 'qdisc', 'show', 'dev', dev], { encoding: 'utf8' })
  const m = /Sent (\d+) bytes (\d+) pkt \(dropped (\d+)/.exec(text)
  return { bytes: Number(m?.[1] ?? 0), packets: Number(m?.[2] ?? 0), dropped: Number(m?.[3] ?? 0) }
}

/** What UDX says a site sent to the peer `site` on the open connection (null when it does not tell). */
async function wireTo(dir: string, site: string) {
  return (await status(dir))?.traffic?.peers.find((p) => p.site === site)?.wire ?? null
}

export async function nightOffBench(opts: NightOffBenchOptions = {}): Promise<Record<string, number>> {
  const say = opts.say ?? ((s: string) => process.stdout.write(`${s}\n`))
  const kbit = opts.kbit ?? 64
  const batchSeconds = opts.batchSeconds ?? 60
  const sales = opts.sales ?? DAY_SALES
  const speed = opts.speed ?? 300
  const budget = opts.budget ? ['--up-kbps', String(opts.budget), '--down-kbps', String(opts.budget)] : []
  const net = new Net('bmn')
  const { dir, cleanup } = tmpDir('mesh-nightoff-')
  const procs: NsProc[] = []
  let shop: Shop | null = null
  const onSignal = () => {
    for (const p of procs) p.signal('SIGKILL')
    net.down()
    cleanup()
    process.exit(130)
  }
  process.once('SIGINT', onSignal)
  process.once('SIGTERM', onSignal)
  const waitFor = async (what: string, cond: () => Promise<boolean> | boolean, ms: number, every = 250) => {
    const end = Date.now() + ms
    while (!(await cond())) {
      if (Date.now() > end) throw new Error(`bench: ${what} did not happen within ${ms / 1000} s`)
      await sleep(every)
    }
  }
  try {
    net.up(kbit)
    const bootstrap = await startDht(net.ns.d, net.addr.d, procs)
    const A = { dir: path.join(dir, 'shop-a'), db: path.join(dir, 'shop-a.db') }
    const B = { dir: path.join(dir, 'shop-b'), db: path.join(dir, 'shop-b.db') }
    const till = new Shop(A.db, 7)
    shop = till
    till.seed(100, 100)
    new Shop(B.db, 8).close()
    const batch = String(batchSeconds / speed)
    meshIn(net.ns.a, [
      ...['init', '--dir', A.dir, '--site', 'shop-a', '--sqlite', A.db],
      ...['--bootstrap', bootstrap, '--batch-seconds', batch],
      ...budget
    ])
    const start = async (k: 'a' | 'b', d: string) => {
      const p = new NsProc(net.ns[k], [MESH, 'start', '--dir', d, '--log-json'])
      procs.push(p)
      await p.line(/"msg":"ready"/, 120_000)
      return p
    }
    await start('a', A.dir)
    const code = meshIn(net.ns.a, ['invite', '--dir', A.dir]).trim().split('\n').pop()!
    const joinArgs = ['--dir', B.dir, '--site', 'shop-b', '--sqlite', B.db, '--bootstrap', bootstrap]
    meshIn(net.ns.b, ['join', code, ...joinArgs, '--timeout', '120s', ...budget])
    let nodeB = await start('b', B.dir)
    // A's dataset as B's status shows it: the log's length, and how far B holds and applied it.
    const atB = async () => {
      const d = (await status(B.dir))?.datasets.find((x) => x.originSite === 'shop-a')
      const h = d?.holders.find((x) => x.site === 'shop-b')
      return { length: d?.length ?? 0, downloaded: h?.downloaded ?? 0, applied: h?.applied ?? 0 }
    }
    const atA = async () => (await status(A.dir))?.datasets.find((x) => x.originSite === 'shop-a')
    const first = (await atA())!.length
    await waitFor('B holding the shop before the night', async () => (await atB()).applied >= first, 600_000)

    // B's PC goes off; A sells a day.
    await nodeB.stop()
    const before = (await atA())!
    const everyMs = (1000 * TRADING_SECONDS) / sales / speed
    const t0 = Date.now()
    for (let i = 1; i <= sales; i++) {
      till.step()
      const wait = t0 + i * everyMs - Date.now()
      if (wait > 0) await sleep(wait)
    }
    // Everything sold is in A's log: its capture holds nothing back.
    await waitFor(
      "A's log holding the day",
      async () => {
        const d = await atA()
        const o = d?.holders.find((x) => x.role === 'origin')
        return o?.captureLag?.bytes === 0
      },
      120_000
    )
    const day = (await atA())!
    const units = day.length - before.length
    const logBytes = day.bytes - before.bytes
    const changes = till.stats.inserts + till.stats.updates + till.stats.deletes
    say(
      `a night off over ${kbit} kbit/s: the day's ${sales} sales (${changes} row changes as the till counts them) ` +
        `at A with link.batchSeconds ${batchSeconds} are ${units} units, ${(logBytes / 1024).toFixed(0)} KB of log; ` +
        `budget ${opts.budget ? `${opts.budget} kbit/s each way at both sites` : 'none'}`
    )

    // B comes back.
    // Toward B: A's uplink (its own end), then the hub's end toward B; toward A (B's requests, acknowledgements)
    // likewise. Each tbf drops what waits in its queue longer than its latency.
    const links = () => ({
      aUp: sent(net.ns.a, `${net.p}a1`),
      toB: sent(net.hub, net.hubSide('b')),
      bUp: sent(net.ns.b, `${net.p}b1`),
      toA: sent(net.hub, net.hubSide('a'))
    })
    const l0 = links()
    nodeB = await start('b', B.dir)
    await waitFor(
      'B connected to A',
      async () => (await status(B.dir))?.members.some((m) => m.site === 'shop-a' && m.connected) ?? false,
      300_000,
      50
    )
    const c0 = Date.now()
    const dhtAtB = async () => (await status(B.dir))?.traffic?.dht?.received.today ?? 0
    const dht0 = await dhtAtB()
    await waitFor('B holding the day', async () => (await atB()).downloaded >= day.length, 3_600_000, 50)
    const heldS = (Date.now() - c0) / 1000
    await waitFor('B applying the day', async () => (await atB()).applied >= day.length, 3_600_000, 50)
    const appliedS = (Date.now() - c0) / 1000
    const l1 = links()
    const dhtIn = (await dhtAtB()) - dht0
    const wire = l1.toB.bytes - l0.toB.bytes
    const packets = l1.toB.packets - l0.toB.packets
    const dropped = (k: keyof typeof l0) => l1[k].dropped - l0[k].dropped
    const [aToB, bToA] = [await wireTo(A.dir, 'shop-b'), await wireTo(B.dir, 'shop-a')]
    const ideal = (logBytes * 8) / (kbit * 1000)
    const ratio = heldS / ideal
    say(
      `  caught up in ${heldS.toFixed(1)} s after connecting (applied ${appliedS.toFixed(1)} s); ideal ` +
        `${ideal.toFixed(1)} s (log bytes / link rate): ${ratio.toFixed(2)}x (aim <= 1.3x: ` +
        `${ratio <= 1.3 ? 'met' : 'MISSED'})`
    )
    say(
      `  the link carried ${(wire / 1024).toFixed(0)} KB toward B meanwhile, ${(wire / logBytes).toFixed(2)}x the ` +
        `log's bytes; at the link's rate that is ${((wire * 8) / (kbit * 1000)).toFixed(1)} s; ${packets} packets ` +
        `(${(wire / packets).toFixed(0)} bytes each), ${((wire - logBytes) / units).toFixed(0)} bytes a unit ` +
        `besides the log's; B's DHT received ${(dhtIn / 1024).toFixed(1)} KB of it (its own count)`
    )
    say(
      `  tbf dropped toward B ${dropped('aUp')} at A's end, ${dropped('toB')} at the hub's; toward A ` +
        `${dropped('bUp')} at B's end, ${dropped('toA')} at the hub's; toward A the link carried ` +
        `${((l1.toA.bytes - l0.toA.bytes) / 1024).toFixed(0)} KB in ${l1.toA.packets - l0.toA.packets} packets`
    )
    const udx = (w: typeof aToB) =>
      w ? `${(w.bytes / 1024).toFixed(0)} KB, ${w.packets} packets, ${w.retransmits} sent again` : 'unknown'
    say(`  UDX on the connection: A sent B ${udx(aToB)}; B sent A ${udx(bToA)}`)
    return {
      nightOffUnits: units,
      nightOffLogBytes: logBytes,
      nightOffWireBytes: wire,
      nightOffWirePackets: packets,
      nightOffDropped: dropped('aUp') + dropped('toB'),
      nightOffResent: aToB?.retransmits ?? -1,
      nightOffSeconds: +heldS.toFixed(1),
      nightOffAppliedSeconds: +appliedS.toFixed(1),
      nightOffIdealSeconds: +ideal.toFixed(1),
      nightOffRatio: +ratio.toFixed(3)
    }
  } finally {
    for (const p of procs.reverse()) await p.stop()
    shop?.close()
    net.down()
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
  await nightOffBench({
    kbit: arg('--nightoff-kbit'),
    batchSeconds: arg('--nightoff-batch'),
    sales: arg('--nightoff-sales'),
    budget: arg('--nightoff-budget')
  })
}
