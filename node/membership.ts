/**
 * Who belongs to the mesh, from signed statements only (issue 15 item 5).
 *
 * A site becomes a member at another site only through a member statement (protocol/membership.ts) signed by a
 * full member that is not removed: the inviter signs one when a join code is redeemed, and publishes it at once.
 * The unsigned `members` message is still sent for older sites but adds nobody here. Members that predate the
 * statements (an existing mesh.json) are kept as they are, and each site signs a statement for itself on start,
 * which only ever confirms a member a site already holds: a key that vouches for itself admits nobody.
 *
 * Known at once: a key this site does not know yet is let through the firewall for one short step, the
 * credential channel `branchmesh-member/1`, whose handshake carries the statements that make it a member. If
 * they check out it is admitted and gets the control channel on the same connection; anything else is refused
 * and the connection closed within CREDENTIAL_MS. Every connection carries the channel both ways, so a member
 * learns of sites it has not heard of from whoever it meets.
 *
 * A removal drops the key for good (kept in mesh.json as removed, so no older member statement brings it back),
 * closes its connections and stops replicating to it; a rotation replaces a site's key everywhere (members and
 * the origin of its datasets) and refuses the old one from then on.
 *
 * What this file does not do: it does not take data away from a removed site (what it already holds, it keeps)
 * and does not move its datasets: they stay held by the others until a person runs `mesh promote` (status says so).
 */
import fs from 'node:fs'
import DHT, { type KeyPair } from 'hyperdht'
import type { SwarmConnection } from 'hyperswarm'
import crypto from 'hypercore-crypto'
import Protomux from 'protomux'
import {
  CONTROL_PROTOCOL,
  MEMBER_PROTOCOL,
  MeshError,
  StatementKind,
  decodeMemberBody,
  decodeRemovalBody,
  decodeRotationBody,
  encodeMemberBody,
  encodeRemovalBody,
  encodeRotationBody,
  signRotationProof,
  signStatement,
  statementsMessage,
  verifyRotationProof,
  type MemberBody,
  type MemberRole,
  type Statement
} from '../protocol/index.ts'
import type { MeshNode } from './node.ts'
import type { Outcome } from './statements.ts'
import { meshTopic } from './node.ts'
import type { SiteStatus } from './status.ts'
import { writeFileAtomic } from './state.ts'
import { hex, short } from './util.ts'

/** How long a key this site does not know has to show its member statement before it is refused. */
export const CREDENTIAL_MS = 5000

const same = (a: Uint8Array, b: Uint8Array) => Buffer.from(a).equals(Buffer.from(b))

export class Membership {
  /** This site was removed from the mesh: it refuses every connection and replicates nothing more. */
  removedSelf = false

  constructor(private readonly node: MeshNode) {
    node.statements.on(StatementKind.member, { receive: (s) => this.onMember(s) })
    node.statements.on(StatementKind.removal, { receive: (s) => this.onRemoval(s) })
    node.statements.on(StatementKind.rotation, { receive: (s) => this.onRotation(s) })
  }

  /**
   * At start, before the network: finishes a key rotation a crash interrupted, and signs this site's own member
   * statement when none is held (a site of a mesh made before member statements, or the founder after init).
   */
  async start(): Promise<void> {
    const node = this.node
    this.finishRotation()
    if (this.isRemoved(node.key)) {
      this.removedSelf = true
      node.logger.error('this site was removed from the mesh: it connects to nobody', {
        hint: 'Its data stays here. To take part again, join the mesh anew with a join code and a new --dir.'
      })
      return
    }
    const own = node.statements.list(StatementKind.member).some((s) => same(this.bodyKey(s), node.key))
    const me = node.state.members.find((m) => same(m.key, node.key))
    if (!own && me) {
      const body: MemberBody = { key: node.key, site: me.site, role: me.role ?? 'full', addedAt: me.addedAt }
      await node.statements.publish(this.sign(StatementKind.member, encodeMemberBody(body)))
    }
  }

  isRemoved(key: Uint8Array): boolean {
    return (this.node.state.removed ?? []).some((r) => same(r.key, key))
  }

  /** Why a key is refused before anything else (a removed site, or this site removed); null when it is not. */
  refusal(key: Uint8Array): string | null {
    if (this.removedSelf) return 'this site was removed from the mesh'
    const r = (this.node.state.removed ?? []).find((x) => same(x.key, key))
    if (!r) return null
    return r.reason === 'key rotated'
      ? `the old key of ${r.site}, replaced by a key rotation`
      : `${r.site} was removed from the mesh by ${r.by}`
  }

