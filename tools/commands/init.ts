import path from 'node:path'
import crypto from 'hypercore-crypto'
import { MeshError } from '../../protocol/index.ts'
import {
  checkReplicaServer,
  checkSource,
  checkUrl,
  createDataDir,
  createSiteKey,
  redactUrl,
  sitePaths,
  undoSource,
  writeMeshState,
  DEFAULT_GUARD,
  DEFAULT_SNAPSHOTS,
  DEFAULT_THRESHOLDS,
  MIN_LINK_KBPS
} from '../../node/index.ts'
import {
  checkBatchSeconds,
  checkSiteName,
  linkFlags,
  resolveBootstrap,
  resolveDir,
  writeConfig,
  CONFIG_FILE,
  type SiteConfig
} from '../config.ts'
import { out, parse, type Command } from './common.ts'

export const usage =
  `mesh init --dir DIR --site NAME (--sqlite PATH | --postgres URL) ` +
  `[--capture triggers] [--dataset NAME] [--replica-postgres URL] ` +
  `[--batch-seconds N] [--bootstrap HOST:PORT[,...]] [--up-kbps N] [--down-kbps N]

Starts a new mesh with this site as its first member, protecting one database.
  --site NAME      this site's name, e.g. shop-north
  --sqlite PATH    the SQLite database the business application writes
  --postgres URL   or the PostgreSQL database it writes (postgres://USER[:PASSWORD]@HOST[:PORT]/DB); needs
                   wal_level=logical and a role with REPLICATION; creates the publication and the replication
                   slot branchmesh_<dataset id>
  --capture triggers
                   with --postgres: capture with triggers instead, where logical decoding is not allowed (a
                   hosted server); every table needs a primary key
  --replica-postgres URL
                   a PostgreSQL server where this site keeps warm copies of the other sites' PostgreSQL
                   datasets, one database each (its user needs CREATEDB); without it their logs are kept only
  --dataset NAME   the dataset's name in the mesh (default: the file's base name or the database name)
  --batch-seconds N
                   on a slow or metered link: send this site's changes at most every N seconds, grouped
                   (config.json link.batchSeconds; default 0: as soon as possible); history keeps one position
                   per group
  --bootstrap      DHT bootstrap nodes for a private network (default: the public DHT; also MESH_BOOTSTRAP)
  --up-kbps N, --down-kbps N
                   the bandwidth budget of all of this site's mesh traffic, in kbit/s each way (at least
                   ${MIN_LINK_KBPS}; config link.upKbps, link.downKbps): on a slow line, leave room for
                   the shop's own traffic, e.g. 128 on a 256 kbit/s line. Default: no limit
  --dir DIR        data directory (default: MESH_DIR, then a per-user folder)`

function datasetName(flag: string | undefined, fallback: string): string {
  return checkSiteName(flag ?? fallback, 'dataset name')
}

/** The flags `init` and `join` share. */
export const SITE_OPTIONS = {
  site: { type: 'string' },
  sqlite: { type: 'string' },
  postgres: { type: 'string' },
  'replica-postgres': { type: 'string' },
  capture: { type: 'string' },
  dataset: { type: 'string' },
  'batch-seconds': { type: 'string' },
  'up-kbps': { type: 'string' },
  'down-kbps': { type: 'string' }
} as const

type SiteValues = {
  dir?: string
  site?: string
  sqlite?: string
  postgres?: string
  'replica-postgres'?: string
  capture?: string
  dataset?: string
  bootstrap?: string
  'batch-seconds'?: string
  'up-kbps'?: string
  'down-kbps'?: string
}

/**
 * Checks what `init` and `join` share (site name, database, dataset name, bootstrap) and returns the new site's
 * configuration; nothing is written yet.
 */
