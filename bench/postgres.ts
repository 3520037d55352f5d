/**
 * The PostgreSQL benchmark: what capture costs the origin, and how soon a replica equals the origin after a
 * burst of writes, side by side with PostgreSQL's own logical replication. Nothing here is asserted.
 *
 * Three scenarios (a fourth, restart, is below), one after the other in the same run on this machine, each on fresh
 * throwaway clusters
 * (test/helpers/pg.ts, `durable`: fsync on; synchronous_commit on), each with the same workload:
 * `pgbench -i -s 10` (1M accounts), a CHECKPOINT on every cluster, then `pgbench -c 4 -j 2 -T <seconds> -n`
 * (the default TPC-B-like script: 3 updates and 1 insert per transaction).
 *   alone      pgbench on one cluster, nothing else running. Anchor for TPS.
 *   native     PostgreSQL's own logical replication: a publication FOR ALL TABLES at the origin, a second
 *              cluster with the pgbench tables (`pgbench -i -I dtp`: tables and primary keys, no rows) and a
 *              subscription (copy_data, initial sync waited for). Anchor for the catch-up time.
 *   branchmesh PostgresCapture at the origin -> log (hypercore) -> hypercore replication -> PostgresApply into
 *              a replica database on a second cluster, all of it in THIS process (test/helpers/pipeline.ts);
 *              the initial copy settled before pgbench starts. Capture and apply use the options `mesh start`
 *              gives them (pollMs 50, default maxChanges and catalog checks): nothing is tuned here.
 *
 * Catch-up, two ways. Exact: the origin's last transaction, from its commit there to its arrival at the replica:
 * the origin's commit timestamp (track_commit_timestamp on every cluster of the three scenarios alike) against
 * the later of the replica's commit timestamp for it and the clock time a row trigger (ENABLE ALWAYS, so native
 * apply workers fire it too; dropped before the comparison) noted as its history row arrived. The trigger is
 * there because a native subscriber records the origin's commit time as its own. One machine, one clock. The aim
 * compares these. Polled: from pgbench's exit (seen by this process) until the replica's state equals the
 * origin's final state, polled every ~20 ms on one open connection with a cheap query: the number of
 * pgbench_history rows, the sum of their deltas, and the sums of the tellers' and branches' balances. Each
 * pgbench transaction is one history row and both replications apply whole transactions in commit order, so an
 * equal history count means the same prefix of transactions; the sums are a cross-check. The full equality is
 * checked once after the timing with pgDump (every table, every row; not timed).
 *
 * What it does not measure: a network between the sites (loopback only), the node's hyperswarm connection
 * (two corestores piped into each other), or the node as its own process (the pipeline shares this process's
 * event loop with the polling). pgbench, both clusters and this process share the machine's cores, for
 * native replication as for branchmesh.
 *
 * restart: the origin's node restarted under pgbench with a 24 MB backlog (as in the trial of issue 14):
 * capture's catch-up rate against steady capture's, in WAL bytes per second (see `restart`).
 *
 * Run alone with `node --import tsx bench/postgres.ts [--json] [--pg-seconds N] [--only restart|main]`; `npm run
 * bench` runs it last.
 */
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { isDeepStrictEqual } from 'node:util'
import { pathToFileURL } from 'node:url'
import pg from 'pg'
import Corestore from 'corestore'
import { PostgresApply, PostgresCapture } from '../adapters/index.ts'
import { CaptureLoop, DatasetLog } from '../node/index.ts'
import { tmpDir } from '../test/helpers/db.ts'
import { pgDump, startCluster, type PgCluster } from '../test/helpers/pg.ts'
import { startSidesPipeline } from '../test/helpers/pipeline.ts'
import { sleep } from './mesh.ts'

export interface PgBenchOptions {
  json: boolean
  /** pgbench -T; default 15, or `--pg-seconds N` from the command line. */
  seconds?: number
  /** Where lines go; default stdout unless json. */
  say?: (line: string) => void
  /** pgbench -s; default 10. */
  scale?: number
  /** The capture loop's longest idle wait; default 50 (what `mesh start` uses). */
  pollMs?: number
  /**
   * Run part of it: 'restart' (`--only restart`), the node restarted under pgbench; 'main' (`--only main`),
   * alone, native and branchmesh without the restart scenario.
   */
  only?: 'restart' | 'main'
}

export type PgBenchSummary = Record<string, number | boolean>

const CLIENTS = 4
const THREADS = 2
const DB = 'bench'
const OVERHEAD_AIM = 1.1
/** Measured on this kind of machine when the issue was written; printed only, the anchor is measured here. */
const NATIVE_CATCHUP_NOTE_MS = 300
const POLL_EVERY_MS = 20

const nowMs = () => Number(process.hrtime.bigint()) / 1e6
const f0 = (x: number) => (Number.isFinite(x) ? String(Math.round(x)) : 'n/a')
const f1 = (x: number) => (Number.isFinite(x) ? x.toFixed(1) : 'n/a')
const f2 = (x: number) => (Number.isFinite(x) ? +x.toFixed(2) : NaN)
const r3 = (x: number) => (Number.isFinite(x) ? +x.toFixed(3) : -1)
const mb = (bytes: number) => (Number.isFinite(bytes) ? (bytes / 1e6).toFixed(1) : 'n/a')
const ratio = (x: number) => (Number.isFinite(x) ? `${x.toFixed(2)}x` : 'n/a')

interface PgbenchRun {
  tps: number
  latencyMs: number
  transactions: number
  failed: number
  startMs: number
  endMs: number
}

/** pgbench in the background (as the postgres user when root); resolves when it exits. */
function pgbench(
  cluster: PgCluster,
  args: string[],
  timeoutMs: number,
  onExit: () => void = () => {}
): Promise<PgbenchRun> {
  return new Promise((resolve, reject) => {
    const isRoot = process.getuid?.() === 0
    const exe = path.join(cluster.bin, 'pgbench')
    const [cmd, argv] = isRoot ? ['runuser', ['-u', 'postgres', '--', exe, ...args]] : [exe, args]
    const startMs = nowMs()
    const p = spawn(cmd, argv, {
      env: { ...process.env, LC_ALL: 'C', PGHOST: '127.0.0.1', PGPORT: String(cluster.port), PGUSER: 'postgres' }
    })
    let out = ''
    p.stdout.on('data', (d) => (out += d))
    p.stderr.on('data', (d) => (out += d))
    const timer = setTimeout(() => p.kill('SIGKILL'), timeoutMs)
    p.on('error', reject)
    p.on('exit', (code) => {
      const endMs = nowMs()
      onExit()
      clearTimeout(timer)
      if (code !== 0) return reject(new Error(`pgbench ${args.join(' ')} failed (${code}):\n${out}`))
      const num = (re: RegExp) => {
        const m = re.exec(out)
        return m ? Number(m[1]) : NaN
      }
      resolve({
        tps: num(/^tps = ([\d.]+)/m),
        latencyMs: num(/^latency average = ([\d.]+) ms/m),
        transactions: num(/^number of transactions actually processed: (\d+)/m),
        failed: num(/^number of failed transactions: (\d+)/m),
        startMs,
        endMs
      })
    })
  })
}

