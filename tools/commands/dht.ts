import net from 'node:net'
import DHT from 'hyperdht'
import { MeshError } from '../../protocol/index.ts'
import { out, parse, type Command } from './common.ts'

/** hyperdht's own default bootstrap port. */
const DEFAULT_PORT = 49737

export const command: Command = {
  usage: `mesh dht --listen HOST[:PORT] [--json]

Runs a DHT bootstrap node in the foreground, for a mesh that must not use the public DHT (an office with its
own server, a network with no internet). HOST is the IPv4 address the sites reach this machine at (not
0.0.0.0); PORT is UDP, default ${DEFAULT_PORT}. Give every site that address: mesh init/join --bootstrap
HOST:PORT, or "bootstrap": ["HOST:PORT"] in its config.json. Run two on two machines for a network that
survives one of them being off (list both, comma-separated). Ctrl-C (SIGINT) or SIGTERM stops it.`,
  summary: 'run a DHT bootstrap node for a private network',
  async run(args) {
    const { values } = parse('dht', args, { listen: { type: 'string' }, json: { type: 'boolean' } })
    const { host, port } = parseListen(values.listen)
    const node = DHT.bootstrapper(port, host, { host })
    try {
      await node.ready()
    } catch (err) {
      await node.destroy().catch(() => {})
      const e = err as NodeJS.ErrnoException
      if (e.code === 'EADDRINUSE')
        throw MeshError.USAGE(`UDP port ${port} on ${host} is already in use`, {
          hint: 'Stop what uses it (another mesh dht?), or choose another port with --listen HOST:PORT.'
        })
      if (e.code === 'EADDRNOTAVAIL')
        throw MeshError.USAGE(`${host} is not an address of this machine`, {
          hint: 'Give --listen the address the sites reach this machine at (see `ip addr`).'
        })
      throw MeshError.wrap(err, MeshError.IO_ERROR, 'cannot start the DHT bootstrap node')
    }
    const address = `${host}:${node.address().port}`
    if (values.json) out(JSON.stringify({ listening: address }))
    else {
      out(`DHT bootstrap node listening on ${address} (UDP).`)
      out(
        `Give every site: --bootstrap ${address} (mesh init, mesh join), or "bootstrap": ["${address}"] in config.json.`
      )
    }
    const signal = await new Promise<string>((resolve) => {
      process.once('SIGINT', () => resolve('SIGINT'))
      process.once('SIGTERM', () => resolve('SIGTERM'))
    })
    if (!values.json) out(`Stopping (${signal}).`)
    await node.destroy()
    return 0
  }
}

function parseListen(text: string | undefined): { host: string; port: number } {
  if (text === undefined)
    throw MeshError.USAGE('say where to listen', { hint: 'Try: mesh dht --listen 192.168.1.10:49737' })
  const m = /^([^:]+)(?::(\d+))?$/.exec(text.trim())
  const host = m?.[1] ?? ''
  const port = m?.[2] === undefined ? DEFAULT_PORT : Number(m[2])
  if (!m || net.isIPv4(host) === false)
    throw MeshError.USAGE(`--listen "${text}" is not an IPv4 address with an optional port`, {
      hint: 'Give the IPv4 address the sites reach this machine at, e.g. --listen 192.168.1.10:49737.'
    })
  if (host === '0.0.0.0')
    throw MeshError.USAGE('--listen needs the address the sites reach this machine at, not 0.0.0.0', {
      hint: 'The bootstrap node tells the sites its own address: e.g. --listen 192.168.1.10:49737 (see `ip addr`).'
    })
  if (!(port >= 1 && port <= 65535))
    throw MeshError.USAGE(`--listen port ${m[2]} is not a port`, { hint: 'Give a port from 1 to 65535.' })
  return { host, port }
}
