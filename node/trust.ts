/**
 * Trust: a new epoch of a dataset is followed only on a signed promotion that this site checked itself
 * (StatementKind.promotion, protocol/promotion.ts), never on a member's word. The promotion travels in the new
 * log's header and on the control channel; `onDatasets` (control.ts) hands a superseding head here, and this
 * file adopts it once the promotion passed, in this order:
 *
 * 1. the envelope (mesh id, signature: node/statements.ts);
 * 2. the signer is a member that may promote the dataset (node/policy.ts), and the statement's site name, dataset,
 *    name and engine match it and the dataset;
 * 3. the epoch is the parent's epoch + 1, where the parent is a log of the chain this site knows;
 * 4. the new log's header says the same, and carries this very statement;
 * 5. the branch point L is within the parent log as far as anyone reports;
 * 6. (not at the parent's origin) no site applied more than L of the parent log: this one, or a reachable
 *    holder by its fresh signed report (BRANCH_POINT);
 * 7. the origin's consent: a handover it signed for exactly this (dataset, epoch, parent, L, site) is enough at
 *    the origin itself. Without one, the origin refuses (ORIGIN_LIVE) a promotion signed while it was running and
 *    connected (liveness.ts), and is fenced by one signed while it was off or cut off. Every other site holds a
 *    promotion 'pending' while the origin is live (its own signed report fresh, holding the parent log without
 *    error): it follows once the origin's report shows the origin follows the new epoch, refuses once the
 *    origin's alarm names it, and decides again once the origin falls silent.
 *
 * What this does not do: prove *when* a promotion was signed. A member allowed to promote can date one to a
 * time the origin was off; the origin itself then follows it (the partition case looks the same).
 */
import {
  MeshError,
  StatementKind,
  decodeHandover,
  decodePromotion,
  decodeStatement,
  sameBytes,
  statementId,
  verifyStatement,
  type DatasetInfo,
  type Handover,
  type HeaderEntry,
  type Promotion,
  type Statement
} from '../protocol/index.ts'
import { supersedes } from './chain.ts'
import type { Peer } from './control.ts'
import type { LogPlace } from './log.ts'
import type { MeshNode } from './node.ts'
import type { Outcome } from './statements.ts'
import { count, hex, short, sleep } from './util.ts'

/** How far the clocks of two sites may disagree. */
export const CLOCK_SKEW_MS = 30_000
/**
 * How long after a handover was signed the named site may still take over; its origin waits longer
 * (HANDOVER_MIN_MS) before it withdraws it, so a take-over never comes after the origin took writes again.
 */
export const TAKEOVER_MS = 40_000
export const HANDOVER_MIN_MS = 50_000
/** How long a new log's header is awaited from peers before the decision is put off. */
const HEADER_WAIT_MS = 15_000

/** A promotion this site did not follow, kept for `mesh accept`. */
interface Held {
  dataset: string
  epoch: number
  info: DatasetInfo
  code: string
  at: number
}

const keyOf = (id: string, epoch: number, log: Uint8Array) => `${id}/${epoch}/${hex(log)}`

export class Trust {
  /** Promotions checked and followed here (or made here), by dataset/epoch/log. */
  private readonly accepted = new Set<string>()
  /** Promotions left pending (a live origin's word awaited, a header not here yet), by statement id. */
  private readonly pending = new Map<string, Statement>()
  /** Heads announced by a peer whose promotion is being looked for, by log key. */
  private readonly sought = new Map<string, { d: DatasetInfo; from: Peer; tries: number }>()
  /** What was refused or is pending here, by dataset/epoch: what `mesh accept` can adopt. */
  private readonly held = new Map<string, Held>()
  /** Handovers this site signed and withdrew (the named site did not take over in time), by statement id. */
  readonly withdrawn = new Set<string>()
  private timer: NodeJS.Timeout | null = null
  /** How many times a pending promotion's log header did not come, by statement id. */
  private readonly headerMisses = new Map<string, number>()

  constructor(private readonly node: MeshNode) {}

  private get beat(): number {
    return this.node.opts.heartbeatMs ?? 5000
  }

