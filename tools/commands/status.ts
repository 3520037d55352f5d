// Light modules only (node/client.ts): asking the running node for its status must not load the daemon's modules.
// What only some runs need is imported then: the status saved on disk when no node runs, and the PostgreSQL
// driver for a slot's WAL.
import { MeshError } from '../../protocol/errors.ts'
import { askNode, count, duration, kbit, lossText, sizeText, VERDICT_EXIT } from '../../node/client.ts'
import type { SiteStatus } from '../../node/index.ts'
import { readConfig, resolveDir } from '../config.ts'
import { out, parse, printError, type Command } from './common.ts'

export const usage = `mesh status --dir DIR [--json]

Says whether every location is protected: per dataset its origin, epoch, log length and last write; per
site holding it, how far it has downloaded and applied, and its lag in entries, bytes and seconds (at the
origin: its capture lag, what its database committed that its log does not hold yet); the members connected
now; and a verdict with its reasons.
Exit code: 0 OK, 1 WARN, 2 CRIT, 3 UNKNOWN (status could not be read), as monitoring plugins expect.
Works whether or not the node is running (when it is not, the verdict is CRIT and the figures are the last ones
it saved).
  --json   the same as one JSON object (see README.md, "mesh status --json")`

export const EXIT_UNKNOWN = 3

function ago(ms: number | null, now: number): string {
  return ms === null ? 'never' : `${duration((now - ms) / 1000)} ago`
}

function bytes(n: number | null): string {
  if (n === null) return '-'
  if (n < 1024) return `${n} B`
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`
  return `${(n / 1024 / 1024).toFixed(1)} MB`
}

export function formatStatus(s: SiteStatus): string {
  const now = s.generatedAt
  const lines: string[] = []
  const connected = s.members.filter((m) => m.connected).length
  lines.push(
    `${s.verdict}: ${s.site} (node ${s.running ? 'running' : 'NOT running'}; ` +
      `${count(s.members.length, 'member')}, ${connected} connected now)`
  )
  for (const r of s.reasons) lines.push(`  ${r.level}: ${r.text}`)
  lines.push('')
  lines.push('Datasets')
  if (s.datasets.length === 0) lines.push('  (none yet)')
  for (const d of s.datasets) {
    const others = d.holders.filter((h) => h.role !== 'origin').length
    lines.push(
      `  ${d.name}  origin ${d.originSite}, epoch ${d.epoch}: ${count(d.length, 'entry', 'entries')}, ` +
        `${bytes(d.bytes)}, last write ${ago(d.lastWriteAt, now)}; latest write held by ${d.heldBy} of ` +
        `${count(others, 'other site')}`
    )
    for (const h of d.holders) {
      const pos =
        h.applied === null
          ? 'holds nothing yet'
          : h.role === 'blind'
            ? `holds ${h.downloaded} encrypted`
            : `downloaded ${h.downloaded}, applied ${h.applied}`
      // At the origin, the lag is its capture's: what its database committed that its log does not hold yet.
      const lag =
        h.applied === null
          ? ''
          : h.role === 'blind'
            ? `  lag ${count(h.lagEntries ?? 0, 'entry', 'entries')}`
            : h.captureLag
              ? `  capture lag ${bytes(h.captureLag.bytes)}, ${duration(h.captureLag.seconds)}`
              : `  lag ${count(h.lagEntries ?? 0, 'entry', 'entries')}, ${bytes(h.lagBytes)}, ` +
                `${duration(h.lagSeconds ?? 0)}`
      // A data key on its way is no error of the copy (mesh status warns if it does not come).
      const err = h.error === 'DATA_KEY_MISSING' ? '  waiting for its data key' : h.error ? `  ERROR ${h.error}` : ''
      const dmg = h.damagedBlocks ? `  ${count(h.damagedBlocks, 'damaged block')} rejected` : ''
      lines.push(
        `    ${h.site.padEnd(16)} ${h.role.padEnd(8)} ${pos}${lag}  contact ${ago(h.lastContact, now)}${err}${dmg}`
      )
    }
    if (d.historyEverySeconds > 0) {
      lines.push(
        `    history every ${duration(d.historyEverySeconds)}: ${d.originSite} sends its changes in groups ` +
          '(link.batchSeconds); `mesh log` and `mesh restore` have one position per group'
      )
    }
    if (d.promote) lines.push(`    may be promoted only by: ${d.promote.join(', ')} (its origin's policy)`)
    if (d.snapshots.count > 0) {
      lines.push(`    snapshots: ${d.snapshots.count} kept here, the newest ${ago(d.snapshots.newestAt, now)}`)
    }
    if (d.checkpoint) {
      lines.push(
        `    checkpoint: this copy ${d.checkpoint.ok ? 'matched' : 'DIFFERS from'} the origin's at ` +
          `position ${d.checkpoint.seq} (${count(d.checkpoint.rows, 'row')}), ${ago(d.checkpoint.at, now)}`
      )
    }
    if (d.verified) {
      lines.push(
        `    mesh verify: ` +
          `${d.verified.ok ? (d.verified.repaired ? 'repaired' : 'equal to the log') : 'DIFFERS from the log'} ` +
          `at position ${d.verified.seq}, ${ago(d.verified.at, now)}`
      )
    }
    if (d.proven?.differs != null) {
      lines.push(
        `    parted from the log between position ${d.proven.equal ?? 0} (last proven ` +
          `equal${d.proven.equal === null ? ': never, so from the start' : ''}) and position ` +
          `${d.proven.differs} (first seen to differ)`
      )
    }
    for (const x of d.damage ?? []) {
      lines.push(
        `    mass change at position ${x.seq}: ${x.changed} of ${count(x.before, 'row')} of ${x.table}, ` +
          `${ago(x.at, now)} (the state before it: mesh restore ${d.name} --before ${x.seq} --to FILE)`
      )
    }
    if (d.wal) {
      lines.push(
        `    WAL kept by its slot on the database server: ` +
          `${bytes(d.wal.retainedBytes)}` +
          `${d.wal.limitBytes === null ? ' (no ceiling)' : ` of ${bytes(d.wal.limitBytes)} allowed`}, ` +
          `${d.wal.status}`
      )
    }
    for (const x of d.divergences) {
      lines.push(
        `    divergence: ${count(x.changes, 'change')} made here in epoch ${x.epoch}, superseded by epoch ` +
          `${x.fencedBy} ${ago(x.at, now)}: ${x.dir}`
      )
    }
  }
  lines.push('')
  lines.push('Members')
  for (const m of s.members) {
    const state = m.self ? 'this site' : m.connected ? 'connected' : `last heard ${ago(m.lastContact, now)}`
    const role = m.role && m.role !== 'full' ? `  ${m.role}` : ''
    lines.push(`  ${m.site.padEnd(16)} ${state}${role}${m.software ? `  (${m.software})` : ''}`)
    lines.push(...healthLines(m))
  }
  lines.push(...trafficLines(s))
  if (s.refused.length > 0) {
    lines.push('')
    lines.push('Refused connections (recent)')
    for (const r of s.refused.slice(-5)) lines.push(`  ${r.key.slice(0, 12)}  ${r.reason}  ${ago(r.at, now)}`)
  }
  return lines.join('\n')
}

