/**
 * Alerts (issue 17): the owner gets a message when this mesh's verdict changes (a WARN or CRIT raised, and
 * cleared again), and a daily summary at a set hour, by email (SMTP through nodemailer) and/or a webhook (a
 * JSON POST with a `text` field, which chat tools take).
 *
 * One site sends, so the owner gets one message, not one per site. Every site picks it the same way from what
 * every site sees: among the sites that say in their report that they can send (a notice of kind 'alerts') and
 * were heard from in the last `takeoverSeconds`, the one named in `sender`, else an observer, else the full
 * member with the lowest key. When it falls silent, the next one takes over. `sender` must be the same in every
 * site's config.json.
 *
 * De-duplication: a reason counts as raised once seen in two checks in a row and as cleared once missing from two
 * (a reason that flaps within a check is not sent); figures in a reason's text (durations, sizes) do not make it
 * a new one; what was sent is kept in DIR/alerts.json, so a restart sends nothing again. Rate limit: at most
 * `maxPerHour` messages (default 6); changes held back go out together in the next one.
 *
 * A failure to send is a WARN in this site's status and, through its report (a notice of kind 'alert-error'),
 * at every site; the node goes on replicating. The SMTP password is never logged nor reported.
 */
import nodemailer from 'nodemailer'
import { MeshError, type Notice } from '../protocol/index.ts'
import type { MeshNode } from './node.ts'
import { listSnapshots } from './snapshots.ts'
import { readJsonFile, writeFileAtomic } from './state.ts'
import type { MemberStatus, SiteStatus, Verdict } from './status.ts'
import { addSample, buildAlert, buildSummary, sample, type DaySample, type Message } from './summary.ts'
import { hex } from './util.ts'

export interface AlertOptions {
  email?: {
    host: string
    port: number
    /** TLS from the first byte (port 465); otherwise STARTTLS is used when the server offers it. */
    secure: boolean
    user?: string
    password?: string
    from: string
    to: string[]
  }
  /** A URL that gets a JSON POST: { text, site, verdict, raised, cleared } or { text, site, summary }. */
  webhook?: { url: string }
  /** The site that sends (the same in every site's config); absent: an observer, else the lowest-keyed full member. */
  sender?: string
  /** The daily summary's local time, "HH:MM"; absent: no daily summary. */
  dailyAt?: string
  /** How often the verdict is looked at, in seconds (default 30). */
  checkSeconds?: number
  /** Messages at most per hour (default 6). */
  maxPerHour?: number
  /** A sender not heard from for this long is passed over (default 300 s). */
  takeoverSeconds?: number
}

/**
 * A reason; `told`: this site sent it as raised (false: another site, the sender then, did); `at`: when this site
 * recorded it as told by another (ms).
 */
export type Reason = { level: Verdict; text: string; told?: boolean; at?: number }

interface AlertState {
  /** The reasons last sent as raised (and not sent as cleared since), by key. */
  active: Record<string, Reason>
  /** When the last messages were sent (the last hour's), ms. */
  sent: number[]
  /** The local day ("YYYY-MM-DD") of the last daily summary. */
  lastDaily: string | null
  /** The day's counter (summary.ts). */
  samples: DaySample[]
  /** Origin checkpoints this site's copy matched, per dataset: [seq, at] of the last 24 hours. */
  matched: Record<string, Array<[number, number]>>
}

/** A reason's identity: its level and its text without the figures that change as time passes. */
export function reasonKey(r: { level: Verdict; text: string }): string {
  return `${r.level} ${r.text.replace(/\d+(\.\d+)?/g, '#')}`
}

const ADDRESS = /^[^\s@<>(),;:"]+@[^\s@<>(),;:"]+$/

