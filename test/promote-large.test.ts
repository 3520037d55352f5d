import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import { openWal, sqliteDb } from './helpers/db.ts'
import { mesh, meshSites, promoteOnceLost, waitUntil } from './helpers/mesh.ts'

const ROWS = 100_000

test(
  'promoting a replica that holds a large database copies nothing: same file, a new log of a few blocks, ' +
    "and the origin's own triggers work there",
  async (t) => {
    const { sites } = await meshSites(t, ['shop-a', 'shop-b'], (s) => {
      const db = openWal(s[0].db)
      db.exec(`
      CREATE TABLE big (id INTEGER PRIMARY KEY, customer TEXT NOT NULL, amount REAL, note TEXT);
      CREATE TABLE counter (k TEXT PRIMARY KEY, n INTEGER NOT NULL);
      INSERT INTO counter VALUES ('big rows', 0);
      CREATE TRIGGER big_count AFTER INSERT ON big BEGIN UPDATE counter SET n = n + 1 WHERE k = 'big rows'; END;
    `)
      const ins = db.prepare('INSERT INTO big (customer, amount, note) VALUES (?, ?, ?)')
      db.transaction(() => {
        for (let i = 0; i < ROWS; i++) ins.run(`customer ${i % 997}`, i * 0.25, 'x'.repeat(60))
      })()
      db.close()
    })
    const [a, b] = sites
    let file = ''
    let before: fs.Stats

    await t.test("B holds A's large database", async () => {
      await waitUntil("B holds A's large database", () => b.holdsExactly(a), 120_000, 1000)
      file = b.replicaOf(a)!
      before = fs.statSync(file)
      assert.ok(before.size > 5 * 1024 * 1024, `the replica is large (${before.size} bytes)`)
    })

    await t.test('without a node, or without a dataset name, promote says what to do', async () => {
      await a.stop('SIGKILL')
      const off = await mesh(['promote', 'shop-a', '--dir', a.dir])
      assert.equal(off.code, 1)
      assert.match(off.stderr, /NOT_RUNNING[\s\S]*What to do: Start it first \(mesh start --dir/)
      const bare = await mesh(['promote', '--dir', b.dir])
      assert.equal(bare.code, 64)
      assert.match(bare.stderr, /name the dataset to promote\nTry: mesh promote DATASET/)
    })

    await t.test('promote makes the replica file itself the live database, not a copy', async () => {
      const r = await promoteOnceLost(b.dir, 'shop-a', ['--force'])
      assert.equal(r.code, 0, r.stdout + r.stderr)
      const p = JSON.parse(r.stdout)
      assert.equal(p.path, file)
      const after = fs.statSync(file)
      assert.equal(after.ino, before.ino, 'the same file, not a copy')
    })

    await t.test("the origin's trigger fires at the new origin, whose new log holds a few blocks", async () => {
      // The application writes at the new origin; the origin's trigger, kept aside while it was a replica, fires.
      const app = sqliteDb(t, file)
      app
        .prepare('INSERT INTO big (customer, amount, note) VALUES (?, ?, ?)')
        .run('after promotion', 1.5, 'first write')
      assert.equal(app.prepare("SELECT n FROM counter WHERE k = 'big rows'").pluck().get(), ROWS + 1)
      app.close()
      await waitUntil(
        "the write is captured in the new epoch's log",
        async () => {
          const d = (await b.status()).datasets.find((x) => x.name === 'shop-a')!
          return d.epoch === 1 && d.originSite === 'shop-b' && d.holders.find((h) => h.site === 'shop-b')!.applied! >= 3
        },
        30_000
      )
      const d = (await b.status()).datasets.find((x) => x.name === 'shop-a')!
      // Header, the schema, and the one write: a few blocks and a few kilobytes, against megabytes of data.
      assert.ok(d.length <= 5, `new log has ${d.length} blocks`)
      assert.ok(d.bytes < 64 * 1024, `new log holds ${d.bytes} bytes`)
      const check = sqliteDb(t, file, { readonly: true })
      assert.equal(check.prepare('SELECT count(*) FROM big').pluck().get(), ROWS + 1)
      check.close()
    })
  }
)
