import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import Database from 'better-sqlite3'
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

test("the README's name of a PostgreSQL replica database is the one the node creates", async () => {
  const { engineFor } = await import('../adapters/index.ts')
  const readme = fs.readFileSync(new URL('../README.md', import.meta.url), 'utf8').replace(/\n\s*/g, ' ')
  const example = /the dataset `([^`]+)` of site `([^`]+)` with id `([0-9a-f]+)` is `([^`]+)`/.exec(readme)
  assert.ok(example, 'the README gives an example of the name')
  const [, name, originSite, id, said] = example
  const place = { dir: '/nowhere', server: 'postgres://mesh:secret@127.0.0.1:5432/postgres' }
  const made = new URL(engineFor('postgres').replicaLocation({ id, name, originSite }, place))
  assert.equal(made.pathname.slice(1), said)
  // And the rule it states, on names that need it: lower case, other characters as one '_', at most 63.
  const long = new URL(
    engineFor('postgres').replicaLocation({ id, name: `Big Ledger ${'x'.repeat(80)}`, originSite: 'Shop.North' }, place)
  ).pathname.slice(1)
  assert.equal(long, `mesh_shop_north_big_ledger_${'x'.repeat(80)}`.slice(0, 63))
})
