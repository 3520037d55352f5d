/**
 * The mesh benchmark: three sites over hyperswarm on loopback (a local DHT test network), each a real
 * MeshNode with its own data directory, its own dataset, and replicas of the other two.
 *
 *   trickle  one-row transactions 10-20 ms apart at site-a; latency from the commit at the origin to the
 *            moment the row is applied at site-b, at site-c, and at both. Anchor: the aim (p50 <= 10 ms,
 *            p99 <= 50 ms).
 *   bulk     200,000 rows in one transaction at site-a; rows/s from the start of the insert until the rows
 *            are applied at both other sites. Anchor: raw SQLite inserting the same rows into a fresh file.
 *
 * Setup, and what it does not measure:
 * - The three nodes run in this one process (one event loop, competing for the same 2 cores); the
 *   application writing the origin database is a separate process (bench/mesh-writer.ts), so its commits
 *   and fsyncs do not block the nodes. Times on both sides are process.hrtime.bigint() (CLOCK_MONOTONIC,
 *   one clock for every process on the machine).
 * - Nodes use the options `mesh start` gives them: default pollMs (50 ms longest idle wait; the SQLite
 *   capture wakes early on data_version changes), default acknowledge interval. Nothing is tuned here.
 * - Loopback only: no real network latency, loss or bandwidth limit.
 * - To split the latency into stages, the origin capture's read() is wrapped with a timer (what it does is
 *   unchanged) and hypercore's own events are watched ('append' at both ends, 'download' at the replicas).
 * - A row counts as applied when the replica's apply transaction that holds it has committed (the node's
 *   'applied' event); the unit holding each row is read back from the origin's log, so no row is guessed.
 *
 * Run alone with `node --import tsx bench/mesh.ts [--json]`; `npm run bench` runs it after bench/run.ts.
 */
import Database from '../adapters/sqlite/better-sqlite3.ts'
import { fork, type ChildProcess } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import crypto from 'hypercore-crypto'
import createTestnet, { type Testnet } from 'hyperdht/testnet.js'
import type { Logger } from '../adapters/index.ts'
import { MeshNode, createSiteKey, sitePaths, writeMeshState, type OwnDataset } from '../node/index.ts'
import type { MemberInfo } from '../protocol/index.ts'
import { tmpDir } from '../test/helpers/db.ts'
import { openApp, type WriterRequest } from './mesh-writer.ts'

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')

export interface MeshBenchOptions {
  say?: (line: string) => void
  /** One-row transactions measured (after a warm-up of 20). */
  trickle?: number
  /** Rows in the bulk transaction. */
  bulkRows?: number
}

export type MeshBenchSummary = Record<string, number | boolean>

const AIM_P50 = 10
const AIM_P99 = 50

/** Nearest-rank percentile. */
function pct(xs: number[], p: number): number {
  if (xs.length === 0) return NaN
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]
}

const med = (xs: number[]) => pct(xs, 50)
const f1 = (x: number) => (Number.isFinite(x) ? x.toFixed(1) : 'n/a')
const f2 = (x: number) => +x.toFixed(2)

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms))
}

export async function waitUntil(
  cond: () => boolean,
  timeoutMs: number,
  what: () => string,
  everyMs = 5
): Promise<void> {
  const until = Date.now() + timeoutMs
  while (!cond()) {
    if (Date.now() > until) throw new Error(`bench: timed out after ${timeoutMs} ms waiting for ${what()}`)
    await sleep(everyMs)
  }
}

/** The writer process: one request at a time. */
class Writer {
  private readonly proc: ChildProcess
  private pending: { resolve: (v: unknown) => void; reject: (e: Error) => void } | null = null

  constructor() {
    this.proc = fork(path.join(ROOT, 'bench/mesh-writer.ts'), [], {
      cwd: ROOT,
      execArgv: ['--import', 'tsx'],
      stdio: ['ignore', 'inherit', 'inherit', 'ipc']
    })
    this.proc.on('message', (m: { ok: boolean; res?: unknown; error?: string }) => {
      const p = this.pending
      this.pending = null
      if (!p) return
      if (m.ok) p.resolve(m.res)
      else p.reject(new Error(`mesh bench writer: ${m.error}`))
    })
    this.proc.on('exit', (code, signal) => {
      this.pending?.reject(new Error(`mesh bench writer exited (code ${code}, signal ${signal})`))
      this.pending = null
    })
  }