  /** Registers the promotion and handover handlers and the pending re-check; before the statements load. */
  start(): void {
    const node = this.node
    node.statements.on(StatementKind.promotion, { receive: (s, from) => this.receive(s, from) })
    node.statements.on(StatementKind.handover, { receive: (s, from) => this.receiveHandover(s, from) })
    node.on('report', () => this.recheckSoon())
    this.timer = setInterval(() => this.recheck(), this.beat)
  }

  close(): void {
    if (this.timer) clearInterval(this.timer)
  }

  /**
   * A peer announced `d`, which supersedes what this site follows (or is a dataset new here). True when it may
   * be followed at once (its promotion was checked here); otherwise the promotion is looked for, and the head is
   * adopted by this file when it passes.
   */
  mayFollow(d: DatasetInfo, from: Peer, have: DatasetInfo | undefined): boolean {
    if (d.epoch === 0) {
      if (!have) return true
      this.node.alarms.raise({
        code: 'BAD_PROMOTION',
        site: from.site,
        dataset: d.id,
        text: `${from.site} announced a second first log (epoch 0) of ${d.name} (log ${short(d.log)}); not followed`
      })
      return false
    }
    if (this.isAccepted(d.id, d.epoch, d.log)) return true
    this.seek(d, from)
    return false
  }

  /** The promotion for this (dataset, epoch, log) was checked here, or made here. */
  isAccepted(id: string, epoch: number, log: Uint8Array): boolean {
    const k = keyOf(id, epoch, log)
    if (this.accepted.has(k)) return true
    for (const s of this.node.statements.list(StatementKind.promotion)) {
      try {
        const p = decodePromotion(s.body)
        this.accepted.add(keyOf(p.dataset, p.epoch, p.log))
      } catch {
        // A kept statement this version cannot read counts for nothing.
      }
    }
    return this.accepted.has(k)
  }

  /** Looks for the promotion of an announced head in its log's header (fetched from peers, a bounded wait). */
  private seek(d: DatasetInfo, from: Peer): void {
    const k = hex(d.log)
    const have = this.sought.get(k)
    if (have) return
    const entry = { d, from, tries: 0 }
    this.sought.set(k, entry)
    void this.look(entry)
  }

  private async look(entry: { d: DatasetInfo; from: Peer; tries: number }): Promise<void> {
    const node = this.node
    const { d } = entry
    const from = entry.from.site
    const k = hex(d.log)
    // A blind site or an observer cannot read a log's header: it follows a new epoch on its signed promotion alone,
    // which reaches it on the statements message (the full members check the header).
    if (node.role !== 'full') {
      this.sought.delete(k)
      return
    }
    let header: HeaderEntry | null = null
    try {
      header = await this.headerOf(d.log, { dataset: d.id, epoch: d.epoch }, HEADER_WAIT_MS)
    } catch (err) {
      this.sought.delete(k)
      this.refuseHead(d, 'BAD_PROMOTION', from, `its log cannot be read (${(err as Error).message})`)
      return
    }
    if (node.closing) return
    if (header === null) {
      // Not here yet: try again a while (the log's holder may be reconnecting), then give up quietly.
      if (++entry.tries < 20) node.later(() => void this.look(entry), 5000)
      else this.sought.delete(k)
      return
    }
    if (header.dataset !== d.id || header.epoch !== d.epoch) {
      this.sought.delete(k)
      this.refuseHead(
        d,
        'BAD_PROMOTION',
        from,
        `its log's header names dataset ${header.dataset}, epoch ${header.epoch}`
      )
      return
    }
    if (!header.promotion) {
      this.sought.delete(k)
      this.refuseHead(d, 'UNSIGNED_PROMOTION', from, 'its log carries no signed promotion')
      return
    }
    let s: Statement
    try {
      s = decodeStatement(header.promotion)
    } catch (err) {
      this.sought.delete(k)
      this.refuseHead(d, 'BAD_PROMOTION', from, `its log's promotion cannot be read (${(err as Error).message})`)
      return
    }
    // Through the statements' door: the envelope is checked, the promotion kept and relayed when it passes.
    await node.statements.retry([s], entry.from)
    this.sought.delete(k)
  }

