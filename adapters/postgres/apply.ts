/**
 * PostgreSQL apply: builds a warm replica database by applying log units in order.
 *
 * Each unit and the replica's new applied position (the row of `_mesh.replica`) are written in one
 * transaction, so a crash leaves all of a unit or none of it. Rows are written a table at a time: keys to
 * delete in one DELETE, rows in one INSERT ... ON CONFLICT (key) DO UPDATE, each fed by unnest() over text
 * arrays and cast to the column types, so a unit of thousands of rows costs a few statements. A unit holds
 * each key's net change once (see fold.ts), so the order of its rows does not matter.
 *
 * The apply session runs with session_replication_role = replica where allowed (a superuser): the origin's
 * triggers and foreign-key checks do not fire again for rows the origin already checked. Unique and
 * foreign-key constraints are created DEFERRABLE INITIALLY DEFERRED, so that they hold at every commit
 * whatever the order of a unit's rows; unique indexes that are not constraints are created as plain indexes
 * (see README, Limits).
 *
 * Schema changes are migrations: a table that is new is created, one that is gone is dropped, one whose
 * name, columns or key changed is altered in place (rename, add or drop a column, change a type). A change
 * that cannot be told apart from losing data (a column that disappears while another appears: a rename or a
 * drop and an add) stops apply with UNSUPPORTED_DDL, and the replica stays at its last good position.
 */
import {
  MeshError,
  RawText,
  type Entry,
  type SchemaEntry,
  type SchemaObject,
  type TableChanges,
  type TableDef,
  type Value,
  sameBytes
} from '../../protocol/index.ts'
import type { AppliedPosition, ApplySide, DamageGuard, Logger, ReplicaState, Unit } from '../types.ts'
import { guardCountLimit, headerFits, unitChanges, unitFits } from '../position.ts'
import { ReplicaBase, type ReplicaMeta } from '../replica.ts'
import {
  OWN_SCHEMA,
  SEQUENCES_TABLE,
  connect,
  digestPgTables,
  isUnchanged,
  pgError,
  quoteIdent,
  quoteLiteral,
  redactUrl,
  type Client
} from './common.ts'

const META = `${OWN_SCHEMA}.replica`

/** branchmesh's bookkeeping in a replica database: its position, and the schema it last applied. */
export const CREATE_META = `CREATE SCHEMA IF NOT EXISTS ${OWN_SCHEMA};
CREATE TABLE IF NOT EXISTS ${META} (dataset text PRIMARY KEY, log bytea, epoch int NOT NULL DEFAULT 0,
  length int8 NOT NULL DEFAULT 0, tree_hash bytea, state text NOT NULL DEFAULT 'empty',
  tables text NOT NULL DEFAULT '[]', objects text NOT NULL DEFAULT '[]')`

export interface PostgresApplyOptions {
  url: string
  dataset?: string
  logger?: Logger
  /** Flags units that delete or change a large share of a table (see DamageAlert). */
  guard?: DamageGuard
  /**
   * Compare this database with the origin's checkpoints as they are applied (default true). Off for
   * databases built from the log only (restores, snapshots, verify's scratch copy): they hold what the log
   * says by construction, and a digest per checkpoint of a long history would cost a full read each.
   */
  checkpoints?: boolean
}

/** A value as a text parameter (PostgreSQL rows carry text; anything else is turned into its text). */
function text(v: Value): string | null {
  if (v === null) return null
  if (typeof v === 'string') return v
  if (v instanceof Uint8Array) return `\\x${Buffer.from(v).toString('hex')}`
  if (v instanceof RawText) {
    throw MeshError.BAD_LOG('a PostgreSQL row holds TEXT that is not UTF-8, which PostgreSQL cannot store')
  }
  return String(v)
}

/** Splits a quoted qualified name (`"a"."b"` or `a.b`) into its parts. */
export function splitName(name: string): string[] {
  const parts: string[] = []
  let i = 0
  while (i < name.length) {
    if (name[i] === '"') {
      let s = ''
      i++
      while (i < name.length) {
        if (name[i] === '"' && name[i + 1] === '"') {
          s += '"'
          i += 2
        } else if (name[i] === '"') {
          i++
          break
        } else s += name[i++]
      }
      parts.push(s)
    } else {
      const j = name.indexOf('.', i)
      parts.push(name.slice(i, j < 0 ? name.length : j))
      i = j < 0 ? name.length : j
    }
    if (name[i] === '.') i++
  }
  return parts
}