  ask<T>(req: WriterRequest): Promise<T> {
    if (this.pending) throw new Error('mesh bench writer: one request at a time')
    return new Promise<T>((resolve, reject) => {
      this.pending = { resolve: resolve as (v: unknown) => void, reject }
      this.proc.send(req)
    })
  }

  async close(): Promise<void> {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return
    const exited = new Promise<void>((r) => this.proc.once('exit', () => r()))
    this.proc.disconnect()
    await exited
  }
}

/** A logger that keeps warnings and errors, so the bench can say when a node complained. */
function keepingLogger(site: string, kept: string[]): Logger {
  const keep = (level: string) => (msg: string, fields?: Record<string, unknown>) => {
    kept.push(`${site} ${level}: ${msg}${fields ? ` ${JSON.stringify(fields)}` : ''}`)
  }
  return { debug() {}, info() {}, warn: keep('warn'), error: keep('error') }
}

interface Site {
  name: string
  dir: string
  db: string
  dataset: OwnDataset
  node: MeshNode
}

/** One unit of site-a's log: its blocks, when the capture read it, when the capture loop reported it done. */
interface Unit {
  start: number
  end: number
  /** The 'unit' event: appended, log fsynced, change rows acknowledged. */
  t: number
  readStart: number
  readDone: number
}

/** Events at one replica of site-a's dataset, in this process's hrtime (ms from `base`). */
interface ReplicaTrace {
  site: string
  applied: Array<{ length: number; t: number }>
  appended: Array<{ length: number; t: number }>
  downloaded: Map<number, number>
  reader: Database.Database
}

