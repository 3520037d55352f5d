/**
 * The bandwidth budget (issue 16: config `link`, `--up-kbps` / `--down-kbps`) and per-peer traffic in
 * `mesh status`. Real nodes as processes on a local DHT test network on loopback. Nothing here measures a rate:
 * whether the cap holds is the bench's business (bench/budget.ts, over a real slow link); these tests prove
 * what a budget must never break (every byte arrives, in order: a byte-exact replica), that the budget and its
 * split reach the peers, that both ends count the same bytes, and that a budget that makes no sense is refused.
 */
import assert from 'node:assert/strict'
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import test from 'node:test'
import c from 'compact-encoding'
import { Meter, type PeerTrafficStatus, type SiteStatus } from '../node/index.ts'
import { Bucket, CHUNK, PacedLink, Pacer, pieceSize } from '../node/pacer.ts'
import { budgetMessage, CONTROL_MESSAGES, ControlMessage } from '../protocol/index.ts'
import { readConfig } from '../tools/config.ts'
import { openWal, tmpDir } from './helpers/db.ts'
import { converged, mesh, sqliteSite, testnet, waitUntil, type TestSite } from './helpers/mesh.ts'

/** Rows of random bytes as hex text, about `kb` KB in the log (brotli halves hex, no more); one transaction. */
function writeRandom(site: TestSite, kb: number): void {
  const db = openWal(site.db)
  const ins = db.prepare('INSERT INTO notes (body, weight) VALUES (?, ?)')
  db.transaction(() => {
    for (let i = 0; i < kb; i++) ins.run(crypto.randomBytes(1024).toString('hex'), i)
  })()
  db.close()
}

function peer(s: SiteStatus, site: string): PeerTrafficStatus {
  const p = s.traffic?.peers.find((x) => x.site === site)
  assert.ok(p, `${s.site}'s status has traffic figures for ${site}: ${JSON.stringify(s.traffic)}`)
  return p
}

