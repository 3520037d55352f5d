/**
 * A promotion hands out no number the old origin used: sqlite_sequence travels with the log, the number of an
 * order rung up and voided in one transaction included. Real node processes; the till is the sqlite3 program.
 */

import assert from 'node:assert/strict'
import { test } from 'node:test'
import { dumpExact, sqlite3 } from './helpers/db.ts'
import { mesh, meshSites, type TestSite, waitUntil } from './helpers/mesh.ts'

interface Promoted {
  error?: { code: string }
  path?: string
}

const sameExact = (x: string, y: string) => JSON.stringify(dumpExact(x)) === JSON.stringify(dumpExact(y))

async function promote(site: TestSite, dataset: string): Promise<{ code: number | null; out: Promoted }> {
  const r = await mesh(['promote', dataset, '--dir', site.dir, '--json'], { timeoutMs: 120_000 })
  try {
    return { code: r.code, out: JSON.parse(r.stdout) }
  } catch {
    throw new Error(`mesh promote printed no JSON (exit ${r.code}): ${r.stdout}\n${r.stderr}`)
  }
}

test("promotion: the next AUTOINCREMENT id is above every id the old origin used, a voided order's too", async (t) => {
  const { sites } = await meshSites(t, ['shop-a', 'shop-b'], (s) =>
    sqlite3(
      s[0].db,
      `CREATE TABLE orders (id INTEGER PRIMARY KEY AUTOINCREMENT, item TEXT, note);
      INSERT INTO orders (item) VALUES ('bread'), ('milk');`
    )
  )
  const [a, b] = sites
  const ds = 'shop-a'
  // Rung up and voided in one transaction: the row never reaches the log, its number was used. A till's
  // TEXT that is not UTF-8 rides along.
  sqlite3(
    a.db,
    `INSERT INTO orders (item, note) VALUES ('eggs', CAST(x'ff' AS TEXT));
    BEGIN; INSERT INTO orders (item) VALUES ('voided'); DELETE FROM orders WHERE item = 'voided'; COMMIT;`
  )
  const used = Number(sqlite3(a.db, `SELECT seq FROM sqlite_sequence WHERE name = 'orders';`).trim())
  assert.equal(used, 4)
  await waitUntil(
    "B's copy equals A byte for byte, sqlite_sequence included",
    () => {
      const r = b.replicaOf(a)
      return r !== null && sameExact(r, a.db)
    },
    90_000
  )
  const bFile = b.replicaOf(a)!

  await a.stop('SIGKILL')
  let r: { code: number | null; out: Promoted } = { code: null, out: {} }
  await waitUntil(
    'B no longer counts A as healthy and promotes',
    async () => {
      r = await promote(b, ds)
      return r.out.error?.code !== 'ORIGIN_HEALTHY'
    },
    90_000,
    1000
  )
  assert.equal(r.code, 0, JSON.stringify(r.out))
  assert.equal(r.out.path, bFile)
  assert.ok(sameExact(bFile, a.db), 'the promoted file holds what A held, byte for byte')

  const next = Number(sqlite3(bFile, `INSERT INTO orders (item) VALUES ('after promotion') RETURNING id;`).trim())
  assert.ok(next > used, `the promoted site's next id ${next} is above ${used}, the voided order's number`)
  assert.equal(next, used + 1)
})