  /** The statements this site shows on every connection: every member statement and key rotation it holds. */
  credentials(): Statement[] {
    return [...this.node.statements.list(StatementKind.member), ...this.node.statements.list(StatementKind.rotation)]
  }

  // --- the credential channel --------------------------------------------------------------------------------

  /** On a member's connection: show ours, and take what it shows (news of members we have not heard of). */
  present(conn: SwarmConnection): void {
    const mux = this.muxOf(conn)
    const ch = mux.createChannel({
      protocol: MEMBER_PROTOCOL,
      handshake: statementsMessage,
      onopen: (list: Statement[]) =>
        void this.node.statements.receiveFrom(this.node.admission.memberName(conn.remotePublicKey), list)
    })
    ch?.open(this.credentials())
  }

  /**
   * A key this site does not know: it has CREDENTIAL_MS to show statements that make it a member. Its control
   * channel, opened meanwhile, is held (protomux pairing) until then: admitted, it gets the control channel on
   * this same connection; refused, the connection is closed and the key banned from this swarm.
   */
  checkUnknown(conn: SwarmConnection): void {
    const node = this.node
    const key = conn.remotePublicKey
    const mux = this.muxOf(conn)
    let done = false
    let release: () => void = () => {}
    const held = new Promise<void>((resolve) => (release = resolve))
    mux.pair({ protocol: CONTROL_PROTOCOL }, () => held)
    const finish = (why: string | null) => {
      if (done) return
      done = true
      clearTimeout(timer)
      mux.unpair({ protocol: CONTROL_PROTOCOL })
      if (why === null && !conn.destroyed) {
        node.logger.info('admitted a new member on its own statement', { site: node.admission.memberName(key) })
        node.control.onMember(conn)
      } else if (why !== null && !conn.destroyed) {
        // (A connection that closed meanwhile, say a duplicate hyperswarm dropped, is not held against the key.)
        node.admission.refuse(key, `not a member of the mesh: ${why}`)
        node.swarm.peers.get(hex(key))?.ban(true)
        conn.destroy()
      }
      release()
    }
    const timer = setTimeout(
      () => finish(`it showed no member statement within ${CREDENTIAL_MS / 1000} s`),
      CREDENTIAL_MS
    )
    conn.once('close', () => finish(null))
    const ch = mux.createChannel({
      protocol: MEMBER_PROTOCOL,
      handshake: statementsMessage,
      onopen: (list: Statement[]) => void this.checkShown(key, list).then(finish, (err) => finish(err.message))
    })
    if (ch === null) return void finish('the connection closed')
    ch.open(this.credentials())
  }

  /** null when the statements a key showed made it a member here; why not otherwise. */
  private async checkShown(key: Uint8Array, list: Statement[]): Promise<string | null> {
    const node = this.node
    const outcomes = await node.statements.receiveFrom(`a connecting key ${short(key)}`, list)
    if (node.admission.isMember(key)) return null
    const sorted = [...list].sort((a, b) => a.at - b.at)
    for (let i = 0; i < sorted.length; i++) {
      if (!same(this.bodyKey(sorted[i]), key)) continue
      const o = outcomes[i]
      if (o.outcome === 'refused') return `its statement was refused (${o.code}: ${o.reason})`
    }
    return 'it showed no member statement naming its key'
  }

  private muxOf(conn: SwarmConnection): Protomux {
    const mux = Protomux.from(conn)
    ;(conn as unknown as { userData: unknown }).userData = mux
    return mux
  }

  // --- the statements ----------------------------------------------------------------------------------------

  /** Why `key` may not admit or remove a site (a sentence naming it); null when it may (a full member). */
  private notAdmitter(key: Uint8Array): string | null {
    const removed = (this.node.state.removed ?? []).find((r) => same(r.key, key))
    if (removed) return `${removed.site}, which was removed from the mesh`
    const m = this.node.state.members.find((x) => same(x.key, key))
    if (!m) return `a key that is not a member (${short(key)})`
    if ((m.role ?? 'full') !== 'full') return `${m.site}, a ${m.role} site, which may not admit or remove sites`
    return null
  }

