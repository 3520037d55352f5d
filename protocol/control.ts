/**
 * The control channel between two sites (protomux protocol `branchmesh/1`) and the join channel a new site uses
 * to redeem a join code (`branchmesh-join/1`).
 *
 * Every message starts with its version. The hello (the channel's handshake) decodes leniently: a peer of
 * another protocol version still yields `{ version }` so that the node can say what is wrong, instead of the
 * channel failing without a word. The other messages are only sent after both hellos matched, so they decode
 * strictly and an unknown version is an error. The message list only grows: a retired message keeps its slot.
 *
 * No I/O here: signing a report takes the key as an argument and the node decides what to trust.
 */
import c from 'compact-encoding'
import crypto from 'hypercore-crypto'
import { MeshError } from './errors.ts'
import { statementsMessage, type Statement } from './statements.ts'

type State = { start: number; end: number; buffer: Uint8Array | null }

export const CONTROL_PROTOCOL = 'branchmesh/1'
export const JOIN_PROTOCOL = 'branchmesh-join/1'
/** The control protocol version this software speaks. */
export const CONTROL_VERSION = 1

/** Message slots on the control channel, in the order they are added to the protomux channel. */
export const ControlMessage = { members: 0, datasets: 1, report: 2, statements: 3, budget: 4 } as const
/** Message slots on the join channel. */
export const JoinMessage = { redeem: 0, welcome: 1, refuse: 2 } as const

export interface Hello {
  version: number
  /** Null when the peer speaks another version (the rest of its hello is not read). */
  meshId: Uint8Array | null
  site: string
  software: string
}

/** A site that belongs to the mesh: its node's public key (the Noise identity on every connection). */
export interface MemberInfo {
  key: Uint8Array
  site: string
  addedAt: number
  /**
   * What the member may hold: 'full' (a replica of every dataset, may promote), 'blind' (stores and serves the
   * logs encrypted, never reads them), 'observer' (members, datasets and reports only). Kept in mesh.json;
   * on the wire in the trailer of the members message and the welcome (TRAILER_ROLES) until the member's
   * signed admission statement carries it. Absent means 'full'.
   */
  role?: MemberRole
}

export type MemberRole = 'full' | 'blind' | 'observer'

/** A dataset the mesh protects and the log that carries its current epoch. */
export interface DatasetInfo {
  /** Stable across failovers. */
  id: string
  name: string
  engine: string
  /** Public key of the origin site. */
  origin: Uint8Array
  originSite: string
  epoch: number
  /** Key of the epoch's log (a hypercore key). */
  log: Uint8Array
  createdAt: number
  /**
   * The first epoch whose log is encrypted (hypercore block encryption under the dataset's data key, which only
   * full members hold; see protocol/datakey.ts): 0 for a dataset made encrypted, the next epoch for one moving to
   * encrypted logs (`mesh encrypt`); every later epoch is encrypted too. Absent: no log of it is encrypted.
   * Carried in the datasets message's trailer (see listTrailer).
   */
  encryptedFrom?: number
}

/** How far one site holds and has applied one dataset. */
export interface Holding {
  dataset: string
  log: Uint8Array
  epoch: number
  /** Log length this site knows of (for the origin: its own length). */
  length: number
  byteLength: number
  /** Blocks held from the start without a gap. */
  downloaded: number
  /** Blocks applied into the replica (for the origin: equal to length). */
  applied: number
  /** Log bytes up to `applied`. */
  appliedBytes: number
  /** Origin commit time of the newest write in the log, as far as this site knows; 0 if none. */
  lastWriteAt: number
  /** Origin commit time of the newest write applied here; 0 if none. */
  appliedWriteAt: number
  /** Error code that stopped or delays this holding, '' if none. */
  error: string
  errorMessage: string
  /** Damaged blocks found in this site's copy of the log (rejected and fetched again). */
  damaged: number
  /**
   * At the origin: what its database has committed that its log does not hold yet (bytes of WAL, and seconds
   * since the oldest such write committed); null or absent when the capture cannot tell (older software,
   * an engine without it, or not an origin). Carried in the report's extension (REPORT_CAPTURE_LAG).
   */
  captureLag?: { bytes: number; seconds: number } | null
  /**
   * At the origin: its batching interval (config `link.batchSeconds`), so every site's status can say how fine
   * the dataset's history is ("history every 60 s"); absent or 0: a unit per capture step. Carried in the
   * report's second extension (REPORT_BATCH).
   */
  batchSeconds?: number
}

/**
 * Something that happened to a dataset at the reporting site that every site should show for a while: its
 * source database was replaced, or its capture lost its position, and the whole database was copied into the
 * log again at chain position `seq`.
 */
export interface Notice {
  dataset: string
  /** 'replaced' (the origin's file was replaced), 'reset' (the source lost its position), 'resync' (asked). */
  kind: string
  at: number
  seq: number
  text: string
}

