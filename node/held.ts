/**
 * How much of a log is held, here and at each peer this site replicates it with, from hypercore's own bitfields:
 * what is left to receive, for the catch-up estimate in `mesh status` (issue 16). A site's lag in applied bytes
 * (its reports) trails what it has received: hypercore fetches the blocks of a range in no set order, so a copy
 * can hold much of what it has not applied yet (its contiguous length stays short until the gaps fill).
 *
 * Read from hypercore 11's internals (the core's bitfield; each replicating peer's remote bitfield, which the
 * peer keeps up to date with range messages as it downloads): a version without them gives null, and the
 * estimate falls back to the lag in applied bytes. Bytes are estimated in proportion to blocks held.
 */
import { hex } from './util.ts'

interface Bits {
  findFirst(val: boolean, position: number): number
}

interface CoreLike {
  length: number
  byteLength: number
  contiguousLength?: number
  core?: { bitfield?: Bits | null } | null
  replicator?: {
    peers?: Array<{ remotePublicKey?: Uint8Array | null; remoteBitfield?: Bits; remoteContiguousLength?: number }>
  } | null
}

/** Blocks set in `bits` over [from, to), hopping from run to run (a few steps for a mostly full log). */
function countSet(bits: Bits, from: number, to: number): number {
  let n = 0
  let pos = from
  while (pos < to) {
    const s = bits.findFirst(true, pos)
    if (s === -1 || s >= to) break
    let e = bits.findFirst(false, s)
    if (e === -1 || e > to) e = to
    n += e - s
    pos = e
  }
  return n
}

function bytesOf(c: CoreLike, blocks: number): number {
  if (c.length <= 0) return 0
  return blocks >= c.length ? c.byteLength : Math.floor((c.byteLength * blocks) / c.length)
}

/** Bytes of the log this site holds; null when hypercore does not tell. */
export function heldHere(core: unknown): number | null {
  const c = core as CoreLike
  const bits = c.core?.bitfield
  if (!bits || typeof bits.findFirst !== 'function') return null
  try {
    const contiguous = Math.min(c.length, c.contiguousLength ?? 0)
    return bytesOf(c, contiguous + countSet(bits, contiguous, c.length))
  } catch {
    return null
  }
}

/** Bytes of this site's log each peer it replicates with holds, by the peer's key (hex). */
export function heldByPeers(core: unknown): Map<string, number> {
  const c = core as CoreLike
  const out = new Map<string, number>()
  for (const p of c.replicator?.peers ?? []) {
    const bits = p.remoteBitfield
    if (!p.remotePublicKey || !bits || typeof bits.findFirst !== 'function') continue
    try {
      const contiguous = Math.min(c.length, p.remoteContiguousLength ?? 0)
      const blocks = contiguous + countSet(bits, contiguous, c.length)
      const key = hex(p.remotePublicKey)
      out.set(key, Math.max(out.get(key) ?? 0, bytesOf(c, blocks)))
    } catch {
      // this peer's figure is unknown: its estimate uses its lag
    }
  }
  return out
}
