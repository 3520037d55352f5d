import { MeshError, decodeJoinCode } from '../../protocol/index.ts'
import { createDataDir, createSiteKey, redeemJoinCode, sitePaths, writeMeshState } from '../../node/index.ts'
import { networkOptions, writeConfig, CONFIG_FILE } from '../config.ts'
import { out, parse, parseDuration, type Command } from './common.ts'
import { newSite, shownSource, SITE_OPTIONS } from './init.ts'

export const usage =
  `mesh join CODE --dir DIR --site NAME (--sqlite PATH | --postgres URL) [--capture triggers] [--dataset NAME] ` +
  `[--replica-postgres URL] [--bootstrap HOST:PORT[,...]] [--timeout 60s]

Adds this site to a mesh with a join code from \`mesh invite\`, protecting one database (see mesh init for
--sqlite, --postgres, --capture and --replica-postgres). The inviting site's node must be running.
  --timeout D   how long to look for the inviting site (default 60s)`

export const command: Command = {
  usage,
  summary: 'join a mesh with a join code',
  async run(args) {
    const { values, positionals } = parse('join', args, { ...SITE_OPTIONS, timeout: { type: 'string' } }, true)
    const example = 'Try: mesh join bm1-... --dir DIR --site shop-south --sqlite /path/to/shop.db'
    if (positionals.length !== 1)
      throw MeshError.USAGE(positionals.length === 0 ? 'the join code is missing' : 'give exactly one join code', {
        hint: example
      })
    const code = decodeJoinCode(positionals[0])
    const { dir, config, setUp, undo } = await newSite(values, example)
    let warnings: string[] = []
    const { site, bootstrap, datasets } = config
    const { name } = datasets[0]
    const file = shownSource(datasets[0])
    const timeoutMs = parseDuration(values.timeout ?? '60s', '--timeout') * 1000
    const welcome = await createDataDir(dir, CONFIG_FILE, async () => {
      warnings = await setUp()
      try {
        const paths = sitePaths(dir)
        const keyPair = createSiteKey(paths)
        out(`Looking for the inviting site${bootstrap ? ` via ${bootstrap.join(',')}` : ' on the public DHT'}...`)
        // An expired code is refused here, before any network work, and the directory is removed again.
        const w = await redeemJoinCode({ code, site, keyPair, network: networkOptions(bootstrap), timeoutMs })
        writeMeshState(paths, { meshId: w.meshId, members: w.members, datasets: w.datasets, local: [] })
        writeConfig(dir, config)
        return w
      } catch (err) {
        // Nothing may be left holding WAL at the database: the slot and publication go again.
        await undo()
        throw err
      }
    })
    out(`Joined the mesh as ${site}: ${welcome.members.length} members, ${welcome.datasets.length} datasets to hold.`)
    out(`It protects ${file} as dataset "${name}".`)
    for (const w of warnings) out(`Warning: ${w}`)
    out('')
    out(`Next: mesh start --dir ${dir}`)
    return 0
  }
}