/** What one site says about itself; signed by the site's key so that any member can relay it. */
export interface Report {
  site: Uint8Array
  siteName: string
  /** The site's clock when it wrote the report, ms. Newer replaces older. */
  at: number
  holdings: Holding[]
  /** Keys of the sites it is connected to now. */
  peers: Uint8Array[]
  software: string
  /** Optional (a trailing section, see reportEncoding); absent or empty when there is none. */
  notices?: Notice[]
  /** Optional (the second extension, REPORT_HEALTH): versions and free disk space; absent from older software. */
  health?: SiteHealth
}

/**
 * What a site runs and how much disk it has left, for the owner's security and capacity view. Strings are ''
 * when unknown. Sent with every report, so it stays small (a few short strings and one entry per disk).
 */
export interface SiteHealth {
  /** branchmesh's version, e.g. '0.2.0'. */
  branchmesh: string
  /** Node.js's version, e.g. 'v20.19.0'. */
  node: string
  /** The operating system, e.g. 'Linux 6.1.0 x64'. */
  os: string
  /** SQLite's library version; the PostgreSQL servers' versions (comma-separated when several differ). */
  sqlite: string
  postgres: string
  /** The business application's own version (config appVersion), and why it could not be read. */
  app: string
  appError: string
  /**
   * Free space where the data directory and the databases are: `what` names the place ('data directory',
   * a dataset's name), `path` is the folder measured, bytes free to this process and the disk's size.
   */
  disks: Array<{ what: string; path: string; free: number; total: number }>
  /** Snapshots this site paused for lack of disk space ('' when none are paused). */
  paused: string
}

export interface SignedReport {
  report: Report
  /** The encoded report the signature covers. */
  body: Uint8Array
  signature: Uint8Array
}

export interface Redeem {
  version: number
  site: string
  /** The joining site's own node key; the invite key is only used for this one connection. */
  key: Uint8Array
}

export interface Welcome {
  version: number
  meshId: Uint8Array
  members: MemberInfo[]
  datasets: DatasetInfo[]
  /**
   * The membership statements the inviter holds, the new site's own among them (a trailing section an older
   * joiner does not read; absent from an older inviter): what the new site shows to a member that has not
   * heard of it yet.
   */
  statements?: Statement[]
}

export interface Refuse {
  version: number
  code: string
  reason: string
}

function checkVersion(v: number, what: string): void {
  if (v !== CONTROL_VERSION) {
    throw MeshError.PROTOCOL_VERSION(`${what} of protocol version ${v}; this site speaks ${CONTROL_VERSION}`)
  }
}

function struct<T>(enc: { preencode(s: State, v: T): void; encode(s: State, v: T): void; decode(s: State): T }) {
  return enc
}

export const helloEncoding = struct<Hello>({
  preencode(s, m) {
    c.uint.preencode(s, m.version)
    c.fixed32.preencode(s, m.meshId!)
    c.string.preencode(s, m.site)
    c.string.preencode(s, m.software)
  },
  encode(s, m) {
    c.uint.encode(s, m.version)
    c.fixed32.encode(s, m.meshId!)
    c.string.encode(s, m.site)
    c.string.encode(s, m.software)
  },
  decode(s) {
    const version = c.uint.decode(s)
    if (version !== CONTROL_VERSION) return { version, meshId: null, site: '', software: '' }
    return { version, meshId: c.fixed32.decode(s), site: c.string.decode(s), software: c.string.decode(s) }
  }
})

const memberEncoding = struct<MemberInfo>({
  preencode(s, m) {
    c.fixed32.preencode(s, m.key)
    c.string.preencode(s, m.site)
    c.uint.preencode(s, m.addedAt)
  },
  encode(s, m) {
    c.fixed32.encode(s, m.key)
    c.string.encode(s, m.site)
    c.uint.encode(s, m.addedAt)
  },
  decode(s) {
    return { key: c.fixed32.decode(s), site: c.string.decode(s), addedAt: c.uint.decode(s) }
  }
})

const datasetEncoding = struct<DatasetInfo>({
  preencode(s, d) {
    c.string.preencode(s, d.id)
    c.string.preencode(s, d.name)
    c.string.preencode(s, d.engine)
    c.fixed32.preencode(s, d.origin)
    c.string.preencode(s, d.originSite)
    c.uint.preencode(s, d.epoch)
    c.fixed32.preencode(s, d.log)
    c.uint.preencode(s, d.createdAt)
  },
  encode(s, d) {
    c.string.encode(s, d.id)
    c.string.encode(s, d.name)
    c.string.encode(s, d.engine)
    c.fixed32.encode(s, d.origin)
    c.string.encode(s, d.originSite)
    c.uint.encode(s, d.epoch)
    c.fixed32.encode(s, d.log)
    c.uint.encode(s, d.createdAt)
  },
  decode(s) {
    return {
      id: c.string.decode(s),
      name: c.string.decode(s),
      engine: c.string.decode(s),
      origin: c.fixed32.decode(s),
      originSite: c.string.decode(s),
      epoch: c.uint.decode(s),
      log: c.fixed32.decode(s),
      createdAt: c.uint.decode(s)
    }
  }
})

