/** The capture triggers of an origin table and the change table they write keys to. */
import { OWN_PREFIX, quote, type TableInfo } from './common.ts'

export function triggerNames(id: number): string[] {
  return ['ins', 'upd', 'updk', 'del'].map((s) => `${OWN_PREFIX}t${id}_${s}`)
}

/** The triggers that record rows a REPLACE conflict is about to delete (see conflictTriggers); not always there. */
export function conflictTriggerNames(id: number): string[] {
  return ['rins', 'rupd', 'rrow', 'rrowu'].map((s) => `${OWN_PREFIX}t${id}_${s}`)
}

export function changeTable(id: number): string {
  return `${OWN_PREFIX}d${id}`
}

function keyExprs(t: TableInfo, alias: 'NEW' | 'OLD'): string[] {
  if (t.key.length === 0) return [`${alias}.${t.rowidName}`]
  return t.key.map((i) => `${alias}.${quote(t.columns[i].name)}`)
}

export function triggerSql(id: number, t: TableInfo): string[] {
  const [ins, upd, updk, del] = triggerNames(id)
  const table = quote(t.name)
  const d = quote(changeTable(id))
  const arity = t.key.length === 0 ? 1 : t.key.length
  const cols = Array.from({ length: arity }, (_, i) => `k${i}`).join(', ')
  const oldK = keyExprs(t, 'OLD')
  const newK = keyExprs(t, 'NEW')
  const changed = oldK.map((o, i) => `${o} IS NOT ${newK[i]}`).join(' OR ')
  return [
    `CREATE TRIGGER ${quote(ins)} AFTER INSERT ON ${table} ` +
      `BEGIN INSERT INTO ${d} (${cols}) VALUES (${newK.join(', ')}); END`,
    `CREATE TRIGGER ${quote(upd)} AFTER UPDATE ON ${table} ` +
      `BEGIN INSERT INTO ${d} (${cols}) VALUES (${newK.join(', ')}); END`,
    `CREATE TRIGGER ${quote(updk)} AFTER UPDATE ON ${table} WHEN ${changed} ` +
      `BEGIN INSERT INTO ${d} (${cols}) VALUES (${oldK.join(', ')}); END`,
    `CREATE TRIGGER ${quote(del)} AFTER DELETE ON ${table} ` +
      `BEGIN INSERT INTO ${d} (${cols}) VALUES (${oldK.join(', ')}); END`,
    ...conflictTriggers(id, t).map((c) => c.sql)
  ]
}

/**
 * BEFORE INSERT and BEFORE UPDATE triggers that record the keys of the rows holding the new row's values in
 * one of the table's UNIQUE indexes. A REPLACE conflict (INSERT OR REPLACE, REPLACE, UPDATE OR REPLACE, or a
 * constraint declared ON CONFLICT REPLACE) deletes such rows without firing a delete trigger (SQLite fires it
 * only with PRAGMA recursive_triggers on, the application's setting), so without these their keys never
 * reached the change table: when the new row no longer conflicted by the time capture read it (its value
 * changed again, or it was deleted, in the same batch), the replica kept the deleted row. Recording a key
 * whose row stays (a plain INSERT that then fails, INSERT OR IGNORE, an upsert) costs only a lookup of that
 * key, which finds the row as it is. Compared under the index's collations, with `+NEW.c` taking the column's
 * affinity as the stored value did; a partial index's WHERE is ignored (more keys, never fewer). Not covered:
 * a UNIQUE index on an expression (readTables leaves it out of TableInfo.unique).
 */
export function conflictTriggers(id: number, t: TableInfo): Array<{ name: string; sql: string }> {
  const [rins, rupd, rrow, rrowu] = conflictTriggerNames(id)
  const table = quote(t.name)
  const d = quote(changeTable(id))
  const arity = t.key.length === 0 ? 1 : t.key.length
  const cols = Array.from({ length: arity }, (_, i) => `k${i}`).join(', ')
  const key = t.key.length === 0 ? [`x.${t.rowidName}`] : t.key.map((i) => `x.${quote(t.columns[i].name)}`)
  const record = (where: string) =>
    `INSERT INTO ${d} (${cols}) SELECT ${key.join(', ')} FROM ${table} AS x WHERE ${where};`
  const out: Array<{ name: string; sql: string }> = []
  const unique = t.unique ?? []
  if (unique.length > 0) {
    const body = unique
      .map((u) =>
        record(
          u.columns.map((c, i) => `x.${quote(c)} COLLATE ${quote(u.collations[i])} = +NEW.${quote(c)}`).join(' AND ')
        )
      )
      .join(' ')
    // Only an UPDATE that sets an indexed column can conflict; a generated column changes with the columns it
    // is computed from, which UPDATE OF cannot name, so an index over one makes every UPDATE look.
    const indexed = [...new Set(unique.flatMap((u) => u.columns))]
    const generated = indexed.some((c) => !t.columns.some((col) => col.name === c))
    const of = generated ? '' : ` OF ${indexed.map(quote).join(', ')}`
    out.push({ name: rins, sql: `CREATE TRIGGER ${quote(rins)} BEFORE INSERT ON ${table} BEGIN ${body} END` })
    out.push({ name: rupd, sql: `CREATE TRIGGER ${quote(rupd)} BEFORE UPDATE${of} ON ${table} BEGIN ${body} END` })
  }
  // A table keyed by a declared key that is not the rowid still has a rowid, which a REPLACE given one
  // explicitly (`INSERT OR REPLACE INTO t (rowid, ...)`, `UPDATE OR REPLACE t SET rowid = ...`) conflicts on:
  // the row holding it goes without a trigger, and its key is another one.
  if (t.key.length > 0 && t.rowidName !== null && t.rowidKey !== true) {
    const r = t.rowidName
    const body = record(`x.${r} = NEW.${r}`)
    out.push({ name: rrow, sql: `CREATE TRIGGER ${quote(rrow)} BEFORE INSERT ON ${table} BEGIN ${body} END` })
    out.push({
      name: rrowu,
      sql: `CREATE TRIGGER ${quote(rrowu)} BEFORE UPDATE ON ${table} WHEN NEW.${r} IS NOT OLD.${r} BEGIN ${body} END`
    })
  }
  return out
}

export function sameInfo(a: TableInfo, b: TableInfo): boolean {
  return (
    a.sql === b.sql &&
    a.name === b.name &&
    JSON.stringify(a.key) === JSON.stringify(b.key) &&
    a.rowidName === b.rowidName &&
    rowidKey(a) === rowidKey(b) &&
    // Stored before it existed: not a change (syncSchema adds the triggers and stores what holds now).
    (a.unique === undefined || b.unique === undefined || JSON.stringify(a.unique) === JSON.stringify(b.unique))
  )
}

/**
 * TableInfo.rowidKey, or for one stored before it existed what capture then assumed (a single key declared
 * INTEGER in a rowid table): a table it wrongly took for the rowid (`INTEGER PRIMARY KEY DESC`, whose rows
 * with a key that is not an integer never reached the log) differs, and so is resent in full once.
 */
function rowidKey(t: TableInfo): boolean {
  if (t.rowidKey !== undefined) return t.rowidKey
  return !t.withoutRowid && t.key.length === 1 && t.columns[t.key[0]].type.toUpperCase() === 'INTEGER'
}
