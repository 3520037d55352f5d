/**
 * A process that tries to get a mesh's data without being let in. Modes:
 *   stranger BOOTSTRAP MESH_ID LOG_KEY SECONDS         knows the topic and a log key, holds no membership
 *   v2 BOOTSTRAP MESH_ID LOG_KEY SECONDS JOIN_CODE     joins with a real code, then speaks control protocol version 2
 * Prints one JSON line: how many connections it got and how many blocks of the log it received.
 */
import os from 'node:os'
import fs from 'node:fs'
import path from 'node:path'
import Corestore from 'corestore'
import DHT from 'hyperdht'
import Hyperswarm, { type SwarmConnection } from 'hyperswarm'
import Protomux from 'protomux'
import { CONTROL_PROTOCOL, decodeJoinCode, helloEncoding } from '../../protocol/index.ts'
import { meshTopic, redeemJoinCode } from '../../node/index.ts'

const [mode, bootstrapText, meshIdHex, logKeyHex, secondsText, code] = process.argv.slice(2)
const bootstrap = bootstrapText.split(',').map((b) => ({ host: b.split(':')[0], port: Number(b.split(':')[1]) }))
const network = { bootstrap, host: '127.0.0.1', firewalled: false }
const keyPair = DHT.keyPair()
const meshId = Buffer.from(meshIdHex, 'hex')

if (mode === 'v2') {
  await redeemJoinCode({ code: decodeJoinCode(code), site: 'newer-site', keyPair, network, timeoutMs: 30_000 })
}
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'intruder-'))
const store = new Corestore(path.join(dir, 'store'))
const core = store.get({ key: Buffer.from(logKeyHex, 'hex') })
await core.ready()
core.download({ start: 0, end: -1 })
const swarm = new Hyperswarm({ keyPair, dht: new DHT({ ...network, keyPair }) })
let connections = 0
let closedByRemote = 0
swarm.on('connection', (conn: SwarmConnection) => {
  connections++
  conn.on('error', () => {})
  conn.on('close', () => closedByRemote++)
  if (mode === 'v2') {
    const mux = Protomux.from(conn)
    ;(conn as unknown as { userData: unknown }).userData = mux
    const ch = mux.createChannel({ protocol: CONTROL_PROTOCOL, handshake: helloEncoding })
    ch?.open({ version: 2, meshId, site: 'newer-site', software: 'branchmesh/9.0.0' })
  }
  store.replicate(conn)
})
swarm.join(meshTopic(meshId), { client: true, server: true })
await new Promise((r) => setTimeout(r, Number(secondsText) * 1000))
process.stdout.write(
  `${JSON.stringify({ connections, closedByRemote, length: core.length, contiguous: core.contiguousLength })}\n`
)
await swarm.destroy({ force: true }).catch(() => {})
await store.close().catch(() => {})
fs.rmSync(dir, { recursive: true, force: true })
process.exit(0)
