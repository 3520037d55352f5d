/**
 * Network namespaces for the benches that need a real slow link (bench/reconnect.ts, bench/budget.ts): running
 * `ip`, a long-running process inside a namespace with its output lines, and a `mesh` command run to completion
 * inside one. Needs root. Nodes in namespaces reach each other directly (MESH_DIRECT=1: no hole punching, as on
 * loopback in the tests).
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
export const MESH = path.join(ROOT, 'tools', 'mesh.js')
/** A DHT test network for one namespace: `node --import tsx DHT_SCRIPT ADDRESS` prints `bootstrap ...`. */
export const DHT_SCRIPT = path.join(ROOT, 'bench', 'reconnect-dht.ts')

/**
 * The sites reach each other directly (MESH_DIRECT=1: no hole punching, as on loopback in the tests). With hole
 * punching, connections between the namespaces sometimes timed out again and again (one `mesh join` of six found
 * no way through in 120 s): that measured hyperdht's hole punching, not what a bench is about.
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
