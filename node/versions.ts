/**
 * Versions: what each site runs, for the owner's security view. branchmesh's and Node.js's versions, the
 * operating system, the database engines' versions, and optionally the business application's own version.
 *
 * Node.js's end-of-life dates come from a table here (nodejs.org's release schedule): a site with older
 * branchmesh does not know a newer line's date, so status judges every site with its own table. Lines not in
 * the table are not called past end of life.
 */
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'

/** End of life of each Node.js major line, UTC (https://github.com/nodejs/release#release-schedule). */
export const NODE_END_OF_LIFE: Record<number, string> = {
  14: '2023-04-30',
  16: '2023-09-11',
  18: '2025-04-30',
  19: '2023-06-01',
  20: '2026-04-30',
  21: '2024-06-01',
  22: '2027-04-30',
  23: '2025-06-01',
  24: '2028-04-30',
  25: '2026-06-01',
  26: '2029-04-30'
}

/** When the Node.js line of `version` ('v20.19.0') reaches or reached its end of life, ms; null if unknown. */
export function nodeEndOfLife(version: string): number | null {
  const m = /^v?(\d+)\./.exec(version)
  const date = m ? NODE_END_OF_LIFE[Number(m[1])] : undefined
  return date ? Date.parse(`${date}T00:00:00Z`) : null
}

/**
 * Compares two dotted versions ('0.10.2' > '0.9.9'); a pre-release ('1.0.0-rc.1') is older than its release.
 * Text that is not a version compares as the oldest.
 */
export function compareVersions(a: string, b: string): number {
  const parse = (v: string) => {
    const m = /^v?(\d+(?:\.\d+)*)(-.*)?$/.exec(v.trim())
    return m ? { nums: m[1].split('.').map(Number), pre: m[2] ?? null } : null
  }
  const x = parse(a)
  const y = parse(b)
  if (!x || !y) return (x ? 1 : 0) - (y ? 1 : 0)
  for (let i = 0; i < Math.max(x.nums.length, y.nums.length); i++) {
    const d = (x.nums[i] ?? 0) - (y.nums[i] ?? 0)
    if (d) return Math.sign(d)
  }
  if (x.pre === y.pre) return 0
  if (x.pre === null) return 1
  if (y.pre === null) return -1
  return x.pre < y.pre ? -1 : 1
}

/** The operating system in a few words: 'Linux 6.1.0-18-amd64 x64'. */
export function osDescription(): string {
  return `${os.type()} ${os.release()} ${os.arch()}`
}

/**
 * Where the business application's version comes from (config `appVersion`): the version itself, a file whose
 * first line is the version, or a command whose first line of output is (run by /bin/sh, or cmd.exe on
 * Windows, in the data directory).
 */
export type AppVersionSource = { version: string } | { file: string } | { command: string }

/** The first line of `text` that is not blank, shortened to MAX_VERSION. */
function first(text: string): string {
  const line = text.split(/\r?\n/).find((l) => l.trim())
  return line ? line.trim().slice(0, MAX_VERSION) : ''
}

/** How long an appVersion command may run before it is stopped. */
export const APP_VERSION_TIMEOUT_MS = 5000
/** The longest version text kept (a report is sent every heartbeat). */
const MAX_VERSION = 64

/**
 * Reads the application's version. Never throws and never waits longer than `timeoutMs`: a command that fails,
 * hangs or prints nothing gives `{ version: '', error }`, which status shows as a WARN while the node keeps
 * replicating.
 */
export async function readAppVersion(
  src: AppVersionSource,
  cwd: string,
  timeoutMs = APP_VERSION_TIMEOUT_MS
): Promise<{ version: string; error: string }> {
  if ('version' in src) return { version: first(src.version), error: '' }
  if ('file' in src) {
    try {
      // Only the first 4 KB of a regular file: a device or a pipe named by mistake must not block the node.
      if (!fs.statSync(src.file).isFile()) return { version: '', error: `appVersion file ${src.file} is not a file` }
      const buf = Buffer.alloc(4096)
      const fd = fs.openSync(src.file, 'r')
      let n: number
      try {
        n = fs.readSync(fd, buf, 0, buf.length, 0)
      } finally {
        fs.closeSync(fd)
      }
      const v = first(buf.subarray(0, n).toString('utf8'))
      return v ? { version: v, error: '' } : { version: '', error: `appVersion file ${src.file} is empty` }
    } catch (err) {
      return { version: '', error: `cannot read appVersion file ${src.file}: ${(err as Error).message}` }
    }
  }
  return runVersionCommand(src.command, cwd, timeoutMs)
}

function runVersionCommand(
  command: string,
  cwd: string,
  timeoutMs: number
): Promise<{ version: string; error: string }> {
  return new Promise((resolve) => {
    const win = process.platform === 'win32'
    // Its own process group, so that a timeout stops what the shell started too.
    const child = spawn(win ? 'cmd.exe' : '/bin/sh', win ? ['/d', '/s', '/c', command] : ['-c', command], {
      cwd,
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: !win,
      windowsHide: true
    })
    let out = ''
    let err = ''
    let done = false
    const finish = (r: { version: string; error: string }) => {
      if (done) return
      done = true
      clearTimeout(timer)
      resolve(r)
    }
    const timer = setTimeout(() => {
      try {
        if (win || child.pid === undefined) child.kill('SIGKILL')
        else process.kill(-child.pid, 'SIGKILL')
      } catch {
        // Already gone.
      }
      finish({ version: '', error: `appVersion command "${command}" did not finish within ${timeoutMs / 1000} s` })
    }, timeoutMs)
    child.stdout.on('data', (b: Buffer) => {
      if (out.length < 4096) out += b.toString('utf8')
    })
    child.stderr.on('data', (b: Buffer) => {
      if (err.length < 4096) err += b.toString('utf8')
    })
    child.on('error', (e) => finish({ version: '', error: `cannot run appVersion command "${command}": ${e.message}` }))
    child.on('close', (code) => {
      const v = first(out)
      if (code !== 0) {
        const why = err.trim().split(/\r?\n/)[0]?.slice(0, 200) ?? ''
        finish({ version: '', error: `appVersion command "${command}" failed (exit ${code})${why ? `: ${why}` : ''}` })
      } else if (!v) finish({ version: '', error: `appVersion command "${command}" printed nothing` })
      else finish({ version: v, error: '' })
    })
  })
}