const holdingEncoding = struct<Holding>({
  preencode(s, h) {
    c.string.preencode(s, h.dataset)
    c.fixed32.preencode(s, h.log)
    for (const n of [
      h.epoch,
      h.length,
      h.byteLength,
      h.downloaded,
      h.applied,
      h.appliedBytes,
      h.lastWriteAt,
      h.appliedWriteAt
    ]) {
      c.uint.preencode(s, n)
    }
    c.string.preencode(s, h.error)
    c.string.preencode(s, h.errorMessage)
    c.uint.preencode(s, h.damaged)
  },
  encode(s, h) {
    c.string.encode(s, h.dataset)
    c.fixed32.encode(s, h.log)
    for (const n of [
      h.epoch,
      h.length,
      h.byteLength,
      h.downloaded,
      h.applied,
      h.appliedBytes,
      h.lastWriteAt,
      h.appliedWriteAt
    ]) {
      c.uint.encode(s, n)
    }
    c.string.encode(s, h.error)
    c.string.encode(s, h.errorMessage)
    c.uint.encode(s, h.damaged)
  },
  decode(s) {
    return {
      dataset: c.string.decode(s),
      log: c.fixed32.decode(s),
      epoch: c.uint.decode(s),
      length: c.uint.decode(s),
      byteLength: c.uint.decode(s),
      downloaded: c.uint.decode(s),
      applied: c.uint.decode(s),
      appliedBytes: c.uint.decode(s),
      lastWriteAt: c.uint.decode(s),
      appliedWriteAt: c.uint.decode(s),
      error: c.string.decode(s),
      errorMessage: c.string.decode(s),
      damaged: c.uint.decode(s)
    }
  }
})

const members = c.array(memberEncoding)
const datasets = c.array(datasetEncoding)
const holdings = c.array(holdingEncoding)
const keys = c.array(c.fixed32)

const noticeEncoding = struct<Notice>({
  preencode(s, n) {
    c.string.preencode(s, n.dataset)
    c.string.preencode(s, n.kind)
    c.uint.preencode(s, n.at)
    c.uint.preencode(s, n.seq)
    c.string.preencode(s, n.text)
  },
  encode(s, n) {
    c.string.encode(s, n.dataset)
    c.string.encode(s, n.kind)
    c.uint.encode(s, n.at)
    c.uint.encode(s, n.seq)
    c.string.encode(s, n.text)
  },
  decode(s) {
    return {
      dataset: c.string.decode(s),
      kind: c.string.decode(s),
      at: c.uint.decode(s),
      seq: c.uint.decode(s),
      text: c.string.decode(s)
    }
  }
})

const notices = c.array(noticeEncoding)
/**
 * The report's extension: after its last field, `uint flags`, then one section per flag bit that is set, in
 * bit order. A report with nothing to put there is written without it, byte for byte as older software
 * wrote it, and one without it (from older software) ends after `software`; older software reads a
 * report with it and ignores what follows `software` (compact-encoding does not check for trailing bytes),
 * so the report message keeps version 1.
 *
 * Software before issue 17 refuses a first flags word with bits it does not know (UNKNOWN_FLAGS), and a report
 * it cannot decode ends the whole connection (protomux destroys the stream), so that word never gets another
 * bit. Newer sections go in a second extension after the first one's sections: `uint flags2`, then one section
 * per bit. Older software stops after the first extension's sections and ignores the rest. When the report has
 * a second extension, the first flags word is written even when it is 0. In the second word, each new section
 * gets the next higher bit and comes after every older one, so a reader reads the sections it knows and
 * ignores the bits above them (their sections come last): see UPGRADE.md.
 */
/** Bit 0: notices (what happened to a dataset here that every site should show for a while). */
export const REPORT_NOTICES = 1
/** Bit 1: capture lags, `uint count` then per entry `uint holding index, uint bytes, uint milliseconds`. */
export const REPORT_CAPTURE_LAG = 2
/** The first bits of the first flags word, the only ones it may ever carry. */
const REPORT_FIRST_FLAGS = REPORT_NOTICES | REPORT_CAPTURE_LAG
/** Second extension, bit 0: health (SiteHealth: versions, free disk space, paused snapshots). */
export const REPORT_HEALTH = 1
/** Second extension, bit 1: batching, `uint count` then per entry `uint holding index, uint milliseconds`. */
export const REPORT_BATCH = 2

