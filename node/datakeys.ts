/**
 * Data keys: one per encrypted dataset, 32 random bytes made by its origin when it creates epoch 0 and kept
 * across epochs. Every log of such a dataset is opened with hypercore's block encryption under it at a full
 * member; a blind site opens the same logs without it, and stores, verifies and serves the ciphertext.
 *
 * Where a key is: DIR/keys/<dataset id>.key (hex, mode 0600, in a 0700 folder). Never in mesh.json, the log
 * store, a log line, a report or status. It reaches another member only sealed to that member's node key, in
 * a signed data key grant (protocol/datakey.ts, StatementKind.dataKey), which every full member that holds the
 * key makes for every full member that has none yet. A blind site or an observer is never sealed one; a blind
 * site that is sent one refuses it (an alarm at every site) and keeps nothing.
 *
 * What this file does not do: change a dataset's key (a removed member keeps what it had; a new key needs a
 * new epoch of encrypted logs, as UPGRADE.md says for plaintext ones).
 */
import fs from 'node:fs'
import path from 'node:path'
import crypto from 'hypercore-crypto'
import {
  DATA_KEY_BYTES,
  MeshError,
  StatementKind,
  decodeDataKey,
  encodeDataKey,
  openDataKey,
  sealDataKey,
  signStatement,
  type DataKeyGrant,
  type DatasetInfo,
  type Statement
} from '../protocol/index.ts'
import type { Peer } from './control.ts'
import { findDataset } from './history.ts'
import type { DatasetLog, LogEncryption, LogPlace } from './log.ts'
import type { MeshNode } from './node.ts'
import { writeFileAtomic, type MeshState } from './state.ts'
import type { Outcome } from './statements.ts'
import { fileSafe, hex } from './util.ts'

/** The file that holds a dataset's data key at the site in `dir`. */
export function dataKeyFile(dir: string, dataset: string): string {
  return path.join(dir, 'keys', `${fileSafe(dataset)}.key`)
}

/** The data key of a dataset kept at the site in `dir`, or null when it holds none. */
export function readDataKey(dir: string, dataset: string): Buffer | null {
  const file = dataKeyFile(dir, dataset)
  let text: string
  try {
    text = fs.readFileSync(file, 'utf8').trim()
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null
    throw MeshError.IO_ERROR(`cannot read the data key of a dataset: ${(err as Error).message}`, { cause: err })
  }
  if (!/^[0-9a-f]{64}$/.test(text)) {
    throw MeshError.BAD_CONFIG(`${file} is damaged`, {
      hint: 'Delete the file: the key is sent again, sealed to this site, by a full member that holds it.'
    })
  }
  // A key file restored from a backup may have lost its mode: only this user may read it.
  if (fs.statSync(file).mode & 0o077) fs.chmodSync(file, 0o600)
  return Buffer.from(text, 'hex')
}

/**
 * How the log of epoch `epoch` of a dataset is opened at a full member holding `key` (or none) for it: encrypted
 * from the dataset's encryptedFrom epoch on, as stored before it (plaintext logs from before encryption stay
 * readable). A dataset not in the mesh state yet is one this site is creating: encrypted when it has a key.
 */
export function encryptionWith(key: Buffer | null, info: DatasetInfo | undefined, epoch: number): LogEncryption {
  if (info === undefined) return key ? { key } : null
  if (info.encryptedFrom === undefined || epoch < info.encryptedFrom) return null
  if (key) return { key }
  throw MeshError.DATA_KEY_MISSING(`${info.name}'s logs are encrypted and its data key has not reached this site yet`, {
    context: { dataset: info.name }
  })
}

/**
 * The dataset a log belongs to, from what a site knows without reading the log: a dataset's newest log, a log
 * it wrote, or the parent named in the header of a log it has open (a chain is walked child first, so the
 * parent is always found this way). null when none says.
 */
export function datasetOfLog(state: MeshState, open: Iterable<DatasetLog>, key: Uint8Array): LogPlace | null {
  const k = hex(key)
  const head = state.datasets.find((d) => hex(d.log) === k)
  if (head) return { dataset: head.id, epoch: head.epoch }
  for (const l of state.local) {
    const w = l.written.find((x) => hex(x.key) === k)
    if (w) return { dataset: l.dataset, epoch: w.epoch }
  }
  for (const log of open) {
    const h = log.knownHeader
    if (h?.parent && hex(h.parent.key) === k) return { dataset: h.dataset, epoch: h.epoch - 1 }
  }
  return null
}

