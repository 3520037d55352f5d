/**
 * What the command line needs from node/ without loading the daemon: the local socket's client, the data
 * directory's paths, the settings' defaults, and small pure helpers. Every module behind these exports is light
 * (Node.js built-ins and protocol/errors.ts only): `mesh status` and the configuration (tools/config.ts) import
 * from here, not from node/index.ts, whose modules load hypercore, hyperswarm, sodium-native and the database
 * drivers (a few hundred milliseconds). What a command needs of those it imports when it needs it
 * (`await import('../../node/index.ts')`). test/startup-imports.test.ts checks that this stays light.
 */
export { askNode, type LocalRequest } from './local.ts'
export { sitePaths, type SitePaths } from './paths.ts'
export { writeFileAtomic } from './files.ts'
export { sizeText } from './disk.ts'
export { count } from './util.ts'
export { parseListen } from './dashboard/listen.ts'
export {
  DEFAULT_SNAPSHOTS,
  DEFAULT_THRESHOLDS,
  duration,
  kbit,
  lossText,
  MIN_LINK_KBPS,
  VERDICT_EXIT,
  type LinkBudget,
  type SnapshotPolicy,
  type StatusThresholds,
  type Verdict
} from './defaults.ts'
export { checkUrl, DEFAULT_GUARD, redactUrl, type DamageGuard } from '../adapters/client.ts'
