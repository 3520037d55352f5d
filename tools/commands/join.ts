import path from 'node:path'
import { MeshError, decodeJoinCode } from '../../protocol/index.ts'
import { checkSource, createDataDir, createSiteKey, redeemJoinCode, sitePaths, writeFileAtomic, writeMeshState, DEFAULT_THRESHOLDS } from '../../node/index.ts'
import { checkSiteName, networkOptions, resolveBootstrap, resolveDir, writeConfig, CONFIG_FILE } from '../config.ts'
import { out, parse, parseDuration, type Command } from './common.ts'
import { datasetName, newDatasetId } from './init.ts'

export const usage = `mesh join CODE --dir DIR --site NAME --sqlite PATH [--dataset NAME] [--bootstrap HOST:PORT[,...]] [--timeout 60s]

Adds this site to a mesh with a join code from \`mesh invite\`, protecting the SQLite database at PATH.
The inviting site's node must be running.
  --timeout D   how long to look for the inviting site (default 60s)`

export const command: Command = {
  usage,
  summary: 'join a mesh with a join code',
  async run(args) {
    const { values, positionals } = parse('join', args, { site: { type: 'string' }, sqlite: { type: 'string' }, dataset: { type: 'string' }, timeout: { type: 'string' } }, true)
    const example = 'Try: mesh join bm1-... --dir DIR --site shop-south --sqlite /path/to/shop.db'
    if (positionals.length !== 1) throw MeshError.USAGE(positionals.length === 0 ? 'the join code is missing' : 'give exactly one join code', { hint: example })
    if (!values.site) throw MeshError.USAGE('--site NAME is required', { hint: example })
    if (!values.sqlite) throw MeshError.USAGE('--sqlite PATH is required', { hint: example })
    const code = decodeJoinCode(positionals[0])
    if (code.expiresAt * 1000 <= Date.now()) {
      throw MeshError.JOIN_CODE_EXPIRED(`the join code expired at ${new Date(code.expiresAt * 1000).toISOString()}`)
    }
    const dir = resolveDir(values.dir)
    const site = checkSiteName(values.site)
    const file = path.resolve(values.sqlite)
    const name = datasetName(values.dataset, file)
    const bootstrap = resolveBootstrap(values.bootstrap, null)
    const timeoutMs = parseDuration(values.timeout ?? '60s', '--timeout') * 1000
    checkSource('sqlite', file)
    const welcome = await createDataDir(dir, CONFIG_FILE, async () => {
      const paths = sitePaths(dir)
      const keyPair = createSiteKey(paths)
      out(`Looking for the inviting site${bootstrap ? ` via ${bootstrap.join(',')}` : ' on the public DHT'}...`)
      const w = await redeemJoinCode({ code, site, keyPair, network: networkOptions(bootstrap), timeoutMs })
      writeMeshState(paths, { meshId: w.meshId, members: w.members, datasets: w.datasets })
      writeConfig(dir, { site, datasets: [{ id: newDatasetId(), name, engine: 'sqlite', path: file }], bootstrap, status: DEFAULT_THRESHOLDS, logLevel: 'info' }, (f, t) =>
        writeFileAtomic(f, t)
      )
      return w
    })
    out(`Joined the mesh as ${site}: ${welcome.members.length} members, ${welcome.datasets.length} datasets to hold.`)
    out(`It protects ${file} as dataset "${name}".`)
    out('')
    out(`Next: mesh start --dir ${dir}`)
    return 0
  }
}