const STATE_SQL = `SELECT (SELECT count(*) FROM pgbench_history) AS h, 
  (SELECT coalesce(sum(delta), 0) FROM pgbench_history) AS hs,
  (SELECT sum(tbalance) FROM pgbench_tellers) AS t, (SELECT sum(bbalance) FROM pgbench_branches) AS b`

interface State {
  history: number
  key: string
}

async function stateOf(client: pg.Client): Promise<State> {
  const r = await client.query(STATE_SQL)
  const s = r.rows[0]
  return { history: Number(s.h), key: `${s.h}/${s.hs}/${s.t}/${s.b}` }
}

async function connectTo(url: string): Promise<pg.Client> {
  const c = new pg.Client({ connectionString: url })
  await c.connect()
  return c
}

interface CatchUp {
  /** pgbench's exit -> the replica's state seen equal (NaN: not within the timeout). */
  ms: number
  /** pgbench's exit -> the first poll's answer: the resolution of `ms` when the replica was equal at once. */
  firstPollMs: number
  /** Transactions the replica lacked at pgbench's exit (the first poll). */
  behind: number
  polls: number
  /**
   * The last transaction's own lag, from commit timestamps (track_commit_timestamp on both clusters, one
   * machine's clock): its commit at the origin -> the commit that brought it to the replica. Exact, where the
   * poll has its ~20 ms resolution. NaN: not caught up.
   */
  commitLagMs: number
}

/**
 * Polls the replica until its state equals the origin's, from `fromMs` (pgbench's exit). The origin's final
 * state and the first poll are asked at once, both on connections opened before the run, so `behind` is
 * the backlog at the end of the run.
 */
async function catchUp(origin: pg.Client, replica: pg.Client, fromMs: number, timeoutMs: number): Promise<CatchUp> {
  const [target, first] = await Promise.all([stateOf(origin), stateOf(replica)])
  let t = nowMs()
  const firstPollMs = t - fromMs
  const behind = target.history - first.history
  let s = first
  let polls = 1
  const until = t + timeoutMs
  while (s.key !== target.key) {
    if (t > until) return { ms: NaN, firstPollMs, behind, polls, commitLagMs: NaN }
    await sleep(POLL_EVERY_MS)
    s = await stateOf(replica)
    t = nowMs()
    polls++
  }
  const [at, to, seen] = await Promise.all([lastCommitMs(origin), lastCommitMs(replica), seenMs(replica)])
  // A replica that applies as a replication origin (native subscriptions) records the origin's commit time, not
  // its own; there the trigger's clock says when the row came (its transaction commits right after it).
  return { ms: t - fromMs, firstPollMs, behind, polls, commitLagMs: Math.max(to, seen) - at }
}

/**
 * When the newest pgbench_history row was committed (ms since the epoch, to the microsecond). Each pgbench
 * transaction inserts one history row, and both replications apply whole transactions in commit order, so at the
 * origin this is its last transaction's commit.
 */
async function lastCommitMs(client: pg.Client): Promise<number> {
  const r = await client.query(
    'SELECT extract(epoch FROM max(pg_xact_commit_timestamp(xmin))) * 1000 AS ms FROM pgbench_history'
  )
  return Number(r.rows[0].ms)
}

/**
 * At a replica: a row trigger (ENABLE ALWAYS: it fires for native apply workers too) keeps the clock time of
 * the newest pgbench_history row's arrival, for both replications alike. Removed by unwatch() before pgDump.
 */
async function watchArrivals(replica: pg.Client): Promise<void> {
  await replica.query(`CREATE TABLE bench_seen (at timestamptz); INSERT INTO bench_seen VALUES (NULL);
    CREATE FUNCTION bench_seen() RETURNS trigger LANGUAGE plpgsql AS
      $$ BEGIN UPDATE public.bench_seen SET at = clock_timestamp(); RETURN NULL; END $$;
    CREATE TRIGGER bench_seen AFTER INSERT ON pgbench_history FOR EACH ROW EXECUTE FUNCTION bench_seen();
    ALTER TABLE pgbench_history ENABLE ALWAYS TRIGGER bench_seen`)
}

async function unwatchArrivals(replica: pg.Client): Promise<void> {
  await replica.query(`DROP TRIGGER bench_seen ON pgbench_history; DROP FUNCTION bench_seen(); DROP TABLE bench_seen`)
}

async function seenMs(replica: pg.Client): Promise<number> {
  const r = await replica.query('SELECT extract(epoch FROM at) * 1000 AS ms FROM bench_seen')
  return Number(r.rows[0].ms)
}

/** Every cluster of the measured scenarios: commit timestamps for the catch-up's exact figure (in all three, alike). */
const CLUSTER = { durable: true, conf: ['track_commit_timestamp = on'] }

/** Equal pgDumps; else the tables that differ. */
async function compare(
  originUrl: string,
  replicaUrl: string
): Promise<{ equal: boolean; differ: string[]; rows: number }> {
  const a = await pgDump(originUrl)
  const b = await pgDump(replicaUrl)
  const names = [...new Set([...Object.keys(a), ...Object.keys(b)])].sort()
  const differ = names.filter((n) => !isDeepStrictEqual(a[n], b[n]))
  const rows = Object.values(a).reduce((s, t) => s + t.rows.length, 0)
  return { equal: differ.length === 0, differ, rows }
}

async function untilAsync(cond: () => Promise<boolean>, timeoutMs: number, what: string, everyMs = 100): Promise<void> {
  const until = Date.now() + timeoutMs
  while (!(await cond())) {
    if (Date.now() > until) throw new Error(`bench: timed out after ${timeoutMs} ms waiting for ${what}`)
    await sleep(everyMs)
  }
}

/** CPU time (ms) used so far by these processes, from /proc (Linux); NaN where it cannot be read. */
function procCpuMs(pids: number[]): number {
  let ms = 0
  for (const pid of pids) {
    try {
      const st = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
      const f = st.slice(st.lastIndexOf(')') + 2).split(' ')
      ms += ((Number(f[11]) + Number(f[12])) * 1000) / 100 // utime + stime, in USER_HZ (100 on Linux)
    } catch {
      return NaN
    }
  }
  return ms
}

