import { MeshError } from '../../protocol/index.ts'
import { readConfig, resolveDir } from '../config.ts'
import { askRunningNode, out, parse, type Command } from './common.ts'

export const usage = `mesh policy DATASET --promote SITE[,SITE...] --dir DIR [--json]

Sets which sites may promote DATASET (\`mesh promote\`): by default any site holding a full copy may. The
policy is signed by this site and carried to every site, which refuses a promotion by any other site.
  --promote SITE,...   the sites that may promote it (full members), e.g. --promote office
  --promote any        back to the default: any full member
  --json               print the result as one JSON object

Only the dataset's origin may set it; the node must be running (\`mesh start\`).`

export const command: Command = {
  usage,
  summary: 'set which sites may promote a dataset',
  async run(args) {
    const { values, positionals } = parse(
      'policy',
      args,
      { promote: { type: 'string' }, json: { type: 'boolean' } },
      true
    )
    const hint = 'Try: mesh policy DATASET --promote office --dir DIR'
    if (positionals.length !== 1) {
      throw MeshError.USAGE(positionals.length === 0 ? 'name the dataset' : 'one dataset at a time', { hint })
    }
    if (!values.promote) throw MeshError.USAGE('--promote SITE[,SITE...] or --promote any is required', { hint })
    const sites = values.promote
      .split(',')
      .map((x) => x.trim())
      .filter((x) => x !== '')
    if (sites.length === 0 || (sites.includes('any') && sites.length > 1)) {
      throw MeshError.USAGE('--promote takes site names, or any alone', { hint })
    }
    const dir = resolveDir(values.dir)
    readConfig(dir)
    const res = await askRunningNode<{ policy: { dataset: string; promote: string[] } }>(
      dir,
      { cmd: 'policy', dataset: positionals[0], promote: sites },
      30_000
    )
    if (values.json) {
      out(JSON.stringify(res.policy))
      return 0
    }
    const who = res.policy.promote[0] === 'any' ? 'any full member' : res.policy.promote.join(', ')
    out(`${res.policy.dataset}: may be promoted by ${who}. Every site checks it from now on.`)
    return 0
  }
}
