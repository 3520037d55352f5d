/**
 * Configuration, read only here (tools/). Precedence for every setting: command-line flag, then the data
 * directory's config.json, then the environment, then the default. Misspelled keys in config.json are
 * rejected with the nearest known key as a hint.
 */
import { nearest } from './suggest.ts'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
// Light modules only (node/client.ts): every command reads its configuration, `mesh status` too.
import { MeshError } from '../protocol/errors.ts'
import {
  DEFAULT_GUARD,
  DEFAULT_SNAPSHOTS,
  DEFAULT_THRESHOLDS,
  checkUrl,
  writeFileAtomic,
  parseListen,
  type DamageGuard,
  type SnapshotPolicy,
  type StatusThresholds,
  type LinkBudget,
  MIN_LINK_KBPS
} from '../node/client.ts'
import type { NetworkOptions, OwnDataset, AppVersionSource, AlertOptions } from '../node/index.ts'
import { checkAlerts } from './alerts-config.ts'

export const CONFIG_FILE = 'config.json'

export interface SiteConfig {
  site: string
  datasets: OwnDataset[]
  /** HOST:PORT list of DHT bootstrap nodes; null for the public DHT. */
  bootstrap: string[] | null
  status: StatusThresholds
  logLevel: string
  /** A PostgreSQL server URL where this site keeps warm replicas of PostgreSQL datasets; null for none. */
  replicaPostgres: string | null
  /** Generational snapshots of replicas. */
  snapshots: SnapshotPolicy
  /** How often (at most) an origin appends a checkpoint, in seconds. */
  checkpointSeconds: number
  /** The mass-damage guard: a unit that deletes or changes `share` of a table of at least `minRows` rows. */
  guard: DamageGuard
  /** Memory one unit may take while it is captured or applied, in MB (issue 14; default 64). */
  maxUnitMemoryMB?: number
  /** Whether a dataset this site creates gets encrypted logs (default true; see node/datakeys.ts). */
  encryptNewDatasets?: boolean
  /** The business application's version: itself, a file to read or a command to run (issue 17); absent: none. */
  appVersion?: AppVersionSource
  /** Seconds between tries to reach an absent member, step by step (issue 16; default 1, 5, 15, 20). */
  retrySeconds?: number[]
  /** Alerts and the daily summary (tools/alerts-config.ts); absent: none from this site. */
  alerts?: AlertOptions
  /** The dashboard (node/dashboard/); absent: the node does not serve it, and charts are sampled every 5 min. */
  dashboard?: DashboardSettings
  /**
   * The link to the other sites (issue 16): batching for a slow or metered one, and the bandwidth budget of all
   * this site's mesh traffic, kbit/s each way (node/traffic.ts; absent: none).
   */
  link?: LinkSettings
}

/** config.json "link". */
export interface LinkSettings extends LinkBudget {
  /** An origin appends what its database committed at most about this often, as one unit; 0: at once. */
  batchSeconds: number
}

export const DEFAULT_LINK: LinkSettings = { batchSeconds: 0 }

/** Longest batching accepted: a day (history one position a day, and a day of writes at one site only). */
export const MAX_BATCH_SECONDS = 86_400

/**
 * A batching interval from config.json or a flag: a number of seconds from 0 to a day. `where` names it in the
 * error; `usage`: a flag (USAGE) rather than the file (BAD_CONFIG).
 */
export function checkBatchSeconds(v: unknown, where: string, usage = false): number {
  // A flag's value is text; in config.json a number must be a JSON number.
  const n = usage && typeof v === 'string' && /^\s*\d+(\.\d+)?\s*$/.test(v) ? Number(v) : v
  if (typeof n === 'number' && Number.isFinite(n) && n >= 0 && n <= MAX_BATCH_SECONDS) return n
  const what =
    typeof n === 'number' && n > MAX_BATCH_SECONDS
      ? `${where} ${n} is longer than a day (${MAX_BATCH_SECONDS} s)`
      : `${where} must be a number of seconds, 0 or more (got ${JSON.stringify(v)})`
  const hint =
    'Give 0 to send each change as soon as possible (the default), or the seconds between two sends on a ' +
    'slow or metered link, e.g. 60.'
  throw usage ? MeshError.USAGE(what, { hint }) : MeshError.BAD_CONFIG(what, { hint })
}

/** config.json "dashboard": where the node serves it, its token (this file is 0600), how often charts sample. */
export interface DashboardSettings {
  listen: string | null
  token: string | null
  sampleSeconds: number
}

