/**
 * The steps of `mesh demo`'s story, in the order tools/demo/story.ts runs them. Each tells the user what it
 * does and fails with a DemoFailure when the mesh does not do what the step waits for.
 *
 * shop-north, shop-south and shop-east are `demo.sites` in that order; each shop's data is a dataset named after
 * the shop (so that `mesh promote shop-east` says which one it means), `demo.businesses` in the same order.
 */
import fs from 'node:fs'
import path from 'node:path'
import createTestnet from 'hyperdht/testnet.js'
import { count, type PromoteResult, type SiteStatus } from '../../node/index.ts'
import { out } from '../commands/common.ts'
import { command as initCommand } from '../commands/init.ts'
import { command as inviteCommand } from '../commands/invite.ts'
import { command as joinCommand } from '../commands/join.ts'
import { compareDatabases, copyDatabase, identical } from './compare.ts'
import { promote, runMesh, startNode, tail } from './mesh.ts'
import { Shop } from './shop.ts'
import { DemoFailure, secs, short, type Check, type Demo } from './stage.ts'
import { converge, statusNow, tableHeader, watch } from './watch.ts'

const TRADE_MS = 10_000
const TRADE_EVERY_MS = 250
/** What shop-east's till sells while it is cut off: a few transactions, one every so often. */
const OFFLINE_SALES = 6
const OFFLINE_EVERY_MS = 500
/** A killed origin counts as healthy until it misses three 5 s heartbeats: promote is retried until then. */
const PROMOTE_WAIT_MS = 25_000
/** How long the table runs after the promotion, and after shop-east is fenced, at least. */
const FOLLOW_MS = 3_000
const RETURN_MS = 2_000

/** shop-east as it went dark. */
export interface Dark {
  /** When its node was killed. */
  at: number
  /** Where the demo keeps the copies it compares. */
  checkDir: string
  /** Its database as it went dark: the point the divergence starts from. */
  wentDark: string
  /** Its data at shop-north and shop-south, compared with `wentDark`. */
  checks: Check[]
}

/** What shop-east's till did while cut off. */
export interface Offline {
  /** Every row it changed, as `table:id`. */
  rows: Set<string>
  transactions: number
  /** Its database as the till left it, before its node returns. */
  untilReturn: string
}

export type Divergence = SiteStatus['datasets'][number]['divergences'][number]

function cast(demo: Demo) {
  const [north, south, east] = demo.sites
  return { north, south, east, eb: demo.businesses[2] }
}

/** Prints `text`, runs `f`, then says how long it took (or that it failed). */
async function step(text: string, f: () => Promise<void>): Promise<void> {
  const t = Date.now()
  process.stdout.write(`   ${text.padEnd(60)}`)
  try {
    await f()
  } catch (err) {
    out('FAILED')
    throw err
  }
  out(`done (${secs(Date.now() - t)})`)
}

export function introduce(demo: Demo): void {
  const kept = demo.keep ? ' (kept afterwards: --keep)' : ' and is removed at the end'
  out(
    'branchmesh demo: three shops on this machine, each one a live backup of the other two; ' +
      'one is lost, another takes over.'
  )
  out(`Everything happens in ${demo.tmp}${kept}.`)
  out('')
}

/** 1. Three shops, each with its own database and the history it had before branchmesh. */
export function openShops(demo: Demo): void {
  out('1. Opening three shops')
  const names = ['shop-north', 'shop-south', 'shop-east']
  names.forEach((name, i) => {
    const root = path.join(demo.tmp, short(name))
    fs.mkdirSync(root)
    const db = path.join(root, 'shop.db')
    const shop = new Shop(db, 1000 + i * 7919)
    shop.seed(8 + i * 2, 12 + i * 3)
    demo.shops.push(shop)
    const dir = path.join(root, 'mesh')
    demo.sites.push({ name, root, dir, db, shop, node: null, alive: false, lastStatus: null, errorsShown: 0 })
  })
  for (const s of demo.sites) {
    const c = s.shop.counts()
    const has = `${c.customers} customers, ${c.orders} orders, ${c.lines} order lines so far`
    out(`   ${s.name.padEnd(11)} has its own database: ${has}.`)
  }
}

