export { MeshError, type MeshErrorOptions } from './errors.ts'
export { type Value, sameValue } from './values.ts'
export {
  FORMAT_VERSION,
  Kind,
  type KindName,
  type Engine,
  type Entry,
  type HeaderEntry,
  type SchemaEntry,
  type TransactionEntry,
  type SnapshotEntry,
  type CheckpointEntry,
  type FenceEntry,
  type TableDef,
  type ColumnDef,
  type SchemaObject,
  type TableChanges,
  encodeEntry,
  decodeEntry,
  continues
} from './entries.ts'
export { DEFAULT_BLOCK_BYTES, splitChanges, packTransaction, packSnapshot, UnitAssembler } from './units.ts'
