/**
 * SQLite apply: builds a replica file by applying log units in order.
 *
 * Each unit, with the replica's new applied position, is written in one synchronous better-sqlite3
 * transaction (no await inside), so a crash leaves either all of a unit or none of it.
 *
 * Rows are written with INSERT OR REPLACE, which makes a unit converge whatever the order of its rows. The
 * rows a REPLACE conflict deleted at the origin (no delete trigger fires) arrive as deletes: capture records
 * their keys with BEFORE triggers (conflictTriggers in capture-triggers.ts); the replica's own conflicts, when
 * the new row still conflicts, only remove what those deletes remove anyway.
 *
 * What it does not do: run the origin's triggers. They are kept in the replica's metadata and not created,
 * because the rows they would write arrive through the log anyway; promotion creates them. Foreign keys are
 * not enforced while applying for the same reason (the origin enforced them).
 */
import { MeshError, type Entry, type SchemaEntry, type TableDef, type Value } from '../../protocol/index.ts'
import type Database from 'better-sqlite3'
import type { AppliedPosition, ApplySide, DamageGuard, Logger, ReplicaState, Unit } from '../types.ts'
import { guardCountLimit, headerFits, unitChanges, unitFits } from '../position.ts'
import { ReplicaBase, type ReplicaMeta } from '../replica.ts'
import {
  OWN_PREFIX,
  SEQUENCE_TABLE,
  digestTables,
  dropGuardSql,
  guardTriggersSql,
  keyCollationsOf,
  keyColumns,
  openDatabase,
  quote,
  readTables,
  sqliteError,
  type DB
} from './common.ts'
import { RawAware, bindValue, hasRawText, keyText } from './text.ts'

const META = `${OWN_PREFIX}replica`

/**
 * A table with at least this many rows in one entry has its guard lifted for the rest of the transaction
 * (SqliteApply.liftGuard). Measured here: the guard costs a row about 1 µs (the trigger program and the call
 * into JavaScript), lifting it and putting it back about 60 µs per transaction (the DDL and re-preparing the
 * statements it invalidates), so below this the guard is cheaper to pass than to lift.
 */
const LIFT_ROWS = 64

export interface SqliteApplyOptions {
  path: string
  logger?: Logger
  /** Dataset id this replica must belong to; checked against the log header. */
  dataset?: string
  /** Flags units that delete or change a large share of a table (see DamageAlert). */
  guard?: DamageGuard
  /**
   * Compare this database with the origin's checkpoints as they are applied (default true). Off for
   * databases built from the log only (restores, snapshots, verify's scratch copy): they hold what the log
   * says by construction, and a digest per checkpoint of a long history would cost a full read each.
   */
  checkpoints?: boolean
  /** Refuse writes by other programs with guard triggers (default true; see GUARD_FUNCTION in common.ts). */
  refuseWrites?: boolean
}

interface Prepared {
  def: TableDef
  upsert: RawAware
  remove: RawAware
  /** Whether a row with the key of this upsert row exists. */
  exists: RawAware
  count: Database.Statement
  /** `many` rows in one INSERT OR REPLACE (rows holding no raw TEXT); null when a row is too wide for it. */
  upsertMany: Database.Statement | null
  many: number
  /** Indexes of the key columns not declared NOT NULL (SqliteApply.replaceNullKeyGroups). */
  nullable: number[]
}

/** Rows per multi-row upsert, and the most parameters one may take (SQLite's limit is 32,766). */
const MANY_ROWS = 100
const MANY_PARAMS = 30_000

/** Whether rows [from, from + n) hold no raw TEXT (a multi-row upsert binds every value as it is). */
function plainRows(rows: Value[][], from: number, n: number): boolean {
  for (let r = from; r < from + n; r++) if (hasRawText(rows[r])) return false
  return true
}

export class SqliteApply extends ReplicaBase implements ApplySide {
  readonly engine = 'sqlite' as const
  private readonly path: string
  private readonly refuseWrites: boolean
  private db: DB | null = null
  private prepared = new Map<number, Prepared>()
  /** SQLite's data_version as this connection last saw it: it moves only when another connection commits. */
  private dataVersion = -1
  private written = false
  /** Tables whose guard is lifted inside the open transaction (liftGuard); restoreGuards empties it. */
  private lifted = new Set<number>()

  constructor(opts: SqliteApplyOptions) {
    super(opts)
    this.path = opts.path
    this.refuseWrites = opts.refuseWrites ?? true
  }

