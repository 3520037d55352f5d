/**
 * Compression of an entry's body (issue 16): brotli from `node:zlib`, the only strong codec Node 20 has
 * (zstd arrives in `node:zlib` with Node 22.15).
 *
 * Tuned by measurement (bench/slow.ts, the demo shop's workload): quality 5 gives the ratio of quality 6-9
 * within a percent at a third of quality 6's time on 256 KB blocks; quality 11 gains about 10 % more at 20 to
 * 50 times the time, which a till's PC should not spend. The window is brotli's default (4 MB): every
 * compressed body is at most MAX_INFLATED_BYTES.
 *
 * What this does not do: it never compresses across blocks. Each block inflates alone, so any block can be
 * read, verified and applied without its neighbours; the price is that a unit of one small sale (about 150
 * bytes) barely shrinks. Larger units (many sales in one capture batch) shrink to a quarter or less.
 *
 * Decompression is bounded: a body declares its inflated size, which may not exceed MAX_INFLATED_BYTES, and
 * brotli is stopped at that size; a body that inflates to more or to less is damage (BAD_ENTRY). So a crafted
 * block can make this allocate at most MAX_INFLATED_BYTES, whatever its ratio.
 */
import zlib from 'node:zlib'
import { MeshError } from './errors.ts'

/** The largest body this code compresses, and so the most a compressed body may inflate to. */
export const MAX_INFLATED_BYTES = 8 * 1024 * 1024

/** Bodies shorter than this are never compressed: brotli's framing would eat what it saves. */
export const MIN_COMPRESS_BYTES = 64

const QUALITY = 5

/**
 * `best`: for a log that appends rarely (batching, issue 16 item 3), quality 11 on bodies up to BEST_MAX_BYTES:
 * measured on the demo shop's minute groups (about 13 sales, 1.4 KB), 8 % smaller than quality 5 (quality 9: no
 * gain), at about 10 ms a group instead of 0.4 ms: nothing once a minute, too much for a unit per sale.
 */
export const BEST_MAX_BYTES = 8 * 1024

const params = (body: Uint8Array, best = false) => ({
  params: {
    [zlib.constants.BROTLI_PARAM_QUALITY]: best && body.byteLength <= BEST_MAX_BYTES ? 11 : QUALITY,
    [zlib.constants.BROTLI_PARAM_SIZE_HINT]: body.byteLength
  }
})

const inBounds = (body: Uint8Array) => body.byteLength >= MIN_COMPRESS_BYTES && body.byteLength <= MAX_INFLATED_BYTES
const saves = (body: Uint8Array, out: Buffer) => out.byteLength + 4 <= body.byteLength - (body.byteLength >> 5)

/** The body compressed, or null when that would not save at least 1/32 of it (or it is out of bounds). */
export function deflateBody(body: Uint8Array, best = false): Buffer | null {
  if (!inBounds(body)) return null
  const out = zlib.brotliCompressSync(body, params(body, best))
  return saves(body, out) ? out : null
}

/**
 * deflateBody on libuv's thread pool (the same brotli with the same parameters: the same bytes). It is no I/O:
 * the caller's thread runs on while another core compresses.
 */
export function deflateBodyAsync(body: Uint8Array, best = false): Promise<Buffer | null> {
  if (!inBounds(body)) return Promise.resolve(null)
  return new Promise((resolve, reject) =>
    zlib.brotliCompress(body, params(body, best), (err, out) =>
      err ? reject(err) : resolve(saves(body, out) ? out : null)
    )
  )
}

/**
 * Inflates a compressed body that declares `size` bytes. Throws MeshError.BAD_ENTRY when `size` exceeds the
 * bound, when the bytes are not brotli, or when they inflate to any other size than declared; never
 * allocates more than `size` bytes for the output.
 */