const TOP_KEYS = [
  'site',
  'datasets',
  'bootstrap',
  'status',
  'logLevel',
  'replicaPostgres',
  'snapshots',
  'checkpointSeconds',
  'guard',
  'maxUnitMemoryMB',
  'encryptNewDatasets',
  'appVersion',
  'retrySeconds',
  'alerts',
  'dashboard',
  'link'
] as const
const SNAPSHOT_KEYS = Object.keys(DEFAULT_SNAPSHOTS)
const DATASET_KEYS = ['id', 'name', 'engine', 'path', 'url', 'capture'] as const
const STATUS_KEYS = Object.keys(DEFAULT_THRESHOLDS)
const LOG_LEVELS = ['debug', 'info', 'warn', 'error']

/** The per-user default data directory. */
export function defaultDir(): string {
  if (process.platform === 'win32')
    return path.join(process.env.APPDATA ?? path.join(os.homedir(), 'AppData', 'Roaming'), 'branchmesh')
  if (process.platform === 'darwin') return path.join(os.homedir(), 'Library', 'Application Support', 'branchmesh')
  return path.join(process.env.XDG_DATA_HOME ?? path.join(os.homedir(), '.local', 'share'), 'branchmesh')
}

/** --dir, else MESH_DIR, else the per-user folder. */
export function resolveDir(flag: string | undefined): string {
  return path.resolve(flag ?? process.env.MESH_DIR ?? defaultDir())
}

export function checkKeys(obj: Record<string, unknown>, known: readonly string[], where: string, file: string): void {
  for (const k of Object.keys(obj)) {
    if (known.includes(k)) continue
    const near = nearest(k, known)
    throw MeshError.BAD_CONFIG(`${file}: unknown key "${k}" in ${where}`, {
      hint: near ? `Did you mean "${near}"?` : `Known keys: ${known.join(', ')}.`
    })
  }
}

export const SITE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/

export function checkSiteName(name: string, what = 'site name'): string {
  if (!SITE_NAME.test(name)) {
    throw MeshError.USAGE(`"${name}" is not a valid ${what}`, {
      hint:
        'Use letters, digits, dots, dashes and underscores (up to 63), ' +
        'starting with a letter or digit, e.g. shop-north.'
    })
  }
  return name
}

/** Parses "HOST:PORT[,HOST:PORT...]". */
export function parseBootstrap(text: string, source: string): string[] {
  const list = text
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)
  if (list.length === 0)
    throw MeshError.USAGE(`${source} is empty`, {
      hint: 'Give HOST:PORT[,HOST:PORT...], e.g. 127.0.0.1:49737, or leave it out for the public DHT.'
    })
  for (const b of list) {
    const m = /^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(b)
    if (!m || Number(m[2]) < 1 || Number(m[2]) > 65535) {
      throw MeshError.USAGE(`${source}: "${b}" is not HOST:PORT`, {
        hint: 'Give HOST:PORT[,HOST:PORT...], e.g. 127.0.0.1:49737.'
      })
    }
  }
  return list
}

export function configPath(dir: string): string {
  return path.join(dir, CONFIG_FILE)
}

