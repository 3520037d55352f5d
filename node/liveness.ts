/**
 * When this node was running and connected to the mesh, kept as time intervals in DIR/liveness.json (the last
 * LIVENESS_KEEP_MS). An origin asks it when a promotion of its dataset arrives without its handover: a
 * promotion signed while the origin was up and in touch with the mesh is a take-over against a live origin and
 * is refused; one signed while it was off or cut off is the failover the mesh is for, and the origin is fenced.
 *
 * "Connected" is measured the way the other sites judge this one: a new report of another member reached this
 * site (directly or relayed). Each such arrival extends the current interval; a gap longer than GAP_BEATS
 * heartbeats starts a new one. The evidence is this site's own clock only; what it does not do is prove
 * anything to another site (a member that may promote can still date its promotion to a time this site was off).
 */
import type { MeshNode } from './node.ts'
import { readJsonFile, writeFileAtomic } from './state.ts'

/** How long the intervals are kept. */
export const LIVENESS_KEEP_MS = 30 * 24 * 3600_000
/** A gap in what this site hears longer than this many heartbeats ends an interval. */
const GAP_BEATS = 3

export class Liveness {
  /** [start, end] pairs, oldest first, in this site's clock. */
  private intervals: Array<[number, number]> = []
  private saveTimer: NodeJS.Timeout | null = null

  constructor(private readonly node: MeshNode) {}

  private get file(): string {
    return `${this.node.paths.dir}/liveness.json`
  }

  private get gapMs(): number {
    return GAP_BEATS * (this.node.opts.heartbeatMs ?? 5000)
  }

  load(): void {
    const j = readJsonFile(this.file) as Array<[number, number]> | null
    this.intervals = (j ?? []).filter((x) => Array.isArray(x) && x.length === 2 && x[0] <= x[1])
  }

  /** A new report of another member arrived: this site was running and connected at `at`. */
  heard(at = Date.now()): void {
    const last = this.intervals[this.intervals.length - 1]
    if (last && at - last[1] <= this.gapMs) last[1] = Math.max(last[1], at)
    else this.intervals.push([at, at])
    const cut = at - LIVENESS_KEEP_MS
    while (this.intervals.length > 0 && this.intervals[0][1] < cut) this.intervals.shift()
    if (!this.saveTimer) {
      this.saveTimer = setTimeout(() => {
        this.saveTimer = null
        this.save()
      }, 1000)
    }
  }

  /**
   * True when this site was running and connected through the whole of [from, to] (an interval still open,
   * whose last arrival is within the gap of now, counts as lasting until now).
   */
  liveThrough(from: number, to: number, now = Date.now()): boolean {
    const n = this.intervals.length
    for (let i = 0; i < n; i++) {
      const [s, e] = this.intervals[i]
      const end = i === n - 1 && now - e <= this.gapMs ? Math.max(e, now) : e
      if (s <= from && to <= end) return true
    }
    return false
  }

  close(): void {
    if (this.saveTimer) clearTimeout(this.saveTimer)
    this.saveTimer = null
    this.save()
  }

  private save(): void {
    try {
      writeFileAtomic(this.file, `${JSON.stringify(this.intervals)}\n`, 0o600)
    } catch (err) {
      this.node.logger.warn('cannot save liveness.json', { error: (err as Error).message })
    }
  }
}
