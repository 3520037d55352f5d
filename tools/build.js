#!/usr/bin/env node
// `npm run build` (which `prepare` runs on `npm install`): compiles the TypeScript into dist/ with tsc
// (tsconfig.build.json: JavaScript whose imports end in .js, and declarations), copies beside their modules the
// files that are not TypeScript (the dashboard's page), and makes the bin executable. Plain JavaScript, so that it
// runs before anything is built. dist/ is removed first, so no output of a deleted source stays; `--keep` leaves
// it (test/helpers/build.ts rebuilds that way while other test files may be running the built mesh), and also
// writes the JavaScript when tsc finds type errors (`npm test` type-checks anyway).
import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import { createRequire } from 'node:module'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const DIST = path.join(ROOT, 'dist')
/** Files the built modules read beside themselves (node/dashboard/server.ts serves these). */
const ASSETS = ['node/dashboard/index.html', 'node/dashboard/app.js', 'node/dashboard/app.css']
const BIN = path.join(DIST, 'tools', 'mesh.js')

const keep = process.argv.includes('--keep')
if (!keep) fs.rmSync(DIST, { recursive: true, force: true })
const tsc = path.join(path.dirname(createRequire(import.meta.url).resolve('typescript/package.json')), 'bin', 'tsc')
try {
  execFileSync(process.execPath, [tsc, '-p', path.join(ROOT, 'tsconfig.build.json')], { cwd: ROOT, stdio: 'inherit' })
} catch (err) {
  // tsc exits 2 on type errors, printed above, having written the JavaScript all the same.
  if (!keep || err.status !== 2) process.exit(typeof err.status === 'number' ? err.status : 1)
}
for (const file of ASSETS) fs.cpSync(path.join(ROOT, file), path.join(DIST, file))
fs.chmodSync(BIN, 0o755)
// tsc leaves an unchanged output file as it was: the bin's time says when dist/ was last brought up to date.
const now = new Date()
fs.utimesSync(BIN, now, now)
