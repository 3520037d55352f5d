import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import Database from '../adapters/sqlite/better-sqlite3.ts'
import test from 'node:test'
import { tmpDir } from './helpers/db.ts'
import { mesh } from './helpers/mesh.ts'

test('mesh alone, an unknown command or help topic, and a mistyped flag exit 64 and say what was meant', async () => {
  const alone = await mesh([])
  assert.equal(alone.code, 64)
  assert.match(alone.stderr, /Usage: mesh <command>/)

  const typo = await mesh(['statsu'])
  assert.equal(typo.code, 64)
  assert.match(typo.stderr, /unknown command 'statsu'/)
  assert.match(typo.stderr, /Did you mean mesh status\?/)

  const topic = await mesh(['help', 'nosuch'])
  assert.equal(topic.code, 64)
  assert.match(topic.stderr, /unknown command 'nosuch'/)
  assert.doesNotMatch(topic.stderr, /Did you mean/, 'nothing is close to nosuch')

  const flag = await mesh(['status', '--jsn'])
  assert.equal(flag.code, 64)
  assert.match(flag.stderr, /Unknown option '--jsn'/)
  assert.match(flag.stderr, /Did you mean --json\? Try: mesh help status/)

  const help = await mesh(['help'])
  assert.equal(help.code, 0)
  assert.match(help.stdout, /Usage: mesh <command>/)
})

test('mesh init writes every config key the README names, with its default, and reads them back', async (t) => {
  const dir = tmpDir(t)
  const db = path.join(dir, 'shop.db')
  new Database(db).exec('CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT)')
  const site = path.join(dir, 'site')
  const init = await mesh(['init', '--dir', site, '--site', 'shop-north', '--sqlite', db, '--bootstrap', '127.0.0.1:9'])
  assert.equal(init.code, 0, init.stderr)
  const cfg = JSON.parse(fs.readFileSync(path.join(site, 'config.json'), 'utf8'))
  const readme = fs.readFileSync(new URL('../README.md', import.meta.url), 'utf8')
  const said = /`init` and `join` also write (.*?) with their\s+defaults/s.exec(readme)
  assert.ok(said, 'the README says which keys init writes')
  for (const key of [...said[1].matchAll(/`(\w+)`/g)].map((m) => m[1])) assert.ok(key in cfg, `config.json has ${key}`)
  assert.equal(cfg.checkpointSeconds, 600)
  assert.equal(cfg.replicaPostgres, null)
  assert.equal((fs.statSync(path.join(site, 'config.json')).mode & 0o777).toString(8), '600')
  const status = await mesh(['status', '--dir', site, '--json'])
  assert.equal(JSON.parse(status.stdout).site, 'shop-north', status.stderr)
})
