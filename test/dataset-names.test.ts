import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import test, { type TestContext } from 'node:test'
import type { SiteStatus } from '../node/index.ts'
import { openBehindTheMesh, openWal, tmpDir } from './helpers/db.ts'
import { hintCommands } from './helpers/hints.ts'
import { allowOldNode, MESH, mesh, testnet, waitUntil } from './helpers/mesh.ts'
import { nodeProcess } from './helpers/teardown.ts'
import { setup, writeWorkload } from './helpers/workload.ts'

/** A site of these tests: its name, its database (till/shop.db: the same file name at every site), its mesh folder. */
interface Shop {
  name: string
  db: string
  dir: string
}

/**
 * Three shops, north, south and east, whose databases are all named shop.db (20 rows of workload each), and
 * north's mesh made (mesh init) on a local test network; no node started yet.
 */
async function threeShops(t: TestContext): Promise<{ bootstrap: string; sites: Shop[] }> {
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
  const north = sites[0]
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
  return { bootstrap, sites }
}

/** Joins `s` to north's mesh with an invite made at north; what mesh join printed. */
async function joinNorth(north: Shop, s: Shop, bootstrap: string): Promise<string> {
  const code = (await mesh(['invite', '--dir', north.dir])).stdout.trim().split('\n').pop()!
  const j = await mesh(['join', code, '--dir', s.dir, '--site', s.name, '--sqlite', s.db, '--bootstrap', bootstrap])
  assert.equal(j.code, 0, j.stderr)
  return j.stdout
}

async function statusOf(dir: string): Promise<SiteStatus> {
  const r = await mesh(['status', '--dir', dir, '--json'])
  return JSON.parse(r.stdout) as SiteStatus
}

