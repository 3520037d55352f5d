/**
 * A blind site (`mesh invite --blind`): it stores and serves every encrypted log of the mesh and reads none of
 * them. It has no data key, no replica, no capture, and cannot promote; roles.ts hands every dataset here
 * instead of settling a role for it.
 *
 * Which logs it holds. It cannot read a log's header, so it cannot walk a chain's parent links as a full
 * member does (chain.ts). It holds what it learns in plaintext that reveals no row: each dataset's newest log
 * key from the datasets message, kept in mesh.json (`LocalDataset.held`) as epochs pass, so that every log it
 * ever held stays held and served after a promotion. A blind site that joins after a promotion holds the logs
 * from the epoch it first saw; the older epochs stay with the full members (a promotion statement naming the
 * parent key can add them here when it lands).
 *
 * A dataset whose logs are not encrypted (made before encryption existed) is not held at all: the blind site
 * never asks for a plaintext log, and says so in status (NOT_ENCRYPTED) until the dataset moves to encrypted
 * logs (UPGRADE.md). Nor is it sent one: a full member replicates only encrypted logs to a blind peer
 * (servePlaintextNever), so a blind box in an attacker's hands cannot fetch a plaintext log by its key.
 */
import { createRequire } from 'node:module'
import { MeshError, type DatasetInfo, type Holding } from '../protocol/index.ts'
import type { DatasetLog } from './log.ts'
import type { MeshNode } from './node.ts'
import type { LocalDataset } from './state.ts'
import { hex } from './util.ts'

const require = createRequire(import.meta.url)
const Replicator = require('hypercore/lib/replicator') as {
  prototype: { attachTo(this: { core: { key: Uint8Array } }, muxer: unknown): void }
}
/** On a blind peer's connection (its protomux): which logs may be replicated over it. */
const ALLOW = Symbol('branchmesh: logs a blind peer may have')
let guarded = false

/**
 * Sends a blind peer only logs that `mayHave` allows (the encrypted ones): the blind site never asks for a
 * plaintext log, and a compromised one that asks by key (log keys travel with the datasets) gets nothing.
 *
 * How: corestore attaches a log to a connection through the log's replicator (`attachTo`), both when it
 * offers its open logs and when the peer asks for one by discovery key; that one method is wrapped, once per
 * process, to skip a connection marked here. hypercore 11.37.1 has no per-connection hook for it, so this
 * reaches into its replicator (lib/replicator.js): pinned with the hypercore version in package.json, and
 * test/blind.test.ts fails if it stops working.
 */
export function servePlaintextNever(muxer: object, mayHave: (key: Uint8Array) => boolean): void {
  if (!guarded) {
    guarded = true
    const attachTo = Replicator.prototype.attachTo
    Replicator.prototype.attachTo = function (this: { core: { key: Uint8Array } }, m: unknown) {
      const allow = (m as { [ALLOW]?: (key: Uint8Array) => boolean } | null)?.[ALLOW]
      if (allow && !allow(this.core.key)) return
      return attachTo.call(this, m)
    }
  }
  ;(muxer as { [ALLOW]?: (key: Uint8Array) => boolean })[ALLOW] = mayHave
}

export class BlindHolder {
  /** Each dataset's newest log held here, by dataset id. */
  private readonly newest = new Map<string, { info: DatasetInfo; log: DatasetLog }>()

  constructor(private readonly node: MeshNode) {}

  /** Holds (opens, downloads whole and serves) the dataset's newest log and every log of it held before. */
  async hold(head: DatasetInfo): Promise<void> {
    const node = this.node
    if (head.encryptedFrom === undefined || head.epoch < head.encryptedFrom) {
      throw MeshError.NOT_ENCRYPTED(
        `${head.name}'s logs are not encrypted, so this blind site does not hold them (it never asks for a ` +
          'plaintext log)',
        { context: { dataset: head.name } }
      )
    }
    const local = this.localOf(head.id)
    const held = (local.held ??= [])
    if (!held.includes(hex(head.log))) {
      held.push(hex(head.log))
      node.saveState()
    }
    for (const k of held) await node.openLog(Buffer.from(k, 'hex'))
    const log = await node.openLog(head.log)
    const was = this.newest.get(head.id)
    this.newest.set(head.id, { info: head, log })
    node.reports.markDirty()
    if (!was || was.log !== log) {
      node.logger.info('holding the encrypted logs of a dataset (blind: never read here)', {
        dataset: head.name,
        origin: head.originSite,
        epoch: head.epoch,
        logs: held.length
      })
    }
  }

  /**
   * Whether a log is one a blind site may hold: a log of a dataset whose logs are encrypted from an epoch at or
   * before its own. A log this site cannot place (not a dataset's newest, not its own, not a parent it read) is
   * not sent.
   */
  isEncryptedLog(key: Uint8Array): boolean {
    const node = this.node
    const at = node.datasetOfLog(key)
    const from = at && node.state.datasets.find((d) => d.id === at.dataset)?.encryptedFrom
    return at !== null && from !== undefined && from !== null && at.epoch >= from
  }

  /** This site's record of a dataset: no database, only the logs it holds. */
  private localOf(id: string): LocalDataset {
    const node = this.node
    let l = node.state.local.find((x) => x.dataset === id)
    if (!l) {
      l = { dataset: id, path: '', written: [], divergences: [], held: [] }
      node.state.local.push(l)
    }
    return l
  }

  /** What this site reports of the logs it holds: how much of each newest log it has, nothing applied. */
  holdings(): Holding[] {
    const node = this.node
    const out: Holding[] = []
    for (const { info, log } of this.newest.values()) {
      const core = log.core
      out.push({
        dataset: info.id,
        log: log.key,
        epoch: info.epoch,
        length: core.length,
        byteLength: core.byteLength,
        downloaded: core.contiguousLength,
        applied: 0,
        appliedBytes: 0,
        lastWriteAt: node.reports.originReported(info)?.lastWriteAt ?? 0,
        appliedWriteAt: 0,
        error: '',
        errorMessage: '',
        damaged: 0
      })
    }
    return out
  }
}
