import { test } from 'node:test'
import assert from 'node:assert/strict'
import path from 'node:path'
import { dump, readDb } from './helpers/db.ts'
import { tsProcess } from './helpers/teardown.ts'
import { invariantsOf, prng, workloadOrigin } from './helpers/workload.ts'

test('SIGKILL of the applying process mid-apply: the replica resumes and ends equal, each unit once', async (t) => {
  const { dir, file, db, w } = workloadOrigin(t, 5)
  const storeDir = path.join(dir, 'store')
  const replicaFile = path.join(dir, 'replica.db')
  // Many small units: capture runs while the workload writes.
  const cap = tsProcess(t, 'test/helpers/capture-proc.ts', [file, storeDir])
  await cap.waitLine(/^ready/)
  for (let i = 0; i < 2500; i++) {
    w.transaction(10)
    await new Promise((r) => setTimeout(r, 1))
  }
  cap.proc.kill('SIGTERM')
  await cap.waitLine(/^stopped/)
  await cap.exited
  db.close()

  const rand = prng(77)
  let kills = 0
  for (let round = 0; round < 8; round++) {
    const ap = tsProcess(t, 'test/helpers/apply-proc.ts', [storeDir, replicaFile])
    const first = await ap.waitLine(/^(applied|caught-up)/, 60_000)
    if (first.startsWith('caught-up')) break
    await new Promise((r) => setTimeout(r, rand() * 40))
    const { signal } = await ap.kill('SIGKILL')
    if (signal === 'SIGKILL') kills++
    // Whatever moment it died at, the replica is a state the origin had: before the unit that creates the
    // tables (a kill that lands that early under load), no table at all.
    const tables = readDb(replicaFile, (r) =>
      r.prepare(`SELECT name FROM sqlite_schema WHERE type = 'table'`).pluck().all()
    )
    if (!tables.includes('accounts')) {
      assert.deepEqual(
        tables.filter((n) => !String(n).startsWith('_mesh_')),
        [],
        `round ${round}: half a schema`
      )
      continue
    }
    const inv = invariantsOf(replicaFile)
    assert.equal(inv.events, inv.maxSerial, `round ${round}: events ${inv.events}, serial ${inv.maxSerial}`)
  }
  const last = tsProcess(t, 'test/helpers/apply-proc.ts', [storeDir, replicaFile])
  await last.waitLine(/^caught-up/, 60_000)
  await last.exited
  assert.ok(kills >= 4, `${kills} kills landed mid-apply`)
  assert.deepEqual(dump(replicaFile), dump(file))
})
