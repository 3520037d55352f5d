/**
 * Configuration, read only here (tools/). Precedence for every setting: command-line flag, then the data
 * directory's config.json, then the environment, then the default. Misspelled keys in config.json are
 * rejected with the nearest known key as a hint.
 */
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { MeshError } from '../protocol/index.ts'
import {
  DEFAULT_GUARD,
  DEFAULT_SNAPSHOTS,
  DEFAULT_THRESHOLDS,
  checkUrl,
  writeFileAtomic,
  type DamageGuard,
  type SnapshotPolicy,
  type NetworkOptions,
  type OwnDataset,
  type StatusThresholds
} from '../node/index.ts'

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
  'maxUnitMemoryMB'
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

function nearest(word: string, known: readonly string[]): string | null {
  let best: string | null = null
  let bestD = Infinity
  for (const k of known) {
    const d = editDistance(word.toLowerCase(), k.toLowerCase())
    if (d < bestD) {
      bestD = d
      best = k
    }
  }
  return bestD <= Math.max(2, Math.floor(word.length / 3)) ? best : null
}

function editDistance(a: string, b: string): number {
  const dp = Array.from({ length: a.length + 1 }, (_, i) => [i, ...new Array(b.length).fill(0)])
  for (let j = 1; j <= b.length; j++) dp[0][j] = j
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      dp[i][j] = Math.min(dp[i - 1][j] + 1, dp[i][j - 1] + 1, dp[i - 1][j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1))
    }
  }
  return dp[a.length][b.length]
}

function checkKeys(obj: Record<string, unknown>, known: readonly string[], where: string, file: string): void {
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
      if (typeof v !== 'number' || !(v > 0))
        throw MeshError.BAD_CONFIG(
          `${file}: status.${k} must be a positive number (${k.endsWith('MB') ? 'of megabytes' : 'of seconds'})`
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
  return {
    site: j.site,
    datasets,
    bootstrap,
    status,
    logLevel,
    replicaPostgres,
    snapshots,
    checkpointSeconds,
    guard,
    maxUnitMemoryMB
  }
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
  if (cfg.replicaPostgres) j.replicaPostgres = cfg.replicaPostgres
  if (cfg.snapshots && JSON.stringify(cfg.snapshots) !== JSON.stringify(DEFAULT_SNAPSHOTS)) j.snapshots = cfg.snapshots
  if (cfg.checkpointSeconds !== undefined && cfg.checkpointSeconds !== 600) j.checkpointSeconds = cfg.checkpointSeconds
  if (cfg.guard && JSON.stringify(cfg.guard) !== JSON.stringify(DEFAULT_GUARD)) j.guard = cfg.guard
  if (cfg.maxUnitMemoryMB !== undefined && cfg.maxUnitMemoryMB !== 64) j.maxUnitMemoryMB = cfg.maxUnitMemoryMB
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
  return loopback
    ? {
        bootstrap: nodes.map((n) => ({ ...n, host: n.host === 'localhost' ? '127.0.0.1' : n.host })),
        host: '127.0.0.1',
        firewalled: false
      }
    : { bootstrap: nodes }
}