test('a site under a budget: exact copies, its split announced, the same bytes counted at both ends', async (t) => {
  const dir = tmpDir(t, 'budget-')
  const bootstrap = await testnet(t)
  const [a, b, c] = ['shop-a', 'shop-b', 'shop-c'].map((n) => sqliteSite(t, dir, n, bootstrap))
  const m = { dir, bootstrap, sites: [a, b, c] }
  await a.init(['--up-kbps', '256', '--down-kbps', '512'])
  await a.start()
  for (const s of [b, c]) await s.join(await a.invite())
  for (const s of [b, c]) await s.start()
  writeRandom(a, 200)

  await t.test('every copy ends byte-exact while shop-a sends under its budget', async () => {
    await converged(m.sites, m.sites, 120_000)
  })

  await t.test('the budget and its share reach the peers', async () => {
    await waitUntil(
      'shop-b and shop-c have heard shop-a split its down budget between them',
      async () => {
        for (const s of [b, c]) {
          const p = peer(await s.status(), 'shop-a')
          if (p.peerBudget?.downBps !== 512_000 || p.upLimitBps !== 256_000) return false
        }
        return true
      },
      60_000
    )
    const sa = await a.status()
    assert.equal(sa.traffic?.upBps, 256_000)
    assert.equal(sa.traffic?.downBps, 512_000)
    for (const name of ['shop-b', 'shop-c']) {
      const p = peer(sa, name)
      assert.equal(p.upLimitBps, 128_000, 'shop-a sends each of its two peers at most half of its up budget')
      assert.equal(p.downLimitBps, 256_000, 'and asks each for at most half of its down budget')
      assert.equal(p.peerBudget, null, `${name} has no budget and announced none`)
    }
    const sb = await b.status()
    assert.equal(sb.traffic?.upBps, null)
    assert.equal(peer(sb, 'shop-c').upLimitBps, null, 'two sites without a budget send each other freely')
  })

  await t.test('both ends count the same bytes, and the counts grow', async () => {
    const logBytes = (await a.status()).datasets.find((d) => d.originSite === 'shop-a')!.bytes
    // Only shop-a had the rows at first: whichever way they went on (shop-c passes on what it has), at least
    // one whole copy of its log left shop-a.
    const sentByA = (await a.status()).traffic!.peers.reduce((n, p) => n + p.sent.today, 0)
    assert.ok(sentByA >= logBytes, `shop-a sent ${sentByA} bytes, at least its log's ${logBytes}`)
    // The receiving side samples its count every second; at rest both ends agree within the framing.
    await waitUntil(
      "shop-b's count of bytes from shop-a matches shop-a's count to shop-b",
      async () => {
        const sent = peer(await a.status(), 'shop-b').sent.today
        const got = peer(await b.status(), 'shop-a').received.today
        return Math.abs(sent - got) <= sent * 0.02
      },
      30_000,
      1000
    )
    const before = peer(await b.status(), 'shop-a')
    assert.ok(before.received.lastHour > 0 && before.received.lastHour <= before.received.today)
    // shop-b may take the new blocks from shop-a or from shop-c: what it received from both grows.
    const received = async () => (await b.status()).traffic!.peers.reduce((n, p) => n + p.received.today, 0)
    const had = await received()
    writeRandom(a, 50)
    await converged([a, b], [a], 60_000)
    await waitUntil(
      'the counts grew with the new rows',
      async () => (await received()) >= had + 40 * 1024,
      30_000,
      1000
    )
  })

  await t.test('mesh status shows the traffic, as text and in --json', async () => {
    const text = await mesh(['status', '--dir', a.dir])
    assert.match(text.stdout, /Traffic \(budget: up 256 kbit\/s, down 512 kbit\/s\)/)
    assert.match(text.stdout, /shop-b\s+connected.*\n\s+sent .* today, .* in the last hour, now .* of 128 kbit\/s/)
    const atB = await mesh(['status', '--dir', b.dir])
    assert.match(atB.stdout, /shop-a\s+connected.*; its budget: up 256 kbit\/s, down 512 kbit\/s/)
    assert.match(atB.stdout, /the DHT \(lookups, announces, connection set-up\): sent .* today/)
    const json = JSON.parse((await mesh(['status', '--dir', b.dir, '--json'])).stdout) as SiteStatus
    const p = json.traffic!.peers.find((x) => x.site === 'shop-a')!
    assert.equal(p.connected, true)
    assert.equal(p.lagBytes, 0, 'shop-a, the only origin of new rows here, is caught up')
    assert.equal(p.catchUpSeconds, 0)
    // The DHT's own bytes, apart from the peers': shop-b looked up the mesh and announced itself on it.
    const dht = json.traffic!.dht
    assert.ok(dht && dht.sent.today > 0 && dht.received.today > 0, `the DHT's traffic: ${JSON.stringify(dht)}`)
    assert.ok(dht.sent.lastHour <= dht.sent.today)
    // A clean loopback mesh: no packet worth a WARN sent again.
    assert.equal(p.loss?.lossy, false, JSON.stringify(p.loss))
  })

  await t.test("today's figures survive a restart of the node", async () => {
    const sent = peer(await a.status(), 'shop-b').sent.today
    await a.stop()
    await a.start()
    const after = peer(await a.status(), 'shop-b').sent.today
    assert.ok(after >= sent, `after the restart shop-a still counts ${after} bytes sent today (was ${sent})`)
  })

  await t.test('join refuses a budget that makes no sense, before it looks for anyone', async () => {
    const code = await a.invite()
    const dir = path.join(m.dir, 'shop-d')
    const r = await mesh([
      'join',
      code,
      '--dir',
      dir,
      '--site',
      'shop-d',
      '--sqlite',
      path.join(m.dir, 'd.db'),
      '--bootstrap',
      m.bootstrap,
      '--down-kbps=-3'
    ])
    assert.equal(r.code, 64, r.stderr)
    assert.match(r.stderr, /USAGE: --down-kbps must be above 0/)
    assert.match(r.stderr, /kilobits per second, 8 or more/)
    assert.ok(!fs.existsSync(path.join(dir, 'config.json')))
  })
})