const disk = struct<SiteHealth['disks'][number]>({
  preencode(s, d) {
    c.string.preencode(s, d.what)
    c.string.preencode(s, d.path)
    c.uint.preencode(s, d.free)
    c.uint.preencode(s, d.total)
  },
  encode(s, d) {
    c.string.encode(s, d.what)
    c.string.encode(s, d.path)
    c.uint.encode(s, d.free)
    c.uint.encode(s, d.total)
  },
  decode(s) {
    return { what: c.string.decode(s), path: c.string.decode(s), free: c.uint.decode(s), total: c.uint.decode(s) }
  }
})
const disks = c.array(disk)
const HEALTH_STRINGS = ['branchmesh', 'node', 'os', 'sqlite', 'postgres', 'app', 'appError', 'paused'] as const
const healthEncoding = struct<SiteHealth>({
  preencode(s, h) {
    for (const k of HEALTH_STRINGS) c.string.preencode(s, h[k])
    disks.preencode(s, h.disks)
  },
  encode(s, h) {
    for (const k of HEALTH_STRINGS) c.string.encode(s, h[k])
    disks.encode(s, h.disks)
  },
  decode(s) {
    const h = {} as SiteHealth
    for (const k of HEALTH_STRINGS) h[k] = c.string.decode(s)
    h.disks = disks.decode(s)
    return h
  }
})

function reportFlags(r: Report, lags: LagEntry[]): number {
  return (r.notices?.length ? REPORT_NOTICES : 0) | (lags.length ? REPORT_CAPTURE_LAG : 0)
}

type BatchEntry = { index: number; ms: number }
const batchEntries = c.array(
  struct<BatchEntry>({
    preencode(s, e) {
      c.uint.preencode(s, e.index)
      c.uint.preencode(s, e.ms)
    },
    encode(s, e) {
      c.uint.encode(s, e.index)
      c.uint.encode(s, e.ms)
    },
    decode(s) {
      return { index: c.uint.decode(s), ms: c.uint.decode(s) }
    }
  })
)

function batchesOf(r: Report): BatchEntry[] {
  const out: BatchEntry[] = []
  r.holdings.forEach((h, index) => {
    const ms = Math.round((h.batchSeconds ?? 0) * 1000)
    if (ms > 0) out.push({ index, ms })
  })
  return out
}

function reportFlags2(r: Report, batches: BatchEntry[]): number {
  return (r.health ? REPORT_HEALTH : 0) | (batches.length ? REPORT_BATCH : 0)
}

type LagEntry = { index: number; bytes: number; ms: number }
const lagEntry = struct<LagEntry>({
  preencode(s, e) {
    c.uint.preencode(s, e.index)
    c.uint.preencode(s, e.bytes)
    c.uint.preencode(s, e.ms)
  },
  encode(s, e) {
    c.uint.encode(s, e.index)
    c.uint.encode(s, e.bytes)
    c.uint.encode(s, e.ms)
  },
  decode(s) {
    return { index: c.uint.decode(s), bytes: c.uint.decode(s), ms: c.uint.decode(s) }
  }
})
const lagEntries = c.array(lagEntry)

function lagsOf(r: Report): LagEntry[] {
  const out: LagEntry[] = []
  r.holdings.forEach((h, index) => {
    if (!h.captureLag) return
    const bytes = Math.max(0, Math.round(h.captureLag.bytes))
    const ms = Math.max(0, Math.round(h.captureLag.seconds * 1000))
    out.push({ index, bytes, ms })
  })
  return out
}

