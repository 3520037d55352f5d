/**
 * An origin and a replica in one test process: capture -> log in corestore A -> hypercore replication ->
 * corestore B -> apply. Real SQLite files and real hypercores; the two stores replicate over a real
 * replication stream (the network tests use hyperswarm instead).
 */
import Corestore from 'corestore'
import path from 'node:path'
import { pipeline } from 'node:stream'
import { SqliteApply, SqliteCapture, type ApplySide, type CaptureSide } from '../../adapters/index.ts'
import { ApplyLoop, CaptureLoop, DatasetLog } from '../../node/index.ts'

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

export function replicateStores(a: Corestore, b: Corestore): () => void {
  const sa = a.replicate(true)
  const sb = b.replicate(false)
  pipeline(sa, sb, sa, () => {})
  return () => {
    sa.destroy()
    sb.destroy()
  }
}

export async function startPipeline(dir: string, originFile: string, opts: { pollMs?: number; blockBytes?: number } = {}): Promise<Pipeline> {
  const captureSide = new SqliteCapture({ path: originFile, ackIntervalMs: 0 })
  const replica = new SqliteApply({ path: path.join(dir, 'replica.db') })
  return startSidesPipeline(dir, captureSide, replica, opts) as Promise<Pipeline>
}

/** The same with any engine's capture and apply sides. */
export async function startSidesPipeline<A extends ApplySide>(
  dir: string,
  captureSide: CaptureSide,
  replica: A,
  opts: { pollMs?: number; blockBytes?: number } = {}
): Promise<Omit<Pipeline, 'replica'> & { replica: A }> {
  const storeA = new Corestore(path.join(dir, 'store-a'))
  const storeB = new Corestore(path.join(dir, 'store-b'))
  const originLog = await DatasetLog.writable(storeA, path.join(dir, 'store-a'), 'ds1', 0)
  const capture = new CaptureLoop({
    capture: captureSide,
    log: originLog,
    header: { dataset: 'ds1', name: 'shop', engine: captureSide.engine, epoch: 0, site: 'a', createdAt: Date.now(), parent: null },
    pollMs: opts.pollMs ?? 5,
    blockBytes: opts.blockBytes
  })
  await capture.start()
  const replicaLog = await DatasetLog.byKey(storeB, path.join(dir, 'store-b'), originLog.key)
  const stop = replicateStores(storeA, storeB)
  replicaLog.core.download({ start: 0, end: -1 })
  const apply = new ApplyLoop({ segments: [{ log: replicaLog, epoch: 0, end: null }], apply: replica })
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
