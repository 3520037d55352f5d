/** "Did you mean ...?" for a mistyped command, flag or config key. */
import { distance } from 'fastest-levenshtein'

/** The known word closest to `word`, if it is close enough to be what was meant; null otherwise. */
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
