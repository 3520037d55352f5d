/**
 * Admission: who may connect, and what a connection may do.
 *
 * The Noise handshake of every hyperswarm connection proves the remote's key. A key that is not in the member
 * list (mesh.json) is refused before anything else: by the DHT firewall when it calls us, and by closing the
 * connection at once when we called it (hyperswarm's firewall only guards incoming connections). A one-time
 * invite key (invites.json) is let in for the join channel only: such a connection never replicates a log.
 */
import Protomux from 'protomux'
import type { SwarmConnection } from 'hyperswarm'
import {
  CONTROL_VERSION,
  JOIN_MESSAGES,
  JOIN_PROTOCOL,
  joinHelloEncoding,
  type JoinPayloads,
  type MemberInfo,
  type Redeem
} from '../protocol/index.ts'
import { addMessages, type Messages } from './messages.ts'
import type { MeshNode } from './node.ts'
import { readInvites, writeInvites, type Invite } from './state.ts'
import { hex, short } from './util.ts'

export interface Refusal {
  key: string
  reason: string
  at: number
}

export class Admission {
  /** The last refusals, newest last, for status. */
  readonly refused: Refusal[] = []
  private readonly lastRefusalLog = new Map<string, number>()
  private invites: Invite[] = []

  constructor(private readonly node: MeshNode) {}

  start(): void {
    this.invites = readInvites(this.node.paths)
  }

  isMember(key: Uint8Array): boolean {
    return this.node.state.members.some((m) => Buffer.from(m.key).equals(key))
  }

  memberName(key: Uint8Array): string {
    return this.node.state.members.find((m) => Buffer.from(m.key).equals(key))?.site ?? short(key)
  }

  /** hyperswarm's firewall: true refuses the connection before any data flows. */
  firewall(remote: Buffer): boolean {
    if (this.isMember(remote) || this.liveInvite(remote)) return false
    this.refuse(remote, 'not a member of the mesh')
    return true
  }

  /** Every connection, incoming or outgoing: a member's gets the control channel, an invite's the join channel. */
  onConnection(conn: SwarmConnection): void {
    const key = conn.remotePublicKey
    conn.on('error', (err: Error) =>
      this.node.logger.debug('connection error', { peer: short(key), error: err.message })
    )
    if (this.node.closing) {
      conn.destroy()
      return
    }
    if (this.isMember(key)) {
      this.node.control.onMember(conn)
      return
    }
    const invite = this.liveInvite(key)
    if (invite) {
      this.onGuest(conn, invite)
      return
    }
    this.refuse(key, 'not a member of the mesh')
    conn.destroy()
  }

  refuse(key: Uint8Array, reason: string): void {
    const k = hex(key)
    const now = Date.now()
    this.refused.push({ key: k, reason, at: now })
    if (this.refused.length > 20) this.refused.shift()
    // One log line per key per minute: a stranger retrying must not flood the log.
    if ((this.lastRefusalLog.get(k) ?? 0) + 60_000 < now) {
      this.lastRefusalLog.set(k, now)
      this.node.logger.warn('refused a connection', { peer: short(key), reason })
    }
  }

  /**
   * Adds members this site did not know (from a peer's list, or a join); returns whether any was new. A key
   * our firewall refused before it was known is banned by hyperswarm: that is lifted, and the new member dialled.
   */
  admit(list: MemberInfo[], from: string): boolean {
    let changed = false
    for (const m of list) {
      if (this.isMember(m.key)) continue
      this.node.state.members.push({ key: Buffer.from(m.key), site: m.site, addedAt: m.addedAt })
      changed = true
      this.node.logger.info(from === '' ? 'new member joined with a join code' : 'new member', {
        site: m.site,
        key: short(m.key),
        ...(from === '' ? {} : { from })
      })
      this.node.swarm.peers.get(hex(m.key))?.ban(false)
      this.node.swarm.joinPeer(m.key)
    }
    return changed
  }

  private liveInvite(key: Uint8Array): Invite | null {
    const now = Date.now()
    const find = () => this.invites.find((i) => Buffer.from(i.key).equals(key) && i.expiresAt * 1000 > now) ?? null
    let found = find()
    if (found === null) {
      // `mesh invite` may have added one while the node runs: read the file again.
      try {
        this.invites = readInvites(this.node.paths)
      } catch (err) {
        this.node.logger.warn('cannot read the invites', { error: (err as Error).message })
      }
      found = find()
    }
    return found
  }

  // --- the join channel: a connection made with a one-time invite key may redeem it, and nothing else -----------

  private onGuest(conn: SwarmConnection, invite: Invite): void {
    const mux = Protomux.from(conn)
    const ch = mux.createChannel({ protocol: JOIN_PROTOCOL, handshake: joinHelloEncoding })
    if (ch === null) return void conn.destroy()
    const messages: Messages<JoinPayloads> = addMessages<JoinPayloads>(ch, JOIN_MESSAGES, {
      redeem: (m) => this.onRedeem(conn, invite, m, messages)
    })
    ch.open({ version: CONTROL_VERSION })
    const timer = setTimeout(() => conn.destroy(), 30_000)
    conn.once('close', () => clearTimeout(timer))
  }

  private onRedeem(conn: SwarmConnection, invite: Invite, m: Redeem, reply: Messages<JoinPayloads>): void {
    const node = this.node
    const now = Date.now()
    if (invite.expiresAt * 1000 <= now || !this.liveInvite(invite.key)) {
      reply.send('refuse', {
        version: CONTROL_VERSION,
        code: 'JOIN_CODE_EXPIRED',
        reason: 'the join code expired or was already used'
      })
      return
    }
    if (node.state.members.some((x) => x.site === m.site && !Buffer.from(x.key).equals(m.key))) {
      const reason = `a site named ${m.site} is already a member; choose another --site name`
      reply.send('refuse', { version: CONTROL_VERSION, code: 'USAGE', reason })
      return
    }
    // One-time: the invite is gone before the welcome leaves, so a second use of the code is refused.
    this.invites = readInvites(node.paths).filter((i) => !Buffer.from(i.key).equals(invite.key))
    writeInvites(node.paths, this.invites)
    if (this.admit([{ key: m.key, site: m.site, addedAt: now }], '')) {
      node.saveState()
      node.control.broadcast((p) => p.send('members', node.state.members))
    }
    reply.send('welcome', {
      version: CONTROL_VERSION,
      meshId: node.state.meshId,
      members: node.state.members,
      datasets: node.state.datasets
    })
    setTimeout(() => conn.end(), 1000).unref()
  }
}