export class PostgresApply extends ReplicaBase implements ApplySide {
  readonly engine = 'postgres' as const
  private readonly url: string
  private client: Client | null = null
  /** The dataset whose row alone is in the position table (saveMeta deletes any other once). */
  private savedDataset: string | null | undefined = undefined

  constructor(opts: PostgresApplyOptions) {
    super(opts)
    this.url = opts.url
  }

  private get conn(): Client {
    if (this.client === null) throw MeshError.CLOSED('the PostgreSQL replica is not open')
    return this.client
  }

  async open(): Promise<void> {
    if (this.client !== null) return
    const client = await connect(this.url, { doing: 'cannot connect to the replica database' })
    this.client = client
    try {
      await client.query('SET session_replication_role = replica').catch(() => {})
      // Asynchronous commit, as PostgreSQL's own subscriptions apply: a unit and its position commit together,
      // so a crash of the server that loses the last commits loses their positions too, and the node applies
      // them again from its log (see reconnect()). What must outlive such a crash (promote, verify) calls
      // flush() first.
      await client.query('SET synchronous_commit = off')
      const own = await client.query(`SELECT to_regclass($1) IS NOT NULL AS has`, [META])
      if (own.rows[0].has !== 't') {
        const user = await client.query(
          `SELECT count(*)::int AS n FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
              AND n.nspname NOT LIKE 'pg\\_%'`
        )
        if (Number(user.rows[0].n) > 0) {
          throw MeshError.BAD_REPLICA(
            `the database ${redactUrl(this.url)} already holds tables that branchmesh did not make`,
            {
              hint:
                'Give each replica an empty database of its own ' +
                '(the node creates one when it may: see "postgres" in the README).',
              context: { url: redactUrl(this.url) }
            }
          )
        }
        await client.query(CREATE_META)
      }
      this.meta = await this.loadMeta()
      if (this.expectDataset && this.meta.dataset && this.meta.dataset !== this.expectDataset) {
        throw MeshError.LOG_MISMATCH(
          `${redactUrl(this.url)} is a replica of dataset ${this.meta.dataset}, not ${this.expectDataset}`
        )
      }
    } catch (err) {
      await client.end().catch(() => {})
      this.client = null
      throw pgError(err, this.url, 'cannot open the replica')
    }
  }

  private async loadMeta(): Promise<ReplicaMeta> {
    const r = await this.conn.query(
      `SELECT dataset, log, epoch, length, tree_hash, state, tables, objects FROM ${META}`
    )
    if (r.rows.length > 1)
      throw MeshError.BAD_REPLICA(
        `${redactUrl(this.url)} holds the positions of ${r.rows.length} datasets; a replica database holds one`
      )
    const row = r.rows[0]
    if (!row)
      return { dataset: null, log: null, epoch: 0, length: 0, treeHash: null, state: 'empty', tables: [], objects: [] }
    const bytes = (v: string | null) => (v === null ? null : new Uint8Array(Buffer.from(v.slice(2), 'hex')))
    return {
      dataset: row.dataset,
      log: bytes(row.log),
      epoch: Number(row.epoch),
      length: Number(row.length),
      treeHash: bytes(row.tree_hash),
      state: row.state as ReplicaState,
      tables: JSON.parse(row.tables),
      objects: JSON.parse(row.objects)
    }
  }

