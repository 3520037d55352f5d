import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import { Liveness } from '../node/liveness.ts'
import type { MeshNode } from '../node/node.ts'
import { tmpDir } from './helpers/db.ts'
import { memoryLogger } from './helpers/logger.ts'

/** The parts of a node the liveness record reads: its data directory, heartbeat and logger. */
function site(dir: string): MeshNode {
  return { paths: { dir }, opts: { heartbeatMs: 1000 }, logger: memoryLogger() } as unknown as MeshNode
}

test('liveness: reports heard within three heartbeats make one interval; a longer gap starts another', (t) => {
  const dir = tmpDir(t, 'liveness-')
  const l = new Liveness(site(dir))
  const t0 = 1_000_000
  for (let t = t0; t <= t0 + 20_000; t += 1000) l.heard(t)
  // Cut off for 10 s (more than 3 heartbeats), then back.
  for (let t = t0 + 30_000; t <= t0 + 40_000; t += 1000) l.heard(t)
  const now = t0 + 40_000
  assert.ok(l.liveThrough(t0 + 5000, t0 + 15_000, now), 'inside the first interval')
  assert.ok(!l.liveThrough(t0 + 18_000, t0 + 32_000, now), 'across the gap')
  assert.ok(!l.liveThrough(t0 + 25_000, t0 + 25_000, now), 'in the gap')
  assert.ok(l.liveThrough(t0 + 35_000, now, now), 'the open interval lasts until now')
  assert.ok(!l.liveThrough(t0 + 35_000, now + 10_000, now + 10_000), 'not once nothing was heard for 3 heartbeats')
  l.close()
  const again = new Liveness(site(dir))
  again.load()
  assert.ok(again.liveThrough(t0 + 5000, t0 + 15_000, now), 'kept in liveness.json')
  assert.equal(fs.statSync(`${dir}/liveness.json`).mode & 0o777, 0o600)
})
