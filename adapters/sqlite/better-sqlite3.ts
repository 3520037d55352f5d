/**
 * better-sqlite3, the release that works on the Node.js running: 12.x on Node 20, 13.x on Node 22 and newer
 * (the npm alias `better-sqlite3-13`); both are optional dependencies. One package.json cannot pick a version
 * per Node.js release, and neither release runs on all three: 12.x aborts the process at exit on Node 24 (a
 * statement freed after its environment, WiseLibs/better-sqlite3 issue 1515), and 13.x needs Node 22 (on Node 20
 * it crashes opening a database). 13.x ships prebuilt binaries inside its package (no compile at install); 12.x
 * downloads one, or compiles when it cannot. The two have the same API, typed by @types/better-sqlite3.
 *
 * Every value import of better-sqlite3 goes through this module (test/sqlite-driver.test.ts checks); a type
 * import (`import type Database from 'better-sqlite3'`) may name the package itself.
 */
import { createRequire } from 'node:module'
import type BetterSqlite3 from 'better-sqlite3'

const require = createRequire(import.meta.url)

/** Node.js 22 and newer load 13.x; older ones 12.x. */
export const DRIVER = Number(process.versions.node.split('.')[0]) >= 22 ? 'better-sqlite3-13' : 'better-sqlite3'

function load(): typeof BetterSqlite3 {
  try {
    return require(DRIVER) as typeof BetterSqlite3
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'MODULE_NOT_FOUND') throw err
    // Both are optional dependencies: a failed build of 12.x must not fail the install on Node 22+, where 13.x works.
    throw new Error(
      `${DRIVER} is not installed for Node.js ${process.versions.node} (npm drops an optional dependency that ` +
        'fails to install). Install again and read what npm says about it: better-sqlite3 12.x, for Node 20, ' +
        'downloads a prebuilt binary or compiles one (python3, make, g++); or use Node.js 22 or newer.',
      { cause: err }
    )
  }
}

const Database: typeof BetterSqlite3 = load()

// Types only, merged with the constructor as @types/better-sqlite3 declares it: `Database.Database` etc.
declare namespace Database {
  type Database = BetterSqlite3.Database
  type Statement<P extends unknown[] | object = unknown[], R = unknown> = BetterSqlite3.Statement<P, R>
}

export default Database
