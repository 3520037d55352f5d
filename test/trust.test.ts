import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { dump } from './helpers/db.ts'
import { mesh, meshSites, waitUntil, type TestSite } from './helpers/mesh.ts'
import { ROOT } from './helpers/proc.ts'
import { writeWorkload } from './helpers/workload.ts'

/** Runs the changed member (test/helpers/promotion-forger.ts) with the key of `x`, whose node is stopped. */
function forge(x: TestSite, mode: string, dataset: string): Promise<{ peers: string[]; epoch: number; log: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(
      process.execPath,
      ['--import', 'tsx', path.join(ROOT, 'test/helpers/promotion-forger.ts'), x.dir, x.bootstrap, mode, dataset, '8'],
      { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] }
    )
    let out = ''
    let err = ''
    p.stdout.on('data', (d) => (out += d))
    p.stderr.on('data', (d) => (err += d))
    p.on('exit', (code) => {
      if (code !== 0) return reject(new Error(`the forger (${mode}) exited ${code}: ${out}\n${err}`))
      resolve(JSON.parse(out.trim().split('\n').pop()!))
    })
  })
}

/** The site's node raised an alarm with this code about shop-x, whose text holds `marker`. */
function raised(s: TestSite, code: string, marker: string): boolean {
  return (s.node?.lines ?? []).some(
    (l) =>
      l.includes('"msg":"alarm"') &&
      l.includes(`"code":"${code}"`) &&
      l.includes('"site":"shop-x"') &&
      l.includes(marker)
  )
}

/** The CRIT lines of a site's status. */
async function crits(s: TestSite): Promise<string[]> {
  return (await s.status()).reasons.filter((r) => r.level === 'CRIT').map((r) => r.text)
}

async function head(s: TestSite, ds: string): Promise<{ epoch: number; originSite: string }> {
  const d = (await s.status()).datasets.find((x) => x.name === ds)!
  return { epoch: d.epoch, originSite: d.originSite }
}

