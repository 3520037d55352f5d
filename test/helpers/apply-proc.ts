/**
 * The applying process of the crash tests: a dataset's log -> a SQLite replica, until caught up.
 * Usage: node --import tsx test/helpers/apply-proc.ts STORE_DIR REPLICA_FILE
 * Prints "applied N" after each unit, "caught-up N" at the end.
 */
import { SqliteApply } from '../../adapters/index.ts'
import { applyLoop, openLog } from './pipeline.ts'

const [storeDir, replica] = process.argv.slice(2)
const { store, log } = await openLog(storeDir)
const side = new SqliteApply({ path: replica })
const loop = applyLoop(log, side)
loop.on('applied', ({ length }) => process.stdout.write(`applied ${length}\n`))
await side.open()
await loop.catchUp()
process.stdout.write(`caught-up ${side.position()?.length}\n`)
await side.close()
await store.close()
