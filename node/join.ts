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
  StatementKind,
  decodeMemberBody,
  decodeRemovalBody,
  decodeRotationBody,
  verifyStatement,
  type JoinCode,
  type JoinPayloads,
  type Welcome
} from '../protocol/index.ts'
import { addMessages } from './messages.ts'
import type { NetworkOptions } from './node.ts'
import { saveStatements } from './statements.ts'
import { writeMeshState, type RemovedMember, type SitePaths } from './state.ts'

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
  /** The connection of the try under way, destroyed when its time is up. */
  const live: { socket: ReturnType<DHT['connect']> | null } = { socket: null }

  const withdrawn = () =>
    MeshError.BAD_JOIN_CODE(
      'the inviting site closed the connection without admitting this site: the code was already used or withdrawn'
    )

  /** One try: connect with the one-time key, redeem, and wait for the answer. */
  const attempt = (): Promise<Welcome> =>
    new Promise<Welcome>((resolve, reject) => {
      const sock = dht.connect(Buffer.from(code.inviter), { keyPair: inviteKeyPair })
      live.socket = sock
      let opened = false
      sock.on('error', (err: Error & { code?: string }) => {
        // Once connected, only the inviting site can end it: it does not take this code (any more).
        if (opened) reject(withdrawn())
        else if (err.code === 'PEER_NOT_FOUND') {
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
      sock.on('open', () => {
        opened = true
        const mux = Protomux.from(sock)
        const ch = mux.createChannel({
          protocol: JOIN_PROTOCOL,
          handshake: joinHelloEncoding,
          // A site that no longer holds the invite does not open the join channel (it waits for credentials).
          onclose: () => reject(withdrawn()),
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
      sock.on('close', () => reject(withdrawn()))
    })

  const deadline = Date.now() + timeoutMs
  let timer: NodeJS.Timeout | null = null
  try {
    // The inviting site may not be on the DHT yet (its node starting, its link coming up): look again until the
    // deadline, waiting 1, 2, 4, then 5 s between tries. Only UNREACHABLE is tried again; a refusal is final.
    let welcome: Welcome | null = null
    for (let wait = 1000; welcome === null; wait = Math.min(5000, wait * 2)) {
      try {
        welcome = await new Promise<Welcome>((resolve, reject) => {
          timer = setTimeout(() => {
            live.socket?.destroy()
            reject(
              MeshError.UNREACHABLE(`no answer from the inviting site within ${Math.round(timeoutMs / 1000)} s`, {
                context: { inviter: Buffer.from(code.inviter).toString('hex').slice(0, 12) },
                hint: "Start the inviting site's node (`mesh start`), or give a longer --timeout."
              })
            )
          }, deadline - Date.now())
          attempt().then(resolve, reject)
        })
      } catch (err) {
        live.socket?.destroy()
        const e = err as MeshError
        if (e.code !== 'UNREACHABLE' || deadline - Date.now() <= wait) throw e
        await new Promise((resolve) => setTimeout(resolve, wait))
      } finally {
        if (timer) clearTimeout(timer)
      }
    }
    if (!Buffer.from(welcome.meshId).equals(code.meshId)) {
      throw MeshError.BAD_JOIN_CODE('the site that answered belongs to another mesh than the code names')
    }
    return welcome
  } finally {
    await dht.destroy({ force: true }).catch(() => {})
  }
}

/**
 * Writes what a welcome carried into the new data directory: mesh.json (the members, each with the role its
 * signed statement gives; the keys removed or rotated away) and statements.json (what this site shows a member
 * that has not heard of it yet). A statement that does not verify is left out; an older inviter sends none.
 */
export function keepWelcome(paths: SitePaths, w: Welcome): void {
  const list = (w.statements ?? []).filter((s) => Buffer.from(s.meshId).equals(w.meshId) && verifyStatement(s))
  const members = w.members.map((m) => ({ ...m }))
  const removed: RemovedMember[] = []
  const name = (k: Uint8Array) => members.find((m) => Buffer.from(m.key).equals(k))?.site ?? ''
  for (const s of list) {
    try {
      if (s.kind === StatementKind.member) {
        const b = decodeMemberBody(s.body)
        const m = members.find((x) => Buffer.from(x.key).equals(b.key))
        if (m && b.role !== 'full') m.role = b.role
      } else if (s.kind === StatementKind.removal) {
        const b = decodeRemovalBody(s.body)
        removed.push({ key: b.key, site: b.site, by: name(s.signer), reason: b.reason, at: s.at })
      } else if (s.kind === StatementKind.rotation) {
        const b = decodeRotationBody(s.body)
        removed.push({ key: s.signer, site: b.site, by: b.site, reason: 'key rotated', at: s.at })
      }
    } catch {
      // A body this version cannot read: kept in statements.json for newer software, not acted on.
    }
  }
  writeMeshState(paths, {
    meshId: w.meshId,
    members,
    datasets: w.datasets,
    local: [],
    ...(removed.length ? { removed } : {})
  })
  saveStatements(paths.dir, list)
}