/** The local DHT test network (in this process) the shops find each other on. */
export async function startTestnet(demo: Demo): Promise<void> {
  demo.testnet = await demo.within(createTestnet(3, { host: '127.0.0.1' }), 15_000, 'the local test network to start')
  demo.bootstrap = demo.testnet.bootstrap.map((b) => `${b.host}:${b.port}`).join(',')
  out(`   A private network for the shops to find each other runs on this machine (${demo.bootstrap}).`)
  out('')
}

/** 2. shop-north starts a mesh (`mesh init`) and its node. */
export async function startMesh(demo: Demo): Promise<void> {
  out('2. Connecting them, with the real commands: mesh init, invite, join and start')
  const { north } = cast(demo)
  await step(`${north.name} starts a mesh to protect its database`, async () => {
    const site = ['--dir', north.dir, '--site', north.name, '--sqlite', north.db, '--dataset', north.name]
    await runMesh(demo, initCommand, ['init', ...site, '--bootstrap', demo.bootstrap])
  })
  await step(`${north.name} starts its node`, () => startNode(demo, north))
}

/** shop-south and shop-east join, each with a one-time join code from shop-north (`mesh invite`, `mesh join`). */
export async function joinShops(demo: Demo): Promise<void> {
  const { north, south, east } = cast(demo)
  for (const s of [south, east]) {
    await step(`${s.name} joins with a one-time join code from ${north.name}`, async () => {
      const lines = await runMesh(demo, inviteCommand, ['invite', '--dir', north.dir])
      const code =
        lines
          .filter((l) => l.trim())
          .at(-1)
          ?.trim() ?? ''
      if (!/^bm\d*-/.test(code)) throw new DemoFailure('mesh invite printed no join code', lines.slice(-5))
      const site = ['--dir', s.dir, '--site', s.name, '--sqlite', s.db, '--dataset', s.name]
      await runMesh(demo, joinCommand, ['join', code, ...site, '--bootstrap', demo.bootstrap, '--timeout', '20s'])
    })
  }
}

export async function startNodes(demo: Demo): Promise<void> {
  const { south, east } = cast(demo)
  await step(`${south.name} and ${east.name} start their nodes`, async () => {
    await Promise.all([startNode(demo, south), startNode(demo, east)])
  })
}

/** Every node sees the other two and the three datasets; each shop's data becomes one of `demo.businesses`. */
export async function findEachOther(demo: Demo): Promise<void> {
  await step('all three shops find each other', async () => {
    const t = Date.now()
    for (;;) {
      const st = await statusNow(demo)
      const ok = [...st.values()].every(
        (s) =>
          s !== null &&
          s.members.length === 3 &&
          s.members.filter((m) => m.connected).length === 2 &&
          s.datasets.length === 3
      )
      if (ok) {
        for (const s of demo.sites) {
          const d = st.get(s)!.datasets.find((x) => x.originSite === s.name)
          if (!d) throw new DemoFailure(`${s.name}'s node does not list its own dataset`)
          const { id, name, epoch } = d
          const live = { origin: s, epoch, file: s.db, till: s.shop, length: null, cutOffAt: null }
          demo.businesses.push({ owner: s, id, name, ...live })
        }
        return
      }
      if (Date.now() - t > 20_000) {
        const last = demo.sites.flatMap((s) => (s.node ? tail(s.node, 5) : []))
        throw new DemoFailure('the three shops did not all connect to each other', last)
      }
      await demo.pause(200)
    }
  })
  out('')
}

/** 3. Every till trades for a while; the table shows the copies keeping up. */
export async function trade(demo: Demo): Promise<void> {
  const often = Math.round(1000 / TRADE_EVERY_MS)
  out(`3. Trading: each shop takes orders, takes payments, edits and cancels orders, about ${often} times a second.`)
  out("   Each change is captured by the shop's node and sent to the two other shops as it happens.")
  tableHeader(demo)
  for (const s of demo.sites) s.shop.open(TRADE_EVERY_MS)
  await watch(demo, TRADE_MS)
  out('')
}

/**
 * 4. shop-east is cut off: once its last sales have reached the others, its node is killed (SIGKILL), and its
 * data at the other two is compared with its database as it went dark.
 */
