import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { StatementKind, decodeDataKey, decodeStatement } from '../protocol/index.ts'
import { readMeshState, readSiteKey, sitePaths } from '../node/index.ts'
import { dump, openWal, tmpDir } from './helpers/db.ts'
import { tsProcess } from './helpers/teardown.ts'
import { mesh, promoteOnceLost, sqliteSite, testnet, waitUntil, type TestSite } from './helpers/mesh.ts'
import { writeWorkload } from './helpers/workload.ts'

/** A row value no program writes by chance: if it is anywhere in a blind site's directory, plaintext leaked. */
const MARKER = `blind-marker-${crypto.randomBytes(8).toString('hex')}`

function writeMarkers(file: string, from: number, n: number): void {
  const db = openWal(file)
  const ins = db.prepare('INSERT INTO notes (body, weight) VALUES (?, ?)')
  db.transaction(() => {
    for (let i = from; i < from + n; i++) ins.run(`${MARKER} row ${i}`, i)
  })()
  db.close()
}

/** Files under `dir` whose bytes contain `needle` (grep -r -a -l: binary files, RocksDB and SQLite included). */
function grep(dir: string, needle: string): string[] {
  const r = spawnSync('grep', ['-r', '-a', '-l', '-F', '--', needle, dir], { encoding: 'utf8' })
  assert.ok(r.status === 0 || r.status === 1, `grep failed: ${r.stderr}`)
  return r.stdout.split('\n').filter(Boolean)
}

/** Files under `dir` whose bytes contain `needle` (raw bytes, for a key that is no text). */
function filesWith(dir: string, needle: Buffer): string[] {
  const out: string[] = []
  for (const e of fs.readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (!e.isFile()) continue
    const f = path.join(e.parentPath, e.name)
    if (fs.readFileSync(f).includes(needle)) out.push(f)
  }
  return out
}

async function joinBlind(site: TestSite, code: string): Promise<void> {
  const r = await mesh(['join', code, '--dir', site.dir, '--site', site.name, '--bootstrap', site.bootstrap])
  assert.equal(r.code, 0, `mesh join (blind) failed: ${r.stderr}`)
}

/** The data key `site` holds for home's dataset (every full site has a dataset of its own too). */
function dataKeyOf(site: TestSite): { hex: string; raw: Buffer; file: string; id: string } {
  const id = readMeshState(sitePaths(site.dir)).datasets.find((d) => d.name === 'home')!.id
  const file = path.join(site.dir, 'keys', `${id}.key`)
  const hex = fs.readFileSync(file, 'utf8').trim()
  return { hex, raw: Buffer.from(hex, 'hex'), file, id }
}