export class Alerts {
  private state: AlertState = { active: {}, sent: [], lastDaily: null, samples: [], matched: {} }
  /** What failed at the last attempt, per channel ('email', 'webhook'), shown in status. */
  private readonly errors = new Map<string, { text: string; at: number }>()
  /** Reasons seen / missed in the last check, for the two-checks rule. */
  private seenOnce = new Set<string>()
  private missedOnce = new Set<string>()
  private timer: NodeJS.Timeout | null = null
  private busy = false
  private dailyTriedAt = 0
  /** An address in alerts.email that is not one (found at start). */
  private badAddress: string | null = null
  private readonly startedAt = Date.now()
  /** The site that sent at the last check, as this site saw it (null before the first). */
  private lastSender: string | null = null

  constructor(private readonly node: MeshNode) {}

  private get opts(): AlertOptions | undefined {
    return this.node.opts.alerts
  }

  private get file(): string {
    return `${this.node.paths.dir}/alerts.json`
  }

  /** Whether this site has anywhere to send to. */
  get configured(): boolean {
    return !!(this.opts?.email || this.opts?.webhook)
  }

  start(): void {
    const saved = readJsonFile(this.file) as Partial<AlertState> | null
    if (saved) this.state = { ...this.state, ...saved }
    if (!this.configured) return
    const e = this.opts?.email
    for (const a of e ? [e.from, ...e.to] : []) {
      // "Shop owner <owner@example.com>" is an address too.
      if (!ADDRESS.test(/^[^<]*<([^<>]+)>\s*$/.exec(a)?.[1] ?? a)) {
        this.badAddress = `"${a}" is not an email address: fix alerts.email.from / to in config.json`
        this.fail('email', this.badAddress)
      }
    }
    const ms = (this.opts?.checkSeconds ?? 30) * 1000
    this.timer = setInterval(() => void this.check(), ms)
  }

  close(): void {
    if (this.timer) clearInterval(this.timer)
  }

  /** This site's report notices: that it can send, and each channel's last failure. */
  notices(): Notice[] {
    if (!this.configured) return []
    const out: Notice[] = [{ dataset: '', kind: 'alerts', at: this.startedAt, seq: 0, text: 'sends alerts' }]
    for (const e of this.errors.values()) {
      out.push({ dataset: '', kind: 'alert-error', at: e.at, seq: 0, text: e.text })
    }
    return out
  }

  /** The site that sends, as every site sees it; null when none can. */
  sender(s: SiteStatus, now = Date.now()): string | null {
    const takeover = (this.opts?.takeoverSeconds ?? 300) * 1000
    const can = new Set<string>()
    for (const r of this.node.reports.signed.values()) {
      if (r.report.notices?.some((n) => n.kind === 'alerts')) can.add(hex(r.report.site))
    }
    return chooseSender(s.members, can, this.opts?.sender, takeover, now, this.startedAt)
  }

  /** One look at the verdict: sends what changed (if this site is the sender), and the daily summary when due. */
  async check(now = Date.now()): Promise<void> {
    if (this.busy || this.node.closing) return
    this.busy = true
    try {
      const s = await this.node.reports.status(now)
      this.count(s, now)
      const name = this.sender(s, now)
      const sender = this.configured && name === this.node.opts.site
      // Taking over from a site that fell silent: what it may not have sent since it was last heard from (its
      // last report's time, on its clock: what it sent between that report and falling silent goes again, a
      // duplicate rather than a loss). A sender no longer a member (removed): nothing is sent again.
      const from = sender && this.lastSender !== null && this.lastSender !== name ? this.lastSender : null
      const since = from === null ? null : (s.members.find((m) => m.site === from)?.lastContact ?? null)
      let done = false
      try {
        done = await this.sendChanges(s, now, sender, since)
      } finally {
        // Not sent (a failure, the hourly limit, a full disk): taken over again at the next check, so it is
        // tried again.
        this.lastSender = done || from === null ? name : from
      }
      // A summary that could not be sent is tried again every 10 minutes (the failure is a WARN meanwhile).
      if (sender && this.dailyDue(now) && now - this.dailyTriedAt >= 600_000) {
        this.dailyTriedAt = now
        await this.daily(now).catch(() => {})
      }
    } catch (err) {
      this.node.logger.warn('alerts: cannot check the status', { error: (err as Error).message })
    } finally {
      this.busy = false
    }
  }

