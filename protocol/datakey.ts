/**
 * A dataset's data key given to one member (StatementKind.dataKey): the key that encrypts every block of the
 * dataset's logs (hypercore block encryption), sealed to the member's node key so that only that member can
 * open it. The statement travels to every site like any other, blind sites included: what they see of it is
 * the dataset id, the receiving member's key, and a sealed box.
 *
 * Sealing: the member's ed25519 node key converted to its curve25519 form, and libsodium's sealed box
 * (crypto_box_seal: an ephemeral key pair per box, so two boxes of the same key to the same member differ and
 * the sender cannot be told from the box). The signature on the statement says who sent it.
 *
 * No I/O here.
 */
import c from 'compact-encoding'
import sodium from 'sodium-native'
import { MeshError } from './errors.ts'
import { decodeOr } from './statements.ts'

type State = { start: number; end: number; buffer: Uint8Array | null }

/** Bytes of a data key. */
export const DATA_KEY_BYTES = 32

export interface DataKeyGrant {
  /** Dataset id. */
  dataset: string
  /** Node key of the member it is sealed to. */
  to: Uint8Array
  /** The data key in a sealed box to `to`. */
  sealed: Uint8Array
}

const VERSION = 0

export const dataKeyEncoding = {
  preencode(s: State, g: DataKeyGrant) {
    c.uint.preencode(s, VERSION)
    c.string.preencode(s, g.dataset)
    c.fixed32.preencode(s, g.to)
    c.buffer.preencode(s, g.sealed)
  },
  encode(s: State, g: DataKeyGrant) {
    c.uint.encode(s, VERSION)
    c.string.encode(s, g.dataset)
    c.fixed32.encode(s, g.to)
    c.buffer.encode(s, g.sealed)
  },
  decode(s: State): DataKeyGrant {
    const version = c.uint.decode(s)
    if (version !== VERSION) throw MeshError.UNKNOWN_VERSION(`a data key grant of version ${version}`)
    const dataset = c.string.decode(s)
    const to = c.fixed32.decode(s)
    const sealed = c.buffer.decode(s)
    if (sealed === null || sealed.byteLength !== DATA_KEY_BYTES + sodium.crypto_box_SEALBYTES) {
      throw MeshError.BAD_ENTRY('a data key grant whose sealed key has the wrong size')
    }
    return { dataset, to, sealed }
  }
}

export function encodeDataKey(g: DataKeyGrant): Uint8Array {
  return c.encode(dataKeyEncoding, g)
}

/** Decodes a grant; BAD_ENTRY (or UNKNOWN_VERSION) when the bytes are not one. */
export function decodeDataKey(bytes: Uint8Array): DataKeyGrant {
  return decodeOr(dataKeyEncoding, bytes, 'a data key grant')
}

/** Seals a data key to a member's ed25519 node key. */
export function sealDataKey(dataKey: Uint8Array, to: Uint8Array): Uint8Array {
  const pk = Buffer.alloc(sodium.crypto_box_PUBLICKEYBYTES)
  sodium.crypto_sign_ed25519_pk_to_curve25519(pk, Buffer.from(to))
  const out = Buffer.alloc(dataKey.byteLength + sodium.crypto_box_SEALBYTES)
  sodium.crypto_box_seal(out, Buffer.from(dataKey), pk)
  return out
}

/** Opens a sealed data key with this site's ed25519 key pair; null when it was not sealed to it (or is damaged). */
export function openDataKey(
  sealed: Uint8Array,
  keyPair: { publicKey: Uint8Array; secretKey: Uint8Array }
): Buffer | null {
  if (sealed.byteLength !== DATA_KEY_BYTES + sodium.crypto_box_SEALBYTES) return null
  const pk = Buffer.alloc(sodium.crypto_box_PUBLICKEYBYTES)
  const sk = sodium.sodium_malloc(sodium.crypto_box_SECRETKEYBYTES)
  try {
    sodium.crypto_sign_ed25519_pk_to_curve25519(pk, Buffer.from(keyPair.publicKey))
    sodium.crypto_sign_ed25519_sk_to_curve25519(sk, Buffer.from(keyPair.secretKey))
    const out = Buffer.alloc(DATA_KEY_BYTES)
    return sodium.crypto_box_seal_open(out, Buffer.from(sealed), pk, sk) ? out : null
  } finally {
    sodium.sodium_memzero(sk)
  }
}
