/**
 * Joining must not look like an intrusion (issue 18 item 4): a new member is not a "refused connection", an
 * alarm, a WARN or a CRIT at any site, neither at the inviter, nor at the joiner, nor at a member that has not
 * heard of it yet and meets it first (node/membership.ts: the credential step). A real stranger still is.
 *
 * Every site's `mesh status` is read again and again through the whole join (the node's own status, and now
 * and then the command's text), and every sign of a refusal or an alarm seen at any moment is collected.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readMeshState, sitePaths, type SiteStatus } from '../node/index.ts'
import { converged, mesh, meshSites, sqliteSite, type TestSite, waitUntil } from './helpers/mesh.ts'
import { tsProcess } from './helpers/teardown.ts'
import { writeWorkload } from './helpers/workload.ts'

/** What in one site's status would look like an intrusion or an alarm; [] when there is none. */
function badSigns(st: SiteStatus): string[] {
  const out: string[] = []
  for (const r of st.refused) out.push(`refused ${r.key.slice(0, 12)}: ${r.reason}`)
  for (const r of st.reasons) if (r.level !== 'OK') out.push(`${r.level}: ${r.text}`)
  return out
}

/** Reads the status of every running site until stopped, and keeps every bad sign it saw, with where and when. */
class Watch {
  readonly seen: string[] = []
  /** The step of the test under way, named in what is kept. */
  step = 'start'
  polls = 0
  texts = 0
  private stopped = false
  private readonly done: Promise<void>

  constructor(private readonly sites: TestSite[]) {
    this.done = this.loop()
  }

  private note(site: TestSite, what: string): void {
    const line = `${site.name} (${this.step}): ${what}`
    if (!this.seen.includes(line)) this.seen.push(line)
  }

  private async loop(): Promise<void> {
    let round = 0
    while (!this.stopped) {
      for (const s of this.sites) {
        if (s.node === null) continue
        try {
          const st = await s.status()
          if (!st.running) continue
          this.polls++
          for (const b of badSigns(st)) this.note(s, b)
        } catch {
          // The node was being stopped or started: its socket comes and goes.
        }
      }
      // Every third round, the command itself (text) at one site in turn: what a person would read.
      if (round++ % 3 === 0) {
        const s = this.sites[Math.floor(round / 3) % this.sites.length]
        if (s.node !== null) {
          const r = await mesh(['status', '--dir', s.dir])
          if (r.stdout.includes('node running')) {
            this.texts++
            if (/Refused connections|^ *(WARN|CRIT):|ERROR/m.test(r.stdout))
              this.note(s, `mesh status shows: ${r.stdout}`)
          }
        }
      }
      await new Promise((r) => setTimeout(r, 150))
    }
  }

  async stop(): Promise<void> {
    this.stopped = true
    await this.done
  }
}

const memberNames = (dir: string) => readMeshState(sitePaths(dir)).members.map((m) => m.site)

test(
  'a site joining shows no refusal or alarm at the inviter, the joiner, a member that meets it before hearing ' +
    'of it, or members told at once; a stranger is still refused and shown',
  async (t) => {
    const { dir, bootstrap, sites } = await meshSites(t, ['shop-a', 'shop-b'])
    const [a, b] = sites
    await converged(sites)
    const c = sqliteSite(t, dir, 'shop-c', bootstrap)
    writeWorkload(c.db, 5, 20)
    const d = sqliteSite(t, dir, 'shop-d', bootstrap)
    writeWorkload(d.db, 6, 20)
    const watch = new Watch([a, b, c, d])
    t.after(() => watch.stop())

    await t.test('shop-a is off; shop-b invites shop-c, which joins and starts', async () => {
      watch.step = 'shop-a off, shop-c joins through shop-b'
      await a.stop()
      await c.join(await b.invite())
      await c.start()
      await converged([b, c], [b, c])
      assert.ok(!memberNames(a.dir).includes('shop-c'), 'shop-a has not heard of shop-c')
    })

    await t.test('shop-b goes off and shop-a comes back: it meets shop-c before anyone tells it', async () => {
      watch.step = 'shop-a meets shop-c first'
      await b.stop()
      await a.start()
      await waitUntil('shop-a admitted shop-c', () => memberNames(a.dir).includes('shop-c'), 60_000)
      // Only shop-c could have told it (shop-b is off): on the statement shop-c showed, the credential step.
      assert.ok(
        a.node!.lines.some((l) => /"msg":"new member"/.test(l) && /"site":"shop-c"/.test(l)),
        'shop-a admitted shop-c on a statement it was shown'
      )
      await converged([a, c], [a, c])
    })

    await t.test('shop-b comes back: every site holds every other, shop-c is a member everywhere', async () => {
      watch.step = 'all three running'
      await b.start()
      await converged([a, b, c])
      for (const s of [a, b, c]) {
        await waitUntil(
          `${s.name} is connected to both others`,
          async () => (await s.status()).members.filter((m) => !m.self && m.connected).length === 2,
          60_000
        )
        const st = await s.status()
        assert.deepEqual(st.members.map((m) => m.site).sort(), ['shop-a', 'shop-b', 'shop-c'], s.name)
      }
    })

    await t.test('while every site runs, shop-d joins through shop-c, the newest member', async () => {
      watch.step = 'shop-d joins through shop-c, all running'
      await d.join(await c.invite())
      await d.start()
      await converged([a, b, c, d])
      for (const s of [a, b, c, d]) {
        await waitUntil(`${s.name} knows shop-d`, () => memberNames(s.dir).includes('shop-d'), 60_000)
      }
    })

    await t.test('no site showed a refusal, an alarm, a WARN or a CRIT at any moment of the joins', async () => {
      await watch.stop()
      assert.deepEqual(watch.seen, [])
      assert.ok(watch.polls >= 10 && watch.texts >= 2, `status was read often: ${watch.polls}, ${watch.texts}`)
      for (const s of [a, b, c, d]) {
        assert.deepEqual(
          s.node!.lines.filter((l) => /"msg":"(refused a connection|alarm)"/.test(l)),
          [],
          `${s.name} logged no refusal`
        )
      }
    })

    await t.test('a stranger (a key no member vouched for) is refused, and mesh status shows it', async () => {
      const state = readMeshState(sitePaths(a.dir))
      const meshId = Buffer.from(state.meshId).toString('hex')
      const logKey = Buffer.from(state.datasets.find((d) => d.originSite === 'shop-a')!.log).toString('hex')
      const stranger = tsProcess(t, 'test/helpers/intruder.ts', ['stranger', bootstrap, meshId, logKey, '8'])
      const got = JSON.parse(await stranger.waitLine(/^\{/, 60_000))
      assert.equal(got.length, 0, 'no block of the log reached the stranger')
      await waitUntil(
        'shop-a refused the stranger',
        async () => (await a.status()).refused.some((r) => /not a member/.test(r.reason)),
        30_000
      )
      assert.ok(badSigns(await a.status()).some((x) => /^refused .*not a member/.test(x)))
      const text = await mesh(['status', '--dir', a.dir])
      assert.match(text.stdout, /Refused connections \(recent\)\n +[0-9a-f]{12} +not a member of the mesh/)
      assert.ok(a.node!.lines.some((l) => /"msg":"refused a connection"/.test(l)))
    })
  }
)
