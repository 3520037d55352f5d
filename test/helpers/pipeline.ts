/**
 * An origin and a replica in one test process: capture -> log in corestore A -> hypercore replication ->
 * corestore B -> apply. Real SQLite files (or PostgreSQL databases) and real hypercores; the two stores
 * replicate over a real replication stream (the network tests use hyperswarm instead).
 *
 * The pieces are exported for the tests and helper processes that put them together their own way: the log
 * of the test dataset in a corestore (openLog), a capture loop into it (captureLoop), an apply loop out of
 * it (applyLoop).
 */
import Corestore from 'corestore'
import assert from 'node:assert/strict'
import path from 'node:path'
import { pipeline } from 'node:stream'
import { PostgresApply, SqliteApply, SqliteCapture, type ApplySide, type CaptureSide } from '../../adapters/index.ts'
import { ApplyLoop, CaptureLoop, DatasetLog, type CaptureLoopOptions } from '../../node/index.ts'
import { tmpDir } from './db.ts'
import { pgCluster, pgDump, type ClusterOptions, type PgCluster } from './pg.ts'
import { teardown, type TestContext } from './teardown.ts'

export interface Pipeline {
  capture: CaptureLoop
  apply: ApplyLoop
  originLog: DatasetLog
  replicaLog: DatasetLog
  replica: SqliteApply
  /** Waits until the replica has applied everything the origin log holds now. */
  settle(): Promise<void>
  close(): Promise<void>
}

/** `unitMemoryBytes`: the capture and apply loops' memory budget for one unit (issue 14). */
export interface PipelineOptions {
  pollMs?: number
  blockBytes?: number
  unitMemoryBytes?: number
  /** A data key: both logs opened with hypercore block encryption under it (as a dataset's at full members). */
  dataKey?: Uint8Array
  /** The capture loop's batching interval (link.batchSeconds), ms. */
  batchMs?: number
}

/** The test dataset's log (ds1, epoch 0) in a corestore at `storeDir`, made if it is not there yet. */
export async function openLog(storeDir: string, dataKey?: Uint8Array): Promise<{ store: Corestore; log: DatasetLog }> {
  const store = new Corestore(storeDir)
  return { store, log: await DatasetLog.writable(store, storeDir, 'ds1', 0, dataKey ? { key: dataKey } : null) }
}

/** A capture loop from `capture` into `log`, as the first log of dataset ds1 ("shop", written at site a). */
export function captureLoop(
  capture: CaptureSide,
  log: DatasetLog,
  opts: Omit<CaptureLoopOptions, 'capture' | 'log' | 'header'> = {}
): CaptureLoop {
  return new CaptureLoop({
    capture,
    log,
    header: {
      dataset: 'ds1',
      name: 'shop',
      engine: capture.engine,
      epoch: 0,
      site: 'a',
      createdAt: Date.now(),
      parent: null
    },
    ...opts
  })
}

/** An apply loop from `log` (epoch 0, to its end) into `apply`. */
export function applyLoop(log: DatasetLog, apply: ApplySide, opts: { unitMemoryBytes?: number } = {}): ApplyLoop {
  return new ApplyLoop({ segments: [{ log, epoch: 0, end: null }], apply, ...opts })
}

export function replicateStores(a: Corestore, b: Corestore): () => void {
  const sa = a.replicate(true)
  const sb = b.replicate(false)
  pipeline(sa, sb, sa, () => {})
  return () => {
    sa.destroy()
    sb.destroy()
  }
}

/** A pipeline from the SQLite file `originFile` to `DIR/replica.db`. The caller closes it (tests: sqlitePipeline). */
export async function startPipeline(dir: string, originFile: string, opts: PipelineOptions = {}): Promise<Pipeline> {
  const captureSide = new SqliteCapture({ path: originFile, ackIntervalMs: 0 })
  const replica = new SqliteApply({ path: path.join(dir, 'replica.db') })
  return startSidesPipeline(dir, captureSide, replica, opts) as Promise<Pipeline>
}