const reportEncoding = struct<Report>({
  preencode(s, r) {
    c.fixed32.preencode(s, r.site)
    c.string.preencode(s, r.siteName)
    c.uint.preencode(s, r.at)
    holdings.preencode(s, r.holdings)
    keys.preencode(s, r.peers)
    c.string.preencode(s, r.software)
    const lags = lagsOf(r)
    const flags = reportFlags(r, lags)
    const batches = batchesOf(r)
    const flags2 = reportFlags2(r, batches)
    if (flags === 0 && flags2 === 0) return
    c.uint.preencode(s, flags)
    if (flags & REPORT_NOTICES) notices.preencode(s, r.notices!)
    if (flags & REPORT_CAPTURE_LAG) lagEntries.preencode(s, lags)
    if (flags2 === 0) return
    c.uint.preencode(s, flags2)
    if (flags2 & REPORT_HEALTH) healthEncoding.preencode(s, r.health!)
    if (flags2 & REPORT_BATCH) batchEntries.preencode(s, batches)
  },
  encode(s, r) {
    c.fixed32.encode(s, r.site)
    c.string.encode(s, r.siteName)
    c.uint.encode(s, r.at)
    holdings.encode(s, r.holdings)
    keys.encode(s, r.peers)
    c.string.encode(s, r.software)
    const lags = lagsOf(r)
    const flags = reportFlags(r, lags)
    const batches = batchesOf(r)
    const flags2 = reportFlags2(r, batches)
    if (flags === 0 && flags2 === 0) return
    c.uint.encode(s, flags)
    if (flags & REPORT_NOTICES) notices.encode(s, r.notices!)
    if (flags & REPORT_CAPTURE_LAG) lagEntries.encode(s, lags)
    if (flags2 === 0) return
    c.uint.encode(s, flags2)
    if (flags2 & REPORT_HEALTH) healthEncoding.encode(s, r.health!)
    if (flags2 & REPORT_BATCH) batchEntries.encode(s, batches)
  },
  decode(s) {
    const r: Report = {
      site: c.fixed32.decode(s),
      siteName: c.string.decode(s),
      at: c.uint.decode(s),
      holdings: holdings.decode(s),
      peers: keys.decode(s),
      software: c.string.decode(s)
    }
    // No extension: a report from older software.
    if (s.start >= s.end) return r
    const flags = c.uint.decode(s)
    const unknown = flags & ~REPORT_FIRST_FLAGS
    if (unknown) {
      throw MeshError.UNKNOWN_FLAGS(`a report has unknown flag bits 0x${unknown.toString(16)}`, { context: { flags } })
    }
    if (flags & REPORT_NOTICES) r.notices = notices.decode(s)
    if (flags & REPORT_CAPTURE_LAG) {
      for (const e of lagEntries.decode(s)) {
        const h = r.holdings[e.index]
        if (!h) throw MeshError.BAD_ENTRY(`a report's capture lag names holding ${e.index} of ${r.holdings.length}`)
        h.captureLag = { bytes: e.bytes, seconds: e.ms / 1000 }
      }
    }
    // The second extension. Bits above REPORT_BATCH are sections of newer software, after these: ignored.
    if (s.start >= s.end) return r
    const flags2 = c.uint.decode(s)
    if (flags2 & REPORT_HEALTH) r.health = healthEncoding.decode(s)
    if (flags2 & REPORT_BATCH) {
      for (const e of batchEntries.decode(s)) {
        const h = r.holdings[e.index]
        if (!h) throw MeshError.BAD_ENTRY(`a report's batching names holding ${e.index} of ${r.holdings.length}`)
        h.batchSeconds = e.ms / 1000
      }
    }
    return r
  }
})

/** `{ version, list }` messages. */
function listMessage<T>(
  list: { preencode(s: State, v: T[]): void; encode(s: State, v: T[]): void; decode(s: State): T[] },
  what: string
) {
  return struct<T[]>({
    preencode(s, v) {
      c.uint.preencode(s, CONTROL_VERSION)
      list.preencode(s, v)
    },
    encode(s, v) {
      c.uint.encode(s, CONTROL_VERSION)
      list.encode(s, v)
    },
    decode(s) {
      checkVersion(c.uint.decode(s), what)
      return list.decode(s)
    }
  })
}

/**
 * What follows the lists of the members and datasets messages and of the welcome (round 2): `uint flags`, then
 * one section per flag bit that is set, in bit order. TRAILER_ROLES: one uint per member, its role
 * (ROLE_CODES; an unknown code reads as 'observer', which is given nothing); TRAILER_ENCRYPTED: one uint per
 * dataset, 0 when none of its logs is encrypted, else 1 + the first epoch whose log is (encryptedFrom). A
 * message with nothing to put there is written without it, byte for byte as older software wrote it; older
 * software reads one with it and ignores the trailer (compact-encoding does not check for trailing bytes), so
 * the messages keep version 1. Unknown flag bits are refused.
 *
 * Roles travel here until signed member statements carry them (they are relayed as members are, unsigned).
 */
export const TRAILER_ROLES = 1
export const TRAILER_ENCRYPTED = 2
/** The welcome only: the signed member statements of the mesh (protocol/membership.ts), so the joiner holds them. */
export const TRAILER_STATEMENTS = 4
const TRAILER_FLAGS = TRAILER_ROLES | TRAILER_ENCRYPTED | TRAILER_STATEMENTS
const ROLE_CODES: MemberRole[] = ['full', 'blind', 'observer']
const codes = c.array(c.uint)

function trailerFlags(m: MemberInfo[], d: DatasetInfo[], st?: Statement[]): number {
  return (
    (m.some((x) => x.role !== undefined && x.role !== 'full') ? TRAILER_ROLES : 0) |
    (d.some((x) => x.encryptedFrom !== undefined) ? TRAILER_ENCRYPTED : 0) |
    (st?.length ? TRAILER_STATEMENTS : 0)
  )
}

