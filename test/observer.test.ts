/**
 * Issue 17 item 1 on real nodes: an observer (`mesh invite --observer`), such as the owner's laptop, receives
 * the members, the datasets and every site's signed reports, so its status and dashboard show the whole mesh,
 * and never a log's block nor a data key.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import Corestore from 'corestore'
import { askNode, readMeshState, sitePaths, type SiteStatus } from '../node/index.ts'
import { allowOldNode, converged, MESH, mesh, meshSites, waitUntil } from './helpers/mesh.ts'
import { startNodeProcess } from './helpers/proc.ts'
import { teardown, tsProcess } from './helpers/teardown.ts'
import { writeWorkload } from './helpers/workload.ts'

test('an observer sees every site and dataset, and holds no log block and no data key', async (t) => {
  const m = await meshSites(t, ['shop-a', 'shop-b'])
  const [a, b] = m.sites
  const dir = path.join(m.dir, 'laptop')

  await t.test('mesh invite --observer, then mesh join without a database', async () => {
    const inv = await mesh(['invite', '--dir', a.dir, '--observer'])
    assert.equal(inv.code, 0, inv.stderr)
    assert.match(inv.stdout, /^Observer join code made by shop-a/)
    const code = inv.stdout.trim().split('\n').pop()!
    const withDb = await mesh(['join', code, '--dir', dir, '--site', 'laptop', '--sqlite', a.db])
    assert.equal(withDb.code, 64)
    assert.match(withDb.stderr, /--sqlite does not apply: this join code is for an observer/)
    const r = await mesh(['join', code, '--dir', dir, '--site', 'laptop', '--bootstrap', m.bootstrap])
    assert.equal(r.code, 0, r.stderr)
    assert.match(r.stdout, /This is an observer/)
    const both = await mesh(['invite', '--dir', a.dir, '--observer', '--blind'])
    assert.equal(both.code, 64)
  })

  allowOldNode(dir)
  // The owner's laptop: its node serves the dashboard (port 0: any free one, named in its log).
  const node = startNodeProcess(
    [MESH, 'start', '--dir', dir, '--log-json', '--dashboard', '127.0.0.1:0'],
    'the observer'
  )
  teardown(t, () => node.kill('SIGKILL'))
  await node.waitLine(/"msg":"ready"/, 60_000)
  writeWorkload(a.db, 1, 30)
  writeWorkload(b.db, 2, 30)
  await converged([a, b])

  await t.test('its status shows both sites and their copies from their reports, all OK', async () => {
    const view = async () => ((await askNode(dir, 'status')) as { status: SiteStatus }).status
    await waitUntil('the observer sees every copy caught up', async () => {
      const s = await view()
      return (
        s.datasets.length === 2 &&
        s.datasets.every((d) => d.holders.length === 2 && d.holders.every((h) => h.applied === d.length))
      )
    })
    const s = await view()
    assert.equal(s.verdict, 'OK', JSON.stringify(s.reasons))
    assert.deepEqual(
      s.members.map((x) => [x.site, x.role]),
      [
        ['shop-a', 'full'],
        ['shop-b', 'full'],
        ['laptop', 'observer']
      ]
    )
    const text = await mesh(['status', '--dir', dir])
    assert.match(text.stdout, /laptop +this site +observer/)
  })

  await t.test('its dashboard shows every site, and its metrics the lag of every copy', async () => {
    const url = /"url":"(http:\/\/127\.0\.0\.1:\d+\/)"/.exec(await node.waitLine(/"msg":"dashboard"/))![1]
    const view = (await (await fetch(`${url}api/view`)).json()) as { sites: Record<string, { verdict: string }> }
    assert.deepEqual(
      Object.values(view.sites).map((x) => x.verdict),
      ['OK', 'OK', 'OK']
    )
    const metrics = await (await fetch(`${url}metrics`)).text()
    for (const d of ['shop-a', 'shop-b']) {
      for (const s of ['shop-a', 'shop-b']) {
        assert.match(metrics, new RegExp(`^branchmesh_lag_seconds\\{dataset="${d}",site="${s}"\\} 0$`, 'm'))
      }
    }
    assert.doesNotMatch(metrics, /^branchmesh_lag_seconds\{[^}]*site="laptop"/m, 'an observer holds no copy')
  })

  await t.test('the full sites show it as an observer, holding nothing, with no warning', async () => {
    await waitUntil('shop-b has heard from the observer', async () => {
      const s = await b.status()
      return s.members.some((x) => x.site === 'laptop' && x.connected)
    })
    const s = await b.status()
    assert.equal(s.members.find((x) => x.site === 'laptop')?.role, 'observer')
    for (const d of s.datasets) assert.ok(!d.holders.some((h) => h.site === 'laptop'))
    assert.equal(s.verdict, 'OK', JSON.stringify(s.reasons))
  })

  await t.test('commands that need data are refused there', async () => {
    const log = await mesh(['log', 'shop-a', '--dir', dir])
    assert.equal(log.code, 1)
    assert.match(log.stderr, /OBSERVER_SITE: laptop is an observer/)
  })

  await t.test('its store holds no block of any log, and it has no data key', async () => {
    const logs = (await b.status()).datasets.map((d) => d.log)
    await node.kill('SIGTERM')
    assert.ok(!fs.existsSync(path.join(dir, 'keys')) || fs.readdirSync(path.join(dir, 'keys')).length === 0)
    assert.ok(!fs.existsSync(path.join(dir, 'replicas')) || fs.readdirSync(path.join(dir, 'replicas')).length === 0)
    const store = new Corestore(path.join(dir, 'store'))
    teardown(t, () => store.close())
    for (const k of logs) {
      const core = store.get({ key: Buffer.from(k, 'hex') })
      await core.ready()
      assert.equal(core.contiguousLength, 0, `no block of log ${k.slice(0, 12)}`)
      await core.close()
    }
  })

  await t.test("an observer's key in the wrong hands, asking for every log by key, gets no block", async () => {
    const state = readMeshState(sitePaths(a.dir))
    const keys = state.datasets.map((d) => Buffer.from(d.log).toString('hex'))
    const seed = fs.readFileSync(path.join(dir, 'site.key'), 'utf8').trim()
    const args = [m.bootstrap, Buffer.from(state.meshId).toString('hex'), seed, 'laptop', '8', keys.join(',')]
    const thief = tsProcess(t, 'test/helpers/blind-thief.ts', args)
    const r = JSON.parse(await thief.waitLine(/^\{/, 60_000)) as { connections: number; blocks: Record<string, number> }
    assert.ok(r.connections > 0, JSON.stringify(r))
    for (const k of keys) assert.equal(r.blocks[k], 0, JSON.stringify(r))
  })
})
