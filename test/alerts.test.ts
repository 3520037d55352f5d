/**
 * Issue 17 items 3 and 4 on real nodes and a real SMTP server (smtp-server on 127.0.0.1): a CRIT raised and
 * cleared is two messages; the daily summary carries each site's disk space and the day's figures; a wrong
 * password, a server or webhook that cannot be reached and a bad address are a WARN in status, and the node
 * keeps replicating.
 */
import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import http from 'node:http'
import net from 'node:net'
import { SMTPServer } from 'smtp-server'
import { tmpDir } from './helpers/db.ts'
import { converged, mesh, sqliteSite, testnet, waitUntil, type TestSite } from './helpers/mesh.ts'
import { teardown } from './helpers/teardown.ts'
import { writeWorkload } from './helpers/workload.ts'

interface Mail {
  from: string
  to: string[]
  subject: string
  /** The whole message, quoted-printable undone. */
  body: string
}

/** A real SMTP server on loopback that takes user "mesh" with password "right-pw" and keeps what it gets. */
async function smtpServer(t: TestContext): Promise<{ port: number; mails: Mail[] }> {
  const mails: Mail[] = []
  const server = new SMTPServer({
    disabledCommands: ['STARTTLS'],
    allowInsecureAuth: true,
    onAuth(auth, _session, cb) {
      if (auth.username === 'mesh' && auth.password === 'right-pw') cb(null, { user: 'mesh' })
      else cb(new Error('Invalid username or password'))
    },
    onData(stream, session, cb) {
      let raw = ''
      stream.on('data', (d) => (raw += d))
      stream.on('end', () => {
        const body = raw
          .replace(/=\r?\n/g, '')
          .replace(/=([0-9A-F]{2})/g, (_, h) => String.fromCharCode(Number.parseInt(h, 16)))
        mails.push({
          from: session.envelope.mailFrom ? session.envelope.mailFrom.address : '',
          to: session.envelope.rcptTo.map((r) => r.address),
          subject: /^Subject: (.*)$/m.exec(raw)?.[1] ?? '',
          body
        })
        cb()
      })
    }
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  teardown(t, () => new Promise<void>((resolve) => server.close(() => resolve())))
  return { port: (server.server.address() as net.AddressInfo).port, mails }
}

/** A port on loopback that nothing listens on. */
async function closedPort(): Promise<number> {
  const s = net.createServer()
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve))
  const port = (s.address() as net.AddressInfo).port
  await new Promise<void>((resolve) => s.close(() => resolve()))
  return port
}

function editConfig(dir: string, edit: (cfg: Record<string, any>) => void): void {
  const file = path.join(dir, 'config.json')
  const cfg = JSON.parse(fs.readFileSync(file, 'utf8'))
  edit(cfg)
  fs.writeFileSync(file, JSON.stringify(cfg, null, 2), { mode: 0o600 })
}

const email = (port: number, password: string, to = ['Shop owner <owner@shop.example>']) => ({
  host: '127.0.0.1',
  port,
  secure: false,
  user: 'mesh',
  password,
  from: 'mesh@shop.example',
  to
})