  private get conn(): DB {
    if (this.db === null) throw MeshError.CLOSED('the SQLite replica is not open')
    return this.db
  }

  async open(): Promise<void> {
    if (this.db !== null) return
    // Writes by others are judged from this opening on (a repair replaces what they wrote).
    this.written = false
    const db = openDatabase(this.path, { mustExist: false })
    this.db = db
    try {
      db.defaultSafeIntegers(true)
      db.pragma('journal_mode = WAL')
      // NORMAL is enough: a power cut may lose the last applied units, never half of one, and the log
      // still holds them, so they are applied again.
      db.pragma('synchronous = NORMAL')
      db.pragma('foreign_keys = OFF')
      const own = db.prepare(`SELECT count(*) FROM sqlite_schema WHERE name = ?`).pluck().get(META) as bigint
      if (own === 0n) {
        const user = db
          .prepare(`SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'`)
          .pluck()
          .get() as bigint
        if (user > 0n) {
          throw MeshError.BAD_REPLICA(`${this.path} already holds tables that branchmesh did not make`, {
            context: { path: this.path }
          })
        }
        db.exec(`CREATE TABLE ${META} (k TEXT PRIMARY KEY, v) WITHOUT ROWID`)
      }
      this.meta = this.loadMeta()
      // Replicas made before the guard existed get it now (idempotent).
      db.transaction(() => {
        if (this.refuseWrites)
          for (const t of this.meta.tables) for (const sql of guardTriggersSql(t.id, t.name)) db.exec(sql)
      })()
      this.dataVersion = Number(db.pragma('data_version', { simple: true }))
      if (this.expectDataset && this.meta.dataset && this.meta.dataset !== this.expectDataset) {
        throw MeshError.LOG_MISMATCH(
          `${this.path} is a replica of dataset ${this.meta.dataset}, not ${this.expectDataset}`
        )
      }
    } catch (err) {
      db.close()
      this.db = null
      throw sqliteError(err, this.path, 'cannot open replica')
    }
  }

  private loadMeta(): ReplicaMeta {
    const rows = this.conn.prepare(`SELECT k, v FROM ${META}`).all() as Array<{ k: string; v: unknown }>
    const m = new Map(rows.map((r) => [r.k, r.v]))
    const json = (k: string, d: unknown) => (m.has(k) ? JSON.parse(m.get(k) as string) : d)
    return {
      dataset: (m.get('dataset') as string | undefined) ?? null,
      log: m.has('log') ? new Uint8Array(m.get('log') as Buffer) : null,
      epoch: Number((m.get('epoch') as bigint | undefined) ?? 0n),
      length: Number((m.get('length') as bigint | undefined) ?? 0n),
      treeHash: m.has('tree_hash') && m.get('tree_hash') !== null ? new Uint8Array(m.get('tree_hash') as Buffer) : null,
      state: ((m.get('state') as string | undefined) ?? 'empty') as ReplicaState,
      tables: json('tables', []),
      objects: json('objects', [])
    }
  }

  private saveMeta(): void {
    const put = this.conn.prepare(`INSERT OR REPLACE INTO ${META} (k, v) VALUES (?, ?)`)
    const m = this.meta
    put.run('dataset', m.dataset)
    put.run('log', m.log ? Buffer.from(m.log) : null)
    put.run('epoch', BigInt(m.epoch))
    put.run('length', BigInt(m.length))
    put.run('tree_hash', m.treeHash ? Buffer.from(m.treeHash) : null)
    put.run('state', m.state)
    put.run('tables', JSON.stringify(m.tables))
    put.run('objects', JSON.stringify(m.objects))
  }

  /**
   * Whether something other than this replica's own connection has written to the file since it was opened
   * (an application pointed at the replica, say). Such writes are not captured anywhere and the next units
   * may overwrite them, so the node reports them.
   */
  forgetWrites(): void {
    this.written = false
    if (this.db !== null) this.dataVersion = Number(this.db.pragma('data_version', { simple: true }))
  }

  writtenByOthers(): boolean {
    if (this.written || this.db === null) return this.written
    try {
      if (Number(this.db.pragma('data_version', { simple: true })) !== this.dataVersion) this.written = true
    } catch {
      // A busy or closing file: look again next time.
    }
    return this.written
  }

