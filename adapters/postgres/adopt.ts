/**
 * What both PostgreSQL capture modes do when a promoted replica becomes an origin, and the table ids that let
 * the new epoch's log go on naming the tables as the old one did.
 */
import type { SchemaObject, TableDef } from '../../protocol/index.ts'
import { OWN_SCHEMA, quoteIdent, quoteLiteral, type Client } from './common.ts'

/** Each sequence that feeds an integer column (serial, identity, or a nextval() default), with the column. */
const SEQUENCE_FEEDS_SQL = `
SELECT DISTINCT format('%I.%I', sn.nspname, s.relname) AS seq, format('%I.%I', tn.nspname, t.relname) AS tbl,
       quote_ident(a.attname) AS col
  FROM pg_depend d
  JOIN pg_attrdef ad ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid
  JOIN pg_class s ON s.oid = d.refobjid AND d.refclassid = 'pg_class'::regclass AND s.relkind = 'S'
  JOIN pg_namespace sn ON sn.oid = s.relnamespace
  JOIN pg_class t ON t.oid = ad.adrelid JOIN pg_namespace tn ON tn.oid = t.relnamespace
  JOIN pg_attribute a ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum
 WHERE a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype)
UNION
SELECT format('%I.%I', sn.nspname, s.relname), format('%I.%I', tn.nspname, t.relname), quote_ident(a.attname)
  FROM pg_depend d
  JOIN pg_class s ON s.oid = d.objid AND d.classid = 'pg_class'::regclass AND s.relkind = 'S'
  JOIN pg_namespace sn ON sn.oid = s.relnamespace
  JOIN pg_class t ON t.oid = d.refobjid AND d.refclassid = 'pg_class'::regclass
  JOIN pg_namespace tn ON tn.oid = t.relnamespace
  JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid
 WHERE d.deptype IN ('a', 'i') AND a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype)`

/**
 * Turns a replica database into an origin, in one transaction: unique indexes the replica kept as plain ones
 * become unique again, every sequence that feeds a column moves past the column's highest value, the log's
 * table ids are kept in _mesh.table_ids, and the replica bookkeeping goes. Does nothing on a database that is
 * not a replica. Returns whether it adopted one.
 */
export async function adoptReplica(db: Client): Promise<boolean> {
  const has = await db.query(`SELECT to_regclass('${OWN_SCHEMA}.replica') IS NOT NULL AS has`)
  if (has.rows[0].has !== 't') return false
  try {
    await db.query('BEGIN')
    const meta = await db.query(`SELECT tables, objects FROM ${OWN_SCHEMA}.replica`)
    const objects: SchemaObject[] = meta.rows.length ? JSON.parse(meta.rows[0].objects) : []
    const tables: TableDef[] = meta.rows.length ? JSON.parse(meta.rows[0].tables) : []
    for (const o of objects) {
      if (o.type !== 'index' || !/^CREATE UNIQUE INDEX /.test(o.sql)) continue
      await db.query(`DROP INDEX IF EXISTS ${o.name}`)
      await db.query(o.sql)
    }
    await db.query(`CREATE TABLE IF NOT EXISTS ${OWN_SCHEMA}.table_ids (oid oid PRIMARY KEY, id int8 NOT NULL UNIQUE)`)
    for (const d of tables) {
      await db.query(
        `INSERT INTO ${OWN_SCHEMA}.table_ids (oid, id) SELECT to_regclass($1)::oid, $2 WHERE ` +
          `to_regclass($1) IS NOT NULL ON CONFLICT DO NOTHING`,
        [d.name, d.id]
      )
    }
    // NOT NULL, which a replica does not enforce (apply.ts), as the origin had it.
    for (const d of tables) {
      for (const c of d.columns.filter((x) => x.notNull)) {
        await db.query('SAVEPOINT mesh_not_null')
        try {
          await db.query(`ALTER TABLE ${d.name} ALTER COLUMN ${quoteIdent(c.name)} SET NOT NULL`)
          await db.query('RELEASE mesh_not_null')
        } catch {
          await db.query('ROLLBACK TO mesh_not_null')
          await db.query('RELEASE mesh_not_null')
        }
      }
    }
    const feeds = await db.query(SEQUENCE_FEEDS_SQL)
    for (const f of feeds.rows) {
      await db.query(
        `SELECT setval(${quoteLiteral(f.seq)}, greatest((SELECT last_value FROM ${f.seq}), m)) FROM ` +
          `(SELECT max(${f.col})::int8 AS m FROM ${f.tbl}) x WHERE m IS NOT NULL`
      )
    }
    await db.query(`DROP TABLE ${OWN_SCHEMA}.replica`)
    await db.query('COMMIT')
    return true
  } catch (err) {
    await db.query('ROLLBACK').catch(() => {})
    throw err
  }
}

/**
 * The id of each table in the log. At an epoch-0 origin it is the table's oid; a promoted replica keeps the
 * ids of the log it continues (its tables have other oids than the old origin's), read from _mesh.table_ids.
 */
export class TableIds {
  private ids = new Map<number, number>()

  async load(db: Client): Promise<void> {
    const has = await db.query(`SELECT to_regclass('${OWN_SCHEMA}.table_ids') IS NOT NULL AS has`)
    if (has.rows[0].has !== 't') return
    const r = await db.query(`SELECT oid::int8 AS oid, id FROM ${OWN_SCHEMA}.table_ids`)
    this.ids = new Map(r.rows.map((x) => [Number(x.oid), Number(x.id)]))
  }

  async of(db: Client, oid: number): Promise<number> {
    const have = this.ids.get(oid)
    if (have !== undefined) return have
    if (this.ids.size === 0) return oid
    // A new table at a promoted origin: its oid, unless an older table already goes by that id.
    const taken = new Set(this.ids.values())
    let id = oid
    if (taken.has(id)) id = Math.max(...taken, ...this.ids.keys()) + 1
    await db.query(
      `INSERT INTO ${OWN_SCHEMA}.table_ids (oid, id) VALUES ($1, $2) ON CONFLICT (oid) DO UPDATE SET id = EXCLUDED.id`,
      [oid, id]
    )
    this.ids.set(oid, id)
    return id
  }
}