test('a CRIT raised and cleared is two emails; the daily summary has every site disk and day figures', async (t) => {
  const smtp = await smtpServer(t)
  const root = tmpDir(t, 'alerts-')
  const bootstrap = await testnet(t)
  const a = sqliteSite(t, root, 'shop-a', bootstrap)
  const b = sqliteSite(t, root, 'shop-b', bootstrap)
  await a.init()
  // A site silent for 5 s is CRIT straight away (no WARN step), so one outage is one reason.
  editConfig(a.dir, (cfg) => {
    cfg.status = { ...cfg.status, silentWarnSeconds: 5, silentCritSeconds: 5, usualSilentSeconds: 86400 }
    // dailyAt 00:00: the day's summary is due as soon as the node runs, and goes out once.
    cfg.alerts = { email: email(smtp.port, 'right-pw'), checkSeconds: 1, dailyAt: '00:00' }
  })
  await a.start()
  await b.join(await a.invite())
  await b.start()
  writeWorkload(a.db, 1, 30)
  writeWorkload(b.db, 2, 30)
  await converged([a, b])
  const active = () => JSON.parse(fs.readFileSync(path.join(a.dir, 'alerts.json'), 'utf8')).active
  // Whatever start-up raised (a site not heard from yet) has been cleared again, and said so.
  await waitUntil('shop-a is OK with no alert outstanding', async () => {
    return (await a.status()).verdict === 'OK' && Object.keys(active()).length === 0
  })
  const before = smtp.mails.length
  const daily = smtp.mails.filter((m) => /^branchmesh daily: /.test(m.subject))
  assert.equal(daily.length, 1, 'the daily summary went out by itself, once')
  assert.match(daily[0].body, /- shop-a \(full, this site\)\r?\n {4}disk: /)

  await t.test('shop-b stops: one CRIT email; it starts again: one cleared email', async () => {
    await b.stop()
    await waitUntil('the CRIT email', () => smtp.mails.length > before)
    const raised = smtp.mails[before]
    assert.deepEqual(raised.to, ['owner@shop.example'])
    assert.match(raised.subject, /^branchmesh CRIT: shop-b has not been heard from/)
    assert.match(raised.body, /New problems:\r?\n- CRIT shop-b has not been heard from for \d+ seconds/)
    await b.start()
    await waitUntil('the cleared email', () => smtp.mails.length > before + 1, 90_000)
    const cleared = smtp.mails[before + 1]
    assert.match(cleared.subject, /^branchmesh cleared: shop-b has not been heard from/)
    assert.match(cleared.body, /Cleared \(no longer seen\):/)
    assert.match(cleared.body, /Mesh status seen from shop-a at .*: OK\./)
    // Nothing else was sent between them and a test message asked for now: exactly two alerts.
    const r = await mesh(['alerts', 'test', '--dir', a.dir, '--json'])
    assert.equal(r.code, 0, r.stderr)
    assert.deepEqual(JSON.parse(r.stdout), { sent: ['email'] })
    await waitUntil('the test email', () => smtp.mails.length > before + 2)
    assert.equal(smtp.mails.length, before + 3)
    assert.match(smtp.mails[before + 2].subject, /^branchmesh test message from shop-a/)
  })

  await t.test("the daily summary: each site's disk space, versions and the day's figures per dataset", async () => {
    writeWorkload(a.db, 3, 10)
    await converged([a, b])
    const s = await a.status()
    const n = smtp.mails.length
    const r = await mesh(['alerts', 'daily', '--dir', a.dir])
    assert.equal(r.code, 0, r.stderr)
    assert.match(r.stdout, /Daily summary sent by email/)
    await waitUntil('the summary email', () => smtp.mails.length > n)
    const m = smtp.mails[n]
    assert.match(m.subject, /^branchmesh daily: all is well \(shop-a\)/)
    assert.match(m.body, /Content-Type: text\/plain/)
    assert.match(m.body, /Content-Type: text\/html/)
    for (const site of ['shop-a', 'shop-b']) {
      const h = s.members.find((x) => x.site === site)!.health!
      assert.match(
        m.body,
        new RegExp(`- ${site} \\(full, [^)]*\\)\\r?\\n {4}disk: [\\d.]+ [GM]B free of [\\d.]+ [GM]B`)
      )
      assert.ok(m.body.includes(`Node.js ${h.node}`), `versions of ${site}`)
    }
    // The day's figures count from the first sample shop-a took (its node started in this test): the log entries
    // appended since, which the other site applied.
    const samples = JSON.parse(fs.readFileSync(path.join(a.dir, 'alerts.json'), 'utf8')).samples
    for (const d of s.datasets) {
      const was = samples[0].datasets[d.id]?.length ?? 0
      const other = d.originSite === 'shop-a' ? 'shop-b' : 'shop-a'
      const line = new RegExp(`- ${d.name}: (\\d+) new log entries, [\\d.]+ [KMG]B \\(origin ${d.originSite};`)
      const got = line.exec(m.body)
      assert.ok(got, `a line for ${d.name}`)
      assert.ok(d.length - was > 0, 'entries were appended in the test')
      assert.equal(Number(got[1]), d.length - was)
      assert.match(m.body, new RegExp(`${other} has applied ${d.length} of ${d.length}`))
    }
    assert.match(m.body, /\d+ checkpoints? matched and \d+ snapshots? made at shop-a/)
    assert.match(m.body, /Nothing is wrong\./)
    assert.match(m.body, /<b>shop-b<\/b>/)
  })
})

