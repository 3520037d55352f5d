import { MeshError } from '../../protocol/index.ts'
import type { VerifyResult } from '../../node/state.ts'
import { readConfig, resolveDir } from '../config.ts'
import { askRunningNode, out, parse, type Command } from './common.ts'

function make(name: 'verify' | 'repair'): Command {
  const usage =
    name === 'verify'
      ? `mesh verify DATASET --dir DIR [--json]

Proves this site's copy of DATASET holds exactly what the log says: applying pauses, the log is replayed from
the nearest snapshot (built from the log, never from the copy) or its start, up to the copy's position, into a
scratch copy (a file; for PostgreSQL a database mesh_verify_<id> on the copy's server, dropped afterwards),
and the two are compared row by row. Names the tables and keys where
the copy parts from the log, and between which positions it parted: after the last checkpoint (or verify) it
matched, by the first that showed the difference. Exit 0 when it matches, 2 when it differs (then: mesh
repair). The node must be running.`
      : `mesh repair DATASET --dir DIR [--json]

Does what mesh verify does, and where the copy differs from the log, puts the log's rows in place in one
transaction; applying then goes on. Exit 0 when the copy matches the log afterwards.`
  return {
    usage,
    summary:
      name === 'verify'
        ? "prove this site's copy equals the log, or name where it differs"
        : "rebuild this site's copy from the log where it differs",
    async run(args) {
      const { values, positionals } = parse(name, args, { json: { type: 'boolean' } }, true)
      if (positionals.length !== 1)
        throw MeshError.USAGE('name one dataset', { hint: `Try: mesh ${name} DATASET --dir DIR` })
      const dir = resolveDir(values.dir)
      readConfig(dir)
      const v = (
        await askRunningNode<{ verify: VerifyResult }>(dir, { cmd: name, dataset: positionals[0] }, 30 * 60_000)
      ).verify
      if (values.json) out(JSON.stringify(v))
      else if (v.tables.length === 0) out(`${v.dataset}: this site's copy equals the log at position ${v.seq}.`)
      else {
        out(`${v.dataset}: this site's copy ${v.repaired ? 'differed' : 'differs'} from the log at position ${v.seq}:`)
        for (const t of v.tables)
          out(`  ${t.table}: ${t.missing} missing, ${t.extra} extra, ${t.changed} changed; keys ${t.keys.join('; ')}`)
        if (v.parted) {
          out(
            `  it parted from the log after position ${v.parted.lastEqual ?? 0} ` +
              `(${v.parted.lastEqual === null ? 'never proven equal' : 'the last checkpoint or verify it matched'}) ` +
              `and by position ${v.parted.firstDiffers} (the first that showed it)`
          )
        }
        out(
          v.repaired
            ? 'Repaired: the copy now holds exactly what the log says.'
            : `Run: mesh repair ${v.dataset} --dir ${dir}`
        )
      }
      return v.ok ? 0 : 2
    }
  }
}

export const verify = make('verify')
export const repair = make('repair')
export const command = verify