/** How often a holder looks for full members that have no grant of its keys yet. */
const DISTRIBUTE_MS = 2000

export class DataKeys {
  /** Keys read from their files, by dataset id (memory only). */
  private readonly cache = new Map<string, Buffer>()
  private timer: NodeJS.Timeout | null = null

  constructor(private readonly node: MeshNode) {
    node.statements.on(StatementKind.dataKey, { receive: (s, from) => this.receive(s, from) })
  }

  private get dir(): string {
    return path.join(this.node.paths.dir, 'keys')
  }

  /** The data key of a dataset held here, or null. */
  get(dataset: string): Buffer | null {
    const have = this.cache.get(dataset)
    if (have) return have
    const key = readDataKey(this.node.paths.dir, dataset)
    if (key) this.cache.set(dataset, key)
    return key
  }

  /** A new data key for a dataset this site creates; kept before anything is encrypted under it. */
  create(dataset: string): Buffer {
    const have = this.get(dataset)
    if (have) return have
    const key = crypto.randomBytes(DATA_KEY_BYTES)
    this.save(dataset, key)
    return key
  }

  private save(dataset: string, key: Buffer): void {
    fs.mkdirSync(this.dir, { recursive: true, mode: 0o700 })
    writeFileAtomic(dataKeyFile(this.node.paths.dir, dataset), `${key.toString('hex')}\n`, 0o600)
    this.cache.set(dataset, key)
  }

  /**
   * How this site opens a log of `dataset` (null: not known): with its data key at a full member that holds
   * one; as stored at a blind site, and for a dataset whose logs are not encrypted. DATA_KEY_MISSING at a full
   * member for an encrypted dataset whose key has not reached it yet.
   */
  encryptionOf(place: LogPlace | null): LogEncryption {
    if (place === null || this.node.role === 'blind') return null
    const info = this.node.state.datasets.find((d) => d.id === place.dataset)
    return encryptionWith(this.get(place.dataset), info, place.epoch)
  }

  /**
   * `mesh encrypt DATASET` at its origin: a data key for a dataset whose logs are plaintext (made before
   * encryption existed), sealed to every full member, and the dataset's logs encrypted from its next epoch on
   * (encryptedFrom, announced with the datasets). The current epoch's log stays plaintext: it moves to an
   * encrypted one at the next epoch (a promotion, and back; see UPGRADE.md). Safe to run again.
   */
  encryptFrom(name: string): { dataset: string; from: number; epoch: number; already: boolean } {
    const node = this.node
    const head = findDataset(node.state.datasets, name)
    if (node.role === 'blind') throw MeshError.BLIND_SITE(`${node.opts.site} is a blind site: it holds no data key`)
    if (!node.key.equals(head.origin)) {
      throw MeshError.NOT_ORIGIN(`${node.opts.site} is not the origin of ${head.name}; ${head.originSite} is`)
    }
    if (head.encryptedFrom !== undefined) {
      return { dataset: head.name, from: head.encryptedFrom, epoch: head.epoch, already: true }
    }
    this.create(head.id)
    const info = { ...head, encryptedFrom: head.epoch + 1 }
    node.state.datasets = node.state.datasets.map((d) => (d.id === head.id ? info : d))
    node.saveState()
    node.control.broadcast((p) => p.send('datasets', node.state.datasets))
    node.logger.warn('this dataset’s logs are encrypted from its next epoch on', {
      dataset: head.name,
      from: info.encryptedFrom
    })
    this.distribute()
    return { dataset: head.name, from: info.encryptedFrom, epoch: head.epoch, already: false }
  }

  start(): void {
    this.distribute()
    this.timer = setInterval(() => this.distribute(), DISTRIBUTE_MS)
    this.timer.unref()
  }

  close(): void {
    if (this.timer) clearInterval(this.timer)
  }

  /** The grants held here (this site's and every other), decoded; those that do not decode are left out. */
  private grants(): Array<{ s: Statement; g: DataKeyGrant }> {
    const out: Array<{ s: Statement; g: DataKeyGrant }> = []
    for (const s of this.node.statements.list(StatementKind.dataKey)) {
      try {
        out.push({ s, g: decodeDataKey(s.body) })
      } catch {
        // A grant of a newer format: kept and relayed by statements.ts, not acted on here.
      }
    }
    return out
  }