/** The machine's CPU counters: busy and total, all cores (/proc/stat). */
function machineCpu(): { busy: number; total: number } {
  try {
    const v = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1, 9).map(Number)
    const total = v.reduce((a, b) => a + b, 0)
    return { busy: total - v[3] - v[4], total }
  } catch {
    return { busy: NaN, total: NaN }
  }
}

interface Cpu {
  /** Share of all the machine's cores busy during the run (0..1). */
  machineBusy: number
  /** CPU ms of the replication's own processes during the run: at the origin, at the replica, and this process. */
  originMs: number
  replicaMs: number
  selfMs: number
}

/** Starts counting; the returned function stops and reports. */
function cpuWatch(originPids: number[] = [], replicaPids: number[] = []): () => Cpu {
  const o0 = procCpuMs(originPids)
  const r0 = procCpuMs(replicaPids)
  const s0 = process.cpuUsage()
  const m0 = machineCpu()
  return () => {
    const m1 = machineCpu()
    const s1 = process.cpuUsage(s0)
    return {
      machineBusy: (m1.busy - m0.busy) / (m1.total - m0.total),
      originMs: originPids.length ? procCpuMs(originPids) - o0 : NaN,
      replicaMs: replicaPids.length ? procCpuMs(replicaPids) - r0 : NaN,
      selfMs: (s1.user + s1.system) / 1000
    }
  }
}

/**
 * With BENCH_PG_PROFILE=FILE, a CPU profile of this process (V8's sampling profiler, node:inspector) while
 * pgbench runs with branchmesh, written to FILE (open it in Chrome's DevTools): where capture, the log and apply
 * spend their CPU. Nothing otherwise.
 */
async function profileThisProcess(): Promise<{ stop(): Promise<void> }> {
  const file = process.env.BENCH_PG_PROFILE
  if (!file) return { stop: async () => {} }
  const { Session } = await import('node:inspector/promises')
  const session = new Session()
  session.connect()
  await session.post('Profiler.enable')
  await session.post('Profiler.start')
  return {
    async stop() {
      const { profile } = await session.post('Profiler.stop')
      fs.writeFileSync(file, JSON.stringify(profile))
      session.disconnect()
    }
  }
}

/** BENCH_PG_GATHER_MS: capture's gatherMs for a trial (default: capture's own, what `mesh start` uses). */
const GATHER_MS = process.env.BENCH_PG_GATHER_MS ? Number(process.env.BENCH_PG_GATHER_MS) : undefined

const walLsn = async (c: PgCluster) =>
  (await c.query('SELECT pg_current_wal_lsn()::text AS lsn', [], DB))[0].lsn as string
const walSince = async (c: PgCluster, lsn: string) =>
  Number((await c.query('SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1) AS n', [lsn], DB))[0].n)

/** Runs pgbench, counting CPU from its start to its exit. */
async function measuredRun(
  c: PgCluster,
  seconds: number,
  originPids: number[] = [],
  replicaPids: number[] = []
): Promise<{ run: PgbenchRun; cpu: Cpu }> {
  let cpu: Cpu | null = null
  const stop = cpuWatch(originPids, replicaPids)
  const run = await pgbench(c, pgbenchArgs(seconds), seconds * 1000 + 120_000, () => (cpu = stop()))
  return { run, cpu: cpu! }
}

const pidsOf = async (c: pg.Client, sql: string) => (await c.query(sql)).rows.map((r) => Number(r.pid))
/** Every client backend but the asking one: the replication's connections when only they and we are connected. */
const OTHER_BACKENDS =
  `SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND ` +
  `datname IS NOT NULL`

interface Scenario {
  run: PgbenchRun
  catchUp?: CatchUp
  equal?: boolean
  differ?: string[]
  setupMs: number
  cpu: Cpu
  /** WAL written at the origin during the run. */
  walBytes: number
}

interface BranchmeshDetail {
  copyMs: number
  /** Stage times during the run and the catch-up (from the end of the initial copy until caught up). */
  readMs: number
  reads: number
  emptyReads: number
  appendMs: number
  ackMs: number
  applyMs: number
  units: number
  rows: number
  /** Rows carried (net per key, after folding) and units, before and after pgbench's end. */
  rowsDuring: number
  rowsAfter: number
  unitsAfter: number
  /** The last unit holding rows, ms after pgbench's exit: appended at the origin, acknowledged, replicated, applied. */
  lastAppendedMs: number
  lastCapturedMs: number
  lastReplicatedMs: number
  lastAppliedMs: number
  captureErrors: string[]
  applyErrors: string[]
  /** Mean, while pgbench ran, of how far the slot's restart_lsn and confirmed_flush_lsn trailed the WAL's end. */
  slotRestartLagBytes: number
  slotConfirmedLagBytes: number
}

function pgbenchArgs(seconds: number): string[] {
  return ['-c', String(CLIENTS), '-j', String(THREADS), '-T', String(seconds), '-n', DB]
}

function initOrigin(c: PgCluster, scale: number): void {
  c.run('pgbench', ['-i', '-s', String(scale), '-q', DB], { timeoutMs: 900_000 })
}

async function alone(clusters: PgCluster[], seconds: number, scale: number): Promise<Scenario> {
  const t = nowMs()
  const c = await startCluster(CLUSTER)
  clusters.push(c)
  try {
    await c.createDatabase(DB)
    initOrigin(c, scale)
    await c.query('CHECKPOINT')
    const setupMs = nowMs() - t
    const lsn = await walLsn(c)
    const { run, cpu } = await measuredRun(c, seconds)
    return { run, setupMs, cpu, walBytes: await walSince(c, lsn) }
  } finally {
    await c.stop()
  }
}

