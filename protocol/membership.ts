/**
 * The bodies of the statements that say who belongs to the mesh (protocol/statements.ts), and of the one that
 * says who may promote a dataset:
 *
 * - a **member** statement (StatementKind.member): a site admitted, with its role; signed by the full member
 *   that admitted it (the inviter, when the join code is redeemed), or by a founding or older member for itself;
 * - a **removal** (StatementKind.removal): a site taken out of the mesh (a stolen till PC), signed by a full member;
 * - a **rotation** (StatementKind.rotation): a site's key replaced, signed by the old key; the body carries the
 *   new key's own signature over the old key (`proof`), so nobody can rotate a site to a key it does not hold;
 * - a **policy** (StatementKind.policy): which sites may promote a dataset, signed by its origin; no sites means
 *   any full member (the default).
 *
 * Each body starts with a flags field (today 0; unknown bits are refused), so that it can grow. No I/O here:
 * who may sign what is checked by the node (node/membership.ts, node/policy.ts).
 */
import c from 'compact-encoding'
import crypto from 'hypercore-crypto'
import type { MemberRole } from './control.ts'
import { MeshError } from './errors.ts'
import { decodeOr } from './statements.ts'

type State = { start: number; end: number; buffer: Uint8Array | null }

export interface MemberBody {
  key: Uint8Array
  site: string
  role: MemberRole
  addedAt: number
}

export interface RemovalBody {
  key: Uint8Array
  site: string
  /** In words, shown at every site ("till PC stolen"). */
  reason: string
}

export interface RotationBody {
  site: string
  newKey: Uint8Array
  /** The new key's signature over rotationProofMessage(meshId, old key). */
  proof: Uint8Array
}

export interface PolicyBody {
  dataset: string
  /** The keys of the sites that may promote it; empty: any full member. */
  sites: Uint8Array[]
}

const ROLES: MemberRole[] = ['full', 'blind', 'observer']

function flags(s: State, what: string): void {
  const f = c.uint.decode(s)
  if (f !== 0) throw MeshError.UNKNOWN_FLAGS(`${what} has unknown flag bits 0x${f.toString(16)}`)
}

export const memberBodyEncoding = {
  preencode(s: State, m: MemberBody) {
    c.uint.preencode(s, 0)
    c.fixed32.preencode(s, m.key)
    c.string.preencode(s, m.site)
    c.uint.preencode(s, ROLES.indexOf(m.role))
    c.uint.preencode(s, m.addedAt)
  },
  encode(s: State, m: MemberBody) {
    c.uint.encode(s, 0)
    c.fixed32.encode(s, m.key)
    c.string.encode(s, m.site)
    c.uint.encode(s, ROLES.indexOf(m.role))
    c.uint.encode(s, m.addedAt)
  },
  decode(s: State): MemberBody {
    flags(s, 'a member statement')
    const key = c.fixed32.decode(s)
    const site = c.string.decode(s)
    const r = c.uint.decode(s)
    if (r >= ROLES.length) throw MeshError.UNKNOWN_KIND(`a member statement with an unknown role ${r}`)
    return { key, site, role: ROLES[r], addedAt: c.uint.decode(s) }
  }
}

export const removalBodyEncoding = {
  preencode(s: State, m: RemovalBody) {
    c.uint.preencode(s, 0)
    c.fixed32.preencode(s, m.key)
    c.string.preencode(s, m.site)
    c.string.preencode(s, m.reason)
  },
  encode(s: State, m: RemovalBody) {
    c.uint.encode(s, 0)
    c.fixed32.encode(s, m.key)
    c.string.encode(s, m.site)
    c.string.encode(s, m.reason)
  },
  decode(s: State): RemovalBody {
    flags(s, 'a removal')
    return { key: c.fixed32.decode(s), site: c.string.decode(s), reason: c.string.decode(s) }
  }
}

export const rotationBodyEncoding = {
  preencode(s: State, m: RotationBody) {
    c.uint.preencode(s, 0)
    c.string.preencode(s, m.site)
    c.fixed32.preencode(s, m.newKey)
    c.fixed64.preencode(s, m.proof)
  },
  encode(s: State, m: RotationBody) {
    c.uint.encode(s, 0)
    c.string.encode(s, m.site)
    c.fixed32.encode(s, m.newKey)
    c.fixed64.encode(s, m.proof)
  },
  decode(s: State): RotationBody {
    flags(s, 'a key rotation')
    return { site: c.string.decode(s), newKey: c.fixed32.decode(s), proof: c.fixed64.decode(s) }
  }
}

export const policyBodyEncoding = {
  preencode(s: State, m: PolicyBody) {
    c.uint.preencode(s, 0)
    c.string.preencode(s, m.dataset)
    c.array(c.fixed32).preencode(s, m.sites)
  },
  encode(s: State, m: PolicyBody) {
    c.uint.encode(s, 0)
    c.string.encode(s, m.dataset)
    c.array(c.fixed32).encode(s, m.sites)
  },
  decode(s: State): PolicyBody {
    flags(s, 'a promotion policy')
    return { dataset: c.string.decode(s), sites: c.array(c.fixed32).decode(s) }
  }
}

/** What a rotation's new key signs: the mesh and the old key, under a domain of its own. */
export function rotationProofMessage(meshId: Uint8Array, oldKey: Uint8Array): Buffer {
  return Buffer.concat([Buffer.from('branchmesh-rotation/1\n'), Buffer.from(meshId), Buffer.from(oldKey)])
}

/** The new key pair's proof that it consents to replace `oldKey` in mesh `meshId`. */
export function signRotationProof(meshId: Uint8Array, oldKey: Uint8Array, newSecretKey: Uint8Array): Uint8Array {
  return crypto.sign(rotationProofMessage(meshId, oldKey), newSecretKey)
}

export function verifyRotationProof(meshId: Uint8Array, oldKey: Uint8Array, b: RotationBody): boolean {
  try {
    return crypto.verify(rotationProofMessage(meshId, oldKey), b.proof, b.newKey)
  } catch {
    return false
  }
}

export const encodeMemberBody = (m: MemberBody): Uint8Array => c.encode(memberBodyEncoding, m)
export const decodeMemberBody = (b: Uint8Array): MemberBody => decodeOr(memberBodyEncoding, b, 'a member statement')
export const encodeRemovalBody = (m: RemovalBody): Uint8Array => c.encode(removalBodyEncoding, m)
export const decodeRemovalBody = (b: Uint8Array): RemovalBody => decodeOr(removalBodyEncoding, b, 'a removal')
export const encodeRotationBody = (m: RotationBody): Uint8Array => c.encode(rotationBodyEncoding, m)
export const decodeRotationBody = (b: Uint8Array): RotationBody => decodeOr(rotationBodyEncoding, b, 'a key rotation')
export const encodePolicyBody = (m: PolicyBody): Uint8Array => c.encode(policyBodyEncoding, m)
export const decodePolicyBody = (b: Uint8Array): PolicyBody => decodeOr(policyBodyEncoding, b, 'a promotion policy')

// --- the credential channel ----------------------------------------------------------------------------------

/**
 * `branchmesh-member/1`: opened by both sides of every connection. Its handshake is all it carries: the
 * statements that make the sender a member (its member statement, those of the sites that signed it, its key
 * rotations), so that a site that has not heard of a new member yet can check it on the spot instead of
 * refusing it until the news is relayed.
 */
export const MEMBER_PROTOCOL = 'branchmesh-member/1'
