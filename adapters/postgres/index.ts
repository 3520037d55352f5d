export { PostgresCapture, type PostgresCaptureOptions } from './capture.ts'
export { capturePrerequisites } from './slot.ts'
export { PostgresApply, CREATE_META, type PostgresApplyOptions } from './apply.ts'
export { PostgresTriggerCapture, type PostgresTriggerCaptureOptions } from './triggers.ts'
export { diffPgDatabases, mendPgDatabase } from './verify.ts'
export {
  checkUrl,
  connect,
  ensureIdentityFull,
  redactUrl,
  splitPassword,
  pgError,
  quoteIdent,
  readTables,
  readObjects,
  pgUpsertSql,
  pgDeleteSql,
  OWN_SCHEMA,
  SEQUENCES_TABLE
} from './common.ts'
