/**
 * The local socket (DIR/node.sock, mode 0600): how the `mesh` commands talk to the running node. One request
 * per connection, one JSON line each way. Requests are a typed union, checked field by field before anything
 * runs: a malformed one is answered with USAGE, never half understood.
 *
 * Both sides are here: the node's server, and askNode, which the commands use.
 */
import fs from 'node:fs'
import net from 'node:net'
import { MeshError } from '../protocol/errors.ts'
import { sitePaths } from './paths.ts'

/** What a command may ask the running node. */
export type LocalRequest =
  | { cmd: 'ping' }
  | { cmd: 'status' }
  | { cmd: 'log'; dataset: string; from?: number; limit?: number; full?: boolean }
  | { cmd: 'restore'; dataset: string; through?: number; seq?: number; at?: number; to: string }
  | { cmd: 'job'; job: string }
  | { cmd: 'checkpoint'; dataset: string }
  | { cmd: 'resync'; dataset: string }
  | { cmd: 'verify'; dataset: string }
  | { cmd: 'repair'; dataset: string }
  | { cmd: 'promote'; dataset: string; force?: boolean }
  | { cmd: 'remove'; site: string; reason?: string }
  | { cmd: 'rotate-key' }
  | { cmd: 'policy'; dataset: string; promote: string[] }
  | { cmd: 'encrypt'; dataset: string }
  | { cmd: 'handover'; dataset: string; to: string; timeoutMs?: number }
  | { cmd: 'accept'; dataset: string; epoch: number }
  | { cmd: 'alerts'; what: 'test' | 'daily' }

/** The node's answer to each request, by command. */
export type LocalHandler = (req: LocalRequest) => Promise<unknown>

type FieldType = 'string' | 'number' | 'boolean' | 'strings'

/** The fields of each request: name, type, and whether it is required. */
const FIELDS: Record<LocalRequest['cmd'], Record<string, [FieldType, boolean]>> = {
  ping: {},
  status: {},
  log: { dataset: ['string', true], from: ['number', false], limit: ['number', false], full: ['boolean', false] },
  restore: {
    dataset: ['string', true],
    through: ['number', false],
    seq: ['number', false],
    at: ['number', false],
    to: ['string', true]
  },
  job: { job: ['string', true] },
  checkpoint: { dataset: ['string', true] },
  resync: { dataset: ['string', true] },
  verify: { dataset: ['string', true] },
  repair: { dataset: ['string', true] },
  promote: { dataset: ['string', true], force: ['boolean', false] },
  remove: { site: ['string', true], reason: ['string', false] },
  'rotate-key': {},
  policy: { dataset: ['string', true], promote: ['strings', true] },
  encrypt: { dataset: ['string', true] },
  handover: { dataset: ['string', true], to: ['string', true], timeoutMs: ['number', false] },
  accept: { dataset: ['string', true], epoch: ['number', true] },
  alerts: { what: ['string', true] }
}

/** A request line checked against the union; USAGE saying what is wrong otherwise. */
export function parseLocalRequest(line: string): LocalRequest {
  let raw: unknown
  try {
    raw = JSON.parse(line)
  } catch {
    throw MeshError.USAGE('the local request is not JSON')
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw))
    throw MeshError.USAGE('the local request is not an object')
  const req = raw as Record<string, unknown>
  const cmd = req.cmd
  if (typeof cmd !== 'string' || !Object.hasOwn(FIELDS, cmd))
    throw MeshError.USAGE(`unknown local request ${String(cmd)}`)
  const fields = FIELDS[cmd as LocalRequest['cmd']]
  for (const k of Object.keys(req)) {
    if (k !== 'cmd' && !Object.hasOwn(fields, k)) throw MeshError.USAGE(`the local request ${cmd} has no field ${k}`)
  }
  for (const [k, [type, required]] of Object.entries(fields)) {
    const v = req[k]
    if (v === undefined) {
      if (required) throw MeshError.USAGE(`the local request ${cmd} needs ${k}`)
      continue
    }
    if (type === 'strings') {
      if (!Array.isArray(v) || v.some((x) => typeof x !== 'string'))
        throw MeshError.USAGE(`the local request ${cmd} has a ${k} that is not a list of strings`)
      continue
    }
    if (typeof v !== type || (type === 'number' && !Number.isFinite(v)))
      throw MeshError.USAGE(`the local request ${cmd} has a ${k} that is not a ${type}`)
  }
  return req as LocalRequest
}

/** The node's end: answers each request on the socket with `handle`; errors go back as { error }. */
export async function listenLocal(sock: string, handle: LocalHandler): Promise<net.Server> {
  // A socket file left by a node that was killed: the store lock proved no node runs here now.
  fs.rmSync(sock, { force: true })
  const server = net.createServer((c) => {
    let buf = ''
    c.on('error', () => {})
    c.on('data', (d) => {
      buf += d.toString()
      const i = buf.indexOf('\n')
      if (i < 0) return
      const line = buf.slice(0, i)
      buf = ''
      Promise.resolve()
        .then(() => handle(parseLocalRequest(line)))
        .then((res) => c.end(`${JSON.stringify(res)}\n`))
        .catch((err) => {
          const e = MeshError.wrap(err, MeshError.IO_ERROR)
          c.end(
            JSON.stringify({ error: { code: e.code, message: e.message, hint: e.hint ?? null, context: e.context } }) +
              '\n'
          )
        })
    })
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(sock, () => {
      server.off('error', reject)
      resolve()
    })
  }).catch((err) => {
    throw MeshError.IO_ERROR(`cannot open the local socket ${sock}: ${(err as Error).message}`, {
      hint: 'The data directory path may be too long for a socket (over about 100 characters); use a shorter --dir.',
      retryable: false,
      cause: err
    })
  })
  fs.chmodSync(sock, 0o600)
  return server
}

/** Closes the server and removes its socket file. */
export async function closeLocal(server: net.Server, sock: string): Promise<void> {
  await new Promise<void>((resolve) => server.close(() => resolve()))
  fs.rmSync(sock, { force: true })
}

/** Asks the node running on `dir`; null when none runs there. */
export async function askNode(
  dir: string,
  cmd: LocalRequest | LocalRequest['cmd'],
  timeoutMs = 5000
): Promise<unknown | null> {
  const sock = sitePaths(dir).socket
  if (!fs.existsSync(sock)) return null
  return new Promise((resolve, reject) => {
    const c = net.connect(sock)
    let buf = ''
    const timer = setTimeout(() => {
      c.destroy()
      reject(
        MeshError.IO_ERROR(`the node on ${dir} did not answer within ${timeoutMs} ms`, {
          hint: 'It may be overloaded or hung; check its log, or restart it.'
        })
      )
    }, timeoutMs)
    c.on('connect', () => c.write(`${JSON.stringify(typeof cmd === 'string' ? { cmd } : cmd)}\n`))
    c.on('data', (d) => (buf += d.toString()))
    c.on('end', () => {
      clearTimeout(timer)
      try {
        resolve(JSON.parse(buf))
      } catch (err) {
        reject(MeshError.IO_ERROR(`the node on ${dir} gave an unreadable answer`, { cause: err }))
      }
    })
    c.on('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer)
      // A socket file left by a node that was killed: nobody is listening.
      if (err.code === 'ECONNREFUSED' || err.code === 'ENOENT') resolve(null)
      else reject(MeshError.IO_ERROR(`cannot reach the node on ${dir}: ${err.message}`, { cause: err }))
    })
  })
}
