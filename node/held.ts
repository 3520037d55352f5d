/**
 * How much of a log is held, here and at each peer this site replicates it with, from hypercore's own bitfields:
 * what is left to receive, for the catch-up estimate in `mesh status` (issue 16). A site's lag in applied bytes
 * (its reports) trails what it has received: hypercore fetches the blocks of a range in no set order, so a copy
 * can hold much of what it has not applied yet (its contiguous length stays short until the gaps fill).
 *
 * A peer holds what it told this site it has (hypercore 11's remote bitfield, from its range messages: it sends
 * them only for blocks this site wants or the log's last blocks, so a site that holds the whole log hears of
 * little) and what this site uploaded to it (counted here from hypercore's 'upload' events; hypercore uploads a
 * block when it answers the request, before it leaves the streams' buffers: the bytes still in them are added
 * back, node/traffic.ts). This site holds what its core's bitfield says. A hypercore without those internals
 * gives null, and the estimate falls back to the lag in applied bytes. Bytes are estimated in proportion to
 * blocks held.
 */
import { hex } from './util.ts'

interface Bits {
  findFirst(val: boolean, position: number): number
  get?(index: number): boolean
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

/** Blocks this site uploaded to a peer, per log; past this many, no more are noted (the estimate runs high). */
const MAX_NOTED = 200_000

/** The blocks of each log this site uploaded to each peer, from hypercore's 'upload' events. */
export class Uploads {
  /** log key (hex) -> peer key (hex) -> block indexes. */
  private readonly sent = new Map<string, Map<string, Set<number>>>()

  /** Notes every block `core` (the log `log`, hex) uploads from now on. */
  watch(
    log: string,
    core: { on(event: 'upload', fn: (index: number, bytes: number, from: unknown) => void): unknown }
  ): void {
    core.on('upload', (index, _bytes, from) => {
      const key = (from as { remotePublicKey?: Uint8Array | null } | null)?.remotePublicKey
      if (!key) return
      let byPeer = this.sent.get(log)
      if (!byPeer) this.sent.set(log, (byPeer = new Map()))
      const k = hex(key)
      let set = byPeer.get(k)
      if (!set) byPeer.set(k, (set = new Set()))
      if (set.size < MAX_NOTED) set.add(index)
    })
  }

  /**
   * Bytes of the log `log` each peer this site replicates it with holds, by the peer's key (hex): what it told
   * this site it has, and what this site uploaded to it.
   */
  heldByPeers(log: string, core: unknown): Map<string, number> {
    const c = core as CoreLike
    const out = new Map<string, number>()
    const byPeer = this.sent.get(log)
    for (const p of c.replicator?.peers ?? []) {
      const bits = p.remoteBitfield
      if (!p.remotePublicKey || !bits || typeof bits.findFirst !== 'function') continue
      try {
        const key = hex(p.remotePublicKey)
        const contiguous = Math.min(c.length, p.remoteContiguousLength ?? 0)
        let blocks = contiguous + countSet(bits, contiguous, c.length)
        const sent = byPeer?.get(key)
        if (sent) {
          for (const i of sent) {
            if (i < contiguous)
              sent.delete(i) // it holds those without a gap: no need to note them
            else if (i < c.length && !(bits.get ? bits.get(i) : bits.findFirst(true, i) === i)) blocks++
          }
        }
        out.set(key, Math.max(out.get(key) ?? 0, bytesOf(c, Math.min(c.length, blocks))))
      } catch {
        // this peer's figure is unknown: its estimate uses its lag
      }
    }
    return out
  }
}