  /** A head refused without a statement to blame (none in its log, or one that cannot be read). */
  private refuseHead(d: DatasetInfo, code: string, site: string, why: string): void {
    const name = this.node.state.datasets.find((x) => x.id === d.id)?.name ?? d.name
    this.hold(d, code)
    this.node.alarms.raise({
      code,
      site,
      dataset: d.id,
      text: `${site} announced epoch ${d.epoch} of ${name} (log ${short(d.log)}) but ${why}; not followed`
    })
  }

  private hold(info: DatasetInfo, code: string): void {
    this.held.set(`${info.id}/${info.epoch}`, { dataset: info.id, epoch: info.epoch, info, code, at: Date.now() })
  }

  /**
   * Block 0 of a log, waiting up to `ms` for peers to send it; null when it did not come. `place` is what the
   * announcement says the log is: this site does not know the log yet, and its blocks are encrypted when its
   * dataset's logs are from that epoch on.
   */
  private async headerOf(key: Uint8Array, place: LogPlace, ms: number): Promise<HeaderEntry | null> {
    const log = await this.node.openLog(key, place)
    let timer: NodeJS.Timeout | undefined
    const late = new Promise<null>((resolve) => (timer = setTimeout(() => resolve(null), ms)))
    try {
      return await Promise.race([log.header({ wait: true }), late])
    } finally {
      clearTimeout(timer)
    }
  }

  // --- promotions ------------------------------------------------------------------------------------------

