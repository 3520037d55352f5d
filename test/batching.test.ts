/**
 * Batching for slow links (issue 16 item 3, config `link.batchSeconds`): real nodes as their own processes on a
 * loopback testnet. Many small transactions end as few units in `mesh log`, every copy is exact, status says how
 * fine the history is, a node killed while a group waits loses nothing, stopping it sends the group, and bad
 * values are refused saying what to do.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { dumpExact, sqliteDb, tmpDir } from './helpers/db.ts'
import { mesh, sqliteSite, testnet, waitUntil, type TestSite } from './helpers/mesh.ts'
import { Workload } from './helpers/workload.ts'

interface LogUnit {
  seq: number
  kind: string
  rows: number
}

async function transactionUnits(dir: string, dataset: string): Promise<LogUnit[]> {
  const r = await mesh(['log', dataset, '--dir', dir, '--json', '--limit', '0'])
  assert.equal(r.code, 0, r.stderr)
  return (JSON.parse(r.stdout).units as LogUnit[]).filter((u) => u.kind === 'transaction' && u.rows > 0)
}

function setLink(dir: string, link: unknown): void {
  const file = path.join(dir, 'config.json')
  const cfg = JSON.parse(fs.readFileSync(file, 'utf8'))
  cfg.link = link
  fs.writeFileSync(file, JSON.stringify(cfg, null, 2), { mode: 0o600 })
}

/** A's copy at b equals a's database byte for byte (every value's storage class and bytes). */
function exact(b: TestSite, a: TestSite): boolean {
  const r = b.replicaOf(a)
  return r !== null && JSON.stringify(dumpExact(r)) === JSON.stringify(dumpExact(a.db))
}

test('bad batching values are refused, saying what to do', async (t) => {
  const dir = tmpDir(t, 'batch-bad-')
  const a = sqliteSite(t, dir, 'shop-a', '127.0.0.1:9')
  for (const bad of ['-5', 'soon', '1m', '90000']) {
    const r = await mesh([
      'init',
      ...['--dir', a.dir, '--site', 'shop-a', '--sqlite', a.db, '--bootstrap', '127.0.0.1:9'],
      `--batch-seconds=${bad}`
    ])
    assert.equal(r.code, 64, `--batch-seconds ${bad}: ${r.stderr}`)
    assert.match(r.stderr, /--batch-seconds/)
    assert.match(r.stderr, /What to do: Give 0 to send each change as soon as possible/)
    assert.equal(fs.existsSync(a.dir), false, 'nothing is set up')
  }
  const ok = await mesh([
    'init',
    ...['--dir', a.dir, '--site', 'shop-a', '--sqlite', a.db, '--bootstrap', '127.0.0.1:9'],
    ...['--batch-seconds', '60']
  ])
  assert.equal(ok.code, 0, ok.stderr)
  assert.deepEqual(JSON.parse(fs.readFileSync(path.join(a.dir, 'config.json'), 'utf8')).link, { batchSeconds: 60 })
  const cases: Array<[unknown, RegExp]> = [
    [{ batchSeconds: -1 }, /link\.batchSeconds must be a number of seconds, 0 or more/],
    [{ batchSeconds: '60' }, /link\.batchSeconds must be a number of seconds/],
    [{ batchSeconds: 86_401 }, /link\.batchSeconds 86401 is longer than a day/],
    [{ batchSecs: 60 }, /unknown key "batchSecs" in "link"/],
    [60, /"link" must be an object/]
  ]
  for (const [link, said] of cases) {
    setLink(a.dir, link)
    const r = await mesh(['status', '--dir', a.dir])
    assert.equal(r.code, 3, `${JSON.stringify(link)}: ${r.stdout}${r.stderr}`)
    assert.match(r.stderr, /BAD_CONFIG/)
    assert.match(r.stderr, said)
    assert.match(r.stderr, /What to do: /)
  }
})

