/**
 * The shop's till for bench/budget.ts: a small request/response over TCP across the slow link, run inside a
 * network namespace. `server HOST PORT` answers every 100-byte request with 100 bytes; `client HOST PORT` sends
 * one request every 100 ms (the next only once the answer is in, as a till waits for its server) and prints
 * `r AT_MS LATENCY_MS` per answer. Both run until SIGTERM.
 */
import net from 'node:net'

const SIZE = 100
const [mode, host, port] = process.argv.slice(2)

if (mode === 'server') {
  const server = net.createServer((sock) => {
    sock.setNoDelay(true)
    let pending = 0
    sock.on('data', (d) => {
      pending += d.byteLength
      while (pending >= SIZE) {
        pending -= SIZE
        sock.write(Buffer.alloc(SIZE, 0x61))
      }
    })
    sock.on('error', () => {})
  })
  server.listen(Number(port), host, () => process.stdout.write('listening\n'))
  process.on('SIGTERM', () => process.exit(0))
} else {
  const sock = net.connect(Number(port), host)
  sock.setNoDelay(true)
  let got = 0
  let sentAt = 0
  const send = () => {
    sentAt = Date.now()
    got = 0
    sock.write(Buffer.alloc(SIZE, 0x62))
  }
  sock.on('connect', send)
  sock.on('data', (d) => {
    got += d.byteLength
    if (got < SIZE) return
    const now = Date.now()
    process.stdout.write(`r ${now} ${now - sentAt}\n`)
    setTimeout(send, Math.max(0, 100 - (now - sentAt)))
  })
  sock.on('error', (err) => {
    process.stdout.write(`error ${err.message}\n`)
    process.exit(1)
  })
  process.on('SIGTERM', () => process.exit(0))
}
