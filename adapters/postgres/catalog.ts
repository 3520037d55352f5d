/**
 * The origin's tables as the log describes them, for capture by logical decoding: read from the catalogs,
 * and learned from a Relation message when rows of a shape not sent yet come through the stream (the
 * catalogs may have moved on since). Tables with no primary key are given REPLICA IDENTITY FULL here.
 *
 * It does not decide when a schema entry goes out (capture.ts does, from what load() and learn() report),
 * and it never reads the stream.
 */
import { MeshError, type SchemaEntry, type SchemaObject, type TableDef } from '../../protocol/index.ts'
import type { Logger } from '../types.ts'
import { cannotCarry, quoteIdent, readObjects, readTables, toTableDef } from './common.ts'
import type { Client, PgTable, Session } from './common.ts'
import { TableIds } from './adopt.ts'
import { shapeOfRelation, type Known, type RelationMessage } from './fold.ts'

export class CaptureCatalog {
  /** The tables as last sent, by oid. */
  readonly tables = new Map<number, Known>()
  objects: SchemaObject[] = []
  /** Tables that are not captured, and why. */
  skipped: Array<{ table: string; reason: string; oid: number }> = []
  /** When the catalogs were last read (ms since the epoch). */
  lastCheck = 0
  private readonly ids = new TableIds()

  constructor(
    private readonly session: Session,
    private readonly log: Logger
  ) {}

  private db(): Promise<Client> {
    return this.session.db()
  }

  // biome-ignore lint/suspicious/noExplicitAny: pg returns rows untyped; callers read the columns they selected
  private query(sql: string, params: unknown[] = [], doing = 'capture failed'): Promise<{ rows: any[] }> {
    return this.session.run(doing, (db) => db.query(sql, params))
  }

  /** Reads the ids the log gives tables (a promoted origin keeps its predecessor's). */
  async loadIds(): Promise<void> {
    await this.ids.load(await this.db())
  }

  /** The table as the log describes it, with its id in the log. */
  private async defOf(t: PgTable): Promise<TableDef> {
    return { ...toTableDef(t), id: await this.ids.of(await this.db(), t.oid) }
  }

  /**
   * Reads the catalogs into the tables as last sent; gives tables with no key REPLICA IDENTITY FULL. Returns
   * whether anything changed.
   *
   * `sameShape`: while changes flow, only what does not change a table's shape (NOT NULL, defaults, indexes,
   * constraints) is taken from the catalogs; a new shape comes with the stream's rows, in order.
   */
  async load(within?: Client, sameShape = false): Promise<boolean> {
    const tables = await readTables(within ?? (await this.db()))
    const objects = await readObjects(within ?? (await this.db()))
    let changed = JSON.stringify(objects) !== JSON.stringify(this.objects)
    this.objects = objects
    const seen = new Set<number>()
    const skipped: typeof this.skipped = []
    for (const t of tables) {
      const why = cannotCarry(t)
      if (why) {
        skipped.push({ table: t.name, reason: why, oid: t.oid })
        if (!this.skipped.some((s) => s.oid === t.oid && s.reason === why)) {
          const warning = MeshError.UNSUPPORTED_TYPE(`table ${t.name} is not captured: ${why}`)
          this.log.warn(warning.message, { table: t.name })
        }
        continue
      }
      seen.add(t.oid)
      if (t.pk.length === 0 && t.replident !== 'f') {
        await this.query(
          `ALTER TABLE ${t.name} REPLICA IDENTITY FULL`,
          [],
          `cannot give ${t.name} (no primary key) REPLICA IDENTITY FULL`
        )
        t.replident = 'f'
      }
      const known: Known = { def: await this.defOf(t), shape: shapeOfTable(t), full: t.pk.length === 0 }
      const prev = this.tables.get(t.oid)
      if (sameShape && prev?.shape !== known.shape) continue
      if (!prev || JSON.stringify(prev.def) !== JSON.stringify(known.def)) {
        this.tables.set(t.oid, known)
        changed = true
      }
    }
    for (const oid of [...this.tables.keys()]) {
      if (!seen.has(oid) && !sameShape) {
        this.tables.delete(oid)
        changed = true
      }
    }
    this.skipped = skipped
    this.lastCheck = Date.now()
    return changed
  }

  /**
   * A table whose rows now have a shape not sent yet: its definition as the rows have it, which goes out
   * first. Always a change.
   */
  async learn(m: RelationMessage): Promise<Known> {
    const tables = await readTables(await this.db())
    const t = tables.find((x) => x.oid === m.oid)
    const shape = shapeOfRelation(m)
    let known: Known
    if (t && shapeOfTable(t) === shape) {
      known = { def: await this.defOf(t), shape, full: t.pk.length === 0 }
    } else {
      // The catalogs have moved on already (a later ALTER): describe the table as these rows have it.
      const types = await this.query(
        `SELECT format_type(t, m) AS type, format('%I.%I', $3::text, $4::text) AS name ` +
          `FROM unnest($1::oid[], $2::int[]) WITH ORDINALITY AS u(t, m, i) ORDER BY i`,
        [m.columns.map((c) => c.typeOid), m.columns.map((c) => c.typmod), m.namespace, m.name]
      )
      const name = types.rows.length ? types.rows[0].name : `${quoteIdent(m.namespace)}.${quoteIdent(m.name)}`
      const full = m.identity === 'f' || !m.columns.some((c) => c.key)
      if (m.identity === 'd' && full) {
        const doing = `cannot give ${name} (no primary key) REPLICA IDENTITY FULL`
        await this.query(`ALTER TABLE ${name} REPLICA IDENTITY FULL`, [], doing)
      }
      const pg: PgTable = {
        oid: m.oid,
        name,
        nsp: m.namespace,
        rel: m.name,
        replident: m.identity,
        all: m.columns.map((c, i) => ({
          name: c.name,
          type: types.rows[i].type,
          typeOid: c.typeOid,
          typmod: c.typmod,
          kind: 'b',
          typeSchema: '',
          notNull: !full && c.key,
          default: null,
          identity: '',
          generated: ''
        })),
        pk: full ? [] : m.columns.filter((c) => c.key).map((c) => c.name)
      }
      known = { def: await this.defOf(pg), shape, full }
    }
    this.tables.set(m.oid, known)
    this.objects = await readObjects(await this.db())
    return known
  }

  defs(): TableDef[] {
    return [...this.tables.values()].map((k) => k.def)
  }

  /** The schema entry for the tables as they are now; `reset`: ids of tables whose rows replicas drop. */
  entry(reset: number[]): SchemaEntry {
    return { kind: 'schema', more: false, tables: this.defs(), objects: this.objects, reset }
  }
}

function shapeOfTable(t: PgTable): string {
  const columns = t.all.filter((c) => c.generated === '').map((c) => [c.name, c.typeOid, c.typmod])
  return JSON.stringify([t.nsp, t.rel, columns])
}
