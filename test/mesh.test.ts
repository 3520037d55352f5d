import { test } from 'node:test'
import assert from 'node:assert/strict'
import { converged, mesh, meshSites, waitUntil } from './helpers/mesh.ts'
import { writeWorkload } from './helpers/workload.ts'

test(
  'three sites, each a separate process on a local DHT: every replica equals its origin; a SIGKILLed site ' +
    'and a site that was off catch up, even from a holder while the origin is off',
  async (t) => {
    // Data that exists before the mesh does arrives through the initial snapshot.
    const { sites } = await meshSites(t, ['shop-a', 'shop-b', 'shop-c'], (s) =>
      s.forEach((site, i) => {
        writeWorkload(site.db, i + 1, 40)
      })
    )
    const [a, b, c] = sites

    await t.test('every replica equals its origin, rows written before the mesh included', async () => {
      writeWorkload(a.db, 11, 60)
      writeWorkload(b.db, 12, 60)
      writeWorkload(c.db, 13, 60)
      await converged([a, b, c])
    })

    await t.test("A's status is OK: both others connected, every dataset held by both with no lag", async () => {
      // Reports travel a moment behind the data: wait until A's view has heard that everyone applied everything.
      await waitUntil(
        "A's status shows every copy caught up",
        async () => {
          const s = await a.status()
          const own = s.datasets.find((d) => d.originSite === 'shop-a')?.holders.find((h) => h.role === 'origin')
          return (
            s.datasets.length === 3 &&
            s.datasets.every((d) => d.holders.every((h) => h.lagEntries === 0)) &&
            own?.captureLag?.bytes === 0
          )
        },
        30_000
      )
      const s = await a.status()
      assert.equal(s.verdict, 'OK', JSON.stringify(s.reasons))
      const own = s.datasets.find((d) => d.originSite === 'shop-a')!.holders.find((h) => h.role === 'origin')!
      assert.deepEqual(own.captureLag, { bytes: 0, seconds: 0 }, "A's SQLite capture reports its lag: none")
      assert.equal(s.members.filter((m) => m.connected).length, 2)
      for (const d of s.datasets) {
        assert.equal(d.heldBy, 2, `${d.name} held by both other sites`)
        for (const h of d.holders) assert.equal(h.lagEntries, 0)
      }
      const cli = await mesh(['status', '--dir', a.dir, '--json'])
      assert.equal(cli.code, 0)
      assert.equal(JSON.parse(cli.stdout).verdict, 'OK')
    })

    await t.test('a SIGKILLed site catches up on restart, with the writes made at its own database', async () => {
      // SIGKILL B; everyone keeps writing (B's own database too, while its node is dead); B restarts and catches up.
      await b.stop('SIGKILL')
      writeWorkload(a.db, 21, 50)
      writeWorkload(b.db, 22, 50)
      writeWorkload(c.db, 23, 50)
      await waitUntil("C holds A's new rows while B is dead", () => c.holdsExactly(a))
      await b.start()
      await converged([a, b, c])
    })

    await t.test("a site that was off gets the origin's rows from another holder while the origin is off", async () => {
      // C is off while A writes; B gets it; then A goes off too; C comes back and gets A's rows from B.
      await c.stop()
      writeWorkload(a.db, 31, 80)
      await waitUntil("B holds A's rows", () => b.holdsExactly(a))
      await a.stop()
      await c.start()
      await waitUntil("C holds A's rows, fetched from B while A is off", () => c.holdsExactly(a))
      const sc = await c.status()
      const ds = sc.datasets.find((d) => d.originSite === 'shop-a')!
      assert.equal(ds.holders.find((h) => h.site === 'shop-c')!.lagEntries, 0)
      assert.equal(sc.members.find((m) => m.site === 'shop-a')!.connected, false)
    })

    await t.test('the origin back, every replica converges and no node logged an error', async () => {
      await a.start()
      await converged([a, b, c])
      for (const s of [a, b, c]) {
        const bad = s.node!.lines.filter((l) => /internal error|not an unsigned integer|"level":50/.test(l))
        assert.deepEqual(bad, [], `${s.name} logged errors`)
      }
    })
  }
)