async function native(clusters: PgCluster[], seconds: number, scale: number): Promise<Scenario> {
  const t = nowMs()
  const origin = await startCluster(CLUSTER)
  clusters.push(origin)
  const sub = await startCluster(CLUSTER)
  clusters.push(sub)
  let poller: pg.Client | null = null
  let o: pg.Client | null = null
  try {
    await origin.createDatabase(DB)
    initOrigin(origin, scale)
    await origin.query('CREATE PUBLICATION bench_pub FOR ALL TABLES', [], DB)
    await sub.createDatabase(DB)
    // The same tables and primary keys (the subscriber finds the rows of updates by them), no rows.
    sub.run('pgbench', ['-i', '-s', String(scale), '-q', '-I', 'dtp', DB])
    await sub.query(
      `CREATE SUBSCRIPTION bench_sub CONNECTION 'host=127.0.0.1 port=${origin.port} dbname=${DB} ` +
        `user=postgres' PUBLICATION bench_pub`,
      [],
      DB
    )
    await untilAsync(
      async () => {
        const r = await sub.query(
          `SELECT count(*) AS n, count(*) FILTER (WHERE srsubstate <> 'r') AS pending FROM pg_subscription_rel`,
          [],
          DB
        )
        return Number(r[0].n) === 4 && Number(r[0].pending) === 0
      },
      600_000,
      'the subscription to copy the 4 pgbench tables'
    )
    o = await connectTo(origin.url(DB))
    poller = await connectTo(sub.url(DB))
    const before = await stateOf(o)
    const p = poller
    await untilAsync(
      async () => (await stateOf(p)).key === before.key,
      120_000,
      'the subscriber to equal the origin before the run'
    )
    await origin.query('CHECKPOINT')
    await sub.query('CHECKPOINT')
    const setupMs = nowMs() - t

    // Native replication's own processes: the walsender at the origin (decodes the WAL), the apply worker.
    const walsenders = await pidsOf(o, 'SELECT pid FROM pg_stat_replication')
    const workers = await pidsOf(poller, 'SELECT pid FROM pg_stat_subscription WHERE pid IS NOT NULL')
    await watchArrivals(poller)
    const lsn = await walLsn(origin)
    const { run, cpu } = await measuredRun(origin, seconds, walsenders, workers)
    const cu = await catchUp(o, poller, run.endMs, Math.max(300_000, seconds * 20_000))
    await unwatchArrivals(poller)
    const walBytes = await walSince(origin, lsn)
    const cmp = await compare(origin.url(DB), sub.url(DB))
    return { run, catchUp: cu, equal: cmp.equal, differ: cmp.differ, setupMs, cpu, walBytes }
  } finally {
    await poller?.end().catch(() => {})
    await o?.end().catch(() => {})
    await sub.stop()
    await origin.stop()
  }
}

async function branchmesh(
  clusters: PgCluster[],
  seconds: number,
  scale: number,
  pollMs: number
): Promise<Scenario & { detail: BranchmeshDetail }> {
  const t = nowMs()
  const origin = await startCluster(CLUSTER)
  clusters.push(origin)
  const rep = await startCluster(CLUSTER)
  clusters.push(rep)
  const { dir, cleanup } = tmpDir('mesh-pgbench-')
  let poller: pg.Client | null = null
  let o: pg.Client | null = null
  let pipe: Awaited<ReturnType<typeof startSidesPipeline<PostgresApply>>> | null = null
  try {
    await origin.createDatabase(DB)
    initOrigin(origin, scale)
    const replicaUrl = await rep.createDatabase('replica')
    const capture = new PostgresCapture({
      url: origin.url(DB),
      slot: 'branchmesh_bench',
      publication: 'branchmesh_bench',
      ...(GATHER_MS !== undefined ? { gatherMs: GATHER_MS } : {})
    })
    const apply = new PostgresApply({ url: replicaUrl, dataset: 'ds1' })
    const c0 = nowMs()
    const p = (pipe = await startSidesPipeline(dir, capture, apply, { pollMs }))
    await p.settle()
    const copyMs = nowMs() - c0
    o = await connectTo(origin.url(DB))
    poller = await connectTo(replicaUrl)
    const before = await stateOf(o)
    const pl = poller
    await untilAsync(
      async () => (await stateOf(pl)).key === before.key,
      120_000,
      'the replica to equal the origin after the initial copy'
    )
    await origin.query('CHECKPOINT')
    await rep.query('CHECKPOINT')

    // Instrumentation only: each stage is wrapped with a timer; what it does is unchanged. Capture steps run
    // one at a time (read, append, fsync, acknowledge, 'unit').
    const d: BranchmeshDetail = {
      copyMs,
      readMs: 0,
      reads: 0,
      emptyReads: 0,
      appendMs: 0,
      ackMs: 0,
      applyMs: 0,
      units: 0,
      rows: 0,
      rowsDuring: 0,
      rowsAfter: 0,
      unitsAfter: 0,
      lastAppendedMs: NaN,
      lastCapturedMs: NaN,
      lastReplicatedMs: NaN,
      lastAppliedMs: NaN,
      captureErrors: [],
      applyErrors: [],
      slotRestartLagBytes: NaN,
      slotConfirmedLagBytes: NaN
    }
    // The capture loop reads with readStream where the side has it (read() only inside it, for whole batches).
    const readStream = capture.readStream.bind(capture)
    capture.readStream = async (budget) => {
      const s = nowMs()
      const st = await readStream(budget)
      d.readMs += nowMs() - s
      d.reads++
      if (st === null) d.emptyReads++
      return st
    }
    const ack = capture.ack.bind(capture)
    capture.ack = async (source) => {
      const s = nowMs()
      await ack(source)
      d.ackMs += nowMs() - s
    }
    const log = p.originLog
    const appendUnit = log.appendUnit.bind(log)
    log.appendUnit = async (entries) => {
      const s = nowMs()
      const n = await appendUnit(entries)
      d.appendMs += nowMs() - s
      return n
    }
    const applyUnit = apply.apply.bind(apply)
    apply.apply = async (unit, position) => {
      const s = nowMs()
      await applyUnit(unit, position)
      d.applyMs += nowMs() - s
    }
    const units: Array<{ length: number; rows: number; t: number }> = []
    const appended: Array<{ length: number; t: number }> = []
    const replicated: Array<{ length: number; t: number }> = []
    const applied: Array<{ length: number; t: number }> = []
    p.capture.on('unit', (e: { length: number; rows: number }) =>
      units.push({ length: e.length, rows: e.rows, t: nowMs() })
    )
    p.capture.on('capture-error', (e: Error) => d.captureErrors.push(e.message))
    p.apply.on('apply-error', (e: Error) => d.applyErrors.push(e.message))
    p.apply.on('applied', (e: { length: number }) => applied.push({ length: e.length, t: nowMs() }))
    log.core.on('append', () => appended.push({ length: log.length, t: nowMs() }))
    p.replicaLog.core.on('append', () => replicated.push({ length: p.replicaLog.length, t: nowMs() }))
    const setupMs = nowMs() - t

    // Capture at the origin: the walsender that streams the slot (decoding runs there) and capture's SQL
    // connection; the apply's connection at the replica.
    const captureBackends = [
      ...(await pidsOf(o, 'SELECT pid FROM pg_stat_replication')),
      ...(await pidsOf(o, OTHER_BACKENDS))
    ]
    const applyBackends = await pidsOf(poller, OTHER_BACKENDS)
    await watchArrivals(poller)
    // The slot while pgbench runs: how far restart_lsn and confirmed_flush_lsn trail the WAL's end (what a
    // restart of the stream would decode again, and what the log does not hold yet).
    const sampler = await connectTo(origin.url(DB))
    let sampling = true
    const lags: Array<{ restart: number; confirmed: number }> = []
    const sampled = (async () => {
      while (sampling) {
        const r = await sampler.query(
          `SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8 AS restart,
                  pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::int8 AS confirmed
             FROM pg_replication_slots WHERE slot_name = 'branchmesh_bench'`
        )
        if (r.rows[0]) lags.push({ restart: Number(r.rows[0].restart), confirmed: Number(r.rows[0].confirmed) })
        await sleep(250)
      }
    })()
    const lsn = await walLsn(origin)
    const profile = await profileThisProcess()
    const { run, cpu } = await measuredRun(origin, seconds, captureBackends, applyBackends)
    await profile.stop()
    sampling = false
    const cu = await catchUp(o, poller, run.endMs, Math.max(300_000, seconds * 20_000))
    await unwatchArrivals(poller)
    await sampled.catch(() => {})
    await sampler.end().catch(() => {})
    const walBytes = await walSince(origin, lsn)
    const mean = (xs: number[]) => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : NaN)
    d.slotRestartLagBytes = mean(lags.map((x) => x.restart))
    d.slotConfirmedLagBytes = mean(lags.map((x) => x.confirmed))
    // Let the capture loop report the unit the replica may have applied before its acknowledgement returned.
    await sleep(200)
    const withRows = units.filter((u) => u.rows > 0)
    const last = withRows[withRows.length - 1]
    const firstAt = (xs: Array<{ length: number; t: number }>, length: number) =>
      xs.find((x) => x.length >= length)?.t ?? NaN
    if (last) {
      d.lastAppendedMs = firstAt(appended, last.length) - run.endMs
      d.lastCapturedMs = last.t - run.endMs
      d.lastReplicatedMs = firstAt(replicated, last.length) - run.endMs
      d.lastAppliedMs = firstAt(applied, last.length) - run.endMs
    }
    d.units = withRows.length
    d.rows = withRows.reduce((s, u) => s + u.rows, 0)
    d.rowsDuring = withRows.filter((u) => u.t <= run.endMs).reduce((s, u) => s + u.rows, 0)
    const after = withRows.filter((u) => u.t > run.endMs)
    d.rowsAfter = after.reduce((s, u) => s + u.rows, 0)
    d.unitsAfter = after.length
    await p.close()
    pipe = null
    const cmp = await compare(origin.url(DB), replicaUrl)
    return { run, catchUp: cu, equal: cmp.equal, differ: cmp.differ, setupMs, cpu, walBytes, detail: d }
  } finally {
    await poller?.end().catch(() => {})
    await o?.end().catch(() => {})
    await pipe?.close().catch(() => {})
    await rep.stop()
    await origin.stop()
    cleanup()
  }
}

