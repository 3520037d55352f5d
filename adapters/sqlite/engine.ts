/** The SQLite engine: a dataset is a database file; replicas, scratch copies and snapshots are files too. */
import fs from 'node:fs'
import path from 'node:path'
import { MeshError } from '../../protocol/index.ts'
import { hashFile } from '../files.ts'
import type { Engine, Scratch } from '../engine.ts'
import { SqliteApply } from './apply.ts'
import { SqliteCapture } from './capture.ts'
import { SEQUENCE_TABLE, openDatabase } from './common.ts'
import {
  backupDatabase,
  databaseRole,
  deleteSql,
  diffDatabases,
  finishRestoredFile,
  keyColumns,
  replaceContents,
  rowColumns,
  upsertSql
} from './rebuild.ts'

/** A name as a file name: anything but letters, digits, '.', '_' and '-' becomes '_'. */
export const fileSafe = (s: string) => s.replace(/[^A-Za-z0-9._-]+/g, '_')

/** The files of a SQLite database being written at `file`: the database and its journals. */
export function sqliteFiles(file: string): string[] {
  return [file, `${file}-wal`, `${file}-shm`, `${file}-journal`]
}

/** A file that is removed with its journals, and with its `.partial` (a restore writes there first). */
function scratchFile(file: string): Scratch {
  const drop = async () => {
    for (const f of [...sqliteFiles(file), ...sqliteFiles(`${file}.partial`)]) fs.rmSync(f, { force: true })
  }
  return { where: file, drop }
}

export const sqliteEngine: Engine = {
  name: 'sqlite',
  shown: (where) => where,

  async checkSource(where) {
    openDatabase(where, { mustExist: true }).close()
    return []
  },

  openCapture: (where, opts) => new SqliteCapture({ path: where, logger: opts.logger }),
  openApply: (where, opts) => new SqliteApply({ path: where, ...opts }),
  role: async (where) => databaseRole(where),

  async about(where) {
    const db = openDatabase(':memory:', { mustExist: false })
    try {
      const v = db.prepare('SELECT sqlite_version() AS v').get() as { v: string }
      return { version: `SQLite ${v.v}`, folder: path.dirname(where) }
    } finally {
      db.close()
    }
  },

  replicaLocation(info, place) {
    return path.join(place.dir, `${fileSafe(info.originSite)}-${fileSafe(info.name)}-${info.id.slice(0, 8)}.db`)
  },

  async scratch(_near, dataset, purpose, dir) {
    const s = scratchFile(path.join(dir, `.${purpose}-${dataset}.db`))
    await s.drop()
    return s
  },

  diff: async (mine, truth) => diffDatabases(mine, truth),
  // The whole file's contents, whatever the differing tables: one transaction, capture triggers included.
  repair: async (mine, truth) => replaceContents(mine, truth),

  async keepCopy(where, dir, site) {
    await backupDatabase(where, path.join(dir, 'before.db'))
    return `before.db      ${site}'s database exactly as it was before it was rebuilt`
  },

  async checkRestoreTarget(to) {
    if (/^postgres(ql)?:\/\//.test(to)) throw MeshError.USAGE('this dataset is SQLite: give --to a new file path')
    if (fs.existsSync(to))
      throw MeshError.USAGE(`${to} exists already`, { hint: 'Give a new file: a restore never overwrites anything.' })
    if (!fs.existsSync(path.dirname(path.resolve(to)))) throw MeshError.NOT_FOUND(`the folder of ${to} does not exist`)
  },

  restoring: (to) => `${to}.partial`,

  async finishRestore(to, opts) {
    // The file takes its name in one rename, so a restore that failed leaves no file under that name.
    if (opts.plain) finishRestoredFile(`${to}.partial`, to)
    else fs.renameSync(`${to}.partial`, to)
  },

  exampleTarget: (name, seq) => `${fileSafe(name)}-before-${seq}.db`,

  snapshots: {
    ext: 'db',
    async workspace(partial) {
      for (const f of sqliteFiles(partial)) fs.rmSync(f, { force: true })
      // The snapshot is built in its own file: what goes afterwards is only the journals beside it.
      const drop = async () => {
        for (const f of sqliteFiles(partial).slice(1)) fs.rmSync(f, { force: true })
      }
      return { where: partial, drop }
    },
    async load(file, to, sha256) {
      // The snapshot is a database file: copied, and checked in the same read.
      for (const f of sqliteFiles(to)) fs.rmSync(f, { force: true })
      const got = await hashFile(file, to)
      if (sha256 === undefined || got === sha256) return true
      fs.rmSync(to, { force: true })
      return false
    },
    async write(where) {
      // One self-contained file: no write-ahead log beside it.
      const db = openDatabase(where, { mustExist: true })
      db.pragma('journal_mode = DELETE')
      db.close()
    }
  },

  dialect: {
    rowColumns,
    keyColumns,
    upsert: upsertSql,
    remove: deleteSql,
    internal: (table) => table === SEQUENCE_TABLE
  }
}