export function readConfig(dir: string): SiteConfig {
  const file = configPath(dir)
  let text: string
  try {
    text = fs.readFileSync(file, 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      if (!fs.existsSync(dir)) throw MeshError.NOT_INITIALIZED(`the data directory ${dir} does not exist`)
      throw MeshError.NOT_INITIALIZED(`${dir} is not a branchmesh data directory (no ${CONFIG_FILE})`)
    }
    throw MeshError.IO_ERROR(`cannot read ${file}: ${(err as Error).message}`, { retryable: false })
  }
  let j: Record<string, unknown>
  try {
    j = JSON.parse(text)
  } catch (err) {
    throw MeshError.BAD_CONFIG(`${file} is not valid JSON: ${(err as Error).message}`, {
      hint: 'Fix the syntax (a missing comma or quote?).'
    })
  }
  if (typeof j !== 'object' || j === null || Array.isArray(j))
    throw MeshError.BAD_CONFIG(`${file} must hold a JSON object`)
  checkKeys(j, TOP_KEYS, 'the top level', file)
  if (typeof j.site !== 'string') throw MeshError.BAD_CONFIG(`${file}: "site" must be a string`)
  checkSiteName(j.site)
  if (!Array.isArray(j.datasets)) throw MeshError.BAD_CONFIG(`${file}: "datasets" must be a list`)
  const datasets: OwnDataset[] = j.datasets.map((d: Record<string, unknown>, i: number) => {
    if (typeof d !== 'object' || d === null) throw MeshError.BAD_CONFIG(`${file}: datasets[${i}] must be an object`)
    checkKeys(d, DATASET_KEYS, `datasets[${i}]`, file)
    if (d.engine !== 'sqlite' && d.engine !== 'postgres') {
      throw MeshError.BAD_CONFIG(`${file}: datasets[${i}].engine "${d.engine}" is not supported`, {
        hint: 'Use "sqlite" (with "path") or "postgres" (with "url").'
      })
    }
    const where = d.engine === 'sqlite' ? 'path' : 'url'
    for (const k of ['id', 'name', where]) {
      if (typeof d[k] !== 'string' || d[k] === '')
        throw MeshError.BAD_CONFIG(`${file}: datasets[${i}].${k} must be a non-empty string`)
    }
    if (d.engine === 'postgres') {
      try {
        checkUrl(d.url as string)
      } catch (err) {
        throw MeshError.BAD_CONFIG(`${file}: datasets[${i}].url: ${(err as MeshError).message}`, {
          hint: (err as MeshError).hint
        })
      }
      if (d.capture !== undefined && d.capture !== 'logical' && d.capture !== 'triggers') {
        throw MeshError.BAD_CONFIG(`${file}: datasets[${i}].capture "${d.capture}" is not a capture mode`, {
          hint: 'Use "logical" (the default) or "triggers".'
        })
      }
      return {
        id: d.id as string,
        name: d.name as string,
        engine: 'postgres',
        path: d.url as string,
        capture: (d.capture as 'logical' | 'triggers' | undefined) ?? 'logical'
      }
    }
    return { id: d.id as string, name: d.name as string, engine: 'sqlite', path: path.resolve(dir, d.path as string) }
  })
  let replicaPostgres: string | null = null
  if (j.replicaPostgres !== undefined && j.replicaPostgres !== null) {
    if (typeof j.replicaPostgres !== 'string')
      throw MeshError.BAD_CONFIG(`${file}: "replicaPostgres" must be a postgres:// URL string`)
    try {
      checkUrl(j.replicaPostgres)
    } catch (err) {
      throw MeshError.BAD_CONFIG(`${file}: replicaPostgres: ${(err as MeshError).message}`, {
        hint: (err as MeshError).hint
      })
    }
    replicaPostgres = j.replicaPostgres
  }
  let bootstrap: string[] | null = null
  if (j.bootstrap !== undefined && j.bootstrap !== null) {
    if (!Array.isArray(j.bootstrap) || j.bootstrap.some((b) => typeof b !== 'string')) {
      throw MeshError.BAD_CONFIG(
        `${file}: "bootstrap" must be a list of "HOST:PORT" strings, or null for the public DHT`
      )
    }
    bootstrap = parseBootstrap(j.bootstrap.join(','), `${file}: bootstrap`)
  }
  const status = { ...DEFAULT_THRESHOLDS }
  if (j.status !== undefined) {
    if (typeof j.status !== 'object' || j.status === null)
      throw MeshError.BAD_CONFIG(`${file}: "status" must be an object`)
    checkKeys(j.status as Record<string, unknown>, STATUS_KEYS, '"status"', file)
    for (const [k, v] of Object.entries(j.status as Record<string, unknown>)) {
      const unit = k.endsWith('MB') ? 'megabytes' : k.endsWith('Percent') ? 'percent' : k.endsWith('Days') ? 'days' : ''
      // A grace of 0 days is meaningful; a threshold of 0 would never fire (or always).
      if (typeof v !== 'number' || !(v > 0 || (unit === 'days' && v === 0)) || (unit === 'percent' && v >= 100))
        throw MeshError.BAD_CONFIG(
          `${file}: status.${k} must be a ${unit === 'days' ? 'number (0 or more)' : 'positive number'} ` +
            `(of ${unit || 'seconds'}${unit === 'percent' ? ', under 100' : ''})`
        )
      ;(status as Record<string, number>)[k] = v
    }
  }
  const logLevel = j.logLevel === undefined ? 'info' : String(j.logLevel)
  if (!LOG_LEVELS.includes(logLevel))
    throw MeshError.BAD_CONFIG(`${file}: "logLevel" must be one of ${LOG_LEVELS.join(', ')}`)
  const snapshots = { ...DEFAULT_SNAPSHOTS }
  if (j.snapshots !== undefined) {
    if (typeof j.snapshots !== 'object' || j.snapshots === null)
      throw MeshError.BAD_CONFIG(`${file}: "snapshots" must be an object`)
    checkKeys(j.snapshots as Record<string, unknown>, SNAPSHOT_KEYS, '"snapshots"', file)
    for (const [k, v] of Object.entries(j.snapshots as Record<string, unknown>)) {
      if (typeof v !== 'number' || !(v >= 0) || (k === 'everySeconds' && !(v > 0))) {
        throw MeshError.BAD_CONFIG(
          `${file}: snapshots.${k} must be a ` +
            (k === 'everySeconds' ? 'positive number of seconds' : 'count (0 or more)')
        )
      }
      ;(snapshots as Record<string, number>)[k] = v
    }
  }
  let checkpointSeconds = 600
  if (j.checkpointSeconds !== undefined) {
    if (typeof j.checkpointSeconds !== 'number' || !(j.checkpointSeconds > 0))
      throw MeshError.BAD_CONFIG(`${file}: "checkpointSeconds" must be a positive number of seconds`)
    checkpointSeconds = j.checkpointSeconds
  }
  const guard = { ...DEFAULT_GUARD }
  if (j.guard !== undefined) {
    if (typeof j.guard !== 'object' || j.guard === null)
      throw MeshError.BAD_CONFIG(`${file}: "guard" must be an object`)
    checkKeys(j.guard as Record<string, unknown>, Object.keys(DEFAULT_GUARD), '"guard"', file)
    const g = j.guard as Record<string, unknown>
    if (g.share !== undefined && (typeof g.share !== 'number' || !(g.share > 0 && g.share <= 1)))
      throw MeshError.BAD_CONFIG(`${file}: guard.share must be a share between 0 and 1, e.g. 0.5`)
    if (g.minRows !== undefined && (typeof g.minRows !== 'number' || !(g.minRows >= 1)))
      throw MeshError.BAD_CONFIG(`${file}: guard.minRows must be a number of rows, 1 or more`)
    Object.assign(guard, g)
  }
  let maxUnitMemoryMB = 64
  if (j.maxUnitMemoryMB !== undefined) {
    if (typeof j.maxUnitMemoryMB !== 'number' || !(j.maxUnitMemoryMB >= 4)) {
      throw MeshError.BAD_CONFIG(`${file}: "maxUnitMemoryMB" must be a number of megabytes, 4 or more (default 64)`)
    }
    maxUnitMemoryMB = j.maxUnitMemoryMB
  }
  if (j.encryptNewDatasets !== undefined && typeof j.encryptNewDatasets !== 'boolean') {
    throw MeshError.BAD_CONFIG(`${file}: "encryptNewDatasets" must be true or false (default true)`)
  }
  let appVersion = j.appVersion === undefined || j.appVersion === null ? undefined : checkAppVersion(j.appVersion, file)
  if (appVersion && 'file' in appVersion) appVersion = { file: path.resolve(dir, appVersion.file) }
  let retrySeconds: number[] | undefined
  if (j.retrySeconds !== undefined) {
    const r = j.retrySeconds
    const ok = Array.isArray(r) && r.length >= 1 && r.length <= 4
    if (!ok || !r.every((x: unknown) => typeof x === 'number' && x > 0 && x <= 22))
      throw MeshError.BAD_CONFIG(
        `${file}: "retrySeconds" must be 1 to 4 numbers of seconds, each above 0 and at most 22 ` +
          '(default [1, 5, 15, 20]: never more than 30 s between two tries)'
      )
    retrySeconds = r
  }
  const dashboard = j.dashboard === undefined || j.dashboard === null ? undefined : checkDashboard(j.dashboard, file)
  const link = j.link === undefined || j.link === null ? { ...DEFAULT_LINK } : checkLink(j.link, file)
  return {
    link,
    ...(dashboard ? { dashboard } : {}),
    ...(j.encryptNewDatasets === false ? { encryptNewDatasets: false } : {}),
    site: j.site,
    datasets,
    bootstrap,
    status,
    logLevel,
    replicaPostgres,
    snapshots,
    checkpointSeconds,
    guard,
    maxUnitMemoryMB,
    appVersion,
    retrySeconds,
    alerts: checkAlerts(j.alerts, file),
    dashboard
  }
}

