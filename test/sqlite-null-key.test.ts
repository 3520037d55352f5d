/**
 * NULL in a PRIMARY KEY. SQLite lets the primary key of an ordinary (rowid) table hold NULL unless its columns
 * are declared NOT NULL (a long-standing quirk it keeps for compatibility), and such rows are all distinct:
 * INSERT OR REPLACE never replaces one of them. Rows are identified by their key in the log, so every row
 * whose key holds a NULL is carried as a group: capture reads all the rows with that key, and apply replaces
 * all of them. Each case ends with the replica's rows equal to the origin's, row for row, through real
 * capture, a real hypercore replicated to a second store and real apply; the text-that-is-not-UTF-8 case
 * takes capture's exact path (a lookup per key) instead of the join.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import path from 'node:path'
import { dump, dumpExact, openWal, tmpDir } from './helpers/db.ts'
import { teardown, type TestContext } from './helpers/teardown.ts'
import { startPipeline } from './helpers/pipeline.ts'

async function mesh(t: TestContext, schema: string) {
  const dir = tmpDir(t, 'mesh-null-key-')
  const file = path.join(dir, 'shop.db')
  const db = openWal(file)
  db.exec(schema)
  const p = await startPipeline(dir, file)
  teardown(t, async () => {
    await p.close().catch(() => {})
    db.close()
  })
  const replica = path.join(dir, 'replica.db')
  const same = async (what: string) => {
    await p.settle()
    assert.deepEqual(dump(replica), dump(file), what)
  }
  return { db, p, replica, file, same }
}

test('a NULL TEXT key: updated, joined by a second, one deleted: the replica keeps the same rows', async (t) => {
  const { db, same } = await mesh(t, 'CREATE TABLE items (sku TEXT PRIMARY KEY, name TEXT, price INTEGER)')
  db.prepare('INSERT INTO items VALUES (?, ?, ?)').run('a-1', 'apple', 10)
  db.prepare('INSERT INTO items VALUES (?, ?, ?)').run(null, 'loose item', 5)
  await same('inserted')
  db.prepare('UPDATE items SET price = 7 WHERE sku IS NULL').run()
  await same('the NULL-key row updated (it was two rows at the replica)')
  db.prepare('INSERT INTO items VALUES (?, ?, ?)').run(null, 'second loose item', 3)
  await same('a second row with a NULL key')
  db.transaction(() => {
    db.prepare("UPDATE items SET price = price + 1 WHERE name = 'loose item'").run()
    db.prepare('UPDATE items SET name = ? WHERE sku = ?').run('green apple', 'a-1')
  })()
  await same('one of two NULL-key rows updated, with another row in the same transaction')
  db.prepare("DELETE FROM items WHERE name = 'loose item'").run()
  await same('one of two NULL-key rows deleted')
  db.prepare("UPDATE items SET sku = 'b-2' WHERE sku IS NULL").run()
  await same('the last NULL-key row given a key')
  assert.deepEqual(db.prepare('SELECT sku, name, price FROM items ORDER BY sku').raw().all(), [
    ['a-1', 'green apple', 10],
    ['b-2', 'second loose item', 3]
  ])
})

test('a composite key with a NULL part: told apart by the other part, grouped by the NULL one', async (t) => {
  const { db, same } = await mesh(
    t,
    'CREATE TABLE stock (shop TEXT, sku TEXT, qty INTEGER, PRIMARY KEY (shop, sku)); ' +
      'CREATE INDEX stock_qty ON stock (qty)'
  )
  const ins = db.prepare('INSERT INTO stock VALUES (?, ?, ?)')
  db.transaction(() => {
    ins.run('north', null, 1)
    ins.run('south', null, 2)
    ins.run('south', null, 3)
    ins.run('south', 'x', 4)
  })()
  await same('inserted')
  db.prepare("UPDATE stock SET qty = qty * 10 WHERE shop = 'south' AND sku IS NULL").run()
  await same('both south NULL rows updated')
  db.prepare("DELETE FROM stock WHERE shop = 'south' AND sku IS NULL AND qty = 20").run()
  await same('one deleted')
  db.prepare('DELETE FROM stock WHERE sku IS NULL').run()
  await same('the rest deleted')
})

// Capture reads keys one by one (its exact path) when TEXT is not UTF-8.
test('NULL-key rows holding TEXT that is not UTF-8: the replica keeps the same bytes', async (t) => {
  const { db, same, replica, file } = await mesh(t, 'CREATE TABLE notes (k TEXT PRIMARY KEY, body TEXT)')
  const bad = "CAST(X'C3' || X'28' AS TEXT)" // not UTF-8
  db.exec(`INSERT INTO notes VALUES (NULL, ${bad}), (NULL, 'plain'), ('k', 'keyed')`)
  await same('inserted')
  db.exec(`UPDATE notes SET body = body || ${bad} WHERE k IS NULL`)
  await same('updated')
  assert.deepEqual(dumpExact(replica), dumpExact(file))
})

// The NULL-key rows go out in the first pieces, before TEXT that is not UTF-8 makes capture read the table again.
test('a large transaction in pieces, read again for TEXT that is not UTF-8: no NULL-key row twice', async (t) => {
  const dir = tmpDir(t, 'mesh-null-key-big-')
  const file = path.join(dir, 'shop.db')
  const db = openWal(file)
  db.exec('CREATE TABLE notes (k TEXT PRIMARY KEY, body TEXT)')
  // A budget of a few KB: the unit is read and applied in many pieces, the first ones out before the bad text.
  const p = await startPipeline(dir, file, { unitMemoryBytes: 16 * 1024 })
  teardown(t, async () => {
    await p.close().catch(() => {})
    db.close()
  })
  db.transaction(() => {
    db.exec("INSERT INTO notes VALUES (NULL, 'first loose'), (NULL, 'second loose')")
    const ins = db.prepare('INSERT INTO notes VALUES (?, ?)')
    for (let i = 0; i < 3000; i++) ins.run(`k${String(i).padStart(5, '0')}`, 'x'.repeat(30))
    db.exec("INSERT INTO notes VALUES ('zz', CAST(X'C328' AS TEXT))")
  })()
  await p.settle()
  const replica = path.join(dir, 'replica.db')
  assert.deepEqual(dumpExact(replica), dumpExact(file))
  assert.equal(dump(replica).notes.rows.filter((r) => r.startsWith('NULL|')).length, 2)
})
