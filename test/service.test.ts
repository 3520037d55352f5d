/**
 * `mesh service` (issue 17). systemd does not run on this machine (it is not PID 1), so `install` must write the
 * unit and say plainly that it could not enable it, both when systemctl fails and when it is missing. The unit
 * file itself is checked by systemd's own `systemd-analyze verify`, as a system unit and as a user unit.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import Database from '../adapters/sqlite/better-sqlite3.ts'
import { tmpDir } from './helpers/db.ts'
import { mesh } from './helpers/mesh.ts'
import { MESH } from './helpers/mesh.ts'
import { unitFile } from '../tools/commands/service.ts'

/** An initialised data directory under `root` (whose path may hold spaces and `%`). */
async function site(root: string, name = 'shop-a'): Promise<string> {
  const db = path.join(root, `${name}.db`)
  new Database(db).exec('CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT)')
  const dir = path.join(root, `${name} data 100%`)
  const r = await mesh(['init', '--dir', dir, '--site', name, '--sqlite', db, '--bootstrap', '127.0.0.1:9'])
  assert.equal(r.code, 0, r.stderr)
  return dir
}

function verify(file: string, root: string, user: boolean): { status: number | null; out: string } {
  const run = path.join(root, 'run')
  fs.mkdirSync(run, { recursive: true })
  const r = spawnSync('systemd-analyze', ['verify', ...(user ? ['--user'] : []), file], {
    encoding: 'utf8',
    env: { ...process.env, XDG_RUNTIME_DIR: run }
  })
  return { status: r.status, out: `${r.stdout}${r.stderr}` }
}

test('install --user writes a unit that systemd-analyze verify accepts, and says it could not enable it', async (t) => {
  const root = tmpDir(t, 'service-')
  const dir = await site(root)
  const env = { XDG_CONFIG_HOME: path.join(root, 'config') }
  const r = await mesh(['service', 'install', '--user', '--dir', dir], { env })
  const file = path.join(root, 'config', 'systemd', 'user', 'branchmesh-shop-a.service')
  assert.match(r.stdout, new RegExp(`Wrote ${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`))
  assert.equal(r.code, 1, 'not enabled is a failure')
  assert.match(r.stderr, /SERVICE_NOT_ENABLED: the unit is written, but it could not be enabled: systemctl --user/)
  assert.match(r.stderr, /What to do: .*systemctl --user enable --now branchmesh-shop-a\.service.*mesh start --dir/)
  const text = fs.readFileSync(file, 'utf8')
  assert.match(text, /^Restart=on-failure$/m)
  assert.match(text, /^After=network-online\.target$/m)
  assert.match(text, /^WantedBy=default\.target$/m)
  assert.ok(text.includes(`"start" "--dir" "${dir.replace('%', '%%')}"`), text)
  for (const user of [true, false]) {
    const v = verify(file, root, user)
    assert.equal(v.status, 0, v.out)
  }

  const st = await mesh(['service', 'status', '--user', '--dir', dir, '--json'], { env })
  assert.equal(st.code, 0, st.stderr)
  const j = JSON.parse(st.stdout)
  assert.equal(j.installed, true)
  assert.equal(j.file, file)
  // is-enabled reads the unit files (it answers here); is-active needs the running systemd.
  assert.equal(j.enabled, 'disabled')
  assert.equal(j.active, null)
  assert.match(j.systemd, /systemctl --user is-active branchmesh-shop-a\.service failed/)

  const un = await mesh(['service', 'uninstall', '--user', '--dir', dir], { env })
  assert.equal(fs.existsSync(file), false, 'the unit file is removed')
  assert.equal(un.code, 1)
  assert.match(un.stderr, /SERVICE_NOT_ENABLED: the service could not be stopped and disabled/)
})

test('install with no systemctl on the PATH: the unit is written; the message says systemctl is missing', async (t) => {
  const root = tmpDir(t, 'service-')
  const dir = await site(root, 'shop-b')
  const empty = path.join(root, 'empty-bin')
  fs.mkdirSync(empty)
  const env = { XDG_CONFIG_HOME: path.join(root, 'config'), PATH: empty }
  const r = await mesh(['service', 'install', '--user', '--dir', dir], { env })
  assert.equal(r.code, 1)
  assert.match(r.stderr, /could not be enabled: systemctl is not installed/)
  assert.ok(fs.existsSync(path.join(root, 'config', 'systemd', 'user', 'branchmesh-shop-b.service')))
  const st = await mesh(['service', 'status', '--user', '--dir', dir], { env })
  assert.match(
    st.stdout,
    /installed .*\nenabled: unknown, running: unknown\nsystemd could not answer: systemctl is not/
  )
})

test('a system unit runs as the data directory owner, and verify catches a broken unit', (t) => {
  const root = tmpDir(t, 'service-')
  const opts = { site: 'shop-c', dir: root, node: process.execPath, script: MESH, user: false, uid: 1000 }
  const file = path.join(root, 'branchmesh-shop-c.service')
  fs.writeFileSync(file, unitFile(opts))
  assert.match(fs.readFileSync(file, 'utf8'), /^User=1000$/m)
  assert.match(fs.readFileSync(file, 'utf8'), /^WantedBy=multi-user\.target$/m)
  assert.equal(verify(file, root, false).status, 0)
  // The check is real: a node binary that does not exist fails it.
  fs.writeFileSync(file, unitFile({ ...opts, node: path.join(root, 'no-node') }))
  assert.notEqual(verify(file, root, false).status, 0)
})

test('mesh service: a missing action or an uninitialised directory is a clear usage error', async (t) => {
  const root = tmpDir(t, 'service-')
  const none = await mesh(['service', '--dir', root])
  assert.equal(none.code, 64)
  assert.match(none.stderr, /USAGE: no action given\nTry: mesh service install/)
  const bad = await mesh(['service', 'start', '--dir', root])
  assert.match(bad.stderr, /USAGE: unknown service action "start"/)
  const uninit = await mesh(['service', 'install', '--user', '--dir', path.join(root, 'nope')])
  assert.match(uninit.stderr, /NOT_INITIALIZED/)
})
