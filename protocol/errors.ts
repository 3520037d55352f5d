/**
 * The one error type of branchmesh. Every failure a user or a caller can act on is a MeshError with a stable
 * `code` (tests and scripts match on it, never on the message), a `hint` that says what to do, and whether
 * retrying the same operation later can help.
 *
 * Create them through the static factories (`MeshError.BAD_ENTRY('...')`), so that each code has one place
 * that decides its default hint and retryability.
 */

export interface MeshErrorOptions {
  /** What the user should do about it, in words. */
  hint?: string
  /** Whether retrying the same operation later can succeed (a lock, a full disk, an absent peer). */
  retryable?: boolean
  /** Structured facts for logs and --json output (paths, tables, positions). Never secrets. */
  context?: Record<string, unknown>
  cause?: unknown
}

type Factory = (message: string, opts?: MeshErrorOptions) => MeshError

function factory(code: string, defaults: { hint?: string; retryable?: boolean }): Factory {
  return (message, opts = {}) =>
    new MeshError(code, message, {
      hint: opts.hint ?? defaults.hint,
      retryable: opts.retryable ?? defaults.retryable ?? false,
      context: opts.context,
      cause: opts.cause
    })
}

export class MeshError extends Error {
  readonly code: string
  readonly hint: string | undefined
  readonly retryable: boolean
  readonly context: Record<string, unknown>

  constructor(code: string, message: string, opts: MeshErrorOptions = {}) {
    super(`${code}: ${message}`, opts.cause === undefined ? undefined : { cause: opts.cause })
    this.name = 'MeshError'
    this.code = code
    this.hint = opts.hint
    this.retryable = opts.retryable ?? false
    this.context = opts.context ?? {}
  }

  /** Keeps a MeshError as it is; wraps anything else as `code` with the original as the cause. */
  static wrap(err: unknown, make: Factory, message?: string, opts: MeshErrorOptions = {}): MeshError {
    if (err instanceof MeshError) return err
    const text = err instanceof Error ? err.message : String(err)
    return make(message === undefined ? text : `${message}: ${text}`, { ...opts, cause: err })
  }

  // --- log format ---------------------------------------------------------------------------------------
  /** Bytes that are not a well-formed log entry: truncated, corrupt, or trailing garbage. */
  static BAD_ENTRY = factory('BAD_ENTRY', {
    hint:
      'The log block is damaged. The node refuses to apply it; run `mesh status` to see which site holds ' +
      'a good copy.'
  })
  /** A log entry written by a newer format version than this software reads. */
  static UNKNOWN_VERSION = factory('UNKNOWN_VERSION', {
    hint: 'This log was written by a newer branchmesh. Upgrade this site (see UPGRADE.md).'
  })
  /** An entry kind this software does not know. */
  static UNKNOWN_KIND = factory('UNKNOWN_KIND', {
    hint: 'This log was written by a newer branchmesh. Upgrade this site (see UPGRADE.md).'
  })
  /** Flag bits this software does not know: refusing is safer than ignoring what they might mean. */
  static UNKNOWN_FLAGS = factory('UNKNOWN_FLAGS', {
    hint: 'This log was written by a newer branchmesh. Upgrade this site (see UPGRADE.md).'
  })

