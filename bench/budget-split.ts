/**
 * The budget's even split among busy peers (issue 16): one site capped at 128 kbit/s up on a 256 kbit/s line
 * serves two peers catching up at once; each peer's share of what the capped site sent while both were busy
 * (aim: each near half), and the total against the cap (aim: at most 1.1x).
 *
 * Setup (needs root): a hub namespace with a bridge and three site namespaces `bml<pid>s{a,b,c}` on it, each by
 * a veth pair; shop-a's link has `tc ... tbf rate 256kbit` at both ends, shop-b's and shop-c's are not limited
 * (the cap is shop-a's). shop-a's namespace also runs the DHT test network; the nodes are `mesh start`
 * processes (MESH_DIRECT=1). shop-b and shop-c have no budget, so what they get is shop-a's split alone; they may
 * also pass blocks to each other, which this does not count (only what shop-a sends).
 *
 * What is measured, over the time both were catching up (from the write until the first was done): the bytes
 * shop-a's status counted to each peer (the encrypted stream), and the bytes shop-a's end of the line sent (the
 * tbf's count, headers and all).
 *
 * Run with `npm run bench -- --budget` (after bench/budget.ts), or alone:
 * `node --import tsx bench/budget-split.ts [--split-mb 2]`.
 */
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { pathToFileURL } from 'node:url'
import Database from '../adapters/sqlite/better-sqlite3.ts'
import { askNode, type SiteStatus } from '../node/index.ts'
import { tmpDir } from '../test/helpers/db.ts'
import { inNs, ip, MESH, meshIn, NsProc, removeNamespaces, sleep, startDht } from './netns.ts'

const ROW = 16 * 1024
type Site = 'a' | 'b' | 'c'
const SITES: Site[] = ['a', 'b', 'c']

/** A hub and three sites; only shop-a's link is slow. `down()` removes it all. */
class Star {
  readonly p = `bml${process.pid % 100000}s`
  readonly hub = `${this.p}h`
  readonly ns = { a: `${this.p}a`, b: `${this.p}b`, c: `${this.p}c` }
  readonly addr = { a: '10.234.0.1', b: '10.234.0.2', c: '10.234.0.3' }
  private made: string[] = []

  up(kbit: number): void {
    for (const n of [this.hub, ...Object.values(this.ns)]) {
      ip('netns', 'add', n)
      this.made.push(n)
      ip('-n', n, 'link', 'set', 'lo', 'up')
    }
    ip('-n', this.hub, 'link', 'add', 'br0', 'type', 'bridge')
    ip('-n', this.hub, 'link', 'set', 'br0', 'up')
    for (const k of SITES) {
      ip('link', 'add', this.outer(k), 'type', 'veth', 'peer', 'name', this.inner(k))
      ip('link', 'set', this.outer(k), 'netns', this.hub)
      ip('link', 'set', this.inner(k), 'netns', this.ns[k])
      ip('-n', this.hub, 'link', 'set', this.outer(k), 'master', 'br0')
      ip('-n', this.hub, 'link', 'set', this.outer(k), 'up')
      ip('-n', this.ns[k], 'addr', 'add', `${this.addr[k]}/24`, 'dev', this.inner(k))
      ip('-n', this.ns[k], 'link', 'set', this.inner(k), 'up')
    }
    const tbf = ['root', 'tbf', 'rate', `${kbit}kbit`, 'burst', '4kb', 'latency', '400ms']
    inNs(this.ns.a, 'tc', ['qdisc', 'add', 'dev', this.inner('a'), ...tbf])
    inNs(this.hub, 'tc', ['qdisc', 'add', 'dev', this.outer('a'), ...tbf])
  }

  outer(k: Site): string {
    return `${this.p}${k}0`
  }

  inner(k: Site): string {
    return `${this.p}${k}1`
  }

  /** Bytes shop-a's end of the line has sent so far (the tbf's count). */
  sentByA(): number {
    const text = inNs(this.ns.a, 'tc', ['-s', 'qdisc', 'show', 'dev', this.inner('a')])
    return Number(/Sent (\d+) bytes/.exec(text)?.[1] ?? 0)
  }

  down(): void {
    removeNamespaces(this.made.reverse())
    this.made = []
  }
}

async function status(dir: string): Promise<SiteStatus | null> {
  const r = (await askNode(dir, 'status').catch(() => null)) as { status: SiteStatus } | null
  return r?.status ?? null
}

