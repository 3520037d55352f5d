/**
 * Fast reconnection to known members (issue 16): a site whose link was down, or whose PC slept, for hours is
 * connected to every reachable member again within 30 s of coming back.
 *
 * Hyperswarm alone does not promise that: it retries a peer after about 1 s, 5 s and 15 s, then every 10 to 12
 * minutes (lib/retry-timer.js), and drops a peer found on a topic after three failures. Two things bound it:
 *
 * - Its retry steps are a constructor option (`backoffs`, not in its README): the node passes `retryMs`,
 *   default 1, 5, 15 and 20 s. Its timers fire at 0.66 to 1.32 times a step (lib/bulk-timer.js), so the
 *   longest wait is about 27 s.
 * - This watcher, every `reconnectWatchMs`, dials each member the swarm holds no connection to once its own
 *   step is due (the same steps, see due() for which site of a pair dials first; `swarm.joinPeer` queues an
 *   attempt at once, even for a peer hyperswarm has put on its slowest timer), and starts the steps again, and
 *   refreshes the mesh topic, when the machine's network interfaces change (a link that came up again) or the
 *   DHT comes back online.
 * - A node that was frozen (a PC that slept, a process SIGSTOPped) finds its own ticks late by more than
 *   FROZEN_MS: its connections look open to it but the other sites dropped them long ago, and such a
 *   connection takes about a minute to time out. It drops them at once and dials every member.
 *
 * What it does not do: it never dials more often than the steps allow, so an unreachable member costs one DHT
 * lookup per step (a few KB), not a storm on a slow link; and it says once per outage, as a WARN, that a member
 * stays unreachable, and once, as INFO, when it is back.
 */
import os from 'node:os'
import type { SwarmConnection } from 'hyperswarm'
import type { MeshNode } from './node.ts'
import { hex, short } from './util.ts'

/** Retry steps in ms: hyperswarm's first three, and 20 s instead of its 10 minutes. */
export const DEFAULT_RETRY_MS = [1000, 5000, 15_000, 20_000]
/** The most a step may be: with hyperswarm's timer slack (x1.32) a try still comes within 30 s of the last. */
export const MAX_RETRY_MS = 22_000
/** A member unreachable for this many steps is reported (WARN) once. */
const WARN_AFTER_TRIES = 4
/** A tick this much later than due means the process did not run meanwhile (a sleep, a SIGSTOP). */
const FROZEN_MS = 20_000

interface Absent {
  since: number
  tries: number
  next: number
  warned: boolean
}

export class Reconnect {
  private readonly node: MeshNode
  private readonly absent = new Map<string, Absent>()
  private timer: NodeJS.Timeout | null = null
  private interfaces = ''
  private online = true
  private every = 2000
  private lastTick = 0

  constructor(node: MeshNode) {
    this.node = node
  }

  get steps(): number[] {
    const s = this.node.opts.retryMs ?? DEFAULT_RETRY_MS
    return s.map((ms) => Math.min(MAX_RETRY_MS, Math.max(1, ms)))
  }

  /** Options for Hyperswarm's constructor: its retry steps, jitter scaled down with them. */
  swarmOptions(): { backoffs: number[]; jitter: number } {
    const steps = this.steps
    const backoffs = [0, 1, 2, 3].map((i) => steps[Math.min(i, steps.length - 1)])
    return { backoffs, jitter: Math.min(500, Math.floor(backoffs[0] / 2)) }
  }

  start(): void {
    this.interfaces = interfacesNow()
    const dht = this.node.dht
    this.online = dht.online !== false
    dht.on('network-update', () => {
      const online = dht.online !== false
      if (online && !this.online) this.networkBack('the DHT is online again')
      this.online = online
    })
    // For a reader of the debug log: when each connection to a member opened and closed, and which end dialled.
    this.node.swarm.on('connection', (conn: SwarmConnection) => {
      const peer = short(conn.remotePublicKey)
      const opened = Date.now()
      const dialled = (conn as unknown as { isInitiator?: boolean }).isInitiator === true
      this.node.logger.debug('swarm connection opened', { peer, dialled })
      conn.once('close', () =>
        this.node.logger.debug('swarm connection closed', { peer, dialled, seconds: (Date.now() - opened) / 1000 })
      )
    })
    this.every = this.node.opts.reconnectWatchMs ?? Math.max(100, Math.min(2000, this.steps[0]))
    this.lastTick = Date.now()
    this.timer = setInterval(() => this.check(), this.every)
    this.timer.unref()
  }

  close(): void {
    if (this.timer) clearInterval(this.timer)
    this.timer = null
  }

  /** Public keys (hex) of the members this site should be connected to. */
  private members(): Map<string, { key: Uint8Array; site: string }> {
    const out = new Map<string, { key: Uint8Array; site: string }>()
    for (const m of this.node.state.members) {
      if (!this.node.key.equals(Buffer.from(m.key))) out.set(hex(m.key), { key: m.key, site: m.site })
    }
    return out
  }

