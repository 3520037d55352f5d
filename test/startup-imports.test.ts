/**
 * What the shipped `mesh` loads to start (issue 18: `mesh version` in 80 ms, `mesh status` in 200 ms; the times
 * are measured in bench/startup.ts, never here). `mesh version` loads no package; `mesh status` loads none of
 * the daemon's (hypercore, hyperswarm, sodium-native, the database drivers...): its static imports come from
 * node/client.ts, and what only some runs need is imported when needed. A module that pulls the daemon into
 * those imports again fails here, whatever the machine's speed.
 */
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import test from 'node:test'
import { ensureBuilt, MESH_BIN } from './helpers/build.ts'

ensureBuilt()

/** At exit, prints the packages (node_modules) of every CommonJS module loaded: all the heavy ones are. */
const REPORT = `process.on('exit', () => {
  const names = Object.keys(require('node:module')._cache)
    .filter((k) => k.includes('/node_modules/'))
    .map((k) => k.slice(k.lastIndexOf('/node_modules/') + 14).split('/').slice(0, k.includes('/@') ? 2 : 1).join('/'))
  process.stderr.write('LOADED ' + JSON.stringify([...new Set(names)]) + '\\n')
})`

/** The packages `mesh ARGS` loaded, and its exit code. */
async function packagesLoaded(args: string[]): Promise<{ code: number | null; packages: string[] }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mesh-imports-'))
  const preload = path.join(dir, 'report.cjs')
  fs.writeFileSync(preload, REPORT)
  try {
    return await new Promise((resolve, reject) => {
      execFile(process.execPath, ['--require', preload, MESH_BIN, ...args], (err, _stdout, stderr) => {
        const line = /^LOADED (.*)$/m.exec(stderr)
        if (!line) return reject(new Error(`no report of loaded modules: ${stderr}`))
        const code = err ? ((err as { code?: number }).code ?? null) : 0
        resolve({ code, packages: JSON.parse(line[1]) as string[] })
      })
    })
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

test('mesh version loads no package', async () => {
  const r = await packagesLoaded(['version'])
  assert.equal(r.code, 0)
  assert.deepEqual(r.packages, [])
})

test("mesh status loads none of the daemon's packages (only the flag-typo suggester)", async () => {
  // A data directory that does not exist: status answers UNKNOWN (3) after every static import has loaded.
  const r = await packagesLoaded(['status', '--dir', path.join(os.tmpdir(), 'mesh-imports-none', 'site')])
  assert.equal(r.code, 3)
  assert.deepEqual(r.packages, ['fastest-levenshtein'])
})
