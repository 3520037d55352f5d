/**
 * The real `mesh` commands, as the demo runs them: the short ones (init, invite, join, promote) in this
 * process through their own `run`, their output kept (the demo tells the story instead, and shows it only if
 * they fail); each shop's node, `mesh start`, in its own OS process.
 */
import { fileURLToPath, pathToFileURL } from 'node:url'
import { MeshError } from '../../protocol/index.ts'
import type { PromoteResult } from '../../node/index.ts'
import { out, type Command } from '../commands/common.ts'
import { command as promoteCommand } from '../commands/promote.ts'
import { ProcError, startNode as startProc, type NodeProc } from '../proc.ts'
import { DemoFailure, Interrupted, secs, type Business, type Demo, type Site } from './stage.ts'

/** The demo's own `mesh`: dist/tools/mesh.js as built and shipped; tools/mesh.ts through tsx from the sources. */
const FROM_SOURCE = import.meta.url.endsWith('.ts')
const MESH_JS = fileURLToPath(new URL(FROM_SOURCE ? '../mesh.ts' : '../mesh.js', import.meta.url))
/**
 * Each child runs that `mesh` behind this guard: when this process dies without stopping it (SIGKILL, a
 * crash), the child's stdin pipe closes and the child stops itself, so no node outlives the demo.
 */
const GUARD =
  `process.stdin.on('end', () => process.kill(process.pid, 'SIGTERM')); process.stdin.on('error', () => {}); ` +
  `process.stdin.resume(); await import(${JSON.stringify(pathToFileURL(MESH_JS).href)})`

const NODE_START_MS = 20_000

/** The children get every flag they need: a MESH_DIR or MESH_BOOTSTRAP of the user's must not leak in. */
function childEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env }
  delete env.MESH_DIR
  delete env.MESH_BOOTSTRAP
  return env
}

/**
 * Runs a short command (init, invite, join, promote) in this process, through its own `run`, as `mesh`
 * would, its output kept (the demo tells the story instead). Returns its exit code and output lines; a
 * thrown error becomes a DemoFailure with that output.
 */
async function capture(
  demo: Demo,
  cmd: Command,
  args: string[],
  timeoutMs: number
): Promise<{ code: number; lines: string[] }> {
  const label = `mesh ${args[0]}`
  const lines: string[] = []
  let partial = ''
  const keep = (chunk: unknown, ...rest: unknown[]): boolean => {
    const text = partial + (typeof chunk === 'string' ? chunk : Buffer.from(chunk as Uint8Array).toString())
    const parts = text.split('\n')
    partial = parts.pop() ?? ''
    lines.push(...parts)
    const cb = rest.find((r) => typeof r === 'function') as (() => void) | undefined
    cb?.()
    return true
  }
  const stdout = process.stdout.write
  const stderr = process.stderr.write
  process.stdout.write = keep as typeof process.stdout.write
  process.stderr.write = keep as typeof process.stderr.write
  try {
    const code = await demo.within(cmd.run(args.slice(1)), timeoutMs, label)
    if (partial) lines.push(partial)
    return { code, lines }
  } catch (err) {
    if (partial) lines.push(partial)
    if (err instanceof Interrupted) throw err
    if (err instanceof DemoFailure) throw err.details.length > 0 ? err : new DemoFailure(err.message, lines)
    const what =
      err instanceof MeshError
        ? `${err.message}${err.hint ? ` (${err.hint})` : ''}`
        : String((err as Error)?.message ?? err)
    throw new DemoFailure(`${label} failed: ${what}`, lines)
  } finally {
    process.stdout.write = stdout
    process.stderr.write = stderr
  }
}

/** Runs a command that must succeed (init, invite, join); returns its output lines. */
export async function runMesh(demo: Demo, cmd: Command, args: string[], timeoutMs = 25_000): Promise<string[]> {
  const { code, lines } = await capture(demo, cmd, args, timeoutMs)
  if (code !== 0) throw new DemoFailure(`mesh ${args[0]} failed (exit ${code})`, lines)
  return lines
}

export interface Refusal {
  code: string
  message: string
  hint: string | null
}

/** `mesh promote DATASET --dir DIR --json` at `site`: the promotion, or the refusal with its code. */
export async function promote(
  demo: Demo,
  site: Site,
  b: Business
): Promise<{ promoted: PromoteResult | null; error: Refusal | null }> {
  const { lines } = await capture(demo, promoteCommand, ['promote', b.name, '--dir', site.dir, '--json'], 60_000)
  const json = lines.find((l) => l.trim().startsWith('{'))
  let r: { promoted?: boolean; error?: Refusal } & Partial<PromoteResult>
  try {
    r = JSON.parse(json ?? '')
  } catch {
    throw new DemoFailure('mesh promote printed no result', lines)
  }
  if (r.promoted === true) return { promoted: r as PromoteResult, error: null }
  return { promoted: null, error: r.error ?? { code: 'UNKNOWN', message: lines.join(' '), hint: null } }
}

/** Starts a site's node (`mesh start`) and waits until it says it is ready. */
export async function startNode(demo: Demo, site: Site): Promise<void> {
  const label = `the node of ${site.name}`
  const args = ['start', '--dir', site.dir, '--log-json']
  const loader = FROM_SOURCE ? ['--import', 'tsx'] : []
  const p = startProc([...loader, '--input-type=module', '-e', GUARD, MESH_JS, ...args], {
    label,
    env: childEnv(),
    stdin: 'pipe',
    maxLines: 2000
  })
  demo.children.push(p)
  site.node = p
  site.alive = true
  site.errorsShown = 0
  p.onLine((line, from) => {
    const j = from === 'stderr' ? logLine(line) : null
    if (j && typeof j.level === 'number' && j.level >= 50 && site.errorsShown++ < 5) {
      out(`   ! ${site.name} reports an error: ${j.msg ?? ''}${j.error ? `: ${j.error}` : ''}`)
    }
  })
  p.exited.then(({ code, signal }) => {
    if (site.alive && site.node === p && !demo.interrupted) {
      demo.stopAll(new DemoFailure(`${label} stopped on its own (exit ${code ?? signal})`, tail(p)))
    }
  })
  try {
    await p.waitLine(/"msg":"ready"/, NODE_START_MS, demo.signal)
  } catch (err) {
    if (err instanceof ProcError) {
      const what =
        err.reason === 'timeout'
          ? `timed out after ${secs(NODE_START_MS)}: ${label} to start`
          : `${label} stopped unexpectedly`
      throw new DemoFailure(what, tail(p))
    }
    throw err instanceof DemoFailure && err.details.length === 0 ? new DemoFailure(err.message, tail(p)) : err
  }
}

/** A JSON log line of a node, or null. */
function logLine(line: string): { level?: unknown; msg?: string; error?: string; [k: string]: unknown } | null {
  if (!line.startsWith('{')) return null
  try {
    return JSON.parse(line)
  } catch {
    return null // Not a log line.
  }
}

/** The last lines a node printed, its JSON log lines made readable: for a failure report. */
export function tail(p: NodeProc, n = 12): string[] {
  return p.tail(n).map((l) => {
    const j = logLine(l)
    if (!j) return l
    const { level, time, msg, ...rest } = j
    const lv = { 20: 'debug', 30: 'info', 40: 'warn', 50: 'error', 60: 'fatal' }[level as number] ?? String(level)
    return `${lv}: ${msg} ${Object.keys(rest).length ? JSON.stringify(rest) : ''}`.trim()
  })
}
