/**
 * The origin's SQLite file replaced (issue 14, item 1), on real files, with the writes and the replacements
 * made by other processes: an old backup restored over it (through SQLite while capture runs, with `cp` while
 * it is stopped), the file deleted and created again, the file moved and a new one put in its place. Each
 * ends with the replica compared with the origin value by value (storage class and bytes). Bad input: a file
 * that is not SQLite, or another application's database, is refused with nothing appended to the log.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync, spawnSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import Corestore from 'corestore'
import { SqliteCapture } from '../adapters/index.ts'
import { CaptureLoop, DatasetLog } from '../node/index.ts'
import { dump, openWal, tmpDir } from './helpers/db.ts'
import { teardown, type TestContext } from './helpers/teardown.ts'
import { waitUntil } from './helpers/mesh.ts'
import { startPipeline, type Pipeline } from './helpers/pipeline.ts'
import { startTs } from './helpers/proc.ts'
import { SCHEMA, Workload, setup } from './helpers/workload.ts'

interface Setup {
  dir: string
  file: string
  replica: string
  p: Pipeline
}

/** An origin with some history, captured and applied; the test's own connection closed again. */
async function seeded(t: TestContext, txs = 150): Promise<Setup & { old: string }> {
  const dir = tmpDir(t, 'mesh-replaced-')
  const file = path.join(dir, 'shop.db')
  const old = path.join(dir, 'old.db')
  const db = openWal(file)
  setup(db)
  const w = new Workload(db, 5)
  for (let i = 0; i < txs; i++) w.transaction()
  const s: Setup & { old: string } = {
    dir,
    file,
    old,
    replica: path.join(dir, 'replica.db'),
    p: await startPipeline(dir, file)
  }
  // Whichever pipeline the test runs last is closed at the end (it may start new ones after a close).
  teardown(t, () => s.p.close().catch(() => {}))
  await s.p.settle()
  // The backup: SQLite's own backup of the live file, then more writes that the backup lacks.
  await db.backup(old)
  for (let i = 0; i < txs; i++) w.transaction()
  db.close()
  await s.p.settle()
  assert.deepEqual(dump(s.replica), dump(file))
  return s
}

async function run(script: string, args: string[]): Promise<void> {
  const c = startTs(script, args)
  await c.waitLine(/^done/, 60_000)
  await c.kill()
}

/** Writes by another process after the replacement; then every copy must equal the origin, value by value. */
async function writeAndCompare(s: Setup, seed: number): Promise<void> {
  await run('test/helpers/writer.ts', [s.file, String(seed), '40'])
  await s.p.settle()
  assert.deepEqual(dump(s.replica), dump(s.file))
}

function removeDb(file: string): void {
  for (const f of [file, `${file}-wal`, `${file}-shm`]) fs.rmSync(f, { force: true })
}

function moveDb(file: string, to: string): void {
  for (const x of ['', '-wal', '-shm']) if (fs.existsSync(file + x)) fs.renameSync(file + x, to + x)
}

function userTablesOf(file: string): string[] {
  return Object.keys(dump(file)).sort()
}

test('an old backup restored over the live file through SQLite (same inode) while capture runs', async (t) => {
  const s = await seeded(t)
  const backup = JSON.stringify(dump(s.old))
  const lengthBefore = s.p.originLog.length
  await run('test/helpers/sql-proc.ts', [s.file, 'restore', s.old])
  assert.equal(JSON.stringify(dump(s.file)), backup, 'the restore put the backup in place')
  await waitUntil('capture copied the database again', () => s.p.capture.stats.resnapshots === 1, 30_000)
  await s.p.settle()
  assert.ok(s.p.originLog.length > lengthBefore)
  assert.equal(JSON.stringify(dump(s.replica)), backup, 'the copy equals the restored file')
  await writeAndCompare(s, 41)
  assert.equal(s.p.capture.stats.resnapshots, 1)
})

test('sqlite3 program: `.restore old.db` into the live file while capture runs', async (t) => {
  const probe = spawnSync('sqlite3', ['-version'])
  assert.ok(probe.status === 0, 'this test needs the sqlite3 program (apt-get install sqlite3); it is missing')
  const s = await seeded(t)
  const backup = JSON.stringify(dump(s.old))
  execFileSync('sqlite3', [s.file, `.restore ${s.old}`])
  await waitUntil('capture copied the database again', () => s.p.capture.stats.resnapshots === 1, 30_000)
  await s.p.settle()
  assert.equal(JSON.stringify(dump(s.replica)), backup)
  await writeAndCompare(s, 42)
})

test('`cp old.db shop.db` with capture stopped: noticed at the next start, copied again', async (t) => {
  const s = await seeded(t)
  await s.p.close()
  execFileSync('cp', [s.old, s.file])
  s.p = await startPipeline(s.dir, s.file)
  await s.p.settle()
  assert.equal(s.p.capture.stats.resnapshots, 1)
  assert.deepEqual(dump(s.replica), dump(s.old))
  await writeAndCompare(s, 43)
  // Stopped and started again with nothing replaced: no copy.
  await s.p.close()
  s.p = await startPipeline(s.dir, s.file)
  await writeAndCompare(s, 44)
  assert.equal(s.p.capture.stats.resnapshots, 0)
})