  private refused(code: string, site: string, reason: string): Outcome {
    return { outcome: 'refused', code, site, reason }
  }

  private onMember(s: Statement): Outcome {
    const node = this.node
    let b: MemberBody
    try {
      b = decodeMemberBody(s.body)
    } catch (err) {
      return this.refused('BAD_STATEMENT', short(s.signer), `a member statement that cannot be read: ${err}`)
    }
    const by = node.admission.memberName(s.signer)
    if (this.isRemoved(b.key)) {
      return this.refused('MEMBER_REMOVED', by, `${by} vouched for ${b.site}, which was removed from the mesh`)
    }
    const self = same(b.key, s.signer)
    const why = self ? null : this.notAdmitter(s.signer)
    if (why !== null) return this.refused('UNKNOWN_SIGNER', by, `a member statement for ${b.site} signed by ${why}`)
    if (node.admission.isMember(b.key)) return { outcome: 'known' }
    if (self) {
      return this.refused(
        'UNKNOWN_SIGNER',
        b.site,
        `${b.site} (${short(b.key)}) vouched for itself; only a full member may admit a site`
      )
    }
    const m = {
      key: Buffer.from(b.key),
      site: b.site,
      addedAt: b.addedAt,
      ...(b.role !== 'full' ? { role: b.role } : {})
    }
    node.state.members.push(m)
    node.saveState()
    node.logger.info('new member', { site: b.site, key: short(b.key), role: b.role, admittedBy: by })
    if (node.swarm) {
      // A key our firewall refused before it was known is banned by hyperswarm: that is lifted, and it is dialled.
      node.swarm.peers.get(hex(b.key))?.ban(false)
      node.swarm.joinPeer(b.key)
    }
    node.control.broadcast((p) => p.send('members', node.state.members))
    return { outcome: 'new' }
  }

  private onRemoval(s: Statement): Outcome {
    const node = this.node
    let b: ReturnType<typeof decodeRemovalBody>
    try {
      b = decodeRemovalBody(s.body)
    } catch (err) {
      return this.refused('BAD_STATEMENT', short(s.signer), `a removal that cannot be read: ${err}`)
    }
    const by = node.admission.memberName(s.signer)
    const why = this.notAdmitter(s.signer)
    if (why !== null) return this.refused('UNKNOWN_SIGNER', by, `a removal of ${b.site} signed by ${why}`)
    if (same(b.key, s.signer)) return this.refused('BAD_STATEMENT', by, `${by} signed its own removal`)
    if (this.isRemoved(b.key)) return { outcome: 'known' }
    const m = node.state.members.find((x) => same(x.key, b.key))
    const site = m?.site ?? b.site
    node.state.members = node.state.members.filter((x) => !same(x.key, b.key))
    node.state.removed = [
      ...(node.state.removed ?? []),
      { key: Buffer.from(b.key), site, by, reason: b.reason, at: s.at }
    ]
    node.saveState()
    node.logger.warn('site removed from the mesh', { site, by, reason: b.reason })
    // What an alarm about it warned of is settled.
    node.alarms.clear((a) => a.site === site)
    if (same(b.key, node.key)) {
      this.stopAsRemoved(by)
    } else {
      // The removed site is told why before its connection ends (end, not destroy: the message is flushed),
      // so that it stops too instead of dialling every site in turn.
      node.control.peers.get(hex(b.key))?.send('statements', [s])
      this.cut(b.key)
      node.control.broadcast((p) => p.send('members', node.state.members))
    }
    node.reports.markDirty()
    return { outcome: 'new' }
  }

