/**
 * `mesh rotate-key` (issue 15 item 5): a site's key replaced while its node runs; it keeps replicating under
 * the new key, every site replaces it, and the old key is refused from then on.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { readMeshState, sitePaths } from '../node/index.ts'
import { converged, mesh, meshSites, waitUntil } from './helpers/mesh.ts'
import { tsProcess } from './helpers/teardown.ts'
import { writeWorkload } from './helpers/workload.ts'

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex')

test('mesh rotate-key: the site keeps replicating under its new key, and the old key is refused', async (t) => {
  const { bootstrap, sites } = await meshSites(t, ['shop-a', 'shop-b'])
  const [a, b] = sites
  await converged(sites)
  const keyFile = path.join(b.dir, 'site.key')
  const oldSeed = fs.readFileSync(keyFile, 'utf8').trim()
  const state = readMeshState(sitePaths(a.dir))
  const oldKey = hex(state.members.find((m) => m.site === 'shop-b')!.key)
  let newKey = ''

  await t.test('shop-b rotates its key: site.key is replaced (0600), and every site replaces the member', async () => {
    const r = await mesh(['rotate-key', '--dir', b.dir, '--json'])
    assert.equal(r.code, 0, r.stderr)
    const j = JSON.parse(r.stdout)
    assert.equal(j.old, oldKey)
    newKey = j.key
    assert.notEqual(newKey, oldKey)
    assert.notEqual(fs.readFileSync(keyFile, 'utf8').trim(), oldSeed)
    assert.equal(fs.statSync(keyFile).mode & 0o777, 0o600)
    assert.equal(fs.existsSync(`${keyFile}.new`), false)
    await waitUntil('shop-a replaced shop-b key', () =>
      readMeshState(sitePaths(a.dir)).members.some((m) => m.site === 'shop-b' && hex(m.key) === newKey)
    )
    const sa = readMeshState(sitePaths(a.dir))
    assert.equal(hex(sa.datasets.find((d) => d.originSite === 'shop-b')!.origin), newKey, 'its dataset origin too')
    assert.ok((sa.removed ?? []).some((x) => hex(x.key) === oldKey && x.reason === 'key rotated'))
  })

  await t.test('both ways, the data keeps flowing under the new key', async () => {
    writeWorkload(b.db, 31, 30)
    writeWorkload(a.db, 32, 30)
    await converged(sites)
    const st = await a.status()
    assert.ok(
      st.members.some((m) => m.site === 'shop-b' && m.key === newKey && m.connected),
      JSON.stringify(st.members)
    )
  })

  await t.test('the old key is refused at the handshake', async () => {
    const probe = tsProcess(t, 'test/helpers/forger.ts', [
      'connect',
      bootstrap,
      hex(state.meshId),
      oldSeed,
      hex(state.members.find((m) => m.site === 'shop-a')!.key),
      '6'
    ])
    const seen = JSON.parse(await probe.waitLine(/^\{/, 30_000))
    assert.equal(seen.connections, 0)
    await waitUntil('shop-a counted the refusal', async () =>
      (await a.status()).refused.some((x) => x.key === oldKey && /old key of shop-b/.test(x.reason))
    )
  })

  await t.test('after a restart shop-b still runs under the new key', async () => {
    await b.stop()
    await b.start()
    writeWorkload(a.db, 33, 20)
    await converged(sites)
    assert.equal((await b.status()).key, newKey)
  })
})
