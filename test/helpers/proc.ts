/** Child processes for tests: tools/proc.ts, started in the repository's root with this process's environment. */
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { startNode, type NodeProc } from '../../tools/proc.ts'

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..')

export type Child = NodeProc

export function startTs(script: string, args: string[], opts: { env?: NodeJS.ProcessEnv } = {}): Child {
  return startNodeProcess(['--import', 'tsx', path.join(ROOT, script), ...args], script, opts)
}

/** Starts `node ARGV...`; `label` names it in timeout messages. */
export function startNodeProcess(argv: string[], label: string, opts: { env?: NodeJS.ProcessEnv } = {}): Child {
  return startNode(argv, { label, cwd: ROOT, env: { ...process.env, ...opts.env } })
}
