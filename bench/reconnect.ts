/**
 * Reconnection after a long outage, with the real defaults (issue 16, item 4): how long after a site comes back
 * until it is connected to the other site again, and until it holds what was written meanwhile.
 *
 *   link   site B's network link (a veth pair) is down for `--reconnect-minutes` (default 10: long enough for
 *          hyperswarm's own backoff to reach its 10-minute step), then up again.
 *   stop   site B's node is SIGSTOPped for as long, then SIGCONTed (a PC that slept).
 *
 * Setup (needs root, as on CI): four network namespaces, one per site (A, B), one for the DHT test network,
 * and a hub with a bridge that joins them, each by a veth pair; every site link is a slow one, `tc ... tbf`
 * at `--reconnect-kbit` (default 512 kbit/s) each way. Nothing is routed through the machine's own network
 * (no ip_forward); the bench talks to each node over its local socket (a file, not in any namespace). netem is
 * missing on these machines, so there is no added latency or loss: only the rate limit. Nodes run as
 * `mesh start` processes with the config `mesh init`/`mesh join` write: the default retry steps; they reach
 * each other directly (MESH_DIRECT=1, see DIRECT). After each outage the bench prints what both nodes logged
 * about their connections (with --log-level debug), in seconds from the moment B came back.
 *
 * The aim: connected again within 30 s of coming back, every time. Run with `npm run bench -- --reconnect`,
 * or alone: `node --import tsx bench/reconnect.ts [--reconnect-minutes N] [--reconnect-only link|stop]`.
 */
import fs from 'node:fs'
import path from 'node:path'
import { pathToFileURL } from 'node:url'
import Database from '../adapters/sqlite/better-sqlite3.ts'
import { askNode, type SiteStatus } from '../node/index.ts'
import { ensureBuilt } from '../test/helpers/build.ts'
import { tmpDir } from '../test/helpers/db.ts'
import { MESH, Net, NsProc, meshIn, sleep, startDht } from './netns.ts'

export interface ReconnectBenchOptions {
  say?: (line: string) => void
  /** How long each outage lasts. */
  minutes?: number
  /** The rate of every site's link, each way. */
  kbit?: number
  /** Run one of the two outages only. */
  only?: 'link' | 'stop'
}

/** The node log messages about connections that the bench shows for each outage. */
const NOTEWORTHY =
  /^(connected|disconnected|cannot reach a member|network changed|this node was frozen|member reachable)/

async function status(dir: string): Promise<SiteStatus | null> {
  const r = (await askNode(dir, 'status').catch(() => null)) as { status: SiteStatus } | null
  return r?.status ?? null
}

async function connected(dir: string, other: string): Promise<boolean> {
  const s = await status(dir)
  return s?.members.some((m) => m.site === other && m.connected) ?? false
}

function count(file: string): number {
  try {
    const db = new Database(file, { readonly: true, fileMustExist: true })
    try {
      return db.prepare('SELECT count(*) FROM sales').pluck().get() as number
    } finally {
      db.close()
    }
  } catch {
    return -1
  }
}