test(
  'a blind site stores and serves the encrypted log: a site that was off gets it from the blind site while ' +
    'the origin is off; no row value and no data key is ever at the blind site',
  async (t) => {
    const root = tmpDir(t, 'blind-')
    const bootstrap = await testnet(t)
    const home = sqliteSite(t, root, 'home', bootstrap)
    const box = sqliteSite(t, root, 'offsite-box', bootstrap)
    const branch = sqliteSite(t, root, 'branch', bootstrap)
    writeMarkers(home.db, 0, 50)
    await home.init()
    await home.start()

    await t.test('a blind invite makes a blind site, which takes no database', async () => {
      await joinBlind(box, await home.invite(['--blind']))
      assert.equal(fs.existsSync(path.join(box.dir, 'keys')), false)
      const me = readMeshState(sitePaths(box.dir)).members.find((m) => m.site === box.name)
      assert.equal(me?.role, 'blind', 'the welcome told the joiner its role')
      await box.start()
      await branch.join(await home.invite())
    })

    await t.test('the blind site holds the whole log, and the sealed key for the site that is off', async () => {
      writeMarkers(home.db, 50, 100)
      writeWorkload(home.db, 7, 40)
      const branchKey = readSiteKey(sitePaths(branch.dir)).publicKey
      // A checkpoint is appended only once every write before it is in the log: the blind site must hold the
      // log past it before home stops (capture runs on its own clock, slower on a loaded machine).
      const cp = await mesh(['checkpoint', 'home', '--dir', home.dir, '--json'])
      assert.equal(cp.code, 0, `mesh checkpoint failed: ${cp.stderr}`)
      // home's own status reads its log as it is now, so its length from here on counts the checkpoint.
      await waitUntil('the blind site holds all of home’s log, past the checkpoint', async () => {
        const s = await home.status()
        const d = s.datasets.find((x) => x.name === 'home')
        const h = d?.holders.find((x) => x.site === box.name)
        return d !== undefined && d.length > 1 && h?.role === 'blind' && h.downloaded === d.length
      })
      await waitUntil('the blind site holds a data key grant sealed to branch', () => {
        const file = path.join(box.dir, 'statements.json')
        if (!fs.existsSync(file)) return false
        const held = (JSON.parse(fs.readFileSync(file, 'utf8')) as string[]).map((h) =>
          decodeStatement(Buffer.from(h, 'hex'))
        )
        return held.some(
          (s) => s.kind === StatementKind.dataKey && Buffer.from(decodeDataKey(s.body).to).equals(branchKey)
        )
      })
    })

    await t.test('with the origin off, the site that was off gets the log from the blind site', async () => {
      await home.stop()
      await branch.start()
      await waitUntil('branch holds exactly home’s rows, from the blind site', () => branch.holdsExactly(home), 90_000)
      const s = await branch.status()
      assert.equal(s.members.find((m) => m.site === home.name)!.connected, false)
      assert.equal(
        s.datasets.find((x) => x.name === 'home')!.holders.find((h) => h.site === branch.name)!.lagEntries,
        0
      )
    })

    await t.test('no row value appears anywhere in the blind site’s directory', () => {
      // The same search finds it where it must be: the site that was off has the rows in its replica.
      assert.notDeepEqual(grep(branch.dir, MARKER), [], 'the marker is in branch’s replica')
      assert.deepEqual(grep(box.dir, MARKER), [], 'plaintext at the blind site')
    })

    await t.test(
      'the data key is in key files of mode 0600 at full members only, never in logs or status',
      async () => {
        const key = dataKeyOf(home)
        assert.equal(fs.statSync(key.file).mode & 0o777, 0o600)
        const got = dataKeyOf(branch)
        assert.equal(got.hex, key.hex, 'branch received the same key, sealed to it')
        assert.equal(fs.statSync(got.file).mode & 0o777, 0o600)
        assert.equal(fs.existsSync(path.join(box.dir, 'keys')), false, 'the blind site holds no key')
        await home.start()
        for (const s of [home, box, branch]) {
          const status = await mesh(['status', '--dir', s.dir, '--json'])
          for (const text of [status.stdout, status.stderr, (s.node?.lines ?? []).join('\n')]) {
            assert.equal(text.includes(key.hex), false, `the key in hex at ${s.name}`)
            assert.equal(Buffer.from(text).includes(key.raw), false, `the raw key at ${s.name}`)
          }
          const logs = fs.readdirSync(s.dir).filter((f) => /^node(\.\d+)?\.log$/.test(f))
          assert.ok(logs.length > 0, `the node log of ${s.name} is there to look in`)
          for (const f of logs) assert.equal(fs.readFileSync(path.join(s.dir, f), 'utf8').includes(key.hex), false)
          // Nor in the log store, mesh.json or statements.json: only in keys/.
          for (const f of [...filesWith(s.dir, key.raw), ...grep(s.dir, key.hex)]) {
            assert.ok(f.startsWith(path.join(s.dir, 'keys')), `the key is in ${f}`)
          }
        }
      }
    )

    await t.test('status shows the blind site as blind; it cannot promote', async () => {
      const r = await mesh(['status', '--dir', box.dir, '--json'])
      const s = JSON.parse(r.stdout)
      assert.equal(s.members.find((m: { site: string }) => m.site === box.name).role, 'blind')
      const ds = s.datasets.find((x: { name: string }) => x.name === 'home')
      const h = ds.holders.find((x: { site: string }) => x.site === box.name)
      assert.equal(h.role, 'blind')
      const text = await mesh(['status', '--dir', home.dir])
      assert.match(text.stdout, /offsite-box\s+\S.*blind/)
      const p = await mesh(['promote', 'home', '--dir', box.dir])
      assert.notEqual(p.code, 0)
      assert.match(p.stderr, /^mesh: BLIND_SITE:/m)
    })

    await t.test('an expired blind invite is refused with its code, and nothing changes anywhere', async () => {
      const code = await home.invite(['--blind', '--expires', '1s'])
      await new Promise((r) => setTimeout(r, 1500))
      const known = () => {
        const m = readMeshState(sitePaths(home.dir))
        return JSON.stringify({ members: m.members, datasets: m.datasets })
      }
      const before = known()
      const late = path.join(root, 'late-box')
      const r = await mesh(['join', code, '--dir', late, '--site', 'late-box', '--bootstrap', bootstrap])
      assert.notEqual(r.code, 0)
      assert.match(r.stderr, /^mesh: JOIN_CODE_EXPIRED:/m)
      assert.equal(fs.existsSync(late), false, 'no data directory is left')
      assert.equal(known(), before)
      assert.equal(readMeshState(sitePaths(home.dir)).members.length, 3)
    })
  }
)

