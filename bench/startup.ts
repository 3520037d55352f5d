/**
 * Start-up of the shipped `mesh` (dist/tools/mesh.js, the compiled JavaScript a global install runs): the median
 * wall time of repeated runs, from spawn to exit, of `mesh version` (aim: 80 ms or less) and of `mesh status`
 * against a node running on a local DHT test network (aim: 200 ms or less). Both include starting Node.js itself,
 * measured alone as the anchor (`node -e 0`). The machine's load average is printed with them: on a busy machine
 * every figure grows.
 *
 * Run alone: node --import tsx bench/startup.ts [--json] [--runs N]; `npm run bench` runs it first.
 */
import { spawn } from 'node:child_process'
import os from 'node:os'
import path from 'node:path'
import { pathToFileURL } from 'node:url'
import createTestnet from 'hyperdht/testnet.js'
import { startNode } from '../tools/proc.ts'
import { tmpDir, openWal } from '../test/helpers/db.ts'
import { MESH, mesh } from '../test/helpers/mesh.ts'

export const VERSION_AIM_MS = 80
export const STATUS_AIM_MS = 200

export interface StartupBenchOptions {
  say?: (line: string) => void
  runs?: number
}

export interface StartupBenchSummary {
  nodeMs: number
  versionMs: number
  statusMs: number
  socketMs: number
}

/**
 * The floor under `mesh status`: a bare `node` that asks the running node for its status over the local socket,
 * as askNode does, loading no module of ours; what `mesh status` takes beyond it is loading modules.
 */
const ASK = `const c = require('node:net').connect(process.argv[1]); let b = '';
c.on('data', (d) => { b += d; if (b.includes('\\n')) process.exit(0) }).write('{"cmd":"status"}\\n')`

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.floor(s.length / 2)]
}

/** Milliseconds from spawning `node ARGS` to its exit; throws when it exits with a code not in `ok`. */
function timed(args: string[], ok: number[]): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint()
    const p = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'pipe'] })
    let stderr = ''
    p.stderr.on('data', (d) => (stderr += d))
    p.on('error', reject)
    p.on('exit', (code) => {
      const ms = Number(process.hrtime.bigint() - t0) / 1e6
      if (ok.includes(code ?? -1)) resolve(ms)
      else reject(new Error(`node ${args.join(' ')} exited ${code}: ${stderr}`))
    })
  })
}

async function medianOf(runs: number, args: string[], ok = [0]): Promise<number> {
  await timed(args, ok) // warms the file cache; not counted
  const xs: number[] = []
  for (let i = 0; i < runs; i++) xs.push(await timed(args, ok))
  return median(xs)
}

export async function startupBench(opts: StartupBenchOptions = {}): Promise<StartupBenchSummary> {
  const say = opts.say ?? (() => {})
  const runs = opts.runs ?? 15
  const load = os.loadavg()[0].toFixed(2)
  const nodeMs = await medianOf(runs, ['-e', '0'])
  const versionMs = await medianOf(runs, [MESH, 'version'])

  const { dir, cleanup } = tmpDir('mesh-bench-startup-')
  const testnet = await createTestnet(3, { host: '127.0.0.1' })
  const bootstrap = testnet.bootstrap.map((b) => `${b.host}:${b.port}`).join(',')
  const site = path.join(dir, 'site')
  const db = path.join(dir, 'shop.db')
  let statusMs = NaN
  let socketMs = NaN
  try {
    openWal(db).exec('CREATE TABLE orders (id INTEGER PRIMARY KEY, amount REAL)').close()
    const init = await mesh(['init', '--dir', site, '--site', 'shop', '--sqlite', db, '--bootstrap', bootstrap])
    if (init.code !== 0) throw new Error(`mesh init failed: ${init.stderr}`)
    const running = startNode([MESH, 'start', '--dir', site, '--log-json'], { label: 'the node' })
    try {
      await running.waitLine(/"msg":"ready"/, 60_000)
      // A lone site's verdict is not OK (no copy elsewhere): exit 1 or 2 is an answer; 3 (UNKNOWN) is not.
      statusMs = await medianOf(runs, [MESH, 'status', '--dir', site], [0, 1, 2])
      socketMs = await medianOf(runs, ['-e', ASK, path.join(site, 'node.sock')])
    } finally {
      await running.kill('SIGTERM')
    }
  } finally {
    await testnet.destroy()
    cleanup()
  }
  const mark = (ms: number, aim: number) => `${ms.toFixed(0)} ms (aim <= ${aim} ms${ms <= aim ? '' : ', MISSED'})`
  say(`Start-up of the shipped mesh (dist/tools/mesh.js), median of ${runs} runs, load average ${load}`)
  say(`  node -e 0 (the anchor): ${nodeMs.toFixed(0)} ms`)
  say(`  mesh version: ${mark(versionMs, VERSION_AIM_MS)}`)
  say(`  mesh status, node running: ${mark(statusMs, STATUS_AIM_MS)}`)
  say(`  its floor, node asking the node over the socket, loading none of our modules: ${socketMs.toFixed(0)} ms`)
  return {
    nodeMs: Math.round(nodeMs),
    versionMs: Math.round(versionMs),
    statusMs: Math.round(statusMs),
    socketMs: Math.round(socketMs)
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const json = process.argv.includes('--json')
  const at = process.argv.indexOf('--runs')
  const runs = at > 0 ? Number(process.argv[at + 1]) : undefined
  const summary = await startupBench({ say: json ? undefined : (s) => process.stdout.write(`${s}\n`), runs })
  if (json) process.stdout.write(`${JSON.stringify(summary)}\n`)
}
