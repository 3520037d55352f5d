/**
 * The DHT's own traffic (issue 16): lookups, announces, answers to other DHT nodes, hole punching, counted apart
 * from the connections' and shown on its own line in `mesh status` (node/traffic.ts charges what it sends to the
 * site's budget, after the fact).
 *
 * Sent: udx-native counts no byte of the messages a UDX socket sends (its counters hold the streams' packets
 * only), so each socket's `send` and `trySend` are counted here, those of the DHT's two sockets and of every
 * socket its UDX instance makes later (hole punching's). Received: the UDX instance's count has every datagram,
 * so the DHT's share is that less what the connections' streams received (which node/traffic.ts adds up).
 */
import { Meter } from './meter.ts'

interface DhtLike {
  udx?: { bytesReceived?: number; createSocket?: (...args: unknown[]) => unknown }
  io?: { serverSocket?: unknown; clientSocket?: unknown }
}

/** Marks a UDX socket whose sends are counted. */
const COUNTED = Symbol('branchmesh.dhtCounted')

export class DhtTraffic {
  readonly sent = new Meter()
  readonly received = new Meter()
  private dht: DhtLike | null = null
  /** Bytes and datagrams the DHT's sockets sent since the last sample. */
  private out = { bytes: 0, packets: 0 }
  /** The UDX instance's count of bytes received at the last sample, and the connections' share since. */
  private rxSeen = 0
  private streamsRx = 0

  get watching(): boolean {
    return this.dht !== null
  }

  /** Counts `dht`'s traffic from now on (called again with the new DHT when it is made anew). */
  watch(dht: unknown): void {
    const d = dht as DhtLike | null
    const u = d?.udx
    if (!d || !u || typeof u.bytesReceived !== 'number') return
    this.dht = d
    this.rxSeen = u.bytesReceived
    this.streamsRx = 0
    this.out = { bytes: 0, packets: 0 }
    if (typeof u.createSocket === 'function') {
      const make = u.createSocket.bind(u)
      u.createSocket = (...args: unknown[]) => {
        const sock = make(...args)
        this.countSends(sock, d)
        return sock
      }
    }
    this.countSends(d.io?.serverSocket, d)
    this.countSends(d.io?.clientSocket, d)
  }

  /** What the connections' streams received since the last sample (UDX's counts, headers included). */
  streamReceived(bytes: number): void {
    this.streamsRx += bytes
  }

  /** Adds what the DHT moved since the last sample; what it sent, with one IP header per datagram, for the budget. */
  sample(now: number, ipOverhead: number): number {
    const d = this.dht
    const rx = d?.udx?.bytesReceived
    if (!d || typeof rx !== 'number') return 0
    // Sockets the DHT made again (a new port after a network change) are counted from now on.
    this.countSends(d.io?.serverSocket, d)
    this.countSends(d.io?.clientSocket, d)
    const { bytes, packets } = this.out
    this.out = { bytes: 0, packets: 0 }
    this.sent.add(bytes, now)
    this.received.add(Math.max(0, rx - this.rxSeen - this.streamsRx), now)
    this.rxSeen = rx
    this.streamsRx = 0
    return bytes + packets * ipOverhead
  }

  /** Counts the bytes of each message `sock` sends (once per socket), while `owner` is the DHT watched. */
  private countSends(sock: unknown, owner: DhtLike): void {
    const s = sock as Record<string | symbol, unknown> | null | undefined
    if (!s || s[COUNTED]) return
    s[COUNTED] = true
    for (const m of ['send', 'trySend']) {
      const f = s[m]
      if (typeof f !== 'function') continue
      s[m] = (buf: Uint8Array | undefined, ...rest: unknown[]) => {
        if (this.dht === owner) {
          this.out.bytes += buf?.byteLength ?? 0
          this.out.packets++
        }
        return f.call(s, buf, ...rest)
      }
    }
  }
}
