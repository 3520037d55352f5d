import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { dump, openWal, sqliteDb } from './helpers/db.ts'
import { mesh, meshSites, type TestSite, waitUntil } from './helpers/mesh.ts'
import { writeWorkload } from './helpers/workload.ts'

const write = (file: string, seed: number, n: number) => writeWorkload(file, seed, n, 6)

const same = (x: string, y: string) => JSON.stringify(dump(x)) === JSON.stringify(dump(y))

async function promote(
  site: TestSite,
  dataset: string,
  extra: string[] = []
): Promise<{ code: number | null; out: any }> {
  const r = await mesh(['promote', dataset, '--dir', site.dir, '--json', ...extra], { timeoutMs: 120_000 })
  let out: any = null
  try {
    out = JSON.parse(r.stdout)
  } catch {
    throw new Error(`mesh promote printed no JSON (exit ${r.code}): ${r.stdout}\n${r.stderr}`)
  }
  return { code: r.code, out }
}

function divergenceLines(dir: string): any[] {
  return fs
    .readFileSync(path.join(dir, 'changes.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l))
}

test(
  'failover: the origin is cut off, B is promoted and takes writes, C follows without a command; A comes ' +
    'back with writes made while cut off, is fenced (its writes kept in a divergence folder, exactly those), ' +
    'and converges to B; then fail back to A',
  async (t) => {
    const { sites } = await meshSites(t, ['shop-a', 'shop-b', 'shop-c'], (s) => write(s[0].db, 1, 40))
    const [a, b, c] = sites
    const ds = 'shop-a'
    let r: { code: number | null; out: any }
    let bFile = ''
    let offlineRows: { items: unknown[]; accounts: unknown[] }

    await t.test("B and C hold A's rows", async () => {
      write(a.db, 2, 40)
      await waitUntil("B and C hold A's rows", () => b.holdsExactly(a) && c.holdsExactly(a), 90_000)
      bFile = b.replicaOf(a)!
    })

    await t.test('promote is refused with its code: the origin is up, an unknown dataset, at the origin', async () => {
      await waitUntil(
        "B has A's report",
        async () =>
          (await b.status()).datasets.find((d) => d.name === ds)?.holders.find((h) => h.site === 'shop-a')?.applied !=
          null,
        30_000
      )
      r = await promote(b, ds)
      assert.equal(r.code, 1)
      assert.equal(r.out.error.code, 'ORIGIN_HEALTHY', JSON.stringify(r.out))
      assert.match(r.out.error.hint, /mesh handover/)
      r = await promote(b, ds, ['--force'])
      assert.equal(r.out.error.code, 'ORIGIN_HEALTHY', '--force does not override a healthy origin')
      r = await promote(b, 'no-such-dataset')
      assert.equal(r.out.error.code, 'UNKNOWN_DATASET')
      r = await promote(a, ds)
      assert.equal(r.out.error.code, 'ALREADY_ORIGIN')
    })

    await t.test(
      'with A lost, a replica that fell behind is refused (REPLICA_BEHIND) and catches up later',
      async () => {
        // B falls behind for real: its replica file is locked by another program while A writes; C gets the rows.
        const lock = sqliteDb(t, bFile)
        lock.prepare('BEGIN IMMEDIATE').run()
        write(a.db, 3, 30)
        await waitUntil("C holds A's newest rows", () => c.holdsExactly(a), 60_000)
        await waitUntil(
          'B reports it is behind',
          async () => {
            const h = (await b.status()).datasets.find((d) => d.name === ds)!.holders.find((x) => x.site === 'shop-b')!
            return h.downloaded !== null && h.applied !== null && h.downloaded > h.applied
          },
          60_000
        )

        // A is lost (its node killed).
        await a.stop('SIGKILL')
        // For a few seconds A's connection still looks open at B: until A misses its heartbeats it counts as healthy.
        let soon = ''
        await waitUntil(
          'B no longer counts A as healthy',
          async () => {
            r = await promote(b, ds)
            if (r.out.error?.code === 'ORIGIN_HEALTHY' && soon === '') soon = r.out.error.message
            return r.out.error?.code !== 'ORIGIN_HEALTHY'
          },
          60_000,
          1000
        )
        // Right after the crash, it says when a lost origin counts as lost, and when to try again.
        assert.match(soon, /last report was \d+ s ago; a lost origin is seen as lost after 15 s .*try again in \d+ s/)
        assert.equal(r.out.error.code, 'REPLICA_BEHIND', JSON.stringify(r.out))
        assert.match(r.out.error.message, /applied \d+ of the \d+ entries/)
        lock.prepare('ROLLBACK').run()
        lock.close()
        await waitUntil('B catches up once the lock is gone', () => b.holdsExactly(a), 60_000)
      }
    )

    await t.test('B is promoted to epoch 1: its replica file itself is the live database', async () => {
      // A's till keeps writing to its own database while it is cut off.
      const offline = openWal(a.db)
      offline.transaction(() => {
        for (let i = 1; i <= 3; i++)
          offline
            .prepare('INSERT INTO items (sku, qty, price, img) VALUES (?, ?, ?, ?)')
            .run(`offline-${i}`, i, i + 0.25, Buffer.from([i]))
        offline.prepare('UPDATE accounts SET balance = balance - 7 WHERE id = 1').run()
        offline.prepare('UPDATE accounts SET balance = balance + 7 WHERE id = 2').run()
      })()
      offlineRows = {
        items: offline.prepare("SELECT sku, qty, price FROM items WHERE sku LIKE 'offline-%' ORDER BY sku").all(),
        accounts: offline.prepare('SELECT id, balance FROM accounts WHERE id IN (1, 2) ORDER BY id').all()
      }
      offline.close()

      r = await promote(b, ds)
      assert.equal(r.code, 0, JSON.stringify(r.out))
      assert.equal(r.out.epoch, 1)
      assert.equal(r.out.path, bFile, 'the replica file itself is the live database now')
    })

    await t.test('B takes writes; C follows the new epoch without a command', async () => {
      write(bFile, 4, 40)
      await waitUntil("C holds B's writes", () => same(c.replicaOf(a)!, bFile), 60_000)
      const sc = await c.status()
      const dc = sc.datasets.find((d) => d.name === ds)!
      assert.equal(dc.epoch, 1)
      assert.equal(dc.originSite, 'shop-b')
    })

    await t.test('A comes back fenced: it converges to B, and exactly its cut-off writes are kept aside', async () => {
      await a.start()
      await waitUntil("A's database equals B's", () => same(a.db, bFile), 90_000)
      const sa = await a.status()
      const da = sa.datasets.find((d) => d.name === ds)!
      assert.equal(da.epoch, 1)
      assert.equal(da.divergences.length, 1)
      const div = da.divergences[0]
      assert.equal(div.changes, 5)
      assert.ok(
        sa.reasons.some((x) => x.level === 'WARN' && x.text.includes(div.dir)),
        JSON.stringify(sa.reasons)
      )
      const lines = divergenceLines(div.dir)
      assert.equal(lines[0].divergence, ds)
      const changes = lines.filter((l) => l.op === 'upsert' || l.op === 'delete')
      assert.deepEqual(
        changes
          .filter((l) => l.table === 'items')
          .map((l) => ({ sku: l.row.sku, qty: l.row.qty, price: l.row.price }))
          .sort((x, y) => x.sku.localeCompare(y.sku)),
        offlineRows.items.map((x: any) => ({ sku: x.sku, qty: x.qty, price: x.price }))
      )
      assert.deepEqual(
        changes
          .filter((l) => l.table === 'accounts')
          .map((l) => ({ id: l.row.id, balance: l.row.balance }))
          .sort((x, y) => x.id - y.id),
        offlineRows.accounts
      )
      assert.equal(changes.length, 5, 'exactly the writes made while cut off')
      assert.match(
        fs.readFileSync(path.join(div.dir, 'changes.sql'), 'utf8'),
        /INSERT OR REPLACE INTO "items" .*'offline-1'/
      )
      // The database as it was, offline writes included, is kept too; the live one no longer has them.
      const before = sqliteDb(t, path.join(div.dir, 'before.db'), { readonly: true })
      assert.equal(before.prepare("SELECT count(*) FROM items WHERE sku LIKE 'offline-%'").pluck().get(), 3)
      before.close()
      const live = sqliteDb(t, a.db, { readonly: true })
      assert.equal(live.prepare("SELECT count(*) FROM items WHERE sku LIKE 'offline-%'").pluck().get(), 0)
      live.close()
      assert.ok(same(c.replicaOf(a)!, bFile))
    })

    await t.test(
      'fail back to A: refused while B is healthy, done with a handover at B; B and C follow A',
      async () => {
        await waitUntil(
          "A has B's report",
          async () =>
            (await a.status()).datasets.find((d) => d.name === ds)?.holders.find((h) => h.site === 'shop-b')?.applied !=
            null,
          30_000
        )
        r = await promote(a, ds, ['--force'])
        assert.equal(r.out.error.code, 'ORIGIN_HEALTHY')
        // A handover needs the named site connected to the origin itself (A's news may reach B through C).
        await waitUntil(
          'B is connected to A',
          async () => (await b.status()).members.find((m) => m.site === 'shop-a')?.connected === true,
          60_000
        )
        const h = await mesh(['handover', ds, '--to', 'shop-a', '--dir', b.dir, '--json'], { timeoutMs: 120_000 })
        const ho = JSON.parse(h.stdout)
        assert.equal(h.code, 0, h.stdout + h.stderr)
        assert.equal(ho.epoch, 2)
        assert.equal(ho.to, 'shop-a')
        await waitUntil(
          'A is the origin again',
          async () => (await a.status()).datasets.find((d) => d.name === ds)?.originSite === 'shop-a',
          30_000
        )
        write(a.db, 5, 40)
        await waitUntil('B and C follow A again', () => same(bFile, a.db) && same(c.replicaOf(a)!, a.db), 90_000)
        const sb = await b.status()
        const db = sb.datasets.find((d) => d.name === ds)!
        assert.equal(db.epoch, 2)
        assert.equal(db.originSite, 'shop-a')
        assert.equal(db.divergences.length, 0, 'a handover leaves nothing aside')
      }
    )

    await t.test('no node logged an internal error', () => {
      for (const s of [a, b, c]) {
        const errors = (s.node?.lines ?? []).filter((l) => /internal error/.test(l))
        assert.deepEqual(errors, [], `${s.name} logged an internal error`)
      }
    })
  }
)