const listTrailer = {
  preencode(s: State, m: MemberInfo[], d: DatasetInfo[], st?: Statement[]) {
    const flags = trailerFlags(m, d, st)
    if (flags === 0) return
    c.uint.preencode(s, flags)
    if (flags & TRAILER_ROLES)
      codes.preencode(
        s,
        m.map((x) => ROLE_CODES.indexOf(x.role ?? 'full'))
      )
    if (flags & TRAILER_ENCRYPTED)
      codes.preencode(
        s,
        d.map((x) => (x.encryptedFrom === undefined ? 0 : x.encryptedFrom + 1))
      )
    if (flags & TRAILER_STATEMENTS) statementsMessage.preencode(s, st!)
  },
  encode(s: State, m: MemberInfo[], d: DatasetInfo[], st?: Statement[]) {
    const flags = trailerFlags(m, d, st)
    if (flags === 0) return
    c.uint.encode(s, flags)
    if (flags & TRAILER_ROLES)
      codes.encode(
        s,
        m.map((x) => ROLE_CODES.indexOf(x.role ?? 'full'))
      )
    if (flags & TRAILER_ENCRYPTED)
      codes.encode(
        s,
        d.map((x) => (x.encryptedFrom === undefined ? 0 : x.encryptedFrom + 1))
      )
    if (flags & TRAILER_STATEMENTS) statementsMessage.encode(s, st!)
  },
  /** Sets the roles and encryptedFrom it carries on the lists; returns the statements it carries, if any. */
  decode(s: State, m: MemberInfo[], d: DatasetInfo[]): Statement[] | null {
    if (s.start >= s.end) return null
    const flags = c.uint.decode(s)
    const unknown = flags & ~TRAILER_FLAGS
    if (unknown) {
      throw MeshError.UNKNOWN_FLAGS(`a control message has unknown trailer bits 0x${unknown.toString(16)}`, {
        context: { flags }
      })
    }
    if (flags & TRAILER_ROLES) {
      const list = codes.decode(s)
      if (list.length !== m.length) throw MeshError.BAD_ENTRY('a members message with roles for another list')
      list.forEach((r, i) => {
        if (r !== 0) m[i].role = ROLE_CODES[r] ?? 'observer'
      })
    }
    if (flags & TRAILER_ENCRYPTED) {
      const list = codes.decode(s)
      if (list.length !== d.length) throw MeshError.BAD_ENTRY('a datasets message with flags for another list')
      list.forEach((e, i) => {
        if (e > 0) d[i].encryptedFrom = e - 1
      })
    }
    return flags & TRAILER_STATEMENTS ? statementsMessage.decode(s) : null
  }
}

/** A list message whose list is followed by the trailer (members: roles; datasets: encryptedFrom). */
function trailedList<T>(
  list: { preencode(s: State, v: T[]): void; encode(s: State, v: T[]): void; decode(s: State): T[] },
  split: (v: T[]) => [MemberInfo[], DatasetInfo[]]
) {
  return struct<T[]>({
    preencode(s, v) {
      list.preencode(s, v)
      listTrailer.preencode(s, ...split(v))
    },
    encode(s, v) {
      list.encode(s, v)
      listTrailer.encode(s, ...split(v))
    },
    decode(s) {
      const v = list.decode(s)
      listTrailer.decode(s, ...split(v))
      return v
    }
  })
}

export const membersMessage = listMessage(
  trailedList<MemberInfo>(members, (m) => [m, []]),
  'a members message'
)
export const datasetsMessage = listMessage(
  trailedList<DatasetInfo>(datasets, (d) => [[], d]),
  'a datasets message'
)

export const reportMessage = struct<SignedReport>({
  preencode(s, m) {
    c.uint.preencode(s, CONTROL_VERSION)
    c.buffer.preencode(s, m.body)
    c.fixed64.preencode(s, m.signature)
  },
  encode(s, m) {
    c.uint.encode(s, CONTROL_VERSION)
    c.buffer.encode(s, m.body)
    c.fixed64.encode(s, m.signature)
  },
  decode(s) {
    checkVersion(c.uint.decode(s), 'a report')
    const body = c.buffer.decode(s)
    const signature = c.fixed64.decode(s)
    if (body === null) throw MeshError.BAD_ENTRY('a report without a body')
    return { report: c.decode(reportEncoding, body), body, signature }
  }
})

/** Encodes and signs a report with the site's secret key. */
export function signReport(report: Report, secretKey: Uint8Array): SignedReport {
  const body = c.encode(reportEncoding, report)
  return { report, body, signature: crypto.sign(body, secretKey) }
}

/** Decodes a stored report (body and signature as signReport made them). */
export function openReport(body: Uint8Array, signature: Uint8Array): SignedReport {
  return { report: c.decode(reportEncoding, body), body, signature }
}

/** True when the signature is the reporting site's own (its key is in the report). */
export function verifyReport(m: SignedReport): boolean {
  return crypto.verify(m.body, m.signature, m.report.site)
}