  private async saveMeta(): Promise<void> {
    const m = this.meta
    const hexOf = (b: Uint8Array | null) => (b === null ? null : `\\x${Buffer.from(b).toString('hex')}`)
    if (this.savedDataset !== m.dataset) {
      await this.conn.query(`DELETE FROM ${META} WHERE dataset IS DISTINCT FROM $1`, [m.dataset])
      this.savedDataset = m.dataset
    }
    await this.conn.query(
      `INSERT INTO ${META} (dataset, log, epoch, length, tree_hash, state, tables, objects)
       VALUES ($1, $2::bytea, $3, $4, $5::bytea, $6, $7, $8)
       ON CONFLICT (dataset) DO UPDATE SET log = EXCLUDED.log, epoch = EXCLUDED.epoch, length = EXCLUDED.length,
         tree_hash = EXCLUDED.tree_hash, state = EXCLUDED.state, tables = EXCLUDED.tables, objects = EXCLUDED.objects`,
      [
        m.dataset,
        hexOf(m.log),
        m.epoch,
        m.length,
        hexOf(m.treeHash),
        m.state,
        JSON.stringify(m.tables),
        JSON.stringify(m.objects)
      ]
    )
  }

  /**
   * Opens the connection again after it was lost, and reads the position back from the database. Commits are
   * asynchronous (see open()): a crash of the replica's server may have lost the last units with their
   * position, and the database then stands before where this side stood. That is not an error of the log:
   * a retryable REPLICA_REWOUND, after which the apply loop asks position() again and applies those units
   * from the log. A database ahead of this side (a COMMIT whose answer was lost) needs nothing: its units
   * are skipped.
   */
  private async reconnect(): Promise<void> {
    const had = this.meta
    await this.open()
    if (had === undefined || had.log === null) return
    const now = this.meta
    if (now.log !== null && sameBytes(now.log, had.log) && now.length >= had.length) return
    const lost = now.log !== null && sameBytes(now.log, had.log) ? had.length - now.length : null
    this.log.warn('the replica database lost its last applied units in a restart; applying them again from the log', {
      url: redactUrl(this.url),
      was: had.length,
      now: now.length,
      epoch: now.epoch
    })
    throw MeshError.REPLICA_REWOUND(
      `the replica database ${redactUrl(this.url)} restarted and stands at ` +
        `${now.log === null ? 'its start' : now.length}, before the ` +
        `${lost === null ? 'position' : `${lost} entries`} it had applied (its last commits, asynchronous, ` +
        'were lost with the server): they are applied again from the log',
      { context: { url: redactUrl(this.url), was: had.length, now: now.length } }
    )
  }

