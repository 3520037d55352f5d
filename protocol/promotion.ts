/**
 * The bodies of the statements that move a dataset from one origin to the next (protocol/statements.ts):
 *
 * - a **promotion** (StatementKind.promotion), signed by the site that becomes the origin: the dataset, the new
 *   epoch and its log, the parent log and the length the new epoch continues from (the branch point), and, for
 *   a planned switch, the old origin's signed handover. It travels with the new log (in its header) and on the
 *   control channel, and every site checks it before following the new epoch.
 * - a **handover** (StatementKind.handover), signed by the origin: its consent that `to` starts the next epoch
 *   exactly at the length where it sealed its log.
 *
 * No I/O here; who may sign what is checked by the node (node/trust.ts).
 */
import c from 'compact-encoding'
import { MeshError } from './errors.ts'
import { decodeOr, decodeStatement, encodeStatement, type Statement } from './statements.ts'

type State = { start: number; end: number; buffer: Uint8Array | null }

export interface Promotion {
  /** Dataset id. */
  dataset: string
  /** Dataset name, engine: as in DatasetInfo. */
  name: string
  engine: string
  /** The new epoch (the parent's epoch + 1). */
  epoch: number
  /** Key of the new epoch's log. */
  log: Uint8Array
  /** The log the new epoch continues from, and the length it continues from (the branch point). */
  parent: { key: Uint8Array; length: number }
  /** The promoting site's name (its key is the statement's signer). */
  site: string
  /** The old origin's signed handover (StatementKind.handover) when it consented; null otherwise. */
  handover: Statement | null
  /** The promoting person used --force (a replica behind what others held, or still copying). */
  forced: boolean
}

export interface Handover {
  dataset: string
  /** The epoch the named site starts. */
  epoch: number
  /** The origin's log, sealed at `length`. */
  parent: { key: Uint8Array; length: number }
  /** The site that takes over: its key and name. */
  to: Uint8Array
  toSite: string
}

const F_HANDOVER = 1
const F_FORCED = 2

export const promotionEncoding = {
  preencode(s: State, p: Promotion) {
    c.uint.preencode(s, 0)
    c.string.preencode(s, p.dataset)
    c.string.preencode(s, p.name)
    c.string.preencode(s, p.engine)
    c.uint.preencode(s, p.epoch)
    c.fixed32.preencode(s, p.log)
    c.fixed32.preencode(s, p.parent.key)
    c.uint.preencode(s, p.parent.length)
    c.string.preencode(s, p.site)
    if (p.handover) c.buffer.preencode(s, encodeStatement(p.handover))
  },
  encode(s: State, p: Promotion) {
    c.uint.encode(s, (p.handover ? F_HANDOVER : 0) | (p.forced ? F_FORCED : 0))
    c.string.encode(s, p.dataset)
    c.string.encode(s, p.name)
    c.string.encode(s, p.engine)
    c.uint.encode(s, p.epoch)
    c.fixed32.encode(s, p.log)
    c.fixed32.encode(s, p.parent.key)
    c.uint.encode(s, p.parent.length)
    c.string.encode(s, p.site)
    if (p.handover) c.buffer.encode(s, encodeStatement(p.handover))
  },
  decode(s: State): Promotion {
    const flags = c.uint.decode(s)
    if (flags & ~(F_HANDOVER | F_FORCED)) {
      throw MeshError.UNKNOWN_FLAGS(`a promotion has unknown flag bits 0x${flags.toString(16)}`)
    }
    const p: Promotion = {
      dataset: c.string.decode(s),
      name: c.string.decode(s),
      engine: c.string.decode(s),
      epoch: c.uint.decode(s),
      log: c.fixed32.decode(s),
      parent: { key: c.fixed32.decode(s), length: c.uint.decode(s) },
      site: c.string.decode(s),
      handover: null,
      forced: (flags & F_FORCED) !== 0
    }
    if (flags & F_HANDOVER) {
      const bytes = c.buffer.decode(s)
      if (bytes === null) throw MeshError.BAD_ENTRY('a promotion names a handover without one')
      p.handover = decodeStatement(bytes)
    }
    return p
  }
}

export const handoverEncoding = {
  preencode(s: State, h: Handover) {
    c.string.preencode(s, h.dataset)
    c.uint.preencode(s, h.epoch)
    c.fixed32.preencode(s, h.parent.key)
    c.uint.preencode(s, h.parent.length)
    c.fixed32.preencode(s, h.to)
    c.string.preencode(s, h.toSite)
  },
  encode(s: State, h: Handover) {
    c.string.encode(s, h.dataset)
    c.uint.encode(s, h.epoch)
    c.fixed32.encode(s, h.parent.key)
    c.uint.encode(s, h.parent.length)
    c.fixed32.encode(s, h.to)
    c.string.encode(s, h.toSite)
  },
  decode(s: State): Handover {
    return {
      dataset: c.string.decode(s),
      epoch: c.uint.decode(s),
      parent: { key: c.fixed32.decode(s), length: c.uint.decode(s) },
      to: c.fixed32.decode(s),
      toSite: c.string.decode(s)
    }
  }
}

export const encodePromotion = (p: Promotion): Uint8Array => c.encode(promotionEncoding, p)
export const decodePromotion = (b: Uint8Array): Promotion => decodeOr(promotionEncoding, b, 'a promotion')
export const encodeHandover = (h: Handover): Uint8Array => c.encode(handoverEncoding, h)
export const decodeHandover = (b: Uint8Array): Handover => decodeOr(handoverEncoding, b, 'a handover')
