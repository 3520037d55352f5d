/** The capture triggers of an origin table and the change table they write keys to. */
import { OWN_PREFIX, quote, type TableInfo } from './common.ts'

export function triggerNames(id: number): string[] {
  return ['ins', 'upd', 'updk', 'del'].map((s) => `${OWN_PREFIX}t${id}_${s}`)
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
      `BEGIN INSERT INTO ${d} (${cols}) VALUES (${oldK.join(', ')}); END`
  ]
}

export function sameInfo(a: TableInfo, b: TableInfo): boolean {
  return (
    a.sql === b.sql &&
    a.name === b.name &&
    JSON.stringify(a.key) === JSON.stringify(b.key) &&
    a.rowidName === b.rowidName
  )
}
