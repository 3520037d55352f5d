/**
 * The end of `mesh demo`: the proof (every copy against its current origin, row by row, and shop-east's
 * divergence folder against what its till did while cut off), the verdict, and what is printed after the
 * clean-up.
 */
import fs from 'node:fs'
import path from 'node:path'
import { count } from '../../node/util.ts'
import { out } from '../commands/common.ts'
import { compareDatabases, identical, replaySql, type Comparison } from './compare.ts'
import { DemoFailure, Interrupted, secs, type Check, type Demo } from './stage.ts'
import type { Dark, Divergence, Offline } from './steps.ts'

const row = (c: Check, indent = '   ', width = 60) => out(`${indent}${(`${c.what}:`).padEnd(width)} ${c.detail}`)

/** Compares `copy` with `origin`, giving a copy that differs a few more seconds (until `graceUntil`). */
async function compare(demo: Demo, origin: string, copy: string, graceUntil: number): Promise<Comparison> {
  let cmp = compareDatabases(origin, copy)
  while (!cmp.equal && Date.now() < graceUntil) {
    await demo.pause(500)
    cmp = compareDatabases(origin, copy)
  }
  return cmp
}

/**
 * 8. Every copy of every shop's data, held at every site other than its origin, against the origin's live
 * database; printed after the checks made as shop-east went dark.
 */
export async function checkCopies(demo: Demo, dark: Dark): Promise<Check[]> {
  out('8. Checking every copy, row by row and value by value, against its current origin')
  // The status said every copy is current; should one still differ, give it a few more seconds in all.
  const graceUntil = Date.now() + 5000
  for (const c of dark.checks) row(c)
  const checks: Check[] = []
  for (const b of demo.businesses) {
    for (const holder of demo.sites) {
      if (holder === b.origin) continue
      const cmp = await compare(demo, b.file, demo.copyFile(holder, b), graceUntil)
      const what =
        holder === b.owner
          ? `${b.owner.name}'s data at ${holder.name} itself (origin ${b.origin.name})`
          : `${b.owner.name}'s data held at ${holder.name}${b.origin !== b.owner ? ` (origin ${b.origin.name})` : ''}`
      const c: Check = { what, ok: cmp.equal, detail: identical(cmp) }
      checks.push(c)
      row(c)
    }
  }
  return checks
}

/**
 * shop-east's divergence folder against what its till did while cut off: the rows in changes.jsonl, the
 * values (changes.sql replayed onto its data as it went dark), and before.db.
 */
export function checkDivergence(demo: Demo, dark: Dark, offline: Offline, div: Divergence): Check[] {
  const east = demo.sites[2]
  const did = `${count(offline.transactions, 'transaction')}, ${count(offline.rows.size, 'row')}`
  out(`   ${east.name}'s divergence folder, against what its till did while cut off (${did}):`)
  const checks = [keptRows(offline, div), replayed(dark, offline, div), beforeDb(dark, offline, div)]
  for (const c of checks) row(c, '     ', 58)
  return checks.map((c) => ({ ...c, what: `${east.name}'s divergence folder: ${c.what}` }))
}

/** The rows: every row change kept is one the till made while cut off, and every row it changed is kept. */
function keptRows(offline: Offline, div: Divergence): Check {
  const what = `the rows in changes.jsonl`
  try {
    const text = fs.readFileSync(path.join(div.dir, 'changes.jsonl'), 'utf8')
    const lines = text
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l))
    const ops = lines.filter((l) => l.op === 'upsert' || l.op === 'delete')
    const kept: string[] = ops.map((l) => `${l.table}:${(l.op === 'upsert' ? l.row : l.key).id}`)
    const keptSet = new Set(kept)
    const missing = [...offline.rows].filter((k) => !keptSet.has(k))
    const extra = kept.filter((k) => !offline.rows.has(k))
    const twice = kept.length - keptSet.size
    const ok = missing.length === 0 && extra.length === 0 && twice === 0 && ops.length === div.changes
    const detail = ok
      ? `the same ${count(kept.length, 'row')}, none missing, none extra`
      : `DIFFERENT: ${ops.length} changes kept (status says ${div.changes}); ` +
        `missing ${missing.slice(0, 5).join(', ') || 'none'}; extra ${extra.slice(0, 5).join(', ') || 'none'}; ` +
        `twice ${twice}`
    return { what, ok, detail }
  } catch (err) {
    return { what, ok: false, detail: `cannot be read: ${(err as Error).message}` }
  }
}