test('the file deleted and created again by another program while capture runs', async (t) => {
  const s = await seeded(t)
  removeDb(s.file)
  await run('test/helpers/sql-proc.ts', [
    s.file,
    'exec',
    `${SCHEMA} INSERT INTO accounts VALUES (1, 1000000); INSERT INTO notes VALUES ('new', 1.5);`
  ])
  await waitUntil('capture copied the database again', () => s.p.capture.stats.resnapshots === 1, 30_000)
  await s.p.settle()
  assert.deepEqual(dump(s.replica), dump(s.file))
  await writeAndCompare(s, 45)
})

test('the file moved away and a new one put in its place while capture runs; the moved one left intact', async (t) => {
  const s = await seeded(t)
  const before = JSON.stringify(dump(s.file))
  const moved = path.join(s.dir, 'moved.db')
  moveDb(s.file, moved)
  await run('test/helpers/sql-proc.ts', [s.file, 'exec', `${SCHEMA} INSERT INTO items VALUES ('x', 1, 2.5, x'00ff');`])
  await waitUntil('capture copied the database again', () => s.p.capture.stats.resnapshots === 1, 30_000)
  await s.p.settle()
  assert.deepEqual(dump(s.replica), dump(s.file))
  await writeAndCompare(s, 46)
  assert.equal(JSON.stringify(dump(moved)), before)
})

/** Starts capture on the file once, with no loop: the error it stops with, and the log's length after. */
async function startOnce(dir: string, file: string): Promise<{ code: string | null; length: number }> {
  const store = new Corestore(path.join(dir, 'store-a'))
  const log = await DatasetLog.writable(store, path.join(dir, 'store-a'), 'ds1', 0)
  const side = new SqliteCapture({ path: file, ackIntervalMs: 0 })
  const loop = new CaptureLoop({
    capture: side,
    log,
    header: { dataset: 'ds1', name: 'shop', engine: 'sqlite', epoch: 0, site: 'a', createdAt: Date.now(), parent: null }
  })
  let code: string | null = null
  try {
    await loop.prepare()
  } catch (err) {
    code = (err as { code: string }).code
  }
  const length = log.length
  await side.close().catch(() => {})
  await store.close()
  return { code, length }
}

for (const kind of ['not SQLite', "another application's database"] as const) {
  const name = `bad input, ${kind}, capture running and stopped: refused, nothing appended, copy untouched; put back`
  test(name, async (t) => {
    const s = await seeded(t)
    const copy = JSON.stringify(dump(s.replica))
    const length = s.p.originLog.length
    const original = path.join(s.dir, 'original.db')
    const code = kind === 'not SQLite' ? 'NOT_SQLITE' : 'WRONG_DATABASE'
    const replace = async () => {
      moveDb(s.file, original)
      if (kind === 'not SQLite') fs.writeFileSync(s.file, 'these are not the rows you are looking for\n'.repeat(200))
      else
        await run('test/helpers/sql-proc.ts', [
          s.file,
          'exec',
          "CREATE TABLE patients (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO patients VALUES (1, 'x');"
        ])
    }
    const foreign = () =>
      kind === 'not SQLite' ? fs.readFileSync(s.file, 'latin1') : JSON.stringify(userTablesOf(s.file))

    // Running.
    await replace()
    const was = foreign()
    await waitUntil(`capture stops with ${code}`, () => s.p.capture.stats.lastError?.code === code, 30_000)
    await new Promise((r) => setTimeout(r, 500))
    assert.equal(s.p.originLog.length, length, 'nothing appended')
    assert.equal(JSON.stringify(dump(s.replica)), copy, 'the copy untouched')
    assert.equal(foreign(), was, 'the foreign file untouched')
    if (kind !== 'not SQLite') {
      const own = openWal(s.file)
      const mesh = own
        .prepare("SELECT count(*) FROM sqlite_schema WHERE name LIKE '\\_mesh%' ESCAPE '\\'")
        .pluck()
        .get() as number
      own.close()
      assert.equal(mesh, 0, 'no capture objects written into the foreign database')
    }
    // Put back: captured on, without a copy.
    removeDb(s.file)
    moveDb(original, s.file)
    await waitUntil('capture recovers', () => s.p.capture.stats.lastError === null, 30_000)
    await writeAndCompare(s, 47)
    assert.equal(s.p.capture.stats.resnapshots, 0)

    // Stopped.
    await s.p.close()
    const length2 = (await startOnce(s.dir, s.file)).length
    await replace()
    const again = await startOnce(s.dir, s.file)
    assert.equal(again.code, code)
    assert.equal(again.length, length2, 'nothing appended')
    removeDb(s.file)
    moveDb(original, s.file)
    s.p = await startPipeline(s.dir, s.file)
    await writeAndCompare(s, 48)
    assert.equal(s.p.capture.stats.resnapshots, 0)
  })
}
