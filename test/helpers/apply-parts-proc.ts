/**
 * The applying process of the huge-transaction crash test: like apply-proc.ts, with a small memory budget so
 * that large units are applied in parts. Usage: node --import tsx test/helpers/apply-parts-proc.ts STORE_DIR
 * REPLICA_FILE BUDGET_BYTES. Prints "part N" after each part of a unit, "applied N" after each unit,
 * "caught-up N" at the end.
 */
import { SqliteApply } from '../../adapters/index.ts'
import { applyLoop, openLog } from './pipeline.ts'

const [storeDir, replica, budget] = process.argv.slice(2)
const { store, log } = await openLog(storeDir)
const side = new SqliteApply({ path: replica })
let parts = 0
const applyPart = side.applyPart.bind(side)
side.applyPart = async (entries, position) => {
  await applyPart(entries, position)
  process.stdout.write(`part ${++parts}\n`)
  // Time for the test to kill this process while the unit's transaction is open.
  await new Promise((r) => setTimeout(r, 20))
}
const loop = applyLoop(log, side, { unitMemoryBytes: Number(budget) })
loop.on('applied', ({ length }) => process.stdout.write(`applied ${length}\n`))
await side.open()
await loop.catchUp()
process.stdout.write(`caught-up ${side.position()?.length}\n`)
await side.close()
await store.close()
