/**
 * `mesh status` as data: built from the mesh state and the last report of every site, by the running node or,
 * when it is not running, from what it saved on disk. A pure function of its input, so it is the same
 * wherever it is computed.
 *
 * Lag in seconds is the origin commit time of the newest write minus that of the newest write the holder
 * has applied: how much of the origin's recent work a holder lacks. It does not include how long ago the
 * newest write was made; a holder that is silent shows as silent, separately.
 */
import { ENGINES } from '../adapters/index.ts'
import type { DatasetInfo, MemberInfo, MemberRole, Report } from '../protocol/index.ts'
import { healthReasons, memberHealth, usualHoursReason, type MemberHealth } from './health-status.ts'
import type { CheckpointResult, DamageRecord, MeshState, VerifyResult } from './state.ts'
import type { ContactHistory } from './usual-hours.ts'
import type { TrafficStatus } from './traffic.ts'
import { count } from './util.ts'
import { duration, type StatusThresholds, type Verdict } from './defaults.ts'

export { count }

export { DEFAULT_THRESHOLDS, duration, VERDICT_EXIT, type StatusThresholds, type Verdict } from './defaults.ts'

/** How long a whole copy made again (a replaced file, a lost position) shows in status: a week. */
export const NOTICE_MS = 7 * 86_400_000
/** How long an alarm (alarms.ts) stays CRIT. */
export const ALARM_MS = 24 * 3600_000
/** How long a site's report of a lossy link counts (reports are sent again at least every heartbeat). */
export const LINK_NOTICE_MS = 5 * 60_000

export interface HolderStatus {
  site: string
  key: string
  /** 'blind': a blind site, which holds the log encrypted and applies nothing (its `applied` stays 0). */
  role: 'origin' | 'replica' | 'blind'
  /** Blocks held without a gap / applied; null when this site never reported the dataset. */
  downloaded: number | null
  applied: number | null
  lagEntries: number | null
  lagBytes: number | null
  lagSeconds: number | null
  /** When this site's report was written (its own clock), ms; null if never heard from. */
  lastContact: number | null
  error: string | null
  errorMessage: string | null
  damagedBlocks: number
  /**
   * The origin's capture lag: what its database committed that its log does not hold yet, in bytes (WAL) and
   * seconds since the oldest such write; null for a replica, an engine that cannot tell, a report from older
   * software, and this site's own figure when its node is not running. At the origin, `lagBytes` and
   * `lagSeconds` are the same figures (0 when unknown).
   */
  captureLag: { bytes: number; seconds: number } | null
}

export interface DatasetStatus {
  id: string
  name: string
  engine: string
  originSite: string
  origin: string
  /** The sites that may promote it, when its origin narrowed the policy (node/policy.ts); absent: any. */
  promote?: string[]
  epoch: number
  log: string
  length: number
  bytes: number
  /**
   * When the dataset was made (ms): the oldest moment `mesh restore` can go back to, as the chain of logs is
   * kept whole (a blind site holds only the epochs it saw, and restores nothing).
   */
  createdAt: number
  /** Origin commit time of the newest write, ms; null if none known. */
  lastWriteAt: number | null
  /** Sites other than the origin that hold the newest write. */
  heldBy: number
  /**
   * How fine its history is: the origin's batching interval (config `link.batchSeconds`), as its report says;
   * 0: a unit (a position in `mesh log`, a moment `mesh restore` can rebuild) per capture step, about one per
   * transaction. With batching, a unit holds every transaction of that many seconds.
   */
  historyEverySeconds: number
  holders: HolderStatus[]
  /** Changes this site made as origin that a newer epoch superseded, kept in a folder for review. */
  divergences: Array<{ epoch: number; fencedBy: number; dir: string; changes: number; at: number }>
  /** Units this site saw delete or change a large share of a table (the mass-damage guard). */
  damage: DamageRecord[]
  /** The last `mesh verify` or `mesh repair` of this site's copy, or null. */
  verified: VerifyResult | null
  /**
   * Whole copies of the database its origin appended to the log again in the last week, newest last: kind
   * 'replaced' (its file was replaced), 'reset' (its capture lost its position) or 'resync' (`mesh resync`).
   */
  copies: Array<{ site: string; kind: string; at: number; seq: number; why: string }>
  /** The last origin checkpoint this site's copy compared itself with: its chain position, and whether it matched. */
  checkpoint: CheckpointResult | null
  /** The last position this site's copy was proven equal to the log, and the first it was seen to differ after it. */
  proven: { equal: number | null; differs: number | null } | null
  /**
   * The generational snapshots this site keeps of the dataset: how many, when the newest was taken, and those set aside
   * as damaged.
   */
  snapshots: { count: number; newestAt: number | null; damaged: string[] }
  /**
   * A PostgreSQL dataset this site is the origin of: the WAL its replication slot keeps on the database
   * server's disk (everything not yet in the log), the server's ceiling (max_slot_wal_keep_size; null when
   * unlimited), and PostgreSQL's wal_status of the slot ('lost' when it is gone). Read from the server by
   * `mesh status` itself, so it is there when the node is not running, which is when WAL piles up.
   */
  wal?: { retainedBytes: number; limitBytes: number | null; status: string }
}

