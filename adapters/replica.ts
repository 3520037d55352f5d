/**
 * What every apply side keeps about its replica, whatever the engine: where it stands in the log, the schema
 * it last applied, its state, the objects it could not create, and the mass-damage guard's findings.
 */
import { sameBytes, type CheckpointEntry, type SchemaObject, type TableDef } from '../protocol/index.ts'
import type { AppliedPosition, DamageAlert, DamageGuard, Logger, ReplicaCheckpoint, ReplicaState } from './types.ts'
import { DEFAULT_GUARD, silentLogger } from './types.ts'

export interface ReplicaMeta {
  dataset: string | null
  log: Uint8Array | null
  epoch: number
  length: number
  treeHash: Uint8Array | null
  state: ReplicaState
  tables: TableDef[]
  objects: SchemaObject[]
}

export abstract class ReplicaBase {
  protected meta!: ReplicaMeta
  protected readonly log: Logger
  /** Dataset id this replica must belong to; checked against the log header. */
  protected readonly expectDataset: string | null
  protected readonly guard: DamageGuard
  /** Whether this database compares itself with the origin's checkpoints (see the apply options). */
  protected readonly checkpoints: boolean
  protected skippedObjects: string[] = []
  protected lastAlerts: DamageAlert[] = []
  private lastCheckpoint: ReplicaCheckpoint | null = null

  constructor(opts: { logger?: Logger; dataset?: string; guard?: DamageGuard; checkpoints?: boolean }) {
    this.checkpoints = opts.checkpoints ?? true
    this.log = opts.logger ?? silentLogger
    this.expectDataset = opts.dataset ?? null
    this.guard = opts.guard ?? DEFAULT_GUARD
  }

  position(): AppliedPosition | null {
    const m = this.meta
    if (m.log === null) return null
    return { log: m.log, epoch: m.epoch, length: m.length, treeHash: m.treeHash }
  }

  state(): ReplicaState {
    return this.meta.state
  }

  /** The dataset this replica belongs to, once the log header has been applied. */
  dataset(): string | null {
    return this.meta.dataset
  }

  /** Schema objects the replica could not create, with the reason. */
  skipped(): string[] {
    return [...this.skippedObjects]
  }

  /** The last checkpoint this replica compared itself with (`length`: the checkpoint's block), or null. */
  checkpoint(): ReplicaCheckpoint | null {
    return this.lastCheckpoint
  }

  /**
   * Compares this replica's digest (`mine`, computed in the transaction that applies the checkpoint at
   * block `block`) with the origin's.
   */
  protected compareCheckpoint(entry: CheckpointEntry, mine: { digest: Uint8Array; rows: number }, block: number): void {
    const ok = sameBytes(mine.digest, entry.digest)
    this.lastCheckpoint = { length: block, ok, rows: mine.rows, originRows: entry.rows, at: Date.now() }
    if (!ok)
      this.log.warn('this replica differs from the origin at a checkpoint', {
        length: entry.length,
        rows: mine.rows,
        originRows: entry.rows
      })
  }

  /** Units that deleted or changed a large share of a table, from the last apply() (see DamageAlert). */
  alerts(): DamageAlert[] {
    return [...this.lastAlerts]
  }
}