test('wrong SMTP password, unreachable server and webhook, bad address: a WARN, and replication goes on', async (t) => {
  const smtp = await smtpServer(t)
  const root = tmpDir(t, 'alerts-bad-')
  const bootstrap = await testnet(t)
  const a = sqliteSite(t, root, 'shop-a', bootstrap)
  const b = sqliteSite(t, root, 'shop-b', bootstrap)
  await a.init()
  editConfig(a.dir, (cfg) => {
    cfg.alerts = { email: email(smtp.port, 'wrong-pw-1234'), checkSeconds: 1 }
  })
  await a.start()
  await b.join(await a.invite())
  await b.start()

  await t.test('a wrong password: mesh alerts test says so, and every site shows a WARN without it', async () => {
    const r = await mesh(['alerts', 'test', '--dir', a.dir])
    assert.equal(r.code, 1)
    assert.match(r.stderr, /ALERT_FAILED: .*refused the user name or password.*fix alerts\.email\.user \/ password/)
    assert.equal(smtp.mails.length, 0)
    for (const site of [a, b]) {
      await waitUntil(`${site.name} shows the WARN`, async () =>
        (await site.status()).reasons.some((x) => /^shop-a cannot send alerts: .*password/.test(x.text))
      )
      const s = await site.status()
      assert.equal(s.verdict, 'WARN')
      assert.ok(!JSON.stringify(s).includes('wrong-pw-1234'), 'the password is not in status')
    }
    assert.ok(!a.node!.lines.join('\n').includes('wrong-pw-1234'), 'the password is not in the log')
    writeWorkload(a.db, 1, 20)
    await converged([a, b])
  })

  await t.test('an SMTP server and a webhook that cannot be reached: both said, node replicating', async () => {
    await a.stop()
    const port = await closedPort()
    editConfig(a.dir, (cfg) => {
      cfg.alerts = { email: email(port, 'x'), webhook: { url: `http://127.0.0.1:${port}/hook/secret-token` } }
    })
    await a.start()
    const r = await mesh(['alerts', 'test', '--dir', a.dir])
    assert.equal(r.code, 1)
    assert.match(r.stderr, /cannot reach the SMTP server 127\.0\.0\.1:\d+ .*check alerts\.email\.host, port/)
    assert.match(r.stderr, /the webhook at http:\/\/127\.0\.0\.1:\d+ did not take the message/)
    assert.ok(!r.stderr.includes('secret-token'), 'the webhook path (its secret) is not shown')
    const texts = (await a.status()).reasons.map((x) => `${x.level} ${x.text}`)
    assert.ok(
      texts.some((x) => /^WARN shop-a cannot send alerts: cannot reach the SMTP server/.test(x)),
      `${texts}`
    )
    assert.ok(
      texts.some((x) => /^WARN shop-a cannot send alerts: the webhook at/.test(x)),
      `${texts}`
    )
    writeWorkload(a.db, 2, 20)
    await converged([a, b])
  })

  await t.test('a bad address: a WARN from the start, and the node runs', async () => {
    await a.stop()
    editConfig(a.dir, (cfg) => {
      cfg.alerts = { email: email(smtp.port, 'right-pw', ['owner at shop']) }
    })
    // Copied with a wider mode: it holds the SMTP password, so the node sets it back to owner-only.
    fs.chmodSync(path.join(a.dir, 'config.json'), 0o644)
    await a.start()
    assert.equal(fs.statSync(path.join(a.dir, 'config.json')).mode & 0o777, 0o600)
    await waitUntil('the WARN', async () =>
      (await a.status()).reasons.some((x) =>
        /^shop-a cannot send alerts: "owner at shop" is not an email address: fix alerts\.email/.test(x.text)
      )
    )
    writeWorkload(a.db, 3, 20)
    await converged([a, b])
  })

  await t.test('a misspelled key in alerts: BAD_CONFIG naming the nearest key', async () => {
    await a.stop()
    editConfig(a.dir, (cfg) => {
      cfg.alerts = { email: { ...email(smtp.port, 'x'), pasword: 'x' } }
    })
    const r = await mesh(['start', '--dir', a.dir])
    assert.equal(r.code, 1)
    assert.match(r.stderr, /BAD_CONFIG: .*unknown key "pasword" in alerts\.email/)
    assert.match(r.stderr, /Did you mean "password"\?/)
  })
})

