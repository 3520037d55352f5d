/**
 * A dataset's history as a chain of logs. Epoch 0's log starts the dataset; each promotion starts the next
 * epoch's log with a header naming the log and length it continues from. Walking those parent links back
 * from the newest epoch gives the chain every site applies, whatever it followed before.
 *
 * Which epoch wins. Every site follows the newest epoch it has heard of; two logs of the same epoch (two
 * promotions on both sides of a partition) are ordered by log key, the lower key winning. Every site sees
 * the same two keys, so every site picks the same log, with no vote and no clock.
 */
import { MeshError, sameBytes, type DatasetInfo, type HeaderEntry } from '../protocol/index.ts'
import type { DatasetLog } from './log.ts'

/** One epoch's log in a dataset's chain: applied up to `end` (where the next epoch branched), or to its tip. */
export interface Segment {
  log: DatasetLog
  epoch: number
  /** null for the newest epoch's log, which is followed as it grows. */
  end: number | null
}

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
export async function resolveChain(
  head: DatasetInfo,
  open: (key: Uint8Array) => Promise<DatasetLog>
): Promise<ChainSegment[]> {
  const out: ChainSegment[] = []
  let key: Uint8Array = head.log
  let end: number | null = null
  let epoch = head.epoch
  for (;;) {
    const log = await open(key)
    const header = await log.header({ wait: true })
    if (header === null) throw MeshError.BAD_LOG('a log of the dataset has no header')
    if (header.dataset !== head.id)
      throw MeshError.BAD_LOG(`a log in the history of ${head.name} belongs to dataset ${header.dataset}`)
    if (header.epoch !== epoch)
      throw MeshError.BAD_LOG(`the log of epoch ${epoch} of ${head.name} says it is epoch ${header.epoch}`)
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

/**
 * Where a replica at (log, length) stands on the chain: the segment it is on and the next block to apply
 * there. null when it stands on none of the chain's logs, or past the point where the next epoch branched
 * off: it then holds changes the chain does not.
 */
export function locate(
  chain: Segment[],
  pos: { log: Uint8Array; length: number } | null
): { index: number; next: number } | null {
  if (pos === null) return { index: 0, next: 0 }
  const index = chain.findIndex((x) => sameBytes(x.log.key, pos.log))
  if (index < 0) return null
  const end = chain[index].end
  return end !== null && pos.length > end ? null : { index, next: pos.length }
}

/** Where each segment starts on the chain, and the chain's length. */
export function offsets(chain: ChainSegment[]): { starts: number[]; length: number } {
  const starts: number[] = []
  let at = 0
  for (const s of chain) {
    starts.push(at)
    at += s.end ?? s.log.length
  }
  return { starts, length: at }
}

/**
 * The chain position of a position in one of the chain's logs (its key, and a length or block there); null
 * when it is on none of them, or past the point where the next epoch branched off.
 */
export function seqOf(chain: ChainSegment[], pos: { log: Uint8Array; length: number } | null): number | null {
  const at = pos && locate(chain, pos)
  return at ? offsets(chain).starts[at.index] + at.next : null
}
