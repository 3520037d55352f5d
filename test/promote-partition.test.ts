import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { dump, openBehindTheMesh, openWal, sqliteDb } from './helpers/db.ts'
import { mesh, meshSites, type TestSite, waitUntil } from './helpers/mesh.ts'
import { writeWorkload } from './helpers/workload.ts'

const same = (x: string, y: string) => JSON.stringify(dump(x)) === JSON.stringify(dump(y))

function tagged(file: string, tag: string, n: number): void {
  const db = openWal(file)
  const ins = db.prepare('INSERT INTO tags (tag, n) VALUES (?, ?)')
  db.transaction(() => {
    for (let i = 0; i < n; i++) ins.run(`${tag}-${i}`, i)
  })()
  db.close()
}

test(
  'two promotions at once on both sides of a partition: once they meet, every site follows the same epoch ' +
    "(lower log key), and the loser's writes are in its divergence folder",
  async (t) => {
    const { sites } = await meshSites(t, ['shop-a', 'shop-b', 'shop-c'], (s) => writeWorkload(s[0].db, 7, 40, 6))
    const [a, b, c] = sites
    const ds = 'shop-a'
    let bFile = ''
    let cFile = ''
    let logC = ''
    // Who won, once the partition has healed.
    let winner: TestSite, loser: TestSite, winnerFile: string, loserFile: string

    await t.test("B and C hold A's rows", async () => {
      await waitUntil("B and C hold A's rows", () => b.holdsExactly(a) && c.holdsExactly(a), 90_000)
      bFile = b.replicaOf(a)!
      cFile = c.replicaOf(a)!
    })

    await t.test('with A lost and B and C apart, each is promoted alone to epoch 1 and takes writes', async () => {
      await a.stop('SIGKILL')
      await c.stop()
      // Until A misses its heartbeats, B still counts it as a healthy origin and refuses.
      let r = await mesh(['promote', ds, '--dir', b.dir, '--json'])
      await waitUntil(
        'B promotes once A counts as lost',
        async () => {
          if (r.code === 0) return true
          assert.equal(JSON.parse(r.stdout).error.code, 'ORIGIN_HEALTHY', r.stdout)
          r = await mesh(['promote', ds, '--dir', b.dir, '--json'])
          return r.code === 0
        },
        60_000,
        1000
      )
      const pb = JSON.parse(r.stdout)
      tagged(bFile, 'at-b', 4)
      await waitUntil(
        'B captured its writes',
        async () => {
          const d = (await b.status()).datasets.find((x) => x.name === ds)!
          return d.epoch === 1 && d.length > 2
        },
        30_000
      )
      await b.stop()
      await c.start()
      r = await mesh(['promote', ds, '--dir', c.dir, '--json'])
      assert.equal(r.code, 0, r.stdout + r.stderr)
      const pc = JSON.parse(r.stdout)
      assert.equal(pb.epoch, 1)
      assert.equal(pc.epoch, 1)
      tagged(cFile, 'at-c', 6)
      await waitUntil(
        'C captured its writes',
        async () => {
          const d = (await c.status()).datasets.find((x) => x.name === ds)!
          return d.epoch === 1 && d.length > 2
        },
        30_000
      )
      const statusC = JSON.parse((await mesh(['status', '--dir', c.dir, '--json'])).stdout)
      logC = statusC.datasets.find((x: { name: string }) => x.name === ds).log as string
    })

    await t.test("healed, both follow the epoch 1 log of lower key; the loser's writes are kept aside", async () => {
      await b.start()
      await waitUntil(
        'B and C follow the same epoch 1 log',
        async () => {
          const [sb, sc] = [await b.status(), await c.status()]
          const [db, dc] = [sb.datasets.find((x) => x.name === ds)!, sc.datasets.find((x) => x.name === ds)!]
          return db.log === dc.log && db.epoch === 1
        },
        60_000
      )
      const sc = await c.status()
      const winnerLog = sc.datasets.find((x) => x.name === ds)!.log
      const cWon = winnerLog === logC
      ;[winner, loser, winnerFile, loserFile] = cWon ? [c, b, cFile, bFile] : [b, c, bFile, cFile]
      const [loserTag, loserRows] = cWon ? ['at-b', 4] : ['at-c', 6]
      // The rule: the lower log key wins.
      const statusB = (await b.status()).datasets.find((x) => x.name === ds)!
      assert.equal(statusB.originSite, winner.name)
      await waitUntil("the loser's database equals the winner's", () => same(loserFile, winnerFile), 60_000)
      const sl = await loser.status()
      const div = sl.datasets.find((x) => x.name === ds)!.divergences
      assert.equal(div.length, 1)
      assert.equal(div[0].changes, loserRows)
      const lines = fs
        .readFileSync(path.join(div[0].dir, 'changes.jsonl'), 'utf8')
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l))
      const tags = lines
        .filter((l) => l.op === 'upsert')
        .map((l) => l.row.tag)
        .sort()
      assert.deepEqual(tags, Array.from({ length: loserRows }, (_, i) => `${loserTag}-${i}`).sort())
      const w = sqliteDb(t, winnerFile, { readonly: true })
      assert.equal(
        w.prepare('SELECT count(*) FROM tags WHERE tag LIKE ?').pluck().get(`${loserTag}-%`),
        0,
        "the loser's writes are not in the live data"
      )
      w.close()
    })

    await t.test("A returns and is fenced to the winner too; the winner's writes reach every site", async () => {
      await a.start()
      tagged(winnerFile, 'after', 3)
      await waitUntil(
        'every site equals the winner',
        () => same(a.db, winnerFile) && same(loserFile, winnerFile),
        90_000
      )
      const sa = await a.status()
      const da = sa.datasets.find((x) => x.name === ds)!
      assert.equal(da.originSite, winner.name)
      assert.equal(da.divergences.filter((x) => x.changes > 0).length, 0, 'A wrote nothing after the promotions')
    })

    await t.test(
      "an application still pointed at the loser's copy is refused; a program past the guard is reported",
      async () => {
        assert.throws(() => tagged(loserFile, 'stray', 1), /branchmesh_replica_is_read_only/)
        const stray = openBehindTheMesh(loserFile)
        stray.prepare('INSERT INTO tags (tag, n) VALUES (?, ?)').run('stray-0', 0)
        stray.close()
        await waitUntil(
          'the loser reports writes to its copy',
          async () => {
            const h = (await loser.status()).datasets
              .find((x) => x.name === ds)!
              .holders.find((x) => x.site === loser.name)!
            return h.error === 'REPLICA_WRITTEN'
          },
          30_000
        )
        const sl2 = await loser.status()
        assert.equal(sl2.verdict, 'CRIT')
        assert.ok(
          sl2.reasons.some((x) => /another program wrote to this site's copy/.test(x.text)),
          JSON.stringify(sl2.reasons)
        )
      }
    )
  }
)
