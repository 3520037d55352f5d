/**
 * The node's log files rotate by size (issue 17): however long a node runs, its logs take at most about
 * (keepLogs + 1) x maxLogMB of disk.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { tmpDir } from './helpers/db.ts'
import { createLogger } from '../tools/logger.ts'

test('the log rotates by size, keeps a bounded number of files, and current.log links to the newest', async (t) => {
  const dir = tmpDir(t, 'logger-')
  // 10 KB files, 2 older ones kept; about 600 KB of lines written.
  const log = await createLogger({ level: 'info', dir, terminal: false, maxLogMB: 10 / 1024, keepLogs: 2 })
  for (let i = 0; i < 3000; i++) {
    log.info('a line of the node log', { i, filler: 'x'.repeat(150) })
    // pino-roll rolls on the next turn of the event loop after a file is full.
    if (i % 100 === 99) await new Promise((r) => setImmediate(r))
  }
  log.info('the last line', { i: 3000 })
  log.flush()
  await new Promise((r) => setTimeout(r, 100))
  const files = fs
    .readdirSync(dir)
    .filter((f) => /^node\.\d+\.log$/.test(f))
    .sort((x, y) => Number(x.split('.')[1]) - Number(y.split('.')[1]))
  assert.ok(files.length >= 2 && files.length <= 3, `kept ${files.join(', ')}`)
  assert.ok(Number(files[0].split('.')[1]) > 10, 'older files were rolled away')
  // A file is rolled once it is full and written out: it can pass its size by what was written meanwhile.
  const total = files.reduce((n, f) => n + fs.statSync(path.join(dir, f)).size, 0)
  assert.ok(total < 3 * 3 * 10 * 1024, `${total} bytes in ${files.length} files`)
  assert.equal(fs.readlinkSync(path.join(dir, 'current.log')), files[files.length - 1])
  const lines = files.flatMap((f) => fs.readFileSync(path.join(dir, f), 'utf8').split('\n').filter(Boolean))
  assert.equal(JSON.parse(lines[lines.length - 1]).msg, 'the last line')
  assert.equal((fs.statSync(path.join(dir, files[0])).mode & 0o777).toString(8), '600')
})