  async apply(unit: Unit, position: AppliedPosition): Promise<void> {
    const m = this.meta
    this.lastAlerts = []
    this.nullKeys.clear()
    if (unitFits(m, unit, position, { path: this.path }) === 'skip') return
    const before = { ...m }
    try {
      this.conn.transaction(() => {
        this.measureUnit(unit)
        for (const entry of unit.entries) this.applyEntry(entry, position)
        this.restoreGuards()
        m.log = position.log
        m.epoch = position.epoch
        m.length = position.length
        m.treeHash = position.treeHash
        this.saveMeta()
      })()
    } catch (err) {
      // The transaction rolled back (the lifted guards with it): put the in-memory view back as well.
      this.meta = before
      this.prepared.clear()
      this.lifted.clear()
      throw sqliteError(err, this.path, 'cannot apply to replica')
    }
  }

  // --- Units above the memory budget (issue 14) -------------------------------------------------------------
  //
  // The one exception to "a unit is one synchronous transaction" (CONVENTIONS item 11): a unit too large to
  // hold in memory is applied in parts, and the node reads the next part from the log between two of them, so
  // the transaction stays open across awaits: BEGIN IMMEDIATE here, COMMIT (with the position) in commitUnit,
  // ROLLBACK in abortUnit. The connection is this replica's own and the apply loop calls nothing else on it in
  // between; a crash before COMMIT leaves the file as it was before the unit (SQLite's journal), so the
  // replica is still all-or-nothing. What it does not do: measure the unit for the mass-damage guard.
  private open_: { before: ReplicaMeta } | null = null

  /**
   * Keys holding a NULL whose rows this unit has already replaced (table id, then keyText): SQLite lets an
   * ordinary table's PRIMARY KEY hold NULL, and such rows are all distinct, so INSERT OR REPLACE would add a
   * row each time one is updated. Capture sends every row with such a key together (as they are at its read);
   * apply deletes the group once per unit, then inserts what the unit carries. Emptied at each unit.
   */
  private nullKeys = new Map<number, Set<string>>()

  async beginUnit(unit: { start: number; end: number }, position: AppliedPosition): Promise<boolean> {
    if (this.open_ !== null) throw MeshError.BAD_LOG('a unit is already being applied in parts')
    this.lastAlerts = []
    this.nullKeys.clear()
    const whole = { start: unit.start, entries: [], end: unit.end }
    if (unitFits(this.meta, whole, position, { path: this.path }) === 'skip') return false
    try {
      this.conn.exec('BEGIN IMMEDIATE')
    } catch (err) {
      throw sqliteError(err, this.path, 'cannot apply to replica')
    }
    this.open_ = { before: { ...this.meta } }
    return true
  }

  async applyPart(entries: Entry[], position: AppliedPosition): Promise<void> {
    if (this.open_ === null) throw MeshError.BAD_LOG('a part of a unit that was not begun')
    try {
      for (const entry of entries) this.applyEntry(entry, position)
    } catch (err) {
      await this.abortUnit()
      throw sqliteError(err, this.path, 'cannot apply to replica')
    }
  }

  async commitUnit(position: AppliedPosition): Promise<void> {
    if (this.open_ === null) throw MeshError.BAD_LOG('the end of a unit that was not begun')
    const m = this.meta
    try {
      this.restoreGuards()
      m.log = position.log
      m.epoch = position.epoch
      m.length = position.length
      m.treeHash = position.treeHash
      this.saveMeta()
      this.conn.exec('COMMIT')
      this.open_ = null
    } catch (err) {
      await this.abortUnit()
      throw sqliteError(err, this.path, 'cannot apply to replica')
    }
  }

  async abortUnit(): Promise<void> {
    const o = this.open_
    if (o === null) return
    this.open_ = null
    this.meta = o.before
    this.prepared.clear()
    this.lifted.clear()
    try {
      if (this.conn.inTransaction) this.conn.exec('ROLLBACK')
    } catch (err) {
      this.log.warn('rollback of a partly applied unit failed', { error: (err as Error).message })
    }
  }

