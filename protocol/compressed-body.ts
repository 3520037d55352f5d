/**
 * How a compressed body sits in its block (flags F_COMPRESSED and F_DICTIONARY, issue 16), and the body of a
 * dictionary block (format 3). entries.ts writes the block around these (version, kind, flags, checksum) and
 * decodes the inflated body as a plain one; the codecs themselves, their tuning and their bounds, are
 * compression.ts.
 */
import c from 'compact-encoding'
import type { State } from 'compact-encoding'
import {
  deflateDictionary,
  deflateWithDictionary,
  inflateBody,
  inflateDictionary,
  inflateWithDictionary
} from './compression.ts'
import type { EncodeOptions, Entry, KindName } from './entries.ts'
import { MeshError } from './errors.ts'

/**
 * Schema, transaction and snapshot entries: the body is brotli-compressed (issue 16; protocol/compression.ts).
 * Layout: a transaction's `time` first, uncompressed (peekEntry reads it), then `uint` the inflated size of
 * the rest of the body, then the compressed rest up to the checksum.
 */
export const F_COMPRESSED = 16
/**
 * Schema, transaction and snapshot entries (format 3): the body is raw deflate primed with the content of the
 * dictionary block that the entry names (protocol/compression.ts). Layout: a transaction's `time` first, then
 * `uint` the inflated size of the rest of the body (at most BEST_MAX_BYTES), `uint` the block number of the
 * dictionary in the same log (before this block), then the compressed rest up to the checksum. Never with
 * F_COMPRESSED. A reader fetches that one block first (node/log.ts): a block depends on no other.
 */
export const F_DICTIONARY = 32
export const COMPRESSIBLE: KindName[] = ['schema', 'transaction', 'snapshot']

/** A dictionary block's content, and the block it is at in its log. */
export interface Dictionary {
  seq: number
  bytes: Uint8Array
}

/** A block's body after version, kind and flags: `pre` sizes it, `write` writes it. */
export type Writer = (s: State) => void

/** The body compressed against the options' dictionary when that is smaller than `packed` (brotli's), or null. */
export function againstDictionary(rest: Uint8Array, packed: Buffer | null, opts: EncodeOptions): Buffer | null {
  if (opts.compress !== 'best' || !opts.dictionary) return null
  let d: Buffer | null
  try {
    d = deflateWithDictionary(rest, opts.dictionary.bytes)
  } catch (err) {
    throw MeshError.wrap(err, MeshError.BAD_ENTRY, 'cannot compress a body against a dictionary')
  }
  // The dictionary's block number costs a few bytes more in the block.
  const ref = c.state()
  c.uint.preencode(ref, opts.dictionary.seq)
  return d !== null && (packed === null || d.byteLength + ref.end < packed.byteLength) ? d : null
}

/**
 * The body of an entry whose body compresses, from the body's `bytes`: a transaction's leading time stays
 * outside the compressed part (`rest` is the part to compress). `finish` lays out the body from `rest`
 * compressed (deflateBody), with the flag that says so (F_COMPRESSED), or gives null when it did not compress;
 * with `dictionary`, from `rest` compressed against the dictionary at that block (F_DICTIONARY).
 */
export function compressedBody(
  bytes: Uint8Array,
  entry: Entry
): {
  rest: Uint8Array
  finish: (packed: Buffer | null, dictionary?: number) => { how: number; pre: Writer; write: Writer } | null
} {
  const keep = c.state()
  if (entry.kind === 'transaction') c.uint.preencode(keep, entry.time)
  const rest = bytes.subarray(keep.end)
  const finish = (packed: Buffer | null, dictionary?: number) => {
    if (packed === null) return null
    const pre = (s: State) => {
      s.end += keep.end
      c.uint.preencode(s, rest.byteLength)
      if (dictionary !== undefined) c.uint.preencode(s, dictionary)
      s.end += packed.byteLength
    }
    const write = (s: State) => {
      c.raw.encode(s, bytes.subarray(0, keep.end))
      c.uint.encode(s, rest.byteLength)
      if (dictionary !== undefined) c.uint.encode(s, dictionary)
      c.raw.encode(s, packed)
    }
    const how = dictionary !== undefined ? F_DICTIONARY : F_COMPRESSED
    return { how, pre, write }
  }
  return { rest, finish }
}

/**
 * The body of a compressed block inflated, with a transaction's time before it as the body decoder expects;
 * `state` is at the body's start and ends before the checksum. Throws BAD_ENTRY (see inflateBody); with
 * F_DICTIONARY, also when `dictionary` is not the one the block names (the log's reader fetches that one).
 */
export function inflatedBody(
  kind: KindName,
  flags: number,
  block: Uint8Array,
  state: State,
  end: number,
  dictionary: Dictionary | null
): State {
  const at = state.start
  let size: number
  let keepEnd: number
  let seq = -1
  try {
    if (kind === 'transaction') c.uint.decode(state)
    keepEnd = state.start
    size = c.uint.decode(state)
    if (flags & F_DICTIONARY) seq = c.uint.decode(state)
  } catch (err) {
    throw MeshError.wrap(err, MeshError.BAD_ENTRY, `truncated compressed ${kind} entry`)
  }
  const keep = block.subarray(at, keepEnd)
  let rest: Buffer
  if (flags & F_DICTIONARY) {
    if (flags & F_COMPRESSED)
      throw MeshError.BAD_ENTRY(`a ${kind} entry is flagged compressed both alone and against a dictionary`)
    if (dictionary === null) {
      throw MeshError.BAD_ENTRY(
        `a ${kind} entry is compressed against the dictionary at block ${seq}, which was not given`,
        {
          context: { dictionary: seq }
        }
      )
    }
    if (dictionary.seq !== seq) {
      throw MeshError.BAD_ENTRY(
        `a ${kind} entry names the dictionary at block ${seq}, not the one at ${dictionary.seq}`
      )
    }
    rest = inflateWithDictionary(block.subarray(state.start, end), size, dictionary.bytes)
  } else rest = inflateBody(block.subarray(state.start, end), size)
  const joined = keep.byteLength === 0 ? rest : Buffer.concat([keep, rest])
  return c.state(0, joined.byteLength, joined)
}

/**
 * The body of a dictionary block (K_DICTIONARY in entries.ts): `uint` its size (1 to MAX_DICTIONARY_BYTES),
 * then the bytes brotli-compressed.
 */
export function dictionaryBody(bytes: Uint8Array): { pre: Writer; write: Writer } {
  const packed = deflateDictionary(bytes)
  const pre = (s: State) => {
    c.uint.preencode(s, bytes.byteLength)
    s.end += packed.byteLength
  }
  const write = (s: State) => {
    c.uint.encode(s, bytes.byteLength)
    c.raw.encode(s, packed)
  }
  return { pre, write }
}

/** The content of a dictionary block, from its flags and body (`state` at the body, ending at `end`). */
export function decodeDictionaryBody(flags: number, block: Uint8Array, state: State, end: number): Uint8Array {
  if (flags !== 0) {
    const bits = flags.toString(16)
    throw MeshError.UNKNOWN_FLAGS(`dictionary block has unknown flag bits 0x${bits}`, { context: { flags } })
  }
  let size: number
  try {
    size = c.uint.decode(state)
  } catch (err) {
    throw MeshError.wrap(err, MeshError.BAD_ENTRY, 'truncated dictionary block')
  }
  return inflateDictionary(block.subarray(state.start, end), size)
}
