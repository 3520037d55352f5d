/**
 * Sites for mesh tests: each a data directory set up with the real `mesh` commands and a node running as its
 * own OS process (`mesh start`), on a local DHT test network on loopback.
 */
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import createTestnet from 'hyperdht/testnet.js'
import { askNode, statusFromDisk, DEFAULT_THRESHOLDS, type SiteStatus } from '../../node/index.ts'
import { ensureBuilt, MESH_BIN } from './build.ts'
import { dump, openWal, tmpDir } from './db.ts'
import { ROOT, startNodeProcess, type Child } from './proc.ts'
import { teardown, type TestContext } from './teardown.ts'
import { setup } from './workload.ts'

/** The shipped `mesh` (compiled JavaScript, built here when a source is newer). */
export const MESH = MESH_BIN
ensureBuilt()

export interface RunResult {
  code: number | null
  stdout: string
  stderr: string
}

/** Runs one `mesh` command to completion. */
export function mesh(args: string[], opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [MESH, ...args], {
      cwd: ROOT,
      env: { ...process.env, ...opts.env },
      stdio: ['ignore', 'pipe', 'pipe']
    })
    let stdout = ''
    let stderr = ''
    p.stdout.on('data', (d) => (stdout += d))
    p.stderr.on('data', (d) => (stderr += d))
    const t = setTimeout(() => {
      p.kill('SIGKILL')
      reject(new Error(`mesh ${args.join(' ')} did not finish in time; stdout:\n${stdout}\nstderr:\n${stderr}`))
    }, opts.timeoutMs ?? 90_000)
    p.on('exit', (code) => {
      clearTimeout(t)
      resolve({ code, stdout, stderr })
    })
  })
}

/** A local DHT test network on loopback for a test, destroyed when it ends: its bootstrap list, HOST:PORT,... */
export async function testnet(t: TestContext): Promise<string> {
  const net = await createTestnet(3, { host: '127.0.0.1' })
  teardown(t, () => net.destroy())
  return net.bootstrap.map((b) => `${b.host}:${b.port}`).join(',')
}

export async function waitUntil(
  what: string,
  fn: () => boolean | Promise<boolean>,
  timeoutMs = 60_000,
  every = 200
): Promise<void> {
  const end = Date.now() + timeoutMs
  let last: unknown = null
  for (;;) {
    try {
      if (await fn()) return
      last = null
    } catch (err) {
      last = err
    }
    if (Date.now() > end)
      throw new Error(
        `timed out after ${timeoutMs} ms waiting until ${what}${last ? `: ${(last as Error).message}` : ''}`
      )
    await new Promise((r) => setTimeout(r, every))
  }
}

/**
 * These machines run Node.js 20, past its end of life (FACTS.md), which every site's status rightly warns of
 * (issue 17). Tests of replication health set that one warning aside in the site's config (unless a test set a
 * grace of its own; init writes 0); test/watch.test.ts
 * tests the warning itself.
 */
export function allowOldNode(dir: string): void {
  const file = path.join(dir, 'config.json')
  const cfg = JSON.parse(fs.readFileSync(file, 'utf8'))
  if (cfg.status?.nodeEolGraceDays) return
  cfg.status = { ...cfg.status, nodeEolGraceDays: 36500 }
  fs.writeFileSync(file, JSON.stringify(cfg, null, 2), { mode: 0o600 })
}

function startNode(dir: string): Child {
  allowOldNode(dir)
  return startNodeProcess([MESH, 'start', '--dir', dir, '--log-json'], `the node in ${dir}`)
}

export class TestSite {
  readonly name: string
  readonly dir: string
  readonly db: string
  readonly bootstrap: string
  node: Child | null = null

  constructor(root: string, name: string, bootstrap: string) {
    this.name = name
    this.dir = path.join(root, name)
    this.db = path.join(root, `${name}.db`)
    this.bootstrap = bootstrap
    const db = openWal(this.db)
    setup(db)
    db.close()
  }

  /** `extra`: more flags for `mesh init` (e.g. a bandwidth budget). */
  async init(extra: string[] = []): Promise<void> {
    const r = await mesh([
      'init',
      '--dir',
      this.dir,
      '--site',
      this.name,
      '--sqlite',
      this.db,
      '--bootstrap',
      this.bootstrap,
      ...extra
    ])
    if (r.code !== 0) throw new Error(`mesh init failed: ${r.stderr}`)
  }

  async invite(extra: string[] = []): Promise<string> {
    const r = await mesh(['invite', '--dir', this.dir, ...extra])
    if (r.code !== 0) throw new Error(`mesh invite failed: ${r.stderr}`)
    return r.stdout.trim().split('\n').pop()!
  }