  /** The promotion handler (see the file's comment for the order of the checks). */
  async receive(s: Statement, from: Peer | null): Promise<Outcome> {
    const node = this.node
    const via = from?.site ?? node.opts.site
    let p: Promotion
    try {
      p = decodePromotion(s.body)
    } catch (err) {
      return refused('BAD_PROMOTION', via, '', `${via} sent a promotion that cannot be read: ${(err as Error).message}`)
    }
    const id = statementId(s)
    const head = node.state.datasets.find((d) => d.id === p.dataset)
    const name = head?.name ?? p.name
    const what = `epoch ${p.epoch} of ${name} (log ${short(p.log)})`
    if (!node.admission.isMember(s.signer)) {
      return refused(
        'BAD_PROMOTION',
        via,
        p.dataset,
        `${via} sent a promotion of ${what} signed by a key that is not a member (${short(s.signer)})`
      )
    }
    const signer = node.admission.memberName(s.signer)
    const no = (code: string, why: string): Outcome => {
      this.pending.delete(id)
      const info = this.infoOf(s, p, head)
      if (info) this.hold(info, code)
      return refused(code, signer, p.dataset, `${signer} signed ${what}: ${why}; not followed`)
    }
    if (node.key.equals(Buffer.from(s.signer))) {
      // Made here (publish): promoteNow already follows it.
      this.accepted.add(keyOf(p.dataset, p.epoch, p.log))
      return { outcome: 'new' }
    }
    const may = node.policy.mayPromote(p.dataset, s.signer)
    if (!may.ok) return no('BAD_PROMOTION', may.reason)
    if (p.site !== signer) return no('BAD_PROMOTION', `it names the promoting site ${p.site}`)
    if (head && (head.name !== p.name || head.engine !== p.engine)) {
      return no('BAD_PROMOTION', `it names dataset ${p.name} (${p.engine}), not ${head.name} (${head.engine})`)
    }
    if (s.at > Date.now() + CLOCK_SKEW_MS) {
      return no('BAD_PROMOTION', `it is dated ${Math.round((s.at - Date.now()) / 1000)} s in the future`)
    }
    if (this.isAccepted(p.dataset, p.epoch, p.log)) return { outcome: 'known' }
    const info = this.infoOf(s, p, head)!
    if (head && !supersedes(info, head)) {
      // An older epoch, or the losing log of two promotions of the same epoch: nothing to follow.
      return { outcome: 'stale' }
    }
    // 3. The parent is a log of the chain this site knows, one epoch before.
    const parentEpoch = head ? this.epochOf(head, p.parent.key) : null
    if (head && parentEpoch === null) {
      // Perhaps the promotion of the epoch in between is still on its way: decided again when one is accepted.
      this.pending.set(id, s)
      return { outcome: 'pending' }
    }
    if (parentEpoch !== null && p.epoch !== parentEpoch + 1) {
      return no(
        'BAD_PROMOTION',
        `it continues from epoch ${parentEpoch}, so it can only start epoch ${parentEpoch + 1}`
      )
    }
    // 4. The new log's header agrees, and carries this statement. A blind site cannot read it: the statement,
    // which names the log's key and is signed, stands for it there (every full member reads the header).
    if (node.role === 'full') {
      let header: HeaderEntry | null
      try {
        header = await this.headerOf(p.log, { dataset: p.dataset, epoch: p.epoch }, HEADER_WAIT_MS)
      } catch (err) {
        return no('BAD_PROMOTION', `its log cannot be read (${(err as Error).message})`)
      }
      if (header === null) {
        // A log no peer serves (a forged key) is not waited for forever: each look waits HEADER_WAIT_MS.
        const misses = (this.headerMisses.get(id) ?? 0) + 1
        this.headerMisses.set(id, misses)
        if (misses >= 8) return no('BAD_PROMOTION', 'no site could send its log, so it cannot be checked')
        this.pending.set(id, s)
        return { outcome: 'pending' }
      }
      this.headerMisses.delete(id)
      if (
        header.dataset !== p.dataset ||
        header.epoch !== p.epoch ||
        header.parent === null ||
        !sameBytes(header.parent.key, p.parent.key) ||
        header.parent.length !== p.parent.length
      ) {
        return no('BAD_PROMOTION', 'its log header says otherwise (dataset, epoch or branch point)')
      }
      if (!header.promotion || !sameId(header.promotion, id)) {
        return no('UNSIGNED_PROMOTION', 'its log carries no signed promotion (or another one)')
      }
    }
    if (!head) return this.adopt(s, p, info)
    // 5. The branch point is within the parent log.
    const L = p.parent.length
    const known = this.parentLength(p)
    if (L > known) {
      return no('BRANCH_POINT', `its branch point ${L} is beyond the ${count(known, 'entry', 'entries')} the log has`)
    }
    const wroteParent = this.wrote(p.dataset, p.parent.key)
    // 6. No site applied more than L of the parent log (the parent's origin keeps its writes as a divergence).
    if (!wroteParent) {
      const beyond = await this.appliedBeyond(p, s.signer)
      if (beyond) {
        return no('BRANCH_POINT', `it branches at ${L} but ${beyond.site} had applied ${beyond.applied} of that log`)
      }
    }
    // 7. The origin's consent.
    const parentOrigin = await this.originOf(head, p.parent.key)
    if (p.handover) {
      const bad = this.checkHandover(p, s.signer, parentOrigin)
      if (bad) return no('BAD_PROMOTION', bad)
      if (wroteParent) {
        if (this.withdrawn.has(statementId(p.handover))) {
          return no('ORIGIN_LIVE', 'it carries a handover this site withdrew when the site did not take over in time')
        }
        return this.adopt(s, p, info)
      }
    } else if (wroteParent) {
      // Live from the promotion's time on, for as long as the clocks may disagree: a failover is signed after the
      // origin went quiet, so even a promoter's clock 30 s behind does not make it look live then.
      if (node.liveness.liveThrough(s.at, Math.min(s.at + CLOCK_SKEW_MS, Date.now()))) {
        return no('ORIGIN_LIVE', `this site, its origin, was running and connected then, and did not hand over`)
      }
      return this.adopt(s, p, info)
    }
    if (parentOrigin) {
      const r = node.reports.signed.get(hex(parentOrigin))?.report
      if (r?.holdings.some((h) => h.dataset === p.dataset && sameBytes(h.log, p.log))) return this.adopt(s, p, info)
      const marker = `log ${short(p.log)}`
      if (r?.notices?.some((n) => n.kind === 'alarm' && n.dataset === p.dataset && n.text.includes(marker))) {
        return no('ORIGIN_LIVE', `its origin ${r.siteName} refused it`)
      }
      if (this.originLive(parentOrigin, p)) {
        if (!this.pending.has(id)) {
          node.logger.warn('a promotion waits for its live origin', { dataset: name, epoch: p.epoch, signer })
          this.hold(info, 'PENDING')
        }
        this.pending.set(id, s)
        return { outcome: 'pending' }
      }
    }
    return this.adopt(s, p, info)
  }

