/** What every command shares: flag parsing (node:util parseArgs), the data directory, printing errors. */
import { parseArgs, type ParseArgsConfig } from 'node:util'
// Light modules only: every command imports this one (node/client.ts).
import { MeshError } from '../../protocol/errors.ts'
import { askNode, type LocalRequest } from '../../node/client.ts'
import { EXIT_ERROR, EXIT_USAGE } from '../exit.ts'
import { nearest } from '../suggest.ts'

export interface Command {
  usage: string
  summary: string
  run(args: string[]): Promise<number>
}

export { EXIT_ERROR, EXIT_USAGE }

/** The flags every command takes. */
export const COMMON_OPTIONS = {
  dir: { type: 'string' },
  bootstrap: { type: 'string' },
  help: { type: 'boolean', short: 'h' }
} as const

export function parse<T extends NonNullable<ParseArgsConfig['options']>>(
  command: string,
  args: string[],
  options: T,
  allowPositionals = false
): ReturnType<typeof parseArgs<{ options: typeof COMMON_OPTIONS & T; allowPositionals: boolean; strict: true }>> {
  try {
    return parseArgs({ args, options: { ...COMMON_OPTIONS, ...options }, allowPositionals, strict: true })
  } catch (err) {
    const message = (err as Error).message.replace(/\. To specify a positional argument.*$/s, '')
    // An unknown flag: the command's flag closest to it, if one is close.
    const typo = /Unknown option '(-{1,2})([^']+)'/.exec(message)
    const near = typo ? nearest(typo[2], Object.keys({ ...COMMON_OPTIONS, ...options })) : null
    throw MeshError.USAGE(message, {
      hint: `${near ? `Did you mean --${near}? ` : ''}Try: mesh help ${command}`
    })
  }
}

/** Prints an error the way every command does: what happened, then what to do. Returns the exit code. */
export function printError(err: unknown): number {
  if (err instanceof MeshError) {
    process.stderr.write(`mesh: ${err.message}\n`)
    if (err.hint) {
      const plain = err.code === 'USAGE' && /^(Try:|Did you mean)/.test(err.hint)
      process.stderr.write(`${plain ? '' : 'What to do: '}${err.hint}\n`)
    }
    return err.code === 'USAGE' ? EXIT_USAGE : EXIT_ERROR
  }
  process.stderr.write(`mesh: unexpected error: ${(err as Error)?.stack ?? String(err)}\n`)
  return EXIT_ERROR
}

export function out(line = ''): void {
  process.stdout.write(`${line}\n`)
}

/** Parses "24h", "30m", "7d", "90s" into seconds. */
export function parseDuration(text: string, flag: string): number {
  const m = /^(\d+)\s*(s|m|h|d)?$/.exec(text.trim())
  if (!m)
    throw MeshError.USAGE(`${flag} "${text}" is not a duration`, {
      hint: 'Give a number with s, m, h or d, e.g. 24h or 7d.'
    })
  const n = Number(m[1]) * { s: 1, m: 60, h: 3600, d: 86400 }[(m[2] ?? 's') as 's']
  if (n <= 0) throw MeshError.USAGE(`${flag} must be longer than 0`)
  return n
}

/** An error as the node answers it. */
export interface NodeError {
  code: string
  message: string
  hint?: string | null
  context?: Record<string, unknown>
}

/** An error the node answered with, as the MeshError it was there (its message without the code prefix). */
export function nodeError(e: NodeError): MeshError {
  return new MeshError(e.code, e.message.replace(/^[A-Z_]+: /, ''), { hint: e.hint ?? undefined, context: e.context })
}

/** Asks the node running on `dir`; null when none runs. An error it answers with is thrown. */
export async function askNodeIfRunning<T>(dir: string, req: LocalRequest, timeoutMs: number): Promise<T | null> {
  const res = (await askNode(dir, req, timeoutMs)) as (T & { error?: NodeError }) | null
  if (res?.error) throw nodeError(res.error)
  return res
}

/** The same for a command that needs the node: none running is NOT_RUNNING, saying how to start it. */
export async function askRunningNode<T>(dir: string, req: LocalRequest, timeoutMs: number): Promise<T> {
  const res = await askNodeIfRunning<T>(dir, req, timeoutMs)
  if (res === null) throw notRunning(dir)
  return res
}

export function notRunning(dir: string): MeshError {
  return MeshError.NOT_RUNNING(`no node is running on ${dir}`, {
    hint: `Start it first (mesh start --dir ${dir}), then run the command again.`
  })
}