  /** `mesh alerts test`: a message through every channel now, whichever site sends. */
  async test(): Promise<{ sent: string[] }> {
    const s = await this.node.reports.status()
    const m = buildAlert(s.site, s.verdict, [], [], Date.now())
    return this.deliver(
      {
        subject: `branchmesh test message from ${s.site}`,
        text: `This is a test of branchmesh alerts from ${s.site}.\n\n${m.text}`,
        html: m.html
      },
      { test: true }
    )
  }

  /** The daily summary, now (`mesh alerts daily`, or at dailyAt by the sender). */
  async daily(now = Date.now()): Promise<{ sent: string[] }> {
    const s = await this.node.reports.status(now)
    this.count(s, now)
    const snapshots: Record<string, number[]> = {}
    const matched: Record<string, number> = {}
    for (const d of s.datasets) {
      snapshots[d.id] = listSnapshots(this.node.paths.dir, d.id).map((x) => x.at)
      matched[d.id] = (this.state.matched[d.id] ?? []).filter(([, at]) => now - at <= 24 * 3600_000).length
    }
    const msg = buildSummary(s, this.state.samples, { snapshots, matched }, now)
    const res = await this.deliver(msg, { summary: true })
    this.state.lastDaily = localDay(now)
    this.save()
    return res
  }

  private dailyDue(now: number): boolean {
    return dailyDue(this.opts?.dailyAt, this.state.lastDaily, now)
  }

  /** The day's counter: a sample an hour, and every checkpoint match this site's copies reach. */
  private count(s: SiteStatus, now: number): void {
    this.state.samples = addSample(this.state.samples, sample(s, now))
    for (const d of s.datasets) {
      const cp = d.checkpoint
      const list = (this.state.matched[d.id] ?? []).filter(([, at]) => now - at <= 25 * 3600_000)
      if (cp?.ok && !list.some(([seq]) => seq === cp.seq)) list.push([cp.seq, now])
      this.state.matched[d.id] = list
    }
    this.save()
  }

  /**
   * What changed since the last check. The sender sends what was raised. A site that is not the sender takes
   * what was raised as told (the sender told it) without sending, so that it does not tell it again when it takes
   * over, except what was raised since the sender it takes over from was last heard from (`takeover`, ms:
   * untoldSince). A clearing is sent by the site that sent the raise, sender or not (a sender that hands over as
   * its problem goes away, e.g. the silent sender coming back, still says it cleared; no one else says it again).
   * False when something was to go and did not (a failure, or the hourly limit).
   */
  private async sendChanges(s: SiteStatus, now: number, sender: boolean, takeover: number | null): Promise<boolean> {
    const active = this.state.active
    const d = diffReasons(active, this.seenOnce, this.missedOnce, s.reasons, sender, now)
    const { cleared, seen, missed } = d
    const raised = takeover === null ? d.raised : [...d.raised, ...untoldSince(active, takeover)]
    this.seenOnce = seen
    this.missedOnce = missed
    if (!raised.length && !cleared.length) {
      this.save()
      return true
    }
    this.state.sent = this.state.sent.filter((t) => now - t < 3600_000)
    // Over the limit: nothing is marked sent, so what changed goes out together in the next message allowed.
    if (this.state.sent.length >= (this.opts?.maxPerHour ?? 6)) return false
    this.state.sent.push(now)
    this.save()
    const plain = (r: Reason) => ({ level: r.level, text: r.text })
    const msg = buildAlert(s.site, s.verdict, raised.map(plain), cleared.map(plain), now)
    const res = await this.deliver(msg, {
      verdict: s.verdict,
      raised: raised.map(plain),
      cleared: cleared.map(plain)
    }).catch(() => null)
    if (!res) return false
    for (const r of raised) active[reasonKey(r)] = { ...plain(r), told: true }
    for (const r of cleared) delete active[reasonKey(r)]
    this.save()
    this.node.logger.info('alert sent', { raised: raised.length, cleared: cleared.length, to: res.sent })
    return true
  }

