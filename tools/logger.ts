/**
 * The logger handed to node/ and adapters/: pino, human-readable on the terminal (pino-pretty) and JSON lines
 * in the data directory's node.log. Only messages and fields the code passes are written; no key or secret
 * is ever passed to it.
 */
import fs from 'node:fs'
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
}

export function createLogger(opts: LoggerOptions): Logger & { flush(): void } {
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
  if (opts.dir) {
    fs.mkdirSync(opts.dir, { recursive: true })
    streams.push({
      level: opts.level as pino.Level,
      stream: pino.destination({ dest: path.join(opts.dir, 'node.log'), append: true, sync: true, mode: 0o600 })
    })
  }
  const log = pino({ level: opts.level, base: undefined }, pino.multistream(streams))
  return {
    debug: (msg, fields) => log.debug(fields ?? {}, msg),
    info: (msg, fields) => log.info(fields ?? {}, msg),
    warn: (msg, fields) => log.warn(fields ?? {}, msg),
    error: (msg, fields) => log.error(fields ?? {}, msg),
    flush: () => log.flush()
  }
}