export const redeemMessage = struct<Redeem>({
  preencode(s, m) {
    c.uint.preencode(s, m.version)
    c.string.preencode(s, m.site)
    c.fixed32.preencode(s, m.key)
  },
  encode(s, m) {
    c.uint.encode(s, m.version)
    c.string.encode(s, m.site)
    c.fixed32.encode(s, m.key)
  },
  decode(s) {
    const version = c.uint.decode(s)
    checkVersion(version, 'a join request')
    return { version, site: c.string.decode(s), key: c.fixed32.decode(s) }
  }
})

export const welcomeMessage = struct<Welcome>({
  preencode(s, m) {
    c.uint.preencode(s, m.version)
    c.fixed32.preencode(s, m.meshId)
    members.preencode(s, m.members)
    datasets.preencode(s, m.datasets)
    listTrailer.preencode(s, m.members, m.datasets, m.statements)
  },
  encode(s, m) {
    c.uint.encode(s, m.version)
    c.fixed32.encode(s, m.meshId)
    members.encode(s, m.members)
    datasets.encode(s, m.datasets)
    listTrailer.encode(s, m.members, m.datasets, m.statements)
  },
  decode(s) {
    const version = c.uint.decode(s)
    checkVersion(version, 'a welcome')
    const w: Welcome = {
      version,
      meshId: c.fixed32.decode(s),
      members: members.decode(s),
      datasets: datasets.decode(s)
    }
    // The trailer (round 2): roles, encrypted datasets, the statements that make the members members.
    const statements = listTrailer.decode(s, w.members, w.datasets)
    if (statements) w.statements = statements
    return w
  }
})

export const refuseMessage = struct<Refuse>({
  preencode(s, m) {
    c.uint.preencode(s, m.version)
    c.string.preencode(s, m.code)
    c.string.preencode(s, m.reason)
  },
  encode(s, m) {
    c.uint.encode(s, m.version)
    c.string.encode(s, m.code)
    c.string.encode(s, m.reason)
  },
  decode(s) {
    const version = c.uint.decode(s)
    return version === CONTROL_VERSION
      ? { version, code: c.string.decode(s), reason: c.string.decode(s) }
      : { version, code: 'PROTOCOL_VERSION', reason: `the member speaks protocol version ${version}` }
  }
})

export const joinHelloEncoding = struct<{ version: number }>({
  preencode(s, m) {
    c.uint.preencode(s, m.version)
  },
  encode(s, m) {
    c.uint.encode(s, m.version)
  },
  decode(s) {
    return { version: c.uint.decode(s) }
  }
})

/**
 * A site's bandwidth budget (config `link`, issue 16), announced to each connected peer when the channel opens
 * and again whenever the number of its peers changes. Rates are in bits per second; 0 means no limit.
 * `askBps` is what this site asks of the receiver: send me at most this much (its down budget split among its
 * peers). Hypercore replication is request-driven, so the sender paces its side: it never writes to this
 * connection faster than `askBps` (nor than its own up budget). `upBps` and `downBps` are the whole budget,
 * for `mesh status`. Slot 4 (round 3): an older site has no slot 4 and protomux drops the message unread.
 * A newer site adds fields after `askBps`; this one reads the three and leaves the rest unread (compact-encoding
 * does not check for trailing bytes), so a budget message keeps version 1.
 */
export interface Budget {
  upBps: number
  downBps: number
  askBps: number
}

export const budgetMessage = struct<Budget>({
  preencode(s, m) {
    c.uint.preencode(s, CONTROL_VERSION)
    c.uint.preencode(s, m.upBps)
    c.uint.preencode(s, m.downBps)
    c.uint.preencode(s, m.askBps)
  },
  encode(s, m) {
    c.uint.encode(s, CONTROL_VERSION)
    c.uint.encode(s, m.upBps)
    c.uint.encode(s, m.downBps)
    c.uint.encode(s, m.askBps)
  },
  decode(s) {
    checkVersion(c.uint.decode(s), 'a budget message')
    return { upBps: c.uint.decode(s), downBps: c.uint.decode(s), askBps: c.uint.decode(s) }
  }
})

/** What each control message carries, by name. */
export interface ControlPayloads {
  members: MemberInfo[]
  datasets: DatasetInfo[]
  report: SignedReport
  /** Signed statements (protocol/statements.ts): slot 3, added in round 2; older sites ignore the slot. */
  statements: Statement[]
  /** The sender's bandwidth budget and what it asks of the receiver: slot 4, round 3. */
  budget: Budget
}

/**
 * The control channel's messages in slot order: CONTROL_MESSAGES[ControlMessage.report] is the report. Both
 * sides add them to the protomux channel in this order; the list only grows, a retired message keeps its slot.
 */
