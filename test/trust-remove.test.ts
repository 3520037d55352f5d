/**
 * Removing a site (issue 15 item 5) and the promotion policy (item 4), with the real `mesh` commands and nodes
 * as their own processes on a local DHT test network.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { readMeshState, sitePaths } from '../node/index.ts'
import { dump } from './helpers/db.ts'
import { converged, mesh, meshSites, waitUntil } from './helpers/mesh.ts'
import { tsProcess } from './helpers/teardown.ts'
import { writeWorkload } from './helpers/workload.ts'

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex')
const siteNames = (dir: string) => readMeshState(sitePaths(dir)).members.map((m) => m.site)

test('mesh remove: the removed site is cut off and gets no further block; the others keep its data', async (t) => {
  const { bootstrap, sites } = await meshSites(t, ['shop-a', 'shop-b', 'shop-c'])
  const [a, b, c] = sites
  await converged(sites)
  const state = readMeshState(sitePaths(a.dir))
  const cKey = hex(state.members.find((m) => m.site === 'shop-c')!.key)
  const cSeed = fs.readFileSync(path.join(c.dir, 'site.key'), 'utf8').trim()
  const cHadOfA = dump(c.replicaOf(a)!)

  await t.test('bad input changes nothing: removing itself, an unknown site', async () => {
    const self = await mesh(['remove', 'shop-a', '--dir', a.dir])
    assert.equal(self.code, 64)
    assert.match(self.stderr, /^mesh: USAGE: /m)
    const nobody = await mesh(['remove', 'shop-x', '--dir', a.dir])
    assert.equal(nobody.code, 1)
    assert.match(nobody.stderr, /^mesh: UNKNOWN_SITE: /m)
    assert.match(nobody.stderr, /What to do:/)
    assert.deepEqual(siteNames(a.dir), ['shop-a', 'shop-b', 'shop-c'])
  })

  await t.test('shop-a removes shop-c: every site drops it, and shop-c stops', async () => {
    const r = await mesh(['remove', 'shop-c', '--dir', a.dir, '--reason', 'till PC stolen', '--json'])
    assert.equal(r.code, 0, r.stderr)
    assert.deepEqual(JSON.parse(r.stdout), { removed: true, site: 'shop-c', key: cKey })
    await waitUntil('shop-b dropped shop-c', () => !siteNames(b.dir).includes('shop-c'), 20_000)
    assert.ok(!siteNames(a.dir).includes('shop-c'))
    for (const s of [a, b]) {
      const removed = readMeshState(sitePaths(s.dir)).removed ?? []
      assert.ok(removed.some((x) => hex(x.key) === cKey && x.reason === 'till PC stolen' && x.by === 'shop-a'))
    }
    await waitUntil('shop-c heard of its removal', () =>
      c.node!.lines.some((l) => /this site was removed from the mesh/.test(l))
    )
    await waitUntil('shop-c is connected to nobody', async () =>
      (await c.status()).members.every((m) => m.self || !m.connected)
    )
    assert.equal((await c.status()).verdict, 'CRIT', 'shop-c says it was removed')
    const again = await mesh(['remove', 'shop-c', '--dir', b.dir])
    assert.equal(again.code, 1)
    assert.match(again.stderr, /^mesh: MEMBER_REMOVED: /m)
  })

  await t.test("shop-c's key is refused when it connects", async () => {
    const probe = tsProcess(t, 'test/helpers/forger.ts', [
      'connect',
      bootstrap,
      hex(state.meshId),
      cSeed,
      hex(state.members[0].key),
      '6'
    ])
    const seen = JSON.parse(await probe.waitLine(/^\{/, 30_000))
    assert.equal(seen.connections, 0, 'refused at the handshake')
    assert.equal(seen.controlOpened, false, 'no control channel for a removed key')
    await waitUntil('shop-a logged the refusal', async () =>
      (await a.status()).refused.some(
        (x) => x.key === cKey && /shop-c was removed from the mesh by shop-a/.test(x.reason)
      )
    )
  })

  await t.test('shop-a writes on: shop-b gets it, shop-c gets no further block', async () => {
    writeWorkload(a.db, 21, 40)
    await waitUntil("shop-b holds shop-a's new rows", () => b.holdsExactly(a))
    assert.notDeepEqual(dump(a.db), cHadOfA, 'shop-a did write something new')
    assert.deepEqual(dump(c.replicaOf(a)!), cHadOfA, "shop-c's copy of shop-a did not grow")
  })

  await t.test("shop-a and shop-b keep shop-c's data, and status says mesh promote is the way", async () => {
    assert.ok(a.holdsExactly(c) && b.holdsExactly(c))
    const st = await a.status()
    assert.ok(
      st.reasons.some((x) => /shop-c: its origin shop-c was removed from the mesh.*mesh promote shop-c/.test(x.text)),
      JSON.stringify(st.reasons)
    )
    assert.notEqual(st.verdict, 'OK')
  })
})

test('mesh policy: narrowed to one site, a promote elsewhere fails at once; only the origin sets it', async (t) => {
  const { sites } = await meshSites(t, ['shop-a', 'shop-b', 'shop-c'])
  const [a, b, c] = sites
  await converged(sites)

  await t.test('only the origin may set it, and only to members', async () => {
    const notOrigin = await mesh(['policy', 'shop-a', '--promote', 'shop-c', '--dir', b.dir])
    assert.equal(notOrigin.code, 1)
    assert.match(notOrigin.stderr, /^mesh: NOT_ORIGIN: /m)
    const nobody = await mesh(['policy', 'shop-a', '--promote', 'shop-x', '--dir', a.dir])
    assert.equal(nobody.code, 1)
    assert.match(nobody.stderr, /^mesh: UNKNOWN_SITE: /m)
    const none = await mesh(['policy', 'shop-a', '--dir', a.dir])
    assert.equal(none.code, 64)
    assert.equal(readMeshState(sitePaths(a.dir)).policies, undefined)
  })

  await t.test('shop-a lets only shop-b promote shop-a: every site holds it and shows it', async () => {
    const r = await mesh(['policy', 'shop-a', '--promote', 'shop-b', '--dir', a.dir, '--json'])
    assert.equal(r.code, 0, r.stderr)
    assert.deepEqual(JSON.parse(r.stdout), { dataset: 'shop-a', promote: ['shop-b'] })
    for (const s of [b, c]) {
      await waitUntil(`${s.name} shows the policy`, async () =>
        (await s.status()).datasets.some((d) => d.name === 'shop-a' && d.promote?.join() === 'shop-b')
      )
    }
    const text = await mesh(['status', '--dir', c.dir])
    assert.match(text.stdout, /may be promoted only by: shop-b/)
  })

  await t.test('mesh promote at shop-c is refused at once with POLICY_FORBIDS, and nothing changes', async () => {
    const r = await mesh(['promote', 'shop-a', '--force', '--dir', c.dir, '--json'])
    assert.equal(r.code, 1)
    const j = JSON.parse(r.stdout)
    assert.equal(j.error.code, 'POLICY_FORBIDS')
    assert.match(j.error.message, /lets only shop-b promote it, not shop-c/)
    for (const s of [a, b, c]) {
      const d = readMeshState(sitePaths(s.dir)).datasets.find((x) => x.name === 'shop-a')!
      assert.equal(d.epoch, 0)
      assert.equal(d.originSite, 'shop-a')
    }
  })

  await t.test('--promote any goes back to the default at every site', async () => {
    const r = await mesh(['policy', 'shop-a', '--promote', 'any', '--dir', a.dir])
    assert.equal(r.code, 0, r.stderr)
    await waitUntil('shop-c dropped the narrowed policy', async () =>
      (await c.status()).datasets.some((d) => d.name === 'shop-a' && d.promote === undefined)
    )
  })
})
