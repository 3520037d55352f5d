/**
 * The control channel (protomux `branchmesh/1`) with every connected member.
 *
 * Order on a member connection: the channel's hello is checked first (protocol version and mesh id); only then
 * is the corestore replicated over the connection. A peer of another version gets nothing. Then each side
 * sends what it knows (members, datasets, every signed report it holds), and from then on what changes; what
 * is new is relayed to the other peers, so news crosses the mesh even where two sites never connect directly.
 */
import Protomux, { type Channel } from 'protomux'
import type { SwarmConnection } from 'hyperswarm'
import {
  CONTROL_MESSAGES,
  CONTROL_PROTOCOL,
  CONTROL_VERSION,
  MeshError,
  helloEncoding,
  type Budget,
  type ControlPayloads,
  type DatasetInfo,
  type Hello
} from '../protocol/index.ts'
import { supersedes } from './chain.ts'
import { servePlaintextNever } from './blind.ts'
import { addMessages, type Messages } from './messages.ts'
import type { MeshNode } from './node.ts'
import { hex, short } from './util.ts'

export interface Peer extends Messages<ControlPayloads> {
  conn: SwarmConnection
  key: Buffer
  site: string
  software: string
  channel: Channel
  /** The hello was checked: the logs flow, and messages may be sent. */
  ready: boolean
}

export class ControlChannel {
  /** Connected members whose hello was checked, by key (hex). */
  readonly peers = new Map<string, Peer>()

  constructor(private readonly node: MeshNode) {}

  /** The peers whose hello was checked. */
  ready(): Peer[] {
    return [...this.peers.values()].filter((p) => p.ready)
  }

  broadcast(send: (p: Peer) => void, except?: Peer): void {
    for (const p of this.peers.values()) if (p !== except && p.ready) send(p)
  }

  onMember(conn: SwarmConnection): void {
    const node = this.node
    const key = conn.remotePublicKey
    conn.rawStream?.setNoDelay?.(true)
    const mux = Protomux.from(conn)
    const noise = conn as unknown as { userData: unknown; keepAlive: number; setKeepAlive(ms: number): void }
    if (noise.keepAlive === 0) noise.setKeepAlive(5000)
    noise.userData = mux
    const channel = mux.createChannel({
      protocol: CONTROL_PROTOCOL,
      unique: true,
      handshake: helloEncoding,
      onopen: (hello: Hello) => this.onHello(peer, hello),
      onclose: () => this.onClosed(peer)
    })
    if (channel === null) return void conn.destroy()
    const messages = addMessages<ControlPayloads>(channel, CONTROL_MESSAGES, {
      members: (m) => this.onMembers(peer, m),
      datasets: (m) => this.onDatasets(peer, m),
      report: (m) => node.reports.receive(peer, m),
      statements: (m) => void node.statements.receive(peer, m),
      budget: (m) => this.onBudget(peer, m)
    })
    const peer: Peer = {
      conn,
      key,
      site: node.admission.memberName(key),
      software: '',
      channel,
      ready: false,
      send: messages.send
    }
    channel.open({
      version: CONTROL_VERSION,
      meshId: node.state.meshId,
      site: node.opts.site,
      software: node.opts.software
    })
    const timer = setTimeout(() => {
      if (!peer.ready && !conn.destroyed) {
        node.admission.refuse(key, 'it did not open the branchmesh/1 control channel (an incompatible version?)')
        conn.destroy()
      }
    }, 20_000)
    conn.once('close', () => clearTimeout(timer))
  }

  private onHello(peer: Peer, hello: Hello): void {
    const node = this.node
    if (hello.version !== CONTROL_VERSION) {
      const e = MeshError.PROTOCOL_VERSION(
        `${peer.site} speaks control protocol version ${hello.version}; this site speaks ${CONTROL_VERSION}`
      )
      node.admission.refuse(peer.key, e.message)
      node.logger.error('peer refused', { peer: peer.site, code: e.code, error: e.message, hint: e.hint })
      peer.conn.destroy()
      return
    }
    if (!hello.meshId || !Buffer.from(hello.meshId).equals(node.state.meshId)) {
      node.admission.refuse(peer.key, 'it belongs to another mesh')
      peer.conn.destroy()
      return
    }
    const k = hex(peer.key)
    const old = this.peers.get(k)
    if (old && old !== peer) old.conn.destroy()
    peer.ready = true
    peer.site = hello.site || peer.site
    peer.software = hello.software
    this.peers.set(k, peer)
    node.traffic.name(k, peer.site)
    node.logger.info('connected', { peer: peer.site, key: short(peer.key) })
    // Only now, with the hello checked, do the logs flow; to a blind site, only the encrypted ones.
    if (node.role === 'full' && node.admission.roleOf(peer.key) === 'blind') {
      servePlaintextNever((peer.conn as unknown as { userData: object }).userData, (k) => node.blind.isEncryptedLog(k))
    }
    // An observer gets the control channel only, never a log's blocks: neither end replicates the store when
    // either is one (and an observer's store holds nothing to offer).
    if (node.role !== 'observer' && node.admission.roleOf(peer.key) !== 'observer') node.store.replicate(peer.conn)
    // Statements first: the member statements, promotions and data key grants a peer needs to act on the
    // datasets that follow (a new dataset's key arrives before its announcement, a new epoch's promotion too).
    node.statements.sendAllTo(peer)
    peer.send('members', node.state.members)
    peer.send('datasets', node.state.datasets)
    node.reports.sendAllTo(peer)
    // Every peer's share of this site's down budget changes with their number: each is told its new share.
    this.announceBudget()
    node.emit('peer', peer.site)
  }

