/**
 * Issue 14 over a real mesh (nodes as their own processes on a loopback testnet): the origin's file replaced
 * by an old backup, with its node running (SQLite's backup API from another process) and stopped (`cp`), is
 * noticed, copied again, shown at every site and marked in mesh log; history still gives the state before;
 * `mesh resync` appends a fresh copy at the origin only. Each step ends with the copy compared value by value.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import path from 'node:path'
import { dump, sqliteDb } from './helpers/db.ts'
import { mesh, meshSites, waitUntil, type TestSite } from './helpers/mesh.ts'
import { startTs } from './helpers/proc.ts'
import { Workload } from './helpers/workload.ts'

async function run(script: string, args: string[]): Promise<void> {
  const c = startTs(script, args)
  await c.waitLine(/^done/, 60_000)
  await c.kill()
}

async function logJson(
  dir: string,
  dataset: string
): Promise<{ length: number; units: Array<{ seq: number; note: string }> }> {
  const r = await mesh(['log', dataset, '--dir', dir, '--json', '--limit', '0'])
  assert.equal(r.code, 0, r.stderr)
  return JSON.parse(r.stdout)
}

const copiesOf = async (s: TestSite, ds: string) => (await s.status()).datasets.find((d) => d.name === ds)?.copies ?? []

const NAME =
  'an old backup put over the origin file, node running and stopped: copied again, shown at every site, ' +
  'history keeps the state before; mesh resync at the origin only'
test(NAME, async (t) => {
  const { sites, dir } = await meshSites(t, ['shop-a', 'shop-b'])
  const [a, b] = sites
  const ds = 'shop-a'
  const db = sqliteDb(t, a.db)
  const work = new Workload(db, 3)
  for (let i = 0; i < 60; i++) work.transaction()
  const old = path.join(dir, 'old.db')
  await db.backup(old)
  for (let i = 0; i < 60; i++) work.transaction()
  db.close()
  await waitUntil("b holds exactly a's rows", () => b.holdsExactly(a), 60_000)
  const before = JSON.stringify(dump(a.db))
  const seqBefore = (await logJson(a.dir, ds)).length

  await t.test('running: restored through SQLite by another process', async () => {
    await run('test/helpers/sql-proc.ts', [a.db, 'restore', old])
    await waitUntil(
      'a recorded the copy',
      async () => (await copiesOf(a, ds)).some((c) => c.kind === 'replaced'),
      30_000
    )
    await waitUntil("b holds exactly a's rows", () => b.holdsExactly(a), 60_000)
    assert.deepEqual(dump(a.db), dump(old))
    await run('test/helpers/writer.ts', [a.db, '17', '30'])
    await waitUntil("b holds exactly a's rows", () => b.holdsExactly(a), 60_000)
    for (const s of sites) {
      await waitUntil(
        `${s.name} shows the replacement`,
        async () => {
          const st = await s.status()
          return st.reasons.some(
            (r) =>
              r.level === 'WARN' &&
              /shop-a at shop-a was replaced/.test(r.text) &&
              /mesh restore shop-a --before/.test(r.text)
          )
        },
        30_000
      )
    }
  })

  await t.test('mesh log marks the copy; a restore before it gives the state before', async () => {
    const log = await logJson(b.dir, ds)
    const again = log.units.filter((u: { note: string }) => /copied again/.test(u.note))
    assert.equal(again.length, 1)
    assert.ok(again[0].seq >= seqBefore)
    const to = path.join(dir, 'before.db')
    const r = await mesh(['restore', ds, '--before', String(seqBefore), '--to', to, '--dir', b.dir, '--json'], {
      timeoutMs: 120_000
    })
    assert.equal(r.code, 0, r.stderr)
    assert.equal(JSON.stringify(dump(to)), before)
  })

  await t.test('stopped: `cp old.db` over the file, noticed at the next start', async () => {
    await a.stop()
    execFileSync('cp', [old, a.db])
    await a.start()
    await waitUntil(
      'a recorded a second copy',
      async () => (await copiesOf(a, ds)).filter((c) => c.kind === 'replaced').length === 2,
      30_000
    )
    await run('test/helpers/writer.ts', [a.db, '18', '30'])
    await waitUntil("b holds exactly a's rows", () => b.holdsExactly(a), 60_000)
  })

  await t.test('mesh resync: refused at a copy (naming the origin), done at the origin, every copy exact', async () => {
    let r = await mesh(['resync', ds, '--dir', b.dir])
    assert.equal(r.code, 64, r.stderr)
    assert.match(r.stderr, /USAGE/)
    assert.match(r.stderr, /mesh resync shop-a at shop-a/)
    r = await mesh(['resync', ds, '--dir', a.dir, '--json'], { timeoutMs: 120_000 })
    assert.equal(r.code, 0, r.stderr)
    const res = JSON.parse(r.stdout)
    assert.ok(res.rows > 0)
    await waitUntil("b holds exactly a's rows", () => b.holdsExactly(a), 60_000)
    const log = await logJson(a.dir, ds)
    assert.equal(log.units.filter((u: { note: string }) => /copied again/.test(u.note)).length, 3)
    await waitUntil('b sees the resync', async () => (await copiesOf(b, ds)).some((c) => c.kind === 'resync'), 30_000)
    if (res.checkpoint !== null) {
      await waitUntil(
        "b's copy matches the checkpoint after the resync",
        async () => {
          const c = (await b.status()).datasets.find((d) => d.name === ds)?.checkpoint
          return c?.ok === true && c.seq >= res.checkpoint
        },
        30_000
      )
    }
  })
})
