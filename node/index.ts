/// <reference path="../types/holepunch.d.ts" preserve="true" />
export { DatasetLog, DEFAULT_UNIT_MEMORY, logName, syncStore } from './log.ts'
export { CaptureLoop, type CaptureLoopOptions, type CaptureStats } from './capture-loop.ts'
export { ApplyLoop, replayTo, type ApplyLoopOptions, type ApplyStats } from './apply-loop.ts'
export { MeshNode, meshTopic, type MeshNodeOptions, type NetworkOptions, type OwnDataset } from './node.ts'
export { askNode, type LocalRequest } from './local.ts'
export type { Refusal } from './admission.ts'
export type { PromoteResult } from './failover.ts'
export type { RestoreJob } from './upkeep.ts'
export { statusFromDisk } from './reports.ts'
export { resolveChain, supersedes, locate, offsets, seqOf, type Segment, type ChainSegment } from './chain.ts'
export { keepWelcome, redeemJoinCode, type RedeemOptions } from './join.ts'
export { CREDENTIAL_MS } from './membership.ts'
export {
  History,
  findDataset,
  offlineHistory,
  restorePoint,
  walk,
  type HistoryUnit,
  type RestoreResult,
  type RestoreTarget
} from './history.ts'
export {
  buildStatus,
  addWalHealth,
  count,
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
export { DEFAULT_SNAPSHOTS, buildSnapshot, type SnapshotPolicy } from './snapshots.ts'
export { checkUrl, redactUrl, engineFor, valueTag, DEFAULT_GUARD, type DamageGuard } from '../adapters/index.ts'
export {
  type AppVersionSource,
  APP_VERSION_TIMEOUT_MS,
  compareVersions,
  nodeEndOfLife,
  readAppVersion
} from './versions.ts'
export { diskLevel, measureDisks, sizeText, snapshotRoom, type DiskSpace } from './disk.ts'
export { recordContact, usuallyUp, readContacts, type ContactHistory } from './usual-hours.ts'
export type { MemberHealth } from './health-status.ts'
export {
  chooseSender,
  dailyDue,
  diffReasons,
  localDay,
  reasonKey,
  untoldSince,
  type AlertOptions,
  type Reason
} from './alerts.ts'
export { addSample, buildSummary, buildAlert, sample, type DaySample } from './summary.ts'
export { Dashboard, isLoopback, parseListen, type DashboardOptions } from './dashboard/server.ts'
export type { DashboardConfig } from './dashboard/part.ts'
export { DEFAULT_STEP_MS, readHistory, type ChartHistory } from './dashboard/history.ts'
export {
  Traffic,
  Meter,
  MIN_LINK_KBPS,
  kbit,
  type LinkBudget,
  type TrafficStatus,
  type PeerTrafficStatus
} from './traffic.ts'
