/**
 * The engine adapters' public surface: the capture and apply interfaces, the Engine interface with its two
 * engines, and what tools/ needs to check configuration. SQL helpers stay inside their engine's folder.
 */
export type {
  Logger,
  CaptureSide,
  CaptureBatch,
  CaptureStream,
  SnapshotChunk,
  ApplySide,
  AppliedPosition,
  ReplicaState,
  Unit,
  DamageAlert,
  DamageGuard,
  ReplicaCheckpoint,
  TableDiff
} from './types.ts'
export { silentLogger, DEFAULT_GUARD, unitEnd } from './types.ts'
export type {
  Engine,
  CaptureMode,
  CaptureOptions,
  ApplyOptions,
  DatabaseRole,
  Dialect,
  ReplicaPlace,
  Scratch,
  SnapshotFormat
} from './engine.ts'
export { ENGINES, engineFor } from './engines.ts'
export { sqliteEngine } from './sqlite/engine.ts'
export { postgresEngine, checkReplicaServer } from './postgres/engine.ts'
export { SqliteCapture, type SqliteCaptureOptions } from './sqlite/capture.ts'
export { SqliteApply, type SqliteApplyOptions } from './sqlite/apply.ts'
export { valueTag } from './sqlite/common.ts'
export { PostgresCapture, type PostgresCaptureOptions } from './postgres/capture.ts'
export { PostgresApply, type PostgresApplyOptions } from './postgres/apply.ts'
export { PostgresTriggerCapture, type PostgresTriggerCaptureOptions } from './postgres/triggers.ts'
export { checkUrl, redactUrl } from './postgres/common.ts'
export { hashFile } from './files.ts'
