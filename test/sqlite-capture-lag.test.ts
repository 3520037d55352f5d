/**
 * SQLite capture's lag (CaptureSide.lag, shown as the origin's `captureLag` in `mesh status`): what the file
 * committed that the log does not hold yet, in bytes of change rows and in seconds, measured against a real
 * file and a real log; zero once the log holds everything, and not before the batch read is acknowledged.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import path from 'node:path'
import { SqliteCapture } from '../adapters/index.ts'
import { sqliteOrigin } from './helpers/db.ts'
import { captureLoop, openLog } from './helpers/pipeline.ts'
import { teardown } from './helpers/teardown.ts'

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

test('SQLite capture lag: the change rows the log lacks and since when, then zero once it holds them', async (t) => {
  const { dir, file, db } = sqliteOrigin(t)
  db.exec('CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT); CREATE TABLE tags (name TEXT PRIMARY KEY)')
  const { store, log } = await openLog(path.join(dir, 'store'))
  const side = new SqliteCapture({ path: file, ackIntervalMs: 0 })
  const loop = captureLoop(side, log)
  teardown(t, async () => {
    await side.close()
    await store.close()
  })
  await loop.prepare()
  while ((await loop.step()) > 0);
  assert.deepEqual(await side.lag(), { bytes: 0, seconds: 0 }, 'caught up')

  const insert = db.prepare('INSERT INTO orders (item) VALUES (?)')
  db.transaction(() => {
    for (let i = 0; i < 1000; i++) insert.run(`item ${i}`)
  })()
  db.prepare('INSERT INTO tags (name) VALUES (?)').run('x'.repeat(500))
  await sleep(1100)
  const behind = (await side.lag())!
  // 1,000 integer keys (8 bytes each, and 8 for the change row's own number), one 500-byte text key.
  assert.equal(behind.bytes, 1000 * 16 + 508)
  assert.ok(behind.seconds >= 1, `${behind.seconds} s behind`)

  const batch = (await side.read())!
  assert.equal(batch.rows, 1001)
  assert.ok((await side.lag())!.bytes > 0, 'read but not in the log yet: still behind')
  await side.ack(batch.source)
  assert.deepEqual(await side.lag(), { bytes: 0, seconds: 0 }, 'the log holds it')

  db.prepare('UPDATE orders SET item = ? WHERE id = 1').run('changed')
  while ((await loop.step()) > 0);
  assert.deepEqual(await side.lag(), { bytes: 0, seconds: 0 }, 'captured by the loop')
})