  /**
   * Makes everything applied so far durable, and reads the position back from the database: one transaction
   * that writes the position row and commits synchronously (its commit waits for the WAL to be flushed up to
   * it, so every earlier asynchronous commit is flushed too). After a crash of the server that lost commits,
   * position() is then where the database really stands. Called before a promotion or a verify acts on
   * position(). A replica that applied nothing has nothing to flush.
   */
  async flush(): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      try {
        if (this.client === null) await this.open()
        const db = this.conn
        await db.query('BEGIN')
        await db.query('SET LOCAL synchronous_commit = on')
        await db.query(`UPDATE ${META} SET length = length`)
        await db.query('COMMIT')
        this.meta = await this.loadMeta()
        return
      } catch (err) {
        await this.client?.query('ROLLBACK').catch(() => {})
        const e = pgError(err, this.url, 'cannot flush the replica')
        if (e.code === 'PG_UNREACHABLE') {
          await this.client?.end().catch(() => {})
          this.client = null
          // A connection that broke while idle (the server restarted): once more on a new one.
          if (attempt === 0) continue
        }
        throw e
      }
    }
  }

  async apply(unit: Unit, position: AppliedPosition): Promise<void> {
    if (this.client === null) await this.reconnect()
    this.lastAlerts = []
    const m = this.meta
    if (unitFits(m, unit, position, { url: redactUrl(this.url) }) === 'skip') return
    const before: ReplicaMeta = { ...m }
    const db = this.conn
    try {
      await db.query('BEGIN')
      await this.measureUnit(unit)
      for (const entry of unit.entries) await this.applyEntry(entry, position)
      m.log = position.log
      m.epoch = position.epoch
      m.length = position.length
      m.treeHash = position.treeHash
      await this.saveMeta()
      await db.query('COMMIT')
    } catch (err) {
      await db.query('ROLLBACK').catch(() => {})
      this.meta = before
      const e = pgError(err, this.url, 'cannot apply to the replica')
      if (e.code === 'PG_UNREACHABLE') {
        // Connect again at the next attempt.
        await db.end().catch(() => {})
        this.client = null
      }
      throw e
    }
  }

  // --- Units above the memory budget (issue 14): the same transaction as apply(), opened by beginUnit and
  // ended by commitUnit (with the position) or abortUnit, with the node reading the next part of the unit from
  // the log in between. The client is this replica's own; a crash before COMMIT leaves PostgreSQL's copy as it
  // was (the server rolls an interrupted transaction back). Not measured by the mass-damage guard.
  private inParts: { before: ReplicaMeta } | null = null

  async beginUnit(unit: { start: number; end: number }, position: AppliedPosition): Promise<boolean> {
    if (this.client === null) await this.reconnect()
    if (this.inParts !== null) throw MeshError.BAD_LOG('a unit is already being applied in parts')
    this.lastAlerts = []
    const whole = { start: unit.start, entries: [], end: unit.end }
    if (unitFits(this.meta, whole, position, { url: redactUrl(this.url) }) === 'skip') return false
    try {
      await this.conn.query('BEGIN')
    } catch (err) {
      throw await this.failInParts(err)
    }
    this.inParts = { before: { ...this.meta } }
    return true
  }

  async applyPart(entries: Entry[], position: AppliedPosition): Promise<void> {
    if (this.inParts === null) throw MeshError.BAD_LOG('a part of a unit that was not begun')
    try {
      for (const entry of entries) await this.applyEntry(entry, position)
    } catch (err) {
      throw await this.failInParts(err)
    }
  }

  async commitUnit(position: AppliedPosition): Promise<void> {
    if (this.inParts === null) throw MeshError.BAD_LOG('the end of a unit that was not begun')
    const m = this.meta
    try {
      m.log = position.log
      m.epoch = position.epoch
      m.length = position.length
      m.treeHash = position.treeHash
      await this.saveMeta()
      await this.conn.query('COMMIT')
      this.inParts = null
    } catch (err) {
      throw await this.failInParts(err)
    }
  }

  async abortUnit(): Promise<void> {
    const o = this.inParts
    if (o === null) return
    this.inParts = null
    this.meta = o.before
    await this.conn.query('ROLLBACK').catch(() => {})
  }

  private async failInParts(err: unknown): Promise<MeshError> {
    await this.abortUnit()
    const e = pgError(err, this.url, 'cannot apply to the replica')
    if (e.code === 'PG_UNREACHABLE') {
      await this.client?.end().catch(() => {})
      this.client = null
    }
    return e
  }

  private async applyEntry(entry: Entry, position: AppliedPosition): Promise<void> {
    const m = this.meta
    switch (entry.kind) {
      case 'header':
        m.dataset = headerFits(entry, 'postgres', 'PostgreSQL', m.dataset ?? this.expectDataset, position)
        return
      case 'schema':
        await this.applySchema(entry)
        return
      case 'snapshot':
        if (entry.first) {
          if (m.tables.length) await this.conn.query(`TRUNCATE ${m.tables.map((t) => t.name).join(', ')}`)
          m.state = 'seeding'
        }
        await this.applyChanges(entry.changes)
        if (entry.last) m.state = 'settling'
        return
      case 'transaction':
        await this.applyChanges(entry.changes)
        if (m.state === 'settling') m.state = 'ready'
        return
      case 'checkpoint':
        // The origin's digest at this position: this replica's own, computed in the same transaction.
        if (this.checkpoints)
          this.compareCheckpoint(entry, await digestPgTables(this.conn, m.tables), position.length - 1)
        return
      case 'fence':
        return
    }
  }

  private table(id: number): TableDef {
    const def = this.meta.tables.find((t) => t.id === id)
    if (def === undefined) throw MeshError.BAD_LOG(`change for table id ${id}, which no schema entry defined`)
    return def
  }

  /** The guard's measure of a whole unit, before it is applied (inside its transaction). */
  private async measureUnit(unit: Unit): Promise<void> {
    const db = this.conn
    const g = this.guard
    for (const [id, ch] of unitChanges(unit)) {
      const def = this.meta.tables.find((t) => t.id === id)
      const total = ch.upserts.length + ch.deletes.length
      if (!def || total < g.minRows * g.share) continue
      const limit = guardCountLimit(total, g)
      const before = Number(
        (await db.query(`SELECT count(*) AS n FROM (SELECT 1 FROM ${def.name} LIMIT $1) s`, [limit])).rows[0].n
      )
      if (before < g.minRows || before >= limit) continue
      let changed = ch.deletes.length // a table with no key: each delete is a row that exists
      if (def.key.length) {
        const keys = [...ch.upserts.map((r) => def.key.map((i) => r[i])), ...ch.deletes]
        const hit = await db.query(
          `SELECT count(*) AS n FROM ${def.name} ` +
            `WHERE (${def.key.map((i) => quoteIdent(def.columns[i].name)).join(', ')}) ` +
            `IN (SELECT ${def.key.map((i, j) => `u.k${j}::${def.columns[i].type}`).join(', ')} ` +
            `FROM unnest(${def.key.map((_, j) => `$${j + 1}::text[]`).join(', ')}) ` +
            `AS u(${def.key.map((_, j) => `k${j}`).join(', ')}))`,
          def.key.map((_, j) => keys.map((k) => text(k[j])))
        )
        changed = Number(hit.rows[0].n)
      }
      if (changed >= g.share * before)
        this.lastAlerts.push({ table: def.name, changed: Math.min(changed, before), before })
    }
  }

  private async applyChanges(changes: TableChanges[]): Promise<void> {
    const db = this.conn
    for (const ch of changes) {
      if (ch.table === SEQUENCES_TABLE) {
        for (const [name, v] of ch.upserts)
          await db.query('SELECT setval(to_regclass($1), $2::int8, true)', [text(name), text(v)])
        continue
      }
      const def = this.table(ch.table)
      const width = def.columns.length
      const cols = def.columns.map((c) => quoteIdent(c.name))
      const cast = (i: number, v = `u.v${i}`) => `${v}::${def.columns[i].type}`
      const arrays = (rows: Value[][], idx: number[]) => idx.map((i) => rows.map((r) => text(r[i])))
      const unnest = (idx: number[]) =>
        `unnest(${idx.map((_, j) => `$${j + 1}::text[]`).join(', ')}) AS u(${idx.map((i) => `v${i}`).join(', ')})`
      if (ch.deletes.length) {
        if (def.key.length) {
          for (const k of ch.deletes)
            if (k.length !== def.key.length) throw MeshError.BAD_LOG(`delete key of ${k.length} values for ${def.name}`)
          const keyRows = ch.deletes.map((k) => {
            const row: Value[] = new Array(width).fill(null)
            for (const [j, i] of def.key.entries()) row[i] = k[j]
            return row
          })
          await db.query(
            `DELETE FROM ${def.name} WHERE (${def.key.map((i) => cols[i]).join(', ')}) ` +
              `IN (SELECT ${def.key.map((i) => cast(i)).join(', ')} FROM ${unnest(def.key)})`,
            arrays(keyRows, def.key)
          )
        } else {
          // No key: each deleted row is identified by all its values, one row at a time (duplicates exist).
          for (const row of ch.deletes) {
            if (row.length !== width)
              throw MeshError.BAD_LOG(`row of ${row.length} values for ${def.name} (${width} columns)`)
            const match = def.columns
              .map((c, i) => `${cols[i]}::text IS NOT DISTINCT FROM ($${i + 1}::${c.type})::text`)
              .join(' AND ')
            const r = await db.query(
              `DELETE FROM ${def.name} WHERE ctid = (SELECT ctid FROM ${def.name} WHERE ${match} LIMIT 1)`,
              row.map(text)
            )
            if (r.rowCount === 0)
              throw MeshError.BAD_LOG(`a row of ${def.name} that the log deletes is not in the replica`, {
                hint:
                  'The replica was changed behind the mesh. ' +
                  'Remove the replica database and restart the node to copy it again.'
              })
          }
        }
      }
      const full: Value[][] = []
      for (const row of ch.upserts) {
        if (row.length !== width)
          throw MeshError.BAD_LOG(`row of ${row.length} values for ${def.name} (${width} columns)`)
        if (row.some(isUnchanged)) await this.updatePartial(def, row)
        else full.push(row)
      }
      if (full.length === 0) continue
      const all = def.columns.map((_, i) => i)
      let sql =
        `INSERT INTO ${def.name} (${cols.join(', ')}) OVERRIDING SYSTEM VALUE ` +
        `SELECT ${all.map((i) => cast(i)).join(', ')} FROM ${unnest(all)}`
      if (def.key.length) {
        const rest = all.filter((i) => !def.key.includes(i))
        const target = def.key.map((i) => cols[i]).join(', ')
        const action = rest.length
          ? `UPDATE SET ${rest.map((i) => `${cols[i]} = EXCLUDED.${cols[i]}`).join(', ')}`
          : 'NOTHING'
        sql += ` ON CONFLICT (${target}) DO ${action}`
      }
      await db.query(sql, arrays(full, all))
    }
  }

  /** An update that left TOASTed values unchanged: only the values it carries are written. */
  private async updatePartial(def: TableDef, row: Value[]): Promise<void> {
    if (def.key.length === 0) throw MeshError.BAD_LOG(`a row of ${def.name} (no key) has values left out`)
    const set = def.columns.map((c, i) => ({ c, i })).filter(({ i }) => !isUnchanged(row[i]) && !def.key.includes(i))
    const params: Array<string | null> = []
    const p = (v: Value, type: string) => {
      params.push(text(v))
      return `$${params.length}::${type}`
    }
    const assign = set.map(({ c, i }) => `${quoteIdent(c.name)} = ${p(row[i], c.type)}`)
    const where = def.key
      .map((i) => `${quoteIdent(def.columns[i].name)} = ${p(row[i], def.columns[i].type)}`)
      .join(' AND ')
    if (assign.length === 0) return
    const r = await this.conn.query(`UPDATE ${def.name} SET ${assign.join(', ')} WHERE ${where}`, params)
    if (r.rowCount === 0)
      throw MeshError.BAD_LOG(`an update of ${def.name} names a row the replica does not hold`, {
        hint:
          'The replica was changed behind the mesh. ' +
          'Remove the replica database and restart the node to copy it again.'
      })
  }

  private async applySchema(entry: SchemaEntry): Promise<void> {
    const db = this.conn
    const m = this.meta
    const current = new Map(m.tables.map((t) => [t.id, t]))
    const next = new Map(entry.tables.map((t) => [t.id, t]))
    const objects = new Map(entry.objects.map((o) => [`${o.type}:${o.name}`, o]))
    const had = new Map(m.objects.map((o) => [`${o.type}:${o.name}`, o]))
    // Constraints and indexes that change or go are dropped first, then tables, then types.
    for (const [k, o] of had) {
      const w = objects.get(k)
      if (w && w.sql === o.sql) continue
      if (o.type === 'constraint')
        await db.query(
          `ALTER TABLE IF EXISTS ${o.table} DROP CONSTRAINT IF EXISTS ${quoteIdent(splitName(o.name).pop()!)}`
        )
      if (o.type === 'index') await db.query(`DROP INDEX IF EXISTS ${o.name}`)
    }
    for (const old of m.tables) if (!next.has(old.id)) await db.query(`DROP TABLE IF EXISTS ${old.name} CASCADE`)
    // Enum types and sequences before the tables that use them.
    for (const o of entry.objects) {
      if (o.type === 'type') await this.ensureEnum(o)
      if (o.type === 'sequence') {
        await this.ensureSchema(o.name)
        await db.query(o.sql)
      }
    }
    for (const t of entry.tables) {
      const old = current.get(t.id)
      if (old === undefined) {
        await this.ensureSchema(t.name)
        await db.query(`DROP TABLE IF EXISTS ${t.name} CASCADE`)
        await db.query(withoutNotNull(t.sql))
      } else if (JSON.stringify(old) !== JSON.stringify(t)) {
        await this.migrate(old, t)
      }
    }
    const reset = entry.reset.filter((id) => next.has(id)).map((id) => next.get(id)!.name)
    if (reset.length) await db.query(`TRUNCATE ${reset.join(', ')}`)
    this.skippedObjects = []
    for (const o of entry.objects) {
      if (o.type !== 'index' && o.type !== 'constraint') continue
      if (had.get(`${o.type}:${o.name}`)?.sql === o.sql && (await this.objectExists(o))) continue
      await db.query('SAVEPOINT mesh_object')
      try {
        await db.query(replicaSql(o))
        await db.query('RELEASE mesh_object')
      } catch (err) {
        await db.query('ROLLBACK TO mesh_object')
        await db.query('RELEASE mesh_object')
        this.skippedObjects.push(`${o.type} ${o.name}: ${(err as Error).message}`)
        this.log.warn('replica cannot create a schema object; it is skipped', {
          object: o.name,
          error: (err as Error).message
        })
      }
    }
    m.tables = entry.tables
    m.objects = entry.objects
  }

  private async objectExists(o: SchemaObject): Promise<boolean> {
    if (o.type === 'index')
      return (await this.conn.query('SELECT to_regclass($1) IS NOT NULL AS has', [o.name])).rows[0].has === 't'
    const r = await this.conn.query('SELECT 1 FROM pg_constraint WHERE conname = $1 AND conrelid = to_regclass($2)', [
      splitName(o.name).pop(),
      o.table
    ])
    return r.rows.length > 0
  }

  private async ensureSchema(qualified: string): Promise<void> {
    const parts = splitName(qualified)
    if (parts.length === 2) await this.conn.query(`CREATE SCHEMA IF NOT EXISTS ${quoteIdent(parts[0])}`)
  }

  private async ensureEnum(o: SchemaObject): Promise<void> {
    const db = this.conn
    await this.ensureSchema(o.name)
    const has = await db.query('SELECT to_regtype($1) IS NOT NULL AS has', [o.name])
    if (has.rows[0].has !== 't') {
      await db.query(o.sql)
      return
    }
    const labels = await db.query('SELECT e.enumlabel AS l FROM pg_enum e WHERE e.enumtypid = to_regtype($1)', [o.name])
    const present = new Set(labels.rows.map((r) => r.l))
    const wanted = [...o.sql.matchAll(/'((?:[^']|'')*)'/g)].map((x) => x[1].replaceAll("''", "'"))
    for (const l of wanted)
      if (!present.has(l)) await db.query(`ALTER TYPE ${o.name} ADD VALUE IF NOT EXISTS ${quoteLiteral(l)}`)
  }

  /** Alters a table in place to its new definition, or refuses a change that would lose data. */
  private async migrate(old: TableDef, t: TableDef): Promise<void> {
    const db = this.conn
    let name = old.name
    if (old.name !== t.name) {
      const [os, on] = splitName(old.name)
      const [ns, nn] = splitName(t.name)
      if (os !== ns) {
        await this.ensureSchema(t.name)
        await db.query(`ALTER TABLE ${name} SET SCHEMA ${quoteIdent(ns)}`)
        name = `${quoteIdent(ns)}.${quoteIdent(on)}`
      }
      if (on !== nn) await db.query(`ALTER TABLE ${name} RENAME TO ${quoteIdent(nn)}`)
      name = t.name
    }
    const before = new Map(old.columns.map((c) => [c.name, c]))
    const after = new Map(t.columns.map((c) => [c.name, c]))
    const gone = old.columns.filter((c) => !after.has(c.name)).map((c) => c.name)
    const added = t.columns.filter((c) => !before.has(c.name)).map((c) => c.name)
    if (gone.length && added.length) {
      throw MeshError.UNSUPPORTED_DDL(
        `${t.name}: column${gone.length > 1 ? 's' : ''} ${gone.join(', ')} left and ${added.join(', ')} ` +
          'appeared at the origin; a rename cannot be told apart from a drop and an add, ' +
          'so apply of this dataset stops here rather than lose values',
        { context: { table: t.name, gone, added } }
      )
    }
    const keyNames = (d: TableDef) => d.key.map((i) => d.columns[i].name)
    const keyChanged = JSON.stringify(keyNames(old)) !== JSON.stringify(keyNames(t))
    if (keyChanged) {
      const pk = await db.query(
        `SELECT conname FROM pg_constraint WHERE conrelid = to_regclass($1) AND contype = 'p'`,
        [name]
      )
      for (const r of pk.rows) await db.query(`ALTER TABLE ${name} DROP CONSTRAINT ${quoteIdent(r.conname)}`)
    }
    for (const c of gone) await db.query(`ALTER TABLE ${name} DROP COLUMN ${quoteIdent(c)}`)
    for (const c of added) await db.query(`ALTER TABLE ${name} ADD COLUMN ${withoutNotNull(columnClause(t, c))}`)
    for (const c of t.columns) {
      const o = before.get(c.name)
      if (o && o.type !== c.type)
        await db.query(
          `ALTER TABLE ${name} ALTER COLUMN ${quoteIdent(c.name)} TYPE ${c.type} ` +
            `USING ${quoteIdent(c.name)}::text::${c.type}`
        )
    }
    if (keyChanged && t.key.length)
      await db.query(`ALTER TABLE ${name} ADD PRIMARY KEY (${keyNames(t).map(quoteIdent).join(', ')})`)
    // Defaults: what a promoted replica fills in. They do not change the data, so one the replica cannot take
    // is skipped with a warning instead of stopping apply. (NOT NULL is set at promotion: see withoutNotNull.)
    for (const c of t.columns) {
      const o = before.get(c.name)
      if (!o) continue
      const col = quoteIdent(c.name)
      const was = defaultOf(old, c.name)
      const now = defaultOf(t, c.name)
      const steps: string[] = []
      if (was !== now)
        steps.push(
          now === null
            ? `ALTER TABLE ${name} ALTER COLUMN ${col} DROP DEFAULT`
            : `ALTER TABLE ${name} ALTER COLUMN ${col} SET DEFAULT ${now}`
        )
      for (const sql of steps) {
        await db.query('SAVEPOINT mesh_constraint')
        try {
          await db.query(sql)
          await db.query('RELEASE mesh_constraint')
        } catch (err) {
          await db.query('ROLLBACK TO mesh_constraint')
          await db.query('RELEASE mesh_constraint')
          this.log.warn('replica cannot follow a column constraint change; it is skipped', {
            table: t.name,
            column: c.name,
            error: (err as Error).message
          })
        }
      }
    }
  }

  async close(): Promise<void> {
    const c = this.client
    this.client = null
    await c?.end().catch(() => {})
  }
}