interface Restart {
  /** Steady capture: pgbench with capture running; WAL from its start until the log held its last transaction. */
  steadyBytes: number
  steadyMs: number
  steadyTps: number
  /** The backlog: WAL written while capture was stopped, from the slot's confirmed position to the marker. */
  backlogBytes: number
  /** A new capture (open, resume, stream) until the log holds the marker, with pgbench still running. */
  catchUpMs: number
  /** pgbench's WAL rate meanwhile (bytes/s): what the drain had to outrun besides the backlog. */
  loadBytesPerSec: number
  /** The first unit appended after the new capture started, ms. */
  firstUnitMs: number
  units: number
  rows: number
  /** The capture side's own lag() while it drained: the largest seen. */
  lagMaxBytes: number
  lagMaxSeconds: number
  lagSamples: number
}

/** The backlog the trial saw after a node restart under pgbench (20-26 MB of WAL). */
const RESTART_BACKLOG_BYTES = 24_000_000

/** pgbench running until stop() (SIGINT), as the postgres user when root; its result is not read. */
function pgbenchUntilStopped(cluster: PgCluster): { stop(): Promise<void> } {
  const isRoot = process.getuid?.() === 0
  const exe = path.join(cluster.bin, 'pgbench')
  const args = ['-c', String(CLIENTS), '-j', String(THREADS), '-T', '3600', '-n', DB]
  const [cmd, argv] = isRoot ? ['runuser', ['-u', 'postgres', '--', exe, ...args]] : [exe, args]
  const env = { ...process.env, LC_ALL: 'C', PGHOST: '127.0.0.1', PGPORT: String(cluster.port), PGUSER: 'postgres' }
  const p = spawn(cmd, argv, { env, stdio: 'ignore' })
  const exited = new Promise<void>((resolve) => p.on('exit', () => resolve()))
  return {
    async stop() {
      p.kill('SIGINT')
      const t = setTimeout(() => p.kill('SIGKILL'), 10_000)
      await exited
      clearTimeout(t)
    }
  }
}

/**
 * The origin's node restarted under pgbench, as in the trial: capture (PostgresCapture, CaptureLoop and a log
 * in a corestore, as `mesh start` sets them up; no replication, no apply) first runs alongside pgbench for the
 * run's length (steady capture); then, with pgbench running on, capture stops until the slot is
 * RESTART_BACKLOG_BYTES behind, and a new capture starts and drains it while pgbench goes on writing. Each
 * figure is WAL bytes per second: steady, from pgbench's start until the log holds its last transaction;
 * catch-up, the backlog (the slot's confirmed position to a marker row committed when the new capture is
 * created) over the time until the log holds the marker. "The log holds" is the slot's confirmed_flush_lsn,
 * which only capture's acknowledge moves. Catch-up must outrun steady capture, or a restart never catches up.
 */
