import { MeshError, decodeJoinCode } from '../../protocol/index.ts'
import {
  createDataDir,
  createSiteKey,
  keepWelcome,
  redeemJoinCode,
  sitePaths,
  DEFAULT_GUARD,
  DEFAULT_SNAPSHOTS,
  DEFAULT_THRESHOLDS
} from '../../node/index.ts'
import {
  checkSiteName,
  linkFlags,
  networkOptions,
  resolveBootstrap,
  resolveDir,
  writeConfig,
  CONFIG_FILE,
  type SiteConfig
} from '../config.ts'
import { out, parse, parseDuration, type Command } from './common.ts'
import { newSite, shownSource, SITE_OPTIONS } from './init.ts'

export const usage =
  `mesh join CODE --dir DIR --site NAME (--sqlite PATH | --postgres URL) [--capture triggers] [--dataset NAME] ` +
  `[--replica-postgres URL] [--batch-seconds N] [--bootstrap HOST:PORT[,...]] [--up-kbps N] [--down-kbps N] ` +
  `[--timeout 60s]

Adds this site to a mesh with a join code from \`mesh invite\`, protecting one database (see mesh init for
--sqlite, --postgres, --capture, --replica-postgres, --batch-seconds, and --up-kbps and --down-kbps, the
bandwidth budget). The inviting site's node must be running, or start within --timeout: until then the join
looks for it again every few seconds.
With a code from \`mesh invite --blind\` the site is a blind site and takes no database: it stores and
serves every encrypted log of the mesh and can read none of them. With a code from \`mesh invite --observer\`,
an observer, also without a database: it sees every site and dataset and holds no log and no data.
  --timeout D   how long to look for the inviting site (default 60s)`

/** `shop-south` for a site's `shop` when `shop` is taken; `shop-south-2` and on when that is too. */
export function uniqueName(name: string, site: string, taken: Set<string>): string {
  const base = name.endsWith(`-${site}`) ? name : `${name}-${site}`
  let candidate = base
  for (let i = 2; taken.has(candidate); i++) candidate = `${base}-${i}`
  return candidate
}

/** "1 member", "3 members". */
const count = (n: number, what: string) => `${n} ${what}${n === 1 ? '' : 's'}`

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
    const { dir, config, setUp, undo } = code.role
      ? blindSite(
          values,
          `Try: mesh join bm1-... --dir DIR --site ${code.role === 'blind' ? 'offsite-box' : 'laptop'}`,
          code.role
        )
      : await newSite(values, example)
    let warnings: string[] = []
    let renamed = ''
    const { site, bootstrap, datasets } = config
    const timeoutMs = parseDuration(values.timeout ?? '60s', '--timeout') * 1000
    const welcome = await createDataDir(dir, CONFIG_FILE, async () => {
      warnings = await setUp()
      try {
        const paths = sitePaths(dir)
        const keyPair = createSiteKey(paths)
        out(`Looking for the inviting site${bootstrap ? ` via ${bootstrap.join(',')}` : ' on the public DHT'}...`)
        // An expired code is refused here, before any network work, and the directory is removed again.
        const w = await redeemJoinCode({ code, site, keyPair, network: networkOptions(bootstrap), timeoutMs })
        // Dataset names are unique in the mesh, so that every command and hint naming one picks one dataset.
        const taken = datasets.length > 0 ? w.datasets.find((d) => d.name === datasets[0].name) : undefined
        if (taken) {
          datasets[0].name = uniqueName(datasets[0].name, site, new Set(w.datasets.map((d) => d.name)))
          renamed = `dataset name "${taken.name}" is already used in this mesh (by ${taken.originSite})`
        }
        keepWelcome(paths, w)
        writeConfig(dir, config)
        return w
      } catch (err) {
        // Nothing may be left holding WAL at the database: the slot and publication go again.
        await undo()
        throw err
      }
    })
    const held = `${count(welcome.members.length, 'member')}, ${count(welcome.datasets.length, 'dataset')} to hold`
    out(`Joined the mesh as ${site}: ${held}.`)
    const me = welcome.members.find((m) => m.site === site)
    if (me?.role === 'blind') {
      out('This is a blind site: it stores and serves the encrypted logs and can read none of them.')
    } else if (me?.role === 'observer') {
      out('This is an observer: it sees every site and dataset (mesh status, mesh dashboard) and holds no data.')
    } else if (datasets.length > 0) {
      if (renamed) out(`The ${renamed}, so this site's is named "${datasets[0].name}".`)
      out(`It protects ${shownSource(datasets[0])} as dataset "${datasets[0].name}".`)
    }
    for (const w of warnings) out(`Warning: ${w}`)
    out('')
    out(`Next: mesh start --dir ${dir}`)
    return 0
  }
}

/**
 * A blind site's or an observer's configuration: no database of its own (it captures nothing and holds no
 * replica), so none of the database flags applies; nothing is written yet.
 */
function blindSite(values: Record<string, unknown>, example: string, role: 'blind' | 'observer') {
  const what = role === 'blind' ? 'a blind site' : 'an observer'
  for (const flag of ['sqlite', 'postgres', 'capture', 'dataset', 'replica-postgres', 'batch-seconds']) {
    if (values[flag] !== undefined) {
      throw MeshError.USAGE(`--${flag} does not apply: this join code is for ${what}, which holds no database`, {
        hint: example
      })
    }
  }
  if (typeof values.site !== 'string') throw MeshError.USAGE('--site NAME is required', { hint: example })
  const config: SiteConfig = {
    // A blind site or an observer appends nothing, so batching is none of its business; a budget still is.
    link: { batchSeconds: 0, ...linkFlags(values as { 'up-kbps'?: string; 'down-kbps'?: string }) },
    site: checkSiteName(values.site),
    datasets: [],
    bootstrap: resolveBootstrap(values.bootstrap as string | undefined, null),
    status: DEFAULT_THRESHOLDS,
    logLevel: 'info',
    replicaPostgres: null,
    snapshots: { ...DEFAULT_SNAPSHOTS },
    checkpointSeconds: 600,
    guard: { ...DEFAULT_GUARD }
  }
  const none = async (): Promise<string[]> => []
  return { dir: resolveDir(values.dir as string | undefined), config, setUp: none, undo: async () => {} }
}
