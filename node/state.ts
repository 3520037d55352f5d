/**
 * What a site keeps in its data directory besides the configuration (which tools/ owns):
 *
 *   site.key       the node's key seed (0600): its identity on every connection and the key its reports are signed with
 *   mesh.json      the mesh id, the members, the datasets known and their logs
 *   invites.json   pending join invites (0600: each holds the seed a join code carries)
 *   reports.json   the last report heard from every site, for `mesh status` when the node is not running
 *   store/         the corestore holding every log
 *   replicas/      the replica databases of other sites' datasets
 *   node.sock      the running node's local socket
 *
 * Every file is replaced atomically (write to a temporary file, fsync, rename), so a crash leaves the old or
 * the new version, never half of one.
 */
import fs from 'node:fs'
import DHT, { type KeyPair } from 'hyperdht'
import crypto from 'hypercore-crypto'
import {
  MeshError,
  openReport,
  type DatasetInfo,
  type MemberInfo,
  type MemberRole,
  type SignedReport
} from '../protocol/index.ts'
import type { ReplicaCheckpoint } from '../adapters/types.ts'
import { writeFileAtomic } from './files.ts'
import type { SitePaths } from './paths.ts'

export { writeFileAtomic } from './files.ts'
export { sitePaths, type SitePaths } from './paths.ts'

export interface MeshState {
  meshId: Uint8Array
  members: MemberInfo[]
  /** Every dataset of the mesh, as its newest epoch (the one every site follows). */
  datasets: DatasetInfo[]
  /** This site's own record of each dataset it holds. */
  local: LocalDataset[]
  /** Sites removed from the mesh (and keys replaced by a rotation): refused for good, never admitted again. */
  removed?: RemovedMember[]
  /** The promotion policies set by datasets' origins (absent for a dataset: any full member may promote). */
  policies?: PromotePolicy[]
}

/** A key that no longer belongs to the mesh. */
export interface RemovedMember {
  key: Uint8Array
  site: string
  /** The site that signed the removal (for a rotation: the site itself). */
  by: string
  reason: string
  at: number
}

/** Who may promote one dataset, as its origin last signed it. */
export interface PromotePolicy {
  dataset: string
  /** The sites' keys; empty: any full member. */
  sites: Uint8Array[]
  /** The origin that signed it, and when (the newest wins). */
  signer: Uint8Array
  at: number
}

/** A log this site wrote: one per epoch it was a dataset's origin of. */
export interface WrittenLog {
  epoch: number
  key: Uint8Array
  /** The corestore name it was created under (the writable key pair derives from it). */
  name: string
  /** The log and length it continues from (null for epoch 0). */
  parent: { key: Uint8Array; length: number } | null
  /** The signed promotion that started it (an encoded Statement, hex), written into its header; absent for epoch 0. */
  promotion?: string
}

/** Changes this site made as origin that a newer epoch does not hold, kept when the site was fenced. */
export interface Divergence {
  /** The epoch this site wrote them in. */
  epoch: number
  /** The epoch that superseded it. */
  fencedBy: number
  /** Folder holding changes.jsonl, changes.sql and the database as it was (before.db). */
  dir: string
  /** Row changes (upserts and deletes) in the folder. */
  changes: number
  at: number
}

export interface LocalDataset {
  dataset: string
  /** This site's database of the dataset: the live one while it is the origin, its replica otherwise. */
  path: string
  written: WrittenLog[]
  divergences: Divergence[]
  /** Units this site's replica saw delete or change a large share of a table (the mass-damage guard). */
  damage?: DamageRecord[]
  /** The last `mesh verify` or `mesh repair` of this site's replica. */
  verified?: VerifyResult
  /** The last origin checkpoint this site's replica compared itself with (`seq`: its chain position). */
  checkpoint?: CheckpointResult
  /**
   * Where this site's replica was last proven equal to the log (a matching checkpoint or verify), and the
   * first position after that where it was seen to differ (null while it has not): the replica parted from the
   * log between the two.
   */
  proven?: { equal: number | null; differs: number | null }
  /**
   * The whole copies of the database this site, as its origin, appended to the log after the first (its file
   * replaced, its capture position lost, `mesh resync`), newest last, at most 10: reported to every site.
   */
  copies?: CopyRecord[]
  /** At a blind site: the keys (hex) of every log of the dataset it holds, oldest first (see blind.ts). */
  held?: string[]
}

/** A whole copy of the origin's database appended to the log again: why, when, and where it starts. */
export interface CopyRecord {
  kind: 'replaced' | 'reset' | 'resync'
  at: number
  seq: number
  why: string
  rows: number
}

