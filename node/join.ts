/**
 * The joining side of a join code: connect to the inviting site with the code's one-time key, send this
 * site's own key and name, and receive the mesh id, the members and the datasets. The invite key is used for
 * this one connection only; the inviting site lets it open the join channel and nothing else.
 */
import DHT, { type KeyPair } from 'hyperdht'
import Protomux from 'protomux'
import {
  CONTROL_VERSION,
  JOIN_MESSAGES,
  JOIN_PROTOCOL,
  MeshError,
  joinHelloEncoding,
  type JoinCode,
  type JoinPayloads,
  type Welcome
} from '../protocol/index.ts'
import { addMessages } from './messages.ts'
import type { NetworkOptions } from './node.ts'

export interface RedeemOptions {
  code: JoinCode
  site: string
  keyPair: KeyPair
  network: NetworkOptions
  timeoutMs?: number
}

export async function redeemJoinCode(opts: RedeemOptions): Promise<Welcome> {
  const { code } = opts
  if (code.expiresAt * 1000 <= Date.now()) {
    throw MeshError.JOIN_CODE_EXPIRED(`the join code expired at ${new Date(code.expiresAt * 1000).toISOString()}`)
  }
  const timeoutMs = opts.timeoutMs ?? 60_000
  const dht = new DHT({
    bootstrap: opts.network.bootstrap,
    host: opts.network.host,
    firewalled: opts.network.firewalled,
    ephemeral: true
  })
  const inviteKeyPair = DHT.keyPair(code.seed)
  let timer: NodeJS.Timeout | null = null
  try {
    const result = new Promise<Welcome>((resolve, reject) => {
      timer = setTimeout(
        () =>
          reject(
            MeshError.UNREACHABLE(`no answer from the inviting site within ${Math.round(timeoutMs / 1000)} s`, {
              context: { inviter: Buffer.from(code.inviter).toString('hex').slice(0, 12) }
            })
          ),
        timeoutMs
      )
      const socket = dht.connect(Buffer.from(code.inviter), { keyPair: inviteKeyPair })
      socket.on('error', (err: Error & { code?: string }) => {
        if (err.code === 'PEER_NOT_FOUND') {
          reject(
            MeshError.UNREACHABLE(
              'the inviting site is not reachable: its node is not running, or it uses another DHT',
              { cause: err }
            )
          )
        } else if (/PEER_CONNECTION_FAILED|firewall|refused|REMOTE_ABORTED/i.test(`${err.code} ${err.message}`)) {
          // The inviting site was found and turned the one-time key away.
          reject(
            MeshError.BAD_JOIN_CODE(
              'the inviting site refused this join code: it was already used or withdrawn (or a network ' +
                'between the sites blocks the connection)',
              {
                cause: err
              }
            )
          )
        } else {
          reject(MeshError.UNREACHABLE(`cannot connect to the inviting site: ${err.message}`, { cause: err }))
        }
      })
      socket.on('open', () => {
        const mux = Protomux.from(socket)
        const ch = mux.createChannel({
          protocol: JOIN_PROTOCOL,
          handshake: joinHelloEncoding,
          onopen: (hello: { version: number }) => {
            if (hello.version !== CONTROL_VERSION) {
              reject(
                MeshError.PROTOCOL_VERSION(
                  `the inviting site speaks protocol version ${hello.version}; this one speaks ${CONTROL_VERSION}`
                )
              )
              return
            }
            messages.send('redeem', { version: CONTROL_VERSION, site: opts.site, key: opts.keyPair.publicKey })
          }
        })
        if (ch === null) return reject(MeshError.UNREACHABLE('the join channel could not be opened'))
        const messages = addMessages<JoinPayloads>(ch, JOIN_MESSAGES, {
          welcome: (m) => resolve(m),
          refuse: (m) => {
            if (m.code === 'JOIN_CODE_EXPIRED') reject(MeshError.JOIN_CODE_EXPIRED(m.reason))
            else if (m.code === 'USAGE') reject(MeshError.USAGE(m.reason, { hint: 'Choose another --site name.' }))
            else reject(MeshError.BAD_JOIN_CODE(m.reason))
          }
        })
        ch.open({ version: CONTROL_VERSION })
      })
      socket.on('close', () =>
        reject(
          MeshError.BAD_JOIN_CODE(
            'the inviting site closed the connection without admitting this site: the code was already ' +
              'used or withdrawn'
          )
        )
      )
    })
    const welcome = await result
    if (!Buffer.from(welcome.meshId).equals(code.meshId)) {
      throw MeshError.BAD_JOIN_CODE('the site that answered belongs to another mesh than the code names')
    }
    return welcome
  } finally {
    if (timer) clearTimeout(timer)
    await dht.destroy({ force: true }).catch(() => {})
  }
}
