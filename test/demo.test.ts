import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import os from 'node:os'
import { mesh } from './helpers/mesh.ts'

test('`mesh demo` runs three sites that protect each other, loses one, and exits 0 only when every copy equals its origin', async () => {
  const before = new Set(fs.readdirSync(os.tmpdir()).filter((n) => n.startsWith('branchmesh-demo-')))
  const r = await mesh(['demo'], { timeoutMs: 120_000 })
  assert.equal(r.code, 0, r.stdout + r.stderr)
  assert.match(r.stdout, /^PASS: every copy is identical/m)
  assert.match(r.stdout, /identical \(3 tables, \d+ rows\)/)
  const left = fs.readdirSync(os.tmpdir()).filter((n) => n.startsWith('branchmesh-demo-') && !before.has(n))
  assert.deepEqual(left, [], 'the demo removed its temporary folder')
})
