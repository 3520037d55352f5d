import { MeshError } from '../../protocol/index.ts'
import { count } from '../../node/util.ts'
import { readConfig, resolveDir } from '../config.ts'
import { askRunningNode, out, parse, type Command } from './common.ts'

export const command: Command = {
  usage: `mesh checkpoint DATASET --dir DIR [--json]

At the origin of DATASET: appends a checkpoint to its log now, a digest of every row it captures, taken when
its database is idle so that it describes exactly the log's position. Every copy computes its own digest when
it applies the checkpoint, and mesh status at each site then shows whether it matches. The origin also takes
one by itself when idle, every checkpointSeconds (config.json, default 600). The node must be running.`,
  summary: "append the origin's digest to the log now, for every copy to check itself against",
  async run(args) {
    const { values, positionals } = parse('checkpoint', args, { json: { type: 'boolean' } }, true)
    if (positionals.length !== 1)
      throw MeshError.USAGE('name one dataset', { hint: 'Try: mesh checkpoint DATASET --dir DIR' })
    const dir = resolveDir(values.dir)
    readConfig(dir)
    const res = await askRunningNode<{ checkpoint: { dataset: string; seq: number; rows: number } }>(
      dir,
      { cmd: 'checkpoint', dataset: positionals[0] },
      5 * 60_000
    )
    const c = res.checkpoint
    if (values.json) out(JSON.stringify(c))
    else {
      out(`${c.dataset}: checkpoint of position ${c.seq} appended (${count(c.rows, 'row')}).`)
      out('Each copy compares its own digest when it applies it; mesh status at each site shows whether it matches.')
    }
    return 0
  }
}
