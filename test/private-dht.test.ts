import assert from 'node:assert/strict'
import test from 'node:test'
import { tmpDir } from './helpers/db.ts'
import { MESH, converged, mesh, sqliteSite } from './helpers/mesh.ts'
import { nodeProcess } from './helpers/teardown.ts'
import { writeWorkload } from './helpers/workload.ts'

/** A UDP port free on loopback now (bound and released). */
async function freePort(): Promise<number> {
  const { createSocket } = await import('node:dgram')
  const s = createSocket('udp4')
  await new Promise<void>((r) => s.bind(0, '127.0.0.1', () => r()))
  const port = s.address().port
  await new Promise<void>((r) => s.close(() => r()))
  return port
}

test('mesh dht runs the only bootstrap of a private network; two sites protect each other through it', async (t) => {
  const port = await freePort()
  const dht = nodeProcess(t, [MESH, 'dht', '--listen', `127.0.0.1:${port}`], 'mesh dht')
  await dht.waitLine(/listening on 127\.0\.0\.1:\d+/, 30_000)
  const bootstrap = `127.0.0.1:${port}`
  const root = tmpDir(t)
  const [a, b] = ['north', 'south'].map((n) => sqliteSite(t, root, n, bootstrap))
  writeWorkload(a.db, 1, 30)
  writeWorkload(b.db, 2, 30)
  await a.init()
  await a.start()
  await b.join(await a.invite())
  await b.start()
  await converged([a, b])
})

test('mesh dht refuses an address that is not one the sites can reach, with what to give instead', async () => {
  for (const [listen, said] of [
    ['0.0.0.0:49737', /not 0\.0\.0\.0/],
    ['shop-server', /not an IPv4 address/],
    ['127.0.0.1:70000', /not a port/]
  ] as const) {
    const r = await mesh(['dht', '--listen', listen])
    assert.equal(r.code, 64, `${listen}: ${r.stderr}`)
    assert.match(r.stderr, said)
    assert.match(r.stderr, /What to do: /)
  }
  const none = await mesh(['dht'])
  assert.equal(none.code, 64)
  assert.match(none.stderr, /Try: mesh dht --listen/)
})
