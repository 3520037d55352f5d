/**
 * Network namespaces for the benches that need a real network between sites (bench/reconnect.ts,
 * bench/nightoff.ts, bench/budget.ts, test/lossy-link.test.ts; needs root): a hub namespace with a bridge, one
 * namespace per site and one for the DHT test network, each joined to the hub by a veth pair; each site's link
 * is rate-limited each way with `tc ... tbf` (netem is missing on these machines: no added latency or loss);
 * or two namespaces joined by one veth pair (SlowLine). Each bench names its namespaces with a prefix of its own,
 * so that two can run at once.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { ensureBuilt, MESH_BIN } from '../test/helpers/build.ts'

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
/** The shipped `mesh` (compiled JavaScript, built here first when a source is newer than the build). */
export const MESH = MESH_BIN
ensureBuilt()
export const DHT_SCRIPT = path.join(ROOT, 'bench', 'reconnect-dht.ts')

/**
 * The sites reach each other directly over the hub (MESH_DIRECT=1: no hole punching, as on loopback in the
 * tests). With hole punching, connections between the namespaces sometimes timed out again and again (one
 * `mesh join` of six found no way through in 120 s): that measured hyperdht's hole punching, not reconnection.
 */
export const DIRECT = { ...process.env, MESH_DIRECT: '1' }

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

export function ip(...args: string[]): string {
  return execFileSync('ip', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
}

/** Runs a command inside namespace `ns` to completion; its output. */
export function inNs(ns: string, cmd: string, args: string[]): string {
  return execFileSync('ip', ['netns', 'exec', ns, cmd, ...args], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe']
  })
}

/** A long-running process in a namespace, with its output lines. */
export class NsProc {
  readonly proc: ChildProcess
  readonly lines: string[] = []
  private readonly exited: Promise<void>

  constructor(ns: string, argv: string[]) {
    this.proc = spawn('ip', ['netns', 'exec', ns, process.execPath, ...argv], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: DIRECT
    })
    this.exited = new Promise((r) => this.proc.on('exit', () => r()))
    for (const s of [this.proc.stdout!, this.proc.stderr!]) {
      let buf = ''
      s.on('data', (d: Buffer) => {
        buf += d.toString()
        const parts = buf.split('\n')
        buf = parts.pop() ?? ''
        this.lines.push(...parts)
      })
    }
  }

  async line(re: RegExp, ms: number): Promise<string> {
    const end = Date.now() + ms
    for (;;) {
      const hit = this.lines.find((l) => re.test(l))
      if (hit) return hit
      if (Date.now() > end || this.proc.exitCode !== null) {
        throw new Error(`bench: no line ${re} in time:\n${this.lines.slice(-20).join('\n')}`)
      }
      await sleep(100)
    }
  }

  signal(sig: NodeJS.Signals): void {
    if (this.proc.exitCode === null) this.proc.kill(sig)
  }

  async stop(): Promise<void> {
    if (this.proc.exitCode !== null) return
    this.signal('SIGCONT')
    this.signal('SIGTERM')
    const t = setTimeout(() => this.signal('SIGKILL'), 10_000)
    await this.exited
    clearTimeout(t)
  }
}

/** Runs a `mesh` command in a namespace to completion. */
export function meshIn(ns: string, args: string[]): string {
  return execFileSync('ip', ['netns', 'exec', ns, process.execPath, MESH, ...args], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
    timeout: 180_000,
    env: DIRECT
  })
}

/** The namespaces, the hub's bridge and the slow links; `down()` removes all of it. */
export class Net {
  readonly p: string
  /** `prefix`: the bench's own (bm: reconnect, bmn: nightoff, bmb: bandwidth), then this process's id. */
  constructor(prefix: string) {
    this.p = `${prefix}${process.pid % 100000}`
  }
  get hub(): string {
    return `${this.p}h`
  }
  get ns(): Record<'a' | 'b' | 'd', string> {
    return { a: `${this.p}a`, b: `${this.p}b`, d: `${this.p}d` }
  }
  readonly addr = { a: '10.231.0.2', b: '10.231.0.3', d: '10.231.0.1' }
  private made: string[] = []

