/**
 * config.json `alerts` (issue 17): where alerts and the daily summary go. Types and shapes are checked here
 * (BAD_CONFIG: the node does not start); whether an address is well formed, a server reachable or a password
 * right is found out by the running node, which shows it as a WARN in status and keeps replicating.
 *
 *   "alerts": {
 *     "email": { "host": "smtp.example.com", "port": 587, "secure": false, "user": "...", "password": "...",
 *                "from": "mesh@example.com", "to": ["owner@example.com"] },
 *     "webhook": { "url": "https://chat.example.com/hooks/..." },
 *     "sender": "shop-north", "dailyAt": "07:00"
 *   }
 */
import fs from 'node:fs'
import { MeshError } from '../protocol/errors.ts'
import type { AlertOptions } from '../node/index.ts'
import { checkKeys } from './config.ts'

const ALERT_KEYS = ['email', 'webhook', 'sender', 'dailyAt', 'checkSeconds', 'maxPerHour', 'takeoverSeconds']
const EMAIL_KEYS = ['host', 'port', 'secure', 'user', 'password', 'from', 'to']

export function checkAlerts(v: unknown, file: string): AlertOptions | undefined {
  if (v === undefined || v === null) return undefined
  const bad = (what: string, hint?: string) => MeshError.BAD_CONFIG(`${file}: ${what}`, hint ? { hint } : {})
  if (typeof v !== 'object' || Array.isArray(v)) throw bad('"alerts" must be an object')
  const a = v as Record<string, unknown>
  checkKeys(a, ALERT_KEYS, '"alerts"', file)
  const out: AlertOptions = {}
  if (a.email !== undefined) {
    const e = a.email as Record<string, unknown>
    if (typeof e !== 'object' || e === null || Array.isArray(e)) throw bad('alerts.email must be an object')
    checkKeys(e, EMAIL_KEYS, 'alerts.email', file)
    if (typeof e.host !== 'string' || !e.host) throw bad('alerts.email.host must be the SMTP server name')
    const port = e.port ?? (e.secure ? 465 : 587)
    if (typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > 65535)
      throw bad('alerts.email.port must be a port number (465 with "secure": true, else 587 or 25)')
    if (e.secure !== undefined && typeof e.secure !== 'boolean')
      throw bad('alerts.email.secure must be true (TLS from the start, port 465) or false (STARTTLS when offered)')
    for (const k of ['user', 'password'] as const) {
      if (e[k] !== undefined && typeof e[k] !== 'string') throw bad(`alerts.email.${k} must be a string`)
    }
    if (typeof e.from !== 'string') throw bad('alerts.email.from must be the sender address, e.g. mesh@example.com')
    const to = typeof e.to === 'string' ? [e.to] : e.to
    if (!Array.isArray(to) || to.length === 0 || to.some((x) => typeof x !== 'string'))
      throw bad('alerts.email.to must be an address or a list of addresses')
    out.email = {
      host: e.host,
      port,
      secure: e.secure === true,
      ...(e.user !== undefined ? { user: e.user as string, password: (e.password as string) ?? '' } : {}),
      from: e.from,
      to: to as string[]
    }
  }
  if (a.webhook !== undefined) {
    const w = a.webhook as Record<string, unknown>
    if (typeof w !== 'object' || w === null || Array.isArray(w)) throw bad('alerts.webhook must be an object')
    checkKeys(w, ['url'], 'alerts.webhook', file)
    let ok = false
    try {
      ok = typeof w.url === 'string' && ['http:', 'https:'].includes(new URL(w.url).protocol)
    } catch {}
    if (!ok) throw bad('alerts.webhook.url must be an http(s) URL', 'Copy the webhook URL your chat tool gives.')
    out.webhook = { url: w.url as string }
  }
  if (a.sender !== undefined) {
    if (typeof a.sender !== 'string' || !a.sender) throw bad('alerts.sender must be a site name')
    out.sender = a.sender
  }
  if (a.dailyAt !== undefined) {
    const m = typeof a.dailyAt === 'string' ? /^([01]\d|2[0-3]):([0-5]\d)$/.exec(a.dailyAt) : null
    if (!m) throw bad('alerts.dailyAt must be a local time "HH:MM", e.g. "07:00"')
    out.dailyAt = a.dailyAt as string
  }
  for (const k of ['checkSeconds', 'maxPerHour', 'takeoverSeconds'] as const) {
    if (a[k] === undefined) continue
    if (typeof a[k] !== 'number' || !((a[k] as number) > 0)) throw bad(`alerts.${k} must be a positive number`)
    out[k] = a[k] as number
  }
  if (!out.email && !out.webhook && Object.keys(a).length)
    throw bad('alerts needs "email" or "webhook"', 'Add "email": {...} or "webhook": {"url": ...} under "alerts".')
  return out
}

/**
 * config.json holds the SMTP password: it must be readable by its owner only. `mesh init` writes it 0600; a file
 * edited or copied with a wider mode is set back to 0600 (said in the log) rather than refused, so the node runs.
 */
export function protectConfig(file: string, alerts: AlertOptions | undefined): string | null {
  if (!alerts?.email?.password || process.platform === 'win32') return null
  const mode = fs.statSync(file).mode & 0o777
  if ((mode & 0o077) === 0) return null
  fs.chmodSync(file, 0o600)
  return `${file} holds the SMTP password but had mode ${mode.toString(8)}: set to 600`
}