  // --- databases ------------------------------------------------------------------------------------------
  static NOT_FOUND = factory('NOT_FOUND', { hint: 'Check the path; it must name an existing file.' })
  static NOT_SQLITE = factory('NOT_SQLITE', {
    hint: 'The file is not a SQLite database (or is encrypted or damaged). Point --sqlite at the database file itself.'
  })
  static DATABASE_LOCKED = factory('DATABASE_LOCKED', {
    hint:
      'Another program holds a lock on the database. It is retried; if it persists, check for a program ' +
      'that opened it in exclusive mode.',
    retryable: true
  })
  static READ_ONLY = factory('READ_ONLY', {
    hint: 'The database or its folder is not writable by this user. Fix the file permissions.'
  })
  /** A table whose changes cannot be captured; the message says why. */
  static CANNOT_CAPTURE = factory('CANNOT_CAPTURE', {
    hint:
      'The table is left out of the mesh. Give it a regular (non-virtual) definition, or exclude it in ' +
      'the configuration.'
  })
  /** branchmesh's own change-tracking tables in the origin database are not as branchmesh made them. */
  static CORRUPT_CHANGE = factory('CORRUPT_CHANGE', {
    hint:
      'A branchmesh change table in the database was altered by hand. Restart the node: it reinstalls ' +
      'capture and resends the affected tables in full.'
  })
  static DISK_FULL = factory('DISK_FULL', {
    hint:
      'Free space on the disk holding the data directory or the database. Nothing was lost: capture ' +
      'resumes where it stopped.',
    retryable: true
  })
  static IO_ERROR = factory('IO_ERROR', { retryable: true })
  /** A database error with no more specific code. */
  static DATABASE_ERROR = factory('DATABASE_ERROR', {})

  // --- PostgreSQL ---------------------------------------------------------------------------------------------
  /** A PostgreSQL connection URL that cannot be parsed. */
  static BAD_URL = factory('BAD_URL', {
    hint: 'Write it as postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE.'
  })
  /** The PostgreSQL server does not answer (not running, wrong host or port, restarting). */
  static PG_UNREACHABLE = factory('PG_UNREACHABLE', {
    hint: 'Check that PostgreSQL is running and that the host and port in the URL are right. The node keeps trying.',
    retryable: true
  })
  /** PostgreSQL refused the user or password. */
  static PG_AUTH = factory('PG_AUTH', {
    hint:
      'Check the user and password in the URL (or in ~/.pgpass or PGPASSWORD), and that pg_hba.conf lets ' +
      'this user in from this host.'
  })
  /** The database named in the URL does not exist (any more). */
  static PG_NO_DATABASE = factory('PG_NO_DATABASE', {
    hint:
      'Check the database name in the URL. If the database was dropped, restore it (mesh promote or a ' +
      'restore), then restart the node.'
  })
  /**
   * The source lost its capture position (a PostgreSQL slot dropped behind our back): the whole database is copied
   * again.
   */
  static SOURCE_RESET = factory('SOURCE_RESET', {
    hint:
      'Nothing to do: the node copies the whole database into the log again and every replica starts over ' +
      'from that copy. Find out who dropped the slot, or raise max_slot_wal_keep_size.'
  })
  /**
   * The source database was replaced by one that shares no table with what the log carries (another
   * application's database): nothing is captured or sent until the dataset's own database is back.
   */
  static WRONG_DATABASE = factory('WRONG_DATABASE', {
    hint:
      "Put the dataset's own database back at its path; the node notices it by itself and captures on. " +
      'A database that is really meant to be protected as well is a dataset of its own: give it its own path.',
    retryable: true
  })
  /** A PostgreSQL dataset reached a site with no PostgreSQL server configured for replicas. */
  static NO_REPLICA_SERVER = factory('NO_REPLICA_SERVER', {
    hint:
      'To keep a warm copy here, set "replicaPostgres" in config.json to a PostgreSQL server URL whose ' +
      'user may create databases (mesh join --replica-postgres URL), then restart the node.'
  })
  /** A schema change at the origin that a replica cannot follow without losing data. */
  static UNSUPPORTED_DDL = factory('UNSUPPORTED_DDL', {
    hint:
      'Apply of this dataset is stopped here so the replica does not silently differ. Undo the change at ' +
      'the origin, or remove this replica database and restart the node to copy it again.'
  })
  /** A column type the mesh cannot carry to a replica. */
  static UNSUPPORTED_TYPE = factory('UNSUPPORTED_TYPE', {
    hint:
      'Create the type (extension, domain or composite) in the replica database too, or change the column ' +
      'to a built-in type.'
  })