  /** Follows a checked promotion: the new head everywhere here, this site's role settled, peers told. */
  private adopt(s: Statement, p: Promotion, info: DatasetInfo): Outcome {
    this.pending.delete(statementId(s))
    this.accepted.add(keyOf(p.dataset, p.epoch, p.log))
    this.follow(info, `signed by ${p.site}, checked here`)
    this.retryPendingSoon()
    return { outcome: 'new' }
  }

  /** Makes `info` this site's head of its dataset (when it supersedes it) and settles. */
  private follow(info: DatasetInfo, why: string): void {
    const node = this.node
    this.held.delete(`${info.id}/${info.epoch}`)
    for (const [k, x] of this.sought) if (x.d.id === info.id && x.d.epoch <= info.epoch) this.sought.delete(k)
    const have = node.state.datasets.find((d) => d.id === info.id)
    if (have && !supersedes(info, have)) return
    if (have) node.state.datasets = node.state.datasets.map((d) => (d.id === info.id ? info : d))
    else node.state.datasets.push(info)
    node.saveState()
    node.logger.info('new epoch', { dataset: info.name, epoch: info.epoch, origin: info.originSite, why })
    node.roles.settleLater(info.id)
    node.control.broadcast((peer) => peer.send('datasets', node.state.datasets))
    node.reports.markDirty()
  }

  /**
   * `mesh accept DATASET --epoch N`: a person follows a promotion this site refused or holds pending. The alarms
   * about it here are cleared.
   */
  accept(dataset: string, epoch: number): { dataset: string; epoch: number; origin: string } {
    const node = this.node
    const head = node.state.datasets.find((d) => d.name === dataset || d.id === dataset)
    if (!head) throw MeshError.UNKNOWN_DATASET(`no dataset named ${dataset} in this mesh`)
    const h = this.held.get(`${head.id}/${epoch}`)
    if (!h) {
      throw MeshError.NOTHING_TO_ACCEPT(`${node.opts.site} holds no refused or pending epoch ${epoch} of ${head.name}`)
    }
    for (const [id, s] of this.pending) {
      const p = decodePromotion(s.body)
      if (p.dataset === head.id && p.epoch === epoch) this.pending.delete(id)
    }
    this.accepted.add(keyOf(h.info.id, h.info.epoch, h.info.log))
    node.alarms.clear((a) => a.dataset === head.id && a.text.includes(`log ${short(h.info.log)}`))
    node.logger.warn('a person accepted a promotion this site had not followed', {
      dataset: head.name,
      epoch,
      origin: h.info.originSite,
      was: h.code
    })
    this.follow(h.info, 'accepted by a person (mesh accept)')
    return { dataset: head.name, epoch, origin: h.info.originSite }
  }

  // --- handovers -------------------------------------------------------------------------------------------

  /**
   * A handover: kept and relayed when its signer is the origin of the log it seals; at the site it names, the
   * take-over starts (failover.ts, takeOver).
   */
  private receiveHandover(s: Statement, from: Peer | null): Outcome {
    const node = this.node
    const via = from?.site ?? node.opts.site
    let h: Handover
    try {
      h = decodeHandover(s.body)
    } catch (err) {
      return refused('BAD_PROMOTION', via, '', `${via} sent a handover that cannot be read: ${(err as Error).message}`)
    }
    const signer = node.admission.memberName(s.signer)
    const head = node.state.datasets.find((d) => d.id === h.dataset)
    if (!head) return { outcome: 'new' }
    if (h.epoch <= head.epoch) return { outcome: 'stale' }
    if (!sameBytes(head.log, h.parent.key) || !sameBytes(head.origin, s.signer) || h.epoch !== head.epoch + 1) {
      return refused(
        'BAD_PROMOTION',
        signer,
        h.dataset,
        `${signer} signed a handover of ${head.name} (epoch ${h.epoch}) to ${h.toSite} that does not match the ` +
          `dataset's origin and log here; not followed`
      )
    }
    if (node.key.equals(Buffer.from(s.signer))) return { outcome: 'new' }
    if (node.key.equals(Buffer.from(h.to))) {
      if (Date.now() - s.at > TAKEOVER_MS) {
        // Its origin has given up on it by now (handover.ts waits longer than this) and takes writes again.
        node.logger.warn('a handover names this site, but too late to take over', { dataset: head.name, from: signer })
        return { outcome: 'new' }
      }
      node.logger.info('a handover names this site: taking over', {
        dataset: head.name,
        from: signer,
        at: h.parent.length
      })
      void node.failover.takeOver(s, h).catch((err) => {
        node.logger.error('could not take over', { dataset: head.name, error: (err as Error).message })
      })
    }
    return { outcome: 'new' }
  }

