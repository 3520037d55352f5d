import { MeshError } from '../../protocol/index.ts'
import { askNode } from '../../node/index.ts'
import { readConfig, resolveDir } from '../config.ts'
import { nodeError, notRunning, out, parse, type Command, type NodeError } from './common.ts'

export const usage = `mesh accept DATASET --epoch N --dir DIR [--json]

Follows a promotion this site refused or holds pending (mesh status shows it as CRIT: ORIGIN_LIVE,
BRANCH_POINT, UNSIGNED_PROMOTION, ...): a person decides that epoch N of DATASET is the one to follow here,
even though it may drop writes or take the dataset from a live origin. Only this site follows it; each site
decides for itself. The alarms about it at this site are cleared. The node never does this by itself.

  --epoch N  the epoch to accept
  --json     print the result (or the refusal) as one JSON object

The node must be running at this site (\`mesh start\`).`

export const command: Command = {
  usage,
  summary: 'follow a promotion this site refused or holds pending (a person decides)',
  async run(args) {
    const { values, positionals } = parse(
      'accept',
      args,
      { epoch: { type: 'string' }, json: { type: 'boolean' } },
      true
    )
    const epoch = Number(values.epoch)
    if (positionals.length !== 1 || values.epoch === undefined || !Number.isSafeInteger(epoch) || epoch < 1) {
      throw MeshError.USAGE(
        positionals.length !== 1 ? 'name the dataset' : 'give the epoch to accept with --epoch N (1 or more)',
        { hint: 'Try: mesh accept DATASET --epoch N --dir DIR (mesh status shows the refused epochs)' }
      )
    }
    const dir = resolveDir(values.dir)
    readConfig(dir)
    const res = (await askNode(dir, { cmd: 'accept', dataset: positionals[0], epoch })) as {
      accepted?: { dataset: string; epoch: number; origin: string }
      error?: NodeError
    } | null
    if (res === null) throw notRunning(dir)
    if (res.error) {
      const e = nodeError(res.error)
      if (values.json) {
        out(JSON.stringify({ accepted: false, error: { code: e.code, message: e.message, hint: e.hint ?? null } }))
        return 1
      }
      throw e
    }
    const a = res.accepted!
    if (values.json) out(JSON.stringify({ accepted: true, ...a }))
    else out(`${a.dataset}: this site follows epoch ${a.epoch} (origin ${a.origin}) now.`)
    return 0
  }
}
