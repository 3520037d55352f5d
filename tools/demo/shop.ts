/**
 * The simulated shop of `mesh demo`: a small point-of-sale application writing its own SQLite database
 * (customers, orders, order_lines) a few times a second.
 *
 * The shop knows nothing of branchmesh: it opens its file with its own connection, in WAL mode, and writes
 * ordinary transactions (inserts, updates, deletes). The node, another process, captures them.
 */
import Database from '../../adapters/sqlite/better-sqlite3.ts'
import { prng } from '../prng.ts'

const SCHEMA = `
CREATE TABLE customers (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL,
  city TEXT,
  loyalty_points INTEGER NOT NULL DEFAULT 0,
  joined_at TEXT NOT NULL
);
CREATE TABLE orders (
  id INTEGER PRIMARY KEY,
  customer_id INTEGER REFERENCES customers(id),
  placed_at TEXT NOT NULL,
  status TEXT NOT NULL,
  total_cents INTEGER NOT NULL DEFAULT 0,
  note TEXT
);
CREATE TABLE order_lines (
  id INTEGER PRIMARY KEY,
  order_id INTEGER NOT NULL REFERENCES orders(id),
  product TEXT NOT NULL,
  qty INTEGER NOT NULL,
  price_cents INTEGER NOT NULL,
  weight_kg REAL
);
CREATE INDEX order_lines_by_order ON order_lines(order_id);
`

const FIRST = [
  ...['Ana', 'Bjørn', 'Chloé', 'Dmitri', 'Émile', 'Fatima', 'Grace', 'Hiro'],
  ...['Ines', 'José', 'Kofi', 'Lena', 'Mei', 'Noor', 'Olga', 'Pedro']
]
const LAST = [
  ...['Silva', 'Müller', 'Nakamura', 'Okafor', "O'Brien", 'Kowalski'],
  ...['Dubois', 'Rossi', 'Haddad', 'Larsen', 'Chen', 'García']
]
const CITIES = ['Porto', 'Zürich', 'Kraków', 'Lyon', 'Osaka', 'Accra', null]
const PRODUCTS: Array<[string, number, number | null]> = [
  ['Espresso beans 1 kg', 1899, 1.0],
  ['Green tea 250 g', 799, 0.25],
  ['Ceramic mug', 1250, 0.35],
  ['Gift card', 2500, null],
  ['Croissant', 240, 0.07],
  ['Oat milk 1 l', 329, 1.03],
  ['French press', 3490, 0.8],
  ['Dark chocolate 70 %', 450, 0.1]
]
const NOTES = [null, null, null, 'gift wrap please', 'deliver after 5 pm', 'paid in cash', '🎂 birthday']

export interface ShopCounts {
  customers: number
  orders: number
  lines: number
}

export interface ShopStats {
  transactions: number
  inserts: number
  updates: number
  deletes: number
  /** Transactions given up because the database stayed locked (tried again at the next tick). */
  busy: number
}

/** One shop's application and its database file. */
export class Shop {
  readonly file: string
  readonly stats: ShopStats = { transactions: 0, inserts: 0, updates: 0, deletes: 0, busy: 0 }
  private db: Database.Database
  private rand: () => number
  private timer: NodeJS.Timeout | null = null
  private clock = Date.UTC(2025, 2, 1, 9, 0, 0)
  /** The first error a timed write hit other than a lock (a full disk, say): the demo reports it and fails. */
  error: Error | null = null
  /**
   * While not null, every row this shop inserts, updates or deletes, as `table:id` (see track()). A row
   * updated to the value it had counts too: SQLite's triggers, which capture uses, fire for it as well.
   */
  private touched: Set<string> | null = null