function rows(file: string | null): number {
  if (!file) return -1
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

export interface SplitBenchOptions {
  say?: (line: string) => void
  mb?: number
  linkKbit?: number
  capKbit?: number
}

export async function splitBench(opts: SplitBenchOptions = {}): Promise<Record<string, number>> {
  const say = opts.say ?? ((s: string) => process.stdout.write(`${s}\n`))
  const mb = opts.mb ?? 2
  const linkKbit = opts.linkKbit ?? 256
  const capKbit = opts.capKbit ?? 128
  const net = new Star()
  const { dir, cleanup } = tmpDir('mesh-split-')
  const procs: NsProc[] = []
  const out: Record<string, number> = {}
  const onSignal = () => {
    for (const p of procs) p.signal('SIGKILL')
    net.down()
    cleanup()
    process.exit(130)
  }
  process.once('SIGINT', onSignal)
  process.once('SIGTERM', onSignal)
  try {
    net.up(linkKbit)
    const bootstrap = await startDht(net.ns.a, net.addr.a, procs)
    const site = (k: Site) => ({ dir: path.join(dir, `shop-${k}`), db: path.join(dir, `shop-${k}.db`) })
    const S = { a: site('a'), b: site('b'), c: site('c') }
    for (const k of SITES) {
      const db = new Database(S[k].db)
      db.pragma('journal_mode = WAL')
      db.exec('CREATE TABLE photos (id INTEGER PRIMARY KEY, img BLOB NOT NULL)')
      db.close()
    }
    const cap = ['--up-kbps', String(capKbit), '--down-kbps', String(capKbit)]
    meshIn(net.ns.a, [
      'init',
      '--dir',
      S.a.dir,
      '--site',
      'shop-a',
      '--sqlite',
      S.a.db,
      '--bootstrap',
      bootstrap,
      ...cap
    ])
    const start = async (k: Site) => {
      const p = new NsProc(net.ns[k], [MESH, 'start', '--dir', S[k].dir, '--log-json'])
      procs.push(p)
      await p.line(/"msg":"ready"/, 120_000)
    }
    await start('a')
    for (const k of ['b', 'c'] as const) {
      const code = meshIn(net.ns.a, ['invite', '--dir', S.a.dir]).trim().split('\n').pop()!
      const args = ['--dir', S[k].dir, '--site', `shop-${k}`, '--sqlite', S[k].db, '--bootstrap', bootstrap]
      meshIn(net.ns[k], ['join', code, ...args, '--timeout', '120s'])
      await start(k)
    }
    const replica = (k: 'b' | 'c') => {
      const d = path.join(S[k].dir, 'replicas')
      const f = fs.existsSync(d) && fs.readdirSync(d).find((n) => n.startsWith('shop-a-') && n.endsWith('.db'))
      return f ? path.join(d, f) : null
    }
    const write = (bytes: number) => {
      const db = new Database(S.a.db, { timeout: 5000 })
      const ins = db.prepare('INSERT INTO photos (img) VALUES (?)')
      const n = Math.ceil(bytes / ROW)
      for (let i = 0; i < n; i += 8) {
        db.transaction(() => {
          for (let j = i; j < Math.min(n, i + 8); j++) ins.run(crypto.randomBytes(ROW))
        })()
      }
      db.close()
    }
    const waitFor = async (what: string, cond: () => boolean, ms: number) => {
      const end = Date.now() + ms
      while (!cond()) {
        if (Date.now() > end) throw new Error(`bench: ${what} did not happen within ${ms / 1000} s`)
        await sleep(500)
      }
    }
    write(ROW)
    const first = rows(S.a.db)
    await waitFor('the first row at both', () => rows(replica('b')) === first && rows(replica('c')) === first, 180_000)
    // Both peers connected: shop-a's split is among two.
    const end = Date.now() + 120_000
    for (;;) {
      const peers = (await status(S.a.dir))?.traffic?.peers ?? []
      if (peers.filter((p) => p.connected && p.upLimitBps === (capKbit * 1000) / 2).length === 2) break
      if (Date.now() > end) throw new Error('bench: shop-a did not split its budget between two peers in 120 s')
      await sleep(500)
    }

    const sentTo = (s: SiteStatus | null) => {
      const m = new Map<string, number>()
      for (const p of s?.traffic?.peers ?? []) m.set(p.site, p.sent.today)
      return m
    }
    say(
      `bandwidth budget, even split: shop-a on a ${linkKbit} kbit/s line capped at ${capKbit} kbit/s up, ` +
        `shop-b and shop-c catching up ${mb} MB from it at once`
    )
    const before = sentTo(await status(S.a.dir))
    const wire0 = net.sentByA()
    const t0 = Date.now()
    write(mb * 1024 * 1024)
    const target = rows(S.a.db)
    await waitFor(
      'the first peer caught up',
      () => rows(replica('b')) === target || rows(replica('c')) === target,
      30 * 60_000
    )
    const t1 = Date.now()
    const after = sentTo(await status(S.a.dir))
    const wire1 = net.sentByA()
    const firstDone = rows(replica('b')) === target ? 'shop-b' : 'shop-c'
    await waitFor('both caught up', () => rows(replica('b')) === target && rows(replica('c')) === target, 30 * 60_000)
    const t2 = Date.now()
    const secs = (t1 - t0) / 1000
    const got = {
      b: (after.get('shop-b') ?? 0) - (before.get('shop-b') ?? 0),
      c: (after.get('shop-c') ?? 0) - (before.get('shop-c') ?? 0)
    }
    const sum = got.b + got.c
    const kbitOf = (bytes: number) => (bytes * 8) / secs / 1000
    const totalKbit = kbitOf(wire1 - wire0)
    for (const k of ['b', 'c'] as const) {
      const share = sum > 0 ? got[k] / sum : 0
      say(
        `  shop-${k}: ${(got[k] / 1024).toFixed(0)} KB from shop-a in the ${secs.toFixed(0)} s both were busy, ` +
          `${kbitOf(got[k]).toFixed(1)} kbit/s, ${(share * 100).toFixed(0)}% of what shop-a sent them (aim: near 50%)`
      )
      out[`splitShare_${k}`] = +share.toFixed(3)
    }
    say(
      `  total on shop-a's line: ${totalKbit.toFixed(1)} kbit/s ` +
        `(aim: <= ${(capKbit * 1.1).toFixed(1)}, 1.1x the cap) ` +
        `${totalKbit <= capKbit * 1.1 ? 'MET' : 'MISSED'}; the streams' own bytes ${kbitOf(sum).toFixed(1)} kbit/s; ` +
        `${firstDone} done first, after ${secs.toFixed(0)} s, the other ${((t2 - t1) / 1000).toFixed(0)} s later`
    )
    out.splitTotalKbit = +totalKbit.toFixed(1)
    out.splitCapKbit = capKbit
    out.splitSeconds = +secs.toFixed(1)
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
  const i = process.argv.indexOf('--split-mb')
  await splitBench({ mb: i > 0 ? Number(process.argv[i + 1]) : undefined })
}