export const CONTROL_MESSAGES = [
  { name: 'members', encoding: membersMessage },
  { name: 'datasets', encoding: datasetsMessage },
  { name: 'report', encoding: reportMessage },
  { name: 'statements', encoding: statementsMessage },
  { name: 'budget', encoding: budgetMessage }
] as const

/** What each join message carries, by name. */
export interface JoinPayloads {
  redeem: Redeem
  welcome: Welcome
  refuse: Refuse
}

/** The join channel's messages in slot order (JoinMessage). */
export const JOIN_MESSAGES = [
  { name: 'redeem', encoding: redeemMessage },
  { name: 'welcome', encoding: welcomeMessage },
  { name: 'refuse', encoding: refuseMessage }
] as const

// --- join codes ------------------------------------------------------------------------------------------------

/** What a join code carries. The invite seed is a secret: whoever holds the code may join until it expires. */
export interface JoinCode {
  meshId: Uint8Array
  /** Node key of the site that made the invite; the joiner connects to it. */
  inviter: Uint8Array
  /** Seed of the one-time key pair the joiner connects with. */
  seed: Uint8Array
  /** Seconds since the epoch. */
  expiresAt: number
  /**
   * The role the new site gets: 'blind' for `mesh invite --blind`, 'observer' for `mesh invite --observer` (both
   * join without a database). Absent means a full member. Written after `expiresAt` as `uint flags` (JOIN_BLIND,
   * JOIN_OBSERVER) only when set; software that knows no observer refuses an observer's code (UNKNOWN_FLAGS).
   */
  role?: 'blind' | 'observer'
}

const JOIN_BLIND = 1
const JOIN_OBSERVER = 2
const JOIN_ROLE_FLAG = { blind: JOIN_BLIND, observer: JOIN_OBSERVER } as const

const JOIN_CODE_PREFIX = 'bm1-'

const joinCodeEncoding = struct<JoinCode>({
  preencode(s, j) {
    c.uint.preencode(s, CONTROL_VERSION)
    c.fixed32.preencode(s, j.meshId)
    c.fixed32.preencode(s, j.inviter)
    c.fixed32.preencode(s, j.seed)
    c.uint.preencode(s, j.expiresAt)
    if (j.role) c.uint.preencode(s, JOIN_ROLE_FLAG[j.role])
  },
  encode(s, j) {
    c.uint.encode(s, CONTROL_VERSION)
    c.fixed32.encode(s, j.meshId)
    c.fixed32.encode(s, j.inviter)
    c.fixed32.encode(s, j.seed)
    c.uint.encode(s, j.expiresAt)
    if (j.role) c.uint.encode(s, JOIN_ROLE_FLAG[j.role])
  },
  decode(s) {
    checkVersion(c.uint.decode(s), 'a join code')
    const j: JoinCode = {
      meshId: c.fixed32.decode(s),
      inviter: c.fixed32.decode(s),
      seed: c.fixed32.decode(s),
      expiresAt: c.uint.decode(s)
    }
    const flags = s.start < s.end ? c.uint.decode(s) : 0
    if (flags & ~(JOIN_BLIND | JOIN_OBSERVER) || flags === (JOIN_BLIND | JOIN_OBSERVER)) {
      throw MeshError.UNKNOWN_FLAGS('this join code was made by a newer branchmesh', {
        hint: 'Upgrade branchmesh at this site (see UPGRADE.md), then use the code again.'
      })
    }
    if (flags & JOIN_BLIND) j.role = 'blind'
    if (flags & JOIN_OBSERVER) j.role = 'observer'
    return j
  }
})

/** `bm1-` + base64url(body + 4-byte checksum): one word, safe to paste into a terminal or a chat. */
export function encodeJoinCode(j: JoinCode): string {
  const body = c.encode(joinCodeEncoding, j)
  const sum = crypto.hash(body).subarray(0, 4)
  return JOIN_CODE_PREFIX + Buffer.concat([body, sum]).toString('base64url')
}

export function decodeJoinCode(code: string): JoinCode {
  const text = code.trim()
  const bad = (why: string) =>
    MeshError.BAD_JOIN_CODE(`this is not a branchmesh join code (${why})`, {
      hint: 'Copy the whole last line that `mesh invite` printed at a member site; it starts with bm1-.'
    })
  if (!text.startsWith(JOIN_CODE_PREFIX)) throw bad('it does not start with bm1-')
  const raw = Buffer.from(text.slice(JOIN_CODE_PREFIX.length), 'base64url')
  if (raw.length < 8) throw bad('it is too short')
  const body = raw.subarray(0, raw.length - 4)
  if (
    !crypto
      .hash(body)
      .subarray(0, 4)
      .equals(raw.subarray(raw.length - 4))
  )
    throw bad('its checksum does not match: part of it is missing or mistyped')
  try {
    return c.decode(joinCodeEncoding, body)
  } catch (err) {
    if (err instanceof MeshError) throw err
    throw bad('it is damaged')
  }
}