  private onRotation(s: Statement): Outcome {
    const node = this.node
    let b: ReturnType<typeof decodeRotationBody>
    try {
      b = decodeRotationBody(s.body)
    } catch (err) {
      return this.refused('BAD_STATEMENT', short(s.signer), `a key rotation that cannot be read: ${err}`)
    }
    if (node.admission.isMember(b.newKey) && this.isRemoved(s.signer)) return { outcome: 'known' }
    if (this.isRemoved(s.signer)) {
      return this.refused('MEMBER_REMOVED', b.site, `a key rotation signed by ${b.site}'s key, which was removed`)
    }
    const m = node.state.members.find((x) => same(x.key, s.signer))
    if (!m) return this.refused('UNKNOWN_SIGNER', b.site, `a key rotation signed by a key that is not a member`)
    if (!verifyRotationProof(node.state.meshId, s.signer, b)) {
      return this.refused('BAD_STATEMENT', m.site, `the key rotation of ${m.site} is not signed by its new key`)
    }
    if (node.admission.isMember(b.newKey) || this.isRemoved(b.newKey)) {
      return this.refused('BAD_STATEMENT', m.site, `the key rotation of ${m.site} names a key already used`)
    }
    const old = Buffer.from(s.signer)
    const neu = Buffer.from(b.newKey)
    const own = same(old, node.key)
    if (own && (!this.rotating || !same(this.rotating.publicKey, neu))) {
      return this.refused('BAD_STATEMENT', m.site, 'a key rotation of this site that this site did not make')
    }
    m.key = neu
    node.state.datasets = node.state.datasets.map((d) => (same(d.origin, old) ? { ...d, origin: neu } : d))
    node.state.policies = (node.state.policies ?? []).map((p) => ({
      ...p,
      signer: same(p.signer, old) ? neu : p.signer,
      sites: p.sites.map((k) => (same(k, old) ? neu : k))
    }))
    node.state.removed = [
      ...(node.state.removed ?? []),
      { key: old, site: m.site, by: m.site, reason: 'key rotated', at: s.at }
    ]
    if (own) node.keyPair = this.rotating!
    node.saveState()
    node.logger.info('site key rotated', { site: m.site, old: short(old), new: short(neu) })
    if (!own) {
      this.cut(old)
      node.swarm?.peers.get(hex(neu))?.ban(false)
      node.swarm?.joinPeer(neu)
    }
    node.reports.markDirty()
    return { outcome: 'new' }
  }

  /**
   * Ends every connection with `key` (its replication stops with it) and stops dialling it. It is not banned
   * here: the firewall refuses it (refusal()), and so the next attempt is logged and counted in refusals.
   */
  private cut(key: Uint8Array): void {
    const swarm = this.node.swarm
    if (!swarm) return
    for (const conn of swarm.connections) {
      if (!same(conn.remotePublicKey, key)) continue
      conn.end()
      setTimeout(() => conn.destroy(), 2000).unref()
    }
    swarm.leavePeer(key)
  }

  private stopAsRemoved(by: string): void {
    const node = this.node
    this.removedSelf = true
    node.logger.error('this site was removed from the mesh: it stops replicating and connects to nobody', {
      by,
      hint: 'Its data stays here. To take part again, join the mesh anew with a join code and a new --dir.'
    })
    // Let the removal reach the peers it is being relayed to, then leave.
    setTimeout(() => {
      if (!node.swarm) return
      void node.swarm.leave(meshTopic(node.state.meshId)).catch(() => {})
      for (const conn of node.swarm.connections) conn.destroy()
    }, 500).unref()
  }

  private sign(kind: number, body: Uint8Array): Statement {
    return signStatement(kind, this.node.state.meshId, this.node.keyPair, body)
  }

  /** The key a member statement is about, or a rotation's new key (an empty buffer for other kinds). */
  private bodyKey(s: Statement): Uint8Array {
    try {
      if (s.kind === StatementKind.member) return decodeMemberBody(s.body).key
      if (s.kind === StatementKind.rotation) return decodeRotationBody(s.body).newKey
    } catch {}
    return Buffer.alloc(0)
  }

  // --- what the commands ask ---------------------------------------------------------------------------------

  /** Admits the site that redeemed a join code: signs its member statement and publishes it at once. */
  async admitRedeemed(key: Uint8Array, site: string, role: MemberRole): Promise<Statement> {
    const body: MemberBody = { key, site, role, addedAt: Date.now() }
    const s = this.sign(StatementKind.member, encodeMemberBody(body))
    const out = await this.node.statements.publish(s)
    if (out.outcome === 'refused') throw MeshError.BAD_STATEMENT(out.reason)
    return s
  }

