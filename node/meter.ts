/** Per-second counts over the last hour and today's total (node/traffic.ts, node/loss.ts, node/dht-traffic.ts). */

const HOUR = 3600

/** Bytes per second over the last hour (one slot per second), and today's total. */
export class Meter {
  private readonly ring = new Float64Array(HOUR)
  private second = 0
  today = 0
  private day = ''

  add(n: number, now: number): void {
    this.advance(now)
    this.ring[this.second % HOUR] += n
    this.today += n
  }

  /** Bytes in the last `seconds` whole seconds (the current one not included). */
  sum(seconds: number, now: number): number {
    this.advance(now)
    let t = 0
    for (let i = 1; i <= Math.min(seconds, HOUR - 1); i++) t += this.ring[(this.second - i + HOUR) % HOUR]
    return t
  }

  /** How many of the last `seconds` whole seconds had anything added. */
  seconds(seconds: number, now: number): number {
    this.advance(now)
    let n = 0
    for (let i = 1; i <= Math.min(seconds, HOUR - 1); i++) if (this.ring[(this.second - i + HOUR) % HOUR] > 0) n++
    return n
  }

  lastHour(now: number): number {
    return this.sum(HOUR - 1, now) + this.ring[this.second % HOUR]
  }

  /** Today's figure as kept across a restart (see Traffic.load). */
  restore(day: string, bytes: number): void {
    this.day = day
    this.today = bytes
  }

  get dayName(): string {
    return this.day
  }

  private advance(now: number): void {
    const s = Math.floor(now / 1000)
    const day = localDay(now)
    if (day !== this.day) {
      this.day = day
      this.today = 0
    }
    if (s <= this.second) return
    const steps = Math.min(HOUR, s - this.second)
    for (let i = 1; i <= steps; i++) this.ring[(this.second + i) % HOUR] = 0
    this.second = s
  }
}

export function localDay(ms: number): string {
  const d = new Date(ms)
  return `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, '0')}-${String(d.getDate()).padStart(2, '0')}`
}
