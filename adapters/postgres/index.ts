export { PostgresCapture, capturePrerequisites, type PostgresCaptureOptions } from './capture.ts'
export { PostgresApply, CREATE_META, type PostgresApplyOptions } from './apply.ts'
export { PostgresTriggerCapture, type PostgresTriggerCaptureOptions } from './triggers.ts'
export { checkUrl, connect, ensureIdentityFull, redactUrl, splitPassword, pgError, quoteIdent, readTables, readObjects, pgUpsertSql, pgDeleteSql, OWN_SCHEMA, SEQUENCES_TABLE } from './common.ts'