/** Adds what a PostgreSQL origin's slot keeps on disk to the status, with the warnings it calls for. */
export function addWalHealth(
  s: SiteStatus,
  id: string,
  wal: { retainedBytes: number; limitBytes: number | null; status: string },
  t: StatusThresholds
): void {
  const d = s.datasets.find((x) => x.id === id)
  if (!d) return
  d.wal = wal
  const mb = (n: number) => `${(n / 1024 / 1024).toFixed(0)} MB`
  const add = (level: Verdict, text: string) => s.reasons.push({ level, text })
  if (wal.status === 'lost') {
    add(
      'CRIT',
      `the replication slot of ${d.name} is gone (dropped, or over max_slot_wal_keep_size): changes ` +
        `made since cannot be read; the node copies the whole database into the log again when it runs`
    )
  } else if (wal.status === 'unreserved') {
    add(
      'CRIT',
      `the replication slot of ${d.name} keeps ${mb(wal.retainedBytes)} of WAL, past ` +
        `max_slot_wal_keep_size: PostgreSQL will drop what it needs at its next checkpoint. Start the node ` +
        `at ${s.site} now`
    )
  } else if (wal.limitBytes !== null && wal.retainedBytes >= wal.limitBytes / 2) {
    add(
      'WARN',
      `the replication slot of ${d.name} keeps ${mb(wal.retainedBytes)} of WAL on the database server, ` +
        `over half of max_slot_wal_keep_size (${mb(wal.limitBytes)}): start the node at ${s.site} (or fix ` +
        `what stops its capture) before the ceiling is reached`
    )
  } else if (wal.retainedBytes >= t.walWarnMB * 1024 * 1024) {
    add(
      'WARN',
      `the replication slot of ${d.name} keeps ${mb(wal.retainedBytes)} of WAL on the database server's ` +
        `disk${wal.limitBytes === null ? ', with no ceiling (max_slot_wal_keep_size is unlimited)' : ''}: ` +
        `start the node at ${s.site} (or fix what stops its ` +
        `capture)${wal.limitBytes === null ? "; to cap it, ALTER SYSTEM SET max_slot_wal_keep_size = '10GB'" : ''}`
    )
  } else return
  const worst = s.reasons.some((r) => r.level === 'CRIT')
    ? 'CRIT'
    : s.reasons.some((r) => r.level === 'WARN')
      ? 'WARN'
      : 'OK'
  s.verdict = worst
}

export interface MemberStatus {
  site: string
  key: string
  /** 'full', 'blind' (stores and serves the encrypted logs, reads none) or 'observer'. */
  role: MemberRole
  self: boolean
  connected: boolean
  lastContact: number | null
  software: string | null
  /** What the site runs and its free disk space, from its report; null from older software. */
  health: MemberHealth | null
}

