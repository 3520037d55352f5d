/** Status inputs for the pure status tests: a mesh of two sites, shop-a and shop-b, and one dataset of shop-a. */
import crypto from 'hypercore-crypto'
import { buildStatus, DEFAULT_THRESHOLDS } from '../../node/index.ts'
import type { LocalDataset, MeshState } from '../../node/state.ts'
import type { Holding, Report } from '../../protocol/index.ts'

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

/**
 * Holdings of dataset d1 (log `log`) as a site reports them: caught up at 100 blocks (10,000 bytes), written and
 * applied up to an hour before `now`, no error; `over` changes what a test is about.
 */
export function holdingsOf(log: Uint8Array, now: number): (over: Partial<Holding>) => Holding {
  return (over) => ({
    dataset: 'd1',
    log,
    epoch: 0,
    length: 100,
    byteLength: 10_000,
    downloaded: 100,
    applied: 100,
    appliedBytes: 10_000,
    lastWriteAt: now - HOUR,
    appliedWriteAt: now - HOUR,
    error: '',
    errorMessage: '',
    damaged: 0,
    ...over
  })
}

/** shop-a's status at `now` in twoSiteState's mesh, from these reports: its node running, no peer connected. */
export function shopAStatus(
  a: Uint8Array,
  b: Uint8Array,
  log: Uint8Array,
  now: number,
  reports: Report[],
  thresholds = DEFAULT_THRESHOLDS
) {
  return buildStatus({
    self: a,
    site: 'shop-a',
    state: twoSiteState(a, b, log, now),
    reports,
    connected: new Set(),
    running: true,
    refused: [],
    now,
    thresholds
  })
}
