/** The dashboard's address: parsed, and whether it is loopback. Light, for the command line (node/client.ts). */
import { MeshError } from '../../protocol/errors.ts'

export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || host === '[::1]' || /^127\.\d+\.\d+\.\d+$/.test(host)
}

/** Parses HOST:PORT (IPv6 in brackets); USAGE saying what is wrong otherwise. */
export function parseListen(text: string, source: string): { host: string; port: number } {
  const m = /^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(text.trim())
  if (!m || Number(m[2]) > 65535) {
    throw MeshError.USAGE(`${source}: "${text}" is not HOST:PORT`, {
      hint: 'Give an address and a port, e.g. 127.0.0.1:8080 (0 for any free port).'
    })
  }
  return { host: m[1].replace(/^\[|\]$/g, ''), port: Number(m[2]) }
}
