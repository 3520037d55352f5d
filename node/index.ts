export { DatasetLog, logName, syncStore } from './log.ts'
export { CaptureLoop, type CaptureLoopOptions, type CaptureStats } from './capture-loop.ts'
export { ApplyLoop, type ApplyLoopOptions, type ApplyStats } from './apply-loop.ts'
export { MeshNode, askNode, meshTopic, statusFromDisk, type MeshNodeOptions, type NetworkOptions, type OwnDataset, type PromoteResult, type Refusal } from './node.ts'
export { resolveChain, supersedes, locate, type Segment } from './chain.ts'
export { redeemJoinCode, type RedeemOptions } from './join.ts'
export {
  buildStatus,
  addWalHealth,
  duration,
  DEFAULT_THRESHOLDS,
  VERDICT_EXIT,
  type SiteStatus,
  type StatusThresholds,
  type Verdict,
  type DatasetStatus,
  type HolderStatus,
  type MemberStatus
} from './status.ts'
export {
  sitePaths,
  createSiteKey,
  readSiteKey,
  readMeshState,
  writeMeshState,
  createInvite,
  readInvites,
  readReports,
  writeFileAtomic,
  type SitePaths,
  type MeshState,
  type Invite
} from './state.ts'
export { checkSource, checkReplicaServer, createDataDir, undoSource } from './site.ts'
export { checkUrl, redactUrl } from '../adapters/index.ts'
export { DEFAULT_SNAPSHOTS, type SnapshotPolicy } from './snapshots.ts'
export { DEFAULT_GUARD, type DamageGuard } from '../adapters/index.ts'
export { valueTag } from '../adapters/index.ts'
