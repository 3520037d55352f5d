/**
 * The `mesh` command line: one file per command under tools/commands/. Only tools/ reads the environment,
 * the configuration and prints.
 */
import { createRequire } from 'node:module'
import { type Command, printError, EXIT_USAGE } from './commands/common.ts'

const require = createRequire(import.meta.url)
const pkg = require('../package.json') as { version: string }

const COMMANDS: Record<string, () => Promise<{ command: Command }>> = {
  init: () => import('./commands/init.ts'),
  invite: () => import('./commands/invite.ts'),
  join: () => import('./commands/join.ts'),
  start: () => import('./commands/start.ts'),
  status: () => import('./commands/status.ts'),
  promote: () => import('./commands/promote.ts'),
  log: () => import('./commands/log.ts'),
  restore: () => import('./commands/restore.ts'),
  checkpoint: () => import('./commands/checkpoint.ts'),
  resync: () => import('./commands/resync.ts'),
  verify: () => import('./commands/verify.ts'),
  repair: async () => ({ command: (await import('./commands/verify.ts')).repair }),
  demo: () => import('./commands/demo.ts')
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

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv
  if (cmd === undefined || cmd === 'help' || cmd === '--help' || cmd === '-h') {
    const topic = rest[0]
    if (topic && COMMANDS[topic]) {
      process.stdout.write(`${(await COMMANDS[topic]()).command.usage}\n`)
      return 0
    }
    process.stdout.write(`${await usage()}\n`)
    return topic ? EXIT_USAGE : 0
  }
  if (cmd === 'version' || cmd === '--version') {
    process.stdout.write(`${pkg.version}\n`)
    return 0
  }
  const load = COMMANDS[cmd]
  if (!load) {
    process.stderr.write(`mesh: unknown command '${cmd}'.\nTry: mesh help\n`)
    return EXIT_USAGE
  }
  const { command } = await load()
  if (rest.includes('--help') || rest.includes('-h')) {
    process.stdout.write(`${command.usage}\n`)
    return 0
  }
  try {
    return await command.run(rest)
  } catch (err) {
    return printError(err)
  }
}
