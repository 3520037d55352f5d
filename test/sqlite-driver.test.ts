import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import { createRequire } from 'node:module'
import path from 'node:path'
import Database, { DRIVER } from '../adapters/sqlite/better-sqlite3.ts'
import { ROOT } from './helpers/proc.ts'

const FOLDERS = ['adapters', 'bench', 'node', 'test', 'tools']
const SELF = path.join(ROOT, 'adapters', 'sqlite', 'better-sqlite3.ts')

function sources(dir: string): string[] {
  return fs
    .readdirSync(dir, { withFileTypes: true, recursive: true })
    .filter((e) => e.isFile() && e.name.endsWith('.ts'))
    .map((e) => path.join(e.parentPath, e.name))
}

test('every value import of better-sqlite3 goes through adapters/sqlite/better-sqlite3.ts', () => {
  const direct: string[] = []
  for (const file of FOLDERS.flatMap((f) => sources(path.join(ROOT, f)))) {
    if (file === SELF) continue
    const text = fs.readFileSync(file, 'utf8')
    // A type import is erased; a value import, require or dynamic import would load a release of our choosing.
    const loads = /^\s*import\s+(?!type\b)[^'"]*from\s+'better-sqlite3'|(require|import)\(\s*'better-sqlite3'/m
    if (loads.test(text)) direct.push(path.relative(ROOT, file))
  }
  assert.deepEqual(direct, [], `these load better-sqlite3 themselves:\n${direct.join('\n')}`)
})

test('the release for this Node.js is the one loaded, and it opens a database', () => {
  const major = Number(process.versions.node.split('.')[0])
  assert.equal(DRIVER, major >= 22 ? 'better-sqlite3-13' : 'better-sqlite3')
  const pkg = createRequire(SELF)(`${DRIVER}/package.json`) as { version: string }
  assert.equal(pkg.version.split('.')[0], major >= 22 ? '13' : '12')
  const db = new Database(':memory:')
  try {
    assert.equal(db.prepare('SELECT 1 + 1 AS two').pluck().get(), 2)
  } finally {
    db.close()
  }
})