  /**
   * Sends through every configured channel; resolves with those that took it, or rejects with ALERT_FAILED when
   * none did. Each channel's failure is kept for status until it next succeeds.
   */
  private async deliver(msg: Message, extra: Record<string, unknown>): Promise<{ sent: string[] }> {
    const o = this.opts
    if (!o?.email && !o?.webhook) {
      throw MeshError.ALERT_FAILED(`${this.node.opts.site} has no alerts configured`, {
        hint: 'Add "alerts": { "email": {...} } or { "webhook": { "url": ... } } to config.json, then restart the node.'
      })
    }
    const sent: string[] = []
    const failed: string[] = []
    if (o.email) {
      try {
        await sendEmail(o.email, msg)
        this.ok('email')
        sent.push('email')
      } catch (err) {
        failed.push(this.fail('email', emailError(err, o.email)))
      }
    }
    if (o.webhook) {
      try {
        await postWebhook(o.webhook.url, { text: `${msg.subject}\n\n${msg.text}`, site: this.node.opts.site, ...extra })
        this.ok('webhook')
        sent.push('webhook')
      } catch (err) {
        failed.push(this.fail('webhook', webhookError(err, o.webhook.url)))
      }
    }
    if (!sent.length) throw MeshError.ALERT_FAILED(failed.join('; '))
    return { sent }
  }

  private ok(channel: string): void {
    // A bad address stays a warning while the others get the message: it is fixed only in config.json.
    if (channel === 'email' && this.badAddress) return
    if (this.errors.delete(channel)) this.node.reports.markDirty()
  }

  private fail(channel: string, text: string): string {
    const had = this.errors.get(channel)?.text
    this.errors.set(channel, { text, at: Date.now() })
    if (had !== text) {
      this.node.logger.warn(`alerts: cannot send by ${channel}`, { error: text })
      this.node.reports.markDirty()
    }
    return text
  }

  private save(): void {
    writeFileAtomic(this.file, `${JSON.stringify(this.state)}\n`, 0o600)
  }
}

/**
 * The site that sends (pure, the same at every site that sees the same members): among those that can (`can`,
 * keys) and were heard from within `takeoverMs`, not blind, the one `named`, else an observer, else the lowest key.
 * A site cannot hear anyone while it is off: for its first `takeoverMs` after `startedAt` it counts every site that
 * can send as heard from, so a restart after a long stop does not make it take over (and send a second message)
 * before it has reconnected.
 */
export function chooseSender(
  members: MemberStatus[],
  can: Set<string>,
  named: string | undefined,
  takeoverMs: number,
  now: number,
  startedAt = 0
): string | null {
  const heard = (m: MemberStatus) => (m.lastContact === null ? startedAt : Math.max(m.lastContact, startedAt))
  const alive = members
    .filter((m) => m.role !== 'blind' && can.has(m.key))
    .filter((m) => m.self || m.connected || now - heard(m) < takeoverMs)
    .sort((a, b) => (a.key < b.key ? -1 : 1))
  const pick = alive.find((m) => m.site === named) ?? alive.find((m) => m.role === 'observer') ?? alive[0]
  return pick?.site ?? null
}

/**
 * The reasons a site that takes over sends as raised (pure): those it recorded as sent by another (`told` false)
 * since the site that sent before was last heard from (`since`, ms), which that site may never have sent. A
 * reason raised while the sender was already silent, before the takeover time had passed, would otherwise be
 * told by nobody.
 */
export function untoldSince(active: Record<string, Reason>, since: number): Reason[] {
  return Object.values(active).filter((r) => r.told === false && (r.at ?? 0) >= since)
}

/**
 * One check's changes (pure): the reasons to send as raised (seen in this check and the one before, and not
 * active) and as cleared (active, and missing from this check and the one before), and the keys seen / missed
 * now for the next check. A site that is not the sender (`sender` false) records raises in `active` as told by
 * another; any site returns only the clearings of what it raised itself (others' it drops).
 */
