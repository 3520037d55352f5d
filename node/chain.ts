/**
 * A dataset's history as a chain of logs. Epoch 0's log starts the dataset; each promotion starts the next
 * epoch's log with a header naming the log and length it continues from. Walking those parent links back
 * from the newest epoch gives the chain every site applies, whatever it followed before.
 *
 * Which epoch wins. Every site follows the newest epoch it has heard of; two logs of the same epoch (two
 * promotions on both sides of a partition) are ordered by log key, the lower key winning. Every site sees
 * the same two keys, so every site picks the same log, with no vote and no clock.
 */
import { MeshError, type DatasetInfo, type HeaderEntry } from '../protocol/index.ts'
import type { Segment } from './apply-loop.ts'
import type { DatasetLog } from './log.ts'

const sameKey = (a: Uint8Array, b: Uint8Array) => Buffer.compare(Buffer.from(a), Buffer.from(b)) === 0

/** True when `a` supersedes `b`: a newer epoch, or the same epoch with the lower log key. */
export function supersedes(a: DatasetInfo, b: DatasetInfo): boolean {
  if (a.epoch !== b.epoch) return a.epoch > b.epoch
  return Buffer.compare(Buffer.from(a.log), Buffer.from(b.log)) < 0
}

export interface ChainSegment extends Segment {
  header: HeaderEntry
}

/**
 * The chain that ends at `head`, oldest first. Reads block 0 of every log in it, waiting for peers to send
 * the ones this site does not hold yet.
 */
export async function resolveChain(head: DatasetInfo, open: (key: Uint8Array) => Promise<DatasetLog>): Promise<ChainSegment[]> {
  const out: ChainSegment[] = []
  let key: Uint8Array = head.log
  let end: number | null = null
  let epoch = head.epoch
  for (;;) {
    const log = await open(key)
    const header = await log.header({ wait: true })
    if (header === null) throw MeshError.BAD_LOG('a log of the dataset has no header')
    if (header.dataset !== head.id) throw MeshError.BAD_LOG(`a log in the history of ${head.name} belongs to dataset ${header.dataset}`)
    if (header.epoch !== epoch) throw MeshError.BAD_LOG(`the log of epoch ${epoch} of ${head.name} says it is epoch ${header.epoch}`)
    out.unshift({ log, epoch, end, header })
    if (header.parent === null) {
      if (epoch !== 0) throw MeshError.BAD_LOG(`the log of epoch ${epoch} of ${head.name} names no parent`)
      return out
    }
    if (epoch === 0) throw MeshError.BAD_LOG(`the first log of ${head.name} names a parent`)
    key = header.parent.key
    end = header.parent.length
    epoch--
  }
}

/** Whether a replica at (log, length) stands on the chain: on one of its logs, not past a branch point. */
export function onChain(chain: Segment[], pos: { log: Uint8Array; length: number } | null): boolean {
  if (pos === null) return true
  const s = chain.find((x) => sameKey(x.log.key, pos.log))
  return s !== undefined && (s.end === null || pos.length <= s.end)
}

/** The segment of `key` in the chain, and where the chain leaves it (null: it is the newest epoch). */
export function branchPoint(chain: Segment[], key: Uint8Array): { index: number; end: number | null } | null {
  const index = chain.findIndex((x) => sameKey(x.log.key, key))
  return index < 0 ? null : { index, end: chain[index].end }
}
