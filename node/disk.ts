/**
 * Disk space: how much is free where the data directory and the databases are, and how little is too little.
 * A full disk stops capture (the database's own writes fail first), apply and the logs at once, so every report
 * carries it and status warns well before.
 *
 * Measured with fs.statfs: the space free to this process (not counting blocks reserved for root), on the
 * disk holding each folder; two folders on one disk are measured once.
 */
import fs from 'node:fs'

export interface DiskSpace {
  /** What is there: 'data directory', or the names of the datasets whose databases are there. */
  what: string
  path: string
  free: number
  total: number
}

export interface DiskThresholds {
  /** Free space under this share (percent) of the disk, or under this many MB, is a warning / critical. */
  diskWarnPercent: number
  diskWarnMB: number
  diskCritPercent: number
  diskCritMB: number
}

/** Measures the disks holding `places` (folder -> what is there); a folder that cannot be measured is left out. */
export function measureDisks(places: Array<{ what: string; folder: string }>): DiskSpace[] {
  const byDevice = new Map<string, DiskSpace>()
  for (const p of places) {
    try {
      const dev = String(fs.statSync(p.folder).dev)
      const have = byDevice.get(dev)
      if (have) {
        if (!have.what.split(', ').includes(p.what)) have.what += `, ${p.what}`
        continue
      }
      const s = fs.statfsSync(p.folder)
      byDevice.set(dev, { what: p.what, path: p.folder, free: s.bavail * s.bsize, total: s.blocks * s.bsize })
    } catch {
      // A folder that is gone or unreadable: its database's own errors say more than a missing figure.
    }
  }
  return [...byDevice.values()]
}

/** 'CRIT', 'WARN' or null for a disk with `free` of `total` bytes left. */
export function diskLevel(free: number, total: number, t: DiskThresholds): 'CRIT' | 'WARN' | null {
  const mb = free / 1048576
  const pct = total > 0 ? (free * 100) / total : 100
  if (pct < t.diskCritPercent || mb < t.diskCritMB) return 'CRIT'
  if (pct < t.diskWarnPercent || mb < t.diskWarnMB) return 'WARN'
  return null
}

/** "1.5 GB", "300 MB". */
export function sizeText(bytes: number): string {
  if (bytes >= 1024 ** 3) return `${(bytes / 1024 ** 3).toFixed(1)} GB`
  return `${Math.round(bytes / 1048576)} MB`
}

/**
 * Whether a snapshot of about `estimate` bytes may be written on a disk with `free` of `total` bytes left:
 * not when it would leave the disk under the critical thresholds. A reason when it may not.
 */
export function snapshotRoom(free: number, total: number, estimate: number, t: DiskThresholds): string | null {
  const after = free - estimate
  if (diskLevel(after, total, t) !== 'CRIT') return null
  return (
    `${sizeText(free)} free of ${sizeText(total)}` +
    (estimate > 0 ? `, and a snapshot takes about ${sizeText(estimate)}` : '') +
    `: snapshots are paused until there is more room (capture and replication go on)`
  )
}