test(
  'a plaintext dataset moves to encrypted logs through a new epoch: the blind site never holds the plaintext ' +
    'log, holds the encrypted one, and a full member reads both',
  async (t) => {
    const root = tmpDir(t, 'blind-upgrade-')
    const bootstrap = await testnet(t)
    const home = sqliteSite(t, root, 'home', bootstrap)
    const box = sqliteSite(t, root, 'offsite-box', bootstrap)
    const branch = sqliteSite(t, root, 'branch', bootstrap)
    await home.init()
    // A mesh from before encryption: its dataset's logs are plaintext.
    const cfgFile = path.join(home.dir, 'config.json')
    fs.writeFileSync(
      cfgFile,
      JSON.stringify({ ...JSON.parse(fs.readFileSync(cfgFile, 'utf8')), encryptNewDatasets: false })
    )
    writeMarkers(home.db, 0, 40)
    await home.start()
    await joinBlind(box, await home.invite(['--blind']))
    await branch.join(await home.invite())
    await box.start()
    await branch.start()
    const name = 'home'

    await t.test('the blind site does not hold the plaintext log, and says so', async () => {
      await waitUntil('branch holds exactly home’s rows', () => branch.holdsExactly(home))
      await waitUntil('home’s status shows the blind site not holding the plaintext log', async () => {
        const h = (await home.status()).datasets
          .find((x) => x.name === 'home')
          ?.holders.find((x) => x.site === box.name)
        return h?.error === 'NOT_ENCRYPTED'
      })
      assert.deepEqual(grep(box.dir, MARKER), [])
      const id = readMeshState(sitePaths(home.dir)).datasets.find((d) => d.name === name)!.id
      assert.equal(
        fs.existsSync(path.join(home.dir, 'keys', `${id}.key`)),
        false,
        'no data key for a plaintext dataset'
      )
    })

    await t.test('a blind site’s key in the wrong hands gets no block of a plaintext log', async () => {
      await box.stop()
      const state = readMeshState(sitePaths(home.dir))
      const plain = state.datasets.find((d) => d.name === name)!
      const sealed = state.datasets.find((d) => d.name === 'branch')!
      assert.equal(plain.encryptedFrom, undefined)
      assert.equal(sealed.encryptedFrom, 0)
      const seed = fs.readFileSync(path.join(box.dir, 'site.key'), 'utf8').trim()
      const keys = [plain.log, sealed.log].map((k) => Buffer.from(k).toString('hex'))
      const args = [bootstrap, Buffer.from(state.meshId).toString('hex'), seed, box.name, '8', keys.join(',')]
      const thief = tsProcess(t, 'test/helpers/blind-thief.ts', args)
      const r = JSON.parse(await thief.waitLine(/^\{/, 60_000)) as {
        connections: number
        blocks: Record<string, number>
      }
      assert.ok(r.connections > 0)
      // The encrypted log flows to it (what a blind site is for), the plaintext one never does.
      assert.ok(r.blocks[keys[1]] > 0, JSON.stringify(r))
      assert.equal(r.blocks[keys[0]], 0, JSON.stringify(r))
      await box.start()
    })

    await t.test('mesh encrypt at the origin seals a new key to the full member; elsewhere it is refused', async () => {
      const other = await mesh(['encrypt', name, '--dir', branch.dir])
      assert.notEqual(other.code, 0)
      assert.match(other.stderr, /^mesh: NOT_ORIGIN:/m)
      const r = await mesh(['encrypt', name, '--dir', home.dir, '--json'])
      assert.equal(r.code, 0, r.stderr)
      assert.deepEqual(JSON.parse(r.stdout), { dataset: name, from: 1, epoch: 0, already: false })
      const file = path.join(branch.dir, 'keys', `${dataKeyOf(home).id}.key`)
      await waitUntil('branch received the data key', () => fs.existsSync(file))
      assert.equal(dataKeyOf(branch).hex, dataKeyOf(home).hex)
      assert.equal(fs.existsSync(path.join(box.dir, 'keys')), false)
    })

    await t.test('the next epoch is encrypted: the blind site holds it, and reads none of it', async () => {
      await home.stop()
      const p = await promoteOnceLost(branch.dir, name, ['--force'])
      assert.equal(p.code, 0, p.stderr)
      const promoted = JSON.parse(p.stdout) as { epoch: number; path: string }
      assert.equal(promoted.epoch, 1)
      writeMarkers(promoted.path, 1000, 60)
      // The markers are in the log once a checkpoint after them is: only then does the search below mean much.
      const cp = await mesh(['checkpoint', 'home', '--dir', branch.dir, '--json'])
      assert.equal(cp.code, 0, `mesh checkpoint failed: ${cp.stderr}`)
      await waitUntil('the blind site holds all of the epoch 1 log', async () => {
        const d = (await branch.status()).datasets.find((x) => x.name === 'home')!
        const h = d?.holders.find((x) => x.site === box.name)
        return d?.epoch === 1 && d.length > 1 && h?.role === 'blind' && h.error === null && h.downloaded === d.length
      })
      assert.deepEqual(grep(box.dir, MARKER), [])
    })

    await t.test('the old origin back, it follows the chain: a plaintext epoch, then an encrypted one', async () => {
      await home.start()
      const target = (await branch.status()).datasets.find((x) => x.name === 'home')!
      const promotedDb = readMeshState(sitePaths(branch.dir)).local.find((l) => l.dataset === target.id)!.path
      await waitUntil(
        'home’s database equals the new origin’s',
        () => JSON.stringify(dump(home.db)) === JSON.stringify(dump(promotedDb)),
        90_000
      )
    })
  }
)
