import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { MeshError } from '../protocol/index.ts'
import { SqliteApply, SqliteCapture } from '../adapters/index.ts'
import { dump, sqliteDb, sqliteOrigin, tmpDir } from './helpers/db.ts'
import { memoryLogger } from './helpers/logger.ts'
import { applyLoop, captureLoop, openLog, sqlitePipeline } from './helpers/pipeline.ts'
import { teardown } from './helpers/teardown.ts'
import { tmpfs } from './helpers/tmpfs.ts'

async function rejectsWith(p: Promise<unknown>, code: string): Promise<MeshError> {
  try {
    await p
  } catch (err) {
    assert.ok(err instanceof MeshError, `expected MeshError ${code}, got ${err}`)
    assert.equal(err.code, code, err.message)
    assert.ok(err.hint && err.hint.length > 10, 'every error says what to do')
    return err
  }
  assert.fail(`expected ${code}, but it succeeded`)
}

test('a file that is not SQLite, and a missing file, are refused with what to do', async (t) => {
  const dir = tmpDir(t)
  const junk = path.join(dir, 'junk.db')
  fs.writeFileSync(junk, Buffer.alloc(8192, 'not a database, just text. '))
  await rejectsWith(new SqliteCapture({ path: junk }).open(), 'NOT_SQLITE')
  await rejectsWith(new SqliteCapture({ path: path.join(dir, 'missing.db') }).open(), 'NOT_FOUND')
  await rejectsWith(new SqliteCapture({ path: dir }).open(), 'NOT_SQLITE')
  // The file was not touched.
  assert.equal(fs.readFileSync(junk).toString().slice(0, 10), 'not a data')
  // A replica path that holds someone else's database is refused too, not written into.
  const theirs = path.join(dir, 'theirs.db')
  sqliteDb(t, theirs).exec('CREATE TABLE precious (x)')
  await rejectsWith(new SqliteApply({ path: theirs }).open(), 'BAD_REPLICA')
})

test('a locked database is a retryable DATABASE_LOCKED, and capture resumes once the lock goes', async (t) => {
  const { dir, file, db } = sqliteOrigin(t)
  db.exec('CREATE TABLE a (id INTEGER PRIMARY KEY, v)')
  db.exec('BEGIN EXCLUSIVE')
  const err = await rejectsWith(new SqliteCapture({ path: file, busyTimeoutMs: 100 }).open(), 'DATABASE_LOCKED')
  assert.equal(err.retryable, true)
  db.exec('COMMIT')

  const p = await sqlitePipeline(t, dir, file)
  db.exec("INSERT INTO a (v) VALUES ('before')")
  await p.settle()
  // The application holds the write lock for a while: capture keeps what it has and acknowledges later.
  db.exec('BEGIN IMMEDIATE')
  db.exec("INSERT INTO a (v) VALUES ('held')")
  await new Promise((r) => setTimeout(r, 300))
  db.exec('COMMIT')
  db.exec("INSERT INTO a (v) VALUES ('after')")
  await p.settle()
  assert.deepEqual(dump(path.join(dir, 'replica.db')), dump(file))
})

test('tables that cannot be captured are named with the reason; the rest replicate', async (t) => {
  const { dir, file, db } = sqliteOrigin(t)
  db.exec(
    'CREATE TABLE a (id INTEGER PRIMARY KEY, v); CREATE VIRTUAL TABLE docs USING fts5(body); INSERT ' +
      "INTO docs VALUES ('hello'); CREATE TABLE _mesh_notes (v); " +
      'CREATE TABLE e (id INTEGER PRIMARY KEY, code TEXT); CREATE UNIQUE INDEX e_lower ON e (lower(code))'
  )
  const logger = memoryLogger()
  const side = new SqliteCapture({ path: file, logger })
  await side.open()
  const skipped = side.skipped()
  assert.ok(skipped.some((s) => s.table === 'docs' && /virtual table/.test(s.reason)))
  assert.ok(skipped.some((s) => s.table === 'docs_data' && /shadow table of docs/.test(s.reason)))
  // A user table that takes branchmesh's own prefix is named too (it was left out without a word).
  assert.ok(skipped.some((s) => s.table === '_mesh_notes' && /_mesh_/.test(s.reason)))
  assert.ok(!skipped.some((s) => s.table === '_mesh_meta' || s.table === '_mesh_tables'))
  // Captured, with a warning: a REPLACE conflict through a UNIQUE index on an expression is not covered.
  assert.ok(!skipped.some((s) => s.table === 'e'))
  assert.ok(logger.lines.some((l) => l.level === 'warn' && /UNIQUE index e_lower of table e/.test(l.msg)))
  assert.ok(logger.lines.some((l) => l.level === 'warn' && l.msg.startsWith('CANNOT_CAPTURE: table docs')))
  await side.close()

  const p = await sqlitePipeline(t, dir, file)
  db.exec("INSERT INTO a (v) VALUES (1), (2); INSERT INTO docs VALUES ('more')")
  await p.settle()
  const r = dump(path.join(dir, 'replica.db'))
  assert.deepEqual(Object.keys(r), ['a', 'e'])
  assert.deepEqual(r.a, dump(file).a)
})