  /**
   * Seals every data key held here to every full member that has no grant of it yet. Two holders may both
   * grant the same member a key; the second is 'known' there, which costs one statement and nothing else.
   */
  distribute(): void {
    const node = this.node
    if (node.closing || node.role !== 'full') return
    const given = new Set(this.grants().map(({ g }) => `${g.dataset}:${hex(g.to)}`))
    for (const d of node.state.datasets) {
      const key = this.get(d.id)
      if (!key) continue
      for (const m of node.state.members) {
        if (node.key.equals(m.key) || (m.role ?? 'full') !== 'full' || given.has(`${d.id}:${hex(m.key)}`)) continue
        const body = encodeDataKey({ dataset: d.id, to: m.key, sealed: sealDataKey(key, m.key) })
        const s = signStatement(StatementKind.dataKey, node.state.meshId, node.keyPair, body)
        node.logger.info('sealed the data key of a dataset to a member', { dataset: d.name, to: m.site })
        void node.statements.publish(s)
      }
    }
  }

  /**
   * The data keys held here sealed to a member that was just admitted (a full one), signed and published: the
   * welcome carries them, so the new site reads the logs from its first start instead of waiting for a grant.
   */
  grantsFor(member: Uint8Array): Statement[] {
    const node = this.node
    if (node.role !== 'full' || node.admission.roleOf(member) !== 'full') return []
    const out: Statement[] = []
    for (const d of node.state.datasets) {
      const key = this.get(d.id)
      if (!key) continue
      const body = encodeDataKey({ dataset: d.id, to: member, sealed: sealDataKey(key, member) })
      const s = signStatement(StatementKind.dataKey, node.state.meshId, node.keyPair, body)
      void node.statements.publish(s)
      out.push(s)
    }
    return out
  }

  /**
   * Grants sealed to this site that statements.json holds but whose key is not in DIR/keys yet (the ones a
   * welcome carried, or a crash between keeping a grant and writing its key): opened and kept, before any log
   * is opened.
   */
  adoptHeld(): void {
    const node = this.node
    if (node.role !== 'full') return
    for (const { g } of this.grants()) {
      if (!node.key.equals(g.to) || this.get(g.dataset)) continue
      const key = openDataKey(g.sealed, node.keyPair)
      if (key) this.save(g.dataset, key)
    }
  }

  /** A grant from a peer (or this site): kept and relayed; opened and kept when it is sealed to this site. */
  private receive(s: Statement, from: Peer | null): Outcome {
    const node = this.node
    const via = from?.site ?? node.opts.site
    let g: DataKeyGrant
    try {
      g = decodeDataKey(s.body)
    } catch (err) {
      return { outcome: 'refused', code: 'BAD_STATEMENT', reason: (err as Error).message, site: via }
    }
    const signer = node.admission.memberName(s.signer)
    const name = node.state.datasets.find((d) => d.id === g.dataset)?.name ?? g.dataset
    if (node.admission.roleOf(s.signer) !== 'full') {
      const reason = `${signer}, which is not a full member, sent a data key of ${name}`
      return { outcome: 'refused', code: 'BAD_DATA_KEY', reason, site: via, dataset: g.dataset }
    }
    const role = node.admission.roleOf(g.to)
    if (role !== null && role !== 'full') {
      const reason = `${signer} sealed the data key of ${name} to ${node.admission.memberName(g.to)}, a ${role} site`
      return { outcome: 'refused', code: 'DATA_KEY_TO_BLIND', reason, site: signer, dataset: g.dataset }
    }
    if (!node.key.equals(g.to)) return { outcome: 'new' }
    if (node.role !== 'full') {
      // Never kept: a blind site must not be able to read what it stores.
      const reason = `${signer} sent the data key of ${name} to ${node.opts.site}, a ${node.role} site`
      return { outcome: 'refused', code: 'DATA_KEY_TO_BLIND', reason, site: signer, dataset: g.dataset }
    }
    const key = openDataKey(g.sealed, node.keyPair)
    if (key === null) {
      const reason = `a data key of ${name} from ${signer} does not open with this site's key`
      return { outcome: 'refused', code: 'BAD_DATA_KEY', reason, site: signer, dataset: g.dataset }
    }
    const have = this.get(g.dataset)
    if (have) {
      if (have.equals(key)) return { outcome: 'known' }
      const reason = `${signer} sent a data key of ${name} that differs from the one this site holds`
      return { outcome: 'refused', code: 'BAD_DATA_KEY', reason, site: signer, dataset: g.dataset }
    }
    this.save(g.dataset, key)
    node.logger.info('received the data key of a dataset', { dataset: name, from: signer })
    // What could not be followed for want of the key is followed now.
    if (node.state.datasets.some((d) => d.id === g.dataset)) node.roles.settleLater(g.dataset)
    return { outcome: 'new' }
  }
}