export interface SiteStatus {
  site: string
  key: string
  running: boolean
  generatedAt: number
  verdict: Verdict
  reasons: Array<{ level: Verdict; text: string }>
  members: MemberStatus[]
  datasets: DatasetStatus[]
  refused: Array<{ key: string; reason: string; at: number }>
  /**
   * Bytes moved with each peer, the rates against this site's bandwidth budget, how long each peer takes to
   * catch up at that rate (node/traffic.ts). From the running node only: absent when it is not running.
   */
  traffic?: TrafficStatus
}

export interface StatusInput {
  self: Uint8Array
  site: string
  state: MeshState
  reports: Report[]
  connected: Set<string>
  running: boolean
  refused: Array<{ key: string; reason: string; at: number }>
  now: number
  thresholds: StatusThresholds
  /**
   * The datasets whose data key this site holds (datakeys.ts); absent: not known, and nothing is said about
   * keys. A full member without the key of a dataset whose logs are encrypted is a warning.
   */
  dataKeys?: string[]
  /** The snapshots this site keeps, by dataset id (see DatasetStatus.snapshots); none when absent. */
  snapshots?: Record<string, { count: number; newestAt: number | null; damaged: string[] }>
  /** When this site heard from each member, for usual hours (usual-hours.ts); none when absent. */
  contacts?: ContactHistory
}

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex')

/**
 * Holding errors that are a warning, not critical: the log is still held there, and what is missing comes
 * without anyone's action (a data key on its way) or is a known limit (no replica server, a plaintext log
 * that a blind site does not hold).
 */
const WARN_ONLY = new Set(['NO_REPLICA_SERVER', 'DATA_KEY_MISSING', 'NOT_ENCRYPTED'])
const HOLDING_HINTS: Record<string, string> = {
  DATA_KEY_MISSING:
    ': it comes sealed to that site from a full member that holds it once both are connected; start the ' +
    'origin if it is off',
  NOT_ENCRYPTED: ': move the dataset to encrypted logs with a new epoch (UPGRADE.md)'
}