  private applyEntry(entry: Entry, position: AppliedPosition): void {
    const m = this.meta
    switch (entry.kind) {
      case 'header':
        m.dataset = headerFits(entry, 'sqlite', 'SQLite', m.dataset ?? this.expectDataset, position)
        return
      case 'schema':
        this.applySchema(entry)
        return
      case 'snapshot':
        if (entry.first) {
          for (const t of m.tables) {
            this.liftGuard(t.id)
            this.conn.exec(`DELETE FROM ${quote(t.name)}`)
          }
          m.state = 'seeding'
        }
        this.applyChanges(entry.changes)
        if (entry.last) m.state = 'settling'
        return
      case 'transaction':
        this.applyChanges(entry.changes, true)
        if (m.state === 'settling') m.state = 'ready'
        return
      case 'checkpoint': {
        // The origin's digest at this position: this replica's own, computed in the same transaction.
        if (this.checkpoints)
          this.compareCheckpoint(entry, digestTables(this.conn, readTables(this.conn).tables), position.length - 1)
        return
      }
      case 'fence':
        // Recorded by the node; nothing to change in the data.
        return
    }
  }

  /** Measures a transaction's changes against the table before them, for the mass-damage guard. */
  private measure(p: Prepared, ch: { upserts: Value[][]; deletes: Value[][] }): void {
    const g = this.guard
    const total = ch.upserts.length + ch.deletes.length
    if (total < g.minRows * g.share) return
    const limit = guardCountLimit(total, g)
    const before = Number(p.count.get(limit))
    if (before < g.minRows || before >= limit) return
    const keyOf = (row: Value[]) => (p.def.key.length === 0 ? [row[0]] : p.def.key.map((i) => row[i]))
    let changed = ch.deletes.length
    for (const row of ch.upserts) {
      const key = keyOf(row)
      if (p.exists.stmt(key).get(...key.map(bindValue)) !== undefined) changed++
    }
    if (changed >= g.share * before)
      this.lastAlerts.push({ table: p.def.name, changed: Math.min(changed, before), before })
  }

  /** The guard's measure of a whole unit, before it is applied (inside its transaction). */
  private measureUnit(unit: Unit): void {
    for (const [id, ch] of unitChanges(unit)) {
      if (!this.meta.tables.some((t) => t.id === id)) continue // created by this very unit
      this.measure(this.statements(id), ch)
    }
  }

  /** `grouped`: rows of a transaction, where a key holding a NULL stands for all its rows (nullKeys). */
  private applyChanges(
    changes: Array<{ table: number; upserts: Value[][]; deletes: Value[][] }>,
    grouped = false
  ): void {
    for (const ch of changes) {
      if (ch.table === SEQUENCE_TABLE) {
        this.applySequences(ch)
        continue
      }
      const p = this.statements(ch.table)
      if (ch.upserts.length + ch.deletes.length >= LIFT_ROWS) this.liftGuard(ch.table)
      const width = p.def.columns.length + (p.def.key.length === 0 ? 1 : 0)
      const kwidth = p.def.key.length === 0 ? 1 : p.def.key.length
      for (const key of ch.deletes) {
        if (key.length !== kwidth) throw MeshError.BAD_LOG(`delete key of ${key.length} values for ${p.def.name}`)
        p.remove.stmt(key).run(...key.map(bindValue))
      }
      if (grouped && p.nullable.length > 0) this.replaceNullKeyGroups(p, ch.upserts)
      // Rows go in `p.many` at a time, in order: one INSERT OR REPLACE of several rows does what the same
      // statements one row each would (SQLite takes a multi-row VALUES row by row), for less per row.
      const rows = ch.upserts
      const args: unknown[] = p.upsertMany ? new Array(p.many * width) : []
      for (let i = 0; i < rows.length; ) {
        if (p.upsertMany && i + p.many <= rows.length && plainRows(rows, i, p.many)) {
          for (let r = 0; r < p.many; r++) {
            const row = rows[i + r]
            if (row.length !== width)
              throw MeshError.BAD_LOG(`row of ${row.length} values for ${p.def.name} (${width} columns)`)
            for (let j = 0; j < width; j++) args[r * width + j] = bindValue(row[j])
          }
          p.upsertMany.run(args)
          i += p.many
          continue
        }
        const row = rows[i++]
        if (row.length !== width)
          throw MeshError.BAD_LOG(`row of ${row.length} values for ${p.def.name} (${width} columns)`)
        p.upsert.stmt(row).run(...row.map(bindValue))
      }
    }
  }

