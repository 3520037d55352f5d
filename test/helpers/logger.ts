import type { Logger } from '../../adapters/index.ts'

/** A logger that keeps what it is told, for tests that assert a warning was given. */
export function memoryLogger(): Logger & {
  lines: Array<{ level: string; msg: string; fields?: Record<string, unknown> }>
} {
  const lines: Array<{ level: string; msg: string; fields?: Record<string, unknown> }> = []
  const at = (level: string) => (msg: string, fields?: Record<string, unknown>) => {
    lines.push({ level, msg, fields })
  }
  return { lines, debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') }
}