test('a damaged change row or a dropped capture trigger never makes the replica wrong', async (t) => {
  const { dir, file, db } = sqliteOrigin(t)
  db.exec("CREATE TABLE a (id INTEGER PRIMARY KEY, v); INSERT INTO a (v) VALUES ('x'), ('y')")
  const { store, log } = await openLog(path.join(dir, 'store'))
  teardown(t, () => store.close())
  const logger = memoryLogger()
  const side = new SqliteCapture({ path: file, logger, ackIntervalMs: 0 })
  teardown(t, () => side.close())
  const loop = captureLoop(side, log)
  await loop.prepare()
  while ((await loop.step()) > 0);
  const replica = new SqliteApply({ path: path.join(dir, 'replica.db') })
  teardown(t, () => replica.close())
  const apply = applyLoop(log, replica)
  await replica.open()

  // A change row holding a key that cannot be a rowid.
  const d = db.prepare("SELECT name FROM sqlite_schema WHERE name LIKE '_mesh_d%'").pluck().get() as string
  db.prepare(`INSERT INTO "${d}" (k0) VALUES ('garbage')`).run()
  db.exec("UPDATE a SET v = 'changed' WHERE id = 1")
  while ((await loop.step()) > 0);
  assert.ok(logger.lines.some((l) => l.msg.startsWith('CORRUPT_CHANGE')))

  // Someone drops a capture trigger, and writes while it is gone.
  db.exec("DROP TRIGGER _mesh_t1_ins; INSERT INTO a (v) VALUES ('while-dropped')")
  while ((await loop.step()) > 0);
  assert.ok(logger.lines.filter((l) => l.msg.startsWith('CORRUPT_CHANGE')).length >= 2)
  await apply.catchUp()
  assert.deepEqual(dump(path.join(dir, 'replica.db')), dump(file))
})

test('a full disk under the log stops capture without losing anything; it resumes when space returns', async (t) => {
  const { dir, file, db } = sqliteOrigin(t)
  const small = path.join(dir, 'small')
  const fs1 = tmpfs(t, small, '6m')
  db.exec('CREATE TABLE big (id INTEGER PRIMARY KEY, payload BLOB)')
  const storeDir = path.join(small, 'store')
  let { store, log } = await openLog(storeDir)
  teardown(t, () => store.close())
  const side = new SqliteCapture({ path: file, ackIntervalMs: 0 })
  teardown(t, () => side.close())
  const loop = captureLoop(side, log, {
    pollMs: 5,
    async reopenLog() {
      await store.close().catch(() => {})
      ;({ store, log } = await openLog(storeDir))
      return log
    }
  })
  teardown(t, () => loop.stop())
  await loop.start()
  const ins = db.prepare('INSERT INTO big (payload) VALUES (randomblob(100000))')
  db.transaction(() => {
    for (let i = 0; i < 100; i++) ins.run()
  })()
  const deadline = Date.now() + 20_000
  while (loop.stats.lastError?.code !== 'DISK_FULL' && Date.now() < deadline)
    await new Promise((r) => setTimeout(r, 50))
  assert.equal(loop.stats.lastError?.code, 'DISK_FULL')
  assert.equal(loop.active, true, 'a full disk is retried, not fatal')
  // Nothing was acknowledged: the change rows are all still in the origin.
  const pending = db.prepare('SELECT count(*) FROM _mesh_d1').pluck().get() as number
  assert.ok(pending >= 100)
  fs1.resize('64m')
  while (loop.stats.lastError !== null && Date.now() < deadline + 20_000) await new Promise((r) => setTimeout(r, 50))
  assert.equal(loop.stats.lastError, null)
  await loop.stop()
  while ((await loop.step()) > 0);

  // The replica side: applying into a full disk fails whole, and resumes.
  const rdir = path.join(dir, 'rsmall')
  const fs2 = tmpfs(t, rdir, '4m')
  const replica = new SqliteApply({ path: path.join(rdir, 'replica.db') })
  teardown(t, () => replica.close())
  const apply = applyLoop(log, replica)
  await replica.open()
  await rejectsWith(apply.catchUp(), 'DISK_FULL')
  const stuck = replica.position()?.length ?? 0
  assert.ok(stuck < log.length)
  fs2.resize('64m')
  await apply.catchUp()
  assert.equal(replica.position()?.length, log.length)
  await replica.close()
  assert.deepEqual(dump(path.join(rdir, 'replica.db')), dump(file))
})
