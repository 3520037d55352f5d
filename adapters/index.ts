export type {
  Logger,
  CaptureSide,
  CaptureBatch,
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
export { silentLogger, DEFAULT_GUARD } from './types.ts'
export { SqliteCapture, type SqliteCaptureOptions } from './sqlite/capture.ts'
export { SqliteApply, type SqliteApplyOptions } from './sqlite/apply.ts'
export { readTables, openDatabase, valueTag } from './sqlite/common.ts'
export { backupDatabase, databaseRole, diffDatabases, finishRestoredFile, replaceContents, sqlLiteral, upsertSql, deleteSql, rowColumns, keyColumns } from './sqlite/rebuild.ts'
export { diffPgDatabases, mendPgDatabase, PostgresCapture, PostgresApply, PostgresTriggerCapture, capturePrerequisites, checkUrl, connect, ensureIdentityFull, quoteIdent, redactUrl, pgUpsertSql, pgDeleteSql, type PostgresCaptureOptions, type PostgresApplyOptions } from './postgres/index.ts'
