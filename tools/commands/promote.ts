import { MeshError } from '../../protocol/index.ts'
import { askNode, type PromoteResult } from '../../node/index.ts'
import { readConfig, resolveDir } from '../config.ts'
import { nodeError, notRunning, out, parse, type Command, type NodeError } from './common.ts'

export const usage = `mesh promote DATASET --dir DIR [--force] [--json]

Makes this site the origin of DATASET when its origin is lost: this site's copy becomes the live database
(nothing is copied, whatever its size), the dataset's next epoch starts here, and every other site follows it
without a command of its own. Prints the database file the business application must use from now on.

The old origin, when it comes back, stops taking writes ("fenced"): the changes it made after this point are
kept in a folder under its data directory and named in its \`mesh status\`, never applied and never dropped.
To move the origin while it is running (a planned switch, or fail back), run \`mesh handover\` at the origin.

The promotion is signed with this site's key and every site checks it before following (README, Trust): a
promotion made while the origin is running and connected is refused everywhere, --force or not.

Refused, with what to do, when: the origin is connected and healthy; this site applied less than another
reachable site holds; its copy is still being made; DATASET is unknown; this site is already the origin.
  --force  promote a copy that is behind or still being made (what it lacks stays in the old log; sites that
           applied more refuse it until a person runs \`mesh accept\` there); never against a healthy origin
  --json   print the result (or the refusal) as one JSON object

The node must be running at this site (\`mesh start\`).`

export const command: Command = {
  usage,
  summary: 'make this site the origin of a dataset (failover, fail back)',
  async run(args) {
    const { values, positionals } = parse(
      'promote',
      args,
      { force: { type: 'boolean' }, json: { type: 'boolean' } },
      true
    )
    if (positionals.length !== 1) {
      throw MeshError.USAGE(
        positionals.length === 0 ? 'name the dataset to promote' : 'promote one dataset at a time',
        { hint: 'Try: mesh promote DATASET --dir DIR (mesh status lists the datasets)' }
      )
    }
    const dir = resolveDir(values.dir)
    readConfig(dir)
    const res = (await askNode(
      dir,
      { cmd: 'promote', dataset: positionals[0], force: values.force === true },
      120_000
    )) as { promoted?: PromoteResult; error?: NodeError } | null
    if (res === null) throw notRunning(dir)
    if (res.error) {
      const e = nodeError(res.error)
      if (values.json) {
        out(JSON.stringify({ promoted: false, error: { code: e.code, message: e.message, hint: e.hint ?? null } }))
        return 1
      }
      throw e
    }
    const p = res.promoted!
    if (values.json) {
      out(JSON.stringify({ promoted: true, ...p }))
      return 0
    }
    out(
      `${p.dataset}: this site is now the origin (epoch ${p.epoch}), continuing from entry ${p.branch} ` +
        `of ${p.previousOrigin}'s log${p.forced ? ' (forced)' : ''}.`
    )
    out(
      `Every other site checks the signed promotion and follows it; ${p.previousOrigin} is fenced when it comes back.`
    )
    out('')
    out('Point the business application at this database from now on:')
    out(`  ${p.path}`)
    return 0
  }
}