test('init writes the budget it is given, and refuses one that makes no sense', async (t) => {
  const dir = tmpDir(t)
  const db = path.join(dir, 'shop.db')
  openWal(db).close()
  const init = (site: string, ...flags: string[]) =>
    mesh([
      'init',
      '--dir',
      path.join(dir, site),
      '--site',
      site,
      '--sqlite',
      db,
      '--bootstrap',
      '127.0.0.1:9',
      ...flags.filter(Boolean)
    ])
  for (const [flag, value, said] of [
    ['--up-kbps', '0', /must be above 0/],
    ['--up-kbps=-128', '', /must be above 0/],
    ['--down-kbps', 'fast', /must be a number of kbit\/s, not "fast"/],
    ['--down-kbps', '4', /is 4 kbit\/s: under 8 the mesh's control traffic alone does not fit/]
  ] as const) {
    const r = await init('shop-x', flag, value)
    assert.equal(r.code, 64, `${flag} ${value}: ${r.stderr}`)
    assert.match(r.stderr, said)
    assert.match(r.stderr, /leave it out for no limit/)
    assert.ok(!fs.existsSync(path.join(dir, 'shop-x')), 'nothing is created')
  }
  const ok = await init('shop-y', '--up-kbps', '128', '--down-kbps', '200.5')
  assert.equal(ok.code, 0, ok.stderr)
  assert.deepEqual(readConfig(path.join(dir, 'shop-y')).link, { batchSeconds: 0, upKbps: 128, downKbps: 200.5 })
  const plain = await init('shop-z')
  assert.equal(plain.code, 0, plain.stderr)
  const written = JSON.parse(fs.readFileSync(path.join(dir, 'shop-z', 'config.json'), 'utf8'))
  assert.deepEqual(written.link, { batchSeconds: 0 }, 'no budget given: no upKbps or downKbps key, no limit')

  // The same checks when the file is edited by hand.
  const file = path.join(dir, 'shop-y', 'config.json')
  const cfg = JSON.parse(fs.readFileSync(file, 'utf8'))
  for (const [link, said] of [
    [{ upKbps: 0 }, /link\.upKbps must be above 0/],
    [{ downKbps: '128' }, /link\.downKbps must be a number of kbit\/s, not "128"/],
    [{ downKbps: 2 }, /link\.downKbps is 2 kbit\/s/],
    [{ upKbs: 128 }, /unknown key "upKbs" in "link"/],
    [128, /"link" must be an object/]
  ] as const) {
    fs.writeFileSync(file, JSON.stringify({ ...cfg, link }))
    assert.throws(
      () => readConfig(path.join(dir, 'shop-y')),
      (err: { code?: string; message: string }) => err.code === 'BAD_CONFIG' && said.test(err.message),
      JSON.stringify(link)
    )
  }
  fs.writeFileSync(file, JSON.stringify({ ...cfg, link: { upKbps: 0 } }))
  const start = await mesh(['start', '--dir', path.join(dir, 'shop-y')])
  assert.equal(start.code, 1)
  assert.match(start.stderr, /BAD_CONFIG: .*link\.upKbps must be above 0/)
  assert.match(start.stderr, /leave it out for no limit/)
})

test('the budget message: slot 4, its fields, and what a newer site appends left unread', () => {
  assert.equal(ControlMessage.budget, 4)
  assert.equal(CONTROL_MESSAGES[ControlMessage.budget].name, 'budget')
  const b = { upBps: 128_000, downBps: 512_000, askBps: 256_000 }
  const bytes = c.encode(budgetMessage, b)
  assert.deepEqual(c.decode(budgetMessage, bytes), b)
  const newer = Buffer.concat([bytes, Buffer.from([7, 1, 2, 3])])
  assert.deepEqual(c.decode(budgetMessage, newer), b, 'fields after askBps are left unread')
  const other = Buffer.from(bytes)
  other[0] = 2
  assert.throws(
    () => c.decode(budgetMessage, other),
    (err: { code?: string }) => err.code === 'PROTOCOL_VERSION'
  )
})

test('a meter: the last 10 s, the last hour, and today from local midnight', () => {
  const m = new Meter()
  const noon = new Date(2026, 10, 24, 12, 0, 0).getTime()
  m.add(1000, noon)
  m.add(500, noon + 4_500)
  assert.equal(m.sum(10, noon + 4_900), 1000, 'the current second is not whole yet')
  assert.equal(m.sum(10, noon + 5_000), 1500, 'both seconds are in the last 10')
  assert.equal(m.sum(10, noon + 15_000), 0)
  assert.equal(m.lastHour(noon + 30 * 60_000), 1500)
  assert.equal(m.lastHour(noon + 61 * 60_000), 0, 'an hour later the slots were reused')
  assert.equal(m.today, 1500)
  const late = new Date(2026, 10, 24, 23, 59, 59).getTime()
  m.add(10, late)
  assert.equal(m.today, 1510)
  m.add(7, late + 2_000)
  assert.equal(m.today, 7, 'a new day starts at local midnight')
  assert.equal(m.lastHour(late + 2_000), 17)
})

test('a budget keeps what accrued while bytes waited and the pump ran late, and only then', () => {
  // 64 kbit/s: 8000 bytes a second. A pump due every 136 ms that runs 700 ms late (a busy PC, a virtual machine
  // whose host took the CPU) must be able to send what the line would have carried meanwhile.
  const b = new Bucket(8000, 0)
  assert.equal(b.tokens, b.burst, 'a new bucket holds its burst')
  b.tokens = 0
  b.refill(700)
  assert.equal(b.tokens, b.burst, 'nothing waited: an idle bucket keeps no more than its burst')
  b.tokens = 0
  b.waiting(true, 700)
  b.refill(1400)
  assert.equal(b.tokens, 5600, 'a piece waited: the 700 ms the pump was late are kept, beyond the burst')
  b.refill(4000)
  assert.equal(b.tokens, 8000, 'at most a second of the rate')
  b.waiting(false, 4000)
  b.refill(4100)
  assert.equal(b.tokens, b.burst, 'once nothing waits, back to the burst')
  // An idle spell before a piece waits is not credited: only what accrues from then on.
  b.refill(20_000)
  b.tokens = 0
  b.refill(20_000)
  b.waiting(true, 30_000)
  assert.equal(b.tokens, b.burst, 'ten idle seconds are worth the burst, not a second of the rate')
})

/** A raw stream's stand-in for the pacer's arithmetic: it records what the pacer writes, and the events. */
function sink() {
  const written: Uint8Array[] = []
  const events: string[] = []
  const raw = {
    mtu: 1500,
    write(b: Uint8Array) {
      written.push(b)
      return true
    },
    end() {},
    emit(e: string) {
      events.push(e)
      return true
    },
    on() {}
  }
  const bytes = () => written.reduce((n, b) => n + b.byteLength, 0)
  return { raw, written, events, bytes, link: new PacedLink(raw, raw.write.bind(raw), raw.end.bind(raw)) }
}

test('the pacer: a piece waits for tokens, the burst at most goes at once, order kept, drain owed and given', () => {
  let t = 0
  const a = sink()
  const b = sink()
  const pacer = new Pacer<PacedLink>(
    8000,
    () => t,
    () => {}
  )
  const burst = new Bucket(8000, 0).burst
  try {
    pacer.add(a.link)
    pacer.add(b.link)
    // shop-a's peer asked for 1000 bytes a second: for ten seconds its bytes wait for its own cap, not the site's.
    pacer.setCap(a.link, 1000)
    const data = new Uint8Array(20_000).map((_, i) => i % 251)
    assert.equal(a.raw.write(data), false, 'more than a quarter second of the rate waits: the writer is told to wait')
    for (; t < 10_000; t += 250) pacer.pump()
    assert.ok(a.bytes() <= 10_000 + burst, `${a.bytes()} bytes to a peer that asked for 1000 a second`)
    // Ten seconds in which no piece waited for the site's bucket are worth its burst, not a second of its rate.
    b.raw.write(data)
    assert.ok(b.bytes() <= burst, `${b.bytes()} bytes went to the other peer at once: no more than the burst`)
    assert.ok(
      b.written.every((x) => x.byteLength <= pieceSize(1500)),
      'one packet a piece'
    )
    const start = t
    for (; b.link.queued > 0; t += 250) pacer.pump()
    assert.deepEqual(Buffer.concat(b.written), Buffer.from(data), 'every byte, in order')
    assert.ok(t - start >= ((20_000 - burst) / 8000) * 1000 - 250, `20 KB in ${t - start} ms: no faster than the rate`)
    assert.deepEqual(b.events, ['drain'], 'the writer was told once it could write again')
  } finally {
    pacer.close()
  }
})

test('a piece is one full UDX packet: its payload at the MTU the stream has probed', () => {
  // libudx starts a stream at 1200 bytes a packet and probes up to 1500; 68 bytes of them are UDX, UDP and IP
  // headers as libudx counts them on the DHT's dual-stack socket (IPv6's, even to an IPv4 peer).
  assert.equal(pieceSize(1200), 1132)
  assert.equal(pieceSize(1500), 1432)
  assert.equal(pieceSize(9000), 1432, 'never above a 1500-byte packet, what libudx probes to at most')
  assert.equal(pieceSize(undefined), CHUNK, 'a stream that does not say: 1 KB, under any MTU UDX uses')
  // Every piece fits the bucket's burst, or it could never go.
  const b = new Bucket(1000, 0)
  assert.ok(b.burst >= pieceSize(1500) + 64)
})