export async function cutOffEast(demo: Demo): Promise<Dark> {
  const { north, south, east, eb } = cast(demo)
  const checks: Check[] = []
  const checkDir = path.join(demo.tmp, 'checks')
  fs.mkdirSync(checkDir)
  out(`4. ${east.name} is cut off`)
  east.shop.stop()
  out(`   ${east.name}'s till pauses. Waiting until its last sales have reached the other two shops...`)
  await converge(demo, [eb], 15_000)
  out(`   ${north.name} and ${south.name} now hold everything ${east.name} wrote.`)
  east.alive = false
  eb.cutOffAt = east.shop.stats.transactions
  east.node!.signal('SIGKILL')
  const at = Date.now()
  await demo.within(east.node!.exited, 5000, `the node of ${east.name} to die`)
  out(`   ${east.name}'s node is killed on the spot (SIGKILL, no goodbye): the shop is cut off from the others.`)
  // Its database as it went dark: the point the divergence starts from. The copies cannot move until a
  // promotion (nothing else writes them), so they are compared with it now.
  const wentDark = path.join(checkDir, 'east-when-cut-off.db')
  copyDatabase(east.db, wentDark)
  for (const holder of [north, south]) {
    const cmp = compareDatabases(wentDark, demo.copyFile(holder, eb))
    checks.push({
      what: `${east.name}'s data as it went dark, held at ${holder.name}`,
      ok: cmp.equal,
      detail: identical(cmp)
    })
  }
  const same = checks.every((c) => c.ok) ? checks[0].detail : checks.map((c) => c.detail).join('; ')
  out(`   Its data at ${north.name} and ${south.name}, checked row by row against its database: ${same}.`)
  return { at, checkDir, wentDark, checks }
}

/** shop-east's till, which knows nothing of branchmesh, makes a few sales while cut off. */
export async function sellWhileCutOff(demo: Demo, dark: Dark): Promise<Offline> {
  const { east, eb } = cast(demo)
  out(`   Its till, which knows nothing of branchmesh, keeps selling into its own database; those sales reach no one.`)
  out(`   (In ${east.name}'s column: OFF, the orders in its own database, and the till's changes that reached no one.)`)
  const rows = east.shop.track()
  east.shop.open(OFFLINE_EVERY_MS, OFFLINE_SALES)
  await watch(demo, 15_000, () => !east.shop.trading, `${east.name}'s till to make its ${OFFLINE_SALES} sales`)
  const transactions = east.shop.stats.transactions - eb.cutOffAt!
  const untilReturn = path.join(dark.checkDir, 'east-before-it-returns.db')
  copyDatabase(east.db, untilReturn)
  out('')
  return { rows, transactions, untilReturn }
}

/**
 * 5. shop-north promotes its copy of shop-east's data (`mesh promote`, tried again while the refusal is
 * ORIGIN_HEALTHY, as a killed node looks alive until it misses its heartbeats), and a till for shop-east's
 * business writes into the promoted file.
 */
export async function promoteAtNorth(demo: Demo, dark: Dark): Promise<PromoteResult> {
  const { north, east, eb } = cast(demo)
  out(`5. ${north.name} takes over ${east.name}'s data: mesh promote ${eb.name} --dir ${demo.rel(north.dir)}`)
  let attempt = await promote(demo, north, eb)
  if (attempt.error?.code === 'ORIGIN_HEALTHY') {
    out(`   Refused at first, ORIGIN_HEALTHY: ${attempt.error.message.replace(/^[A-Z_]+: /, '')}.`)
    out(
      '   A node killed without a goodbye looks alive until it misses its heartbeats (up to 15 s): ' +
        'trying again every second.'
    )
    let last = Date.now()
    await watch(
      demo,
      PROMOTE_WAIT_MS,
      async () => {
        if (Date.now() - last < 1000) return false
        last = Date.now()
        attempt = await promote(demo, north, eb)
        return attempt.error?.code !== 'ORIGIN_HEALTHY'
      },
      `${east.name} to stop counting as healthy at ${north.name}`
    )
  }
  if (!attempt.promoted) {
    const e = attempt.error!
    const why = `${e.code}: ${e.message.replace(/^[A-Z_]+: /, '')}${e.hint ? ` (${e.hint})` : ''}`
    throw new DemoFailure(`mesh promote ${eb.name} was refused at ${north.name}: ${why}`)
  }
  const p = attempt.promoted
  const after = `${secs(Date.now() - dark.at)} after ${east.name} was cut off`
  out(`   Done, ${after}: ${north.name} is the origin of ${p.dataset} now (epoch ${p.epoch}),`)
  out(
    `   continuing from entry ${p.branch} of ${p.previousOrigin}'s log. ` +
      'The database to use from now on, as mesh promote printed it:'
  )
  out(`     ${p.path}`)
  eb.origin = north
  eb.epoch = p.epoch
  eb.file = p.path
  eb.length = null
  eb.cutOffAt = null
  const moved = new Shop(p.path, 4242)
  demo.shops.push(moved)
  eb.till = moved
  moved.open(TRADE_EVERY_MS)
  out(
    `   ${east.name}'s business carries on in that file: ` +
      'a till for it writes there now (its copy was promoted, nothing copied).'
  )
  return p
}

