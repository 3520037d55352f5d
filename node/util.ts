/** Small helpers the node's parts share. */
import { distance } from 'fastest-levenshtein'

export const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex')

/** A key shortened for logs. */
export const short = (b: Uint8Array): string => hex(b).slice(0, 12)

/** A name as a file name: anything but letters, digits, '.', '_' and '-' becomes '_'. */
export const fileSafe = (s: string): string => s.replace(/[^A-Za-z0-9._-]+/g, '_')

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

/**
 * "1 entry", "3 entries", "0 rows": a number with its noun in the right form (the plural is the noun and "s"
 * unless given). Every count a person reads goes through it, so that no output says "1 datasets".
 */
export function count(n: number, noun: string, plural = `${noun}s`): string {
  return `${n} ${n === 1 ? noun : plural}`
}

/**
 * The known word closest to `word`, if it is close enough to be what was meant ("Did you mean ...?" for a
 * mistyped command, flag, config key or dataset name); null otherwise.
 */
export function nearest(word: string, known: readonly string[]): string | null {
  let best: string | null = null
  let bestD = Infinity
  for (const k of known) {
    const d = distance(word.toLowerCase(), k.toLowerCase())
    if (d < bestD) {
      bestD = d
      best = k
    }
  }
  return bestD <= Math.max(2, Math.floor(word.length / 3)) ? best : null
}
