/**
 * A small real filesystem that fills up: a tmpfs mounted for the test (needs root, as on the CI machine).
 * Set MESH_TEST_NO_MOUNT=1 to run the suite without it; the full-disk tests then fail with that reason
 * instead of passing, so nothing is skipped in silence.
 */
import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import { teardown, type TestContext } from './teardown.ts'

/** Mounts a tmpfs of `size` at `dir` for the test; it is unmounted when the test ends. */
export function tmpfs(t: TestContext, dir: string, size: string): { resize(size: string): void } {
  if (process.env.MESH_TEST_NO_MOUNT === '1') {
    throw new Error('MESH_TEST_NO_MOUNT=1: the full-disk test needs a tmpfs mount (root) and cannot run here')
  }
  fs.mkdirSync(dir, { recursive: true })
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir], { stdio: 'pipe' })
  } catch (err) {
    throw new Error(
      `cannot mount a tmpfs at ${dir} (the full-disk tests need root): ${(err as Error).message}. ` +
        'Run the tests as root, or set MESH_TEST_NO_MOUNT=1 to leave these tests out (they are then ' +
        'reported as failed).'
    )
  }
  teardown(t, () => execFileSync('umount', ['-l', dir], { stdio: 'pipe' }))
  return {
    resize(s) {
      execFileSync('mount', ['-o', `remount,size=${s}`, dir], { stdio: 'pipe' })
    }
  }
}