  /**
   * The origin's `sqlite_sequence` rows ([table name, seq]; deletes [table name]): after a promotion an
   * AUTOINCREMENT table hands out numbers above every one the old origin used, those of rows deleted before
   * they reached the log included. A name whose table this replica lacks is left out (SQLite keeps no row for
   * a table that is not AUTOINCREMENT).
   */
  private applySequences(ch: { upserts: Value[][]; deletes: Value[][] }): void {
    const db = this.conn
    const has = db.prepare(`SELECT count(*) FROM sqlite_schema WHERE name = 'sqlite_sequence'`).pluck().get() as bigint
    if (has === 0n) return
    const known = new Set(this.meta.tables.map((t) => t.name))
    for (const key of ch.deletes) {
      if (key.length !== 1 || typeof key[0] !== 'string') {
        throw MeshError.BAD_LOG('a sequence delete must be [table name]')
      }
      db.prepare('DELETE FROM sqlite_sequence WHERE name = ?').run(key[0])
    }
    for (const row of ch.upserts) {
      const [name, seq] = row
      if (row.length !== 2 || typeof name !== 'string' || typeof seq !== 'bigint') {
        throw MeshError.BAD_LOG('a sequence row must be [table name, integer]')
      }
      if (!known.has(name)) continue
      if (db.prepare('UPDATE sqlite_sequence SET seq = ? WHERE name = ?').run(seq, name).changes === 0) {
        db.prepare('INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)').run(name, seq)
      }
    }
  }

  private statements(id: number): Prepared {
    const have = this.prepared.get(id)
    if (have) return have
    const def = this.meta.tables.find((t) => t.id === id)
    if (def === undefined) throw MeshError.BAD_LOG(`change for table id ${id}, which no schema entry defined`)
    const db = this.conn
    const t = quote(def.name)
    const cols = def.columns.map((c) => quote(c.name))
    const keyless = def.key.length === 0
    const rowid = keyless ? this.rowidAlias(def.name) : ''
    const list = keyless ? [rowid, ...cols] : cols
    // Placeholders come from ph(i), so a row or key holding raw TEXT gets a statement that casts it back.
    // Keys compared under the PRIMARY KEY's collations, as capture compares them (keyColumns).
    const keyCols = keyless
      ? []
      : keyColumns({ ...def, keyCollations: keyCollationsOf(db, def.name, def.sql, def.key.length) })
    const where = (ph: (i: number) => string) =>
      keyless ? `${rowid} = ${ph(0)}` : keyCols.map((c, i) => `${c} IS ${ph(i)}`).join(' AND ')
    const values = (ph: (i: number) => string) => list.map((_, i) => ph(i)).join(', ')
    const upsert = new RawAware(db, (ph) => `INSERT OR REPLACE INTO ${t} (${list.join(', ')}) VALUES (${values(ph)})`)
    const remove = new RawAware(db, (ph) => `DELETE FROM ${t} WHERE ${where(ph)}`)
    const exists = new RawAware(db, (ph) => `SELECT 1 FROM ${t} WHERE ${where(ph)}`)
    const count = db.prepare(`SELECT count(*) FROM (SELECT 1 FROM ${t} LIMIT ?)`).pluck()
    const many = Math.min(MANY_ROWS, Math.floor(MANY_PARAMS / list.length))
    const row = `(${list.map(() => '?').join(', ')})`
    const upsertMany =
      many > 1
        ? db.prepare(`INSERT OR REPLACE INTO ${t} (${list.join(', ')}) VALUES ${Array(many).fill(row).join(', ')}`)
        : null
    // Key columns that may hold NULL: none in a WITHOUT ROWID table or an INTEGER PRIMARY KEY (the rowid), where
    // SQLite refuses it, so the rows there never hold one and replaceNullKeyGroups finds nothing to do.
    const nullable = keyless ? [] : def.key.filter((k) => !def.columns[k].notNull)
    const p = { def, upsert, remove, exists, count, upsertMany, many, nullable }
    this.prepared.set(id, p)
    return p
  }

  /** Deletes, once per unit, the rows of each key holding a NULL among `rows`, which then insert the group. */
  private replaceNullKeyGroups(p: Prepared, rows: Value[][]): void {
    let done = this.nullKeys.get(p.def.id)
    for (const row of rows) {
      if (!p.nullable.some((k) => row[k] === null)) continue
      const key = p.def.key.map((k) => row[k])
      const text = keyText(key)
      if (done?.has(text)) continue
      if (done === undefined) this.nullKeys.set(p.def.id, (done = new Set()))
      done.add(text)
      p.remove.stmt(key).run(...key.map(bindValue))
    }
  }

