/** Setting up a site's data directory: used by `mesh init` and `mesh join` before any node runs. */
import fs from 'node:fs'
import path from 'node:path'
import { MeshError } from '../protocol/index.ts'
import { openDatabase } from '../adapters/index.ts'

/** Checks that a source database exists and is readable by its engine. Opens nothing for writing. */
export function checkSource(engine: 'sqlite', file: string): void {
  if (engine !== 'sqlite') throw MeshError.USAGE(`engine ${engine} is not supported`)
  const db = openDatabase(file, { mustExist: true })
  db.close()
}

/**
 * Runs `build` in a new data directory and removes everything it created if `build` fails, so a failed
 * `mesh init` or `mesh join` can simply be run again. Refuses a directory that already holds a site.
 */
export async function createDataDir<T>(dir: string, marker: string, build: () => Promise<T>): Promise<T> {
  if (fs.existsSync(path.join(dir, marker)) || fs.existsSync(path.join(dir, 'site.key'))) {
    throw MeshError.ALREADY_INITIALIZED(`${dir} already holds a site`)
  }
  const existed = fs.existsSync(dir)
  if (existed && !fs.statSync(dir).isDirectory()) throw MeshError.USAGE(`${dir} is a file, not a directory`, { hint: 'Pass a folder for --dir.' })
  const before = existed ? new Set(fs.readdirSync(dir)) : new Set<string>()
  try {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 })
  } catch (err) {
    throw MeshError.READ_ONLY(`cannot create ${dir}: ${(err as Error).message}`, { hint: 'Choose a --dir this user may write to.' })
  }
  try {
    return await build()
  } catch (err) {
    if (!existed) fs.rmSync(dir, { recursive: true, force: true })
    else for (const n of fs.readdirSync(dir)) if (!before.has(n)) fs.rmSync(path.join(dir, n), { recursive: true, force: true })
    throw err
  }
}
