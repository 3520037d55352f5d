/**
 * The capturing process of the crash tests: SQLite file -> the dataset's log in a corestore.
 * Usage: node --import tsx test/helpers/capture-proc.ts ORIGIN_FILE STORE_DIR
 * Prints "ready" once capturing. On SIGTERM it captures what is committed, closes, prints "stopped".
 */
import { SqliteCapture } from '../../adapters/index.ts'
import { captureLoop, openLog } from './pipeline.ts'

const [file, storeDir] = process.argv.slice(2)
const { store, log } = await openLog(storeDir)
const side = new SqliteCapture({ path: file, ackIntervalMs: 20 })
const loop = captureLoop(side, log, { pollMs: 2, snapshotRows: 500, blockBytes: 16 * 1024 })
process.on('SIGTERM', async () => {
  await loop.stop()
  while ((await loop.step()) > 0);
  await side.close()
  await store.close()
  process.stdout.write('stopped\n')
  process.exit(0)
})
await loop.start()
process.stdout.write('ready\n')