/** The values: the kept changes, replayed onto the data as it went dark, give the database as the till left it. */
function replayed(dark: Dark, offline: Offline, div: Divergence): Check {
  const file = path.join(dark.checkDir, 'east-replayed.db')
  let cmp: Comparison
  try {
    replaySql(dark.wentDark, path.join(div.dir, 'changes.sql'), file)
    cmp = compareDatabases(offline.untilReturn, file)
  } catch (err) {
    cmp = { equal: false, tables: 0, rows: 0, difference: `changes.sql cannot be replayed: ${(err as Error).message}` }
  }
  return {
    what: 'changes.sql replayed onto its data as it went dark',
    ok: cmp.equal,
    detail: cmp.equal
      ? `gives its database as the till left it (${count(cmp.rows, 'row')})`
      : `DIFFERENT: ${cmp.difference}`
  }
}

/** before.db is the database as the till left it. */
function beforeDb(dark: Dark, offline: Offline, div: Divergence): Check {
  // Compared as a copy: opening the file itself would leave SQLite's -wal and -shm files in that folder.
  const copy = path.join(dark.checkDir, 'before.db')
  for (const ext of ['', '-wal']) {
    const f = path.join(div.dir, `before.db${ext}`)
    if (fs.existsSync(f)) fs.copyFileSync(f, `${copy}${ext}`)
  }
  const cmp = compareDatabases(offline.untilReturn, copy)
  return {
    what: 'before.db',
    ok: cmp.equal,
    detail: cmp.equal
      ? `is its database as the till left it (${count(cmp.rows, 'row')})`
      : `DIFFERENT: ${cmp.difference}`
  }
}

export interface Verdict {
  ok: boolean
  lines: string[]
}

export interface Checks {
  /** shop-east's data at the other two as it went dark. */
  dark: Check[]
  /** Every copy against its current origin. */
  copies: Check[]
  /** shop-east's divergence folder. */
  divergence: Check[]
}

/** PASS with what happened, or FAIL with every check that failed. */
export function verdict(demo: Demo, all: Checks, offline: Offline, div: Divergence): Verdict {
  const [north, south, east] = demo.sites
  const eb = demo.businesses[2]
  const checks = [...all.dark, ...all.copies, ...all.divergence]
  const ok = checks.every((c) => c.ok)
  if (!ok) {
    const failed = checks.filter((c) => !c.ok)
    return {
      ok,
      lines: [
        `FAIL: ${failed.length} of ${checks.length} checks failed:`,
        ...failed.map((c) => `      ${c.what}: ${c.detail}`)
      ]
    }
  }
  const copies = all.copies.length
  const total = demo.shops.reduce((n, s) => n + s.stats.transactions, 0)
  const sales = count(offline.transactions, 'transaction')
  const took = secs(Date.now() - demo.started)
  return {
    ok,
    lines: [
      "PASS: every copy of every shop's data is identical to its current origin, row by row " +
        `(${count(copies, 'copy', 'copies')} checked),`,
      `      and ${east.name}'s divergence folder holds exactly the ${count(div.changes, 'row')} its till changed ` +
        `while cut off (${sales}).`,
      `      ${east.name} was lost; ${north.name} took over its data (epoch ${eb.epoch}) ` +
        'and its business kept selling there;',
      `      ${east.name} came back, was fenced, kept its offline sales aside, ` +
        `and now follows ${north.name} like ${south.name} does.`,
      `      (${count(total, 'transaction')} ${total === 1 ? 'was' : 'were'} made while the mesh ran; took ${took}.)`
    ]
  }
}

/** The verdict when the story stopped early. */
export function failure(err: unknown): Verdict {
  if (err instanceof Interrupted) {
    return { ok: false, lines: ['Interrupted: the demo was stopped before it could check the copies.'] }
  }
  if (err instanceof DemoFailure) {
    const last = err.details.length ? ['      What it printed last:', ...err.details.map((d) => `        ${d}`)] : []
    return { ok: false, lines: [`FAIL: ${err.message}.`, ...last] }
  }
  return { ok: false, lines: [`FAIL: unexpected error: ${(err as Error)?.stack ?? String(err)}`] }
}

/** Cleans up, then prints where the kept files are, the status requests that failed, and the verdict. */
export async function finish(demo: Demo, v: Verdict): Promise<void> {
  out('')
  const removing = demo.keep ? '' : ', removing the temporary folder'
  process.stdout.write(`Cleaning up: stopping the nodes and the test network${removing}... `)
  try {
    await demo.cleanup()
    out('done.')
  } catch (err) {
    out(`failed: ${(err as Error).message}`)
    demo.emergency()
  }
  if (demo.keep) out(`The databases, the copies and each node's log (mesh/node.log) are in ${demo.tmp}`)
  if (demo.statusFailures.size > 0) {
    const n = [...demo.statusFailures.values()].reduce((a, b) => a + b, 0)
    out('')
    const requests = `${n} status request${n === 1 ? '' : 's'}`
    out(`Note: ${requests} to the nodes failed; the demo used the previous answer instead:`)
    for (const [why, k] of demo.statusFailures) out(`  ${k} x ${why}`)
  }
  out('')
  for (const l of v.lines) out(l)
}