  up(kbit: number): void {
    for (const n of [this.hub, ...Object.values(this.ns)]) {
      ip('netns', 'add', n)
      this.made.push(n)
      ip('-n', n, 'link', 'set', 'lo', 'up')
    }
    ip('-n', this.hub, 'link', 'add', 'br0', 'type', 'bridge')
    ip('-n', this.hub, 'link', 'set', 'br0', 'up')
    for (const k of ['a', 'b', 'd'] as const) {
      const outer = this.hubSide(k)
      const inner = `${this.p}${k}1`
      ip('link', 'add', outer, 'type', 'veth', 'peer', 'name', inner)
      ip('link', 'set', outer, 'netns', this.hub)
      ip('link', 'set', inner, 'netns', this.ns[k])
      ip('-n', this.hub, 'link', 'set', outer, 'master', 'br0')
      ip('-n', this.hub, 'link', 'set', outer, 'up')
      ip('-n', this.ns[k], 'addr', 'add', `${this.addr[k]}/24`, 'dev', inner)
      ip('-n', this.ns[k], 'link', 'set', inner, 'up')
      if (k === 'd') continue
      // A slow link each way: tbf on the site's own end and on the hub's end toward it.
      const tbf = ['root', 'tbf', 'rate', `${kbit}kbit`, 'burst', '16kb', 'latency', '400ms']
      execFileSync('ip', ['netns', 'exec', this.ns[k], 'tc', 'qdisc', 'add', 'dev', inner, ...tbf])
      execFileSync('ip', ['netns', 'exec', this.hub, 'tc', 'qdisc', 'add', 'dev', outer, ...tbf])
    }
  }

  hubSide(k: 'a' | 'b' | 'd'): string {
    return `${this.p}${k}0`
  }

  /** Cuts (or restores) site `k`'s link at the hub: its carrier goes down at both ends. */
  link(k: 'a' | 'b', up: boolean): void {
    ip('-n', this.hub, 'link', 'set', this.hubSide(k), up ? 'up' : 'down')
  }

  down(): void {
    removeNamespaces(this.made.reverse())
    this.made = []
  }
}

/** Two namespaces joined by a veth pair with tbf at both ends; `down()` removes them. */
export class SlowLine {
  readonly p: string
  readonly ns: Record<'a' | 'b', string>
  readonly dev: Record<'a' | 'b', string>
  readonly addr = { a: '10.233.0.1', b: '10.233.0.2' }
  private made: string[] = []

  /** `prefix`: the caller's own (bmb: the budget bench, bml: the lossy-link test), then this process's id. */
  constructor(prefix: string) {
    this.p = `${prefix}${process.pid % 100000}`
    this.ns = { a: `${this.p}a`, b: `${this.p}b` }
    this.dev = { a: `${this.p}a0`, b: `${this.p}b0` }
  }

  /** Both namespaces and the line, `kbit` each way (a tbf of 4 KB, 400 ms: a clean slow line). */
  up(kbit: number): void {
    for (const n of Object.values(this.ns)) {
      ip('netns', 'add', n)
      this.made.push(n)
      ip('-n', n, 'link', 'set', 'lo', 'up')
    }
    ip('link', 'add', this.dev.a, 'type', 'veth', 'peer', 'name', this.dev.b)
    for (const k of ['a', 'b'] as const) {
      ip('link', 'set', this.dev[k], 'netns', this.ns[k])
      ip('-n', this.ns[k], 'addr', 'add', `${this.addr[k]}/24`, 'dev', this.dev[k])
      ip('-n', this.ns[k], 'link', 'set', this.dev[k], 'up')
      this.shape(k, kbit, '4kb', '400ms')
    }
  }

  /** tbf at `k`'s end: its rate, bucket, and how long a packet may wait in its queue before it is dropped. */
  shape(k: 'a' | 'b', kbit: number, burst: string, latency: string, verb = 'add'): void {
    const tbf = ['root', 'tbf', 'rate', `${kbit}kbit`, 'burst', burst, 'latency', latency]
    inNs(this.ns[k], 'tc', ['qdisc', verb, 'dev', this.dev[k], ...tbf])
  }

  /** Bytes and packets dropped that `k`'s end of the line has sent so far (the tbf's count). */
  sent(k: 'a' | 'b'): { bytes: number; dropped: number } {
    const text = inNs(this.ns[k], 'tc', ['-s', 'qdisc', 'show', 'dev', this.dev[k]])
    const m = /Sent (\d+) bytes \d+ pkt \(dropped (\d+)/.exec(text)
    return { bytes: Number(m?.[1] ?? 0), dropped: Number(m?.[2] ?? 0) }
  }

  down(): void {
    removeNamespaces(this.made.reverse())
    this.made = []
  }
}

/** Removes namespaces, ignoring those already gone. */
export function removeNamespaces(names: string[]): void {
  for (const n of names) {
    try {
      ip('netns', 'del', n)
    } catch {
      // already gone
    }
  }
}

/**
 * Starts a DHT test network inside namespace `ns`, listening on `addr`, and waits for its bootstrap address; the
 * process is pushed to `procs` (the caller's list of what to kill on the way out) before the wait.
 */
export async function startDht(ns: string, addr: string, procs: NsProc[]): Promise<string> {
  const dht = new NsProc(ns, ['--import', 'tsx', DHT_SCRIPT, addr])
  procs.push(dht)
  return (await dht.line(/^bootstrap /, 60_000)).slice('bootstrap '.length).trim()
}
