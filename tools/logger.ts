/**
 * The logger handed to node/ and adapters/: pino, human-readable on the terminal (pino-pretty) and JSON lines
 * in the data directory's log files. Only messages and fields the code passes are written; no key or secret
 * is ever passed to it.
 *
 * The files rotate by size with pino-roll (pino's own rotating destination), so that a node left running for
 * years never fills its disk: DIR/node.1.log, node.2.log, ... up to `maxLogMB` each, the newest
 * `keepLogs` + 1 kept, and DIR/current.log a link to the one being written.
 */
import fs from 'node:fs'
import { createRequire } from 'node:module'
import path from 'node:path'
import pino from 'pino'
import pretty from 'pino-pretty'
import type { Logger } from '../adapters/index.ts'

export interface LoggerOptions {
  level: string
  /** Also append JSON lines to DIR/node.log. */
  dir?: string
  /** Print to stderr (pretty unless json is true). */
  terminal?: boolean
  json?: boolean
  /** The size at which the log file is rotated, in MB (default 10), and how many older files are kept (4). */
  maxLogMB?: number
  keepLogs?: number
}

const require = createRequire(import.meta.url)

type RollingStream = NodeJS.WritableStream & { flushSync(): void }
/** pino-roll: a CommonJS module without types; resolved at run time. */
function loadRoll(): ((o: Record<string, unknown>) => Promise<RollingStream>) | null {
  try {
    return require('pino-roll')
  } catch {
    return null
  }
}

export async function createLogger(opts: LoggerOptions): Promise<Logger & { flush(): void }> {
  const streams: pino.StreamEntry[] = []
  if (opts.terminal !== false) {
    streams.push({
      level: opts.level as pino.Level,
      stream: opts.json
        ? process.stderr
        : pretty({
            destination: 2,
            colorize: process.stderr.isTTY,
            translateTime: 'SYS:HH:MM:ss',
            ignore: 'pid,hostname',
            singleLine: true,
            sync: true
          })
    })
  }
  const roll = loadRoll()
  if (opts.dir) {
    fs.mkdirSync(opts.dir, { recursive: true })
    const stream = roll
      ? await roll({
          file: path.join(opts.dir, 'node'),
          extension: '.log',
          size: `${Math.max(1, Math.round((opts.maxLogMB ?? 10) * 1024))}k`,
          limit: { count: opts.keepLogs ?? 4 },
          symlink: true,
          sync: true,
          mode: 0o600
        })
      : pino.destination({ dest: path.join(opts.dir, 'node.log'), append: true, sync: true, mode: 0o600 })
    streams.push({ level: opts.level as pino.Level, stream })
  }
  const log = pino({ level: opts.level, base: undefined }, pino.multistream(streams))
  if (opts.dir && !roll) log.warn({ hint: 'Install the npm package pino-roll.' }, 'node.log is not rotated')
  return {
    debug: (msg, fields) => log.debug(fields ?? {}, msg),
    info: (msg, fields) => log.info(fields ?? {}, msg),
    warn: (msg, fields) => log.warn(fields ?? {}, msg),
    error: (msg, fields) => log.error(fields ?? {}, msg),
    flush: () => log.flush()
  }
}