  /** Why a promotion's handover does not give the origin's consent; null when it does. */
  private checkHandover(p: Promotion, signer: Uint8Array, parentOrigin: Uint8Array | null): string | null {
    const hs = p.handover!
    if (hs.kind !== StatementKind.handover || !verifyStatement(hs)) return 'its handover is not validly signed'
    if (!Buffer.from(hs.meshId).equals(this.node.state.meshId)) return 'its handover was made for another mesh'
    if (parentOrigin === null || !sameBytes(hs.signer, parentOrigin)) {
      return 'its handover is not signed by the origin of the log it continues from'
    }
    let h: Handover
    try {
      h = decodeHandover(hs.body)
    } catch {
      return 'its handover cannot be read'
    }
    if (
      h.dataset !== p.dataset ||
      h.epoch !== p.epoch ||
      !sameBytes(h.parent.key, p.parent.key) ||
      h.parent.length !== p.parent.length ||
      !sameBytes(h.to, signer)
    ) {
      return 'its handover names another dataset, epoch, branch point or site'
    }
    return null
  }

  // --- what the checks ask ---------------------------------------------------------------------------------

  private infoOf(s: Statement, p: Promotion, head: DatasetInfo | undefined): DatasetInfo | null {
    const sought = this.sought.get(hex(p.log))?.d
    const base = head ?? sought
    if (!base) {
      return {
        id: p.dataset,
        name: p.name,
        engine: p.engine,
        origin: Buffer.from(s.signer),
        originSite: p.site,
        epoch: p.epoch,
        log: Buffer.from(p.log),
        createdAt: s.at
      }
    }
    return { ...base, origin: Buffer.from(s.signer), originSite: p.site, epoch: p.epoch, log: Buffer.from(p.log) }
  }

  /** The epoch of a log of this dataset's chain as this site knows it; null when it knows no such log. */
  private epochOf(head: DatasetInfo, key: Uint8Array): number | null {
    if (sameBytes(head.log, key)) return head.epoch
    const local = this.node.state.local.find((l) => l.dataset === head.id)
    const w = local?.written.find((x) => sameBytes(x.key, key))
    if (w) return w.epoch
    const r = this.node.roles.replicas.get(head.id)
    const seg = r?.chain.find((x) => sameBytes(x.log.key, key))
    if (seg) return seg.epoch
    for (const s of this.node.statements.list(StatementKind.promotion)) {
      try {
        const p = decodePromotion(s.body)
        if (p.dataset === head.id && sameBytes(p.log, key)) return p.epoch
        if (p.dataset === head.id && sameBytes(p.parent.key, key)) return p.epoch - 1
      } catch {
        // Unreadable: no help.
      }
    }
    return null
  }

  /**
   * The key of the site that wrote a log of the dataset's chain: the head's origin, this site, a promotion's
   * signer, or (epoch 0, whose log no promotion names) the member its header names; null when this site cannot
   * tell.
   */
  private async originOf(head: DatasetInfo, key: Uint8Array): Promise<Uint8Array | null> {
    if (sameBytes(head.log, key)) return head.origin
    if (this.wrote(head.id, key)) return this.node.key
    for (const s of this.node.statements.list(StatementKind.promotion)) {
      try {
        if (sameBytes(decodePromotion(s.body).log, key)) return s.signer
      } catch {
        // Unreadable: no help.
      }
    }
    const header = await this.node
      .heldLog(key)
      ?.header({ wait: false })
      .catch(() => null)
    const m = header && header.epoch === 0 ? this.node.state.members.find((x) => x.site === header.site) : undefined
    return m ? m.key : null
  }

  private wrote(id: string, key: Uint8Array): boolean {
    return this.node.state.local.some((l) => l.dataset === id && l.written.some((w) => sameBytes(w.key, key)))
  }

