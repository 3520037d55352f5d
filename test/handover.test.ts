import { test } from 'node:test'
import Database from '../adapters/sqlite/better-sqlite3.ts'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { dump } from './helpers/db.ts'
import { mesh, meshSites, sqliteSite, waitUntil, type TestSite } from './helpers/mesh.ts'
import { startTs } from './helpers/proc.ts'
import { writeWorkload } from './helpers/workload.ts'

const same = (x: string, y: string) => JSON.stringify(dump(x)) === JSON.stringify(dump(y))

function logs(sites: TestSite[]): string {
  return sites.map((x) => `--- ${x.name}\n${(x.node?.lines ?? []).slice(-25).join('\n')}`).join('\n')
}

test(
  'handover: while a till writes 20 transactions a second at the origin, A hands over to B; nothing diverges, ' +
    'every committed row is at B and everywhere, and A and C follow B',
  async (t) => {
    const { sites, dir, bootstrap } = await meshSites(t, ['shop-a', 'shop-b', 'shop-c'], (s) =>
      writeWorkload(s[0].db, 11, 30, 6)
    )
    const [a, b, c] = sites
    const ds = 'shop-a'
    let bFile = ''

    await t.test("B and C hold A's rows", async () => {
      await waitUntil("B and C hold A's rows", () => b.holdsExactly(a) && c.holdsExactly(a), 90_000)
      bFile = b.replicaOf(a)!
    })

    await t.test('bad handovers are refused with their code and change nothing', async () => {
      let r = await mesh(['handover', ds, '--to', 'no-such-site', '--dir', a.dir, '--json'])
      assert.equal(r.code, 1)
      assert.equal(JSON.parse(r.stdout).error.code, 'HANDOVER_FAILED')
      assert.match(JSON.parse(r.stdout).error.message, /no member of the mesh is named no-such-site/)
      r = await mesh(['handover', ds, '--to', 'shop-c', '--dir', b.dir, '--json'])
      assert.equal(JSON.parse(r.stdout).error.code, 'HANDOVER_FAILED')
      assert.match(JSON.parse(r.stdout).error.message, /not the origin/)
      r = await mesh(['handover', ds, '--dir', a.dir])
      assert.equal(r.code, 64)
      assert.match(r.stderr, /Try: mesh handover DATASET --to SITE/)
      assert.equal((await a.status()).datasets.find((d) => d.name === ds)!.originSite, 'shop-a')
    })

    await t.test('a named site that does not take over in time: the handover fails, A takes writes again', async () => {
      // C's node freezes (SIGSTOP): its connection and last report still look fine to A for a while. That report
      // must show C's copy first (what the handover checks; a site reports changes at most once a second).
      await waitUntil(
        "A's status shows C holding the dataset",
        async () =>
          (await a.status()).datasets
            .find((d) => d.name === ds)
            ?.holders.some((h) => h.site === 'shop-c' && h.applied !== null && h.applied > 0 && !h.error) ?? false,
        30_000
      )
      const pid = c.node!.proc.pid!
      process.kill(pid, 'SIGSTOP')
      let h: Awaited<ReturnType<typeof mesh>>
      try {
        h = await mesh(['handover', ds, '--to', 'shop-c', '--dir', a.dir, '--timeout', '50', '--json'], {
          timeoutMs: 120_000
        })
      } finally {
        process.kill(pid, 'SIGCONT')
      }
      const out = JSON.parse(h.stdout)
      assert.equal(h.code, 1, h.stdout)
      assert.equal(out.error.code, 'HANDOVER_FAILED')
      assert.match(out.error.message, /did not start epoch 1 .* takes writes again/)
      writeWorkload(a.db, 13, 10, 6)
      await waitUntil("B and C hold A's new rows", () => b.holdsExactly(a) && c.holdsExactly(a), 90_000)
      await waitUntil(
        'C saw the handover, too late',
        () => (c.node?.lines ?? []).some((l) => l.includes('too late to take over')),
        30_000
      )
      for (const s of [a, b, c]) {
        const d = (await s.status()).datasets.find((x) => x.name === ds)!
        assert.equal(d.epoch, 0, s.name)
        assert.equal(d.originSite, 'shop-a', s.name)
      }
    })

    await t.test('the handover under load: no divergence, every committed sale at B, A and C', async () => {
      const till = startTs('test/helpers/till.ts', [a.db, '50'])
      t.after(() => till.kill('SIGKILL').catch(() => {}))
      await till.waitLine(/ready/, 30_000)
      await new Promise((r) => setTimeout(r, 2000))
      const h = await mesh(['handover', ds, '--to', 'shop-b', '--dir', a.dir, '--json'], { timeoutMs: 120_000 })
      const ho = JSON.parse(h.stdout)
      assert.equal(h.code, 0, h.stdout + h.stderr + logs(sites))
      assert.equal(ho.epoch, 1)
      await new Promise((r) => setTimeout(r, 1000))
      await till.kill('SIGTERM')
      const sold = JSON.parse(till.lines.filter((l) => l.startsWith('{')).pop()!) as {
        committed: string[]
        refused: number
      }
      assert.ok(sold.committed.length > 20, `the till sold before the handover (${sold.committed.length})`)
      assert.ok(sold.refused > 0, 'the old origin refused the till once it stopped taking writes')
      const at = (file: string) => {
        const db = new Database(file, { readonly: true, fileMustExist: true })
        try {
          return new Set(db.prepare('SELECT sku FROM items').pluck().all() as string[])
        } finally {
          db.close()
        }
      }
      const atB = at(bFile)
      assert.deepEqual(
        sold.committed.filter((s) => !atB.has(s)),
        [],
        'every sale the till committed is in the new origin'
      )
      await waitUntil(
        'every site follows epoch 1 at B',
        async () => {
          for (const s of [a, b, c]) {
            const d = (await s.status()).datasets.find((x) => x.name === ds)!
            if (d.epoch !== 1 || d.originSite !== 'shop-b') return false
          }
          return true
        },
        60_000
      ).catch((err) => {
        throw new Error(`${(err as Error).message}\n${logs(sites)}`)
      })
      await waitUntil('A and C hold exactly B', () => same(a.db, bFile) && same(c.replicaOf(a)!, bFile), 90_000).catch(
        (err) => {
          throw new Error(`${(err as Error).message}\n${logs(sites)}`)
        }
      )
      for (const s of [a, b, c]) {
        const d = (await s.status()).datasets.find((x) => x.name === ds)!
        assert.equal(d.epoch, 1, s.name)
        assert.equal(d.originSite, 'shop-b', s.name)
        assert.equal(d.divergences.length, 0, `${s.name} kept nothing aside`)
      }
      assert.ok(
        !fs.existsSync(path.join(a.dir, 'divergence')) || fs.readdirSync(path.join(a.dir, 'divergence')).length === 0
      )
    })

    await t.test('B takes writes and A and C follow it', async () => {
      writeWorkload(bFile, 12, 20, 6)
      await waitUntil('A and C hold B', () => same(a.db, bFile) && same(c.replicaOf(a)!, bFile), 90_000).catch(
        (err) => {
          throw new Error(`${(err as Error).message}\n${logs(sites)}`)
        }
      )
    })

    await t.test(
      "a site that joins afterwards checks epoch 1's signed promotion from its log and follows B",
      async () => {
        const d = sqliteSite(t, dir, 'shop-d', bootstrap)
        await d.join(await b.invite())
        await d.start()
        // Its copy is named after the origin it first followed (shop-b), then the dataset's name.
        const copy = () => {
          const f = fs.readdirSync(path.join(d.dir, 'replicas')).find((n) => /^shop-b-shop-a-.*\.db$/.test(n))
          return f ? path.join(d.dir, 'replicas', f) : null
        }
        await waitUntil("D holds B's rows", () => copy() !== null && same(copy()!, bFile), 90_000).catch((err) => {
          throw new Error(`${(err as Error).message}\n${logs([...sites, d])}`)
        })
        const dd = (await d.status()).datasets.find((x) => x.name === ds)!
        assert.equal(dd.epoch, 1)
        assert.equal(dd.originSite, 'shop-b')
      }
    )
  }
)