  // --- logs and replicas -------------------------------------------------------------------------------------
  /** The replica's applied position does not belong to the log being applied (another log, or a fork). */
  static LOG_MISMATCH = factory('LOG_MISMATCH', {
    hint: 'This replica was built from a different log. Rebuild it from the log (remove the replica file and restart).'
  })
  /** A log whose entries break the rules (no header first, a change for an unknown table...). */
  static BAD_LOG = factory('BAD_LOG', {
    hint: 'The log does not follow the format. Report it; the replica is left at its last good position.'
  })
  /**
   * A PostgreSQL replica's server restarted and lost its last asynchronous commits: the replica stands before
   * where the node had seen it, and those units are applied again from the log.
   */
  static REPLICA_REWOUND = factory('REPLICA_REWOUND', {
    hint: 'Nothing to do: the node applies those entries again from its log, which it holds durably.',
    retryable: true
  })
  static BAD_REPLICA = factory('BAD_REPLICA', {
    hint: 'The replica database is not one branchmesh made. Point the replica at a new file.'
  })
  static CLOSED = factory('CLOSED', {})

  // --- the mesh ------------------------------------------------------------------------------------------------
  /** A peer speaks another version of the control protocol. */
  static PROTOCOL_VERSION = factory('PROTOCOL_VERSION', {
    hint:
      'Run the same branchmesh version at every site (see UPGRADE.md); the sites refuse to exchange data ' +
      'until then.'
  })
  /** A connection from a key that is not a member of the mesh. */
  static NOT_MEMBER = factory('NOT_MEMBER', {
    hint:
      'Only sites that joined with a join code are let in. Run `mesh invite` at a member site and `mesh ' +
      'join CODE` at the new one.'
  })
  /** A statement about the mesh's members signed by a key that may not make it (not a full member, removed). */
  static UNKNOWN_SIGNER = factory('UNKNOWN_SIGNER', {
    hint:
      'Nothing was changed. If a member site relayed it, that site may be compromised: check it, and remove ' +
      'it with `mesh remove SITE` if it is.'
  })
  /** A removed site's key, or a statement that would bring it back. */
  static MEMBER_REMOVED = factory('MEMBER_REMOVED', {
    hint:
      'A removed site stays removed. To let the place back in, make a new site there: `mesh invite`, then ' +
      '`mesh join`.'
  })
  /** A statement whose body cannot be read or does not hold together. */
  static BAD_STATEMENT = factory('BAD_STATEMENT', {
    hint: 'Nothing was changed. Run the same branchmesh version at every site (see UPGRADE.md).'
  })
  /** A site the command names is not a member. */
  static UNKNOWN_SITE = factory('UNKNOWN_SITE', {
    hint: '`mesh status` lists the members by name.'
  })
  /** The dataset's promotion policy does not name this site. */
  static POLICY_FORBIDS = factory('POLICY_FORBIDS', {
    hint:
      'Promote it at one of the sites the policy names, or ask its origin to widen the policy ' +
      '(`mesh policy DATASET --promote any`).'
  })
  /** Only a dataset's origin may set its promotion policy. */
  static NOT_ORIGIN = factory('NOT_ORIGIN', {
    hint: 'Run the command at the site `mesh status` shows as the origin of the dataset.'
  })
  static BAD_JOIN_CODE = factory('BAD_JOIN_CODE', {
    hint: 'Ask a member site for a new code: `mesh invite --dir DIR` prints one as its last line.'
  })
  static JOIN_CODE_EXPIRED = factory('JOIN_CODE_EXPIRED', {
    hint: 'Ask a member site for a new code: `mesh invite --dir DIR` prints one as its last line.'
  })
  /** No member answered: the inviting site is off, or the DHT cannot be reached. */
  static UNREACHABLE = factory('UNREACHABLE', {
    hint:
      'Start the node at the inviting site (`mesh start`) and check that both sites use the same ' +
      '--bootstrap (none for the public DHT).',
    retryable: true
  })
  /** Another node already runs on this data directory. */
  static NODE_RUNNING = factory('NODE_RUNNING', {
    hint: 'Only one node may run per data directory. Stop the other one first, or use a different --dir.'
  })
  /** `mesh service`: the unit file is written (or removed) but systemd could not act on it. */
  static SERVICE_NOT_ENABLED = factory('SERVICE_NOT_ENABLED', {
    hint: 'Run the systemctl commands shown on a machine where systemd runs, or start the node with `mesh start`.'
  })
  static NOT_INITIALIZED = factory('NOT_INITIALIZED', {
    hint:
      'Run `mesh init` (first site) or `mesh join CODE` (other sites) with this --dir first, or pass the ' +
      'right --dir.'
  })
  static ALREADY_INITIALIZED = factory('ALREADY_INITIALIZED', {
    hint: 'This data directory already belongs to a site. Use another --dir, or `mesh start` to run it.'
  })

