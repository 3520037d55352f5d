import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import Database from '../adapters/sqlite/better-sqlite3.ts'
import test from 'node:test'
import { tmpDir } from './helpers/db.ts'
import { MESH, mesh, testnet } from './helpers/mesh.ts'
import { nodeProcess } from './helpers/teardown.ts'

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

test('every error for bad input says what to do: bad flags and values, a missing DIR, an unknown name', async (t) => {
  const dir = tmpDir(t)
  const db = path.join(dir, 'shop.db')
  new Database(db).exec('CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT)')
  const site = path.join(dir, 'site')
  const init = await mesh(['init', '--dir', site, '--site', 'north', '--sqlite', db, '--bootstrap', '127.0.0.1:9'])
  assert.equal(init.code, 0, init.stderr)
  const nowhere = path.join(dir, 'nowhere')
  const cases: Array<[string[], number, string]> = [
    [['log', '--dir', site], 64, 'USAGE'],
    [['log', 'shop', '--dir', nowhere], 1, 'NOT_INITIALIZED'],
    [['status', '--dir', nowhere], 3, 'NOT_INITIALIZED'],
    [['start', '--dir', nowhere], 1, 'NOT_INITIALIZED'],
    [['log', 'nosuch', '--dir', site], 1, 'UNKNOWN_DATASET'],
    [['log', 'shop', '--dir', site, '--show', 'abc'], 64, 'USAGE'],
    [['log', 'shop', '--dir', site, '--limt', '3'], 64, 'USAGE'],
    [['restore', 'shop', '--dir', site], 64, 'USAGE'],
    [['restore', 'shop', '--dir', site, '--seq', '3'], 64, 'USAGE'],
    [['restore', 'shop', '--dir', site, '--at', 'nonsense', '--to', path.join(dir, 'x.db')], 64, 'USAGE'],
    [['promote', '--dir', site], 64, 'USAGE'],
    [['promote', 'shop', '--dir', site], 1, 'NOT_RUNNING'],
    [['verify', 'shop', '--dir', site], 1, 'NOT_RUNNING'],
    [['invite', '--dir', site, '--expires', '3x'], 64, 'USAGE'],
    [['join', '--dir', path.join(dir, 'j')], 64, 'USAGE'],
    [['join', 'bm1-garbage', '--dir', path.join(dir, 'j'), '--site', 'x', '--sqlite', db], 1, 'BAD_JOIN_CODE'],
    [['init', '--dir', path.join(dir, 'i'), '--site', 'north'], 64, 'USAGE'],
    [['init', '--dir', path.join(dir, 'i'), '--site', 'bad name', '--sqlite', db], 64, 'USAGE'],
    [['init', '--dir', path.join(dir, 'i'), '--site', 'n2', '--sqlite', path.join(dir, 'missing.db')], 1, 'NOT_FOUND'],
    [['handover', 'shop', '--dir', site], 64, 'USAGE'],
    [['accept', 'shop', '--dir', site], 64, 'USAGE'],
    [['remove', '--dir', site], 64, 'USAGE'],
    [['status', '--dir'], 64, 'USAGE']
  ]
  for (const [args, code, what] of cases) {
    const r = await mesh(args)
    const said = `mesh ${args.join(' ')}: exit ${r.code}\n${r.stderr}`
    assert.equal(r.code, code, said)
    assert.match(r.stderr, new RegExp(`^mesh: ${what}: `, 'm'), said)
    assert.match(
      r.stderr,
      /^(Try: mesh |What to do: \S|Did you mean --[a-z-]+\? Try: mesh )/m,
      `${said}\nsays what to do`
    )
  }
  // Before its node first starts, a site knows no dataset, and says so.
  assert.match((await mesh(['log', 'shop', '--dir', site])).stderr, /knows none yet: a dataset is made when the node/)
  assert.equal(fs.existsSync(nowhere), false, 'no command made the missing directory')
})

test('mesh log prints times in local time with the offset of the zone', async () => {
  const { localTime } = await import('../tools/commands/log.ts')
  const before = process.env.TZ
  try {
    process.env.TZ = 'Asia/Kolkata'
    assert.equal(localTime(Date.UTC(2026, 10, 24, 12, 0, 5)), '2026-11-24 17:30:05 +05:30')
    process.env.TZ = 'America/New_York'
    assert.equal(localTime(Date.UTC(2026, 10, 24, 2, 0, 5)), '2026-11-23 21:00:05 -05:00')
  } finally {
    if (before === undefined) delete process.env.TZ
    else process.env.TZ = before
  }
})

test("a stopped node's status prints the command that starts it, with its --dir, and it starts the node", async (t) => {
  const dir = tmpDir(t)
  const db = path.join(dir, 'shop.db')
  new Database(db).exec('CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT)')
  const site = path.join(dir, 'site')
  const bootstrap = await testnet(t)
  assert.equal(
    (await mesh(['init', '--dir', site, '--site', 'north', '--sqlite', db, '--bootstrap', bootstrap])).code,
    0
  )
  const off = await mesh(['status', '--dir', site])
  assert.equal(off.code, 2, off.stderr)
  const printed = /start it with `(mesh start[^`]*)`/.exec(off.stdout)
  assert.ok(printed, off.stdout)
  assert.equal(printed[1], `mesh start --dir ${site}`)
  const node = nodeProcess(t, [MESH, ...printed[1].split(' ').slice(1), '--log-json'], 'the node started as printed')
  await node.waitLine(/"msg":"ready"/, 60_000)
  const on = JSON.parse((await mesh(['status', '--dir', site, '--json'])).stdout)
  assert.equal(on.running, true)
})
