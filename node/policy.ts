/**
 * Who may promote a dataset (issue 15 item 4). By default any full member (not blind, not an observer) may:
 * `mayPromote` is what every site asks before following a promotion, and what `mesh promote` asks first.
 *
 * A dataset's origin may narrow it (`mesh policy DATASET --promote office`): a policy statement
 * (StatementKind.policy) carried to every site and kept in mesh.json; the newest the origin signed wins, and
 * `--promote any` signs an empty list, the default again. A policy signed by anyone but the origin is refused
 * and raised as an alarm. One a former origin signed before a promotion is dropped without a word (a site
 * catching up meets it after the new epoch): it is not applied either way.
 */
import {
  MeshError,
  StatementKind,
  decodePolicyBody,
  encodePolicyBody,
  signStatement,
  type PolicyBody,
  type Statement
} from '../protocol/index.ts'
import { findDataset } from './history.ts'
import type { MeshNode } from './node.ts'
import type { Outcome } from './statements.ts'
import type { SiteStatus } from './status.ts'

const same = (a: Uint8Array, b: Uint8Array) => Buffer.from(a).equals(Buffer.from(b))

export class Policy {
  constructor(private readonly node: MeshNode) {
    node.statements.on(StatementKind.policy, { receive: (s) => this.receive(s) })
  }

  /** Whether the site with `key` may start a new epoch of dataset `id`, and if not, why (a sentence). */
  mayPromote(id: string, key: Uint8Array): { ok: true } | { ok: false; reason: string } {
    const m = this.node.state.members.find((x) => Buffer.from(x.key).equals(key))
    const name = this.node.state.datasets.find((d) => d.id === id)?.name ?? id
    if (!m) return { ok: false, reason: `it is not a member of the mesh` }
    const role = m.role ?? 'full'
    if (role !== 'full') return { ok: false, reason: `${m.site} is a ${role} site and may not promote ${name}` }
    const sites = this.promoters(id)
    if (sites !== null && !sites.some((k) => same(k, key))) {
      return {
        ok: false,
        reason: `the promotion policy of ${name} lets only ${this.names(sites).join(', ')} promote it, not ${m.site}`
      }
    }
    return { ok: true }
  }

  /** The keys of the sites that may promote `id`, when its origin narrowed it; null for the default (any). */
  promoters(id: string): Uint8Array[] | null {
    const p = (this.node.state.policies ?? []).find((x) => x.dataset === id)
    return p && p.sites.length > 0 ? p.sites : null
  }

  /** `mesh promote` at this site: POLICY_FORBIDS at once when the policy does not name it. */
  checkPromote(dataset: string): void {
    const d = findDataset(this.node.state.datasets, dataset)
    const may = this.mayPromote(d.id, this.node.key)
    if (!may.ok) throw MeshError.POLICY_FORBIDS(may.reason, { context: { dataset: d.name } })
  }

  /** `mesh policy DATASET --promote SITE,...` (['any'] resets) at the dataset's origin: signed and published. */
  async set(dataset: string, sites: string[]): Promise<{ dataset: string; promote: string[] }> {
    const node = this.node
    const d = findDataset(node.state.datasets, dataset)
    if (!same(d.origin, node.key)) {
      throw MeshError.NOT_ORIGIN(`only ${d.originSite}, the origin of ${d.name}, may set who may promote it`)
    }
    const any = sites.length === 1 && sites[0] === 'any'
    const keys: Uint8Array[] = []
    if (!any) {
      if (sites.length === 0) throw MeshError.USAGE('--promote needs at least one site, or any')
      for (const name of sites) {
        const m = node.state.members.find((x) => x.site === name)
        if (!m) throw MeshError.UNKNOWN_SITE(`no member of the mesh is named ${name}`)
        if ((m.role ?? 'full') !== 'full')
          throw MeshError.USAGE(`${name} is a ${m.role} site: it cannot promote`, { hint: 'Name full members.' })
        keys.push(m.key)
      }
    }
    const body: PolicyBody = { dataset: d.id, sites: keys }
    const s = signStatement(StatementKind.policy, node.state.meshId, node.keyPair, encodePolicyBody(body))
    const out = await node.statements.publish(s)
    if (out.outcome === 'refused') throw MeshError.BAD_STATEMENT(out.reason)
    return { dataset: d.name, promote: any ? ['any'] : sites }
  }

  private receive(s: Statement): Outcome {
    const node = this.node
    let b: PolicyBody
    try {
      b = decodePolicyBody(s.body)
    } catch (err) {
      return { outcome: 'refused', code: 'BAD_STATEMENT', site: '', reason: `a policy that cannot be read: ${err}` }
    }
    const d = node.state.datasets.find((x) => x.id === b.dataset)
    // A dataset not heard of yet: its holders send the policy again on the next connection.
    if (!d) return { outcome: 'pending' }
    const by = node.admission.memberName(s.signer)
    if (!same(s.signer, d.origin)) {
      if (d.epoch > 0 && node.admission.roleOf(s.signer) === 'full') return { outcome: 'stale' }
      return {
        outcome: 'refused',
        code: 'NOT_ORIGIN',
        site: by,
        dataset: d.id,
        reason: `${by} signed who may promote ${d.name}, but only its origin ${d.originSite} may`
      }
    }
    const held = (node.state.policies ?? []).find((p) => p.dataset === b.dataset)
    if (held && held.at >= s.at) return { outcome: 'stale' }
    node.state.policies = [
      ...(node.state.policies ?? []).filter((p) => p.dataset !== b.dataset),
      { dataset: b.dataset, sites: b.sites.map((k) => Buffer.from(k)), signer: Buffer.from(s.signer), at: s.at }
    ]
    node.saveState()
    // The superseded policy statements are no longer sent to peers.
    node.statements.forget((x) => x.kind === StatementKind.policy && policyDataset(x) === b.dataset)
    node.logger.info('promotion policy', {
      dataset: d.name,
      promote: b.sites.length ? this.names(b.sites) : 'any full member'
    })
    return { outcome: 'new' }
  }

  private names(keys: Uint8Array[]): string[] {
    return keys.map((k) => this.node.admission.memberName(k))
  }

  /** Shows each narrowed policy in status (`promote` on the dataset: the sites' names). */
  annotate(st: SiteStatus): SiteStatus {
    for (const d of st.datasets) {
      const sites = this.promoters(d.id)
      if (sites) d.promote = this.names(sites)
    }
    return st
  }
}

function policyDataset(s: Statement): string | null {
  try {
    return decodePolicyBody(s.body).dataset
  } catch {
    return null
  }
}
