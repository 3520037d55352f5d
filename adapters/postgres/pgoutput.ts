/**
 * A decoder for the messages of PostgreSQL's built-in `pgoutput` logical decoding plugin, protocol version 1
 * (https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html). Values arrive in their
 * text form (the type's output function), which is what branchmesh carries.
 */

export interface RelationColumn {
  key: boolean
  name: string
  typeOid: number
  typmod: number
}

export type TupleValue = string | null | typeof UNCHANGED_TOAST

/** An unchanged TOASTed value: the update did not touch it, so pgoutput does not send it. */
export const UNCHANGED_TOAST: unique symbol = Symbol('unchanged-toast')

export type PgMessage =
  | { tag: 'begin'; finalLsn: bigint; time: number; xid: number }
  | { tag: 'commit'; lsn: bigint; endLsn: bigint; time: number }
  | { tag: 'origin'; name: string }
  | { tag: 'relation'; oid: number; namespace: string; name: string; identity: string; columns: RelationColumn[] }
  | { tag: 'type'; oid: number; namespace: string; name: string }
  | { tag: 'insert'; oid: number; row: TupleValue[] }
  | { tag: 'update'; oid: number; old: TupleValue[] | null; oldKind: 'K' | 'O' | null; row: TupleValue[] }
  | { tag: 'delete'; oid: number; old: TupleValue[]; oldKind: 'K' | 'O' }
  | { tag: 'truncate'; oids: number[]; cascade: boolean; restartIdentity: boolean }
  | { tag: 'message'; prefix: string }

// Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01).
const PG_EPOCH_MS = 946_684_800_000

class Reader {
  pos = 0
  constructor(readonly buf: Buffer) {}
  u8(): number {
    return this.buf.readUInt8(this.pos++)
  }
  i16(): number {
    const v = this.buf.readInt16BE(this.pos)
    this.pos += 2
    return v
  }
  i32(): number {
    const v = this.buf.readInt32BE(this.pos)
    this.pos += 4
    return v
  }
  u32(): number {
    const v = this.buf.readUInt32BE(this.pos)
    this.pos += 4
    return v
  }
  u64(): bigint {
    const v = this.buf.readBigUInt64BE(this.pos)
    this.pos += 8
    return v
  }
  time(): number {
    return PG_EPOCH_MS + Number(this.buf.readBigInt64BE((this.pos += 8) - 8) / 1000n)
  }
  cstring(): string {
    const end = this.buf.indexOf(0, this.pos)
    if (end < 0) throw new RangeError('unterminated string')
    const s = this.buf.toString('utf8', this.pos, end)
    this.pos = end + 1
    return s
  }
  tuple(): TupleValue[] {
    const n = this.i16()
    const out: TupleValue[] = new Array(n)
    for (let i = 0; i < n; i++) {
      const kind = String.fromCharCode(this.u8())
      if (kind === 'n') out[i] = null
      else if (kind === 'u') out[i] = UNCHANGED_TOAST
      else if (kind === 't') {
        const len = this.i32()
        out[i] = this.buf.toString('utf8', this.pos, this.pos + len)
        this.pos += len
      } else throw new RangeError(`unknown tuple value kind ${JSON.stringify(kind)}`)
    }
    return out
  }
}

export function decodeMessage(buf: Buffer): PgMessage {
  const r = new Reader(buf)
  const tag = String.fromCharCode(r.u8())
  switch (tag) {
    case 'B':
      return { tag: 'begin', finalLsn: r.u64(), time: r.time(), xid: r.u32() }
    case 'C': {
      r.u8() // flags, unused
      return { tag: 'commit', lsn: r.u64(), endLsn: r.u64(), time: r.time() }
    }
    case 'O':
      r.u64()
      return { tag: 'origin', name: r.cstring() }
    case 'R': {
      const oid = r.u32()
      const namespace = r.cstring()
      const name = r.cstring()
      const identity = String.fromCharCode(r.u8())
      const n = r.i16()
      const columns: RelationColumn[] = []
      for (let i = 0; i < n; i++) {
        const flags = r.u8()
        columns.push({ key: (flags & 1) === 1, name: r.cstring(), typeOid: r.u32(), typmod: r.i32() })
      }
      return { tag: 'relation', oid, namespace, name, identity, columns }
    }
    case 'Y':
      return { tag: 'type', oid: r.u32(), namespace: r.cstring(), name: r.cstring() }
    case 'I': {
      const oid = r.u32()
      if (String.fromCharCode(r.u8()) !== 'N') throw new RangeError('insert without a new tuple')
      return { tag: 'insert', oid, row: r.tuple() }
    }
    case 'U': {
      const oid = r.u32()
      let kind = String.fromCharCode(r.u8())
      let old: TupleValue[] | null = null
      let oldKind: 'K' | 'O' | null = null
      if (kind === 'K' || kind === 'O') {
        oldKind = kind
        old = r.tuple()
        kind = String.fromCharCode(r.u8())
      }
      if (kind !== 'N') throw new RangeError('update without a new tuple')
      return { tag: 'update', oid, old, oldKind, row: r.tuple() }
    }
    case 'D': {
      const oid = r.u32()
      const kind = String.fromCharCode(r.u8())
      if (kind !== 'K' && kind !== 'O') throw new RangeError('delete without an old tuple')
      return { tag: 'delete', oid, oldKind: kind, old: r.tuple() }
    }
    case 'T': {
      const n = r.i32()
      const options = r.u8()
      const oids: number[] = []
      for (let i = 0; i < n; i++) oids.push(r.u32())
      return { tag: 'truncate', oids, cascade: (options & 1) !== 0, restartIdentity: (options & 2) !== 0 }
    }
    case 'M': {
      r.u8()
      r.u64()
      return { tag: 'message', prefix: r.cstring() }
    }
    default:
      throw new RangeError(`unknown pgoutput message ${JSON.stringify(tag)}`)
  }
}

/** An LSN as PostgreSQL prints it (X/Y). */
export function lsnText(lsn: bigint): string {
  return `${(lsn >> 32n).toString(16).toUpperCase()}/${(lsn & 0xffffffffn).toString(16).toUpperCase()}`
}

export function parseLsn(text: string): bigint {
  const [hi, lo] = text.split('/')
  return (BigInt(`0x${hi}`) << 32n) | BigInt(`0x${lo}`)
}