async function restart(clusters: PgCluster[], seconds: number, scale: number, pollMs: number): Promise<Restart> {
  const origin = await startCluster({ durable: true })
  clusters.push(origin)
  const { dir, cleanup } = tmpDir('mesh-pgrestart-')
  const storeDir = path.join(dir, 'store')
  const store = new Corestore(storeDir)
  let log: DatasetLog | null = null
  let o: pg.Client | null = null
  let side = null as PostgresCapture | null
  let loop = null as CaptureLoop | null
  let load: { stop(): Promise<void> } | null = null
  const slot = 'branchmesh_bench'
  const header = {
    ...{ dataset: 'ds1', name: 'shop', engine: 'postgres', epoch: 0 },
    ...{ site: 'a', createdAt: Date.now(), parent: null }
  }
  const begin = async () => {
    side = new PostgresCapture({ url: origin.url(DB), slot, publication: slot })
    loop = new CaptureLoop({ capture: side, log: log!, header, pollMs })
    await loop.start()
    return loop
  }
  const end = async () => {
    await loop?.stop()
    await side?.close()
    loop = side = null
  }
  try {
    await origin.createDatabase(DB)
    initOrigin(origin, scale)
    log = await DatasetLog.writable(store, storeDir, 'ds1', 0)
    o = await connectTo(origin.url(DB))
    const c = o
    const lsnNow = async () => (await c.query('SELECT pg_current_wal_lsn()::text AS l')).rows[0].l as string
    const diff = async (x: string, y: string) =>
      Number((await c.query('SELECT pg_wal_lsn_diff($1, $2) AS n', [x, y])).rows[0].n)
    const slotSql = 'SELECT confirmed_flush_lsn::text AS l FROM pg_replication_slots WHERE slot_name = $1'
    const confirmedLsn = async () => (await c.query(slotSql, [slot])).rows[0].l as string
    // A marker committed after everything before it, and when the slot's confirmed position passes it.
    const mark = async () => {
      const at = await lsnNow()
      await c.query(`INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, 1, 0, now())`)
      return at
    }
    const held = async (at: string, timeoutMs: number) => {
      const sql = 'SELECT confirmed_flush_lsn > $1::pg_lsn AS ok FROM pg_replication_slots WHERE slot_name = $2'
      const ok = async () => (await c.query(sql, [at, slot])).rows[0]?.ok === true
      await untilAsync(ok, timeoutMs, 'the log to hold the marker', POLL_EVERY_MS)
      return nowMs()
    }
    await begin()
    await held(await mark(), 600_000)
    await origin.query('CHECKPOINT')

    // Steady capture.
    const l0 = await lsnNow()
    const t0 = nowMs()
    const steady = await pgbench(origin, pgbenchArgs(seconds), seconds * 1000 + 120_000)
    const m0 = await mark()
    const h0 = await held(m0, 600_000)
    const steadyBytes = await diff(m0, l0)

    // Under pgbench, the node stops until the backlog is as large as the trial's, then starts again.
    load = pgbenchUntilStopped(origin)
    await end()
    const backlogged = async () => (await diff(await lsnNow(), await confirmedLsn())) >= RESTART_BACKLOG_BYTES
    await untilAsync(backlogged, 600_000, 'the backlog', 250)
    const confirmed = await confirmedLsn()
    const units: number[] = []
    let rows = 0
    const lag = { maxBytes: 0, maxSeconds: 0, samples: 0 }
    const t1 = nowMs()
    const m1 = await mark()
    const l = await begin()
    l.on('unit', (e: { rows: number }) => {
      units.push(nowMs() - t1)
      rows += e.rows
    })
    let sampling = true
    const sampled = (async () => {
      while (sampling) {
        const x = side ? await side.lag().catch(() => null) : null
        if (x) {
          lag.samples++
          lag.maxBytes = Math.max(lag.maxBytes, x.bytes)
          lag.maxSeconds = Math.max(lag.maxSeconds, x.seconds)
        }
        await sleep(250)
      }
    })()
    const h1 = await held(m1, 900_000)
    const l1 = await lsnNow()
    sampling = false
    await sampled
    await load.stop()
    load = null
    const backlogBytes = await diff(m1, confirmed)
    await held(await mark(), 600_000)
    await end()
    return {
      steadyBytes,
      steadyMs: h0 - t0,
      steadyTps: steady.tps,
      backlogBytes,
      catchUpMs: h1 - t1,
      loadBytesPerSec: (await diff(l1, m1)) / ((h1 - t1) / 1000),
      firstUnitMs: units[0] ?? NaN,
      units: units.length,
      rows,
      lagMaxBytes: lag.maxBytes,
      lagMaxSeconds: lag.maxSeconds,
      lagSamples: lag.samples
    }
  } finally {
    await load?.stop().catch(() => {})
    await end().catch(() => {})
    await o?.end().catch(() => {})
    await log?.close().catch(() => {})
    await store.close().catch(() => {})
    await origin.stop()
    cleanup()
  }
}

/** Prints the restart scenario; returns its summary fields. */
function sayRestart(r: Restart, say: (s: string) => void): PgBenchSummary {
  const steadyRate = r.steadyBytes / (r.steadyMs / 1000)
  const catchRate = r.backlogBytes / (r.catchUpMs / 1000)
  const vs = catchRate / steadyRate
  const met = vs >= 1 ? 'met' : 'NOT MET'
  say('')
  say("  the origin's node restarted under pgbench (capture and the log only; pgbench runs on through the restart):")
  say(
    `    steady capture: ${mb(r.steadyBytes)} MB of WAL held by the log ${f0(r.steadyMs)} ms after pgbench began ` +
      `(${f0(r.steadyTps)} TPS): ${mb(steadyRate)} MB/s (anchor)`
  )
  say(
    `    catch-up: ${mb(r.backlogBytes)} MB of WAL behind the slot held ${f0(r.catchUpMs)} ms after the new capture ` +
      `was created, while pgbench wrote ${mb(r.loadBytesPerSec)} MB/s more: ${mb(catchRate)} MB/s, ` +
      `${ratio(vs)} steady  aim >= 1x: ${met}`
  )
  say(
    `    ${r.units} units, ${r.rows} row changes (net per key); first unit after ${f0(r.firstUnitMs)} ms; ` +
      `capture lag() while draining: up to ${mb(r.lagMaxBytes)} MB, ${f1(r.lagMaxSeconds)} s (${r.lagSamples} samples)`
  )
  return {
    pgRestartSteadyBytesPerSec: Math.round(steadyRate),
    pgRestartBacklogBytes: r.backlogBytes,
    pgRestartCatchUpMs: Math.round(r.catchUpMs),
    pgRestartCatchUpBytesPerSec: Math.round(catchRate),
    pgRestartCatchUpVsSteady: r3(vs),
    pgRestartCatchUpAimMet: vs >= 1,
    pgRestartLagMaxBytes: r.lagMaxBytes
  }
}

function argSeconds(): number | undefined {
  const i = process.argv.indexOf('--pg-seconds')
  if (i < 0) return undefined
  const n = Number(process.argv[i + 1])
  if (!Number.isFinite(n) || n <= 0)
    throw new Error(`bench: --pg-seconds takes a number of seconds, not ${process.argv[i + 1]}. Try: --pg-seconds 5`)
  return n
}

