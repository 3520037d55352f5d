/**
 * The `mesh` command line: one file per command under tools/commands/. Only tools/ reads the environment,
 * the configuration and prints.
 */
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const pkg = require('../package.json') as { version: string }

const USAGE = `mesh ${pkg.version}: every location a live, verifiable backup of every other.

Usage: mesh <command> [options]

Commands:
  version          print the version
  help             this text

The mesh commands (init, invite, join, start, status, demo) come with the mesh milestone; see README.md.`

export async function main(argv: string[]): Promise<number> {
  const [cmd] = argv
  if (cmd === undefined || cmd === 'help' || cmd === '--help' || cmd === '-h') {
    process.stdout.write(USAGE + '\n')
    return 0
  }
  if (cmd === 'version' || cmd === '--version') {
    process.stdout.write(pkg.version + '\n')
    return 0
  }
  process.stderr.write(`mesh: unknown command '${cmd}'.\nTry: mesh help\n`)
  return 64
}
