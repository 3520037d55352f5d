/**
 * A random workload on a SQLite file: inserts, updates, deletes and key changes on every kind of table, in
 * multi-statement transactions. Each transaction also moves money between accounts (the total never
 * changes) and appends one row to `events` with the next serial, so a replica that ever shows a split
 * transaction, a lost one or a doubled one is caught.
 */
import type Database from 'better-sqlite3'
import { prng } from '../../tools/prng.ts'
import { openWal, readDb, sqliteOrigin } from './db.ts'
import type { TestContext } from './teardown.ts'

export { prng }

export const SCHEMA =
  `
  CREATE TABLE IF NOT EXISTS accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL);
  CREATE TABLE IF NOT EXISTS events (serial INTEGER PRIMARY KEY, at REAL, note TEXT);
  CREATE TABLE IF NOT EXISTS items (sku TEXT PRIMARY KEY, qty INTEGER, price REAL, img BLOB);
  CREATE TABLE IF NOT EXISTS lines (order_id INTEGER, line INTEGER, sku TEXT, qty INTEGER, ` +
  `PRIMARY KEY (order_id, line));
  CREATE TABLE IF NOT EXISTS tags (tag TEXT PRIMARY KEY, n INTEGER) WITHOUT ROWID;
  CREATE TABLE IF NOT EXISTS notes (body TEXT, weight REAL);
`
export const ACCOUNTS = 20
export const TOTAL = 1_000_000n

export function setup(db: Database.Database): void {
  db.exec(SCHEMA)
  const n = db.prepare('SELECT count(*) FROM accounts').pluck().get() as number | bigint
  if (Number(n) === 0) {
    const ins = db.prepare('INSERT INTO accounts (id, balance) VALUES (?, ?)')
    db.transaction(() => {
      for (let i = 1; i <= ACCOUNTS; i++) ins.run(i, TOTAL / BigInt(ACCOUNTS))
    })()
  }
}

export class Workload {
  private readonly db: Database.Database
  private readonly rand: () => number
  private readonly s: Record<string, Database.Statement>

  constructor(db: Database.Database, seed: number) {
    this.db = db
    this.rand = prng(seed)
    const p = (sql: string) => db.prepare(sql)
    this.s = {
      move1: p('UPDATE accounts SET balance = balance - ? WHERE id = ?'),
      move2: p('UPDATE accounts SET balance = balance + ? WHERE id = ?'),
      event: p(
        'INSERT INTO events (serial, at, note) VALUES ((SELECT coalesce(max(serial), 0) + 1 FROM events), ?, ?)'
      ),
      item: p('INSERT OR REPLACE INTO items (sku, qty, price, img) VALUES (?, ?, ?, ?)'),
      itemUpd: p('UPDATE items SET qty = qty + 1, price = price * 1.01 WHERE sku = ?'),
      itemDel: p('DELETE FROM items WHERE sku = ?'),
      itemRekey: p("UPDATE OR IGNORE items SET sku = sku || 'r' WHERE sku = ?"),
      line: p('INSERT OR REPLACE INTO lines (order_id, line, sku, qty) VALUES (?, ?, ?, ?)'),
      lineDel: p('DELETE FROM lines WHERE order_id = ?'),
      lineRekey: p('UPDATE OR IGNORE lines SET order_id = order_id + 1000 WHERE order_id = ?'),
      tag: p('INSERT INTO tags (tag, n) VALUES (?, 1) ON CONFLICT (tag) DO UPDATE SET n = n + 1'),
      tagDel: p('DELETE FROM tags WHERE tag = ?'),
      note: p('INSERT INTO notes (body, weight) VALUES (?, ?)'),
      noteDel: p('DELETE FROM notes WHERE rowid = (SELECT rowid FROM notes ORDER BY rowid LIMIT 1 OFFSET ?)'),
      noteUpd: p("UPDATE notes SET body = body || '+' WHERE rowid % 7 = ?")
    }
  }

  private int(n: number): number {
    return Math.floor(this.rand() * n)
  }

  /** One random transaction of 1 to `maxOps` statements. */
  transaction(maxOps = 8): void {
    const ops = 1 + this.int(maxOps)
    this.db.transaction(() => {
      const amount = 1 + this.int(500)
      const from = 1 + this.int(ACCOUNTS)
      const to = 1 + this.int(ACCOUNTS)
      this.s.move1.run(amount, from)
      this.s.move2.run(amount, to)
      this.s.event.run(this.rand() * 1e6, `tx ${ops}`)
      for (let i = 0; i < ops; i++) this.op()
    })()
  }

  private op(): void {
    const sku = `sku-${this.int(300)}`
    switch (this.int(12)) {
      case 0:
      case 1:
        this.s.item.run(
          sku,
          this.int(100),
          this.rand() * 100,
          this.rand() < 0.3 ? Buffer.from([0, this.int(256), 0]) : null
        )
        break
      case 2:
        this.s.itemUpd.run(sku)
        break
      case 3:
        this.s.itemDel.run(sku)
        break
      case 4:
        this.s.itemRekey.run(sku)
        break
      case 5:
        for (let l = 0; l < 1 + this.int(4); l++) this.s.line.run(this.int(200), l, sku, this.int(9))
        break
      case 6:
        this.s.lineDel.run(this.int(200))
        break
      case 7:
        this.s.lineRekey.run(this.int(200))
        break
      case 8:
        this.s.tag.run(`t${this.int(50)}`)
        break
      case 9:
        this.s.tagDel.run(`t${this.int(50)}`)
        break
      case 10:
        this.s.note.run(`note ${this.int(1e6)}`, this.rand() < 0.1 ? -0.0 : this.rand())
        break
      default:
        if (this.rand() < 0.5) this.s.noteDel.run(this.int(20))
        else this.s.noteUpd.run(this.int(7))
    }
  }
}

/**
 * An origin for the workload: `origin.db` in a temporary folder, its tables made and its accounts filled,
 * open with a workload of seed `seed` on it; all of it gone when the test ends.
 */
export function workloadOrigin(
  t: TestContext,
  seed: number
): { dir: string; file: string; db: Database.Database; w: Workload } {
  const { dir, file, db } = sqliteOrigin(t)
  setup(db)
  return { dir, file, db, w: new Workload(db, seed) }
}

/** Writes `n` random transactions of up to `maxOps` statements into `file`, from this (non-node) process. */
export function writeWorkload(file: string, seed: number, n: number, maxOps = 8): void {
  const db = openWal(file)
  const w = new Workload(db, seed)
  for (let i = 0; i < n; i++) w.transaction(maxOps)
  db.close()
}

/** The invariants (see checkInvariants) of the database in `file` now, read through a read-only connection. */
export function invariantsOf(file: string): { total: bigint; events: number; maxSerial: number } {
  return readDb(file, checkInvariants)
}

/** The invariants any state the origin had satisfies. */
export function checkInvariants(db: Database.Database): { total: bigint; events: number; maxSerial: number } {
  const total = db.prepare('SELECT coalesce(sum(balance), 0) FROM accounts').safeIntegers(true).pluck().get() as bigint
  const events = Number(db.prepare('SELECT count(*) FROM events').pluck().get())
  const maxSerial = Number(db.prepare('SELECT coalesce(max(serial), 0) FROM events').pluck().get())
  return { total, events, maxSerial }
}
