// A local DHT test network on loopback, in its own process: prints "bootstrap HOST:PORT,..." and runs until killed.
import createTestnet from 'hyperdht/testnet.js'

const testnet = await createTestnet(3, { host: '127.0.0.1' })
process.stdout.write(`bootstrap ${testnet.bootstrap.map((b) => `${b.host}:${b.port}`).join(',')}\n`)
const stop = async () => {
  await testnet.destroy()
  process.exit(0)
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
