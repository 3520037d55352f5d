/**
 * A compromised member: a process holding a member's real site.key that speaks the real protocol over a real
 * hyperswarm connection on the test network, and relays forged membership. Modes:
 *
 *   forge BOOTSTRAP MESH_ID SEED_HEX TARGET_KEY_HEX ORIGIN_KEY_HEX DATASET_ID SECONDS
 *     as the member whose seed it holds, connects to TARGET and sends, on the control channel: a member
 *     statement for a new key X with a bad signature, one signed by a key that is not a member, one made for
 *     another mesh, one X signed for itself, a removal of ORIGIN signed by a non-member, a promotion policy for
 *     DATASET signed by itself (not its origin), and the unsigned members list with X in it. Then it connects
 *     to TARGET as X, showing those statements on the credential channel (`branchmesh-member/1`).
 *   connect BOOTSTRAP MESH_ID SEED_HEX TARGET_KEY_HEX SECONDS
 *     connects to TARGET with the key of SEED (a removed or rotated-away key) and opens the control channel.
 *
 * Prints one JSON line: X's key, and for each connection whether it opened, whether the control channel
 * opened (the target took it for a member), and whether the target closed it.
 */
import crypto from 'node:crypto'
import DHT, { type KeyPair } from 'hyperdht'
import Hyperswarm, { type SwarmConnection } from 'hyperswarm'
import Protomux from 'protomux'
import {
  CONTROL_MESSAGES,
  CONTROL_PROTOCOL,
  MEMBER_PROTOCOL,
  StatementKind,
  encodeMemberBody,
  encodePolicyBody,
  encodeRemovalBody,
  helloEncoding,
  signStatement,
  statementsMessage,
  type ControlPayloads,
  type Statement
} from '../../protocol/index.ts'
import { addMessages } from '../../node/messages.ts'

const [mode, bootstrapText, meshIdHex, seedHex, targetHex, ...rest] = process.argv.slice(2)
const bootstrap = bootstrapText.split(',').map((b) => ({ host: b.split(':')[0], port: Number(b.split(':')[1]) }))
const meshId = Buffer.from(meshIdHex, 'hex')
const target = Buffer.from(targetHex, 'hex')
const member = DHT.keyPair(Buffer.from(seedHex, 'hex'))
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

interface Seen {
  connections: number
  controlOpened: boolean
  closed: boolean
}

/** Dials TARGET with `keyPair`; `onControl` runs when the target opens the control channel with us. */
async function dial(
  keyPair: KeyPair,
  credentials: Statement[],
  onControl: (send: <K extends keyof ControlPayloads>(n: K, m: ControlPayloads[K]) => void) => void,
  ms: number
): Promise<Seen> {
  const seen: Seen = { connections: 0, controlOpened: false, closed: false }
  const dht = new DHT({ bootstrap, host: '127.0.0.1', firewalled: false, keyPair })
  const swarm = new Hyperswarm({ keyPair, dht })
  swarm.on('connection', (conn: SwarmConnection) => {
    seen.connections++
    conn.on('error', () => {})
    conn.on('close', () => (seen.closed = true))
    const mux = Protomux.from(conn)
    ;(conn as unknown as { userData: unknown }).userData = mux
    mux.createChannel({ protocol: MEMBER_PROTOCOL, handshake: statementsMessage })?.open(credentials)
    const ch = mux.createChannel({
      protocol: CONTROL_PROTOCOL,
      handshake: helloEncoding,
      onopen: () => {
        seen.controlOpened = true
        onControl(messages.send)
      }
    })
    if (ch === null) return
    const messages = addMessages<ControlPayloads>(ch, CONTROL_MESSAGES, {})
    ch.open({ version: 1, meshId, site: 'forger', software: 'branchmesh/forger' })
  })
  swarm.joinPeer(target)
  await sleep(ms)
  await swarm.destroy({ force: true }).catch(() => {})
  return seen
}

if (mode === 'forge') {
  const [originHex, datasetId, secondsText] = rest
  const seconds = Number(secondsText)
  const x = DHT.keyPair()
  const stranger = DHT.keyPair()
  const body = encodeMemberBody({ key: x.publicKey, site: 'intruder-x', role: 'full', addedAt: Date.now() })
  const badSig = signStatement(StatementKind.member, meshId, member, body)
  badSig.signature = Buffer.from(badSig.signature)
  badSig.signature[5] ^= 0xff
  const byStranger = signStatement(StatementKind.member, meshId, stranger, body)
  const otherMesh = signStatement(StatementKind.member, crypto.randomBytes(32), member, body)
  const bySelf = signStatement(StatementKind.member, meshId, x, body)
  const removal = signStatement(
    StatementKind.removal,
    meshId,
    stranger,
    encodeRemovalBody({ key: Buffer.from(originHex, 'hex'), site: 'origin', reason: 'forged' })
  )
  const policy = signStatement(
    StatementKind.policy,
    meshId,
    member,
    encodePolicyBody({ dataset: datasetId, sites: [member.publicKey] })
  )
  const forged = [badSig, byStranger, otherMesh, bySelf]
  const asMember = await dial(
    member,
    [],
    (send) => {
      send('statements', [...forged, removal, policy])
      send('members', [{ key: x.publicKey, site: 'intruder-x', addedAt: Date.now() }])
    },
    (seconds * 1000) / 2
  )
  const asX = await dial(x, forged, () => {}, (seconds * 1000) / 2)
  process.stdout.write(`${JSON.stringify({ x: Buffer.from(x.publicKey).toString('hex'), asMember, asX })}\n`)
} else if (mode === 'connect') {
  const seen = await dial(member, [], () => {}, Number(rest[0]) * 1000)
  process.stdout.write(`${JSON.stringify(seen)}\n`)
}
process.exit(0)
