/**
 * History: `mesh log` and `mesh restore` over a real mesh (nodes as their own processes on a loopback testnet).
 * The origin's state is recorded at ten random moments of a random workload; each is restored at another site
 * (by time or by position, with that site's node running and stopped) and compared row by row; then across a
 * promotion.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { dump, openBehindTheMesh, openWal, sqliteDb, sqliteOrigin } from './helpers/db.ts'
import { mesh, meshSites, promoteOnceLost, waitUntil } from './helpers/mesh.ts'
import { sqlitePipeline } from './helpers/pipeline.ts'
import { Workload, prng } from './helpers/workload.ts'

interface Moment {
  at: number
  seq: number
  state: string
}

async function logJson(dir: string, dataset: string, extra: string[] = []): Promise<any> {
  const r = await mesh(['log', dataset, '--dir', dir, '--json', '--limit', '0', ...extra])
  assert.equal(r.code, 0, r.stderr)
  return JSON.parse(r.stdout)
}

test(
  'restore ten recorded moments of a random workload, by time and by position, at another site, node ' +
    'running or not; and across a promotion',
  async (t) => {
    const { sites, dir } = await meshSites(t, ['shop-a', 'shop-b'])
    const [a, b] = sites
    const ds = 'shop-a'
    const db = sqliteDb(t, a.db)
    const work = new Workload(db, 7)
    const moments: Moment[] = []
    let r: { code: number | null; stdout: string; stderr: string }
    let res: { code: number | null; stdout: string; stderr: string }
    let snapDir = ''
    let late = { at: 0, state: '' }

    await t.test(
      'ten moments of a random workload are recorded at the origin, and b holds all of its log',
      async () => {
        const rand = prng(11)
        for (let m = 0; m < 10; m++) {
          const steps = 1 + Math.floor(rand() * 40)
          for (let i = 0; i < steps; i++) work.transaction()
          // Wait until the origin's log holds every write (a checkpoint goes in only after all of them), then
          // note the moment and the state.
          const cp = await mesh(['checkpoint', ds, '--dir', a.dir])
          assert.equal(cp.code, 0, cp.stderr)
          const at = Date.now()
          const log = await logJson(a.dir, ds)
          // The moment by position is the last unit mesh log shows: restore --seq takes that SEQ as shown.
          moments.push({ at, seq: log.units[log.units.length - 1].seq, state: JSON.stringify(dump(a.db)) })
          await new Promise((r) => setTimeout(r, 20))
        }
        for (let i = 0; i < 30; i++) work.transaction()
        await waitUntil("b holds all of a's log", () => b.holdsExactly(a), 60_000)
      }
    )

    await t.test('mesh log shows positions, times, kinds, tables and rows, and one unit in full', async () => {
      const log = await logJson(b.dir, ds)
      assert.equal(log.dataset, ds)
      assert.ok(log.units.length > 10)
      const tx = log.units.find((u: { kind: string; rows: number }) => u.kind === 'transaction' && u.rows > 0)
      assert.ok(tx.tables.length > 0 && tx.time > 0)
      const shown = JSON.parse((await mesh(['log', ds, '--dir', b.dir, '--json', '--show', String(tx.seq)])).stdout)
      assert.equal(shown.units[0].seq, tx.seq)
      assert.ok(shown.units[0].changes.length > 0)
      // Readable: table and column names, and each change as a statement with its values as SQL literals.
      for (const c of shown.units[0].changes) {
        assert.ok(['upsert', 'delete'].includes(c.op), JSON.stringify(c))
        assert.match(c.table, /^[a-z_]+$/, 'a table name, not an id')
        assert.ok(Object.keys(c.values).length > 0 && !Object.keys(c.values).some((k) => /^\d+$/.test(k)))
        assert.match(c.sql, c.op === 'upsert' ? /^INSERT (OR REPLACE )?INTO "?[a-z_]+"? \(/ : /^DELETE FROM /)
      }
      const text = await mesh(['log', ds, '--dir', b.dir, '--show', String(tx.seq)])
      assert.equal(text.code, 0, text.stderr)
      assert.match(text.stdout, /\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d\d:\d\d/, 'local time with its offset')
      assert.match(text.stdout, /^ {10}(INSERT (OR REPLACE )?INTO|DELETE FROM) /m)
      assert.doesNotMatch(text.stdout, /"hex"|\[\s*\[/, 'no raw JSON arrays or hex objects')
    })

    await t.test('each moment is restored exactly at b, by time and by position, node running or stopped', async () => {
      // Half by time, half by position; the last ones with b's node stopped.
      for (let i = 0; i < moments.length; i++) {
        if (i === 7) await b.stop()
        const m = moments[i]
        const to = path.join(dir, `restored-${i}.db`)
        const how = i % 2 === 0 ? ['--at', new Date(m.at).toISOString()] : ['--seq', String(m.seq)]
        const r = await mesh(['restore', ds, ...how, '--to', to, '--dir', b.dir, '--json'], { timeoutMs: 120_000 })
        assert.equal(r.code, 0, `moment ${i}: ${r.stderr}`)
        assert.equal(JSON.stringify(dump(to)), m.state, `moment ${i} (${how.join(' ')}) restored exactly`)
        assert.equal(fs.existsSync(`${to}.partial`), false)
        assert.deepEqual(
          fs.readdirSync(dir).filter((f) => f.startsWith(`restored-${i}.db-`)),
          [],
          'a plain file: no -wal or -shm left'
        )
      }
    })

    await t.test('restore overwrites nothing, and refuses a time before the history', async () => {
      r = await mesh(['restore', ds, '--seq', '5', '--to', path.join(dir, 'restored-0.db'), '--dir', b.dir])
      assert.equal(r.code, 64)
      assert.match(r.stderr, /exists already/)
      r = await mesh([
        'restore',
        ds,
        '--at',
        '2001-01-01T00:00:00Z',
        '--to',
        path.join(dir, 'early.db'),
        '--dir',
        b.dir
      ])
      assert.match(r.stderr, /before the dataset's history begins/)
      assert.equal(fs.existsSync(path.join(dir, 'early.db')), false)
    })

    let lateFrom = 0
    await t.test('with snapshots at b and at the origin, a later moment is restored from a snapshot', async () => {
      // Generational snapshots at b and at the origin a itself (every second here; the default is daily), built
      // from the log.
      await a.stop()
      for (const s of [a, b]) {
        const cfgFile = path.join(s.dir, 'config.json')
        const cfg = JSON.parse(fs.readFileSync(cfgFile, 'utf8'))
        cfg.snapshots = { everySeconds: 1, keepDaily: 14, keepWeekly: 8, keepMonthly: 12 }
        fs.writeFileSync(cfgFile, JSON.stringify(cfg))
      }
      await a.start()
      await b.start()
      const id = JSON.parse(fs.readFileSync(path.join(a.dir, 'config.json'), 'utf8')).datasets[0].id
      snapDir = path.join(b.dir, 'snapshots', id)
      await waitUntil(
        'b took a snapshot',
        () => fs.existsSync(snapDir) && fs.readdirSync(snapDir).some((f) => f.endsWith('.db')),
        30_000
      )
      assert.ok(
        (await b.status()).datasets.find((d) => d.id === id)!.snapshots.count >= 1,
        'mesh status counts the snapshots kept'
      )
      const originSnaps = path.join(a.dir, 'snapshots', id)
      await waitUntil(
        'the origin took a snapshot of its own dataset',
        () => fs.existsSync(originSnaps) && fs.readdirSync(originSnaps).some((f) => f.endsWith('.db')),
        30_000
      )
      for (let i = 0; i < 20; i++) work.transaction()
      const state = JSON.stringify(dump(a.db))
      await waitUntil("b holds all of a's log", () => b.holdsExactly(a), 60_000)
      // The moment is taken once those writes are in the log: capture runs on its own clock (slower on a busy
      // machine), and a moment taken before it had logged them would be a moment without them.
      late = { at: Date.now(), state }
      const to = path.join(dir, 'late.db')
      res = await mesh(['restore', ds, '--at', new Date(late.at).toISOString(), '--to', to, '--dir', b.dir, '--json'], {
        timeoutMs: 120_000
      })
      assert.equal(res.code, 0, res.stderr)
      assert.ok(JSON.parse(res.stdout).from > 0, `replayed from a snapshot: ${res.stdout}`)
      assert.equal(JSON.stringify(dump(path.join(dir, 'late.db'))), late.state)
      lateFrom = JSON.parse(res.stdout).from
    })

    await t.test('a snapshot changed on disk is set aside: the restore is still exact, and status warns', async () => {
      // A snapshot whose bytes change on disk (a failing disk) is caught by the SHA-256 kept beside it, set aside,
      // and the restore starts from an older one (or the log's start): the result is still exact, and mesh
      // status warns.
      // (b's node is stopped meanwhile, so that it builds no new snapshot during the check.)
      await b.stop()
      const used = fs
        .readdirSync(snapDir)
        .filter((f) => /^\d+\.db$/.test(f))
        .map((f) => path.join(snapDir, f))
      for (const f of used) {
        const bytes = fs.readFileSync(f)
        bytes[Math.floor(bytes.length / 2)] ^= 0xff
        fs.writeFileSync(f, bytes)
      }
      res = await mesh(
        [
          'restore',
          ds,
          '--at',
          new Date(late.at).toISOString(),
          '--to',
          path.join(dir, 'late-again.db'),
          '--dir',
          b.dir,
          '--json'
        ],
        { timeoutMs: 120_000 }
      )
      assert.equal(res.code, 0, res.stderr)
      assert.ok(lateFrom > 0 && JSON.parse(res.stdout).from === 0, `not from a damaged snapshot: ${res.stdout}`)
      assert.equal(JSON.stringify(dump(path.join(dir, 'late-again.db'))), late.state)
      assert.ok(
        used.some((f) => fs.existsSync(`${f}.damaged`)),
        'the damaged snapshots are set aside'
      )
      assert.match(res.stderr, /changed on disk since it was written/)
      assert.ok(
        (await b.status()).reasons.some((x) => x.level === 'WARN' && /changed on this site's disk/.test(x.text)),
        'mesh status warns of the damaged snapshot'
      )
      await b.start()
    })

    await t.test(
      'the origin restores from its own snapshot; a moment before every snapshot from the start',
      async () => {
        res = await mesh(
          [
            'restore',
            ds,
            '--at',
            new Date(late.at).toISOString(),
            '--to',
            path.join(dir, 'late-at-origin.db'),
            '--dir',
            a.dir,
            '--json'
          ],
          { timeoutMs: 120_000 }
        )
        assert.equal(res.code, 0, res.stderr)
        assert.ok(JSON.parse(res.stdout).from > 0, `the origin replayed from its own snapshot: ${res.stdout}`)
        assert.equal(JSON.stringify(dump(path.join(dir, 'late-at-origin.db'))), late.state)
        res = await mesh(
          [
            'restore',
            ds,
            '--seq',
            String(moments[0].seq),
            '--to',
            path.join(dir, 'early-again.db'),
            '--dir',
            b.dir,
            '--json'
          ],
          { timeoutMs: 120_000 }
        )
        assert.equal(JSON.parse(res.stdout).from, 0, 'a moment before every snapshot replays from the start')
        assert.equal(JSON.stringify(dump(path.join(dir, 'early-again.db'))), moments[0].state)
      }
    )

    await t.test('snapshots of the same day are pruned to the newest', async () => {
      await new Promise((r2) => setTimeout(r2, 2500))
      assert.ok(
        fs.readdirSync(snapDir).filter((f) => f.endsWith('.db')).length <= 2,
        'snapshots of the same day are pruned to the newest'
      )
    })

    await t.test(
      'across a promotion: both sides of the branch restore at b, and the log walks both epochs',
      async () => {
        // a is lost, b promotes and takes writes.
        const before = { at: Date.now(), state: JSON.stringify(dump(a.db)) }
        await a.stop('SIGKILL')
        const p = await promoteOnceLost(b.dir, ds, ['--force'])
        assert.equal(p.code, 0, p.stderr)
        const promoted = JSON.parse(p.stdout).path
        const live = openWal(promoted)
        new Workload(live, 99).transaction()
        new Workload(live, 98).transaction()
        live.close()
        await new Promise((r2) => setTimeout(r2, 400))
        const after = { at: Date.now(), state: JSON.stringify(dump(promoted)) }
        for (const [name, m] of [
          ['before', before],
          ['after', after]
        ] as const) {
          const to = path.join(dir, `promotion-${name}.db`)
          r = await mesh(['restore', ds, '--at', new Date(m.at).toISOString(), '--to', to, '--dir', b.dir, '--json'], {
            timeoutMs: 120_000
          })
          assert.equal(r.code, 0, r.stderr)
          assert.equal(JSON.stringify(dump(to)), m.state, `restored ${name} the promotion`)
        }
        const log = await logJson(b.dir, ds)
        const units = log.units as Array<{ seq: number; end: number; epoch: number; kind: string; note: string }>
        assert.deepEqual([...new Set(units.map((u) => u.epoch))], [0, 1], 'the log walks both epochs')
        // One numbering: positions go on along the chain across the promotion, never from 0 again per epoch.
        for (let i = 1; i < units.length; i++)
          assert.ok(units[i].seq >= units[i - 1].end, `unit ${units[i].seq} after ${units[i - 1].seq}..${units[i].end}`)
        const header = units.find((u) => u.epoch === 1)!
        assert.equal(header.kind, 'header')
        const from = /starts epoch 1, continuing from position (\d+)/.exec(header.note)
        assert.ok(from, header.note)
        assert.equal(Number(from[1]), header.seq, 'the new epoch starts where the note says, on the same count')
        assert.equal(log.length, units[units.length - 1].end, 'the length is counted the same way')
        // --seq takes a position of the new epoch as mesh log shows it.
        const to = path.join(dir, 'promotion-seq.db')
        r = await mesh(['restore', ds, '--seq', String(units[units.length - 1].seq), '--to', to, '--dir', b.dir], {
          timeoutMs: 120_000
        })
        assert.equal(r.code, 0, r.stderr)
        assert.equal(JSON.stringify(dump(to)), after.state, 'restored by position, after the promotion')
      }
    )
  }
)

test(
  'generational retention keeps the newest snapshot of each of the last 14 days, ' + '8 weeks and 12 months',
  async () => {
    const { toKeep, DEFAULT_SNAPSHOTS } = await import('../node/snapshots.ts')
    const day = 86_400_000
    const now = Date.UTC(2026, 10, 22, 12)
    // One snapshot every 6 hours for 500 days.
    const snaps = Array.from({ length: 2000 }, (_, i) => ({ file: `s${i}`, at: now - i * (day / 4) }))
    const keep = toKeep(snaps, now, DEFAULT_SNAPSHOTS)
    const kept = snaps.filter((s) => keep.has(s.file))
    assert.ok(keep.has('s0'), 'the newest is kept')
    const days = new Set(kept.filter((s) => now - s.at <= 14 * day).map((s) => Math.floor(s.at / day)))
    assert.ok(days.size >= 14, `every one of the last 14 days keeps one (${days.size})`)
    assert.ok(
      kept.every((s) => now - s.at <= 12 * 31 * day),
      'nothing older than a year'
    )
    assert.ok(kept.length <= 1 + 14 + 8 + 12, `at most 35 kept (${kept.length})`)
    const months = new Set(kept.map((s) => new Date(s.at).getUTCFullYear() * 12 + new Date(s.at).getUTCMonth()))
    assert.ok(months.size >= 12, `one per month for a year (${months.size})`)
    // Of each day, the newest.
    for (const s of kept.filter((x) => now - x.at <= 14 * day)) {
      const sameDay = snaps.filter((x) => Math.floor(x.at / day) === Math.floor(s.at / day))
      assert.equal(Math.max(...sameDay.map((x) => x.at)), s.at)
    }
  }
)

test('a mass delete is flagged in mesh status and mesh log, and the restore command it gives undoes it', async (t) => {
  const { sites, dir } = await meshSites(t, ['shop-a', 'shop-b'])
  const [a, b] = sites
  const db = sqliteDb(t, a.db)
  let good = ''
  let reason = ''
  let cmd: RegExpExecArray

  await t.test('ordinary work is not flagged: a few rows changed, then many new rows added', async () => {
    db.exec(`CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)`)
    const ins = db.prepare('INSERT INTO customers (id, name) VALUES (?, ?)')
    db.transaction(() => {
      for (let i = 1; i <= 500; i++) ins.run(i, `customer ${i}`)
    })()
    db.exec(`UPDATE customers SET name = name || ' (vip)' WHERE id <= 10`)
    db.transaction(() => {
      for (let i = 501; i <= 1500; i++) ins.run(i, `customer ${i}`)
    })()
    await waitUntil('b holds a', () => b.holdsExactly(a), 60_000)
    good = JSON.stringify(dump(a.db))
    assert.equal((await b.status()).datasets.find((d) => d.name === 'shop-a')!.damage.length, 0, 'nothing flagged yet')
  })

  await t.test('a delete of most rows through the application is flagged in mesh status and in mesh log', async () => {
    db.exec(`DELETE FROM customers WHERE id > 100`)
    await waitUntil('b holds a', () => b.holdsExactly(a), 60_000)
    await waitUntil(
      'b flags the mass delete',
      async () => {
        const r = await mesh(['status', '--dir', b.dir, '--json'])
        reason =
          JSON.parse(r.stdout).reasons.find((x: { text: string }) => /deleted or rewrote/.test(x.text))?.text ?? ''
        return reason !== ''
      },
      30_000
    )
    assert.match(reason, /1400 of the 1500 rows of customers/)
    cmd = /mesh restore (\S+) --before (\d+) --to (\S+)/.exec(reason)!
    const log = JSON.parse((await mesh(['log', 'shop-a', '--dir', b.dir, '--json', '--limit', '0'])).stdout)
    const flagged = log.units.filter((u: { damage?: unknown[] }) => u.damage)
    assert.equal(flagged.length, 1)
    assert.equal(String(flagged[0].seq), cmd[2])
  })

  await t.test('the restore command it gives, as given, brings back the state before the delete', async () => {
    // Into a folder of ours.
    const to = path.join(dir, cmd[3])
    const r = await mesh(['restore', cmd[1], '--before', cmd[2], '--to', to, '--dir', b.dir])
    assert.equal(r.code, 0, r.stderr)
    assert.equal(JSON.stringify(dump(to)), good)
  })
})

test('a replica row corrupted behind the mesh: mesh verify names it, mesh repair mends it', async (t) => {
  const { sites } = await meshSites(t, ['shop-a', 'shop-b'])
  const [a, b] = sites
  const db = sqliteDb(t, a.db)
  const work = new Workload(db, 3)
  const checkpointOf = async () => (await b.status()).datasets.find((d) => d.name === 'shop-a')?.checkpoint ?? null
  let r: { code: number | null; stdout: string; stderr: string }
  let provenEqual = 0
  let firstDiffers = 0
  let damagedAt = 0
  let v: any

  await t.test("b's copy matches the origin's checkpoint, and mesh verify proves it equal", async () => {
    for (let i = 0; i < 30; i++) work.transaction()
    // The origin appends a checkpoint (a digest of its state) each second it is idle after writes; b takes a
    // snapshot each second.
    await a.stop()
    await b.stop()
    const set = (dir: string, extra: object) => {
      const cfgFile = path.join(dir, 'config.json')
      fs.writeFileSync(cfgFile, JSON.stringify({ ...JSON.parse(fs.readFileSync(cfgFile, 'utf8')), ...extra }))
    }
    set(a.dir, { checkpointSeconds: 1 })
    set(b.dir, { snapshots: { everySeconds: 1, keepDaily: 14, keepWeekly: 8, keepMonthly: 12 } })
    await a.start()
    await b.start()
    db.prepare(`INSERT INTO events (at, note) VALUES (1, 'after the restart')`).run()
    await waitUntil('b holds a', () => b.holdsExactly(a), 60_000)
    // A checkpoint of this very state, asked for now: one from before would let the origin's own checkpoint of
    // the same position reach b after the damage below, and b would see the copy part at the position verify
    // proves equal.
    const cp = await mesh(['checkpoint', 'shop-a', '--dir', a.dir, '--json'])
    assert.equal(cp.code, 0, cp.stderr)
    const cpSeq = (JSON.parse(cp.stdout) as { seq: number }).seq
    await waitUntil(
      "b's copy matches that checkpoint",
      async () => {
        const c = await checkpointOf()
        return c?.ok === true && c.seq >= cpSeq
      },
      30_000
    )
    r = await mesh(['verify', 'shop-a', '--dir', b.dir, '--json'])
    assert.equal(r.code, 0, r.stderr)
    assert.equal(JSON.parse(r.stdout).ok, true)
    provenEqual = JSON.parse(r.stdout).seq
    // At the origin there is no copy to verify: it says so, and which commands do what was asked.
    const atOrigin = await mesh(['verify', 'shop-a', '--dir', a.dir])
    assert.equal(atOrigin.code, 64, atOrigin.stderr)
    assert.match(atOrigin.stderr, /shop-a is the origin of shop-a/)
    assert.match(atOrigin.stderr, /run mesh checkpoint shop-a here/)
    assert.match(atOrigin.stderr, /run mesh verify shop-a at shop-b/)
    assert.doesNotMatch(atOrigin.stderr, /--force/)
  })

  await t.test("a change to b's copy shows at the next checkpoint, and verify says where it parted", async () => {
    // Someone changes b's copy directly: one balance altered, one account deleted.
    const file = b.replicaOf(a)!
    const copy = openBehindTheMesh(file)
    copy.prepare('UPDATE accounts SET balance = balance + 1 WHERE id = 3').run()
    copy.prepare('DELETE FROM accounts WHERE id = 7').run()
    copy.close()
    damagedAt = Date.now()
    // The next checkpoint shows it, before anyone asks.
    const seen = (await checkpointOf())!.at
    db.prepare(`INSERT INTO events (at, note) VALUES (2, 'after the damage')`).run()
    await waitUntil(
      'the next checkpoint at b differs',
      async () => {
        const c = await checkpointOf()
        return c !== null && c.at !== seen && c.ok === false
      },
      30_000
    )
    firstDiffers = (await checkpointOf())!.seq
    r = await mesh(['verify', 'shop-a', '--dir', b.dir, '--json'])
    assert.equal(r.code, 2, r.stderr)
    v = JSON.parse(r.stdout)
    assert.equal(v.ok, false)
    // Where it parted: after the position the first verify proved equal, by the checkpoint that showed it.
    assert.deepEqual(v.parted, { lastEqual: provenEqual, firstDiffers })
    assert.ok(v.from > 0, 'the log was replayed from a snapshot built from the log, and still finds the damage')
    assert.ok(provenEqual < firstDiffers)
  })

  await t.test("a snapshot taken after the damage is built from the log: it restores the origin's rows", async () => {
    const snapDir = path.join(
      b.dir,
      'snapshots',
      JSON.parse(fs.readFileSync(path.join(a.dir, 'config.json'), 'utf8')).datasets[0].id
    )
    await waitUntil(
      'b took a snapshot after the damage',
      () =>
        fs.existsSync(snapDir) &&
        fs.readdirSync(snapDir).some((f) => /^\d+\.db$/.test(f) && Number(f.slice(0, -3)) > damagedAt),
      30_000
    )
    const restored = path.join(path.dirname(b.dir), 'after-damage.db')
    r = await mesh(['restore', 'shop-a', '--seq', String(v.seq), '--to', restored, '--dir', b.dir, '--json'], {
      timeoutMs: 120_000
    })
    assert.equal(r.code, 0, r.stderr)
    assert.ok(JSON.parse(r.stdout).from > 0, `restored from a snapshot: ${r.stdout}`)
    assert.deepEqual(dump(restored), dump(a.db), "the restore holds the log's rows, not the damage")
  })

  await t.test('mesh verify names the rows, and mesh status says the copy differs and where it parted', async () => {
    assert.deepEqual(
      v.tables.map((x: { table: string; missing: number; changed: number }) => [x.table, x.missing, x.changed]),
      [['accounts', 1, 1]]
    )
    assert.deepEqual([...v.tables[0].keys].sort(), ['INTEGER 3', 'INTEGER 7'])
    const text = await mesh(['status', '--dir', b.dir])
    assert.match(text.stdout, /checkpoint: this copy DIFFERS from the origin's at position \d+/)
    assert.match(text.stdout, /mesh verify: DIFFERS from the log at position \d+/)
    assert.match(
      text.stdout,
      new RegExp(`parted from the log between position ${provenEqual} .* and position ${firstDiffers}`)
    )
    const st = await mesh(['status', '--dir', b.dir, '--json'])
    assert.ok(
      JSON.parse(st.stdout).reasons.some(
        (x: { level: string; text: string }) => x.level === 'CRIT' && /differs from the log/.test(x.text)
      )
    )
  })

  await t.test('mesh repair mends the copy, and it goes on following', async () => {
    r = await mesh(['repair', 'shop-a', '--dir', b.dir, '--json'])
    assert.equal(r.code, 0, r.stderr)
    assert.equal(JSON.parse(r.stdout).repaired, true)
    assert.ok(b.holdsExactly(a), 'the copy equals the origin again')
    for (let i = 0; i < 5; i++) work.transaction()
    await waitUntil('b follows a after the repair', () => b.holdsExactly(a), 60_000)
    r = await mesh(['verify', 'shop-a', '--dir', b.dir])
    assert.equal(r.code, 0, r.stdout + r.stderr)
  })
})

test(
  'the restore point found by a binary search over block times equals a walk of the whole history, for ' +
    'every position and unit time',
  async (t) => {
    const { restorePoint, walk } = await import('../node/history.ts')
    const { dir, file, db } = sqliteOrigin(t)
    db.exec('CREATE TABLE items (id INTEGER PRIMARY KEY, note TEXT)')
    const ins = db.prepare('INSERT OR REPLACE INTO items (id, note) VALUES (?, ?)')
    // Rows before capture: an initial snapshot of several blocks (small blocks here), with no times.
    db.transaction(() => {
      for (let i = 0; i < 400; i++) ins.run(i, 'x'.repeat(40))
    })()
    const p = await sqlitePipeline(t, dir, file, { blockBytes: 2000 })
    const rand = prng(5)
    for (let u = 0; u < 40; u++) {
      // Units of one block and of many; sometimes a new table (a schema entry in the unit).
      if (u % 13 === 5) db.exec(`CREATE TABLE extra_${u} (id INTEGER PRIMARY KEY)`)
      const n = rand() < 0.3 ? 60 + Math.floor(rand() * 100) : 1 + Math.floor(rand() * 3)
      db.transaction(() => {
        for (let i = 0; i < n; i++) ins.run(Math.floor(rand() * 1000), `u${u} `.padEnd(100, '.'))
      })()
      await p.settle()
      await new Promise((r) => setTimeout(r, 3))
    }
    // The log stops growing (an idle capture appends a checkpoint), so both sides read the same history.
    await p.capture.stop()
    const chain = [{ log: p.originLog, epoch: 0, end: null }] as unknown as Parameters<typeof walk>[0]
    const units: Array<{ seq: number; end: number; time: number | null }> = []
    for await (const { unit } of walk(chain)) units.push(unit)
    assert.ok(
      units.some((u) => u.end - u.seq > 3),
      `some units span several blocks: ${units.map((u) => u.end - u.seq).join(' ')}`
    )
    // The reference: the walk of the whole history, as restores did before.
    const reference = (target: { seq?: number; at?: number }) => {
      let best: { seq: number; time: number | null } | null = null
      let time: number | null = null
      for (const u of units) {
        if (target.seq !== undefined && u.end > target.seq) break
        if (target.at !== undefined && u.time !== null && u.time > target.at) break
        if (u.time !== null) time = u.time
        best = { seq: u.end, time }
      }
      return best === null || best.seq <= 1 ? null : best
    }
    const found = async (target: { seq?: number; at?: number; through?: number }) => {
      try {
        const { seq, time } = await restorePoint(chain, target)
        return { seq, time }
      } catch {
        return null
      }
    }
    const lastOf = async (through: number) => (await restorePoint(chain, { through })).last
    const length = units[units.length - 1].end
    for (let seq = 0; seq <= length + 2; seq++)
      assert.deepEqual(await found({ seq }), reference({ seq }), `--seq ${seq}`)
    // A SEQ as mesh log shows it, and any position inside that unit: the state right after the unit.
    for (const u of units) {
      for (let q = u.seq; q < u.end; q++) {
        const want = u.end <= 1 ? null : u.end
        assert.equal((await found({ through: q }))?.seq ?? null, want, `--seq ${q} (a unit ${u.seq}..${u.end})`)
        if (want !== null) assert.equal(await lastOf(q), u.seq, `the restore of --seq ${q} names unit ${u.seq}`)
      }
    }
    const times = units.flatMap((u) => (u.time === null ? [] : [u.time - 1, u.time, u.time + 1]))
    for (const at of [...times, times[0] - 1000, times[times.length - 1] + 1000])
      assert.deepEqual(await found({ at }), reference({ at }), `--at ${at}`)
  }
)