test(
  "a changed member's forged promotions change nothing at any site and are reported as CRIT naming it; " +
    'promote --force is refused while the origin is healthy',
  async (t) => {
    const { sites } = await meshSites(t, ['shop-a', 'shop-b', 'shop-c', 'shop-x'], (s) =>
      writeWorkload(s[0].db, 3, 30, 6)
    )
    const [a, b, c, x] = sites
    const ds = 'shop-a'
    const rows = () => JSON.stringify(dump(a.db))
    let before = ''
    let liveLog = ''

    await t.test("every site holds A's rows; the changed member's node is stopped, its key kept", async () => {
      await waitUntil("B, C and X hold A's rows", () => b.holdsExactly(a) && c.holdsExactly(a) && x.holdsExactly(a))
      await x.stop()
      before = rows()
    })

    /** The forgery left every site following A, A's rows as they were, and B and C holding exactly them. */
    async function unchanged(): Promise<void> {
      for (const s of [a, b, c]) assert.deepEqual(await head(s, ds), { epoch: 0, originSite: 'shop-a' }, s.name)
      assert.equal(rows(), before, "A's database is unchanged")
      assert.ok(b.holdsExactly(a) && c.holdsExactly(a), "B and C still hold exactly A's rows")
    }

    const cases: Array<{ mode: string; code: string; what: string }> = [
      { mode: 'unsigned', code: 'UNSIGNED_PROMOTION', what: 'a new epoch whose log carries no signed promotion' },
      { mode: 'epoch', code: 'BAD_PROMOTION', what: 'a signed promotion of a bogus higher epoch' },
      { mode: 'branch', code: 'BRANCH_POINT', what: 'a branch point below what the sites applied' },
      { mode: 'future', code: 'BAD_PROMOTION', what: 'a promotion dated in the future' },
      { mode: 'stranger', code: 'BAD_PROMOTION', what: 'a promotion signed by a key that is not a member' },
      { mode: 'badsig', code: 'FORGED_STATEMENT', what: 'a promotion with a broken signature' },
      { mode: 'handover', code: 'BAD_PROMOTION', what: 'a promotion with a handover the origin did not sign' },
      { mode: 'live', code: 'ORIGIN_LIVE', what: 'a take-over while the origin is running and connected' }
    ]
    for (const k of cases) {
      await t.test(`${k.what}: refused (${k.code}) at B and C, naming shop-x; nothing changes`, async () => {
        const f = await forge(x, k.mode, ds)
        if (k.mode === 'live') liveLog = f.log.slice(0, 12)
        assert.equal(f.peers.length, 3, `the forger reached every site: ${f.peers}`)
        // The statement's text names the forged log, but a broken signature is refused before it is read.
        const marker = k.code === 'FORGED_STATEMENT' ? 'shop-x' : f.log.slice(0, 12)
        for (const s of [b, c]) {
          await waitUntil(
            `${s.name} refused it (${k.code}) and its status is CRIT naming shop-x`,
            async () =>
              raised(s, k.code, marker) &&
              (await crits(s)).some((l) => l.includes(`${k.code}: shop-x`) && l.includes(marker)),
            30_000
          )
        }
        if (k.mode === 'live') {
          // The origin refused it itself; B and C followed its word.
          assert.ok((await crits(b)).some((l) => l.startsWith('shop-a refused') && l.includes('ORIGIN_LIVE')))
        }
        await unchanged()
      })
    }

    await t.test('promote --force at B while A is healthy: ORIGIN_HEALTHY, pointing to mesh handover', async () => {
      const r = await mesh(['promote', ds, '--dir', b.dir, '--force', '--json'])
      const out = JSON.parse(r.stdout)
      assert.equal(r.code, 1)
      assert.equal(out.error.code, 'ORIGIN_HEALTHY')
      assert.match(out.error.hint, /mesh handover/)
      await unchanged()
    })

    await t.test('A still takes writes and B and C still follow it', async () => {
      writeWorkload(a.db, 4, 20, 6)
      await waitUntil("B and C hold A's new rows", () => b.holdsExactly(a) && c.holdsExactly(a))
      for (const s of [a, b, c]) assert.deepEqual(await head(s, ds), { epoch: 0, originSite: 'shop-a' }, s.name)
    })

    await t.test('mesh accept with nothing to accept, and a bad epoch, say what to do', async () => {
      const r = await mesh(['accept', ds, '--epoch', '9', '--dir', b.dir, '--json'])
      assert.equal(r.code, 1)
      assert.equal(JSON.parse(r.stdout).error.code, 'NOTHING_TO_ACCEPT')
      const bad = await mesh(['accept', ds, '--epoch', 'x', '--dir', b.dir])
      assert.equal(bad.code, 64)
      assert.match(bad.stderr, /Try: mesh accept DATASET --epoch N/)
    })

    await t.test('a person accepts the refused take-over at C only: C follows it, its alarm clears there', async () => {
      const r = await mesh(['accept', ds, '--epoch', '1', '--dir', c.dir, '--json'])
      assert.equal(r.code, 0, r.stdout + r.stderr)
      assert.equal(JSON.parse(r.stdout).origin, 'shop-x')
      await waitUntil('C follows epoch 1 of shop-x', async () => (await head(c, ds)).originSite === 'shop-x', 30_000)
      const alarms = JSON.parse(fs.readFileSync(path.join(c.dir, 'alarms.json'), 'utf8')) as Array<{ text: string }>
      assert.ok(liveLog !== '')
      assert.deepEqual(
        alarms.filter((x) => x.text.includes(liveLog)),
        [],
        "C's own alarm about it is cleared"
      )
      for (const s of [a, b]) assert.deepEqual(await head(s, ds), { epoch: 0, originSite: 'shop-a' }, s.name)
    })
  }
)