  /** `mesh remove SITE`: signs the removal and publishes it; every site refuses the key from then on. */
  async remove(site: string, reason: string): Promise<{ site: string; key: string }> {
    const node = this.node
    const m = node.state.members.find((x) => x.site === site)
    if (!m) {
      const gone = (node.state.removed ?? []).find((r) => r.site === site && r.reason !== 'key rotated')
      if (gone) throw MeshError.MEMBER_REMOVED(`${site} was already removed from the mesh by ${gone.by}`)
      throw MeshError.UNKNOWN_SITE(`no member of the mesh is named ${site}`)
    }
    if (same(m.key, node.key)) {
      throw MeshError.USAGE(`${site} is this site: a site does not remove itself`, {
        hint: `Run mesh remove ${site} at another member site.`
      })
    }
    const why = this.notAdmitter(node.key)
    if (why !== null) throw MeshError.UNKNOWN_SIGNER(`this site is ${why}`, { hint: 'Run it at a full member.' })
    const s = this.sign(StatementKind.removal, encodeRemovalBody({ key: m.key, site, reason }))
    const out = await node.statements.publish(s)
    if (out.outcome === 'refused') throw MeshError.BAD_STATEMENT(out.reason)
    return { site, key: hex(m.key) }
  }

  /** The new key pair while its rotation is being published. */
  private rotating: KeyPair | null = null

  private get newKeyFile(): string {
    return `${this.node.paths.key}.new`
  }

  /**
   * `mesh rotate-key`: a new key pair, a rotation signed by the old key carrying the new key's proof, published
   * to every site; site.key replaced. Crash-safe: the new seed is written to site.key.new first, and start()
   * finishes the swap only when the rotation is held here (finishRotation). The old seed is not kept (no
   * site.key.old): once the rotation is out the old key is refused everywhere, and a site that has not heard yet
   * learns it from the new key's own credentials, so the old secret could only ever leak, never help.
   */
  async rotateKey(): Promise<{ old: string; key: string }> {
    const node = this.node
    if (this.rotating) throw MeshError.USAGE('a key rotation is already under way at this site')
    const seed = crypto.randomBytes(32)
    const kp = DHT.keyPair(seed)
    const old = node.key
    writeFileAtomic(this.newKeyFile, `${seed.toString('hex')}\n`, 0o600)
    this.rotating = kp
    try {
      const proof = signRotationProof(node.state.meshId, old, kp.secretKey)
      const s = this.sign(
        StatementKind.rotation,
        encodeRotationBody({ site: node.opts.site, newKey: kp.publicKey, proof })
      )
      const out = await node.statements.publish(s)
      if (out.outcome !== 'new') {
        fs.rmSync(this.newKeyFile, { force: true })
        throw MeshError.BAD_STATEMENT(out.outcome === 'refused' ? out.reason : 'the rotation was not taken')
      }
      fs.renameSync(this.newKeyFile, node.paths.key)
    } finally {
      this.rotating = null
    }
    // The old key's connections carry the rotation to the peers; then the node takes its new identity.
    await new Promise((r) => setTimeout(r, 500))
    await node.restartSwarm()
    return { old: hex(old), key: hex(kp.publicKey) }
  }

  /** A site.key.new left by a crash: kept when the rotation to it is held here, dropped otherwise. */
  private finishRotation(): void {
    const node = this.node
    if (!fs.existsSync(this.newKeyFile)) return
    const seed = Buffer.from(fs.readFileSync(this.newKeyFile, 'utf8').trim(), 'hex')
    const kp = DHT.keyPair(seed)
    const held = node.statements.list(StatementKind.rotation).some((s) => same(this.bodyKey(s), kp.publicKey))
    if (held && node.admission.isMember(kp.publicKey)) {
      fs.renameSync(this.newKeyFile, node.paths.key)
      node.keyPair = kp
      node.logger.info('finished a key rotation a stop interrupted', { key: short(kp.publicKey) })
    } else {
      fs.rmSync(this.newKeyFile, { force: true })
    }
  }

  // --- status ------------------------------------------------------------------------------------------------

  /** Adds what membership tells a person: datasets whose origin was removed, and how to move them. */
  annotate(st: SiteStatus): SiteStatus {
    const node = this.node
    for (const d of node.state.datasets) {
      const gone = (node.state.removed ?? []).find((r) => same(r.key, d.origin))
      if (!gone) continue
      st.reasons.push({
        level: 'WARN',
        text:
          `${d.name}: its origin ${gone.site} was removed from the mesh; its data is held by the other sites: ` +
          `run mesh promote ${d.name} at one of them to make it writable there`
      })
      if (st.verdict === 'OK') st.verdict = 'WARN'
    }
    if (this.removedSelf) {
      st.reasons.push({ level: 'CRIT', text: 'this site was removed from the mesh: it replicates nothing more' })
      st.verdict = 'CRIT'
    }
    return st
  }
}