  /** Creates the database file with its tables (WAL mode, as branchmesh recommends) and opens it. */
  constructor(file: string, seed: number) {
    this.file = file
    this.rand = prng(seed)
    // A short busy timeout: this runs in the demo's process, whose event loop a long wait would freeze.
    this.db = new Database(file, { timeout: 2000 })
    this.db.pragma('journal_mode = WAL')
    const have = this.db.prepare("SELECT count(*) FROM sqlite_schema WHERE name = 'orders'").pluck().get() as number
    if (have === 0) this.db.exec(SCHEMA)
    else {
      // Another till's database (the demo's promoted copy): its day goes on from the latest time in it.
      const latest = this.db
        .prepare(
          'SELECT max(t) FROM (SELECT max(placed_at) AS t FROM orders UNION ALL SELECT max(joined_at) FROM customers)'
        )
        .pluck()
        .get() as string | null
      if (latest) this.clock = Math.max(this.clock, Date.parse(latest))
    }
  }

  private pick<T>(list: readonly T[]): T {
    return list[Math.floor(this.rand() * list.length)]
  }

  private touch(table: 'customers' | 'orders' | 'order_lines', id: number | bigint): void {
    this.touched?.add(`${table}:${id}`)
  }

  /** From now on, records the key of every row this shop writes; returns the set it fills. */
  track(): Set<string> {
    this.touched = new Set()
    return this.touched
  }

  private now(): string {
    this.clock += Math.floor(this.rand() * 90_000)
    return new Date(this.clock).toISOString()
  }

  private someId(table: 'customers' | 'orders', where = ''): number | null {
    const row = this.db.prepare(`SELECT id FROM ${table} ${where} ORDER BY random() LIMIT 1`).pluck().get() as
      | number
      | undefined
    return row ?? null
  }

  private addCustomer(): number {
    this.stats.inserts++
    const name = `${this.pick(FIRST)} ${this.pick(LAST)}`
    const id = Number(
      this.db
        .prepare('INSERT INTO customers (name, city, joined_at) VALUES (?, ?, ?)')
        .run(name, this.pick(CITIES), this.now()).lastInsertRowid
    )
    this.touch('customers', id)
    return id
  }

  private addOrder(): void {
    const customer = this.rand() < 0.8 ? this.someId('customers') : null
    const id = Number(
      this.db
        .prepare("INSERT INTO orders (customer_id, placed_at, status, note) VALUES (?, ?, 'open', ?)")
        .run(customer, this.now(), this.pick(NOTES)).lastInsertRowid
    )
    this.touch('orders', id)
    this.stats.inserts++
    let total = 0
    const lines = 1 + Math.floor(this.rand() * 4)
    const insertLine = this.db.prepare(
      'INSERT INTO order_lines (order_id, product, qty, price_cents, weight_kg) VALUES (?, ?, ?, ?, ?)'
    )
    for (let i = 0; i < lines; i++) {
      const [product, price, weight] = this.pick(PRODUCTS)
      const qty = 1 + Math.floor(this.rand() * 3)
      const line = insertLine.run(id, product, qty, price, weight === null ? null : weight * qty)
      this.touch('order_lines', line.lastInsertRowid)
      total += qty * price
      this.stats.inserts++
    }
    this.db.prepare('UPDATE orders SET total_cents = ? WHERE id = ?').run(total, id)
    this.stats.updates++
    if (customer !== null) {
      this.db
        .prepare('UPDATE customers SET loyalty_points = loyalty_points + ? WHERE id = ?')
        .run(Math.floor(total / 100), customer)
      this.touch('customers', customer)
      this.stats.updates++
    }
  }

  private advanceOrder(): void {
    const id = this.someId('orders', "WHERE status IN ('open', 'paid')")
    if (id === null) {
      this.addOrder()
      return
    }
    this.db
      .prepare("UPDATE orders SET status = CASE status WHEN 'open' THEN 'paid' ELSE 'shipped' END WHERE id = ?")
      .run(id)
    this.touch('orders', id)
    this.stats.updates++
  }