  async join(code: string, extra: string[] = []): Promise<void> {
    const r = await mesh([
      'join',
      code,
      '--dir',
      this.dir,
      '--site',
      this.name,
      '--sqlite',
      this.db,
      '--bootstrap',
      this.bootstrap,
      ...extra
    ])
    if (r.code !== 0) throw new Error(`mesh join failed: ${r.stderr}`)
  }

  async start(): Promise<void> {
    this.node = startNode(this.dir)
    await this.node.waitLine(/"msg":"ready"/, 60_000)
  }

  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    await this.node?.kill(signal)
    this.node = null
  }

  async status(): Promise<SiteStatus> {
    const res = (await askNode(this.dir, 'status')) as { status: SiteStatus } | null
    return res?.status ?? statusFromDisk(this.dir, this.name, DEFAULT_THRESHOLDS)
  }

  /** This site's replica of `origin`'s dataset, or null while there is none. */
  replicaOf(origin: TestSite): string | null {
    const dir = path.join(this.dir, 'replicas')
    if (!fs.existsSync(dir)) return null
    const f = fs.readdirSync(dir).find((n) => n.startsWith(`${origin.name}-`) && n.endsWith('.db'))
    return f ? path.join(dir, f) : null
  }

  /** True when this site's replica of `origin` holds exactly origin's rows now. */
  holdsExactly(origin: TestSite): boolean {
    const r = this.replicaOf(origin)
    if (r === null) return false
    return JSON.stringify(dump(r)) === JSON.stringify(dump(origin.db))
  }
}

/** A SQLite site in `root` (its database made and set up for the workload); its node is killed when the test ends. */
export function sqliteSite(t: TestContext, root: string, name: string, bootstrap: string): TestSite {
  const site = new TestSite(root, name, bootstrap)
  teardown(t, () => site.stop('SIGKILL'))
  return site
}

/** Waits until every site's replica of every other site equals that origin, row by row. */
export async function converged(sites: TestSite[], origins: TestSite[] = sites, timeoutMs = 90_000): Promise<void> {
  for (const o of origins) {
    for (const s of sites) {
      if (s === o) continue
      try {
        await waitUntil(`${s.name} holds exactly ${o.name}'s rows`, () => s.holdsExactly(o), timeoutMs, 300)
      } catch (err) {
        // Say where it stuck: the waiting site's view and the last lines of every node's log.
        const view = await s.status().catch((e) => `status unavailable: ${(e as Error).message}`)
        const logs = sites.map((x) => `--- ${x.name}\n${(x.node?.lines ?? []).slice(-15).join('\n')}`).join('\n')
        throw new Error(`${(err as Error).message}\nstatus at ${s.name}: ${JSON.stringify(view)}\n${logs}`)
      }
    }
  }
}

export interface TestMesh {
  dir: string
  bootstrap: string
  sites: TestSite[]
  /** The join code each site after the first used. */
  codes: string[]
}

/**
 * A mesh of running sites for one test: the first site inits, each other joins with a fresh code, all start.
 * `before` runs once the databases exist and before any `mesh` command (to write rows that predate the mesh).
 * Everything is stopped and removed when the test ends.
 */
export async function meshSites(
  t: TestContext,
  names: string[],
  before?: (sites: TestSite[]) => void
): Promise<TestMesh> {
  const dir = tmpDir(t, `mesh-${names.length}-`)
  const bootstrap = await testnet(t)
  const sites = names.map((n) => sqliteSite(t, dir, n, bootstrap))
  before?.(sites)
  const [first, ...rest] = sites
  await first.init()
  await first.start()
  const codes: string[] = []
  for (const s of rest) {
    codes.push(await first.invite())
    await s.join(codes[codes.length - 1])
  }
  for (const s of rest) await s.start()
  return { dir, bootstrap, sites, codes }
}

/**
 * `mesh promote` at `dir` once its origin counts as lost: a killed origin looks healthy until it misses three
 * heartbeats, and --force does not override that (ORIGIN_HEALTHY), so the command is tried again meanwhile.
 */
export async function promoteOnceLost(dir: string, dataset: string, extra: string[] = []): Promise<RunResult> {
  let r: RunResult = { code: null, stdout: '', stderr: '' }
  await waitUntil(
    `${dataset} can be promoted at ${dir}`,
    async () => {
      r = await mesh(['promote', dataset, '--dir', dir, '--json', ...extra], { timeoutMs: 120_000 })
      return !r.stdout.includes('"ORIGIN_HEALTHY"')
    },
    60_000,
    1000
  )
  return r
}