const KBPS_HINT =
  `Give kilobits per second, ${MIN_LINK_KBPS} or more (e.g. 128 for a mesh that may use half of a 256 kbit/s ` +
  'line), or leave it out for no limit.'

/**
 * One side of the bandwidth budget, in kbit/s: a number of at least MIN_LINK_KBPS (below it the control
 * traffic alone, reports and keep-alives, would not fit, and replication would never end). `what` names it
 * in the error: a flag (a usage error) or a config key.
 */
export function checkKbps(v: unknown, what: string, flag: boolean): number {
  const n = flag && typeof v === 'string' && v.trim() !== '' ? Number(v) : v
  const fail = (why: string) =>
    flag
      ? MeshError.USAGE(`${what} ${why}`, { hint: KBPS_HINT })
      : MeshError.BAD_CONFIG(`${what} ${why}`, {
          hint: KBPS_HINT
        })
  if (typeof n !== 'number' || !Number.isFinite(n)) throw fail(`must be a number of kbit/s, not ${JSON.stringify(v)}`)
  if (n <= 0) throw fail(`must be above 0 (${n} would stop all of this site's mesh traffic)`)
  if (n < MIN_LINK_KBPS) {
    throw fail(`is ${n} kbit/s: under ${MIN_LINK_KBPS} the mesh's control traffic alone does not fit`)
  }
  return n
}