/** A real HTTP server on loopback that keeps the JSON bodies POSTed to it (a chat tool's webhook). */
async function webhookServer(t: TestContext): Promise<{ url: string; posts: Array<Record<string, any>> }> {
  const posts: Array<Record<string, any>> = []
  const server = http.createServer((req, res) => {
    let body = ''
    req.on('data', (d) => (body += d))
    req.on('end', () => {
      posts.push(JSON.parse(body))
      res.end('ok')
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  teardown(t, () => new Promise<void>((resolve) => server.close(() => resolve())))
  return { url: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}/hook`, posts }
}

test('one site sends: the named sender, and when it falls silent another takes over', async (t) => {
  const smtp = await smtpServer(t)
  const hook = await webhookServer(t)
  const root = tmpDir(t, 'alerts-sender-')
  const bootstrap = await testnet(t)
  const a = sqliteSite(t, root, 'shop-a', bootstrap)
  const b = sqliteSite(t, root, 'shop-b', bootstrap)
  const status = { silentWarnSeconds: 5, silentCritSeconds: 5, usualSilentSeconds: 86400 }
  const common = { sender: 'shop-b', checkSeconds: 1, takeoverSeconds: 10 }
  await a.init()
  // shop-a emails, shop-b posts to the webhook: which channel a message comes by says which site sent it.
  editConfig(a.dir, (cfg) => {
    cfg.status = { ...cfg.status, ...status }
    cfg.alerts = { email: email(smtp.port, 'right-pw'), ...common }
  })
  await a.start()
  await b.join(await a.invite())
  editConfig(b.dir, (cfg) => {
    cfg.status = { ...cfg.status, ...status }
    cfg.alerts = { webhook: { url: hook.url }, ...common }
  })
  await b.start()
  const settled = (s: TestSite) => {
    const active = JSON.parse(fs.readFileSync(path.join(s.dir, 'alerts.json'), 'utf8')).active
    return Object.keys(active).length === 0
  }
  await waitUntil('both OK with no alert outstanding', async () => {
    return (await a.status()).verdict === 'OK' && (await b.status()).verdict === 'OK' && settled(a) && settled(b)
  })
  const mails = smtp.mails.length
  const posts = hook.posts.length

  await t.test('shop-a stops: shop-b, the sender, posts the CRIT and its clearing; shop-a sends nothing', async () => {
    await a.stop()
    await waitUntil('the CRIT post', () => hook.posts.length > posts)
    const p = hook.posts[posts]
    assert.equal(p.site, 'shop-b')
    assert.equal(p.raised[0].level, 'CRIT')
    assert.match(p.raised[0].text, /^shop-a has not been heard from/)
    assert.match(p.text, /^branchmesh CRIT: shop-a has not been heard from/)
    await a.start()
    await waitUntil('the cleared post', () => hook.posts.length > posts + 1, 90_000)
    assert.match(hook.posts[posts + 1].cleared[0].text, /^shop-a has not been heard from/)
    assert.equal(smtp.mails.length, mails)
  })

  await t.test(
    'shop-b stops: shop-a takes over and emails the CRIT, and its clearing once shop-b is back',
    async () => {
      await waitUntil('shop-a settled', async () => (await a.status()).verdict === 'OK' && settled(a))
      await b.stop()
      await waitUntil('the CRIT email from shop-a', () => smtp.mails.length > mails)
      assert.match(smtp.mails[mails].subject, /^branchmesh CRIT: shop-b has not been heard from/)
      assert.match(smtp.mails[mails].body, /Mesh status seen from shop-a/)
      await b.start()
      await waitUntil('the cleared email', () => smtp.mails.length > mails + 1, 90_000)
      assert.match(smtp.mails[mails + 1].subject, /^branchmesh cleared: shop-b has not been heard from/)
      // Nothing else went out either way: a test message from each comes right after.
      for (const s of [a, b]) assert.equal((await mesh(['alerts', 'test', '--dir', s.dir])).code, 0)
      await waitUntil('both test messages', () => smtp.mails.length > mails + 2 && hook.posts.length > posts + 2)
      assert.equal(smtp.mails.length, mails + 3)
      assert.equal(hook.posts.length, posts + 3)
      assert.equal(hook.posts[posts + 2].test, true)
    }
  )
})
