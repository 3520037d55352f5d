/**
 * Signed statements (protocol/statements.ts) at this site: received from peers, checked, acted on by the part
 * of the node each kind belongs to, kept in statements.json and relayed, so that every site ends up holding
 * every statement the mesh has made, whoever it connects to.
 *
 * What this file checks is the envelope: the mesh id and the signature. A statement that fails either is
 * refused, never relayed, and raised as an alarm naming the peer that sent it. Whether the signer may say what
 * it says (a member admitting a site, the origin consenting to a handover) is the kind handler's decision.
 */
import { decodeStatement, encodeStatement, statementId, verifyStatement, type Statement } from '../protocol/index.ts'
import type { Peer } from './control.ts'
import type { MeshNode } from './node.ts'
import { readJsonFile, writeFileAtomic } from './state.ts'
import { short } from './util.ts'

/** What a kind handler made of a statement whose envelope is good. */
export type Outcome =
  /** Acted on here: kept, and relayed to the other peers. */
  | { outcome: 'new' }
  /** Nothing new here (this site already had the same effect): kept, not relayed again. */
  | { outcome: 'known' }
  /** Cannot be decided yet (a log header not here yet, a live origin's word awaited): not kept; ask again later. */
  | { outcome: 'pending' }
  /** Superseded by what this site holds (an older policy): dropped without a word. */
  | { outcome: 'stale' }
  /** Not accepted: dropped, not relayed, and raised as an alarm naming `site`. */
  | { outcome: 'refused'; code: string; reason: string; site: string; dataset?: string }

export interface StatementHandler {
  receive(s: Statement, from: Peer | null): Outcome | Promise<Outcome>
}

export class Statements {
  private readonly handlers = new Map<number, StatementHandler>()
  /** Every statement kept here, by statementId; unknown kinds too (kept and relayed for newer sites). */
  private readonly held = new Map<string, Statement>()
  /** Statements refused here, by id, with why, so that the same one relayed again is not raised twice. */
  private readonly refused = new Map<string, Outcome>()

  constructor(private readonly node: MeshNode) {}

  private get file(): string {
    return `${this.node.paths.dir}/statements.json`
  }

  /** Each part of the node registers the kinds it acts on before start(). */
  on(kind: number, handler: StatementHandler): void {
    this.handlers.set(kind, handler)
  }

  /** Reads the statements kept here (statements.json) without acting on them again. */
  load(): void {
    const j = readJsonFile(this.file) as string[] | null
    for (const h of j ?? []) {
      try {
        const s = decodeStatement(Buffer.from(h, 'hex'))
        this.held.set(statementId(s), s)
      } catch (err) {
        this.node.logger.warn('left out a kept statement this version cannot read', { error: (err as Error).message })
      }
    }
  }

  /** The statements kept here of one kind (all kinds when omitted), oldest signed first. */
  list(kind?: number): Statement[] {
    return [...this.held.values()].filter((s) => kind === undefined || s.kind === kind).sort((a, b) => a.at - b.at)
  }

  /** Forgets kept statements (a superseded policy, say); they are no longer sent to peers. */
  forget(match: (s: Statement) => boolean): void {
    let changed = false
    for (const [id, s] of this.held) {
      if (match(s)) {
        this.held.delete(id)
        changed = true
      }
    }
    if (changed) this.save()
  }

  /** A statement this site made: acted on here first, then kept and sent to every peer. */
  async publish(s: Statement): Promise<Outcome> {
    return this.take(s, null)
  }

  /** A new peer gets every statement kept here. */
  sendAllTo(peer: Peer): void {
    const all = this.list()
    if (all.length > 0) peer.send('statements', all)
  }

  /** Statements from a peer, checked one by one in the order they were signed. */
  async receive(from: Peer, list: Statement[]): Promise<void> {
    for (const s of [...list].sort((a, b) => a.at - b.at)) {
      try {
        await this.take(s, from)
      } catch (err) {
        this.node.logger.error('could not act on a statement', { from: from.site, error: (err as Error).message })
      }
    }
  }

  /**
   * Statements shown on a connection that has no control channel yet (a new member's credentials,
   * node/membership.ts), checked in the order they were signed; `via` names the connection in alarms.
   */
  async receiveFrom(via: string, list: Statement[]): Promise<Outcome[]> {
    const out: Outcome[] = []
    for (const s of [...list].sort((a, b) => a.at - b.at)) out.push(await this.take(s, null, via))
    return out
  }

  /**
   * Asks the handlers again about the statements they left pending (called when what they wait for changes);
   * `from`: the peer they came from, when known (a refusal names it).
   */
  async retry(pending: Statement[], from: Peer | null = null): Promise<void> {
    for (const s of pending) await this.take(s, from)
  }

  private async take(s: Statement, from: Peer | null, through?: string): Promise<Outcome> {
    const node = this.node
    const id = statementId(s)
    if (this.held.has(id)) return { outcome: 'known' }
    const before = this.refused.get(id)
    if (before) return before
    const via = from?.site ?? through ?? node.opts.site
    if (!Buffer.from(s.meshId).equals(node.state.meshId) || !verifyStatement(s)) {
      const what = !Buffer.from(s.meshId).equals(node.state.meshId) ? 'made for another mesh' : 'with a bad signature'
      this.refused.set(id, { outcome: 'refused', code: 'FORGED_STATEMENT', reason: what, site: via })
      node.alarms.raise({
        code: 'FORGED_STATEMENT',
        site: via,
        dataset: '',
        text: `${via} sent a statement ${what} (claimed signer ${node.admission.memberName(s.signer)})`
      })
      return { outcome: 'refused', code: 'FORGED_STATEMENT', reason: what, site: via }
    }
    const handler = this.handlers.get(s.kind)
    // A kind this version does not know: kept and relayed for the sites that do.
    const out: Outcome = handler ? await handler.receive(s, from) : { outcome: 'new' }
    if (out.outcome === 'new' || out.outcome === 'known') {
      this.held.set(id, s)
      this.save()
      if (out.outcome === 'new') node.control.broadcast((p) => p.send('statements', [s]), from ?? undefined)
    } else if (out.outcome === 'refused') {
      this.refused.set(id, out)
      node.alarms.raise({ code: out.code, site: out.site, dataset: out.dataset ?? '', text: out.reason })
      node.logger.error('refused a statement', {
        code: out.code,
        site: out.site,
        from: via,
        signer: short(s.signer),
        reason: out.reason
      })
    }
    return out
  }

  private save(): void {
    saveStatements(this.node.paths.dir, this.list())
  }
}

/** Writes statements.json in data directory `dir` (`mesh join` keeps the ones the welcome carried). */
export function saveStatements(dir: string, list: Statement[]): void {
  const j = list.map((s) => Buffer.from(encodeStatement(s)).toString('hex'))
  writeFileAtomic(`${dir}/statements.json`, `${JSON.stringify(j)}\n`, 0o600)
}
