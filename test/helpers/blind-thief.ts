/**
 * A blind site's key in the wrong hands: a process that holds a blind member's site key, says a correct hello,
 * and asks for logs by key, a plaintext one among them.
 *   BOOTSTRAP MESH_ID SITE_SEED SITE_NAME SECONDS LOG_KEY[,LOG_KEY...]
 * Prints one JSON line: how many connections it got, and how many blocks of each log (by key) it received.
 */
import os from 'node:os'
import fs from 'node:fs'
import path from 'node:path'
import Corestore from 'corestore'
import DHT from 'hyperdht'
import Hyperswarm, { type SwarmConnection } from 'hyperswarm'
import Protomux from 'protomux'
import { CONTROL_PROTOCOL, CONTROL_VERSION, helloEncoding } from '../../protocol/index.ts'
import { meshTopic } from '../../node/index.ts'

const [bootstrapText, meshIdHex, seedHex, site, secondsText, keysText] = process.argv.slice(2)
const bootstrap = bootstrapText.split(',').map((b) => ({ host: b.split(':')[0], port: Number(b.split(':')[1]) }))
const network = { bootstrap, host: '127.0.0.1', firewalled: false }
const keyPair = DHT.keyPair(Buffer.from(seedHex, 'hex'))
const meshId = Buffer.from(meshIdHex, 'hex')
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blind-thief-'))
const store = new Corestore(path.join(dir, 'store'))
const cores = keysText.split(',').map((k) => store.get({ key: Buffer.from(k, 'hex') }))
for (const core of cores) {
  await core.ready()
  core.download({ start: 0, end: -1 })
}
const swarm = new Hyperswarm({ keyPair, dht: new DHT({ ...network, keyPair }) })
let connections = 0
swarm.on('connection', (conn: SwarmConnection) => {
  connections++
  conn.on('error', () => {})
  const mux = Protomux.from(conn)
  ;(conn as unknown as { userData: unknown }).userData = mux
  const ch = mux.createChannel({ protocol: CONTROL_PROTOCOL, handshake: helloEncoding, unique: true })
  ch?.open({ version: CONTROL_VERSION, meshId, site, software: 'branchmesh/0.0.0' })
  store.replicate(conn)
})
swarm.join(meshTopic(meshId), { client: true, server: true })
await new Promise((r) => setTimeout(r, Number(secondsText) * 1000))
const blocks: Record<string, number> = {}
for (const core of cores) blocks[core.key.toString('hex')] = core.contiguousLength
process.stdout.write(`${JSON.stringify({ connections, blocks })}\n`)
await swarm.destroy({ force: true }).catch(() => {})
await store.close().catch(() => {})
fs.rmSync(dir, { recursive: true, force: true })
process.exit(0)
