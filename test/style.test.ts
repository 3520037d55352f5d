import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { ROOT } from './helpers/proc.ts'

const FOLDERS = ['adapters', 'bench', 'node', 'protocol', 'test', 'tools', 'types']
const LIMIT = 120

/** Every TypeScript and JavaScript source file of the project (golden fixtures are data, not source). */
function sources(dir: string): string[] {
  const out: string[] = []
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name)
    if (e.isDirectory()) {
      if (e.name !== 'node_modules' && !/^format-\d+$/.test(e.name)) out.push(...sources(p))
    } else if (/\.(ts|js|mjs)$/.test(e.name)) out.push(p)
  }
  return out
}

test(`every source line is at most ${LIMIT} characters`, () => {
  const long: string[] = []
  for (const file of FOLDERS.flatMap((f) => sources(path.join(ROOT, f)))) {
    fs.readFileSync(file, 'utf8')
      .split('\n')
      .forEach((line, i) => {
        if (line.length > LIMIT) long.push(`${path.relative(ROOT, file)}:${i + 1} (${line.length})`)
      })
  }
  assert.deepEqual(long, [], `lines over ${LIMIT} characters:\n${long.join('\n')}`)
})