  private connected(): Set<string> {
    const out = new Set<string>()
    for (const c of this.node.swarm.connections) out.add(hex(c.remotePublicKey))
    return out
  }

  private check(now = Date.now()): void {
    if (this.node.closing) return
    const late = now - this.lastTick - this.every
    this.lastTick = now
    if (late > FROZEN_MS) {
      this.woke(late)
      return
    }
    const ifs = interfacesNow()
    if (ifs !== this.interfaces) {
      this.interfaces = ifs
      this.networkBack('the network interfaces changed')
      return
    }
    const members = this.members()
    const connected = this.connected()
    for (const [k, m] of members) {
      const a = this.absent.get(k)
      if (connected.has(k)) {
        if (a) {
          this.absent.delete(k)
          if (a.warned) {
            const seconds = Math.round((now - a.since) / 1000)
            this.node.logger.info('member reachable again', { site: m.site, key: short(m.key), seconds })
          }
        }
        continue
      }
      if (!a) {
        this.absent.set(k, { since: now, tries: 0, next: this.due(now, m.key, 0), warned: false })
        continue
      }
      if (now < a.next) continue
      this.node.logger.debug('dialling a member', { site: m.site, tries: a.tries })
      this.dial(m.key)
      a.tries++
      a.next = this.due(now, m.key, a.tries)
      if (a.tries >= WARN_AFTER_TRIES && !a.warned) {
        a.warned = true
        this.node.logger.warn('cannot reach a member; retrying', {
          site: m.site,
          key: short(m.key),
          seconds: Math.round((now - a.since) / 1000),
          everySeconds: Math.round(this.steps[this.steps.length - 1] / 1000),
          hint: 'Check that its node runs and that this link carries traffic; it catches up when it is back.'
        })
      }
    }
    for (const k of this.absent.keys()) if (!members.has(k)) this.absent.delete(k)
  }

  /**
   * When to dial a member next, after `tries` dials. Both sites of a pair dial each other, and two connections
   * that open at once can each be kept at one end and dropped at the other (hyperswarm keeps the newer one when
   * the older has carried bytes), leaving both sites holding a dead one; then both time out together and dial
   * together again, round after round. So only the site hyperswarm expects to dial (the larger key) dials on
   * the steps; the other dials a second step later, if it is still needed, and every step varies by up to a
   * tenth so that two sites never stay in step.
   */
  private due(now: number, key: Uint8Array, tries: number): number {
    const step = tries === 0 ? 0 : this.steps[Math.min(tries - 1, this.steps.length - 1)]
    const second = this.steps[Math.min(1, this.steps.length - 1)]
    const dialsFirst = Buffer.compare(this.node.key, Buffer.from(key)) > 0
    return now + Math.round(step * (1 + Math.random() / 10)) + (dialsFirst ? 0 : second)
  }

  /** The network came back: dial every absent member from the first step again, and look the topic up again. */
  private networkBack(why: string): void {
    if (this.node.closing) return
    this.node.logger.info('network changed: dialling every member again', { why })
    const now = Date.now()
    for (const [k, m] of this.members()) {
      const a = this.absent.get(k)
      this.absent.set(k, {
        since: a?.since ?? now,
        tries: 0,
        next: this.due(now, m.key, 0),
        warned: a?.warned ?? false
      })
    }
    for (const d of this.node.swarm.topics()) d.refresh().catch(() => {})
    this.check()
  }

  /** The process ran again after `ms` without a tick: its connections are dead, however open they look. */
  private woke(ms: number): void {
    const seconds = Math.round(ms / 1000)
    const n = this.node.swarm.connections.size
    this.node.logger.info('this node was frozen (asleep or stopped): reconnecting', { seconds, dropped: n })
    for (const c of [...this.node.swarm.connections]) c.destroy()
    // The swarm forgets a connection when its close event comes; dial after that, or the dial is skipped.
    setTimeout(() => this.networkBack(`the node was frozen for ${seconds} s`), 1000).unref()
  }

  private dial(key: Uint8Array): void {
    try {
      this.node.swarm.joinPeer(Buffer.from(key))
    } catch (err) {
      this.node.logger.debug('cannot dial a member', { key: short(key), error: (err as Error).message })
    }
  }
}

/**
 * The machine's external addresses, as one string: it changes when a link goes down or comes up (Node lists
 * only interfaces that are up and running). IPv6 link-local addresses are left out: one appears a moment after
 * a link comes up, which would count as a second change.
 */
function interfacesNow(): string {
  const out: string[] = []
  for (const [name, addrs] of Object.entries(os.networkInterfaces())) {
    for (const a of addrs ?? []) if (!a.internal && !/^fe80:/i.test(a.address)) out.push(`${name}/${a.address}`)
  }
  return out.sort().join(',')
}
