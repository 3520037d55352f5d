/** Setting up a site's data directory: used by `mesh init` and `mesh join` before any node runs. */
import fs from 'node:fs'
import path from 'node:path'
import { MeshError } from '../protocol/index.ts'
import { engineFor, type CaptureMode } from '../adapters/index.ts'
export { checkReplicaServer } from '../adapters/index.ts'

/**
 * Checks that a source database exists and can be captured, and creates what capture needs (PostgreSQL: the
 * publication and the replication slot, both named branchmesh_<dataset id>). Returns warnings for the user (a
 * slot that may hold WAL without limit). SQLite files are only opened for reading here.
 */
export async function checkSource(
  engine: string,
  where: string,
  dataset: string,
  capture: CaptureMode = 'logical'
): Promise<string[]> {
  return engineFor(engine).checkSource(where, dataset, capture)
}

/**
 * Undoes what checkSource created, for an init or join that failed after it: the slot (which would keep WAL
 * for ever), the publication and the event trigger.
 */
export async function undoSource(engine: string, where: string, dataset: string): Promise<void> {
  await engineFor(engine).undoSource?.(where, dataset)
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
  if (existed && !fs.statSync(dir).isDirectory())
    throw MeshError.USAGE(`${dir} is a file, not a directory`, { hint: 'Pass a folder for --dir.' })
  const before = existed ? new Set(fs.readdirSync(dir)) : new Set<string>()
  try {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 })
  } catch (err) {
    throw MeshError.READ_ONLY(`cannot create ${dir}: ${(err as Error).message}`, {
      hint: 'Choose a --dir this user may write to.'
    })
  }
  try {
    return await build()
  } catch (err) {
    if (!existed) fs.rmSync(dir, { recursive: true, force: true })
    else
      for (const n of fs.readdirSync(dir))
        if (!before.has(n)) fs.rmSync(path.join(dir, n), { recursive: true, force: true })
    throw err
  }
}
