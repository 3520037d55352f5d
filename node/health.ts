/**
 * This site's health for its report (versions, free disk space, paused snapshots) and the contact history
 * usual hours are learned from. Everything is measured on a timer and kept, so that building a report (every
 * change, every heartbeat) never waits on a disk, a database server or the application's version command.
 */
import { engineFor } from '../adapters/index.ts'
import type { SiteHealth } from '../protocol/index.ts'
import { measureDisks, snapshotRoom } from './disk.ts'
import type { MeshNode } from './node.ts'
import { listSnapshots } from './snapshots.ts'
import { DEFAULT_THRESHOLDS } from './status.ts'
import { readContacts, recordContact, writeContacts, type ContactHistory } from './usual-hours.ts'
import { hex } from './util.ts'
import { osDescription, readAppVersion, type AppVersionSource } from './versions.ts'
import fs from 'node:fs'

/** How often free space is measured, and versions (the databases', the application's) read again. */
const DISK_EVERY_MS = 60_000
const VERSIONS_EVERY_MS = 10 * 60_000

export class Health {
  private current: SiteHealth
  private contacts: ContactHistory = {}
  private contactsDirty = false
  private readonly timers: NodeJS.Timeout[] = []
  private versionsAt = 0
  private refreshing = false
  /** The folders measured for free space, and the databases they were found for. */
  private places: Array<{ what: string; folder: string }> = []
  private heldKey: string | null = null

  /** The node's options are not set yet when this is made (a field of MeshNode): start() reads them. */
  constructor(private readonly node: MeshNode) {
    this.current = {
      branchmesh: '',
      node: process.version,
      os: osDescription(),
      sqlite: '',
      postgres: '',
      app: '',
      appError: '',
      disks: [],
      paused: ''
    }
  }

  start(): void {
    const software = this.node.opts.software
    this.current.branchmesh = software.startsWith('branchmesh/') ? software.slice('branchmesh/'.length) : ''
    this.contacts = readContacts(this.node.paths.dir)
    void this.refresh()
    this.timers.push(setInterval(() => void this.refresh(), DISK_EVERY_MS))
    this.timers.push(setInterval(() => this.saveContacts(), DISK_EVERY_MS))
  }

  close(): void {
    for (const t of this.timers) clearInterval(t)
    this.saveContacts()
  }

  /** What this site's report says of its health (measured at most a minute ago). */
  report(): SiteHealth {
    return { ...this.current, disks: this.current.disks.map((d) => ({ ...d })) }
  }

  /** A report of the site with this key arrived now: one more mark in its contact history. */
  heard(key: Uint8Array, at = Date.now()): void {
    recordContact(this.contacts, hex(key), at)
    this.contactsDirty = true
  }

  /** The contact history of every site, for status. */
  history(): ContactHistory {
    return this.contacts
  }

  /**
   * Whether a snapshot of `dataset` may be written now: measured afresh, with the newest snapshot's size as
   * the estimate. When it may not, snapshots are paused (said in the log once, and in every report) until a
   * later call finds room.
   */
  roomForSnapshot(dataset: string): boolean {
    const node = this.node
    const t = node.opts.thresholds ?? DEFAULT_THRESHOLDS
    const newest = listSnapshots(node.paths.dir, dataset).pop()
    let estimate = 0
    try {
      if (newest) estimate = fs.statSync(newest.file).size
    } catch {
      // Pruned meanwhile: no estimate.
    }
    const [disk] = measureDisks([{ what: 'data directory', folder: node.paths.dir }])
    const why = disk ? snapshotRoom(disk.free, disk.total, estimate, t) : null
    if (why && !this.current.paused) node.logger.warn('snapshots paused: the disk is nearly full', { reason: why })
    if (!why && this.current.paused) node.logger.info('snapshots resumed: the disk has room again')
    if ((why ?? '') !== this.current.paused) {
      this.current.paused = why ?? ''
      node.reports.markDirty()
    }
    return why === null
  }

  private saveContacts(): void {
    if (!this.contactsDirty) return
    this.contactsDirty = false
    try {
      writeContacts(this.node.paths.dir, this.contacts)
    } catch (err) {
      this.node.logger.warn('cannot save the contact history', { error: (err as Error).message })
    }
  }

  private async refresh(): Promise<void> {
    const node = this.node
    if (this.refreshing || node.closing) return
    this.refreshing = true
    try {
      // The databases' versions and folders are asked on the versions cadence (a PostgreSQL server is a
      // connection each time), and when the set of databases held changes; free space every minute.
      const held = [
        ...[...node.roles.origins.values()].map((o) => ({ info: o.info, path: o.path })),
        ...[...node.roles.replicas.values()].map((r) => ({ info: r.info, path: r.path }))
      ]
      const heldKey = held.map((h) => `${h.info.id}:${h.path}`).join('\n')
      const versions = Date.now() - this.versionsAt >= VERSIONS_EVERY_MS
      const found = new Map<string, Set<string>>()
      const asked = versions || heldKey !== this.heldKey
      if (asked) {
        this.heldKey = heldKey
        this.places = [{ what: 'data directory', folder: node.paths.dir }]
        for (const h of held) {
          const about = await within(engineFor(h.info.engine).about?.(h.path), 3000)
          if (!about) continue
          if (about.folder) this.places.push({ what: h.info.name, folder: about.folder })
          const [name] = about.version.split(' ')
          if (!found.has(name)) found.set(name, new Set())
          found.get(name)!.add(about.version.slice(name.length + 1))
        }
      }
      const places = this.places.length ? this.places : [{ what: 'data directory', folder: node.paths.dir }]
      const next = { ...this.current, disks: measureDisks(places) }
      if (asked) {
        next.sqlite = [...(found.get('SQLite') ?? [])].sort().join(', ')
        next.postgres = [...(found.get('PostgreSQL') ?? [])].sort().join(', ')
      }
      if (versions) {
        this.versionsAt = Date.now()
        const src = node.opts.appVersion
        if (src) {
          const app = await readAppVersion(src, node.paths.dir)
          if (app.error && app.error !== this.current.appError) {
            node.logger.warn('cannot read the application version', {
              error: app.error,
              hint: 'Fix appVersion in config.json (a version, {"file": ...} or {"command": ...}).'
            })
          }
          next.app = app.version
          next.appError = app.error
        }
      }
      const changed = JSON.stringify(next) !== JSON.stringify(this.current)
      this.current = next
      if (changed) node.reports.markDirty()
    } catch (err) {
      node.logger.warn("cannot measure this site's health", { error: (err as Error).message })
    } finally {
      this.refreshing = false
    }
  }
}

/** What `p` resolves to, or null when it is absent, fails or takes longer than `ms`. */
async function within<T>(p: Promise<T> | undefined, ms: number): Promise<T | null> {
  if (!p) return null
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<null>((resolve) => (timer = setTimeout(() => resolve(null), ms)))
  try {
    return await Promise.race([p.catch(() => null), late])
  } finally {
    clearTimeout(timer)
  }
}

export type { AppVersionSource }
