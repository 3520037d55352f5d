import { test } from 'node:test'
import assert from 'node:assert/strict'
import path from 'node:path'
import Corestore from 'corestore'
import Database from 'better-sqlite3'
import { SqliteApply } from '../adapters/index.ts'
import { decodeSqliteSource } from '../adapters/sqlite/capture.ts'
import { ApplyLoop, DatasetLog } from '../node/index.ts'
import { dump, openWal, tmpDir } from './helpers/db.ts'
import { startTs } from './helpers/proc.ts'
import { Workload, checkInvariants, prng, setup } from './helpers/workload.ts'

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

test('SIGKILL of the capturing process at 20 random moments, with another process writing: nothing lost, nothing doubled', async (t) => {
  const { dir, cleanup } = tmpDir()
  t.after(cleanup)
  const file = path.join(dir, 'origin.db')
  const storeDir = path.join(dir, 'store')
  const replicaFile = path.join(dir, 'replica.db')
  // Existing data, so that early kills land in the middle of the initial snapshot.
  const db = openWal(file)
  setup(db)
  const w = new Workload(db, 1)
  for (let i = 0; i < 1500; i++) w.transaction(20)
  db.close()

  const writer = startTs('test/helpers/writer.ts', [file, '99', '0', '1'])
  t.after(() => writer.kill('SIGKILL'))
  await writer.waitLine(/^ready/)
  const rand = prng(2024)
  const marks = new Map<number, number>()
  let checkedLength = 0
  let killsMidSnapshot = 0

  for (let round = 0; round < 20; round++) {
    const cap = startTs('test/helpers/capture-proc.ts', [file, storeDir])
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
    const again = startTs('test/helpers/capture-proc.ts', [file, storeDir])
    await again.waitLine(/^ready/, 60_000)
    await sleep(rand() * 100)
    writer.proc.kill('SIGSTOP')
    await sleep(20)
    again.proc.kill('SIGTERM')
    await again.waitLine(/^stopped/, 60_000)
    await again.exited

    // Apply everything the log holds to the replica (continuing from where the last round left it).
    const store = new Corestore(storeDir)
    const log = await DatasetLog.writable(store, storeDir, 'ds1', 0)
    const side = new SqliteApply({ path: replicaFile })
    const loop = new ApplyLoop({ segments: [{ log, epoch: 0, end: null }], apply: side })
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
    const r = new Database(replicaFile, { readonly: true })
    const inv = checkInvariants(r)
    r.close()
    assert.equal(inv.events, inv.maxSerial, 'no event lost or doubled')
    writer.proc.kill('SIGCONT')
  }
  writer.proc.kill('SIGTERM')
  const done = await writer.waitLine(/^done \d+/)
  assert.ok(Number(done.split(' ')[1]) > 100, 'the writer kept writing throughout')
  t.diagnostic(`kills before ready (mid-snapshot or start-up): ${killsMidSnapshot}`)
})
