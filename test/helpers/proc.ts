/** Child processes for tests: start one, read its lines, wait for a line or for its exit. */
import { spawn, type ChildProcess } from 'node:child_process'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..')

export interface Child {
  proc: ChildProcess
  lines: string[]
  waitLine(re: RegExp, timeoutMs?: number): Promise<string>
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
  kill(signal?: NodeJS.Signals): Promise<{ code: number | null; signal: NodeJS.Signals | null }>
}

export function startTs(script: string, args: string[], opts: { env?: NodeJS.ProcessEnv } = {}): Child {
  return startNodeProcess(['--import', 'tsx', path.join(ROOT, script), ...args], script, opts)
}

/** Starts `node ARGV...`; `label` names it in timeout messages. */
export function startNodeProcess(argv: string[], label: string, opts: { env?: NodeJS.ProcessEnv } = {}): Child {
  const script = label
  const proc = spawn(process.execPath, argv, {
    cwd: ROOT,
    env: { ...process.env, ...opts.env },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  const lines: string[] = []
  const waiters: Array<{ re: RegExp; resolve: (l: string) => void }> = []
  let buf = ''
  const onData = (d: Buffer) => {
    buf += d.toString()
    let i: number
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i)
      buf = buf.slice(i + 1)
      lines.push(line)
      for (const w of [...waiters]) {
        if (w.re.test(line)) {
          waiters.splice(waiters.indexOf(w), 1)
          w.resolve(line)
        }
      }
    }
  }
  proc.stdout!.on('data', onData)
  proc.stderr!.on('data', onData)
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    proc.on('exit', (code, signal) => resolve({ code, signal }))
  )
  return {
    proc,
    lines,
    exited,
    waitLine(re, timeoutMs = 30_000) {
      const have = lines.find((l) => re.test(l))
      if (have !== undefined) return Promise.resolve(have)
      return new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`timed out waiting for ${re} from ${script}; got:\n${lines.join('\n')}`)), timeoutMs)
        waiters.push({
          re,
          resolve: (l) => {
            clearTimeout(t)
            resolve(l)
          }
        })
        exited.then(() => {
          setTimeout(() => reject(new Error(`${script} exited before ${re}; got:\n${lines.join('\n')}`)), 50)
        })
      })
    },
    async kill(signal = 'SIGTERM') {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal)
      return exited
    }
  }
}