  private rowidAlias(table: string): string {
    const names = new Set(
      (this.conn.prepare(`PRAGMA main.table_xinfo(${quote(table)})`).all() as Array<{ name: string }>).map((c) =>
        c.name.toLowerCase()
      )
    )
    const alias = ['rowid', '_rowid_', 'oid'].find((n) => !names.has(n))
    if (alias === undefined) throw MeshError.BAD_LOG(`table ${table} has no addressable rowid`)
    return alias
  }

  /**
   * Lifts the guard of table `id` for the rest of this connection's open transaction. Its triggers are dropped
   * here and created again by restoreGuards before the COMMIT (or come back with a ROLLBACK), so no other
   * connection ever sees the table unguarded: the DDL is part of the transaction, and this connection holds
   * the write lock from the DROP to the COMMIT. Only speed depends on it (the guard function lets this
   * connection through anyway): the guard's trigger program runs per row, which costs a large unit about a
   * fifth of its time, and a table without triggers is written by SQLite's faster paths.
   */
  private liftGuard(id: number): void {
    if (!this.refuseWrites || this.lifted.has(id)) return
    for (const sql of dropGuardSql(id)) this.conn.exec(sql)
    this.lifted.add(id)
  }

  /** Puts back the guards liftGuard took off in this transaction, on the tables the replica still has. */
  private restoreGuards(): void {
    for (const id of this.lifted) {
      const t = this.meta.tables.find((x) => x.id === id)
      if (t !== undefined) for (const sql of guardTriggersSql(id, t.name)) this.conn.exec(sql)
    }
    this.lifted.clear()
  }

  private applySchema(entry: SchemaEntry): void {
    const db = this.conn
    const m = this.meta
    const current = new Map(m.tables.map((t) => [t.id, t]))
    const next = new Map(entry.tables.map((t) => [t.id, t]))
    const reset = new Set(entry.reset)
    const count = db.prepare('SELECT count(*) FROM sqlite_schema WHERE type = ? AND name = ?').pluck()
    const exists = (type: string, name: string) => (count.get(type, name) as bigint) > 0n
    const recreate = new Set<number>()
    for (const t of entry.tables) {
      const old = current.get(t.id)
      if (old === undefined || reset.has(t.id)) recreate.add(t.id)
      else if (old.sql !== t.sql || old.name !== t.name) {
        throw MeshError.BAD_LOG(`table ${t.name} changed definition without being resent`)
      }
    }
    // Drops first, so renames and swaps of table names cannot collide.
    for (const old of m.tables) {
      if (!next.has(old.id) || recreate.has(old.id)) db.exec(`DROP TABLE IF EXISTS ${quote(old.name)}`)
    }
    for (const id of recreate) {
      const t = next.get(id)!
      if (t.name.startsWith(OWN_PREFIX) || t.name.startsWith('sqlite_'))
        throw MeshError.BAD_LOG(`table name ${t.name} is reserved`)
      db.exec(`DROP TABLE IF EXISTS ${quote(t.name)}`)
      db.exec(t.sql)
      if (this.refuseWrites) for (const sql of guardTriggersSql(id, t.name)) db.exec(sql)
    }
    // Indexes and views: keep what is unchanged and still there, drop the rest, create what is missing.
    const wanted = new Map(entry.objects.filter((o) => o.type !== 'trigger').map((o) => [`${o.type}:${o.name}`, o]))
    for (const o of m.objects) {
      if (o.type === 'trigger') continue
      const w = wanted.get(`${o.type}:${o.name}`)
      if (w === undefined || w.sql !== o.sql)
        db.exec(`DROP ${o.type === 'index' ? 'INDEX' : 'VIEW'} IF EXISTS ${quote(o.name)}`)
    }
    this.skippedObjects = []
    for (const o of wanted.values()) {
      if (exists(o.type, o.name)) continue
      // A savepoint, so that one object the replica cannot create does not undo the unit.
      db.exec('SAVEPOINT mesh_object')
      try {
        db.exec(o.sql)
        db.exec('RELEASE mesh_object')
      } catch (err) {
        db.exec('ROLLBACK TO mesh_object')
        db.exec('RELEASE mesh_object')
        this.skippedObjects.push(`${o.type} ${o.name}: ${(err as Error).message}`)
        this.log.warn('replica cannot create a schema object; it is skipped', {
          object: o.name,
          error: (err as Error).message
        })
      }
    }
    m.tables = entry.tables
    m.objects = entry.objects
    this.prepared.clear()
  }

  async close(): Promise<void> {
    if (this.db === null) return
    this.db.close()
    this.db = null
    this.prepared.clear()
  }
}
