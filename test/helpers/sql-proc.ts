/**
 * A separate OS process that does one thing to a SQLite file, as another program would, through better-sqlite3.
 * Usage: node --import tsx test/helpers/sql-proc.ts FILE exec SQL      (creates FILE if needed, WAL mode)
 *        node --import tsx test/helpers/sql-proc.ts FILE restore FROM  (SQLite's backup API: like `.restore`)
 * Prints "done" when it has finished and closed the file.
 */
import Database from '../../adapters/sqlite/better-sqlite3.ts'

const [file, what, arg] = process.argv.slice(2)
if (what === 'exec') {
  const db = new Database(file, { timeout: 10_000 })
  db.pragma('journal_mode = WAL')
  db.exec(arg)
  db.close()
} else if (what === 'restore') {
  // Copies every page of FROM into FILE through SQLite, in FILE's own inode: what `sqlite3 FILE ".restore FROM"` does.
  const src = new Database(arg, { readonly: true, fileMustExist: true })
  await src.backup(file)
  src.close()
} else {
  process.stderr.write(`unknown action ${what}\n`)
  process.exit(64)
}
process.stdout.write('done\n')
