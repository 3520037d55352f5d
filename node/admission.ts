/**
 * Admission: who may connect, and what a connection may do.
 *
 * The Noise handshake of every hyperswarm connection proves the remote's key. A removed key is refused before
 * anything else, by the firewall; a key that is not in the member list (mesh.json) gets only the credential
 * step (node/membership.ts): a signed member statement admits it, anything else closes the connection within
 * a few seconds. A one-time invite key (invites.json) is let in for the join channel only: such a connection
 * never replicates a log.
 */
import Protomux from 'protomux'
import type { SwarmConnection } from 'hyperswarm'
import {
  CONTROL_VERSION,
  JOIN_MESSAGES,
  JOIN_PROTOCOL,
  joinHelloEncoding,
  type JoinPayloads,
  StatementKind,
  type MemberRole,
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

  /** A member's role ('full' unless its admission said otherwise); null for a key that is not a member. */
  roleOf(key: Uint8Array): MemberRole | null {
    const m = this.node.state.members.find((x) => Buffer.from(x.key).equals(key))
    return m ? (m.role ?? 'full') : null
  }

  memberName(key: Uint8Array): string {
    return this.node.state.members.find((m) => Buffer.from(m.key).equals(key))?.site ?? short(key)
  }

  /**
   * hyperswarm's firewall: true refuses the connection before any data flows. A removed key is refused here; a
   * key this site does not know is let through to the credential step (node/membership.ts), which admits it
   * on a signed member statement or closes the connection within a few seconds.
   */
  firewall(remote: Buffer): boolean {
    const why = this.node.membership.refusal(remote)
    if (why === null) return false
    this.refuse(remote, why)
    return true
  }

  /**
   * Every connection, incoming or outgoing: a member's gets the control channel (and the credential channel,
   * both ways), an invite's the join channel, any other key the credential step.
   */
  onConnection(conn: SwarmConnection): void {
    const key = conn.remotePublicKey
    conn.on('error', (err: Error) =>
      this.node.logger.debug('connection error', { peer: short(key), error: err.message })
    )
    if (this.node.closing) {
      conn.destroy()
      return
    }
    // Before anything is written to it: every connection is counted and paced (traffic.ts).
    this.node.traffic.attach(conn, hex(key), this.memberName(key))
    const why = this.node.membership.refusal(key)
    if (why !== null) {
      this.refuse(key, why)
      conn.destroy()
      return
    }
    if (this.isMember(key)) {
      this.node.membership.present(conn)
      this.node.control.onMember(conn)
      return
    }
    const invite = this.liveInvite(key)
    if (invite) {
      this.onGuest(conn, invite)
      return
    }
    this.node.membership.checkUnknown(conn)
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
      redeem: (m) =>
        void this.onRedeem(conn, invite, m, messages).catch((err: Error) => {
          this.node.logger.error('could not admit a site redeeming a join code', { site: m.site, error: err.message })
          const reason = `the inviting site could not admit it: ${err.message}`
          messages.send('refuse', { version: CONTROL_VERSION, code: 'BAD_JOIN_CODE', reason })
          setTimeout(() => conn.destroy(), 1000).unref()
        })
    })
    ch.open({ version: CONTROL_VERSION })
    const timer = setTimeout(() => conn.destroy(), 30_000)
    conn.once('close', () => clearTimeout(timer))
  }

  private async onRedeem(
    conn: SwarmConnection,
    invite: Invite,
    m: Redeem,
    reply: Messages<JoinPayloads>
  ): Promise<void> {
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
    // Signed and published at once: every online site knows the new member before it connects.
    await node.membership.admitRedeemed(m.key, m.site, invite.role ?? 'full')
    node.logger.info('new member joined with a join code', { site: m.site, key: short(m.key) })
    reply.send('welcome', {
      version: CONTROL_VERSION,
      meshId: node.state.meshId,
      members: node.state.members,
      datasets: node.state.datasets,
      statements: [
        ...node.membership.credentials(),
        ...node.statements.list(StatementKind.removal),
        ...node.dataKeys.grantsFor(m.key)
      ]
    })
    setTimeout(() => conn.end(), 1000).unref()
  }
}
