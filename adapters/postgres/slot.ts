/**
 * The origin's replication slot and publication, as capture by logical decoding needs them: what the server
 * must allow, a new slot with the snapshot it exports (the initial copy reads under it), and how much WAL a
 * slot keeps on the origin's disk.
 *
 * It does not stream the slot (stream.ts does), and never drops a slot that a connection is using.
 */
import { connect, pgError, quoteIdent, type Client, type Session } from './common.ts'

/** What stops PostgreSQL capture, listed for the user. Empty when capture can run. */
export async function capturePrerequisites(client: Client, publication: string): Promise<string[]> {
  const r = await client.query(
    `
    SELECT current_setting('wal_level') AS wal, current_setting('max_replication_slots') AS slots,
           current_setting('server_version_num') AS version, r.rolsuper AS su, r.rolreplication AS repl,
           current_user AS who, EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1) AS pub
      FROM pg_roles r WHERE r.rolname = current_user`,
    [publication]
  )
  const s = r.rows[0]
  const problems: string[] = []
  if (Number(s.version) < 130000) {
    problems.push(
      `PostgreSQL ${s.version} is too old: logical capture needs version 13 or newer (slot WAL limits, wal_status)`
    )
  }
  if (s.wal !== 'logical') {
    problems.push(`wal_level is ${s.wal}: run ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL`)
  }
  if (Number(s.slots) < 1) {
    problems.push('max_replication_slots is 0: set it to at least 4 in postgresql.conf and restart PostgreSQL')
  }
  if (s.su !== 't' && s.repl !== 't') {
    problems.push(
      `the role ${s.who} may not use replication: run ALTER ROLE ${quoteIdent(s.who)} REPLICATION; as a superuser`
    )
  }
  if (s.su !== 't' && s.pub !== 't') {
    problems.push(
      'only a superuser can create the publication: ' +
        `run CREATE PUBLICATION ${quoteIdent(publication)} FOR ALL TABLES; as a superuser`
    )
  }
  return problems
}

/**
 * A slot created over a replication connection (an old one of that name that no connection uses is dropped
 * first), and a read-only transaction on the snapshot it exported: the transaction reads exactly the state the
 * slot's stream continues from.
 */
export class SlotSnapshot {
  private constructor(
    /** The transaction on the exported snapshot. */
    readonly tx: Client,
    /** The replication connection that exported it: the snapshot lives as long as it is open. */
    private readonly repl: Client,
    /** Where the slot's stream starts (its consistent point), as PostgreSQL prints it. */
    readonly point: string
  ) {}

  static async create(url: string, slot: string, session: Session): Promise<SlotSnapshot> {
    await session.run('cannot replace the replication slot', (db) =>
      db.query(
        `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots ` +
          `WHERE slot_name = $1 AND database = current_database() AND NOT active`,
        [slot]
      )
    )
    const repl = await connect(url, { replication: true, doing: 'cannot open a replication connection' })
    let tx: Client | null = null
    try {
      const r = await repl
        .query(`CREATE_REPLICATION_SLOT ${quoteIdent(slot)} LOGICAL pgoutput EXPORT_SNAPSHOT`)
        .catch((err) => {
          throw pgError(err, url, `cannot create the replication slot ${slot}`)
        })
      const { consistent_point: point, snapshot_name: name } = r.rows[0]
      tx = await connect(url, { doing: 'cannot connect to the origin database' })
      await tx.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY')
      await tx.query(`SET TRANSACTION SNAPSHOT '${name}'`)
      return new SlotSnapshot(tx, repl, point)
    } catch (err) {
      await tx?.end().catch(() => {})
      await repl.end().catch(() => {})
      throw pgError(err, url, 'cannot start the initial copy')
    }
  }

  /** Ends the transaction and the replication connection; the slot stays. */
  async end(): Promise<void> {
    await this.tx.query('COMMIT').catch(() => {})
    await this.tx.end().catch(() => {})
    await this.repl.end().catch(() => {})
  }
}

/** How much WAL the slot keeps on the origin's disk, and the server's limit. */
export async function slotWalRetention(
  session: Session,
  slot: string
): Promise<{ retainedBytes: number; limitBytes: number | null; status: string }> {
  const r = await session.run('capture failed', (db) =>
    db.query(
      `SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8::text AS retained, wal_status AS status,
              pg_size_bytes(current_setting('max_slot_wal_keep_size') ||
                CASE WHEN current_setting('max_slot_wal_keep_size') ~ '^-?[0-9]+$' THEN 'MB' ELSE '' END)::text AS lim
         FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database()`,
      [slot]
    )
  )
  if (r.rows.length === 0) return { retainedBytes: 0, limitBytes: null, status: 'lost' }
  const lim = Number(r.rows[0].lim)
  const retainedBytes = Number(r.rows[0].retained ?? 0)
  return { retainedBytes, limitBytes: lim < 0 ? null : lim, status: r.rows[0].status ?? 'lost' }
}
