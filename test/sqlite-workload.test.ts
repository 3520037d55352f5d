import { test } from 'node:test'
import assert from 'node:assert/strict'
import path from 'node:path'
import { dump, sqliteDb } from './helpers/db.ts'
import { sqlitePipeline } from './helpers/pipeline.ts'
import { teardown, tsProcess } from './helpers/teardown.ts'
import { TOTAL, checkInvariants, workloadOrigin } from './helpers/workload.ts'

test(
  'random workload and a 200,000-row transaction: the replica equals the origin and never shows a split ' +
    'transaction',
  async (t) => {
    const { dir, file, db, w } = workloadOrigin(t, 42)
    for (let i = 0; i < 300; i++) w.transaction()
    const p = await sqlitePipeline(t, dir, file, { pollMs: 1, blockBytes: 64 * 1024 })

    // After every unit the replica applies, it must be a state the origin had: the money adds up and the
    // event serials have no gap.
    const replicaFile = path.join(dir, 'replica.db')
    const reader = sqliteDb(t, replicaFile, { readonly: true })
    let checked = 0
    const violations: string[] = []
    const check = () => {
      if (p.replica.state() !== 'ready') return
      const inv = checkInvariants(reader)
      checked++
      if (inv.total !== TOTAL) violations.push(`total ${inv.total}`)
      if (inv.events !== inv.maxSerial) violations.push(`events ${inv.events} vs serial ${inv.maxSerial}`)
    }
    p.apply.on('applied', check)
    // The reader closes first when the test ends: the check goes before it (an idle capture may still append).
    teardown(t, () => p.apply.off('applied', check))

    for (let round = 0; round < 30; round++) {
      for (let i = 0; i < 40; i++) w.transaction()
      await new Promise((r) => setTimeout(r, 2))
    }
    // One transaction of 200,000 rows.
    db.exec('CREATE TABLE bulk (id INTEGER PRIMARY KEY, name TEXT, amount REAL, payload BLOB)')
    const ins = db.prepare('INSERT INTO bulk (name, amount, payload) VALUES (?, ?, ?)')
    db.transaction(() => {
      for (let i = 0; i < 200_000; i++) ins.run(`customer ${i}`, i / 7, i % 10 === 0 ? Buffer.from([i & 255, 0]) : null)
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
  }
)

test('writes from a separate OS process are captured', async (t) => {
  const { dir, file, db } = workloadOrigin(t, 7)
  db.close()
  const p = await sqlitePipeline(t, dir, file)
  const writer = tsProcess(t, 'test/helpers/writer.ts', [file, '7', '500'])
  const done = await writer.waitLine(/^done \d+/, 60_000)
  assert.equal(done, 'done 500')
  await p.settle()
  const replicaFile = path.join(dir, 'replica.db')
  assert.deepEqual(dump(replicaFile), dump(file))
  const r = sqliteDb(t, replicaFile, { readonly: true })
  assert.equal(checkInvariants(r).maxSerial, 500)
  r.close()
})
