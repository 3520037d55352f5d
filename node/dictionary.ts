/**
 * The compression dictionaries a batching log writes (format 3, issue 16): which bytes a new dictionary block
 * holds, and when one is due. A dictionary is the last DICTIONARY_BYTES of the bodies this log appended
 * recently, as they were before compression; the groups that follow are compressed against it
 * (protocol/compression.ts) until DICTIONARY_EVERY_BYTES of bodies later, when a fresh one replaces it (the
 * shop's names and products stay, its ids and times move on).
 *
 * Tuned on the demo shop's day at one-minute groups (bench/bytes.ts; about 1.4 KB of body a group): 16 KB every
 * ~110 groups gave the fewest bytes per row change counting the dictionary blocks themselves (8 KB: +3 %,
 * 32 KB: +2 %; every 60 groups: +3 %, every 240: +15 %).
 *
 * Only memory: after a start the log writes its first dictionary once it has seen FIRST_DICTIONARY_BYTES of
 * bodies (the first one holds what there is, up to DICTIONARY_BYTES).
 */
import type { Dictionary } from '../protocol/index.ts'

export const DICTIONARY_BYTES = 16 * 1024
export const DICTIONARY_EVERY_BYTES = 160 * 1024
/** The first dictionary after a start comes sooner, from what there is: 4 % fewer bytes over the first 77 groups. */
export const FIRST_DICTIONARY_BYTES = 8 * 1024

export class DictionaryWriter {
  /** The dictionary block new entries are compressed against, once one was appended. */
  current: Dictionary | null = null
  private recent: Uint8Array[] = []
  private recentBytes = 0
  /** Body bytes appended since `current` was made. */
  private since = 0

  /** A body the log appended (its bytes before compression). */
  add(body: Uint8Array): void {
    const tail = Buffer.from(body.subarray(Math.max(0, body.byteLength - DICTIONARY_BYTES)))
    this.recent.push(tail)
    this.recentBytes += tail.byteLength
    while (this.recent.length > 1 && this.recentBytes - this.recent[0].byteLength >= DICTIONARY_BYTES) {
      this.recentBytes -= (this.recent.shift() as Uint8Array).byteLength
    }
    this.since += body.byteLength
  }

  /** The content of a new dictionary when one is due, else null. */
  due(): Uint8Array | null {
    if (this.current === null ? this.recentBytes < FIRST_DICTIONARY_BYTES : this.since < DICTIONARY_EVERY_BYTES) {
      return null
    }
    if (this.current !== null && this.recentBytes < DICTIONARY_BYTES) return null
    return Buffer.concat(this.recent).subarray(-DICTIONARY_BYTES)
  }

  /** `d` was appended (with the unit that first uses it): entries are compressed against it from now on. */
  use(d: Dictionary): void {
    this.current = d
    this.since = 0
  }

  /** An append failed: the dictionary may not be in the log, so none is used until a new one is appended. */
  forget(): void {
    this.current = null
  }
}