/** The same with any engine's capture and apply sides. */
export async function startSidesPipeline<A extends ApplySide>(
  dir: string,
  captureSide: CaptureSide,
  replica: A,
  opts: PipelineOptions = {}
): Promise<Omit<Pipeline, 'replica'> & { replica: A }> {
  const { store: storeA, log: originLog } = await openLog(path.join(dir, 'store-a'), opts.dataKey)
  const storeB = new Corestore(path.join(dir, 'store-b'))
  const mem = { unitMemoryBytes: opts.unitMemoryBytes }
  const capture = captureLoop(captureSide, originLog, {
    pollMs: opts.pollMs ?? 5,
    blockBytes: opts.blockBytes,
    batchMs: opts.batchMs,
    ...mem
  })
  await capture.start()
  const encryption = opts.dataKey ? { key: opts.dataKey } : null
  const replicaLog = await DatasetLog.byKey(storeB, path.join(dir, 'store-b'), originLog.key, encryption)
  const stop = replicateStores(storeA, storeB)
  replicaLog.core.download({ start: 0, end: -1 })
  const apply = applyLoop(replicaLog, replica, mem)
  await apply.start()
  return {
    capture,
    apply,
    originLog,
    replicaLog,
    replica,
    async settle() {
      // Wait until capture has nothing left to read, then until the replica applied all of it.
      for (;;) {
        const n = await capture.step()
        if (n === 0) break
      }
      if (capture.stats.lastError) throw capture.stats.lastError
      await apply.waitFor(originLog.length)
      if (apply.stats.lastError) throw apply.stats.lastError
    },
    async close() {
      await capture.stop()
      await apply.stop()
      await captureSide.close()
      await replica.close()
      stop()
      await storeA.close()
      await storeB.close()
    }
  }
}

/** startPipeline for a test: closed when the test ends. */
export async function sqlitePipeline(
  t: TestContext,
  dir: string,
  originFile: string,
  opts: PipelineOptions = {}
): Promise<Pipeline> {
  const p = await startPipeline(dir, originFile, opts)
  teardown(t, () => p.close())
  return p
}

/** startSidesPipeline for a test: closed when the test ends. */
export async function sidesPipeline<A extends ApplySide>(
  t: TestContext,
  dir: string,
  captureSide: CaptureSide,
  replica: A,
  opts: PipelineOptions = {}
): Promise<Omit<Pipeline, 'replica'> & { replica: A }> {
  const p = await startSidesPipeline(dir, captureSide, replica, opts)
  teardown(t, () => p.close())
  return p
}

/**
 * A PostgreSQL pipeline on a throwaway cluster of its own: database `origin` (made, then `init` run in it),
 * captured by the side `capture` makes for its URL, applied into database `replica` as dataset ds1. All of it
 * stopped and removed when the test ends. `run` runs SQL at the origin; `same(what)` waits until the replica
 * applied everything and asserts that its tables equal the origin's, type for type (`notCarried`: tables of
 * the origin left out of that comparison); `change(what, ...sql)` is a step of the test named `what` that runs
 * each SQL text at the origin in turn and then asserts `same(what)`.
 */
export async function pgPipeline(
  t: TestContext,
  opts: {
    init: string
    capture: (url: string) => CaptureSide
    cluster?: ClusterOptions
    notCarried?: string[]
    unitMemoryBytes?: number
    batchMs?: number
  }
) {
  const cluster: PgCluster = await pgCluster(t, opts.cluster)
  const dir = tmpDir(t)
  const origin = await cluster.createDatabase('origin')
  const replicaUrl = await cluster.createDatabase('replica')
  await cluster.query(opts.init, [], 'origin')
  const capture = opts.capture(origin)
  const replica = new PostgresApply({ url: replicaUrl, dataset: 'ds1' })
  const p = await sidesPipeline(t, dir, capture, replica, {
    pollMs: 5,
    unitMemoryBytes: opts.unitMemoryBytes,
    batchMs: opts.batchMs
  })
  const run = (sql: string) => cluster.query(sql, [], 'origin')
  const same = async (what: string) => {
    await p.settle()
    const o = await pgDump(origin)
    for (const table of opts.notCarried ?? []) delete o[table]
    assert.deepEqual(await pgDump(replicaUrl), o, what)
  }
  const change = (what: string, ...sql: string[]) =>
    t.test(what, async () => {
      for (const text of sql) await run(text)
      await same(what)
    })
  return { cluster, origin, replicaUrl, capture, replica, p, run, same, change }
}
