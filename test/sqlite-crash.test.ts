import { test } from 'node:test'
import assert from 'node:assert/strict'
import path from 'node:path'
import { SqliteApply } from '../adapters/index.ts'
import { decodeSqliteSource } from '../adapters/sqlite/capture.ts'
import { dump } from './helpers/db.ts'
import { applyLoop, openLog } from './helpers/pipeline.ts'
import { teardown, tsProcess } from './helpers/teardown.ts'
import { invariantsOf, prng, workloadOrigin } from './helpers/workload.ts'

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

test(
  'SIGKILL of the capturing process at 20 random moments, with another process writing: nothing lost, ' +
    'nothing doubled',
  async (t) => {
    // Existing data, so that early kills land in the middle of the initial snapshot.
    const { dir, file, db, w } = workloadOrigin(t, 1)
    const storeDir = path.join(dir, 'store')
    const replicaFile = path.join(dir, 'replica.db')
    for (let i = 0; i < 1500; i++) w.transaction(20)
    db.close()

    const writer = tsProcess(t, 'test/helpers/writer.ts', [file, '99', '0', '1'])
    await writer.waitLine(/^ready/)
    const rand = prng(2024)
    const marks = new Map<number, number>()
    let checkedLength = 0
    let killsMidSnapshot = 0

    for (let round = 0; round < 20; round++) {
      const cap = tsProcess(t, 'test/helpers/capture-proc.ts', [file, storeDir])
      // Kill at a random moment: sometimes before it is even ready (mid-snapshot, mid-append).
      if (rand() < 0.3) {
        await sleep(150 + rand() * 400)
        if (!cap.lines.includes('ready')) killsMidSnapshot++
      } else {
        await cap.waitLine(/^ready/)
        await sleep(rand() * 300)
      }
      await cap.kill('SIGKILL')

      // Restart after the kill, let it run with the writer still writing, then stop the writer and let capture
      // catch up to the last commit before a clean stop.
      const again = tsProcess(t, 'test/helpers/capture-proc.ts', [file, storeDir])
      await again.waitLine(/^ready/, 60_000)
      await sleep(rand() * 100)
      writer.proc.kill('SIGSTOP')
      await sleep(20)
      again.proc.kill('SIGTERM')
      await again.waitLine(/^stopped/, 60_000)
      await again.exited

      // Apply everything the log holds to the replica (continuing from where the last round left it).
      const { store, log } = await openLog(storeDir)
      teardown(t, () => store.close())
      const side = new SqliteApply({ path: replicaFile })
      teardown(t, () => side.close())
      const loop = applyLoop(log, side)
      await side.open()
      await loop.catchUp()
      assert.equal(side.position()?.length, log.length)
      assert.equal(side.state(), 'ready')
      // Nothing doubled: every unit's capture position moves past the one before it, per table, never back.
      for (let i = Math.max(1, checkedLength); i < log.length; i++) {
        const e = await log.entry(i)
        if (e?.kind !== 'transaction' || e.source === null) continue
        for (const m of decodeSqliteSource(e.source).tables) {
          const prev = marks.get(m.id) ?? 0
          assert.ok(m.seq >= prev, `table ${m.id} position went back from ${prev} to ${m.seq} at block ${i}`)
          marks.set(m.id, m.seq)
        }
      }
      checkedLength = log.length
      await side.close()
      await store.close()

      assert.deepEqual(dump(replicaFile), dump(file), `round ${round}`)
      const inv = invariantsOf(replicaFile)
      assert.equal(inv.events, inv.maxSerial, 'no event lost or doubled')
      writer.proc.kill('SIGCONT')
    }
    writer.proc.kill('SIGTERM')
    const done = await writer.waitLine(/^done \d+/)
    assert.ok(Number(done.split(' ')[1]) > 100, 'the writer kept writing throughout')
    t.diagnostic(`kills before ready (mid-snapshot or start-up): ${killsMidSnapshot}`)
  }
)