/**
 * config `link`: {"batchSeconds": 60, "upKbps": 128, "downKbps": 256}; each may be left out (batchSeconds 0:
 * send at once; no budget: no limit that way).
 */
function checkLink(v: unknown, file: string): LinkSettings {
  if (typeof v !== 'object' || v === null || Array.isArray(v))
    throw MeshError.BAD_CONFIG(`${file}: "link" must be an object, e.g. {"batchSeconds": 0, "upKbps": 128}`, {
      hint: `batchSeconds: seconds between two sends (0: as soon as possible). ${KBPS_HINT}`
    })
  const o = v as Record<string, unknown>
  checkKeys(o, ['batchSeconds', 'upKbps', 'downKbps'], '"link"', file)
  const link: LinkSettings = { ...DEFAULT_LINK }
  if (o.batchSeconds !== undefined) link.batchSeconds = checkBatchSeconds(o.batchSeconds, `${file}: link.batchSeconds`)
  if (o.upKbps !== undefined && o.upKbps !== null) link.upKbps = checkKbps(o.upKbps, `${file}: link.upKbps`, false)
  if (o.downKbps !== undefined && o.downKbps !== null) {
    link.downKbps = checkKbps(o.downKbps, `${file}: link.downKbps`, false)
  }
  return link
}

/** The `--up-kbps` and `--down-kbps` of `init` and `join`; undefined when neither is given. */
export function linkFlags(values: { 'up-kbps'?: string; 'down-kbps'?: string }): LinkBudget | undefined {
  const link: LinkBudget = {}
  if (values['up-kbps'] !== undefined) link.upKbps = checkKbps(values['up-kbps'], '--up-kbps', true)
  if (values['down-kbps'] !== undefined) link.downKbps = checkKbps(values['down-kbps'], '--down-kbps', true)
  return Object.keys(link).length ? link : undefined
}

/** config `dashboard`: {"listen": "HOST:PORT" or null, "token": "...", "sampleSeconds": 300}. */
function checkDashboard(v: unknown, file: string): DashboardSettings {
  if (typeof v !== 'object' || v === null || Array.isArray(v))
    throw MeshError.BAD_CONFIG(`${file}: "dashboard" must be an object, e.g. {"listen": "127.0.0.1:8080"}`)
  const o = v as Record<string, unknown>
  checkKeys(o, ['listen', 'token', 'sampleSeconds'], '"dashboard"', file)
  if (o.listen !== undefined && o.listen !== null) {
    if (typeof o.listen !== 'string') throw MeshError.BAD_CONFIG(`${file}: dashboard.listen must be "HOST:PORT"`)
    parseListen(o.listen, `${file}: dashboard.listen`)
  }
  if (o.token !== undefined && o.token !== null && (typeof o.token !== 'string' || o.token.length < 16)) {
    throw MeshError.BAD_CONFIG(`${file}: dashboard.token must be a string of 16 characters or more`, {
      hint: 'Make one with: openssl rand -hex 24'
    })
  }
  if (o.sampleSeconds !== undefined && (typeof o.sampleSeconds !== 'number' || !(o.sampleSeconds >= 1)))
    throw MeshError.BAD_CONFIG(`${file}: dashboard.sampleSeconds must be a number of seconds, 1 or more (default 300)`)
  return {
    listen: (o.listen as string | undefined) ?? null,
    token: (o.token as string | undefined) ?? null,
    sampleSeconds: (o.sampleSeconds as number | undefined) ?? 300
  }
}

