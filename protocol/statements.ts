/**
 * Signed statements: what one site declares to the whole mesh and every site checks for itself (a member
 * admitted or removed, a key rotated, a promotion or handover, a promotion policy, a dataset's data key given
 * to a member). They travel on the control channel's `statements` message and are relayed like reports, so a
 * site that never connects to the signer still gets them, and cannot be fooled by the site that relays them:
 * the signature covers the mesh id, the kind, the signer, the time and the body, under a domain string of
 * its own, so a statement of another mesh, of another kind, or a report's signature never passes for one.
 *
 * The envelope is the same for every kind; what a kind's body holds, and who may sign it, is that kind's own
 * business (its encoding lives next to the code that checks it). The kinds only grow: a retired kind keeps
 * its number, and a site that meets a kind it does not know keeps and relays it without acting on it.
 *
 * No I/O here.
 */
import c from 'compact-encoding'
import crypto from 'hypercore-crypto'
import { MeshError } from './errors.ts'

type State = { start: number; end: number; buffer: Uint8Array | null }

/** The statement kinds. Numbers never change meaning. */
export const StatementKind = {
  /** A site admitted to the mesh (signed by the site that admitted it, or by itself when it founded the mesh). */
  member: 1,
  /** A site removed from the mesh. */
  removal: 2,
  /** A site's key replaced by a new one (signed by the old key; the body carries the new key's signature). */
  rotation: 3,
  /** A new epoch of a dataset, signed by the site that became its origin. */
  promotion: 4,
  /** The origin's consent to hand its dataset to another site at a sealed length. */
  handover: 5,
  /** Which sites may promote a dataset, signed by its origin. */
  policy: 6,
  /** A dataset's data key, sealed to one member's key. */
  dataKey: 7
} as const

export type StatementKindName = keyof typeof StatementKind

/** The version of the statement envelope. */
export const STATEMENT_VERSION = 1

/** What the signature covers starts with this, so no other signed message of the mesh can pass for a statement. */
const DOMAIN = Buffer.from('branchmesh-statement/1\n')

export interface Statement {
  kind: number
  /** The mesh it belongs to: a statement made for another mesh never verifies here. */
  meshId: Uint8Array
  /** The signing site's node key. */
  signer: Uint8Array
  /** The signer's clock when it signed, ms. */
  at: number
  /** The kind's own encoding. */
  body: Uint8Array
  signature: Uint8Array
}

const signable = {
  preencode(s: State, m: Omit<Statement, 'signature'>) {
    c.fixed(DOMAIN.length).preencode(s, DOMAIN)
    c.uint.preencode(s, m.kind)
    c.fixed32.preencode(s, m.meshId)
    c.fixed32.preencode(s, m.signer)
    c.uint.preencode(s, m.at)
    c.buffer.preencode(s, m.body)
  },
  encode(s: State, m: Omit<Statement, 'signature'>) {
    c.fixed(DOMAIN.length).encode(s, DOMAIN)
    c.uint.encode(s, m.kind)
    c.fixed32.encode(s, m.meshId)
    c.fixed32.encode(s, m.signer)
    c.uint.encode(s, m.at)
    c.buffer.encode(s, m.body)
  },
  decode(): never {
    throw new Error('not decoded')
  }
}

/** Signs a statement with a site's key pair. */
export function signStatement(
  kind: number,
  meshId: Uint8Array,
  keyPair: { publicKey: Uint8Array; secretKey: Uint8Array },
  body: Uint8Array,
  at = Date.now()
): Statement {
  const m = { kind, meshId, signer: keyPair.publicKey, at, body }
  return { ...m, signature: crypto.sign(c.encode(signable, m), keyPair.secretKey) }
}

/** True when the signature is the signer's over everything else in the statement. */
export function verifyStatement(s: Statement): boolean {
  if (s.signature.byteLength !== 64 || s.signer.byteLength !== 32) return false
  try {
    return crypto.verify(c.encode(signable, s), s.signature, s.signer)
  } catch {
    return false
  }
}

/** A stable identity for a statement (its signature's hash), to keep and relay each one once. */
export function statementId(s: Statement): string {
  return Buffer.from(crypto.hash(Buffer.from(s.signature))).toString('hex')
}

export const statementEncoding = {
  preencode(s: State, m: Statement) {
    c.uint.preencode(s, STATEMENT_VERSION)
    c.uint.preencode(s, m.kind)
    c.fixed32.preencode(s, m.meshId)
    c.fixed32.preencode(s, m.signer)
    c.uint.preencode(s, m.at)
    c.buffer.preencode(s, m.body)
    c.fixed64.preencode(s, m.signature)
  },
  encode(s: State, m: Statement) {
    c.uint.encode(s, STATEMENT_VERSION)
    c.uint.encode(s, m.kind)
    c.fixed32.encode(s, m.meshId)
    c.fixed32.encode(s, m.signer)
    c.uint.encode(s, m.at)
    c.buffer.encode(s, m.body)
    c.fixed64.encode(s, m.signature)
  },
  decode(s: State): Statement {
    const version = c.uint.decode(s)
    if (version !== STATEMENT_VERSION) {
      throw MeshError.PROTOCOL_VERSION(`a statement of version ${version}; this site reads ${STATEMENT_VERSION}`)
    }
    const kind = c.uint.decode(s)
    const meshId = c.fixed32.decode(s)
    const signer = c.fixed32.decode(s)
    const at = c.uint.decode(s)
    const body = c.buffer.decode(s)
    const signature = c.fixed64.decode(s)
    if (body === null) throw MeshError.BAD_ENTRY('a statement without a body')
    return { kind, meshId, signer, at, body, signature }
  }
}

/** The control channel's `statements` message: `uint version`, then the statements. */
export const statementsMessage = {
  preencode(s: State, list: Statement[]) {
    c.uint.preencode(s, STATEMENT_VERSION)
    c.array(statementEncoding).preencode(s, list)
  },
  encode(s: State, list: Statement[]) {
    c.uint.encode(s, STATEMENT_VERSION)
    c.array(statementEncoding).encode(s, list)
  },
  decode(s: State): Statement[] {
    const version = c.uint.decode(s)
    if (version !== STATEMENT_VERSION) {
      throw MeshError.PROTOCOL_VERSION(
        `a statements message of version ${version}; this site reads ${STATEMENT_VERSION}`
      )
    }
    return c.array(statementEncoding).decode(s)
  }
}

/** Encodes a statement on its own (to keep it in a file, or in a log's header). */
export function encodeStatement(s: Statement): Uint8Array {
  return c.encode(statementEncoding, s)
}

/**
 * Decodes `bytes` with `enc`, or throws BAD_ENTRY naming `what` they were meant to be (a MeshError the
 * encoding throws itself, UNKNOWN_VERSION say, passes as it is). Every statement body decodes through it.
 */
export function decodeOr<T>(enc: { decode(s: State): T }, bytes: Uint8Array, what: string): T {
  try {
    return c.decode(enc as never, bytes) as T
  } catch (err) {
    if (err instanceof MeshError) throw err
    throw MeshError.BAD_ENTRY(`not ${what}: ${(err as Error).message}`)
  }
}

/** Decodes a statement encodeStatement wrote; BAD_ENTRY when the bytes are not one. */
export function decodeStatement(bytes: Uint8Array): Statement {
  return decodeOr(statementEncoding, bytes, 'a statement')
}