/** Bytes moved with each peer and the rates against the budget (from the running node only). */
function trafficLines(s: SiteStatus): string[] {
  const t = s.traffic
  if (!t) return []
  const limit = (bps: number | null) => (bps === null ? 'no limit' : kbit(bps))
  const lines = ['', `Traffic (budget: up ${limit(t.upBps)}, down ${limit(t.downBps)})`]
  if (t.peers.length === 0) lines.push('  (no peer yet)')
  const eta = (bytesBehind: number | null, seconds: number | null) =>
    bytesBehind === null
      ? ''
      : bytesBehind === 0
        ? '; caught up'
        : `; ${bytes(bytesBehind)} behind, ` +
          (seconds === null ? 'not moving now' : `about ${duration(seconds)} to catch up`)
  for (const p of t.peers) {
    const dir = (what: string, m: { today: number; lastHour: number; bps: number }, lim: number | null) =>
      `${what} ${bytes(m.today)} today, ${bytes(m.lastHour)} in the last hour, now ${kbit(m.bps)} of ${limit(lim)}`
    const theirs = p.peerBudget
      ? `; its budget: up ${limit(p.peerBudget.upBps || null)}, down ${limit(p.peerBudget.downBps || null)}`
      : ''
    lines.push(
      `  ${p.site.padEnd(16)} ${p.connected ? 'connected' : 'not connected'}` +
        `${eta(p.lagBytes, p.catchUpSeconds)}${theirs}`
    )
    lines.push(`    ${dir('sent', p.sent, p.upLimitBps)}${p.queued ? ` (${bytes(p.queued)} waiting)` : ''}`)
    lines.push(`    ${dir('received', p.received, p.downLimitBps)}`)
    if (p.loss && p.loss.packets > 0) {
      const t = p.loss.timeouts
      lines.push(
        `    last minute: ${count(p.loss.packets, 'packet')} sent, ${lossText(p.loss)} sent again` +
          `${t ? `, ${count(t, 'retransmission timeout')}` : ''}${p.loss.lossy ? ' (LOSSY_LINK)' : ''}`
      )
    }
  }
  if (t.dht) {
    const m = (x: { today: number; lastHour: number; bps: number }) =>
      `${bytes(x.today)} today, ${bytes(x.lastHour)} in the last hour, now ${kbit(x.bps)}`
    lines.push(
      `  the DHT (lookups, announces, connection set-up): sent ${m(t.dht.sent)}; received ${m(t.dht.received)}`
    )
  }
  if (t.lagBytes > 0) lines.push(`  this site${eta(t.lagBytes, t.catchUpSeconds)}`)
  return lines
}

