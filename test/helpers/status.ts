/** Status inputs for the pure status tests: a mesh of two sites, shop-a and shop-b, and one dataset of shop-a. */
import crypto from 'hypercore-crypto'
import type { LocalDataset, MeshState } from '../../node/state.ts'

const HOUR = 3600_000

/** shop-a (key `a`) and shop-b (key `b`), members for long; dataset d1 "till" (log `log`) with shop-a its origin. */
export function twoSiteState(
  a: Uint8Array,
  b: Uint8Array,
  log: Uint8Array,
  now: number,
  local: LocalDataset[] = [],
  engine = 'sqlite'
): MeshState {
  return {
    meshId: crypto.randomBytes(32),
    members: [
      { key: a, site: 'shop-a', addedAt: now - 1000 * HOUR },
      { key: b, site: 'shop-b', addedAt: now - 1000 * HOUR }
    ],
    datasets: [
      {
        id: 'd1',
        name: 'till',
        engine,
        origin: a,
        originSite: 'shop-a',
        epoch: 0,
        log,
        createdAt: now - 1000 * HOUR
      }
    ],
    local
  }
}
