/**
 * The `mesh` command line: one file per command under tools/commands/. Only tools/ reads the environment,
 * the configuration and prints.
 */
import { createRequire } from 'node:module'
// Only what every start needs is imported here: each command's module (and all it imports) loads when it runs.
import type { Command } from './commands/common.ts'
import { EXIT_USAGE } from './exit.ts'

const require = createRequire(import.meta.url)
const pkg = require('branchmesh/package.json') as { version: string }

const COMMANDS: Record<string, () => Promise<{ command: Command }>> = {
  init: () => import('./commands/init.ts'),
  invite: () => import('./commands/invite.ts'),
  join: () => import('./commands/join.ts'),
  start: () => import('./commands/start.ts'),
  status: () => import('./commands/status.ts'),
  dashboard: () => import('./commands/dashboard.ts'),
  promote: () => import('./commands/promote.ts'),
  handover: () => import('./commands/handover.ts'),
  accept: () => import('./commands/accept.ts'),
  log: () => import('./commands/log.ts'),
  restore: () => import('./commands/restore.ts'),
  checkpoint: () => import('./commands/checkpoint.ts'),
  resync: () => import('./commands/resync.ts'),
  encrypt: () => import('./commands/encrypt.ts'),
  verify: () => import('./commands/verify.ts'),
  repair: async () => ({ command: (await import('./commands/verify.ts')).repair }),
  remove: () => import('./commands/remove.ts'),
  'rotate-key': () => import('./commands/rotate-key.ts'),
  policy: () => import('./commands/policy.ts'),
  demo: () => import('./commands/demo.ts'),
  dht: () => import('./commands/dht.ts'),
  service: () => import('./commands/service.ts'),
  alerts: () => import('./commands/alerts.ts')
}

async function usage(): Promise<string> {
  const rows: string[] = []
  for (const [name, load] of Object.entries(COMMANDS))
    rows.push(`  ${name.padEnd(10)} ${(await load()).command.summary}`)
  return `mesh ${pkg.version}: every location a live, verifiable backup of every other.

Usage: mesh <command> [options]

Commands:
${rows.join('\n')}
  help       mesh help COMMAND shows a command's options
  version    print the version

Every command takes --dir DIR (default: MESH_DIR, then a per-user folder) and --bootstrap HOST:PORT[,...]
(default: the bootstrap of the data directory's config.json, then MESH_BOOTSTRAP, then the public DHT).`
}

/** An unknown command: says so, with the closest known one when one is close. */
async function unknown(cmd: string): Promise<number> {
  const { nearest } = await import('./suggest.ts')
  const near = nearest(cmd, [...Object.keys(COMMANDS), 'help', 'version'])
  process.stderr.write(`mesh: unknown command '${cmd}'.\n${near ? `Did you mean mesh ${near}? ` : ''}Try: mesh help\n`)
  return EXIT_USAGE
}

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv
  // `mesh` alone is a usage error: the help, and exit 64, so a script that forgot its command notices.
  if (cmd === undefined) {
    process.stderr.write(`${await usage()}\n`)
    return EXIT_USAGE
  }
  if (cmd === 'help' || cmd === '--help' || cmd === '-h') {
    const topic = rest[0]
    if (topic === undefined) {
      process.stdout.write(`${await usage()}\n`)
      return 0
    }
    if (COMMANDS[topic]) {
      process.stdout.write(`${(await COMMANDS[topic]()).command.usage}\n`)
      return 0
    }
    return unknown(topic)
  }
  if (cmd === 'version' || cmd === '--version') {
    process.stdout.write(`${pkg.version}\n`)
    return 0
  }
  const load = COMMANDS[cmd]
  if (!load) return unknown(cmd)
  const { command } = await load()
  if (rest.includes('--help') || rest.includes('-h')) {
    process.stdout.write(`${command.usage}\n`)
    return 0
  }
  try {
    return await command.run(rest)
  } catch (err) {
    const { printError } = await import('./commands/common.ts')
    return printError(err)
  }
}