export function inflateBody(compressed: Uint8Array, size: number): Buffer {
  if (size > MAX_INFLATED_BYTES) {
    throw MeshError.BAD_ENTRY(`a compressed body declares ${size} bytes, more than the ${MAX_INFLATED_BYTES} allowed`)
  }
  let out: Buffer
  try {
    // maxOutputLength: brotli stops (RangeError) at size + 1 bytes instead of inflating on without limit.
    out = zlib.brotliDecompressSync(compressed, { maxOutputLength: size + 1 })
  } catch (err) {
    throw MeshError.wrap(err, MeshError.BAD_ENTRY, `a compressed body does not inflate to its declared ${size} bytes`)
  }
  if (out.byteLength !== size) {
    throw MeshError.BAD_ENTRY(`a compressed body inflates to ${out.byteLength} bytes, not its declared ${size}`)
  }
  return out
}

/**
 * Compression against a dictionary (format 3, issue 16): a batching log's small bodies, raw deflate
 * (node:zlib, RFC 1951) primed with a dictionary that an earlier block of the same log holds (a dictionary
 * block: entries.ts). A minute's group of a shop's sales repeats its names, products and the shape of its
 * rows from the groups before it far more than within itself; measured on the demo shop's day (bench/bytes.ts),
 * a group's body against a 16 KB dictionary of recent bodies is about 35 % smaller than brotli's best alone.
 * Brotli in Node has no custom dictionary, and zstd arrives only with Node 22.15; deflate's window is 32 KB,
 * so a longer dictionary would be of no use.
 */
export const MAX_DICTIONARY_BYTES = 32 * 1024

/** A body compressed against `dictionary`, or null when that would not save at least 1/32 of it. */
export function deflateWithDictionary(body: Uint8Array, dictionary: Uint8Array): Buffer | null {
  if (!inBounds(body) || body.byteLength > BEST_MAX_BYTES) return null
  const out = zlib.deflateRawSync(body, { level: 9, memLevel: 9, dictionary })
  return saves(body, out) ? out : null
}

/**
 * Inflates a body compressed against `dictionary` that declares `size` bytes; bounded as inflateBody is (a
 * body never declares more than BEST_MAX_BYTES here: the writer uses a dictionary for small bodies only).
 * Throws MeshError.BAD_ENTRY when it does not inflate to exactly `size` bytes with that dictionary.
 */
export function inflateWithDictionary(compressed: Uint8Array, size: number, dictionary: Uint8Array): Buffer {
  if (size > BEST_MAX_BYTES) {
    throw MeshError.BAD_ENTRY(
      `a body compressed against a dictionary declares ${size} bytes, more than the ${BEST_MAX_BYTES} allowed`
    )
  }
  let out: Buffer
  try {
    out = zlib.inflateRawSync(compressed, { dictionary, maxOutputLength: size + 1 })
  } catch (err) {
    throw MeshError.wrap(
      err,
      MeshError.BAD_ENTRY,
      `a body compressed against a dictionary does not inflate to its declared ${size} bytes`
    )
  }
  if (out.byteLength !== size) {
    throw MeshError.BAD_ENTRY(
      `a body compressed against a dictionary inflates to ${out.byteLength} bytes, not its declared ${size}`
    )
  }
  return out
}

/** A dictionary block's content compressed alone (brotli's best: a dictionary is written seldom). */
export function deflateDictionary(dictionary: Uint8Array): Buffer {
  if (dictionary.byteLength === 0 || dictionary.byteLength > MAX_DICTIONARY_BYTES) {
    throw new RangeError(`a dictionary holds 1 to ${MAX_DICTIONARY_BYTES} bytes, not ${dictionary.byteLength}`)
  }
  return zlib.brotliCompressSync(dictionary, {
    params: {
      [zlib.constants.BROTLI_PARAM_QUALITY]: 11,
      [zlib.constants.BROTLI_PARAM_SIZE_HINT]: dictionary.byteLength
    }
  })
}

/** The content of a dictionary block: at most MAX_DICTIONARY_BYTES, or BAD_ENTRY (see inflateBody). */
export function inflateDictionary(compressed: Uint8Array, size: number): Buffer {
  if (size === 0 || size > MAX_DICTIONARY_BYTES) {
    throw MeshError.BAD_ENTRY(`a dictionary block declares ${size} bytes, not 1 to ${MAX_DICTIONARY_BYTES}`)
  }
  return inflateBody(compressed, size)
}