  private cancelOrder(): void {
    const id = this.someId('orders', "WHERE status = 'open'")
    if (id === null) {
      this.addOrder()
      return
    }
    const lines = this.db.prepare('SELECT id FROM order_lines WHERE order_id = ?').pluck().all(id) as number[]
    for (const line of lines) this.touch('order_lines', line)
    this.stats.deletes += this.db.prepare('DELETE FROM order_lines WHERE order_id = ?').run(id).changes
    this.stats.deletes += this.db.prepare('DELETE FROM orders WHERE id = ?').run(id).changes
    this.touch('orders', id)
  }

  private editLine(): void {
    const line = this.db.prepare('SELECT id, order_id FROM order_lines ORDER BY random() LIMIT 1').get() as
      | { id: number; order_id: number }
      | undefined
    if (!line) {
      this.addOrder()
      return
    }
    this.touch('order_lines', line.id)
    this.touch('orders', line.order_id)
    if (this.rand() < 0.5) {
      this.db.prepare('UPDATE order_lines SET qty = qty + 1, weight_kg = weight_kg * 1.5 WHERE id = ?').run(line.id)
      this.stats.updates++
    } else {
      this.stats.deletes += this.db.prepare('DELETE FROM order_lines WHERE id = ?').run(line.id).changes
    }
    this.db
      .prepare(
        'UPDATE orders SET total_cents = ' +
          '(SELECT coalesce(sum(qty * price_cents), 0) FROM order_lines WHERE order_id = ?) WHERE id = ?'
      )
      .run(line.order_id, line.order_id)
    this.stats.updates++
  }

  private moveCustomer(): void {
    const id = this.someId('customers')
    if (id === null) return void this.addCustomer()
    this.db.prepare('UPDATE customers SET city = ? WHERE id = ?').run(this.pick(CITIES), id)
    this.touch('customers', id)
    this.stats.updates++
  }

  /**
   * One piece of business, in one transaction: mostly new orders, some payments, edits and cancellations.
   * BEGIN IMMEDIATE: each transaction reads before it writes, and a deferred transaction that another
   * connection (the node, acknowledging captured changes) writes under would fail with SQLITE_BUSY at once,
   * without waiting; an immediate one waits for the lock (up to the busy timeout) instead.
   */
  step(): void {
    this.db
      .transaction(() => {
        const r = this.rand()
        if (r < 0.4) this.addOrder()
        else if (r < 0.65) this.advanceOrder()
        else if (r < 0.75) this.cancelOrder()
        else if (r < 0.85) this.editLine()
        else if (r < 0.93) this.addCustomer()
        else this.moveCustomer()
      })
      .immediate()
    this.stats.transactions++
  }

  /** The shop's history before branchmesh was installed. */
  seed(customers: number, orders: number): void {
    this.db.transaction(() => {
      for (let i = 0; i < customers; i++) this.addCustomer()
      for (let i = 0; i < orders; i++) this.addOrder()
    })()
  }

  /** Trades every `everyMs` until stop(), or until it has made `limit` more transactions. */
  open(everyMs: number, limit = Infinity): void {
    if (this.timer) return
    const until = this.stats.transactions + limit
    this.timer = setInterval(() => {
      try {
        this.step()
        if (this.stats.transactions >= until) this.stop()
      } catch (err) {
        // The database stayed locked for the whole busy timeout: a real till would try again, so does this one.
        if (String((err as { code?: unknown }).code ?? '').startsWith('SQLITE_BUSY')) this.stats.busy++
        else this.error ??= err as Error
      }
    }, everyMs)
  }

  get trading(): boolean {
    return this.timer !== null
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer)
    this.timer = null
  }

  counts(): ShopCounts {
    const n = (t: string) => this.db.prepare(`SELECT count(*) FROM ${t}`).pluck().get() as number
    return { customers: n('customers'), orders: n('orders'), lines: n('order_lines') }
  }

  close(): void {
    this.stop()
    if (this.db.open) this.db.close()
  }
}
