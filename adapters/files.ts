/** File helpers the engines and the node share. */
import crypto from 'node:crypto'
import fs from 'node:fs'
import { Writable } from 'node:stream'
import { pipeline } from 'node:stream/promises'

/** The SHA-256 of a file's bytes, hex; with `copyTo`, the file is copied there (mode 0600) in the same read. */
export async function hashFile(file: string, copyTo?: string): Promise<string> {
  const h = crypto.createHash('sha256')
  const out = copyTo ? fs.createWriteStream(copyTo, { mode: 0o600 }) : null
  await pipeline(
    fs.createReadStream(file),
    async function* (chunks: AsyncIterable<Buffer>) {
      for await (const chunk of chunks) {
        h.update(chunk)
        yield chunk
      }
    },
    out ?? new Writable({ write: (_c, _e, done) => done() })
  )
  return h.digest('hex')
}
