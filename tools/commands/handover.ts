import { MeshError } from '../../protocol/index.ts'
import { askNode } from '../../node/index.ts'
import type { HandoverResult } from '../../node/handover.ts'
import { readConfig, resolveDir } from '../config.ts'
import { nodeError, notRunning, out, parse, type Command, type NodeError } from './common.ts'

export const usage = `mesh handover DATASET --to SITE --dir DIR [--timeout SECONDS] [--json]

A planned switch of origin, run at the origin: this site stops taking the writes of DATASET, captures what is
pending, seals its log, and signs its consent that SITE starts the next epoch exactly there. SITE takes over
as soon as it applied everything; this site then follows it, with nothing kept aside and no --force.

The application's writes to this site's database are refused from the first step on (SQLite: "no such
function: branchmesh_replica_is_read_only"): point it at SITE's database (printed by SITE's \`mesh status\`).
If SITE has not taken over within the timeout (default 60 s), the handover is withdrawn, this site takes
writes again, and the command fails. PostgreSQL datasets cannot be handed over yet (writes cannot be stopped).

  --to SITE          the site that becomes the origin (a full member, connected, holding the dataset)
  --timeout SECONDS  how long to wait for SITE before taking writes again (default 60, at least 50;
                     SITE itself gives up 40 s after the handover was signed)
  --json             print the result (or the refusal) as one JSON object

The node must be running at this site (\`mesh start\`).`

export const command: Command = {
  usage,
  summary: 'hand a dataset over to another site (a planned switch; run at the origin)',
  async run(args) {
    const { values, positionals } = parse(
      'handover',
      args,
      { to: { type: 'string' }, timeout: { type: 'string' }, json: { type: 'boolean' } },
      true
    )
    if (positionals.length !== 1 || !values.to) {
      throw MeshError.USAGE(positionals.length !== 1 ? 'name the dataset to hand over' : 'name the site with --to', {
        hint: 'Try: mesh handover DATASET --to SITE --dir DIR (mesh status lists the datasets and sites)'
      })
    }
    const seconds = values.timeout === undefined ? 60 : Number(values.timeout)
    if (!Number.isFinite(seconds) || seconds < 50) {
      throw MeshError.USAGE(`--timeout ${values.timeout} is not a number of seconds of 50 or more`, {
        hint: 'Try: mesh handover DATASET --to SITE --timeout 60 (the named site has 40 s to take over)'
      })
    }
    const dir = resolveDir(values.dir)
    readConfig(dir)
    if (!values.json) out(`Handing ${positionals[0]} over to ${values.to}: stopping writes here, sealing the log...`)
    const res = (await askNode(
      dir,
      { cmd: 'handover', dataset: positionals[0], to: values.to, timeoutMs: seconds * 1000 },
      seconds * 1000 + 60_000
    )) as { handover?: HandoverResult; error?: NodeError } | null
    if (res === null) throw notRunning(dir)
    if (res.error) {
      const e = nodeError(res.error)
      if (values.json) {
        out(JSON.stringify({ handedOver: false, error: { code: e.code, message: e.message, hint: e.hint ?? null } }))
        return 1
      }
      throw e
    }
    const h = res.handover!
    if (values.json) {
      out(JSON.stringify({ handedOver: true, ...h }))
      return 0
    }
    for (const s of h.steps) out(`  ${(s.ms / 1000).toFixed(1).padStart(6)} s  ${s.step}`)
    out(`${h.dataset}: ${h.to} is the origin now (epoch ${h.epoch}, from entry ${h.sealedAt}); nothing diverged.`)
    out(`This site's database is a read-only copy now: ${h.path}`)
    return 0
  }
}
