import { test } from 'node:test'
import assert from 'node:assert/strict'
import path from 'node:path'
import Database from 'better-sqlite3'
import { dump, openWal, tmpDir } from './helpers/db.ts'
import { startPipeline } from './helpers/pipeline.ts'
import { startTs } from './helpers/proc.ts'
import { TOTAL, Workload, checkInvariants, setup } from './helpers/workload.ts'

test('random workload and a 200,000-row transaction: the replica equals the origin and never shows a split transaction', async (t) => {
  const { dir, cleanup } = tmpDir()
  t.after(cleanup)
  const file = path.join(dir, 'origin.db')
  const db = openWal(file)
  setup(db)
  const w = new Workload(db, 42)
  for (let i = 0; i < 300; i++) w.transaction()
  const p = await startPipeline(dir, file, { pollMs: 1, blockBytes: 64 * 1024 })
  t.after(() => p.close())

  // After every unit the replica applies, it must be a state the origin had: the money adds up and the
  // event serials have no gap.
  const replicaFile = path.join(dir, 'replica.db')
  const reader = new Database(replicaFile, { readonly: true })
  t.after(() => reader.close())
  let checked = 0
  const violations: string[] = []
  p.apply.on('applied', () => {
    if (p.replica.state() !== 'ready') return
    const inv = checkInvariants(reader)
    checked++
    if (inv.total !== TOTAL) violations.push(`total ${inv.total}`)
    if (inv.events !== inv.maxSerial) violations.push(`events ${inv.events} vs serial ${inv.maxSerial}`)
  })

  for (let round = 0; round < 30; round++) {
    for (let i = 0; i < 40; i++) w.transaction()
    await new Promise((r) => setTimeout(r, 2))
  }
  // One transaction of 200,000 rows.
  db.exec('CREATE TABLE bulk (id INTEGER PRIMARY KEY, name TEXT, amount REAL, payload BLOB)')
  const ins = db.prepare('INSERT INTO bulk (name, amount, payload) VALUES (?, ?, ?)')
  db.transaction(() => {
    for (let i = 0; i < 200_000; i++) ins.run('customer ' + i, i / 7, i % 10 === 0 ? Buffer.from([i & 255, 0]) : null)
    w.transaction()
  })()
  for (let i = 0; i < 100; i++) w.transaction()
  await p.settle()
  assert.deepEqual(violations, [])
  assert.ok(checked > 5, `invariants checked after ${checked} units`)
  const want = dump(file)
  assert.equal(want.bulk.rows.length, 200_000)
  assert.deepEqual(dump(replicaFile), want)
  // The big transaction spanned many blocks of one unit.
  assert.ok(p.originLog.length > 20)
  db.close()
})

test('writes from a separate OS process are captured', async (t) => {
  const { dir, cleanup } = tmpDir()
  t.after(cleanup)
  const file = path.join(dir, 'origin.db')
  const db = openWal(file)
  setup(db)
  db.close()
  const p = await startPipeline(dir, file)
  t.after(() => p.close())
  const writer = startTs('test/helpers/writer.ts', [file, '7', '500'])
  const done = await writer.waitLine(/^done \d+/, 60_000)
  assert.equal(done, 'done 500')
  await p.settle()
  const replicaFile = path.join(dir, 'replica.db')
  assert.deepEqual(dump(replicaFile), dump(file))
  const r = new Database(replicaFile, { readonly: true })
  assert.equal(checkInvariants(r).maxSerial, 500)
  r.close()
})