export async function newSite(values: SiteValues, example: string) {
  if (!values.site) throw MeshError.USAGE('--site NAME is required', { hint: example })
  if (!values.sqlite === !values.postgres) {
    throw MeshError.USAGE(
      values.sqlite ? 'give --sqlite or --postgres, not both' : '--sqlite PATH or --postgres URL is required',
      { hint: example }
    )
  }
  const dir = resolveDir(values.dir)
  const id = crypto.randomBytes(8).toString('hex')
  let dataset: SiteConfig['datasets'][number]
  if (values.postgres) {
    const { database } = checkUrl(values.postgres)
    const capture = values.capture ?? 'logical'
    if (capture !== 'logical' && capture !== 'triggers')
      throw MeshError.USAGE(`--capture ${capture} is not a capture mode`, {
        hint: 'Give --capture triggers, or leave it out for logical decoding.'
      })
    dataset = { id, name: datasetName(values.dataset, database), engine: 'postgres', path: values.postgres, capture }
  } else {
    const file = path.resolve(values.sqlite!)
    dataset = {
      id,
      name: datasetName(values.dataset, path.basename(file).replace(/\.(sqlite3?|db3?)$/i, '')),
      engine: 'sqlite',
      path: file
    }
  }
  const replicaPostgres = values['replica-postgres'] ?? null
  const config: SiteConfig = {
    site: checkSiteName(values.site),
    datasets: [dataset],
    bootstrap: resolveBootstrap(values.bootstrap, null),
    status: DEFAULT_THRESHOLDS,
    logLevel: 'info',
    replicaPostgres,
    snapshots: { ...DEFAULT_SNAPSHOTS },
    checkpointSeconds: 600,
    guard: { ...DEFAULT_GUARD },
    link: {
      batchSeconds: checkBatchSeconds(values['batch-seconds'] ?? 0, '--batch-seconds', true),
      ...linkFlags(values)
    }
  }
  if (replicaPostgres) await checkReplicaServer(replicaPostgres)
  if (values.capture && !values.postgres)
    throw MeshError.USAGE('--capture applies to --postgres only', { hint: example })
  /** Sets up capture in the database (a PostgreSQL slot...), inside the data directory's creation. */
  const setUp = () => checkSource(dataset.engine, dataset.path, id, dataset.capture)
  /** Undoes it when what follows fails, so that nothing is left holding WAL. */
  const undo = () => undoSource(dataset.engine, dataset.path, id).catch(() => {})
  return { dir, config, setUp, undo }
}

/** How a dataset's database is named to the user (a URL without its password). */
export function shownSource(d: SiteConfig['datasets'][number]): string {
  return d.engine === 'postgres' ? redactUrl(d.path) : d.path
}

export const command: Command = {
  usage,
  summary: 'start a new mesh with this site as its first member',
  async run(args) {
    const { values } = parse('init', args, SITE_OPTIONS)
    const { dir, config, setUp, undo } = await newSite(
      values,
      'Try: mesh init --dir DIR --site shop-north --sqlite /path/to/shop.db'
    )
    const { site, datasets } = config
    const { name } = datasets[0]
    const file = shownSource(datasets[0])
    const warnings = await createDataDir(dir, CONFIG_FILE, async () => {
      const warnings = await setUp()
      try {
        const paths = sitePaths(dir)
        const keyPair = createSiteKey(paths)
        writeMeshState(paths, {
          meshId: crypto.randomBytes(32),
          members: [{ key: keyPair.publicKey, site, addedAt: Date.now() }],
          datasets: [],
          local: []
        })
        writeConfig(dir, config)
      } catch (err) {
        await undo()
        throw err
      }
      return warnings
    })
    out(`Created a new mesh with ${site} as its first member, in ${dir}.`)
    out(`It protects ${file} as dataset "${name}".`)
    for (const w of warnings) out(`Warning: ${w}`)
    out('')
    out('Next:')
    out(`  mesh start --dir ${dir}        run the node (keep it running)`)
    out(`  mesh invite --dir ${dir}       make a join code for another site`)
    return 0
  }
}
