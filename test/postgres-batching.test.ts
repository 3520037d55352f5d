/**
 * Batching with PostgreSQL logical capture (issue 16 item 3): while a group waits, nothing of it is in the log
 * and the slot is not confirmed past it (the server keeps it); stopping the loop appends the group as one unit,
 * only then is the slot confirmed past it, and the replica equals the origin. Real cluster, real slot.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { PostgresCapture } from '../adapters/index.ts'
import { waitUntil } from './helpers/mesh.ts'
import { pgDump } from './helpers/pg.ts'
import { pgPipeline } from './helpers/pipeline.ts'

const slot = 'branchmesh_batch'

test('a waiting group is neither in the log nor confirmed at the slot; stop appends it as one unit', async (t) => {
  const { cluster, origin, replicaUrl, capture, p, run } = await pgPipeline(t, {
    init: 'CREATE TABLE sale (id int PRIMARY KEY, item text NOT NULL, cents int NOT NULL)',
    capture: (url) => new PostgresCapture({ url, slot, publication: slot }),
    // An hour: the group is never due within the test; only stop() sends it.
    batchMs: 3_600_000
  })
  await p.settle()
  const before = p.originLog.length
  for (let i = 1; i <= 20; i++) await run(`INSERT INTO sale VALUES (${i}, 'espresso ${i}', ${100 + i})`)
  await run(`UPDATE sale SET cents = cents + 1 WHERE id <= 5`)
  await run(`DELETE FROM sale WHERE id = 20`)
  const [{ lsn }] = await cluster.query('SELECT pg_current_wal_lsn()::text AS lsn', [], 'origin')
  const confirmed = async () =>
    (
      await cluster.query(
        `SELECT (confirmed_flush_lsn >= $1::pg_lsn)::text AS past FROM pg_replication_slots WHERE slot_name = $2`,
        [lsn, slot],
        'origin'
      )
    )[0].past === 'true'

  // The capture sees the group waiting (its messages arrived), and still appends nothing.
  await waitUntil('the group is seen waiting', async () => ((await capture.lag!())?.bytes ?? 0) > 0)
  await new Promise((r) => setTimeout(r, 300))
  assert.equal(p.originLog.length, before, 'nothing appended while the group waits')
  assert.equal(await confirmed(), false, 'the slot is not confirmed past a waiting group')

  await p.capture.stop()
  assert.equal(p.originLog.length, before + 1, 'the 22 transactions are one unit of one block')
  await waitUntil('the slot is confirmed past the appended group', confirmed)
  await p.apply.waitFor(p.originLog.length)
  assert.deepEqual(await pgDump(replicaUrl), await pgDump(origin))
})