export async function pgBench(opts: PgBenchOptions): Promise<PgBenchSummary> {
  const say = opts.say ?? (opts.json ? () => {} : (s: string) => process.stdout.write(`${s}\n`))
  const seconds = opts.seconds ?? argSeconds() ?? 15
  const scale = opts.scale ?? 10
  const pollMs = opts.pollMs ?? 50
  const loadBefore = os.loadavg()[0]
  const started = nowMs()
  const clusters: PgCluster[] = []
  try {
    if (opts.only === 'restart') {
      say(`postgres: pgbench at the origin, scale ${scale}, ${CLIENTS} clients, ${THREADS} threads, ${seconds} s`)
      return sayRestart(await restart(clusters, seconds, scale, pollMs), say)
    }
    const a = await alone(clusters, seconds, scale)
    const n = await native(clusters, seconds, scale)
    const b = await branchmesh(clusters, seconds, scale, pollMs)
    const totalS = (nowMs() - started) / 1000
    const d = b.detail

    const tpsA = a.run.tps
    const ovN = tpsA / n.run.tps
    const ovB = tpsA / b.run.tps
    // The aim compares the exact figures (commit timestamps); the polled ones are printed beside them.
    const cuN = n.catchUp!.commitLagMs
    const cuB = b.catchUp!.commitLagMs
    const cuRatio = cuB / cuN
    const runS = (b.run.endMs - b.run.startMs) / 1000
    const applyRate = d.rows / (d.applyMs / 1000)

    say('')
    say(
      `postgres: pgbench at the origin, scale ${scale} (${scale * 100_000} accounts), ${CLIENTS} ` +
        `clients, ${THREADS} threads, ${seconds} s, PostgreSQL's default script; fsync on`
    )
    say(
      "  anchors: pgbench alone (TPS); PostgreSQL's own publication/subscription between two clusters (catch-up time)"
    )
    say(
      `  each scenario on fresh clusters, one after the other in this run; machine: ${os.cpus().length} ` +
        `cores, load average (1 min) ${loadBefore.toFixed(2)} before, ${os.loadavg()[0].toFixed(2)} after`
    )
    say(
      `  catch-up: the last transaction's lag by commit timestamps; and pgbench's exit -> the replica's state ` +
        `equals the origin's (history count, sums of deltas and balances), polled every ~${POLL_EVERY_MS} ms; ` +
        `full equality checked after with pgDump`
    )
    say(
      `  branchmesh: capture -> log -> hypercore replication -> apply into a second cluster, in this ` +
        `process; capture pollMs ${pollMs} (as \`mesh start\`)`
    )
    say('')
    say(
      `  ${''.padEnd(44)} ${'TPS'.padStart(8)} ${'vs alone'.padStart(9)} ${'overhead'.padStart(9)} ` +
        `${'latency ms'.padStart(11)} ${'transactions'.padStart(13)}`
    )
    const row = (name: string, r: PgbenchRun, extra = '') =>
      say(
        `  ${name.padEnd(44)} ${f0(r.tps).padStart(8)} ${ratio(r.tps / tpsA).padStart(9)} ` +
          `${ratio(tpsA / r.tps).padStart(9)} ${f1(r.latencyMs).padStart(11)} ` +
          `${String(r.transactions).padStart(13)}${extra}`
      )
    row('pgbench alone (anchor)', a.run)
    row('with native publication/subscription', n.run)
    row(
      'with branchmesh capture (+ replication, apply)',
      b.run,
      `  aim <= native's ${ratio(ovN)}: ${ovB <= ovN ? 'met' : 'NOT MET'} (round 1's aim, ${OVERHEAD_AIM}x: ` +
        `${ovB <= OVERHEAD_AIM ? 'met' : 'not met'})`
    )
    say('  overhead = TPS alone / TPS with; vs alone = TPS with / TPS alone')
    say('')
    say(
      `  ${''.padEnd(44)} ${'last tx lag ms'.padStart(14)} ${'vs native'.padStart(10)} ` +
        `${'polled ms'.padStart(10)} ${'behind at end (tx)'.padStart(19)} ${'first poll ms'.padStart(14)} ` +
        `${'polls'.padStart(6)} ${'equal (pgDump)'.padStart(15)}`
    )
    const cuRow = (name: string, s: Scenario, vs: string, extra = '') =>
      say(
        `  ${name.padEnd(44)} ${f1(s.catchUp!.commitLagMs).padStart(14)} ${vs.padStart(10)} ` +
          `${f1(s.catchUp!.ms).padStart(10)} ${f0(s.catchUp!.behind).padStart(19)} ` +
          `${f1(s.catchUp!.firstPollMs).padStart(14)} ${String(s.catchUp!.polls).padStart(6)} ` +
          `${String(s.equal).padStart(15)}${extra}`
      )
    cuRow('native logical replication (anchor)', n, '1.00x')
    cuRow('branchmesh', b, ratio(cuRatio), `  aim <= 1x native: ${cuRatio <= 1 ? 'met' : 'NOT MET'}`)
    say(
      `  last tx lag: the origin's last transaction, from its commit there to the commit that brought it to the ` +
        `replica (commit timestamps, track_commit_timestamp on every cluster); polled: pgbench's exit (seen ` +
        `by this process) -> the poll that saw the replica equal; behind at end: transactions the replica ` +
        `lacked at the first poll`
    )
    say(
      `  (the issue measured native at about ${NATIVE_CATCHUP_NOTE_MS} ms after a 15 s, 4-client run; ` +
        `here ${f1(cuN)} ms: ${ratio(cuN / NATIVE_CATCHUP_NOTE_MS)} that)`
    )
    for (const [name, s] of [
      ['native', n],
      ['branchmesh', b]
    ] as const) {
      if (!s.equal) say(`  ${name}: the replica does NOT equal the origin in: ${s.differ!.join(', ')}`)
      if (!Number.isFinite(s.catchUp!.ms))
        say(`  ${name}: the replica did not catch up within the timeout (${s.catchUp!.polls} polls)`)
    }
    say('')
    say(
      `  branchmesh, where the time goes (from the end of the initial copy to caught up; ${d.units} ` +
        `units with rows, ${d.rows} row changes carried, net per key after folding):`
    )
    say(
      `    capture read (from the stream, decode, fold; with up to 20 ms gathering): ${f0(d.readMs)} ms ` +
        `in ${d.reads} reads (${d.emptyReads} found nothing); log append: ${f0(d.appendMs)} ms; ` +
        `acknowledge (standby status update): ${f0(d.ackMs)} ms; apply: ${f0(d.applyMs)} ms`
    )
    say(
      `    captured while pgbench ran: ${d.rowsDuring} rows (${f0(d.rowsDuring / runS)} rows/s); after ` +
        `its end: ${d.rowsAfter} rows in ${d.unitsAfter} units`
    )
    say(
      `    the last unit with rows, ms after pgbench's exit: appended at the origin ` +
        `${f1(d.lastAppendedMs)}, acknowledged ${f1(d.lastCapturedMs)}, replicated ` +
        `${f1(d.lastReplicatedMs)}, applied ${f1(d.lastAppliedMs)}; seen equal by the poll ${f1(b.catchUp!.ms)}`
    )
    say(
      `    apply: ${f0(applyRate)} rows/s while applying (rows / time inside apply()); initial copy of ` +
        `${scale * 100_000} accounts: ${(d.copyMs / 1000).toFixed(1)} s`
    )
    say(
      `    the slot while pgbench ran (mean of samples every 250 ms): restart_lsn ` +
        `${mb(d.slotRestartLagBytes)} MB behind the WAL's end (a restarted stream decodes from there), ` +
        `confirmed_flush_lsn ${mb(d.slotConfirmedLagBytes)} MB behind`
    )
    if (d.captureErrors.length || d.applyErrors.length) {
      say(
        `    errors: capture ${d.captureErrors.length} (${d.captureErrors.slice(0, 3).join('; ')}), ` +
          `apply ${d.applyErrors.length} (${d.applyErrors.slice(0, 3).join('; ')})`
      )
    }
    say('')
    say(
      `  CPU from pgbench's start to its exit (CPU seconds; the machine has ${os.cpus().length} cores, ` +
        `${(os.cpus().length * runS).toFixed(0)} CPU s in a run), and WAL written at the origin:`
    )
    const cpuS = (ms: number) => (Number.isFinite(ms) ? (ms / 1000).toFixed(2) : 'n/a')
    const busy = (c: Cpu) => `machine ${(c.machineBusy * 100).toFixed(0)}% busy`
    const wal = (s: Scenario) =>
      `WAL ${mb(s.walBytes)} MB (${Math.round(s.walBytes / s.run.transactions)} bytes per transaction)`
    say(`    alone:      ${busy(a.cpu)}; ${wal(a)}`)
    say(
      `    native:     ${busy(n.cpu)}; walsender at the origin (decoding) ${cpuS(n.cpu.originMs)} s, ` +
        `subscriber's apply worker ${cpuS(n.cpu.replicaMs)} s; ${wal(n)}`
    )
    say(
      `    branchmesh: ${busy(b.cpu)}; capture at the origin (walsender decoding + its SQL connection) ` +
        `${cpuS(b.cpu.originMs)} s, this process (decode, fold, log, replication, apply client, the polls) ` +
        `${cpuS(b.cpu.selfMs)} s, apply's backend at the replica ${cpuS(b.cpu.replicaMs)} s; ${wal(b)}`
    )
    // CPU per transaction replicated: steadier than TPS on a shared machine (it does not count waiting for CPU).
    const perKTx = (ms: number, s: Scenario) => (ms / s.run.transactions) * 1000
    const cpuN = perKTx(n.cpu.originMs + n.cpu.replicaMs, n)
    const cpuB = perKTx(b.cpu.originMs + b.cpu.selfMs + b.cpu.replicaMs, b)
    const cpuBOrigin = perKTx(b.cpu.originMs, b)
    say(
      `    CPU ms per 1000 pgbench transactions replicated: native ${f0(cpuN)} (walsender + apply worker), ` +
        `branchmesh ${f0(cpuB)} (${ratio(cpuB / cpuN)}; of it at the origin's PostgreSQL ${f0(cpuBOrigin)}, ` +
        `this process ${f0(perKTx(b.cpu.selfMs, b))}, the replica's backend ${f0(perKTx(b.cpu.replicaMs, b))})` +
        `${GATHER_MS !== undefined ? `; capture gatherMs ${GATHER_MS}` : ''}`
    )
    if ([a, n, b].some((s) => s.run.failed > 0))
      say(`  pgbench failed transactions: alone ${a.run.failed}, native ${n.run.failed}, branchmesh ${b.run.failed}`)
    const re = opts.only === 'main' ? {} : sayRestart(await restart(clusters, seconds, scale, pollMs), say)
    say(
      `  set-up (not measured): alone ${(a.setupMs / 1000).toFixed(1)} s, native ` +
        `${(n.setupMs / 1000).toFixed(1)} s, branchmesh ${(b.setupMs / 1000).toFixed(1)} s; this benchmark ` +
        `took ${totalS.toFixed(0)} s in all`
    )

    return {
      pgSeconds: seconds,
      pgScale: scale,
      pgClients: CLIENTS,
      pgTpsAlone: f2(tpsA),
      pgTpsNative: f2(n.run.tps),
      pgTpsBranchmesh: f2(b.run.tps),
      pgOverheadNative: r3(ovN),
      pgOverheadBranchmesh: r3(ovB),
      pgOverheadAimMet: ovB <= ovN,
      pgCatchUpNativeMs: f2(cuN),
      pgCatchUpBranchmeshMs: f2(cuB),
      pgCatchUpVsNative: r3(cuRatio),
      pgCatchUpAimMet: cuRatio <= 1,
      pgCatchUpPolledNativeMs: f2(n.catchUp!.ms),
      pgCatchUpPolledBranchmeshMs: f2(b.catchUp!.ms),
      pgFirstPollNativeMs: f2(n.catchUp!.firstPollMs),
      pgFirstPollBranchmeshMs: f2(b.catchUp!.firstPollMs),
      pgBehindAtEndNativeTx: n.catchUp!.behind,
      pgBehindAtEndBranchmeshTx: b.catchUp!.behind,
      pgEqualNative: n.equal!,
      pgEqualBranchmesh: b.equal!,
      pgBranchmeshRows: d.rows,
      pgCaptureRowsPerSecDuringRun: Math.round(d.rowsDuring / runS),
      pgApplyRowsPerSec: Math.round(applyRate),
      pgCaptureReadMs: Math.round(d.readMs),
      pgLogAppendMs: Math.round(d.appendMs),
      pgAckMs: Math.round(d.ackMs),
      pgApplyMs: Math.round(d.applyMs),
      pgLastAppliedAfterEndMs: f2(d.lastAppliedMs),
      pgInitialCopyMs: Math.round(d.copyMs),
      pgMachineBusyAlone: r3(a.cpu.machineBusy),
      pgMachineBusyNative: r3(n.cpu.machineBusy),
      pgMachineBusyBranchmesh: r3(b.cpu.machineBusy),
      pgNativeWalsenderCpuMs: Math.round(n.cpu.originMs),
      pgNativeApplyWorkerCpuMs: Math.round(n.cpu.replicaMs),
      pgCaptureBackendCpuMs: Math.round(b.cpu.originMs),
      pgBranchmeshProcessCpuMs: Math.round(b.cpu.selfMs),
      pgApplyBackendCpuMs: Math.round(b.cpu.replicaMs),
      pgSlotRestartLagBytes: Math.round(d.slotRestartLagBytes),
      pgNativeCpuMsPerKTx: Math.round(cpuN),
      pgBranchmeshCpuMsPerKTx: Math.round(cpuB),
      ...re,
      pgBenchSeconds: Math.round((nowMs() - started) / 1000)
    }
  } finally {
    for (const c of clusters) await c.stop().catch(() => {})
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const json = process.argv.includes('--json')
  const only = process.argv.includes('--only') ? process.argv[process.argv.indexOf('--only') + 1] : undefined
  if (only !== undefined && only !== 'restart' && only !== 'main') {
    throw new Error(`bench: --only takes restart or main, not ${only}. Try: --only main`)
  }
  const summary = await pgBench({ json, only })
  if (json) process.stdout.write(`${JSON.stringify(summary)}\n`)
}
