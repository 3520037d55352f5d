/**
 * TEXT that is not valid UTF-8, read and written with its bytes.
 *
 * better-sqlite3 hands TEXT over as a JS string: bytes that are not valid UTF-8 come out as U+FFFD, and a
 * string parameter is written as its UTF-8. So rows are read on the fast path as they always were, and only a
 * row holding a string with U+FFFD is read again with each column's storage class and, for TEXT, its bytes
 * (`CAST(col AS BLOB)`); bytes that are valid UTF-8 (a real U+FFFD) become a string again, the rest RawText.
 * A RawText parameter is bound as its bytes and cast back to TEXT in the statement (`CAST(? AS TEXT)`), in a
 * variant of the statement prepared the first time that mix of parameters is seen.
 *
 * What it does not do: databases whose text encoding is UTF-16 (`PRAGMA encoding`) keep TEXT as JS strings,
 * as before (a lone surrogate survives in a JS string; CAST(... AS BLOB) there gives UTF-16 bytes).
 */
import { isUtf8 } from 'node:buffer'
import type Database from 'better-sqlite3'
import { RawText, type Value } from '../../protocol/index.ts'
import type { DB } from './common.ts'

/** Whether a row as better-sqlite3 read it may hold TEXT that was not UTF-8 (a string with U+FFFD). */
export function mayHoldRawText(row: unknown[]): boolean {
  for (let i = 0; i < row.length; i++) {
    const v = row[i]
    if (typeof v === 'string' && v.includes('\uFFFD')) return true
  }
  return false
}

/** Whether some value is raw TEXT (so a statement needs its CAST variant). */
export function hasRawText(values: Value[]): boolean {
  for (let i = 0; i < values.length; i++) if (values[i] instanceof RawText) return true
  return false
}

/** A value as better-sqlite3 binds it: bytes as a Buffer (raw TEXT too: its statement casts it back). */
export function bindValue(v: Value): unknown {
  if (typeof v !== 'object' || v === null) return v
  if (v instanceof RawText) return Buffer.from(v.bytes.buffer, v.bytes.byteOffset, v.bytes.byteLength)
  if (Buffer.isBuffer(v)) return v
  return Buffer.from(v.buffer, v.byteOffset, v.byteLength)
}

/** A key as text, to tell keys apart: each value with its kind (bytes in hex). */
export function keyText(key: Value[]): string {
  return key
    .map((v) => {
      if (v === null) return 'n'
      if (typeof v !== 'object') return `${typeof v}:${String(v)}`
      return `${v instanceof Uint8Array ? 'blob' : 'raw'}:${(bindValue(v) as Buffer).toString('hex')}`
    })
    .join(',')
}

/** Select-list expressions that read each column's storage class and, for TEXT, its bytes (see exactRow). */
export function exactColumns(exprs: string[]): string[] {
  const out: string[] = []
  for (const e of exprs)
    out.push(`typeof(${e})`, `CASE WHEN typeof(${e}) = 'text' THEN CAST(${e} AS BLOB) ELSE ${e} END`)
  return out
}

/** A row read through exactColumns, as values: TEXT bytes that are valid UTF-8 become a string again. */
export function exactRow(raw: unknown[]): Value[] {
  const out: Value[] = new Array(raw.length / 2)
  for (let i = 0; i < out.length; i++) {
    const v = raw[2 * i + 1]
    if (raw[2 * i] !== 'text') {
      out[i] = v as Value
      continue
    }
    const b = v as Buffer
    out[i] = isUtf8(b) ? b.toString('utf8') : new RawText(new Uint8Array(b))
  }
  return out
}

/** SQL text built with `ph(i)` as the placeholder of parameter i. */
export type SqlWith = (ph: (i: number) => string) => string

const plain = () => '?'

/**
 * A statement whose parameters may be raw TEXT: `stmt(args)` is the plain statement, or the variant that
 * casts the raw TEXT parameters back to TEXT. `bind(args)` gives the parameters to run it with.
 */
export class RawAware {
  readonly plain: Database.Statement
  private readonly variants = new Map<string, Database.Statement>()
  private readonly db: DB
  private readonly sql: SqlWith
  private readonly rawRows: boolean

  constructor(db: DB, sql: SqlWith, opts: { raw?: boolean } = {}) {
    this.db = db
    this.sql = sql
    this.rawRows = opts.raw ?? false
    this.plain = this.prepare(plain)
  }

  private prepare(ph: (i: number) => string): Database.Statement {
    const s = this.db.prepare(this.sql(ph))
    return this.rawRows ? s.raw(true) : s
  }

  stmt(args: Value[]): Database.Statement {
    if (!hasRawText(args)) return this.plain
    const mask = args.map((v) => (v instanceof RawText ? '1' : '0')).join('')
    let s = this.variants.get(mask)
    if (s === undefined) {
      s = this.prepare((i) => (args[i] instanceof RawText ? 'CAST(? AS TEXT)' : '?'))
      this.variants.set(mask, s)
    }
    return s
  }
}