/** The column's clause in the table's CREATE TABLE (one column per line), with its default and NOT NULL. */
function columnClause(t: TableDef, column: string): string {
  const head = `${quoteIdent(column)} `
  const line = t.sql
    .split('\n')
    .map((l) => l.trim().replace(/,$/, ''))
    .find((l) => l.startsWith(head))
  if (line) return line
  const c = t.columns.find((x) => x.name === column)!
  return `${quoteIdent(column)} ${c.type}`
}

/**
 * A replica does not enforce NOT NULL (primary keys aside): the origin did, and a column's NOT NULL can
 * change in the same transaction as rows that need the change, which the rows do not show. Promotion sets
 * them again from the last schema (adopt.ts).
 */
function withoutNotNull(sql: string): string {
  return sql
    .split('\n')
    .map((l) => l.replace(/ NOT NULL(,?)$/, '$1'))
    .join('\n')
}

/** A column's DEFAULT expression as its table's CREATE TABLE line gives it, or null. */
function defaultOf(t: TableDef, column: string): string | null {
  const head = `${quoteIdent(column)} `
  const line = t.sql
    .split('\n')
    .map((l) => l.trim().replace(/,$/, ''))
    .find((l) => l.startsWith(head))
  const m = line ? / DEFAULT (.*?)(?: NOT NULL)?$/.exec(line) : null
  return m ? m[1] : null
}

/** How a replica creates an index or constraint: unique ones deferred to commit (see the module comment). */
function replicaSql(o: SchemaObject): string {
  if (o.type === 'index') return o.sql.replace(/^CREATE UNIQUE INDEX /, 'CREATE INDEX ')
  if (/ (UNIQUE|FOREIGN KEY) /.test(o.sql) && !/DEFERRABLE/.test(o.sql)) return `${o.sql} DEFERRABLE INITIALLY DEFERRED`
  return o.sql
}
