import { MeshError } from '../../protocol/index.ts'
import { readConfig, resolveDir } from '../config.ts'
import { askRunningNode, out, parse, type Command } from './common.ts'

export const usage = `mesh rotate-key --dir DIR [--json]

Replaces this site's key (site.key) with a new one: the old key signs the change, the new key signs its
consent, and every site replaces the key of this site (and of the datasets it writes) as soon as it hears of
it; the old key is refused from then on. The node reconnects under the new key by itself.
  --json   print the result as one JSON object

The node must be running (\`mesh start\`).`

export const command: Command = {
  usage,
  summary: "replace this site's key",
  async run(args) {
    const { values, positionals } = parse('rotate-key', args, { json: { type: 'boolean' } }, true)
    if (positionals.length > 0) {
      throw MeshError.USAGE('mesh rotate-key takes no argument', { hint: 'Try: mesh rotate-key --dir DIR' })
    }
    const dir = resolveDir(values.dir)
    readConfig(dir)
    const res = await askRunningNode<{ rotated: { old: string; key: string } }>(dir, { cmd: 'rotate-key' }, 60_000)
    if (values.json) {
      out(JSON.stringify({ rotated: true, ...res.rotated }))
      return 0
    }
    out(`This site's key is now ${res.rotated.key.slice(0, 12)}… (was ${res.rotated.old.slice(0, 12)}…).`)
    out('Every site replaces it as soon as it hears of it; the old key is refused from then on.')
    return 0
  }
}
