/**
 * Column values in the log. A value keeps its storage class exactly:
 *
 *   null        NULL
 *   bigint      INTEGER (64-bit, all of it; never a JS number, which would round past 2^53)
 *   number      REAL (IEEE 754 double, bit for bit: -0.0 stays -0.0)
 *   string      TEXT (UTF-8)
 *   RawText     TEXT whose bytes are not valid UTF-8 (SQLite stores what it is given): its bytes, exactly
 *   Uint8Array  BLOB (any bytes, zeros included)
 *
 * The encoding is a tag byte then the payload. Small integers take a varint; the rest take 8 bytes.
 * This module does not interpret engine types (a PostgreSQL numeric travels as TEXT with its column's
 * declared type in the schema entry).
 */
import c from 'compact-encoding'
import type { State } from 'compact-encoding'

/**
 * TEXT whose bytes are not valid UTF-8, for example `CAST(x'ff' AS TEXT)` in SQLite. A JS string cannot hold
 * such bytes (decoding turns them into U+FFFD), so they travel as they are, still as TEXT. Valid UTF-8 TEXT
 * is always a string, never this.
 */
export class RawText {
  readonly bytes: Uint8Array
  constructor(bytes: Uint8Array) {
    this.bytes = bytes
  }
}

export type Value = null | bigint | number | string | Uint8Array | RawText

const TAG_NULL = 0
const TAG_INT = 1 // zig-zag varint, |v| < 2^52
const TAG_INT64 = 2 // zig-zag fixed 8 bytes
const TAG_REAL = 3
const TAG_TEXT = 4
const TAG_BLOB = 5
// Since branchmesh 0.2: only in an entry with the RAW_TEXT flag, so that older software refuses the entry as
// written by newer software (UNKNOWN_FLAGS) rather than as damaged.
const TAG_RAW_TEXT = 6

/**
 * entries.ts's link to the RAW_TEXT flag. `seen` counts raw TEXT values preencoded (or encoded) since entries.ts
 * reset it (the encoder sets the flag from it); `allowed` is set while decoding an entry that has the flag. Encoding
 * and decoding are synchronous, so one module-level record is enough.
 */
export const rawTextState = { seen: 0, allowed: false }

// compact-encoding's zig-zag int holds -2^52 .. 2^52 - 1 (SAFE_N below).
const INT64_MIN = -(2n ** 63n)
const INT64_MAX = 2n ** 63n - 1n
/**
 * 2^52 - 1. A bigint within +-SAFE_N converts to a number exactly, and one outside converts to a number
 * outside (2^52 is a double): so one conversion tells small integers, where two bigint comparisons did.
 */
const SAFE_N = 2 ** 52 - 1

/** compact-encoding's zig-zag of a small integer (-0 is 0: a bigint has no -0). */
function zigZag(n: number): number {
  return n < 0 ? 2 * -n - 1 : 2 * n
}

/**
 * A REAL's 8 bytes as compact-encoding's float64 writes them (little endian): through a scratch array where
 * this machine is little endian (no DataView per buffer), else through a DataView.
 */
const scratch = new Float64Array(1)
const scratchBytes = new Uint8Array(scratch.buffer)
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1
function writeReal(state: State, v: number): void {
  const buf = state.buffer as Uint8Array
  if (!LITTLE_ENDIAN) {
    new DataView(buf.buffer, buf.byteOffset, buf.byteLength).setFloat64(state.start, v, true)
    state.start += 8
    return
  }
  scratch[0] = v
  let at = state.start
  for (let i = 0; i < 8; i++) buf[at++] = scratchBytes[i]
  state.start = at
}

/** The same bytes as before (tag, then compact-encoding's own layouts), with fewer calls on the hot path. */
export const value = {
  preencode(state: State, v: Value): void {
    if (v === null) {
      state.end++
      return
    }
    switch (typeof v) {
      case 'bigint': {
        const n = Number(v)
        if (n <= SAFE_N && n >= -SAFE_N) {
          const z = zigZag(n)
          state.end += z <= 0xfc ? 2 : z <= 0xffff ? 4 : z <= 0xffffffff ? 6 : 10
        } else state.end += 9
        return
      }
      case 'number':
        state.end += 9
        return
      case 'string':
        state.end++
        c.string.preencode(state, v)
        return
      default:
        state.end++
        if (v instanceof RawText) {
          rawTextState.seen++
          c.uint8array.preencode(state, v.bytes)
        } else c.uint8array.preencode(state, v)
    }
  },
  encode(state: State, v: Value): void {
    const buf = state.buffer as Uint8Array
    if (v === null) {
      buf[state.start++] = TAG_NULL
      return
    }
    switch (typeof v) {
      case 'bigint': {
        const n = Number(v)
        if (n <= SAFE_N && n >= -SAFE_N) {
          buf[state.start++] = TAG_INT
          const z = zigZag(n)
          if (z <= 0xfc) buf[state.start++] = z
          else c.uint.encode(state, z)
          return
        }
        if (v < INT64_MIN || v > INT64_MAX) throw new RangeError('integer outside 64 bits')
        buf[state.start++] = TAG_INT64
        c.bigint64.encode(state, v)
        return
      }
      case 'number':
        buf[state.start++] = TAG_REAL
        writeReal(state, v)
        return
      case 'string':
        buf[state.start++] = TAG_TEXT
        c.string.encode(state, v)
        return
      default:
        if (v instanceof RawText) {
          rawTextState.seen++
          buf[state.start++] = TAG_RAW_TEXT
          c.uint8array.encode(state, v.bytes)
        } else {
          buf[state.start++] = TAG_BLOB
          c.uint8array.encode(state, v)
        }
    }
  },
  decode(state: State): Value {
    if (state.start >= state.end) throw new RangeError('Out of bounds')
    const tag = (state.buffer as Uint8Array)[state.start++]
    switch (tag) {
      case TAG_NULL:
        return null
      case TAG_INT:
        return BigInt(c.int.decode(state))
      case TAG_INT64:
        return c.bigint64.decode(state)
      case TAG_REAL:
        return c.float64.decode(state)
      case TAG_TEXT:
        return c.string.decode(state)
      case TAG_BLOB:
        // A copy, so a decoded value never pins (or aliases) the whole block buffer.
        return new Uint8Array(c.uint8array.decode(state))
      case TAG_RAW_TEXT:
        if (!rawTextState.allowed) throw new RangeError('raw TEXT value in an entry without the RAW_TEXT flag')
        return new RawText(new Uint8Array(c.uint8array.decode(state)))
      default:
        throw new RangeError(`unknown value tag ${tag}`)
    }
  }
}

/** Two byte strings (keys, hashes) hold the same bytes. */
export function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return (
    Buffer.compare(
      Buffer.from(a.buffer, a.byteOffset, a.byteLength),
      Buffer.from(b.buffer, b.byteOffset, b.byteLength)
    ) === 0
  )
}

/** Two values are the same value: same storage class and same bits. */
export function sameValue(a: Value, b: Value): boolean {
  if (a === null || b === null) return a === b
  if (typeof a !== typeof b) return false
  if (typeof a === 'number') return Object.is(a, b)
  if (a instanceof Uint8Array) return b instanceof Uint8Array && sameBytes(a, b)
  if (a instanceof RawText) return b instanceof RawText && sameBytes(a.bytes, b.bytes)
  return a === b
}
