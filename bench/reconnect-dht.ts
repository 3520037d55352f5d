/**
 * A DHT test network for bench/reconnect.ts, run inside a network namespace of its own: three nodes bound to
 * the address given as the first argument. Prints `bootstrap HOST:PORT,...` and runs until SIGTERM.
 */
import createTestnet from 'hyperdht/testnet.js'

const host = process.argv[2] ?? '127.0.0.1'
const net = await createTestnet(3, { host })
process.stdout.write(`bootstrap ${net.bootstrap.map((b) => `${b.host}:${b.port}`).join(',')}\n`)
process.on('SIGTERM', () => {
  net.destroy().then(() => process.exit(0))
})