export function buildStatus(input: StatusInput): SiteStatus {
  const { state, now, thresholds: t } = input
  const selfHex = hex(input.self)
  const byKey = new Map(input.reports.map((r) => [hex(r.site), r]))
  const reasons: SiteStatus['reasons'] = []
  const add = (level: Verdict, text: string) => reasons.push({ level, text })

  const nameOf = (key: string) => state.members.find((m) => hex(m.key) === key)?.site ?? key.slice(0, 12)

  if (!input.running)
    add(
      'CRIT',
      `the node at ${input.site} is not running: nothing is captured or received here (start it with \`mesh start\`)`
    )

  const members: MemberStatus[] = state.members.map((m: MemberInfo) => {
    const k = hex(m.key)
    const r = byKey.get(k)
    return {
      site: m.site,
      key: k,
      role: m.role ?? 'full',
      self: k === selfHex,
      connected: input.connected.has(k),
      lastContact: k === selfHex && input.running ? now : (r?.at ?? null),
      software: r?.software ?? null,
      health: memberHealth(r, now)
    }
  })
  for (const m of members) {
    if (m.self || m.connected) continue
    if (m.lastContact === null) {
      const added = state.members.find((x) => hex(x.key) === m.key)?.addedAt ?? now
      const since = (now - added) / 1000
      if (since >= t.silentWarnSeconds)
        add(
          since >= t.silentCritSeconds ? 'CRIT' : 'WARN',
          `${m.site} has never been heard from (a member for ${duration(since)})`
        )
      continue
    }
    const silent = (now - m.lastContact) / 1000
    if (silent >= t.silentCritSeconds) add('CRIT', `${m.site} has not been heard from for ${duration(silent)}`)
    else if (silent >= t.silentWarnSeconds) add('WARN', `${m.site} has not been heard from for ${duration(silent)}`)
    else {
      const usual = usualHoursReason(m, input.contacts, now, t)
      if (usual) add('WARN', usual)
    }
  }
  for (const r of healthReasons(members, now, t)) add(r.level, r.text)

  // Alarms a site raised (a statement it refused as forged or unsafe), from every site's signed report: CRIT
  // while they last (alarms.ts, ALARM_MS), each once however many sites raised it.
  const alarmsSeen = new Set<string>()
  for (const r of input.reports) {
    for (const n of r.notices ?? []) {
      if (n.kind !== 'alarm' || now - n.at > ALARM_MS || alarmsSeen.has(n.text)) continue
      alarmsSeen.add(n.text)
      const about = n.dataset ? ` (${state.datasets.find((x) => x.id === n.dataset)?.name ?? n.dataset})` : ''
      add('CRIT', `${r.siteName} refused${about}: ${n.text}`)
    }
  }

  // A site that cannot send alerts (alerts.ts), or whose link to a peer drops packets (traffic.ts): a warning at
  // every site, from its signed report. A link's notice counts while the report is recent: a site that went
  // silent says nothing of its links any more (its silence is the warning then).
  for (const r of input.reports) {
    for (const n of r.notices ?? []) {
      if (n.kind === 'alert-error') add('WARN', `${r.siteName} cannot send alerts: ${n.text}`)
      if (n.kind === 'link' && now - n.at < LINK_NOTICE_MS) add('WARN', `${r.siteName}: ${n.text}`)
    }
  }

  const datasets: DatasetStatus[] = state.datasets.map((d: DatasetInfo) => {
    const originKey = hex(d.origin)
    const logKey = hex(d.log)
    const holdingOf = (k: string) =>
      byKey.get(k)?.holdings.find((h) => h.dataset === d.id && hex(h.log) === logKey) ?? null
    const oh = holdingOf(originKey)
    // The log only grows: its length is the longest anyone reports. The origin's report is usually that, but a
    // copy's newer report can be ahead of the origin's last one (it has applied blocks appended since), and a
    // copy never shows as having applied more than the log holds.
    let length = oh?.length ?? 0
    let bytes = oh?.byteLength ?? 0
    let lastWriteAt = oh?.lastWriteAt || null
    for (const m of state.members) {
      const h = holdingOf(hex(m.key))
      if (!h) continue
      const known = Math.max(h.length, h.downloaded, h.applied)
      if (known > length) {
        length = known
        bytes = Math.max(bytes, h.byteLength)
      }
      if (h.lastWriteAt > (lastWriteAt ?? 0)) lastWriteAt = h.lastWriteAt
    }
    // An observer holds nothing of any dataset: it is a member, never a holder.
    const holding = state.members.filter((m) => m.role !== 'observer')
    const holders: HolderStatus[] = holding.map((m) => {
      const k = hex(m.key)
      const h = holdingOf(k)
      const role = k === originKey ? 'origin' : m.role === 'blind' ? 'blind' : 'replica'
      if (!h) {
        return {
          site: m.site,
          key: k,
          role,
          downloaded: null,
          applied: null,
          lagEntries: null,
          lagBytes: null,
          lagSeconds: null,
          lastContact: byKey.get(k)?.at ?? null,
          error: null,
          errorMessage: null,
          damagedBlocks: 0,
          captureLag: null
        }
      }
      if (role === 'blind') {
        // It applies nothing: how far it holds the log is all there is to say.
        return {
          site: m.site,
          key: k,
          role,
          downloaded: h.downloaded,
          applied: h.applied,
          lagEntries: Math.max(0, length - h.downloaded),
          lagBytes: null,
          lagSeconds: null,
          lastContact: k === selfHex && input.running ? now : (byKey.get(k)?.at ?? null),
          error: h.error || null,
          errorMessage: h.errorMessage || null,
          damagedBlocks: h.damaged,
          captureLag: null
        }
      }
      const behind = h.applied < length
      const appliedAt = h.appliedWriteAt || d.createdAt
      // This site's own figure from before its node stopped says nothing of now.
      const own = k !== selfHex || input.running
      const captureLag = role === 'origin' && h.captureLag && own ? { ...h.captureLag } : null
      const replicaLag = behind ? Math.max(0, ((lastWriteAt ?? appliedAt) - appliedAt) / 1000) : 0
      return {
        site: m.site,
        key: k,
        role,
        downloaded: h.downloaded,
        applied: h.applied,
        lagEntries: Math.max(0, length - h.applied),
        lagBytes: captureLag ? captureLag.bytes : Math.max(0, bytes - h.appliedBytes),
        lagSeconds: captureLag ? captureLag.seconds : replicaLag,
        lastContact: k === selfHex && input.running ? now : (byKey.get(k)?.at ?? null),
        error: h.error || null,
        errorMessage: h.errorMessage || null,
        damagedBlocks: h.damaged,
        captureLag
      }
    })
    const heldBy = holders.filter(
      (h) => h.role !== 'origin' && h.downloaded !== null && h.downloaded >= length && length > 0
    ).length

    // A data key on its way within the first lagWarnSeconds after the dataset or the holding site appeared is a
    // join under way (it comes sealed at the first connection to a full member that holds it), not a fault: like
    // a copy not made yet, it is a warning only after that.
    const keyOnItsWay = (holder: string) => {
      const added = state.members.find((m) => hex(m.key) === holder)?.addedAt ?? 0
      return (now - Math.max(d.createdAt, added)) / 1000 < t.lagWarnSeconds
    }
    for (const h of holders) {
      if (h.error && !(h.error === 'DATA_KEY_MISSING' && keyOnItsWay(h.key))) {
        const what = h.role === 'origin' ? `capture of ${d.name} at ${h.site}` : `${h.site}'s copy of ${d.name}`
        add(
          (h.role === 'origin' && h.error === 'DATABASE_LOCKED') || WARN_ONLY.has(h.error) ? 'WARN' : 'CRIT',
          `${what} is failing: ${h.errorMessage ?? h.error}${HOLDING_HINTS[h.error] ?? ''}`
        )
      }
      if (h.damagedBlocks > 0) {
        add(
          'WARN',
          `${h.site}'s copy of the ${d.name} log had ${h.damagedBlocks} damaged ` +
            `block${h.damagedBlocks === 1 ? '' : 's'} on disk (rejected and fetched again: check that disk)`
        )
      }
      // Writes wait at the source for as long as the batching interval by design: not a lag until past it.
      const batched = h.role === 'origin' ? (oh?.batchSeconds ?? 0) : 0
      if (h.captureLag && h.captureLag.seconds >= t.captureLagWarnSeconds + batched) {
        const crit = h.captureLag.seconds >= t.captureLagCritSeconds + batched
        const mb = (h.captureLag.bytes / 1048576).toFixed(1)
        const what =
          `the ${d.name} log at ${h.site} lacks writes its database committed ${duration(h.captureLag.seconds)} ago ` +
          `(${mb} MB of change records not captured yet): until it holds them they exist at ${h.site} only. `
        const todo = crit
          ? 'If it is not catching up, restart the node there (`mesh start`: capture resumes where the log ends, ' +
            'nothing is lost) and read its log for the cause'
          : 'The node is catching up; if this keeps growing, read its log for the cause'
        add(crit ? 'CRIT' : 'WARN', what + todo)
      }
      if (h.role === 'blind' && h.downloaded === null) {
        if (length > 0 && (now - d.createdAt) / 1000 >= t.lagWarnSeconds)
          add('WARN', `${h.site} (blind) holds no copy of the ${d.name} log yet`)
        continue
      }
      if (h.role !== 'replica') continue
      if (h.applied === null) {
        if (length > 0 && (now - d.createdAt) / 1000 >= t.lagWarnSeconds)
          add('WARN', `${h.site} holds no copy of ${d.name} yet`)
        continue
      }
      if (h.lagSeconds !== null && h.lagSeconds >= t.lagCritSeconds)
        add('CRIT', `${h.site}'s copy of ${d.name} is ${duration(h.lagSeconds)} behind`)
      else if (h.lagSeconds !== null && h.lagSeconds >= t.lagWarnSeconds)
        add('WARN', `${h.site}'s copy of ${d.name} is ${duration(h.lagSeconds)} behind`)
    }
    if (state.members.length < 2)
      add('WARN', `${d.name} has no other site to protect it yet: invite one with \`mesh invite\``)
    const selfRole = state.members.find((m) => hex(m.key) === selfHex)?.role ?? 'full'
    if (
      d.encryptedFrom !== undefined &&
      selfRole === 'full' &&
      input.dataKeys &&
      !input.dataKeys.includes(d.id) &&
      !keyOnItsWay(selfHex)
    ) {
      add(
        'WARN',
        `this site has not received the data key of ${d.name} yet, so it cannot read its encrypted logs: it ` +
          `comes sealed to this site from a full member that holds it once both are connected; start ` +
          `${nameOf(originKey)} (or another full member) if it is off`
      )
    }
    const mine = state.local.find((l) => l.dataset === d.id)
    const divergences = (mine?.divergences ?? []).map((x) => ({ ...x }))
    for (const x of divergences) {
      if (x.changes === 0) continue
      add(
        'WARN',
        `${x.changes} change${x.changes === 1 ? '' : 's'} made here to ${d.name} in epoch ${x.epoch}, ` +
          `after epoch ${x.fencedBy} took over, are not in the live data: review ${x.dir}, re-enter what ` +
          `is needed at ${nameOf(originKey)}, then delete that folder`
      )
    }

    // The last mesh verify of this site's replica.
    const verified = mine?.verified ?? null
    if (verified && !verified.ok) {
      const tables = verified.tables
        .map((x) => `${x.table}: ${x.missing} missing, ${x.extra} extra, ${x.changed} changed`)
        .join('; ')
      add(
        'CRIT',
        `this site's copy of ${d.name} differs from the log at position ${verified.seq} ` +
          `(${tables}): ` +
          `run mesh repair ${d.name}`
      )
    }

    // The last origin checkpoint this site's copy compared itself with. What mends a mismatch depends on what
    // mesh verify found since: a copy that differs from the log is mended by mesh repair; a copy equal to the
    // log while the checkpoint differs means the log itself is wrong, mended by a fresh copy (mesh resync).
    const checkpoint = mine?.checkpoint
      ? { ...mine.checkpoint, seq: mine.checkpoint.seq ?? mine.checkpoint.length }
      : null
    const proven = mine?.proven ?? null
    if (checkpoint && !checkpoint.ok) {
      const since =
        proven?.differs != null
          ? `; first seen at position ${proven.differs}, last proven equal ` +
            `${proven.equal === null ? 'never' : `at position ${proven.equal}`}`
          : ''
      const origin = nameOf(originKey)
      const after = verified !== null && verified.seq >= checkpoint.seq
      let mend: string
      if (after && verified.ok && !verified.repaired) {
        mend =
          `mesh verify found this copy equal to the log at position ${verified.seq}, so the log itself is wrong: ` +
          `run mesh resync ${d.name} at ${origin}`
      } else if (after && verified.repaired) {
        mend =
          `mesh repair put the log's rows in place at position ${verified.seq}; run mesh checkpoint ${d.name} ` +
          `at ${origin} to compare again, and if it still differs, mesh resync ${d.name} at ${origin}`
      } else if (after) {
        mend = `mesh verify found this copy differs from the log: run mesh repair ${d.name}`
      } else {
        mend =
          `run mesh verify ${d.name}: if this copy differs from the log, mesh repair ${d.name} mends it; ` +
          `if it equals the log, the log is wrong and mesh resync ${d.name} at ${origin} mends it`
      }
      const rows = `${count(checkpoint.rows, 'row')} here, ${checkpoint.originRows} there${since}`
      const at = `the origin's checkpoint at position ${checkpoint.seq}`
      add('CRIT', `this site's copy of ${d.name} differs from ${at} (${rows}): ${mend}`)
    }

    // Whole copies made again by the origin (from the signed reports: the same at every site), for a week.
    const seen = new Set<string>()
    const copies: DatasetStatus['copies'] = []
    for (const r of input.reports) {
      for (const n of r.notices ?? []) {
        if (n.kind === 'alarm') continue
        if (n.dataset !== d.id || now - n.at > NOTICE_MS || seen.has(`${n.at}:${n.seq}`)) continue
        seen.add(`${n.at}:${n.seq}`)
        copies.push({ site: r.siteName, kind: n.kind, at: n.at, seq: n.seq, why: n.text })
      }
    }
    copies.sort((a, b) => a.at - b.at)
    for (const x of copies) {
      if (x.kind === 'resync') continue
      const to = ENGINES[d.engine]?.exampleTarget(d.name, x.seq) ?? 'NEW_DATABASE'
      const what =
        x.kind === 'replaced'
          ? `the database of ${d.name} at ${x.site} was replaced (${x.why})`
          : `capture of ${d.name} at ${x.site} lost its position (${x.why})`
      add(
        'WARN',
        `${what} at ${new Date(x.at).toISOString()}: the whole database was copied into the log again at position ` +
          `${x.seq} and every copy is rebuilt from it; if that was not meant, the state before it is: ` +
          `mesh restore ${d.name} --before ${x.seq} --to ${to}`
      )
    }

    // Snapshots whose bytes changed on disk after they were written: the disk may be failing.
    const damagedSnaps = input.snapshots?.[d.id]?.damaged ?? []
    if (damagedSnaps.length) {
      add(
        'WARN',
        `${damagedSnaps.length} snapshot${damagedSnaps.length === 1 ? '' : 's'} of ${d.name} changed on ` +
          `this site's disk after being written and ${damagedSnaps.length === 1 ? 'was' : 'were'} set ` +
          `aside (restores use older ones or the log): check the disk, then delete ` +
          `${damagedSnaps.join(', ')}`
      )
    }

    // The mass-damage guard: a WARN for a week, with the command that restores the state before it.
    const damage = (mine?.damage ?? []).map((x) => ({ ...x }))
    for (const x of damage) {
      if (now - x.at > 7 * 86_400_000) continue
      const to = ENGINES[d.engine]?.exampleTarget(d.name, x.seq) ?? 'NEW_DATABASE'
      add(
        'WARN',
        `a change to ${d.name} at position ` +
          `${x.seq}${x.time ? ` (${new Date(x.time).toISOString()})` : ''} deleted or rewrote ${x.changed} ` +
          `of the ${count(x.before, 'row')} of ${x.table}; if that was not meant, the state before it is: mesh ` +
          `restore ${d.name} --before ${x.seq} --to ${to}`
      )
    }

    return {
      id: d.id,
      name: d.name,
      engine: d.engine,
      originSite: nameOf(originKey),
      origin: originKey,
      epoch: d.epoch,
      log: logKey,
      length,
      bytes,
      createdAt: d.createdAt,
      lastWriteAt,
      heldBy,
      historyEverySeconds: oh?.batchSeconds ?? 0,
      holders,
      divergences,
      damage,
      verified,
      copies,
      checkpoint,
      proven,
      snapshots: input.snapshots?.[d.id] ?? { count: 0, newestAt: null, damaged: [] }
    }
  })

  const verdict: Verdict = reasons.some((r) => r.level === 'CRIT')
    ? 'CRIT'
    : reasons.some((r) => r.level === 'WARN')
      ? 'WARN'
      : 'OK'
  return {
    site: input.site,
    key: selfHex,
    running: input.running,
    generatedAt: now,
    verdict,
    reasons,
    members,
    datasets,
    refused: input.refused
  }
}