test(
  'with link.batchSeconds, many small transactions travel as few units, every copy is exact, and status ' +
    'says how fine the history is',
  async (t) => {
    const dir = tmpDir(t, 'batch-mesh-')
    const bootstrap = await testnet(t)
    const a = sqliteSite(t, dir, 'shop-a', bootstrap)
    const b = sqliteSite(t, dir, 'shop-b', bootstrap)
    const init = await mesh([
      'init',
      ...['--dir', a.dir, '--site', a.name, '--sqlite', a.db, '--bootstrap', bootstrap, '--batch-seconds', '2']
    ])
    assert.equal(init.code, 0, init.stderr)
    await a.start()
    await b.join(await a.invite())
    await b.start()
    await waitUntil("b holds a's initial copy", () => exact(b, a), 90_000)
    const before = await transactionUnits(a.dir, a.name)

    const db = sqliteDb(t, a.db)
    const work = new Workload(db, 5)
    // Spread over about 3 s: without batching each would be a unit of its own (the capture looks every 50 ms).
    const transactions = 30
    for (let i = 0; i < transactions; i++) {
      work.transaction(3)
      await new Promise((r) => setTimeout(r, 100))
    }
    await waitUntil("b holds exactly a's rows", () => exact(b, a), 90_000)
    const after = await transactionUnits(a.dir, a.name)
    const units = after.length - before.length
    assert.ok(units >= 1, 'the transactions are in the log')
    assert.ok(units <= transactions / 3, `${transactions} transactions in ${units} units`)

    for (const s of [a, b]) {
      const r = await mesh(['status', '--dir', s.dir, '--json'])
      const st = JSON.parse(r.stdout)
      assert.equal(st.datasets[0].historyEverySeconds, 2, `at ${s.name}`)
      const text = await mesh(['status', '--dir', s.dir])
      assert.match(text.stdout, /history every 2 seconds: shop-a sends its changes in groups/, `at ${s.name}`)
    }
  }
)

test('a node killed while a group waits loses nothing, and stopping it sends the group', async (t) => {
  const dir = tmpDir(t, 'batch-kill-')
  const bootstrap = await testnet(t)
  const a = sqliteSite(t, dir, 'shop-a', bootstrap)
  const b = sqliteSite(t, dir, 'shop-b', bootstrap)
  const init = await mesh([
    'init',
    ...['--dir', a.dir, '--site', a.name, '--sqlite', a.db, '--bootstrap', bootstrap, '--batch-seconds', '3600']
  ])
  assert.equal(init.code, 0, init.stderr)
  await a.start()
  await b.join(await a.invite())
  await b.start()
  await waitUntil("b holds a's initial copy", () => exact(b, a), 90_000)
  const before = await transactionUnits(a.dir, a.name)

  const db = sqliteDb(t, a.db)
  const work = new Workload(db, 9)
  for (let i = 0; i < 50; i++) work.transaction(4)
  // The group waits an hour: what the node saw of it is only what is still in the database's change table.
  await waitUntil('the origin reports a group waiting', async () => {
    const st = JSON.parse((await mesh(['status', '--dir', a.dir, '--json'])).stdout)
    const h = st.datasets[0].holders.find((x: { role: string }) => x.role === 'origin')
    return (h?.captureLag?.bytes ?? 0) > 0
  })
  await a.stop('SIGKILL')
  assert.deepEqual(await transactionUnits(a.dir, a.name), before, 'nothing was appended while the group waited')

  await a.start()
  for (let i = 0; i < 20; i++) work.transaction(4)
  // SIGTERM: the node sends the waiting group (the writes before the kill and after it) before it ends.
  await a.stop('SIGTERM')
  const after = await transactionUnits(a.dir, a.name)
  assert.equal(after.length - before.length, 1, 'one unit holds every transaction of the group')
  await a.start()
  await waitUntil("b holds exactly a's rows", () => exact(b, a), 90_000)
})