/** shop-south, told nothing, follows the new epoch by itself. */
export async function southFollows(demo: Demo, p: PromoteResult): Promise<void> {
  const { north, south, east, eb } = cast(demo)
  const column = `@${short(north.name)} e${p.epoch}: its data lives at ${north.name}, epoch ${p.epoch}`
  out(`   In ${east.name}'s column from now on, ${column}. ${south.name} is told nothing:`)
  const followStart = Date.now()
  let southView: { applied: number; length: number; origin: string; epoch: number } | null = null
  await watch(
    demo,
    15_000,
    (views, st) => {
      const d = st.get(south)?.datasets.find((x) => x.id === eb.id)
      const c = views.find((v) => v.business === eb)?.copies.find((x) => x.holder === south)
      if (d && c && d.epoch === eb.epoch && d.originSite === north.name && c.applied !== null && c.applied > 1) {
        southView = { applied: c.applied, length: d.length, origin: d.originSite, epoch: d.epoch }
      }
      return southView !== null && Date.now() - followStart >= FOLLOW_MS
    },
    `${south.name} to follow ${north.name}'s epoch ${p.epoch} of ${eb.name}`
  )
  const sv = southView!
  const says =
    `${eb.name} has origin ${sv.origin}, epoch ${sv.epoch}, and it has applied ${sv.applied} of ` +
    count(sv.length, 'entry', 'entries')
  out(`   ${south.name}'s node follows by itself: its status says ${says}.`)
  out('')
}

/**
 * 6. shop-east's node comes back with its database as its till left it: it is fenced, keeps its offline sales
 * in a divergence folder, and follows shop-north as a copy.
 */
export async function eastReturns(demo: Demo, offline: Offline): Promise<Divergence> {
  const { north, east, eb } = cast(demo)
  out(`6. ${east.name} comes back: its node starts again, with its database as its till left it`)
  east.lastStatus = null
  await step(`${east.name}'s node starts`, () => startNode(demo, east))
  let fenced: Divergence | null = null
  let fencedAt = 0
  await watch(
    demo,
    20_000,
    (views, st) => {
      const d = st.get(east)?.datasets.find((x) => x.id === eb.id)
      if (!fenced && d && d.epoch === eb.epoch && d.divergences.length > 0) {
        fenced = d.divergences[d.divergences.length - 1]
        fencedAt = Date.now()
      }
      const following = views.every((v) => v.copies.some((c) => c.holder === east && c.applied !== null))
      return fenced !== null && following && Date.now() - fencedAt >= RETURN_MS
    },
    `${east.name} to be fenced and to follow`
  )
  const div: Divergence = fenced!
  const files = fs.existsSync(div.dir) ? fs.readdirSync(div.dir).sort() : []
  const changes = count(div.changes, 'row change')
  out(
    `   It learnt that ${north.name} took over ${eb.name} (epoch ${eb.epoch}) and was fenced: ` +
      'it stopped capturing its database,'
  )
  out(
    `   and kept aside the ${changes} its till made while cut off (${count(offline.transactions, 'transaction')}), in`
  )
  out(`     ${demo.rel(div.dir)}/  (${files.join(', ')})`)
  out(
    `   neither applied nor dropped (checked below), for someone to review and re-enter at ${north.name}; ` +
      'its mesh status warns'
  )
  out(`   about that folder until then. Its database was rebuilt to ${north.name}'s and follows it now, as a copy.`)
  out('')
  return div
}

/** 7. The tills stop, and their last changes reach every shop. */
export async function closingTime(demo: Demo): Promise<void> {
  out(`7. Closing time: the tills stop; their last changes travel to every shop.`)
  for (const s of demo.shops) s.stop()
  await demo.pause(300)
  await converge(demo, demo.businesses, 20_000)
  out('')
}