/** A replica's comparison with an origin checkpoint, with the checkpoint's chain position (`seq`). */
export interface CheckpointResult extends ReplicaCheckpoint {
  seq: number
}

export interface VerifyResult {
  dataset: string
  /** The chain position the replica was compared at, and when. */
  seq: number
  /** The position the log's replay started from: a snapshot's, or 0 (its start). */
  from?: number
  at: number
  ok: boolean
  /** Where it parted from the log (empty when ok). */
  tables: Array<{ table: string; missing: number; extra: number; changed: number; keys: string[] }>
  repaired: boolean
  /**
   * When it differs: the last position where the copy was proven equal to the log (a checkpoint or verify;
   * null when never) and the first where it was seen to differ. It parted from the log between the two.
   */
  parted: { lastEqual: number | null; firstDiffers: number } | null
}

export interface DamageRecord {
  /** The unit's chain position (the state before it is `mesh restore --seq <seq>`), its end, its epoch. */
  seq: number
  end: number
  epoch: number
  /** Origin commit time of the unit, and when this site saw it. */
  time: number | null
  at: number
  table: string
  changed: number
  before: number
}

export interface Invite {
  /** Public key of the one-time key pair the joiner connects with. */
  key: Uint8Array
  seed: Uint8Array
  expiresAt: number
  createdAt: number
  /** The role the site that redeems it gets (absent: full). */
  role?: MemberRole
}

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex')
const unhex = (s: string) => Buffer.from(s, 'hex')

/** A JSON file of the data directory; null when it does not exist, BAD_CONFIG when it is damaged. */
export function readJsonFile(file: string): unknown | null {
  let text: string
  try {
    text = fs.readFileSync(file, 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null
    throw MeshError.IO_ERROR(`cannot read ${file}: ${(err as Error).message}`, { cause: err })
  }
  try {
    return JSON.parse(text)
  } catch (err) {
    throw MeshError.BAD_CONFIG(`${file} is damaged: ${(err as Error).message}`, {
      hint:
        'The file is not valid JSON. Restore it from another copy of this data directory, or join the ' +
        'mesh again with a new --dir.',
      cause: err
    })
  }
}

// --- the site's key ------------------------------------------------------------------------------------------

export function createSiteKey(paths: SitePaths): KeyPair {
  const seed = crypto.randomBytes(32)
  writeFileAtomic(paths.key, `${seed.toString('hex')}\n`, 0o600)
  return DHT.keyPair(seed)
}

export function readSiteKey(paths: SitePaths): KeyPair {
  let text: string
  try {
    text = fs.readFileSync(paths.key, 'utf8').trim()
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw MeshError.NOT_INITIALIZED(`${paths.dir} holds no site (no site.key)`)
    }
    throw MeshError.IO_ERROR(`cannot read ${paths.key}: ${(err as Error).message}`, { cause: err })
  }
  if (!/^[0-9a-f]{64}$/.test(text)) {
    throw MeshError.BAD_CONFIG(`${paths.key} is damaged`, {
      hint: 'The site key cannot be recovered from this file; restore it from a backup of the data directory.'
    })
  }
  const mode = fs.statSync(paths.key).mode & 0o777
  if (mode & 0o077) fs.chmodSync(paths.key, 0o600)
  return DHT.keyPair(unhex(text))
}

// --- mesh.json ---------------------------------------------------------------------------------------------------

export function readMeshState(paths: SitePaths): MeshState {
  const j = readJsonFile(paths.mesh) as null | {
    meshId: string
    members: Array<{ key: string; site: string; addedAt: number; role?: MemberRole }>
    datasets: Array<Omit<DatasetInfo, 'origin' | 'log'> & { origin: string; log: string }>
    local?: Array<
      Omit<LocalDataset, 'written'> & {
        written: Array<{ epoch: number; key: string; name: string; parent: { key: string; length: number } | null }>
      }
    >
    removed?: Array<Omit<RemovedMember, 'key'> & { key: string }>
    policies?: Array<{ dataset: string; sites: string[]; signer: string; at: number }>
  }
  if (j === null) throw MeshError.NOT_INITIALIZED(`${paths.dir} holds no site (no mesh.json)`)
  return {
    meshId: unhex(j.meshId),
    members: j.members.map((m) => ({
      key: unhex(m.key),
      site: m.site,
      addedAt: m.addedAt,
      ...(m.role ? { role: m.role } : {})
    })),
    datasets: j.datasets.map((d) => ({ ...d, origin: unhex(d.origin), log: unhex(d.log) })),
    local: (j.local ?? []).map((l) => ({
      ...l,
      written: l.written.map((w) => ({
        ...w,
        key: unhex(w.key),
        parent: w.parent ? { key: unhex(w.parent.key), length: w.parent.length } : null
      }))
    })),
    ...(j.removed ? { removed: j.removed.map((r) => ({ ...r, key: unhex(r.key) })) } : {}),
    ...(j.policies
      ? { policies: j.policies.map((p) => ({ ...p, sites: p.sites.map(unhex), signer: unhex(p.signer) })) }
      : {})
  }
}

