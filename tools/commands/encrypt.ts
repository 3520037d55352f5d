import { MeshError } from '../../protocol/index.ts'
import { readConfig, resolveDir } from '../config.ts'
import { askRunningNode, out, parse, type Command } from './common.ts'

export const command: Command = {
  usage: `mesh encrypt DATASET --dir DIR [--json]

At the origin of DATASET, a dataset made before encryption existed (its logs are plaintext): makes its data
key (kept in DIR/keys, mode 0600), seals it to every full member, and encrypts the dataset's logs from its
next epoch on. The current log stays plaintext and readable; blind sites do not hold it. The next epoch
starts with a handover (mesh handover DATASET --to SITE here, then mesh handover DATASET --to THIS-SITE at SITE
to hand it back): nothing is lost, and from then on every log of the dataset is encrypted and blind sites hold
it. See UPGRADE.md. The node must be running.`,
  summary: 'encrypt a plaintext dataset’s logs from its next epoch on',
  async run(args) {
    const { values, positionals } = parse('encrypt', args, { json: { type: 'boolean' } }, true)
    if (positionals.length !== 1)
      throw MeshError.USAGE('name one dataset', { hint: 'Try: mesh encrypt DATASET --dir DIR' })
    const dir = resolveDir(values.dir)
    readConfig(dir)
    const res = await askRunningNode<{ encrypt: { dataset: string; from: number; epoch: number; already: boolean } }>(
      dir,
      { cmd: 'encrypt', dataset: positionals[0] },
      60_000
    )
    const r = res.encrypt
    if (values.json) out(JSON.stringify(r))
    else if (r.already && r.from <= r.epoch) out(`${r.dataset}: its logs are encrypted (from epoch ${r.from}).`)
    else {
      out(`${r.dataset}: its logs are encrypted from epoch ${r.from} on; the key is sealed to every full member.`)
      out(`Epoch ${r.epoch}, the current one, stays plaintext. Once mesh status shows no DATA_KEY_MISSING, start`)
      out('the next epoch with mesh handover (and hand it back if this site should stay the origin): see UPGRADE.md.')
    }
    return 0
  }
}