  // --- failover ------------------------------------------------------------------------------------------------
  static NOT_RUNNING = factory('NOT_RUNNING', {
    hint: 'Start the node first (`mesh start --dir DIR`), then run the command again.'
  })
  static UNKNOWN_DATASET = factory('UNKNOWN_DATASET', {
    hint: 'Run `mesh status` to see the datasets of the mesh, and give one of their names.'
  })
  /** Promotion asked at the site that already takes the dataset's writes. */
  static ALREADY_ORIGIN = factory('ALREADY_ORIGIN', {
    hint:
      'Nothing to do: this site already takes the writes of this dataset. Run `mesh promote` at the site ' +
      'that should take them.'
  })
  /** Promotion refused: the current origin is connected and capturing (--force does not override it). */
  static ORIGIN_HEALTHY = factory('ORIGIN_HEALTHY', {
    hint:
      'Promote only when the origin is lost. To move the origin here on purpose (a planned switch), run ' +
      '`mesh handover DATASET --to THIS-SITE` at the origin: it stops its writes, seals its log and hands ' +
      'over with nothing lost.'
  })
  /** Promotion refused: another reachable site holds more of the log than this replica applied. */
  static REPLICA_BEHIND = factory('REPLICA_BEHIND', {
    hint:
      'Wait for this site to catch up (`mesh status` shows how far behind it is), then run the command ' +
      'again; or add --force to promote with what this site holds (what it lacks stays in the old log, ' +
      'kept as the old origin’s divergence).'
  })
  /** Promotion refused: the replica is in the middle of its initial copy and is not a state the origin had. */
  static REPLICA_NOT_READY = factory('REPLICA_NOT_READY', {
    hint: 'Wait until its initial copy is complete (`mesh status`), or add --force to promote a partial copy.'
  })