  /** The parent log's length as far as anyone knows: this site's copy or any site's report. */
  private parentLength(p: Promotion): number {
    let n = this.node.heldLog(p.parent.key)?.core.length ?? 0
    for (const r of this.node.reports.signed.values()) {
      for (const h of r.report.holdings) if (sameBytes(h.log, p.parent.key)) n = Math.max(n, h.length)
    }
    return n
  }

  /**
   * A site (this one, or a reachable holder by a fresh report; not the parent's origin, not the signer) that
   * applied more of the parent log than the promotion keeps.
   */
  private async appliedBeyond(p: Promotion, signer: Uint8Array): Promise<{ site: string; applied: number } | null> {
    const node = this.node
    const L = p.parent.length
    const r = node.roles.replicas.get(p.dataset)
    if (r && sameBytes(r.log.key, p.parent.key) && r.loop.stats.applied > L) {
      if (!(await this.onlyFences(p.parent.key, L, r.loop.stats.applied))) {
        return { site: node.opts.site, applied: r.loop.stats.applied }
      }
    }
    const head = node.state.datasets.find((d) => d.id === p.dataset)
    const parentOrigin = head ? await this.originOf(head, p.parent.key) : null
    for (const sr of node.reports.signed.values()) {
      const site = sr.report.site
      if (node.key.equals(Buffer.from(site)) || sameBytes(site, signer)) continue
      if (parentOrigin && sameBytes(site, parentOrigin)) continue
      if (Date.now() - node.reports.lastHeard(site) > 3 * this.beat) continue
      const h = sr.report.holdings.find((x) => x.dataset === p.dataset && sameBytes(x.log, p.parent.key))
      if (h && h.applied > L && !(await this.onlyFences(p.parent.key, L, h.applied))) {
        return { site: sr.report.siteName, applied: h.applied }
      }
    }
    return null
  }

  /**
   * True when blocks [from, to) of a log, in this site's copy, are all fence entries: the old origin marks its
   * log where it was fenced (a handover's seal too), which drops no write. Not held here: false.
   */
  private async onlyFences(key: Uint8Array, from: number, to: number): Promise<boolean> {
    const log = this.node.heldLog(key)
    if (!log || to - from > 16) return false
    for (let i = from; i < to; i++) {
      const e = await log.entry(i, { wait: false }).catch(() => null)
      if (e?.kind !== 'fence') return false
    }
    return true
  }

  /** The parent's origin is live: its own report arrived within three heartbeats, capturing the parent log. */
  private originLive(key: Uint8Array, p: Promotion): boolean {
    const node = this.node
    if (Date.now() - node.reports.lastHeard(key) >= 3 * this.beat) return false
    const r = node.reports.signed.get(hex(key))?.report
    const h = r?.holdings.find((x) => x.dataset === p.dataset && sameBytes(x.log, p.parent.key))
    return h !== undefined && h.error === '' && h.applied === h.length
  }

  private recheckQueued = false

  private recheckSoon(): void {
    if (this.recheckQueued || this.pending.size === 0) return
    this.recheckQueued = true
    setTimeout(() => {
      this.recheckQueued = false
      this.recheck()
    }, 200)
  }

  private retryPendingSoon(): void {
    if (this.pending.size > 0) setTimeout(() => this.recheck(), 100)
  }

  /** Decides the pending promotions again (an origin's report changed, it fell silent, a parent arrived). */
  private recheck(): void {
    if (this.pending.size === 0 || this.node.closing || this.rechecking) return
    this.rechecking = true
    this.node.statements
      .retry([...this.pending.values()])
      .catch(() => {})
      .finally(() => {
        this.rechecking = false
      })
  }

  private rechecking = false

  /** Waits up to `ms` for `check` to hold. */
  static async until(check: () => boolean, ms: number, closing: () => boolean): Promise<boolean> {
    const end = Date.now() + ms
    while (!check()) {
      if (Date.now() > end || closing()) return false
      await sleep(100)
    }
    return true
  }
}

function refused(code: string, site: string, dataset: string, reason: string): Outcome {
  return { outcome: 'refused', code, site, dataset, reason }
}

function sameId(bytes: Uint8Array, id: string): boolean {
  try {
    return statementId(decodeStatement(bytes)) === id
  } catch {
    return false
  }
}
