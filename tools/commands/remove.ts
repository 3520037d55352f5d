import { MeshError } from '../../protocol/index.ts'
import { readConfig, resolveDir } from '../config.ts'
import { askRunningNode, out, parse, type Command } from './common.ts'

export const usage = `mesh remove SITE --dir DIR [--reason TEXT] [--json]

Takes SITE out of the mesh (a stolen till PC, a closed shop): this site signs the removal, and every site
refuses SITE's key as soon as it hears of it, closes its connections and sends it nothing more. What SITE
already holds it keeps; its datasets stay held by every other site, and \`mesh promote DATASET\` at one of
them makes a dataset writable there. A removed site is never let back in: to bring the place back, give it
a new join code (\`mesh invite\`) and a new data directory.
  --reason TEXT  shown at every site (default: none)
  --json         print the result as one JSON object

Run it at any full member other than SITE; the node must be running (\`mesh start\`).`

export const command: Command = {
  usage,
  summary: 'remove a site from the mesh (its key is refused everywhere)',
  async run(args) {
    const { values, positionals } = parse(
      'remove',
      args,
      { reason: { type: 'string' }, json: { type: 'boolean' } },
      true
    )
    if (positionals.length !== 1) {
      throw MeshError.USAGE(positionals.length === 0 ? 'name the site to remove' : 'remove one site at a time', {
        hint: 'Try: mesh remove SITE --dir DIR (mesh status lists the sites)'
      })
    }
    const dir = resolveDir(values.dir)
    const cfg = readConfig(dir)
    if (positionals[0] === cfg.site) {
      throw MeshError.USAGE(`${cfg.site} is this site: a site does not remove itself`, {
        hint: `Try: mesh remove ${cfg.site} --dir DIR at another member site`
      })
    }
    const res = await askRunningNode<{ removed: { site: string; key: string } }>(
      dir,
      { cmd: 'remove', site: positionals[0], ...(values.reason ? { reason: values.reason } : {}) },
      30_000
    )
    if (values.json) {
      out(JSON.stringify({ removed: true, ...res.removed }))
      return 0
    }
    out(`${res.removed.site} is removed from the mesh: every site refuses its key as soon as it hears of it.`)
    out(`Its datasets stay held by the other sites; \`mesh status\` says which need \`mesh promote\`.`)
    return 0
  }
}
