import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { readMeshState, sitePaths } from '../node/index.ts'
import { mesh, meshSites, waitUntil } from './helpers/mesh.ts'
import { tsProcess } from './helpers/teardown.ts'

test(
  'membership and bad input: strangers and other protocol versions get nothing; bad join codes, wrong ' +
    'dirs, a second node, an unreachable bootstrap fail clearly and change nothing',
  async (t) => {
    const { dir, bootstrap, sites, codes } = await meshSites(t, ['shop-a', 'shop-b'])
    const [a, b] = sites
    const used = codes[0]
    await waitUntil("B holds A's rows", () => b.holdsExactly(a))
    const state = readMeshState(sitePaths(a.dir))
    const meshId = Buffer.from(state.meshId).toString('hex')
    const logKey = Buffer.from(state.datasets.find((d) => d.originSite === 'shop-a')!.log).toString('hex')

    await t.test('keys and secrets are files only this user can read', () => {
      // current.log links to the node's log being written (rotated by size): the file itself is checked.
      for (const f of ['site.key', 'invites.json', 'node.sock', 'current.log']) {
        assert.equal(fs.statSync(path.join(a.dir, f)).mode & 0o777, 0o600, `${f} is mode 0600`)
      }
      assert.equal(fs.statSync(path.join(b.dir, 'site.key')).mode & 0o777, 0o600)
    })

    await t.test(
      'a process with the topic and a log key but no membership gets nothing, and the refusal is logged',
      async () => {
        const intruder = tsProcess(t, 'test/helpers/intruder.ts', ['stranger', bootstrap, meshId, logKey, '6'])
        const line = await intruder.waitLine(/^\{/, 30_000)
        const r = JSON.parse(line)
        assert.equal(r.length, 0, 'no block of the log reached the stranger')
        assert.equal(r.contiguous, 0)
        await waitUntil(
          'A logged the refusal',
          () => a.node!.lines.some((l) => /refused a connection/.test(l) && /not a member/.test(l)),
          10_000
        )
        const s = await a.status()
        assert.ok(s.refused.some((x) => /not a member/.test(x.reason)))
      }
    )

    await t.test(
      'a member speaking control protocol version 2 is refused before any data flows, and status says why',
      async () => {
        const code = await a.invite()
        const peer = tsProcess(t, 'test/helpers/intruder.ts', ['v2', bootstrap, meshId, logKey, '6', code])
        const r = JSON.parse(await peer.waitLine(/^\{/, 60_000))
        assert.ok(r.connections > 0, 'it did connect (it is a member)')
        assert.equal(r.length, 0, 'no block of the log reached it')
        const s = await a.status()
        assert.ok(
          s.refused.some((x) => /PROTOCOL_VERSION/.test(x.reason) && /version 2/.test(x.reason)),
          JSON.stringify(s.refused)
        )
      }
    )

    await t.test(
      'a used, a mangled and an expired join code are refused with their own codes and leave no data directory',
      async () => {
        const target = path.join(dir, 'shop-x')
        const join = (code: string, extra: string[] = []) =>
          mesh([
            'join',
            code,
            '--dir',
            target,
            '--site',
            'shop-x',
            '--sqlite',
            a.db,
            '--bootstrap',
            bootstrap,
            '--timeout',
            '20s',
            ...extra
          ])
        const reused = await join(used)
        assert.equal(reused.code, 1)
        assert.match(reused.stderr, /^mesh: BAD_JOIN_CODE:/m)
        assert.match(reused.stderr, /What to do:/)
        assert.equal(fs.existsSync(target), false)

        const fresh = await a.invite()
        const mangled = await join(fresh.slice(0, 20) + (fresh[20] === 'A' ? 'B' : 'A') + fresh.slice(21))
        assert.equal(mangled.code, 1)
        assert.match(mangled.stderr, /^mesh: BAD_JOIN_CODE:/m)
        assert.equal(fs.existsSync(target), false)

        const short = await a.invite(['--expires', '1s'])
        await new Promise((r) => setTimeout(r, 1500))
        const expired = await join(short)
        assert.equal(expired.code, 1)
        assert.match(expired.stderr, /^mesh: JOIN_CODE_EXPIRED:/m)
        assert.equal(fs.existsSync(target), false)

        const unreachable = await mesh([
          'join',
          fresh,
          '--dir',
          target,
          '--site',
          'shop-x',
          '--sqlite',
          a.db,
          '--bootstrap',
          '127.0.0.1:9',
          '--timeout',
          '5s'
        ])
        assert.equal(unreachable.code, 1)
        assert.match(unreachable.stderr, /^mesh: UNREACHABLE:/m)
        assert.equal(fs.existsSync(target), false, 'a failed join leaves nothing behind')

        // The unused fresh code still works afterwards: nothing was damaged.
        const ok = await join(fresh)
        assert.equal(ok.code, 0, ok.stderr)
        assert.equal(readMeshState(sitePaths(a.dir)).members.length, 4) // a, b, the v2 peer, x
      }
    )

    await t.test('a second node on the same data directory is refused and the first keeps running', async () => {
      const second = await mesh(['start', '--dir', a.dir], { timeoutMs: 30_000 })
      assert.equal(second.code, 1)
      assert.match(second.stderr, /^mesh: NODE_RUNNING:/m)
      assert.doesNotMatch(
        second.stdout + second.stderr,
        /node stopped/,
        'a node that never ran does not say it stopped'
      )
      const s = await a.status()
      assert.equal(s.running, true)
    })

    await t.test('a wrong --dir, a missing argument, an unknown flag and a bad config key say what to do', async () => {
      const missing = path.join(dir, 'nowhere')
      const st = await mesh(['status', '--dir', missing])
      assert.equal(st.code, 3, 'UNKNOWN, the monitoring-plugin code')
      assert.match(st.stderr, /^mesh: NOT_INITIALIZED:/m)
      const start = await mesh(['start', '--dir', missing])
      assert.equal(start.code, 1)
      assert.match(start.stderr, /^mesh: NOT_INITIALIZED:/m)
      assert.equal(fs.existsSync(missing), false)
      const noSite = await mesh(['init', '--dir', missing, '--sqlite', a.db])
      assert.equal(noSite.code, 64)
      assert.match(noSite.stderr, /Try: mesh init/)
      const flag = await mesh(['status', '--dir', a.dir, '--jsno'])
      assert.equal(flag.code, 64)
      assert.match(flag.stderr, /Try: mesh help status/)
      const again = await mesh(['init', '--dir', a.dir, '--site', 'shop-a', '--sqlite', a.db])
      assert.equal(again.code, 1)
      assert.match(again.stderr, /^mesh: ALREADY_INITIALIZED:/m)

      const cfgFile = path.join(b.dir, 'config.json')
      const cfg = JSON.parse(fs.readFileSync(cfgFile, 'utf8'))
      fs.writeFileSync(cfgFile, JSON.stringify({ ...cfg, bootstarp: cfg.bootstrap }))
      const typo = await mesh(['status', '--dir', b.dir])
      assert.equal(typo.code, 3)
      assert.match(typo.stderr, /^mesh: BAD_CONFIG:/m)
      assert.match(typo.stderr, /Did you mean "bootstrap"\?/)
      fs.writeFileSync(cfgFile, JSON.stringify(cfg))
    })
  }
)
