import path from 'node:path'
import crypto from 'hypercore-crypto'
import { MeshError } from '../../protocol/index.ts'
import { checkSource, createDataDir, createSiteKey, sitePaths, writeMeshState, DEFAULT_THRESHOLDS } from '../../node/index.ts'
import { checkSiteName, resolveBootstrap, resolveDir, writeConfig, CONFIG_FILE, type SiteConfig } from '../config.ts'
import { out, parse, type Command } from './common.ts'

export const usage = `mesh init --dir DIR --site NAME --sqlite PATH [--dataset NAME] [--bootstrap HOST:PORT[,...]]

Starts a new mesh with this site as its first member, protecting the SQLite database at PATH.
  --site NAME      this site's name, e.g. shop-north
  --sqlite PATH    the database the business application writes
  --dataset NAME   the dataset's name in the mesh (default: the file's base name)
  --bootstrap      DHT bootstrap nodes for a private network (default: the public DHT; also MESH_BOOTSTRAP)
  --dir DIR        data directory (default: MESH_DIR, then a per-user folder)`

function datasetName(flag: string | undefined, file: string): string {
  const name = flag ?? path.basename(file).replace(/\.(sqlite3?|db3?)$/i, '')
  return checkSiteName(name, 'dataset name')
}

/** The flags `init` and `join` share. */
export const SITE_OPTIONS = { site: { type: 'string' }, sqlite: { type: 'string' }, dataset: { type: 'string' } } as const

/**
 * Checks what `init` and `join` share (site name, database, dataset name, bootstrap) and returns the new site's
 * configuration; nothing is written yet.
 */
export function newSite(values: { dir?: string; site?: string; sqlite?: string; dataset?: string; bootstrap?: string }, example: string) {
  if (!values.site) throw MeshError.USAGE('--site NAME is required', { hint: example })
  if (!values.sqlite) throw MeshError.USAGE('--sqlite PATH is required', { hint: example })
  const dir = resolveDir(values.dir)
  const file = path.resolve(values.sqlite)
  const config: SiteConfig = {
    site: checkSiteName(values.site),
    datasets: [{ id: crypto.randomBytes(8).toString('hex'), name: datasetName(values.dataset, file), engine: 'sqlite', path: file }],
    bootstrap: resolveBootstrap(values.bootstrap, null),
    status: DEFAULT_THRESHOLDS,
    logLevel: 'info'
  }
  checkSource('sqlite', file)
  return { dir, config }
}

export const command: Command = {
  usage,
  summary: 'start a new mesh with this site as its first member',
  async run(args) {
    const { values } = parse('init', args, SITE_OPTIONS)
    const { dir, config } = newSite(values, 'Try: mesh init --dir DIR --site shop-north --sqlite /path/to/shop.db')
    const { site, datasets } = config
    const { path: file, name } = datasets[0]
    await createDataDir(dir, CONFIG_FILE, async () => {
      const paths = sitePaths(dir)
      const keyPair = createSiteKey(paths)
      writeMeshState(paths, { meshId: crypto.randomBytes(32), members: [{ key: keyPair.publicKey, site, addedAt: Date.now() }], datasets: [], local: [] })
      writeConfig(dir, config)
    })
    out(`Created a new mesh with ${site} as its first member, in ${dir}.`)
    out(`It protects ${file} as dataset "${name}".`)
    out('')
    out('Next:')
    out(`  mesh start --dir ${dir}        run the node (keep it running)`)
    out(`  mesh invite --dir ${dir}       make a join code for another site`)
    return 0
  }
}