export async function reconnectBench(opts: ReconnectBenchOptions = {}): Promise<Record<string, number>> {
  ensureBuilt()
  const say = opts.say ?? ((s: string) => process.stdout.write(`${s}\n`))
  const minutes = opts.minutes ?? 10
  const kbit = opts.kbit ?? 512
  const net = new Net('bm')
  const { dir, cleanup } = tmpDir('mesh-reconnect-')
  const procs: NsProc[] = []
  const out: Record<string, number> = {}
  // Interrupted: the namespaces and the nodes in them must not outlive the bench.
  const onSignal = () => {
    for (const p of procs) {
      p.signal('SIGCONT')
      p.signal('SIGKILL')
    }
    net.down()
    cleanup()
    process.exit(130)
  }
  process.once('SIGINT', onSignal)
  process.once('SIGTERM', onSignal)
  try {
    net.up(kbit)
    const bootstrap = await startDht(net.ns.d, net.addr.d, procs)
    const site = (k: 'a' | 'b') => ({ dir: path.join(dir, `shop-${k}`), db: path.join(dir, `shop-${k}.db`) })
    const A = site('a')
    const B = site('b')
    for (const s of [A, B]) {
      const db = new Database(s.db)
      db.pragma('journal_mode = WAL')
      db.exec('CREATE TABLE sales (id INTEGER PRIMARY KEY, at TEXT NOT NULL, item TEXT, cents INTEGER)')
      db.close()
    }
    meshIn(net.ns.a, ['init', '--dir', A.dir, '--site', 'shop-a', '--sqlite', A.db, '--bootstrap', bootstrap])
    const start = async (k: 'a' | 'b', d: string) => {
      const p = new NsProc(net.ns[k], [MESH, 'start', '--dir', d, '--log-json', '--log-level', 'debug'])
      procs.push(p)
      await p.line(/"msg":"ready"/, 120_000)
      return p
    }
    const nodeA = await start('a', A.dir)
    const code = meshIn(net.ns.a, ['invite', '--dir', A.dir]).trim().split('\n').pop()!
    const joinArgs = ['--dir', B.dir, '--site', 'shop-b', '--sqlite', B.db, '--bootstrap', bootstrap]
    meshIn(net.ns.b, ['join', code, ...joinArgs, '--timeout', '120s'])
    const nodeB = await start('b', B.dir)
    const replicaAtB = () => {
      const f = fs.readdirSync(path.join(B.dir, 'replicas')).find((n) => n.startsWith('shop-a-') && n.endsWith('.db'))
      return f ? path.join(B.dir, 'replicas', f) : ''
    }
    const sell = (n: number) => {
      const db = new Database(A.db, { timeout: 5000 })
      const ins = db.prepare('INSERT INTO sales (at, item, cents) VALUES (?, ?, ?)')
      for (let i = 0; i < n; i++) ins.run(new Date().toISOString(), 'Espresso beans 1 kg', 1899)
      db.close()
    }
    const waitFor = async (what: string, cond: () => Promise<boolean> | boolean, ms: number) => {
      const end = Date.now() + ms
      while (!(await cond())) {
        if (Date.now() > end) throw new Error(`bench: ${what} did not happen within ${ms / 1000} s`)
        await sleep(250)
      }
    }
    const both = async () => (await connected(A.dir, 'shop-b')) && (await connected(B.dir, 'shop-a'))
    sell(10)
    await waitFor('the first connection', both, 180_000)
    await waitFor('the first rows at B', () => count(replicaAtB()) === count(A.db), 180_000)
    say(`reconnection after ${minutes} min away, default retry steps, links of ${kbit} kbit/s (aim: <= 30 s)`)

    const outage = async (label: string, key: string, cut: () => void, restore: () => void) => {
      cut()
      const until = Date.now() + minutes * 60_000
      // The shop keeps selling while B is away.
      while (Date.now() < until) {
        sell(1)
        await sleep(Math.min(15_000, until - Date.now()))
      }
      const t0 = Date.now()
      restore()
      await waitFor(`${label}: reconnection`, both, 15 * 60_000)
      const connectedS = (Date.now() - t0) / 1000
      await waitFor(`${label}: catching up`, () => count(replicaAtB()) === count(A.db), 15 * 60_000)
      const caughtUpS = (Date.now() - t0) / 1000
      say(
        `  ${label}: connected again ${connectedS.toFixed(1)} s after coming back, ` +
          `caught up after ${caughtUpS.toFixed(1)} s`
      )
      // What each node said about it, in seconds from the moment B came back.
      for (const [name, p] of [['A', nodeA] as const, ['B', nodeB] as const]) {
        for (const l of p.lines) {
          const m = /"time":(\d+).*"msg":"([^"]*)"/.exec(l)
          if (!m || !NOTEWORTHY.test(m[2])) continue
          if (Number(m[1]) < t0 - minutes * 60_000 - 5000) continue
          say(`    ${name} ${((Number(m[1]) - t0) / 1000).toFixed(1).padStart(7)} s  ${m[2]}`)
        }
      }
      out[`reconnect${key}Seconds`] = +connectedS.toFixed(1)
      out[`reconnect${key}CatchUpSeconds`] = +caughtUpS.toFixed(1)
    }
    if (opts.only !== 'stop')
      await outage(
        `B's link down ${minutes} min`,
        'Link',
        () => net.link('b', false),
        () => net.link('b', true)
      )
    if (opts.only !== 'link')
      await outage(
        `B's node stopped (SIGSTOP) ${minutes} min`,
        'Stop',
        () => nodeB.signal('SIGSTOP'),
        () => nodeB.signal('SIGCONT')
      )
    const warned = nodeB.lines.filter((l) => /cannot reach a member/.test(l)).length
    say(`  B's log: ${warned} WARN line(s) "cannot reach a member" (one per outage it noticed)`)
    return out
  } finally {
    for (const p of procs.reverse()) await p.stop()
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
  const only = process.argv[process.argv.indexOf('--reconnect-only') + 1]
  await reconnectBench({
    minutes: arg('--reconnect-minutes'),
    kbit: arg('--reconnect-kbit'),
    only: only === 'link' || only === 'stop' ? only : undefined
  })
}
