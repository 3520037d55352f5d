/**
 * The divergence of a fenced origin: the changes it made after a newer epoch branched off its log. They are
 * never applied anywhere, and never dropped either: they are written out, readable, for a person to review
 * and re-enter at the new origin.
 *
 * The folder holds:
 *   changes.jsonl  one JSON object per line: first a description of the divergence, then one line per row
 *                  change, in log order ({"op":"upsert","table":...,"row":{...}} or {"op":"delete",...,"key"})
 *   changes.sql    the same changes as SQL statements, one transaction per captured unit, then what the
 *                  engine's dialect says follows them (PostgreSQL: sequences moved past the ids re-entered)
 *   before.db      the database exactly as it was before it was rebuilt (written by the caller)
 *   README.txt     what this is and what to do
 */
import fs from 'node:fs'
import path from 'node:path'
import { unitEnd, type Engine } from '../adapters/index.ts'
import { RawText, type TableDef, type Value } from '../protocol/index.ts'
import type { DatasetLog } from './log.ts'

export interface DivergenceInput {
  log: DatasetLog
  /** First block past the branch point, and the end (exclusive) of what this site wrote. */
  from: number
  to: number
  dir: string
  dataset: { id: string; name: string }
  site: string
  epoch: number
  fencedBy: { epoch: number; site: string; log: Uint8Array }
  /** The engine, for the SQL dialect of changes.sql and the columns of keys. */
  engine: Engine
  /** What the caller kept of the database as it was, for README.txt: a file name and what it is. */
  kept: string
}

function jsonValue(v: Value): unknown {
  if (v === null) return null
  if (typeof v === 'bigint') return Number.isSafeInteger(Number(v)) ? Number(v) : v.toString()
  if (typeof v === 'number') return Number.isFinite(v) ? v : String(v)
  if (typeof v === 'string') return v
  if (v instanceof RawText) return { textHex: Buffer.from(v.bytes).toString('hex') }
  return { hex: Buffer.from(v as Uint8Array).toString('hex') }
}

/** A row or key by column name, each value as JSON holds it (jsonValue). */
export function record(cols: string[], values: Value[]): Record<string, unknown> {
  const o: Record<string, unknown> = {}
  for (const [i, c] of cols.entries()) o[c] = jsonValue(values[i])
  return o
}

/** The schema in force just before block `at`: the nearest schema entry before it. */
async function schemaBefore(log: DatasetLog, at: number): Promise<Map<number, TableDef>> {
  for (let i = at - 1; i >= 1; i--) {
    const e = await log.entry(i, { wait: false })
    if (e?.kind === 'schema') return new Map(e.tables.map((t) => [t.id, t]))
  }
  return new Map()
}

/** Writes changes.jsonl, changes.sql and README.txt into `dir`; returns the number of row changes. */
export async function writeDivergence(d: DivergenceInput): Promise<number> {
  fs.mkdirSync(d.dir, { recursive: true, mode: 0o700 })
  const tables = await schemaBefore(d.log, d.from)
  const json: string[] = []
  const sql: string[] = []
  const hexLog = Buffer.from(d.log.key).toString('hex')
  json.push(
    JSON.stringify({
      divergence: d.dataset.name,
      dataset: d.dataset.id,
      site: d.site,
      epoch: d.epoch,
      log: hexLog,
      from: d.from,
      to: d.to,
      fencedBy: { epoch: d.fencedBy.epoch, site: d.fencedBy.site, log: Buffer.from(d.fencedBy.log).toString('hex') },
      writtenAt: new Date().toISOString()
    })
  )
  sql.push(
    `-- Changes made at ${d.site} to ${d.dataset.name} (epoch ${d.epoch}) ` +
      `after epoch ${d.fencedBy.epoch} at ${d.fencedBy.site} took over.`,
    `-- They are not in the live data. Review them before running any of this at the new origin.`,
    ''
  )
  const sqlOf = d.engine.dialect
  let changes = 0
  // The tables rows were written to, by name (the newest definition), for the statements that follow.
  const written = new Map<string, TableDef>()
  for (let at = d.from; at < d.to; ) {
    const unit = await d.log.unit(at, { wait: false })
    if (unit === null) break
    const block = at
    at = unitEnd(unit)
    const lines: string[] = []
    let time: number | null = null
    for (const e of unit.entries) {
      if (e.kind === 'schema') {
        const before = new Set([...tables.values()].map((t) => t.name))
        tables.clear()
        for (const t of e.tables) tables.set(t.id, t)
        const added = e.tables.filter((t) => !before.has(t.name))
        if (added.length > 0) {
          json.push(JSON.stringify({ op: 'schema', block, created: added.map((t) => ({ table: t.name, sql: t.sql })) }))
          for (const t of added) lines.push(`-- table created: ${t.sql.replace(/\s+/g, ' ')}`)
        }
        continue
      }
      if (e.kind !== 'transaction' && e.kind !== 'snapshot') continue
      if (e.kind === 'transaction') time = e.time
      for (const ch of e.changes) {
        const def = tables.get(ch.table)
        if (def === undefined || sqlOf.internal(ch.table)) continue
        for (const key of ch.deletes) {
          changes++
          json.push(
            JSON.stringify({
              op: 'delete',
              block,
              time: time && new Date(time).toISOString(),
              table: def.name,
              key: record(sqlOf.keyColumns(def), key)
            })
          )
          lines.push(sqlOf.remove(def, key))
        }
        for (const row of ch.upserts) {
          changes++
          json.push(
            JSON.stringify({
              op: 'upsert',
              block,
              time: time && new Date(time).toISOString(),
              table: def.name,
              row: record(sqlOf.rowColumns(def), row)
            })
          )
          lines.push(sqlOf.upsert(def, row))
        }
        if (ch.upserts.length > 0) written.set(def.name, def)
      }
    }
    if (lines.length > 0) {
      sql.push(
        `-- log block ${block}${time ? `, committed ${new Date(time).toISOString()}` : ''}`,
        'BEGIN;',
        ...lines,
        'COMMIT;',
        ''
      )
    }
  }
  const after = sqlOf.after?.([...written.values()]) ?? []
  if (after.length > 0) sql.push(...after, '')
  const write = (name: string, text: string) => {
    const file = path.join(d.dir, name)
    fs.writeFileSync(file, text, { mode: 0o600 })
    const fd = fs.openSync(file, 'r')
    fs.fsyncSync(fd)
    fs.closeSync(fd)
  }
  write('changes.jsonl', `${json.join('\n')}\n`)
  write('changes.sql', `${sql.join('\n')}\n`)
  write(
    'README.txt',
    [
      `${d.site} was the origin of ${d.dataset.name} (epoch ${d.epoch}) and was cut off from the mesh.`,
      `Meanwhile ${d.fencedBy.site} was promoted (epoch ${d.fencedBy.epoch}), and the mesh follows it now.`,
      '',
      `The ${changes} row changes ${d.site} made after that point are kept here, and nowhere in the live data:`,
      '  changes.jsonl  one change per line (JSON), in the order they were made',
      '  changes.sql    the same as SQL statements',
      `  ${d.kept}`,
      '',
      'Review them, re-enter what is still needed at the new origin, then delete this folder;',
      '`mesh status` warns until it is gone.',
      ''
    ].join('\n')
  )
  return changes
}
