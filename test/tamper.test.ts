import { test } from 'node:test'
import assert from 'node:assert/strict'
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import Corestore from 'corestore'
import { readMeshState, sitePaths } from '../node/index.ts'
import { openWal, readDb } from './helpers/db.ts'
import { meshSites, waitUntil } from './helpers/mesh.ts'
import { teardown } from './helpers/teardown.ts'

const MARK = 'TAMPERMARK-'

/** Every file in the store that holds `needle`, with the offsets. */
function find(storeDir: string, needle: string | Uint8Array): Array<{ file: string; at: number }> {
  const out: Array<{ file: string; at: number }> = []
  for (const f of fs.readdirSync(storeDir)) {
    const buf = fs.readFileSync(path.join(storeDir, f))
    for (let i = buf.indexOf(needle); i >= 0; i = buf.indexOf(needle, i + 1))
      out.push({ file: path.join(storeDir, f), at: i })
  }
  return out
}

function replicaHasFlipped(file: string): boolean {
  return readDb(file, (db) => {
    try {
      const n = db
        .prepare(`SELECT count(*) FROM big WHERE note GLOB 'TAMPERmARK*' OR note NOT GLOB 'TAMPERMARK-*'`)
        .pluck()
        .get() as number
      return n > 0
    } catch {
      return false // the table is not there yet: nothing of it was applied
    }
  })
}

test(
  'bytes flipped in a replicated log on disk at a holder: rejected, reported in status, never applied, ' +
    'then fetched again from the origin',
  async (t) => {
    const { sites } = await meshSites(t, ['shop-a', 'shop-b'])
    const [a, b] = sites

    await t.test("B holds A's rows, a block of several KB among them", async () => {
      // One transaction big enough for a block of several KB even compressed (RocksDB keeps those in a blob file).
      const db = openWal(a.db)
      db.exec('CREATE TABLE big (id INTEGER PRIMARY KEY, note TEXT)')
      const ins = db.prepare('INSERT INTO big (note) VALUES (?)')
      db.transaction(() => {
        for (let i = 0; i < 300; i++)
          ins.run(`${MARK}${String(i).padStart(4, '0')}-${crypto.randomBytes(32).toString('hex')}`)
      })()
      db.close()
      await waitUntil("B holds A's rows", () => b.holdsExactly(a))
    })

    await t.test("a byte flipped in B's copy of the log on disk", async () => {
      await b.stop()
      await a.stop()
      // Get B's copy of the log from RocksDB's memory-table files onto its sorted files on disk (as a busy node
      // does by itself), then flip one byte of one row inside the block.
      const storeDir = path.join(b.dir, 'store')
      const store = new Corestore(storeDir)
      teardown(t, () => store.close())
      await store.ready()
      await store.storage.rocks.flush()
      // The log is encrypted (its blocks are ciphertext on disk): find the bytes of its largest block as stored,
      // by reading it without the data key, and flip one in the middle of it. A stream cipher flips the same bit
      // of the entry, which its checksum catches.
      const log = readMeshState(sitePaths(b.dir)).datasets.find((d) => d.originSite === 'shop-a')!.log
      const core = store.get({ key: Buffer.from(log) })
      await core.ready()
      let stored: Buffer = Buffer.alloc(0)
      for (let i = 0; i < core.length; i++) {
        const block = (await core.get(i, { wait: false })) as Buffer | null
        if (block && block.byteLength > stored.byteLength) stored = block
      }
      await store.close()
      assert.ok(stored.byteLength > 4096, 'a block of several KB')
      assert.equal(stored.includes(MARK), false, 'the block is ciphertext on disk')
      const middle = stored.byteLength >> 1
      const hits = find(path.join(storeDir, 'db'), stored.subarray(middle, middle + 48))
      assert.ok(hits.length > 0, "the block is on disk in B's store")
      for (const h of hits) {
        const buf = fs.readFileSync(h.file)
        buf[h.at + 6] ^= 0x20
        fs.writeFileSync(h.file, buf)
      }
    })

    await t.test('B, rebuilding with the origin off, rejects the block, reports it, and never applies it', async () => {
      // B rebuilds its replica from its own (damaged) copy of the log, with the origin switched off.
      const replica = b.replicaOf(a)!
      for (const f of [replica, `${replica}-wal`, `${replica}-shm`]) fs.rmSync(f, { force: true })
      await b.start()

      await waitUntil('B reports the damaged block', async () => {
        const s = await b.status()
        const h = s.datasets.find((d) => d.originSite === 'shop-a')!.holders.find((x) => x.site === 'shop-b')!
        return h.damagedBlocks === 1 && h.lagEntries! > 0
      })
      const s = await b.status()
      assert.notEqual(s.verdict, 'OK')
      assert.ok(
        s.reasons.some((r) => /damaged block/.test(r.text)),
        JSON.stringify(s.reasons)
      )
      assert.equal(replicaHasFlipped(b.replicaOf(a)!), false, 'the damaged block was not applied')
      assert.equal(b.holdsExactly(a), false, 'B is behind while the origin is off')
    })

    await t.test('with the origin back, B fetches the block again (verified) and catches up', async () => {
      await a.start()
      await waitUntil("B holds A's rows again", () => b.holdsExactly(a))
      assert.equal(replicaHasFlipped(b.replicaOf(a)!), false)
      // Status is as fresh as B's last report of what it applied: it may show the old lag for a moment more.
      await waitUntil("B's status shows it caught up, with no error", async () => {
        const after = await b.status()
        const h = after.datasets.find((d) => d.originSite === 'shop-a')!.holders.find((x) => x.site === 'shop-b')!
        return h.error === null && h.lagEntries === 0
      })
    })
  }
)