/** config `appVersion`: "1.2.3", {"file": "PATH"} or {"command": "COMMAND"}. */
function checkAppVersion(v: unknown, file: string): AppVersionSource {
  const hint =
    'Give the version itself ("4.2.1"), a file whose first line is it ({"file": "/opt/shop/VERSION"}), or a ' +
    'command that prints it ({"command": "shopapp --version"}).'
  if (typeof v === 'string' && v.trim()) return { version: v }
  if (typeof v === 'object' && v !== null && !Array.isArray(v)) {
    const o = v as Record<string, unknown>
    checkKeys(o, ['file', 'command'], '"appVersion"', file)
    const keys = Object.keys(o)
    if (keys.length === 1 && typeof o[keys[0]] === 'string' && (o[keys[0]] as string).trim()) {
      return keys[0] === 'file' ? { file: o.file as string } : { command: o.command as string }
    }
  }
  throw MeshError.BAD_CONFIG(`${file}: "appVersion" must be a version, {"file": ...} or {"command": ...}`, { hint })
}

/** Written with mode 0600: a PostgreSQL URL may hold a password. */
export function writeConfig(dir: string, cfg: SiteConfig): void {
  const datasets = cfg.datasets.map((d) =>
    d.engine === 'postgres'
      ? { id: d.id, name: d.name, engine: d.engine, url: d.path, capture: d.capture ?? 'logical' }
      : d
  )
  const j: Record<string, unknown> = {
    site: cfg.site,
    datasets,
    bootstrap: cfg.bootstrap,
    status: cfg.status,
    logLevel: cfg.logLevel
  }
  // Every key is written, defaults too, so that a person editing the file sees what can be set.
  j.replicaPostgres = cfg.replicaPostgres ?? null
  j.snapshots = cfg.snapshots ?? DEFAULT_SNAPSHOTS
  j.checkpointSeconds = cfg.checkpointSeconds ?? 600
  j.guard = cfg.guard ?? DEFAULT_GUARD
  j.maxUnitMemoryMB = cfg.maxUnitMemoryMB ?? 64
  // batchSeconds always; a budget (upKbps, downKbps) only when one was given: none is no limit.
  j.link = { ...DEFAULT_LINK, ...cfg.link }
  if (cfg.dashboard) j.dashboard = cfg.dashboard
  if (cfg.appVersion) j.appVersion = 'version' in cfg.appVersion ? cfg.appVersion.version : cfg.appVersion
  if (cfg.retrySeconds !== undefined) j.retrySeconds = cfg.retrySeconds
  if (cfg.alerts) j.alerts = cfg.alerts
  writeFileAtomic(configPath(dir), `${JSON.stringify(j, null, 2)}\n`, 0o600)
}

/** Flag, then config file, then MESH_BOOTSTRAP, then the public DHT (null). */
export function resolveBootstrap(flag: string | undefined, fromFile: string[] | null): string[] | null {
  if (flag !== undefined) return parseBootstrap(flag, '--bootstrap')
  if (fromFile) return fromFile
  if (process.env.MESH_BOOTSTRAP) return parseBootstrap(process.env.MESH_BOOTSTRAP, 'MESH_BOOTSTRAP')
  return null
}

/** What the node's DHT needs. A bootstrap list on loopback means a test network on this machine. */
export function networkOptions(bootstrap: string[] | null): NetworkOptions {
  if (bootstrap === null) return {}
  const nodes = bootstrap.map((b) => {
    const i = b.lastIndexOf(':')
    return { host: b.slice(0, i).replace(/^\[|\]$/g, ''), port: Number(b.slice(i + 1)) }
  })
  const loopback = nodes.every((n) => n.host === 'localhost' || n.host.startsWith('127.') || n.host === '::1')
  // MESH_DIRECT=1: every node can reach every other directly (one LAN, a VPN, network namespaces on one
  // machine), so no hole punching; as on loopback.
  const direct = process.env.MESH_DIRECT === '1'
  return loopback
    ? {
        bootstrap: nodes.map((n) => ({ ...n, host: n.host === 'localhost' ? '127.0.0.1' : n.host })),
        host: '127.0.0.1',
        firewalled: false
      }
    : direct
      ? { bootstrap: nodes, firewalled: false }
      : { bootstrap: nodes }
}