export async function meshBench(opts: MeshBenchOptions = {}): Promise<MeshBenchSummary> {
  const say = opts.say ?? (() => {})
  const TRICKLE = opts.trickle ?? 800
  const WARMUP = 20
  const BULK = opts.bulkRows ?? 200_000
  const base = process.hrtime.bigint()
  const ms = (t: bigint) => Number(t - base) / 1e6
  const now = () => ms(process.hrtime.bigint())

  const loadBefore = os.loadavg()[0]
  const { dir, cleanup } = tmpDir('mesh-bench-')
  const writer = new Writer()
  const kept: string[] = []
  const sites: Site[] = []
  let testnet: Testnet | null = null
  const traces: ReplicaTrace[] = []
  try {
    // --- anchor: raw SQLite, the same rows, in the same writer process, before any node runs --------------
    const raw: number[] = []
    for (let r = 0; r < 3; r++) {
      const { secs } = await writer.ask<{ secs: number }>({
        cmd: 'raw',
        file: path.join(dir, `raw${r}.db`),
        rows: BULK
      })
      raw.push(BULK / secs)
    }
    const rawRate = med(raw)

    // --- three data directories, as `mesh init` + `mesh join` leave them, without the join handshake -------
    const names = ['site-a', 'site-b', 'site-c']
    const keys = names.map((name) => {
      const siteDir = path.join(dir, name)
      fs.mkdirSync(siteDir, { recursive: true, mode: 0o700 })
      return createSiteKey(sitePaths(siteDir))
    })
    const meshId = crypto.randomBytes(32)
    const members: MemberInfo[] = names.map((site, i) => ({ key: keys[i].publicKey, site, addedAt: Date.now() }))
    testnet = await createTestnet(3, { host: '127.0.0.1' })
    const network = { bootstrap: testnet.bootstrap, host: '127.0.0.1', firewalled: false }
    for (const name of names) {
      const siteDir = path.join(dir, name)
      writeMeshState(sitePaths(siteDir), { meshId, members, datasets: [], local: [] })
      // Each site's own database, with some rows already there (they go into its log as the snapshot).
      const db = path.join(dir, `${name}.db`)
      const app = openApp(db)
      const ins = app.prepare('INSERT INTO orders (customer, amount, note) VALUES (?, ?, ?)')
      app.transaction(() => {
        for (let r = 0; r < 1000; r++) ins.run(`${name} customer ${r}`, r * 1.5, 'existing order')
      })()
      app.close()
      const dataset: OwnDataset = {
        id: crypto.randomBytes(8).toString('hex'),
        name: 'shop',
        engine: 'sqlite',
        path: db
      }
      const node = new MeshNode({
        dir: siteDir,
        site: name,
        datasets: [dataset],
        network,
        software: 'branchmesh/bench',
        logger: keepingLogger(name, kept)
      })
      sites.push({ name, dir: siteDir, db, dataset, node })
    }
    const tStart = now()
    await Promise.all(sites.map((s) => s.node.start()))
    const startedMs = now() - tStart

    // --- wait: every node connected to both others, every replica holds the other sites' snapshots ---------
    const originLength = (id: string) => sites.find((s) => s.dataset.id === id)!.node.origins.get(id)!.log.length
    const caughtUp = () =>
      sites.every(
        (s) =>
          s.node.peers.size === 2 &&
          sites.every(
            (o) => o === s || (s.node.replicas.get(o.dataset.id)?.loop.stats.applied ?? 0) >= originLength(o.dataset.id)
          )
      )
    let connectedMs = NaN
    await waitUntil(
      () => {
        if (Number.isNaN(connectedMs) && sites.every((s) => s.node.peers.size === 2)) connectedMs = now() - tStart
        return caughtUp()
      },
      60_000,
      () =>
        sites
          .map(
            (s) =>
              `${s.name}: ${s.node.peers.size} peers, replicas ` +
              [...s.node.replicas.values()]
                .map((r) => `${r.info.originSite} ${r.loop.stats.applied}/${originLength(r.info.id)}`)
                .join(', ')
          )
          .join('; ')
    )
    const readyMs = now() - tStart

    // --- instrument site-a's dataset: units at the origin, blocks and applies at the two replicas ---------
    const a = sites[0]
    const origin = a.node.origins.get(a.dataset.id)!
    const units: Unit[] = []
    let lastEnd = origin.log.length
    const originAppended: Array<{ length: number; t: number }> = []
    // Instrumentation only: the origin capture's read() is wrapped to time it; what it does is unchanged.
    // Capture steps run one at a time (read, append, fsync, acknowledge, 'unit'), so the last read that found
    // something before a 'unit' event is the read of that unit.
    let lastRead = { start: NaN, done: NaN }
    const side = origin.side
    const read = side.read.bind(side)
    side.read = async () => {
      const start = now()
      const batch = await read()
      if (batch !== null) lastRead = { start, done: now() }
      return batch
    }
    origin.log.core.on('append', () => originAppended.push({ length: origin.log.length, t: now() }))
    origin.loop.on('unit', (e: { length: number }) => {
      units.push({ start: lastEnd, end: e.length, t: now(), readStart: lastRead.start, readDone: lastRead.done })
      lastEnd = e.length
    })
    for (const s of sites.slice(1)) {
      const r = s.node.replicas.get(a.dataset.id)!
      const trace: ReplicaTrace = {
        site: s.name,
        applied: [],
        appended: [],
        downloaded: new Map(),
        reader: new Database(s.node.replicaPath(r.info), { readonly: true, fileMustExist: true })
      }
      s.node.on('applied', (e: { dataset: string; length: number }) => {
        if (e.dataset === a.dataset.id) trace.applied.push({ length: e.length, t: now() })
      })
      r.log.core.on('append', () => trace.appended.push({ length: r.log.length, t: now() }))
      r.log.core.on('download', (index: number) => {
        if (!trace.downloaded.has(index)) trace.downloaded.set(index, now())
      })
      traces.push(trace)
    }
    const maxId = (t: ReplicaTrace) => Number(t.reader.prepare('SELECT coalesce(max(id), 0) FROM orders').pluck().get())
    const allApplied = (id: number) =>
      waitUntil(
        () => traces.every((t) => maxId(t) >= id),
        60_000,
        () => `row ${id} at ${traces.map((t) => `${t.site} (has ${maxId(t)})`).join(', ')}`
      )
    // Replication does not wait for the origin's fsync, so a replica may apply a unit before the origin's
    // capture loop reports it: wait for both.
    const unitsDone = () =>
      waitUntil(
        () => lastEnd >= origin.log.length,
        60_000,
        () => `site-a's capture loop to report units up to ${origin.log.length}`
      )
    const firstAt = (xs: Array<{ length: number; t: number }>, length: number) =>
      xs.find((x) => x.length >= length)?.t ?? NaN

    // --- trickle ------------------------------------------------------------------------------------------
    const warm = await writer.ask<{ commits: Array<[number, string, string]> }>({
      cmd: 'trickle',
      file: a.db,
      count: WARMUP,
      minMs: 10,
      maxMs: 20
    })
    await allApplied(warm.commits[warm.commits.length - 1][0])
    const firstUnit = units.length
    const { commits } = await writer.ask<{ commits: Array<[number, string, string]> }>({
      cmd: 'trickle',
      file: a.db,
      count: TRICKLE,
      minMs: 10,
      maxMs: 20
    })
    await allApplied(commits[commits.length - 1][0])
    await unitsDone()
    // Which unit holds each row: read back from the origin's log.
    const unitOf = new Map<number, Unit>()
    const trickleUnits = units.slice(firstUnit)
    for (const u of trickleUnits) {
      const unit = await origin.log.unit(u.start, { wait: false })
      for (const e of unit?.entries ?? []) {
        if (e.kind !== 'transaction') continue
        for (const ch of e.changes) for (const row of ch.upserts) unitOf.set(Number(row[0]), u)
      }
    }
    const perSite = traces.map(() => [] as number[])
    const both: number[] = []
    // Stages, from the commit (the replica stages hold both replicas' samples).
    const stage = {
      readStart: [] as number[],
      readDone: [] as number[],
      originLog: [] as number[],
      durable: [] as number[],
      known: [] as number[],
      block: [] as number[],
      applied: [] as number[]
    }
    let unmatched = 0
    const appCommit = commits.map(([, at, started]) => Number(BigInt(at) - BigInt(started)) / 1e6)
    for (const [id, at] of commits) {
      const u = unitOf.get(id)
      if (!u) {
        unmatched++
        continue
      }
      const c = ms(BigInt(at))
      stage.readStart.push(u.readStart - c)
      stage.readDone.push(u.readDone - c)
      stage.originLog.push(firstAt(originAppended, u.end) - c)
      stage.durable.push(u.t - c)
      let worst = -Infinity
      traces.forEach((t, k) => {
        const applied = firstAt(t.applied, u.end) - c
        perSite[k].push(applied)
        stage.known.push(firstAt(t.appended, u.end) - c)
        stage.block.push((t.downloaded.get(u.end - 1) ?? NaN) - c)
        stage.applied.push(applied)
        worst = Math.max(worst, applied)
      })
      both.push(worst)
    }
    const rowsPerUnit = commits.length / Math.max(1, trickleUnits.length)

    // --- bulk ---------------------------------------------------------------------------------------------
    const bulkFirstUnit = units.length
    const bytesBefore = origin.log.core.byteLength
    const bulk = await writer.ask<{ firstId: number; lastId: number; startAt: string; committedAt: string }>({
      cmd: 'bulk',
      file: a.db,
      rows: BULK
    })
    await waitUntil(
      () => traces.every((t) => maxId(t) >= bulk.lastId),
      300_000,
      () => `bulk row ${bulk.lastId} at ${traces.map((t) => `${t.site} (has ${maxId(t)})`).join(', ')}`
    )
    await unitsDone()
    const bulkUnits = units.slice(bulkFirstUnit)
    const bulkEnd = bulkUnits[bulkUnits.length - 1].end
    const bStart = ms(BigInt(bulk.startAt))
    const bCommit = ms(BigInt(bulk.committedAt))
    const bCaptured = bulkUnits[bulkUnits.length - 1].t
    const bApplied = traces.map((t) => firstAt(t.applied, bulkEnd))
    const bBoth = Math.max(...bApplied)
    // The last of the unit's blocks to arrive at each replica.
    const bBlocks = traces.map((t) => {
      let last = -Infinity
      for (let i = bulkUnits[0].start; i < bulkEnd; i++) last = Math.max(last, t.downloaded.get(i) ?? NaN)
      return last
    })
    const bulkRate = BULK / ((bBoth - bStart) / 1000)

    // --- check: each replica holds exactly what the origin holds ------------------------------------------
    const digest = (file: string) => {
      const db = new Database(file, { readonly: true, fileMustExist: true })
      try {
        return JSON.stringify(
          db.prepare('SELECT count(*) AS n, max(id) AS top, total(amount) AS sum FROM orders').get()
        )
      } finally {
        db.close()
      }
    }
    const want = digest(a.db)
    const equal = traces.every((t) => digest(t.reader.name) === want)

    // --- report -------------------------------------------------------------------------------------------
    const p50 = med(both)
    const p95 = pct(both, 95)
    const p99 = pct(both, 99)
    const worst = pct(both, 100)
    say('')
    say(
      'mesh: 3 sites over hyperswarm, local DHT testnet on loopback; the 3 nodes run in ONE process ' +
        '(shared event loop, 2 cores), the application writing site-a is a separate process'
    )
    const loadAfter = os.loadavg()[0]
    say(
      `  machine: ${os.cpus().length} cores, load average (1 min) ${loadBefore.toFixed(2)} before, ` +
        `${loadAfter.toFixed(2)} after: other work on the machine shows up as latency here`
    )
    say(
      `  setup: nodes started ${Math.round(startedMs)} ms, all connected ${Math.round(connectedMs)} ms, ` +
        `holding each other's snapshots ${Math.round(readyMs)} ms; capture pollMs default (50 ms), nothing ` +
        `tuned`
    )
    say(
      `  trickle, ${commits.length} one-row transactions 10-20 ms apart at site-a (after ${WARMUP} ` +
        `warm-up), commit -> applied:`
    )
    say(
      `    (the clock starts when the application's commit returns; the commit itself, with its fsync, ` +
        `took p50 ${f1(med(appCommit))} ms, p99 ${f1(pct(appCommit, 99))} ms, max ` +
        `${f1(pct(appCommit, 100))} ms: this disk's fsync latency meanwhile)`
    )
    traces.forEach((t, k) => {
      const xs = perSite[k]
      say(
        `    at ${t.site}: p50 ${f1(med(xs))} ms, p95 ${f1(pct(xs, 95))} ms, p99 ${f1(pct(xs, 99))} ms, ` +
          `max ${f1(pct(xs, 100))} ms`
      )
    })
    say(
      `    at both:    p50 ${f1(p50)} ms (${(p50 / AIM_P50).toFixed(2)}x the aim of <= ${AIM_P50} ms), ` +
        `p95 ${f1(p95)} ms, p99 ${f1(p99)} ms (${(p99 / AIM_P99).toFixed(2)}x the aim of <= ${AIM_P99} ` +
        `ms), max ${f1(worst)} ms`
    )
    say('    where it goes, from the commit (p50 / p95 / p99 ms):')
    const row = (label: string, xs: number[], note = '') =>
      say(
        `      ${label.padEnd(44)} ${f1(med(xs)).padStart(6)} / ${f1(pct(xs, 95)).padStart(6)} / ` +
          `${f1(pct(xs, 99)).padStart(6)}${note}`
      )
    row('capture read starts', stage.readStart, '   (waits on data_version, polled every 3 ms, 50 ms at most)')
    row('capture read done', stage.readDone)
    row("appended to the origin's hypercore", stage.originLog)
    row('log fsynced, change rows acknowledged', stage.durable)
    row('replica knows the new length', stage.known)
    row('block at the replica', stage.block)
    row('applied at the replica', stage.applied)
    say(
      `    ${trickleUnits.length} log units for ${commits.length} transactions ` +
        `(${rowsPerUnit.toFixed(2)} rows per ` +
        `unit)${unmatched ? `; ${unmatched} rows not found in the origin log` : ''}`
    )
    say(
      `  bulk, ${BULK} rows in one transaction at site-a, start of insert -> applied at both: ` +
        `${Math.round(bulkRate)} rows/s (${(rawRate / bulkRate).toFixed(2)}x slower than raw SQLite insert ` +
        `of the same rows, ${Math.round(rawRate)} rows/s)`
    )
    const bu = bulkUnits[bulkUnits.length - 1]
    say(
      `    insert + commit ${f1(bCommit - bStart)} ms (as the application sees it, with SQLite's ` +
        `automatic WAL checkpoint); then, from the commit returning: capture read ` +
        `${f1(bu.readStart - bCommit)}-${f1(bu.readDone - bCommit)} ms, in the origin's hypercore ` +
        `${f1(firstAt(originAppended, bulkEnd) - bCommit)} ms, fsynced and acknowledged ` +
        `${f1(bCaptured - bCommit)} ms (${bulkUnits.length} unit, ${bulkEnd - bulkUnits[0].start} blocks, ` +
        `${((origin.log.core.byteLength - bytesBefore) / 1e6).toFixed(1)} MB);`
    )
    say(
      `    all blocks at ` +
        `${traces.map((t, k) => `${t.site} ${f1(bBlocks[k] - bCommit)} ms`).join(', ')}; applied at ` +
        `${traces.map((t, k) => `${t.site} ${f1(bApplied[k] - bCommit)} ms`).join(', ')} (times from the ` +
        `commit)`
    )
    say(`  replicas equal to the origin (count, max id, sum): ${equal ? 'yes' : 'NO'}`)
    if (kept.length) {
      const counts = new Map<string, number>()
      for (const k of kept) counts.set(k, (counts.get(k) ?? 0) + 1)
      say(`  the nodes logged ${kept.length} warnings/errors:`)
      for (const [k, n] of [...counts].slice(0, 8)) say(`    ${n}x ${k}`)
    }

    return {
      meshInProcess: true,
      meshLoadBefore: f2(loadBefore),
      meshLoadAfter: f2(loadAfter),
      meshReadyMs: Math.round(readyMs),
      meshTrickleCommits: commits.length,
      meshTrickleUnits: trickleUnits.length,
      meshTrickleP50Ms: f2(p50),
      meshTrickleP95Ms: f2(p95),
      meshTrickleP99Ms: f2(p99),
      meshTrickleMaxMs: f2(worst),
      meshTrickleP50VsAim: f2(p50 / AIM_P50),
      meshTrickleP99VsAim: f2(p99 / AIM_P99),
      meshAppCommitP50Ms: f2(med(appCommit)),
      meshAppCommitP99Ms: f2(pct(appCommit, 99)),
      meshTrickleP50SiteBMs: f2(med(perSite[0])),
      meshTrickleP50SiteCMs: f2(med(perSite[1])),
      meshTrickleReadStartP50Ms: f2(med(stage.readStart)),
      meshTrickleDurableP50Ms: f2(med(stage.durable)),
      meshTrickleBlockP50Ms: f2(med(stage.block)),
      meshBulkRows: BULK,
      meshBulkRowsPerSec: Math.round(bulkRate),
      meshRawBulkRowsPerSec: Math.round(rawRate),
      meshBulkSlowerThanRaw: f2(rawRate / bulkRate),
      meshBulkCommitToAppliedMs: Math.round(bBoth - bCommit),
      meshReplicasEqual: equal,
      meshNodeWarnings: kept.length
    }
  } finally {
    for (const t of traces) t.reader.close()
    for (const s of sites) await s.node.close().catch(() => {})
    await testnet?.destroy().catch(() => {})
    await writer.close()
    cleanup()
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const json = process.argv.includes('--json')
  const summary = await meshBench({ say: json ? undefined : (s) => process.stdout.write(`${s}\n`) })
  if (json) process.stdout.write(`${JSON.stringify(summary)}\n`)
}
