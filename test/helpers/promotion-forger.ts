/**
 * A changed member: a process holding a real member's key (its data directory, with its node stopped) that
 * speaks the mesh's protocol over hyperswarm on the test network, with forged statements. It joins the mesh,
 * opens the control channel like a node does, learns the dataset's head and the origin's length from what
 * the sites send, writes a log of its own for a new epoch (served to the sites over the same connections), and
 * announces it with a forged promotion. Usage:
 *
 *   node --import tsx test/helpers/promotion-forger.ts DIR BOOTSTRAP MODE DATASET SECONDS
 *
 * MODE: unsigned    the new epoch's log carries no promotion, and none is sent
 *       epoch       a signed promotion of a bogus higher epoch (the head's epoch + 5)
 *       branch      a signed promotion whose branch point (1) is below what the sites applied
 *       live        a signed promotion at the origin's full length while the origin is running (a take-over)
 *       future      as live, dated ten minutes ahead
 *       stranger    as live, signed by a key that is not a member
 *       badsig      as live, with its signature broken
 *       handover    as live, carrying a handover the changed member signed itself (not the origin), sent too
 *
 * Prints one JSON line: how many sites it reached, and the forged epoch and log key.
 */
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import Corestore from 'corestore'
import DHT from 'hyperdht'
import Hyperswarm, { type SwarmConnection } from 'hyperswarm'
import crypto from 'hypercore-crypto'
import Protomux from 'protomux'
import {
  CONTROL_MESSAGES,
  CONTROL_PROTOCOL,
  CONTROL_VERSION,
  StatementKind,
  encodeHandover,
  encodePromotion,
  encodeStatement,
  helloEncoding,
  sameBytes,
  signStatement,
  type ControlPayloads,
  type DatasetInfo,
  type Hello,
  type SignedReport,
  type Statement
} from '../../protocol/index.ts'
import { DatasetLog, meshTopic, readMeshState, readSiteKey, sitePaths } from '../../node/index.ts'
import { addMessages, type Messages } from '../../node/messages.ts'
import { encryptionWith, readDataKey } from '../../node/datakeys.ts'

const [dir, bootstrapText, mode, datasetName, secondsText] = process.argv.slice(2)
const bootstrap = bootstrapText.split(',').map((b) => ({ host: b.split(':')[0], port: Number(b.split(':')[1]) }))
const paths = sitePaths(dir)
const keyPair = readSiteKey(paths)
const state = readMeshState(paths)
const site = state.members.find((m) => Buffer.from(m.key).equals(keyPair.publicKey))!.site

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'forger-'))
const store = new Corestore(path.join(tmp, 'store'))
await store.ready()

type Peer = Messages<ControlPayloads> & { site: string }
const peers: Peer[] = []
let head: DatasetInfo | null = null
const reports = new Map<string, SignedReport>()

const swarm = new Hyperswarm({ keyPair, dht: new DHT({ bootstrap, host: '127.0.0.1', firewalled: false, keyPair }) })
swarm.on('connection', (conn: SwarmConnection) => {
  conn.on('error', () => {})
  const mux = Protomux.from(conn)
  ;(conn as unknown as { userData: unknown }).userData = mux
  const channel = mux.createChannel({
    protocol: CONTROL_PROTOCOL,
    unique: true,
    handshake: helloEncoding,
    onopen: (hello: Hello) => {
      store.replicate(conn)
      peers.push({ ...messages, site: hello.site })
    }
  })
  if (channel === null) return void conn.destroy()
  const messages = addMessages<ControlPayloads>(channel, CONTROL_MESSAGES, {
    datasets: (list) => {
      const d = list.find((x) => x.name === datasetName)
      if (d && (head === null || d.epoch > head.epoch)) head = d
    },
    report: (r) => reports.set(Buffer.from(r.report.site).toString('hex'), r)
  })
  channel.open({ version: CONTROL_VERSION, meshId: state.meshId, site, software: 'branchmesh/changed' })
})
swarm.join(meshTopic(state.meshId), { server: true, client: true })
for (const m of state.members) if (!Buffer.from(m.key).equals(keyPair.publicKey)) swarm.joinPeer(m.key)

const seconds = Number(secondsText)
const until = Date.now() + 30_000
const originLength = () => {
  if (head === null) return null
  const r = reports.get(Buffer.from(head.origin).toString('hex'))
  return r?.report.holdings.find((h) => h.dataset === head!.id && sameBytes(h.log, head!.log))?.length ?? null
}
while ((originLength() === null || peers.length < state.members.length - 1) && Date.now() < until) {
  await new Promise((r) => setTimeout(r, 100))
}
if (head === null || originLength() === null) {
  process.stdout.write(`${JSON.stringify({ error: 'no head or origin report heard', peers: peers.length })}\n`)
  process.exit(2)
}
const h = head as DatasetInfo
const epoch = mode === 'epoch' ? h.epoch + 5 : h.epoch + 1
const parent = { key: Buffer.from(h.log), length: mode === 'branch' ? 1 : originLength()! }
// A full member holds the dataset's data key: its forged log is encrypted as a real one would be, so the other
// sites read it and judge the statement, not the bytes.
const encryption = encryptionWith(readDataKey(dir, h.id), h, epoch)
const log = await DatasetLog.named(store, path.join(tmp, 'store'), `forged-${Date.now()}`, encryption)
let statement: Statement | null = null
const handover =
  mode === 'handover'
    ? signStatement(
        StatementKind.handover,
        state.meshId,
        keyPair,
        encodeHandover({ dataset: h.id, epoch, parent, to: keyPair.publicKey, toSite: site })
      )
    : null
if (mode !== 'unsigned') {
  const signer = mode === 'stranger' ? crypto.keyPair() : keyPair
  const at = mode === 'future' ? Date.now() + 600_000 : Date.now()
  const body = encodePromotion({
    dataset: h.id,
    name: h.name,
    engine: h.engine,
    epoch,
    log: log.key,
    parent,
    site,
    handover,
    forced: handover === null
  })
  statement = signStatement(StatementKind.promotion, state.meshId, signer, body, at)
  if (mode === 'badsig') statement = { ...statement, signature: Buffer.alloc(64, 7) }
}
await log.appendUnit([
  {
    kind: 'header',
    dataset: h.id,
    name: h.name,
    engine: h.engine,
    epoch,
    site,
    createdAt: Date.now(),
    parent,
    promotion: statement ? encodeStatement(statement) : null
  }
])
const forged: DatasetInfo = { ...h, origin: keyPair.publicKey, originSite: site, epoch, log: log.key }
for (const p of peers) {
  p.send('datasets', [forged])
  if (statement) p.send('statements', handover ? [handover, statement] : [statement])
}
await new Promise((r) => setTimeout(r, seconds * 1000))
process.stdout.write(
  `${JSON.stringify({ peers: peers.map((p) => p.site), epoch, log: Buffer.from(log.key).toString('hex') })}\n`
)
await swarm.destroy({ force: true }).catch(() => {})
await store.close().catch(() => {})
fs.rmSync(tmp, { recursive: true, force: true })
process.exit(0)
