/**
 * A link that drops packets (issue 16): per connection, what UDX says it sent, sent again and timed out, per
 * second over the last minute; per peer, the LOSSY_LINK WARN raised and cleared from those figures
 * (node/traffic.ts keeps one LinkLoss per connection and shows the figures in `mesh status`).
 *
 * UDX (udx-native 1.21) counts, per stream, packets sent (`packetsTransmitted`), packets sent again
 * (`retransmits`: lost, or their acknowledgement was) and retransmission timeouts (`rtoCount`: nothing
 * acknowledged for a whole timeout). The node's own queue says nothing of a lossy line: UDX's buffer takes the
 * bytes first, and its congestion control slows down on losses.
 */
import { lossText } from './defaults.ts'
import { Meter } from './meter.ts'

/** The window of the loss figures. */
export const LOSS_SECONDS = 60
/**
 * A WARN (LOSSY_LINK) once this share of the packets sent to a peer over the last minute were sent again, with
 * at least LOSS_MIN_PACKETS sent (fewer say nothing) and packets sent again in LOSS_MIN_SECONDS different seconds
 * (one burst says nothing); cleared when the share falls under LOSS_CLEAR_SHARE, or the link falls quiet, or the
 * connection closes.
 */
export const LOSS_WARN_SHARE = 0.1
export const LOSS_CLEAR_SHARE = 0.05
/** Low enough for a line down to a few kbit/s (under a hundred packets a minute get through). */
export const LOSS_MIN_PACKETS = 50
/** ... and with packets sent again in at least this many different seconds of that minute. */
export const LOSS_MIN_SECONDS = 10

export interface LossFigures {
  packets: number
  resent: number
  timeouts: number
  /** Seconds of the window in which packets were sent again (on the open connection that had most). */
  lossySeconds: number
}

/** What UDX's stream tells of its packets (all absent when it is not a UDX stream). */
export interface UdxLossCounts {
  packetsTransmitted?: number
  retransmits?: number
  rtoCount?: number
}

/** One connection's figures, per second. */
export class LinkLoss {
  private readonly packets = new Meter()
  private readonly resent = new Meter()
  private readonly timeouts = new Meter()
  /** UDX's counters at the last sample; null before the first (or when it does not tell). */
  private seen: { packets: number; resent: number; timeouts: number } | null = null

  get known(): boolean {
    return this.seen !== null
  }

  /** Adds what UDX sent, sent again and timed out since the last sample. */
  sample(r: UdxLossCounts, now: number): void {
    if (typeof r.packetsTransmitted !== 'number' || typeof r.retransmits !== 'number') return
    const cur = { packets: r.packetsTransmitted, resent: r.retransmits, timeouts: r.rtoCount ?? 0 }
    const seen = this.seen
    this.seen = cur
    if (!seen) return
    // A count that went down wrapped (16 bits of retransmissions, 8 of timeouts read by udx-native) or was
    // reset: that second counts nothing rather than a wrong figure.
    const up = (a: number, b: number) => (a >= b ? a - b : 0)
    this.packets.add(up(cur.packets, seen.packets), now)
    this.resent.add(up(cur.resent, seen.resent), now)
    this.timeouts.add(up(cur.timeouts, seen.timeouts), now)
  }

  /** The last minute's figures over several connections (a peer's); null when none of them tells. */
  static of(links: LinkLoss[], now: number): LossFigures | null {
    const known = links.filter((l) => l.known)
    if (known.length === 0) return null
    const sum = (f: (l: LinkLoss) => Meter) => known.reduce((t, l) => t + f(l).sum(LOSS_SECONDS, now), 0)
    return {
      packets: sum((l) => l.packets),
      resent: sum((l) => l.resent),
      timeouts: sum((l) => l.timeouts),
      lossySeconds: Math.max(...known.map((l) => l.resent.seconds(LOSS_SECONDS, now)))
    }
  }
}

/** Whether the LOSSY_LINK WARN is up, given whether it was and the last minute's figures. */
export function judgeLoss(was: boolean, l: LossFigures | null): boolean {
  if (l === null || l.packets < LOSS_MIN_PACKETS) return false
  const share = l.resent / l.packets
  if (was) return share >= LOSS_CLEAR_SHARE
  // Raised on losses that last: packets sent again in LOSS_MIN_SECONDS different seconds or more, so that one
  // burst (a peer's event loop held up past a timeout, which makes UDX send its window again) is no WARN.
  return l.lossySeconds >= LOSS_MIN_SECONDS && share >= LOSS_WARN_SHARE
}

/** The LOSSY_LINK WARN: what it means and what to do. */
export function lossyText(site: string, l: { packets: number; resent: number; timeouts: number }): string {
  const timeouts = l.timeouts ? ` and ${l.timeouts} retransmission timeout${l.timeouts === 1 ? '' : 's'}` : ''
  return (
    `LOSSY_LINK: the link to ${site} drops packets: ${lossText(l)} of the ${l.packets} packets sent to it in the ` +
    `last minute were sent again${timeouts}. Replication goes on, more slowly; nothing damaged is applied (every ` +
    'block is verified). Check the line (cable, Wi-Fi, modem, a line shared with heavy traffic), or lower ' +
    'link.upKbps under what the line really carries'
  )
}