/** The state with the divergence folders a person has since deleted left out (they were reviewed). */
export function withoutReviewed(s: MeshState): MeshState {
  return { ...s, local: s.local.map((l) => ({ ...l, divergences: l.divergences.filter((d) => fs.existsSync(d.dir)) })) }
}

export function writeMeshState(paths: SitePaths, s: MeshState): void {
  const j = {
    meshId: hex(s.meshId),
    members: s.members.map((m) => ({
      key: hex(m.key),
      site: m.site,
      addedAt: m.addedAt,
      ...(m.role ? { role: m.role } : {})
    })),
    datasets: s.datasets.map((d) => ({ ...d, origin: hex(d.origin), log: hex(d.log) })),
    local: s.local.map((l) => ({
      ...l,
      written: l.written.map((w) => ({
        ...w,
        key: hex(w.key),
        parent: w.parent ? { key: hex(w.parent.key), length: w.parent.length } : null
      }))
    })),
    ...(s.removed?.length ? { removed: s.removed.map((r) => ({ ...r, key: hex(r.key) })) } : {}),
    ...(s.policies?.length
      ? { policies: s.policies.map((p) => ({ ...p, sites: p.sites.map(hex), signer: hex(p.signer) })) }
      : {})
  }
  // 0600: local[].path may be a PostgreSQL URL with a password.
  writeFileAtomic(paths.mesh, `${JSON.stringify(j, null, 2)}\n`, 0o600)
}

// --- invites.json ----------------------------------------------------------------------------------------------

export function readInvites(paths: SitePaths): Invite[] {
  const j = readJsonFile(paths.invites) as null | Array<{
    seed: string
    expiresAt: number
    createdAt: number
    role?: MemberRole
  }>
  if (j === null) return []
  return j.map((i) => {
    const seed = unhex(i.seed)
    const invite: Invite = { key: DHT.keyPair(seed).publicKey, seed, expiresAt: i.expiresAt, createdAt: i.createdAt }
    if (i.role) invite.role = i.role
    return invite
  })
}

export function writeInvites(paths: SitePaths, invites: Invite[]): void {
  const j = invites.map((i) => ({
    seed: hex(i.seed),
    expiresAt: i.expiresAt,
    createdAt: i.createdAt,
    ...(i.role ? { role: i.role } : {})
  }))
  writeFileAtomic(paths.invites, `${JSON.stringify(j, null, 2)}\n`, 0o600)
}

/**
 * Makes a one-time invite valid for `ttlSeconds` (the site that redeems it gets `role`, full by default);
 * expired ones are dropped on the way.
 */
export function createInvite(paths: SitePaths, ttlSeconds: number, now = Date.now(), role?: MemberRole): Invite {
  const seed = crypto.randomBytes(32)
  const invite: Invite = {
    key: DHT.keyPair(seed).publicKey,
    seed,
    expiresAt: Math.floor(now / 1000) + ttlSeconds,
    createdAt: now,
    ...(role && role !== 'full' ? { role } : {})
  }
  const live = readInvites(paths).filter((i) => i.expiresAt * 1000 > now)
  writeInvites(paths, [...live, invite])
  return invite
}

// --- reports.json ------------------------------------------------------------------------------------------------

export function readReports(paths: SitePaths): SignedReport[] {
  const j = readJsonFile(paths.reports) as null | Array<{ body: string; signature: string }>
  if (j === null) return []
  const out: SignedReport[] = []
  for (const r of j) {
    try {
      out.push(openReport(unhex(r.body), unhex(r.signature)))
    } catch {
      // A report this version cannot read (written by a newer one) is left out of status, not fatal.
    }
  }
  return out
}

export function writeReports(paths: SitePaths, reports: SignedReport[]): void {
  const j = reports.map((r) => ({ body: hex(r.body), signature: hex(r.signature) }))
  writeFileAtomic(paths.reports, `${JSON.stringify(j)}\n`)
}