  /** Tells every peer this site's budget and what it asks of it (traffic.ts); nothing when there is none. */
  announceBudget(): void {
    const t = this.node.traffic
    if (t.upBps === null && t.downBps === null) return
    const peers = this.ready()
    const b = t.announcement(peers.length)
    for (const p of peers) p.send('budget', b)
  }

  private onBudget(peer: Peer, b: Budget): void {
    if (!peer.ready) return
    const first = this.node.traffic.peers.get(hex(peer.key))?.budget == null
    this.node.traffic.onBudget(hex(peer.key), b)
    const kbit = (bps: number) => (bps ? `${bps / 1000} kbit/s` : 'no limit')
    const log = first ? this.node.logger.info : this.node.logger.debug
    log.call(this.node.logger, 'peer budget', {
      peer: peer.site,
      up: kbit(b.upBps),
      down: kbit(b.downBps),
      asks: kbit(b.askBps)
    })
  }

  private onClosed(peer: Peer): void {
    const k = hex(peer.key)
    if (this.peers.get(k) === peer) {
      this.peers.delete(k)
      this.node.logger.info('disconnected', { peer: peer.site })
      this.node.reports.markDirty()
      this.announceBudget()
    }
  }

  /**
   * The unsigned members list an older site sends: it adds nobody here (a member comes only from a signed
   * member statement, node/membership.ts); a key it names that this site does not know is only logged.
   */
  private onMembers(from: Peer, list: ControlPayloads['members']): void {
    for (const m of list) {
      if (this.node.admission.isMember(m.key) || this.node.membership.isRemoved(m.key)) continue
      this.node.logger.debug('a peer lists a member with no signed statement here', { site: m.site, from: from.site })
    }
  }

  /**
   * Datasets as a peer knows them. A dataset not known here is followed; a newer epoch of a known one (see
   * chain.ts, supersedes) replaces it everywhere: this site follows it, or is fenced if it was the origin. A new
   * epoch is never taken on the peer's word: only once its signed promotion was checked here (trust.ts), which
   * looks for it and adopts the head itself when it passes.
   */
  private onDatasets(from: Peer, list: DatasetInfo[]): void {
    const node = this.node
    let changed = false
    for (const d of list) {
      if (!node.admission.isMember(d.origin)) {
        // A removed (or rotated-away) origin's dataset stays as it is here until a member promotes it.
        if (node.membership.isRemoved(d.origin)) continue
        node.logger.warn('ignored a dataset whose origin is not a member', { dataset: d.name, from: from.site })
        continue
      }
      const have = node.state.datasets.find((x) => x.id === d.id)
      if (have && !supersedes(d, have) && !encryptsNext(d, have)) continue
      // A new epoch is followed only once its signed promotion is accepted (node/trust.ts); the same epoch's
      // log announcing that its next epoch is encrypted changes no origin, and needs none.
      if ((!have || supersedes(d, have)) && !node.trust.mayFollow(d, from, have)) continue
      const info: DatasetInfo = { ...d, origin: Buffer.from(d.origin), log: Buffer.from(d.log) }
      if (have) {
        node.state.datasets = node.state.datasets.map((x) => (x.id === d.id ? info : x))
        const what = encryptsNext(d, have)
          ? 'its logs are encrypted from the next epoch on'
          : have.epoch === d.epoch
            ? 'two promotions of the same epoch: following the one with the lower log key'
            : 'new epoch'
        node.logger.info(what, { dataset: d.name, epoch: d.epoch, origin: d.originSite, from: from.site })
      } else {
        node.state.datasets.push(info)
        node.logger.info('new dataset', { dataset: d.name, origin: d.originSite, from: from.site })
      }
      changed = true
      node.roles.settleLater(d.id)
    }
    if (changed) {
      node.saveState()
      this.broadcast((p) => p.send('datasets', node.state.datasets), from)
    }
  }
}

/**
 * `mesh encrypt` at the origin: the same epoch and log, now saying its logs are encrypted from the next epoch
 * on (datakeys.ts). Only that step is taken this way; every other change of a dataset comes with a new epoch.
 */
function encryptsNext(d: DatasetInfo, have: DatasetInfo): boolean {
  return (
    d.epoch === have.epoch &&
    Buffer.from(d.log).equals(have.log) &&
    have.encryptedFrom === undefined &&
    d.encryptedFrom === have.epoch + 1
  )
}