  // --- trust: promotions and handovers (node/trust.ts) --------------------------------------------------------
  /** A new epoch whose log carries no signed promotion. */
  static UNSIGNED_PROMOTION = factory('UNSIGNED_PROMOTION', {
    hint:
      'Nothing changed here. A site announced a new epoch without a signed promotion: an older version or a ' +
      'changed program. Check the site named; remove it from the mesh if it is not yours.'
  })
  /** A promotion whose statement does not hold together (signer, fields, header, epoch, key, time). */
  static BAD_PROMOTION = factory('BAD_PROMOTION', {
    hint:
      'Nothing changed here. The promotion was forged or made by a changed program; check the site named and ' +
      'remove it from the mesh if it is not yours.'
  })
  /** A promotion made while the origin was running and connected, without its handover. */
  static ORIGIN_LIVE = factory('ORIGIN_LIVE', {
    hint:
      'Nothing changed here: the origin was running and connected when this promotion was signed, and it did ' +
      'not hand over. For a planned switch run `mesh handover DATASET --to SITE` at the origin; if the ' +
      'promotion is wanted anyway, accept it at each site with `mesh accept DATASET --epoch N`.'
  })
  /** A promotion whose branch point would drop writes a site had applied, or lies beyond the log. */
  static BRANCH_POINT = factory('BRANCH_POINT', {
    hint:
      'Nothing changed here. If losing those writes is acceptable, accept the promotion at this site with ' +
      '`mesh accept DATASET --epoch N`; otherwise promote a site that holds all of them.'
  })
  /** `mesh handover` did not complete: the named site did not take over in time, or cannot. */
  static HANDOVER_FAILED = factory('HANDOVER_FAILED', {
    hint:
      'This site takes writes again; nothing was lost. Check with `mesh status` that the named site is ' +
      'connected and holds the dataset, then run the command again.',
    retryable: true
  })
  /** `mesh accept` named an epoch this site holds no refused or pending promotion for. */
  static NOTHING_TO_ACCEPT = factory('NOTHING_TO_ACCEPT', {
    hint: 'Run `mesh status` to see the refused promotions (CRIT) and their epochs.'
  })

  // --- configuration and usage ----------------------------------------------------------------------------------
  /** A full member lacks the data key of an encrypted dataset: it holds the log but cannot read it. */
  static DATA_KEY_MISSING = factory('DATA_KEY_MISSING', {
    hint:
      'The key comes from a member that holds it, sealed to this site, once both are connected: start the ' +
      'node at the dataset’s origin (or any full member) and wait. If it never comes, check that this site ' +
      'joined as a full member (mesh status shows each member’s role).'
  })
  /** What a blind site cannot do: it holds the logs encrypted and never reads them. */
  static BLIND_SITE = factory('BLIND_SITE', {
    hint:
      'A blind site stores and serves the logs but cannot read them, so it holds no replica and cannot take ' +
      'over a dataset. Run the command at a full member.'
  })
  /** A dataset whose logs are not encrypted: a blind site does not hold it. */
  static NOT_ENCRYPTED = factory('NOT_ENCRYPTED', {
    hint:
      'Logs made before encryption existed are plaintext. Move the dataset to encrypted logs with a new epoch ' +
      '(see UPGRADE.md); the blind site holds it from then on.'
  })
  /** An observer (`mesh invite --observer`) holds no log and no data: it cannot do what needs one. */
  static OBSERVER_SITE = factory('OBSERVER_SITE', {
    hint:
      'An observer sees the mesh (mesh status, mesh dashboard) and holds no data. Run the command at a full ' +
      'member of the mesh.'
  })
  // --- dashboard -------------------------------------------------------------------------------------------
  /** The dashboard cannot listen where it was told (the port is taken, the address is not this machine's). */
  static DASHBOARD_LISTEN = factory('DASHBOARD_LISTEN', {
    hint:
      'Choose another port (config.json "dashboard": {"listen": "127.0.0.1:PORT"}, or --listen), or stop the ' +
      'program that holds it. The node keeps replicating without its dashboard.'
  })
  /** A dashboard request without the right token (config.json "dashboard": {"token": ...}). */
  static DASHBOARD_TOKEN = factory('DASHBOARD_TOKEN', {
    hint:
      'Open the dashboard with ?token=TOKEN once (it is kept in a cookie), or send "Authorization: Bearer TOKEN"; ' +
      'the token is "dashboard.token" in the site\'s config.json.'
  })
  static BAD_CONFIG = factory('BAD_CONFIG', {})
  /** An alert or the daily summary could not be sent (SMTP server or webhook unreachable, refused, bad address). */
  static ALERT_FAILED = factory('ALERT_FAILED', {
    hint:
      'Check alerts in config.json (host, port, secure, user, password, addresses, webhook url), then run ' +
      '`mesh alerts test`.'
  })
  static USAGE = factory('USAGE', {})
}