export function diffReasons(
  active: Record<string, Reason>,
  seenOnce: Set<string>,
  missedOnce: Set<string>,
  reasons: Array<{ level: Verdict; text: string }>,
  sender: boolean,
  now = 0
): { raised: Reason[]; cleared: Reason[]; seen: Set<string>; missed: Set<string> } {
  const current = new Map<string, Reason>()
  for (const r of reasons) if (r.level !== 'OK') current.set(reasonKey(r), r)
  let raised: Reason[] = []
  let cleared: Reason[] = []
  const seen = new Set<string>()
  for (const [k, r] of current) {
    if (active[k]) continue
    seen.add(k)
    if (seenOnce.has(k)) raised.push(r)
  }
  const missed = new Set<string>()
  for (const [k, r] of Object.entries(active)) {
    if (current.has(k)) continue
    missed.add(k)
    if (missedOnce.has(k)) cleared.push(r)
  }
  // Each clearing comes from the site that sent the raise, so that it is said once even as the sender changes.
  for (const r of cleared) if (!r.told) delete active[reasonKey(r)]
  cleared = cleared.filter((r) => r.told)
  if (!sender) {
    for (const r of raised) active[reasonKey(r)] = { ...r, told: false, at: now }
    raised = []
  }
  return { raised, cleared, seen, missed }
}

/**
 * Whether the daily summary is due: today's `dailyAt` (local time) has passed and none was sent today. A node
 * that was off at that hour sends it when it starts, once.
 */
export function dailyDue(dailyAt: string | undefined, lastDaily: string | null, now: number): boolean {
  if (!dailyAt) return false
  const [h, m] = dailyAt.split(':').map(Number)
  const d = new Date(now)
  const due = new Date(d.getFullYear(), d.getMonth(), d.getDate(), h, m).getTime()
  return now >= due && lastDaily !== localDay(now)
}

export function localDay(now: number): string {
  const d = new Date(now)
  return `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, '0')}-${String(d.getDate()).padStart(2, '0')}`
}

async function sendEmail(e: NonNullable<AlertOptions['email']>, msg: Message): Promise<void> {
  const transport = nodemailer.createTransport({
    host: e.host,
    port: e.port,
    secure: e.secure,
    auth: e.user ? { user: e.user, pass: e.password ?? '' } : undefined,
    connectionTimeout: 10_000,
    greetingTimeout: 10_000,
    socketTimeout: 20_000
  })
  try {
    await transport.sendMail({ from: e.from, to: e.to, subject: msg.subject, text: msg.text, html: msg.html })
  } finally {
    transport.close()
  }
}

/** What went wrong with email, and what to do, without the password. */
function emailError(err: unknown, e: NonNullable<AlertOptions['email']>): string {
  const x = err as { code?: string; message?: string; responseCode?: number }
  const where = `${e.host}:${e.port}`
  const said = (x.message ?? String(err)).split('\n')[0].slice(0, 200)
  switch (x.code) {
    case 'EAUTH':
      return (
        `the SMTP server ${where} refused the user name or password (${said}): fix alerts.email.user / ` +
        'password in config.json'
      )
    case 'ECONNECTION':
    case 'ESOCKET':
    case 'ETIMEDOUT':
    case 'EDNS':
      return (
        `cannot reach the SMTP server ${where} (${said}): check alerts.email.host, port and secure in ` +
        'config.json, and that this machine can reach it'
      )
    case 'EENVELOPE':
      return `the SMTP server ${where} refused an address (${said}): fix alerts.email.from / to in config.json`
    default:
      return `the SMTP server ${where} did not take the message (${said}): check alerts.email in config.json`
  }
}

async function postWebhook(url: string, body: Record<string, unknown>): Promise<void> {
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(10_000)
  })
  if (!res.ok) throw new Error(`HTTP ${res.status} ${res.statusText}`)
}

function webhookError(err: unknown, url: string): string {
  const x = err as Error & { cause?: { code?: string; message?: string } }
  const why = x.cause?.code ?? x.cause?.message ?? x.message
  // Only the origin: a chat tool's webhook URL carries its secret in the path.
  let origin = url
  try {
    origin = new URL(url).origin
  } catch {}
  return `the webhook at ${origin} did not take the message (${why}): check alerts.webhook.url in config.json`
}
