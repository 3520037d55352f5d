/**
 * A fenced PostgreSQL origin's divergence runs as written at the new origin: its changes.sql, fed to psql
 * with ON_ERROR_STOP, puts the rows the old origin wrote while cut off into the promoted database, tables with
 * a GENERATED ALWAYS identity column included (keyed and keyless), and moves their sequences past the ids it
 * re-entered, so the application's next insert works. The copies are compared at the end.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { promoteOnceLost, waitUntil } from './helpers/mesh.ts'
import { twoPgSites } from './helpers/pg-mesh.ts'
import { pgDump } from './helpers/pg.ts'

test('a fenced origin’s changes.sql runs as written at the new origin (GENERATED ALWAYS AS IDENTITY)', async (t) => {
  const { a, b } = await twoPgSites(t)
  await a.cluster.query(
    `CREATE TABLE tickets (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, note text NOT NULL);
     CREATE TABLE visits (n bigint GENERATED ALWAYS AS IDENTITY, who text);
     INSERT INTO tickets (note) SELECT 'ticket ' || g FROM generate_series(1, 50) g;
     INSERT INTO visits (who) VALUES ('x'), ('y');`,
    [],
    'shop'
  )
  await a.init()
  await a.start()
  await b.join(await a.invite())
  await b.start()
  const same = async (x: string, y: string) => JSON.stringify(await pgDump(x)) === JSON.stringify(await pgDump(y))
  await waitUntil("b's replica equals a", () => same(b.replicaUrl(a), a.url), 90_000, 300)

  await t.test('the old origin, cut off, writes; b is promoted; a comes back fenced', async () => {
    await a.stop('SIGKILL')
    await a.cluster.query(
      `INSERT INTO tickets (note) VALUES ('cut off 1'), ('cut off 2'), ('cut off 3');
       UPDATE tickets SET note = 'changed while cut off' WHERE id = 1;
       INSERT INTO visits (who) VALUES ('z');`,
      [],
      'shop'
    )
    const r = await promoteOnceLost(b.dir, a.datasetId(), ['--force'])
    assert.equal(r.code, 0, r.stderr)
    await a.start()
    await waitUntil("a's database equals b's promoted one", () => same(a.url, b.replicaUrl(a)), 90_000, 500)
  })

  const promoted = b.replicaUrl(a)
  const promotedDb = new URL(promoted).pathname.slice(1)
  await t.test('changes.sql runs with psql -v ON_ERROR_STOP=1 at the new origin', async () => {
    const divRoot = path.join(a.dir, 'divergence')
    const folders = fs.readdirSync(divRoot)
    assert.equal(folders.length, 1)
    const sql = fs.readFileSync(path.join(divRoot, folders[0], 'changes.sql'), 'utf8')
    assert.match(sql, /INSERT INTO public\.tickets \("id", "note"\) OVERRIDING SYSTEM VALUE VALUES \('51'::integer/)
    assert.match(sql, /INSERT INTO public\.visits \("n", "who"\) OVERRIDING SYSTEM VALUE VALUES/)
    // psql runs as the cluster's user: it reads a copy in the cluster's folder.
    const copy = path.join(b.cluster.dir, 'changes.sql')
    fs.writeFileSync(copy, sql, { mode: 0o644 })
    b.cluster.run('psql', ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', promotedDb, '-f', copy])
    const tickets = await b.cluster.query('SELECT id, note FROM tickets ORDER BY id', [], promotedDb)
    assert.equal(tickets.find((x) => x.id === '1')?.note, 'changed while cut off')
    assert.deepEqual(
      tickets.filter((x) => x.note!.startsWith('cut off')).map((x) => [x.id, x.note]),
      [
        ['51', 'cut off 1'],
        ['52', 'cut off 2'],
        ['53', 'cut off 3']
      ],
      'the rows keep the ids they had at the old origin'
    )
    const visits = await b.cluster.query('SELECT n, who FROM visits ORDER BY n', [], promotedDb)
    assert.deepEqual(
      visits.map((x) => [x.n, x.who]),
      [
        ['1', 'x'],
        ['2', 'y'],
        ['3', 'z']
      ]
    )
  })

  await t.test('the application’s next inserts at the new origin take new ids', async () => {
    const t1 = await b.cluster.query(`INSERT INTO tickets (note) VALUES ('after') RETURNING id`, [], promotedDb)
    assert.ok(Number(t1[0].id) > 53, `new ticket id ${t1[0].id} is past the re-entered ones`)
    const v1 = await b.cluster.query(`INSERT INTO visits (who) VALUES ('w') RETURNING n`, [], promotedDb)
    assert.ok(Number(v1[0].n) > 3, `new visit n ${v1[0].n} is past the re-entered ones`)
  })

  await t.test('the old origin, now a replica, holds exactly what the new origin holds', async () => {
    await waitUntil('a equals the new origin', () => same(a.url, promoted), 90_000, 300)
    assert.deepEqual(await pgDump(a.url), await pgDump(promoted))
  })
})
