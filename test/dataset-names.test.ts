import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import test from 'node:test'
import type { SiteStatus } from '../node/index.ts'
import { openWal, tmpDir } from './helpers/db.ts'
import { MESH, mesh, testnet, waitUntil } from './helpers/mesh.ts'
import { nodeProcess } from './helpers/teardown.ts'
import { setup, writeWorkload } from './helpers/workload.ts'

test('three shops whose files are all shop.db get three dataset names, and commands naming them work', async (t) => {
  const root = tmpDir(t)
  const bootstrap = await testnet(t)
  const sites = ['north', 'south', 'east'].map((name) => {
    fs.mkdirSync(path.join(root, name, 'till'), { recursive: true })
    const db = path.join(root, name, 'till', 'shop.db')
    const h = openWal(db)
    setup(h)
    h.close()
    writeWorkload(db, name.length, 20)
    return { name, db, dir: path.join(root, name, 'mesh') }
  })
  const start = (s: (typeof sites)[0]) => {
    const p = nodeProcess(t, [MESH, 'start', '--dir', s.dir, '--log-json'], `the node at ${s.name}`)
    return p.waitLine(/"msg":"ready"/, 60_000)
  }
  const [north, ...others] = sites
  const init = await mesh([
    'init',
    '--dir',
    north.dir,
    '--site',
    'north',
    '--sqlite',
    north.db,
    '--bootstrap',
    bootstrap
  ])
  assert.equal(init.code, 0, init.stderr)
  await start(north)
  const said: string[] = []
  for (const s of others) {
    const code = (await mesh(['invite', '--dir', north.dir])).stdout.trim().split('\n').pop()!
    const j = await mesh(['join', code, '--dir', s.dir, '--site', s.name, '--sqlite', s.db, '--bootstrap', bootstrap])
    assert.equal(j.code, 0, j.stderr)
    said.push(j.stdout)
    await start(s)
  }
  assert.match(
    said[0],
    /dataset name "shop" is already used in this mesh \(by north\), so this site's is named "shop-south"/
  )
  assert.match(said[1], /as dataset "shop-east"/)

  // Every site knows three datasets by three names, and holds the other two.
  const statusOf = async (dir: string) => {
    const r = await mesh(['status', '--dir', dir, '--json'])
    return JSON.parse(r.stdout) as SiteStatus
  }
  await waitUntil(
    'every site holds the two other datasets',
    async () => {
      for (const s of sites) {
        const st = await statusOf(s.dir)
        if (st.datasets.length !== 3 || st.datasets.some((d) => d.heldBy < 2)) return false
      }
      return true
    },
    90_000
  )
  const names = (await statusOf(north.dir)).datasets.map((d) => d.name).sort()
  assert.deepEqual(names, ['shop', 'shop-east', 'shop-south'])
  // A command naming each dataset picks exactly that one: verify at north, of south's and east's.
  for (const n of ['shop-south', 'shop-east']) {
    const v = await mesh(['verify', n, '--dir', north.dir, '--json'])
    assert.equal(v.code, 0, v.stderr)
    assert.equal(JSON.parse(v.stdout).ok, true)
  }
})
