/**
 * The shipped `mesh`: dist/tools/mesh.js, the JavaScript tsc builds from the sources (`npm run build`,
 * tsconfig.build.json). Tests and benchmarks run that one, as a user's global install would, not the TypeScript
 * through tsx. `npm test` builds first; a test file run alone rebuilds here when a source is newer than the
 * build, so it never runs yesterday's code. It does not clean dist/ (a file whose source was deleted stays until
 * the next `npm run build`).
 */
import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { ROOT } from './proc.ts'

export const DIST = path.join(ROOT, 'dist')
export const MESH_BIN = path.join(DIST, 'tools', 'mesh.js')

const SOURCES = ['protocol', 'adapters', 'node', 'tools', 'types']
const CONFIGS = ['tsconfig.json', 'tsconfig.build.json', 'tools/build.js']
/** A build left behind by a killed process: its lock is taken over after this long. */
const STALE_LOCK_MS = 120_000

function newest(dir: string): number {
  let t = 0
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name)
    if (e.isDirectory()) t = Math.max(t, newest(p))
    else t = Math.max(t, fs.statSync(p).mtimeMs)
  }
  return t
}

function built(): boolean {
  if (!fs.existsSync(MESH_BIN)) return false
  const sources = Math.max(
    ...SOURCES.map((d) => newest(path.join(ROOT, d))),
    ...CONFIGS.map((f) => fs.statSync(path.join(ROOT, f)).mtimeMs)
  )
  return fs.statSync(MESH_BIN).mtimeMs >= sources
}

function sleep(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms)
}

/**
 * Builds dist/ unless it is newer than every source. Test files run in parallel processes: one builds, under a
 * lock (a directory), and the others wait for it.
 */
export function ensureBuilt(): void {
  if (built()) return
  const lock = path.join(ROOT, '.build-lock')
  for (;;) {
    try {
      fs.mkdirSync(lock)
      break
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
      const since = Date.now() - (fs.statSync(lock, { throwIfNoEntry: false })?.mtimeMs ?? Date.now())
      if (since > STALE_LOCK_MS) fs.rmSync(lock, { recursive: true, force: true })
      else sleep(100)
    }
  }
  try {
    if (built()) return
    execFileSync(process.execPath, [path.join(ROOT, 'tools', 'build.js'), '--keep'], { cwd: ROOT, stdio: 'inherit' })
  } finally {
    fs.rmSync(lock, { recursive: true, force: true })
  }
}
