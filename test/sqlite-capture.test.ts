import { test } from 'node:test'
import assert from 'node:assert/strict'
import path from 'node:path'
import { dump, readDb, sqliteOrigin } from './helpers/db.ts'
import { sqlitePipeline } from './helpers/pipeline.ts'

test('every storage class round-trips bit-exact, in every kind of table', async (t) => {
  const { dir, file, db } = sqliteOrigin(t)
  db.exec(`
    CREATE TABLE ipk (id INTEGER PRIMARY KEY, v);
    CREATE TABLE comp (a TEXT, b INTEGER, v, PRIMARY KEY (a, b));
    CREATE TABLE txt (code TEXT PRIMARY KEY, v);
    CREATE TABLE wr (k BLOB PRIMARY KEY, v) WITHOUT ROWID;
    CREATE TABLE nokey (x, y);
  `)
  const values: unknown[] = [
    null,
    9223372036854775807n,
    -9223372036854775808n,
    0n,
    -1n,
    2n ** 53n + 1n,
    Math.PI,
    -0.0,
    0.1 + 0.2,
    1e308,
    5e-324,
    1.0,
    '',
    'naïve café ☕ 𝄞 \u0000 inside',
    'x'.repeat(10000),
    Buffer.alloc(0),
    Buffer.from([0, 0, 1, 0, 255, 0]),
    Buffer.alloc(70000, 7)
  ]
  db.defaultSafeIntegers(true)
  const ins = {
    ipk: db.prepare('INSERT INTO ipk (id, v) VALUES (?, ?)'),
    comp: db.prepare('INSERT INTO comp (a, b, v) VALUES (?, ?, ?)'),
    txt: db.prepare('INSERT INTO txt (code, v) VALUES (?, ?)'),
    wr: db.prepare('INSERT INTO wr (k, v) VALUES (?, ?)'),
    nokey: db.prepare('INSERT INTO nokey (x, y) VALUES (?, ?)')
  }
  // Some rows exist before capture starts: they must arrive through the snapshot.
  values.forEach((v, i) => {
    ins.ipk.run(BigInt(i + 1), v)
  })
  const p = await sqlitePipeline(t, dir, file)
  db.transaction(() => {
    values.forEach((v, i) => {
      ins.comp.run(`k${i % 3}`, BigInt(i), v)
      ins.txt.run(`code-${i}`, v)
      ins.wr.run(Buffer.from([i, 0]), v)
      ins.nokey.run(v, v)
      ins.ipk.run(BigInt(100 + i), v)
    })
  })()
  await p.settle()
  assert.deepEqual(dump(path.join(dir, 'replica.db')), dump(file))
  assert.equal(p.replica.state(), 'ready')

  // Updates, key changes and deletes.
  db.transaction(() => {
    db.prepare('UPDATE ipk SET id = id + 1000 WHERE id < 5').run()
    db.prepare("UPDATE comp SET a = 'moved' WHERE b = 3").run()
    db.prepare("UPDATE txt SET code = code || '-x' WHERE code = 'code-2'").run()
    db.prepare('UPDATE wr SET v = -0.0').run()
    db.prepare('DELETE FROM nokey WHERE rowid % 2 = 0').run()
    db.prepare('UPDATE nokey SET rowid = rowid + 500 WHERE rowid = 1').run()
    db.prepare('DELETE FROM ipk WHERE id = 110').run()
  })()
  await p.settle()
  assert.deepEqual(dump(path.join(dir, 'replica.db')), dump(file))
})

test('a table created while running is picked up, and its rows arrive', async (t) => {
  const { dir, file, db } = sqliteOrigin(t)
  db.exec('CREATE TABLE a (id INTEGER PRIMARY KEY, v TEXT)')
  const p = await sqlitePipeline(t, dir, file)
  db.exec("CREATE TABLE later (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO later (v) VALUES ('one'), ('two');")
  db.exec('CREATE INDEX later_v ON later (v); CREATE VIEW later_view AS SELECT v FROM later')
  await p.settle()
  db.exec(
    "INSERT INTO later (v) VALUES ('three'); ALTER TABLE a ADD COLUMN extra INTEGER DEFAULT 7; INSERT " +
      "INTO a (v) VALUES ('x')"
  )
  await p.settle()
  const replica = path.join(dir, 'replica.db')
  assert.deepEqual(dump(replica), dump(file))
  const objects = readDb(replica, (r) =>
    r.prepare("SELECT name FROM sqlite_schema WHERE name IN ('later_v', 'later_view') ORDER BY name").pluck().all()
  )
  assert.deepEqual(objects, ['later_v', 'later_view'])
  db.exec('DROP TABLE later')
  await p.settle()
  assert.deepEqual(dump(replica), dump(file))
})