/** A member's versions and free disk space, from its report (none from older software). */
function healthLines(m: SiteStatus['members'][number]): string[] {
  const h = m.health
  if (!h) return []
  const runs = [
    `Node.js ${h.node}${h.nodePastEndOfLife ? ' (past end of life)' : ''}`,
    h.os,
    h.sqlite && `SQLite ${h.sqlite}`,
    h.postgres && `PostgreSQL ${h.postgres}`,
    h.app && `application ${h.app}`
  ].filter(Boolean)
  const out = [`    runs ${runs.join(', ')}`]
  for (const d of h.disks) {
    const pct = d.total > 0 ? Math.floor((d.free * 100) / d.total) : 0
    out.push(`    disk of ${d.what}: ${sizeText(d.free)} free of ${sizeText(d.total)} (${pct}%)`)
  }
  if (h.paused) out.push('    snapshots paused (disk nearly full)')
  return out
}

export async function readStatus(dir: string): Promise<SiteStatus> {
  const cfg = readConfig(dir)
  const res = (await askNode(dir, 'status')) as {
    status?: SiteStatus
    error?: { code: string; message: string }
  } | null
  if (res?.error) throw new MeshError(res.error.code, res.error.message)
  const s = res?.status ?? (await import('../../node/index.ts')).statusFromDisk(dir, cfg.site, cfg.status)
  // The command to start this site's node, as it runs here: with this --dir unless it is the default one.
  if (dir !== resolveDir(undefined)) {
    for (const r of s.reasons) {
      if (r.text.startsWith(`the node at ${s.site} is not running`))
        r.text = r.text.replace('`mesh start`', `\`mesh start --dir ${dir}\``)
    }
  }
  // A PostgreSQL origin's slot: asked of the server here, so it is known when the node is off.
  for (const d of cfg.datasets) {
    // Only logical capture keeps a slot (trigger capture has none, nor has SQLite); a slot's name carries its epoch.
    const here = s.datasets.find((x) => x.id === d.id && x.originSite === cfg.site)
    if (d.capture !== 'logical' || !here) continue
    const { addWalHealth, engineFor } = await import('../../node/index.ts')
    const wal = engineFor(d.engine).walRetention
    if (!wal) continue
    try {
      addWalHealth(s, d.id, await wal(d.path, d.id, here.epoch), cfg.status)
    } catch (err) {
      s.reasons.push({
        level: 'WARN',
        text: `cannot read the replication slot of ${d.name}: ${(err as Error).message}`
      })
      if (s.verdict === 'OK') s.verdict = 'WARN'
    }
  }
  return s
}

export const command: Command = {
  usage,
  summary: 'is every location protected? (exit 0 OK, 1 WARN, 2 CRIT)',
  async run(args) {
    const { values } = parse('status', args, { json: { type: 'boolean' } })
    let s: SiteStatus
    try {
      s = await readStatus(resolveDir(values.dir))
    } catch (err) {
      if (values.json && err instanceof MeshError) {
        out(
          JSON.stringify({
            verdict: 'UNKNOWN',
            error: { code: err.code, message: err.message, hint: err.hint ?? null }
          })
        )
      } else printError(err)
      return EXIT_UNKNOWN
    }
    out(values.json ? JSON.stringify(s, null, 2) : formatStatus(s))
    return VERDICT_EXIT[s.verdict]
  }
}
