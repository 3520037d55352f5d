import { MeshError } from '../../protocol/index.ts'
import { count } from '../../node/util.ts'
import { readConfig, resolveDir } from '../config.ts'
import { askRunningNode, out, parse, type Command } from './common.ts'

export const command: Command = {
  usage: `mesh resync DATASET --dir DIR [--json]

At the origin of DATASET: appends a fresh copy of its whole database to the log, taken online in short read
transactions (the application keeps writing), and marked in mesh log. Every copy deletes its rows and takes
them from this copy, so each becomes exact from it. It mends a log that is itself wrong: mesh status shows a
copy that differs from the origin's checkpoint while mesh verify finds that copy equal to the log. (A copy that
differs from the log is mended at its own site by mesh repair.) A checkpoint follows once the database is idle.
The history before it stays: mesh restore to an earlier position gives the state the log held then. The node
must be running.`,
  summary: 'append a fresh copy of the whole database to the log, for a log that is itself wrong',
  async run(args) {
    const { values, positionals } = parse('resync', args, { json: { type: 'boolean' } }, true)
    if (positionals.length !== 1)
      throw MeshError.USAGE('name one dataset', { hint: 'Try: mesh resync DATASET --dir DIR' })
    const dir = resolveDir(values.dir)
    readConfig(dir)
    const res = await askRunningNode<{
      resync: { dataset: string; seq: number; rows: number; checkpoint: number | null }
    }>(dir, { cmd: 'resync', dataset: positionals[0] }, 30 * 60_000)
    const r = res.resync
    if (values.json) out(JSON.stringify(r))
    else {
      out(
        `${r.dataset}: a fresh copy of the whole database (${count(r.rows, 'row')}) appended to the log at ` +
          `position ${r.seq}.`
      )
      out(
        r.checkpoint === null
          ? 'The database did not go idle for a checkpoint yet; the periodic one follows. ' +
              'mesh status at each site then shows whether its copy matches.'
          : `Checkpoint at position ${r.checkpoint}: mesh status at each site shows whether its copy matches it.`
      )
    }
    return 0
  }
}
