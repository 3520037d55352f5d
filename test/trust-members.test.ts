/**
 * Signed membership (issue 15 item 5): a member is added only from a signed member statement, a forged one
 * changes nothing anywhere and is reported, and a new member is known at once, even by a site that never
 * heard of it from anyone.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { readMeshState, sitePaths } from '../node/index.ts'
import { converged, meshSites, sqliteSite, waitUntil } from './helpers/mesh.ts'
import { tsProcess } from './helpers/teardown.ts'
import { writeWorkload } from './helpers/workload.ts'

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex')
const seedOf = (dir: string) => fs.readFileSync(path.join(dir, 'site.key'), 'utf8').trim()
const memberKeys = (dir: string) => readMeshState(sitePaths(dir)).members.map((m) => hex(m.key))
const siteNames = (dir: string) => readMeshState(sitePaths(dir)).members.map((m) => m.site)

test('forged membership relayed by a compromised member changes nothing at any site, and is reported', async (t) => {
  const { dir, bootstrap, sites } = await meshSites(t, ['shop-a', 'shop-b', 'shop-c'])
  const [a, b, c] = sites
  await converged(sites)
  const state = readMeshState(sitePaths(a.dir))
  const aKey = hex(state.members.find((m) => m.site === 'shop-a')!.key)
  const aDataset = state.datasets.find((d) => d.originSite === 'shop-a')!.id
  const before = { a: memberKeys(a.dir), b: memberKeys(b.dir) }
  // shop-c's PC is compromised: its node is stopped and a forger speaks with its real key.
  await c.stop()
  const forger = tsProcess(t, 'test/helpers/forger.ts', [
    'forge',
    bootstrap,
    hex(state.meshId),
    seedOf(c.dir),
    aKey,
    aKey,
    aDataset,
    '16'
  ])
  const r = JSON.parse(await forger.waitLine(/^\{/, 60_000))

  await t.test('the forger reached shop-a as shop-c, and as the forged key was refused', () => {
    assert.ok(r.asMember.controlOpened, 'the compromised key is a member: it got the control channel')
    assert.ok(r.asX.connections > 0, 'the forged key did connect')
    assert.equal(r.asX.controlOpened, false, 'the forged key never got the control channel')
    assert.equal(r.asX.closed, true, 'shop-a closed the connection')
  })

  await t.test('no site admitted the forged key, nobody was removed, and no policy changed', async () => {
    // shop-b hears everything shop-a relays; give it the time a relay takes, then look.
    await waitUntil('shop-a relayed its alarms to shop-b', async () =>
      (await b.status()).reasons.some((x) => /UNKNOWN_SIGNER/.test(x.text))
    )
    for (const s of [a, b]) {
      const keys = memberKeys(s.dir)
      assert.ok(!keys.includes(r.x), `${s.name} did not admit the forged key`)
      assert.deepEqual(keys, before[s.name === 'shop-a' ? 'a' : 'b'], `${s.name}'s members are unchanged`)
      assert.equal(readMeshState(sitePaths(s.dir)).policies, undefined, `${s.name} holds no policy`)
    }
    const st = await a.status()
    assert.ok(
      st.refused.some((x) => x.key === r.x && /not a member/.test(x.reason)),
      JSON.stringify(st.refused)
    )
  })

  await t.test('every forgery is reported as CRIT, with its code, at shop-a and at shop-b', async () => {
    for (const s of [a, b]) {
      const st = await s.status()
      assert.equal(st.verdict, 'CRIT')
      const crit = st.reasons.filter((x) => x.level === 'CRIT').map((x) => x.text)
      const has = (re: RegExp) =>
        assert.ok(
          crit.some((x) => re.test(x)),
          `${s.name}: ${re} in ${crit.join(' | ')}`
        )
      has(/FORGED_STATEMENT: .*bad signature/)
      has(/FORGED_STATEMENT: .*another mesh/)
      has(/UNKNOWN_SIGNER: a member statement for intruder-x signed by a key that is not a member/)
      has(/UNKNOWN_SIGNER: .*vouched for itself/)
      has(/UNKNOWN_SIGNER: a removal of origin signed by a key that is not a member/)
      has(/NOT_ORIGIN: shop-c signed who may promote shop-a/)
    }
  })

  await t.test('the data is unchanged: shop-b still follows shop-a', async () => {
    writeWorkload(a.db, 7, 20)
    await waitUntil("shop-b holds shop-a's new rows", () => b.holdsExactly(a))
  })

  await t.test('a site that joins through shop-a is a member at shop-b before it ever starts', async () => {
    const e = sqliteSite(t, dir, 'shop-e', bootstrap)
    await e.join(await a.invite())
    await waitUntil('shop-b admitted shop-e', () => siteNames(b.dir).includes('shop-e'), 20_000)
    assert.equal(e.node, null, 'shop-e never ran')
    assert.ok(b.node!.lines.some((l) => /"msg":"new member"/.test(l) && /"admittedBy":"shop-a"/.test(l)))
  })
})

test('a new member is known at once: a site that never heard of it admits it on its own statement', async (t) => {
  const { dir, bootstrap, sites } = await meshSites(t, ['shop-a', 'shop-c'])
  const [a, c] = sites
  await converged(sites)
  // shop-c is off while shop-d joins through shop-a, and shop-a stops right after: nobody tells shop-c.
  await c.stop()
  const d = sqliteSite(t, dir, 'shop-d', bootstrap)
  writeWorkload(d.db, 3, 30)
  await d.join(await a.invite())
  await a.stop()
  assert.ok(!memberKeys(c.dir).includes(hex(readMeshState(sitePaths(d.dir)).members.at(-1)!.key)))
  const dKey = memberKeys(d.dir).find((k) => !memberKeys(c.dir).includes(k))!
  assert.ok(dKey, "shop-c's mesh.json does not know shop-d yet")
  await c.start()
  await d.start()

  await t.test('shop-c admits shop-d on the statement shop-a signed, and replicates its data', async () => {
    await waitUntil('shop-c admitted shop-d', () => memberKeys(c.dir).includes(dKey), 30_000)
    await waitUntil("shop-c holds shop-d's rows", () => c.holdsExactly(d))
    await waitUntil("shop-d holds shop-c's rows", () => d.holdsExactly(c))
    const st = await c.status()
    assert.ok(!st.reasons.some((x) => x.level === 'CRIT'), JSON.stringify(st.reasons))
    assert.ok(c.node!.lines.some((l) => /admitted a new member on its own statement/.test(l)))
  })

  await t.test("shop-d's role and statements came with the welcome", () => {
    const held = JSON.parse(fs.readFileSync(path.join(d.dir, 'statements.json'), 'utf8')) as string[]
    assert.ok(held.length >= 2, 'the welcome carried the member statements')
    assert.equal(fs.statSync(path.join(d.dir, 'statements.json')).mode & 0o777, 0o600)
  })
})