test('three shops whose files are all shop.db get three dataset names, and commands naming them work', async (t) => {
  const { bootstrap, sites } = await threeShops(t)
  const start = (s: Shop) => {
    const p = nodeProcess(t, [MESH, 'start', '--dir', s.dir, '--log-json'], `the node at ${s.name}`)
    return p.waitLine(/"msg":"ready"/, 60_000)
  }
  const [north, ...others] = sites
  await start(north)
  const said: string[] = []
  for (const s of others) {
    said.push(await joinNorth(north, s, bootstrap))
    await start(s)
  }
  assert.match(
    said[0],
    /dataset name "shop" is already used in this mesh \(by north\), so this site's is named "shop-south"/
  )
  assert.match(said[1], /as dataset "shop-east"/)

  // Every site knows three datasets by three names, and holds the other two.
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

  // join writes every config key the README says init and join write.
  const readme = fs.readFileSync(new URL('../README.md', import.meta.url), 'utf8')
  const keys = [.../`init` and `join` also write (.*?) with their\s+defaults/s.exec(readme)![1].matchAll(/`(\w+)`/g)]
  for (const s of others) {
    const cfg = JSON.parse(fs.readFileSync(path.join(s.dir, 'config.json'), 'utf8'))
    for (const [, key] of keys) assert.ok(key in cfg, `${s.name}'s config.json has ${key}`)
  }

  // A mistyped dataset name says which one was meant; the name it suggests works.
  const typo = await mesh(['log', 'shop-sout', '--dir', north.dir])
  assert.equal(typo.code, 1)
  assert.match(typo.stderr, /^mesh: UNKNOWN_DATASET: no dataset named shop-sout in this mesh \(it has /m)
  const meant = /Did you mean ([\w-]+)\?/.exec(typo.stderr)
  assert.ok(meant, typo.stderr)
  assert.equal((await mesh(['log', meant[1], '--dir', north.dir, '--limit', '1'])).code, 0)
})

/** Runs every command `text` prints (at the sites it names, else at `here`); each must end with an expected code. */
async function runHints(
  text: string,
  here: { name: string; dir: string },
  sites: Array<{ name: string; dir: string }>,
  expect: (argv: string[]) => number[] = () => [0]
): Promise<string[]> {
  const found = hintCommands(
    text,
    sites.map((s) => s.name),
    ['shop', 'shop-south', 'shop-east']
  )
  assert.ok(found.length > 0, `a command is printed in: ${text}`)
  const ran: string[] = []
  for (const h of found) {
    const where = h.at.length === 0 ? [here] : h.at.map((n) => sites.find((s) => s.name === n)!)
    for (const s of where) {
      const argv = h.argv.includes('--dir') ? h.argv : [...h.argv, '--dir', s.dir]
      const r = await mesh(argv, { timeoutMs: 180_000 })
      assert.ok(
        expect(h.argv).includes(r.code ?? -1),
        `"${h.printed}" run at ${s.name} (mesh ${argv.join(' ')}) exited ${r.code}:\n${r.stdout}\n${r.stderr}`
      )
      ran.push(`${h.argv.join(' ')} @${s.name}`)
    }
  }
  return ran
}

test('every hint that names a dataset prints a command that works, run as printed', async (t) => {
  const { bootstrap, sites } = await threeShops(t)
  const [north, south, east] = sites
  const start = async (s: Shop) => {
    allowOldNode(s.dir)
    const p = nodeProcess(t, [MESH, 'start', '--dir', s.dir, '--log-json'], `the node at ${s.name}`)
    await p.waitLine(/"msg":"ready"/, 60_000)
  }
  await start(north)
  for (const s of [south, east]) {
    await joinNorth(north, s, bootstrap)
    await start(s)
  }
  await waitUntil(
    'every site holds every dataset, and knows every holder',
    async () => {
      for (const s of sites) {
        const st = await statusOf(s.dir)
        if (st.datasets.length !== 3 || st.datasets.some((d) => d.heldBy < 2)) return false
      }
      return true
    },
    120_000
  )
  const hintOf = (r: { stdout: string; stderr: string }) => {
    const out = JSON.parse(r.stdout)
    assert.ok(out.error?.hint, r.stdout + r.stderr)
    return out.error.hint as string
  }

  await t.test(
    'mesh verify at an origin: mesh checkpoint here, mesh verify at the sites that hold a copy',
    async () => {
      const r = await mesh(['verify', 'shop-south', '--dir', south.dir])
      assert.equal(r.code, 64, r.stderr)
      const ran = await runHints(r.stderr, south, sites)
      assert.deepEqual(ran.sort(), [
        'checkpoint shop-south @south',
        'verify shop-south @east',
        'verify shop-south @north'
      ])
    }
  )

  await t.test('mesh resync and mesh checkpoint at a copy name the origin to run them at', async () => {
    const resync = await mesh(['resync', 'shop-east', '--dir', north.dir])
    assert.equal(resync.code, 64, resync.stderr)
    assert.deepEqual(await runHints(resync.stderr, north, sites), ['resync shop-east @east'])
    const checkpoint = await mesh(['checkpoint', 'shop', '--dir', south.dir])
    assert.equal(checkpoint.code, 64, checkpoint.stderr)
    assert.deepEqual(await runHints(checkpoint.stderr, south, sites), ['checkpoint shop @north'])
  })

  await t.test("a copy changed behind the mesh: mesh status's commands mend it, one after the other", async () => {
    // Someone changes north's copy of shop-east; the next checkpoint of east's shows it at north.
    const file = fs
      .readdirSync(path.join(north.dir, 'replicas'))
      .find((f) => f.startsWith('east-') && f.endsWith('.db'))!
    const copy = openBehindTheMesh(path.join(north.dir, 'replicas', file))
    copy.prepare('UPDATE accounts SET balance = balance + 1 WHERE id = 3').run()
    copy.close()
    assert.equal((await mesh(['checkpoint', 'shop-east', '--dir', east.dir])).code, 0)
    let reason = ''
    await waitUntil(
      "north's status says its copy of shop-east differs from east's checkpoint",
      async () => {
        const st = await statusOf(north.dir)
        reason = st.reasons.find((x) => x.level === 'CRIT' && /copy of shop-east differs from/.test(x.text))?.text ?? ''
        return reason !== ''
      },
      60_000
    )
    // The text a person reads says the same: the reasons are what the dashboard and the alerts show too.
    assert.ok((await mesh(['status', '--dir', north.dir])).stdout.includes(reason))
    // verify finds the difference (exit 2), repair mends it, resync at the origin is harmless.
    const ran = await runHints(reason, north, sites, (argv) => (argv[0] === 'verify' ? [2] : [0]))
    assert.deepEqual(ran, ['verify shop-east @north', 'repair shop-east @north', 'resync shop-east @east'])
    await waitUntil(
      "north's status is clear of it: the copy equals east's checkpoint again",
      async () => !(await statusOf(north.dir)).reasons.some((x) => /shop-east/.test(x.text) && x.level !== 'OK'),
      90_000
    )
  })

  await t.test('mesh promote while the origin is healthy: the handover it names moves the origin', async () => {
    const r = await mesh(['promote', 'shop-south', '--dir', north.dir, '--json'])
    assert.equal(r.code, 1)
    assert.equal(JSON.parse(r.stdout).error.code, 'ORIGIN_HEALTHY')
    assert.deepEqual(await runHints(hintOf(r), north, sites), ['handover shop-south --to north @south'])
    await waitUntil(
      'every site sees north as the origin of shop-south',
      async () => {
        for (const s of sites) {
          const d = (await statusOf(s.dir)).datasets.find((x) => x.name === 'shop-south')
          if (d?.originSite !== 'north') return false
        }
        return true
      },
      90_000
    )
    // A handover asked at the old origin names the site to run it at now.
    const again = await mesh(['handover', 'shop-south', '--to', 'east', '--dir', south.dir])
    assert.equal(again.code, 1, again.stderr)
    assert.deepEqual(await runHints(again.stderr, south, sites), ['handover shop-south --to east @north'])
    await waitUntil(
      'south sees east as the origin of shop-south',
      async () => (await statusOf(south.dir)).datasets.find((x) => x.name === 'shop-south')?.originSite === 'east',
      90_000
    )
  })
})
