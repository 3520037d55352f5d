/** Writing a file safely. A module of its own, light, for the command line (node/client.ts). */
import fs from 'node:fs'
import { MeshError } from '../protocol/errors.ts'

/** Writes a file atomically with the given mode. */
export function writeFileAtomic(file: string, data: string | Uint8Array, mode = 0o644): void {
  const tmp = `${file}.${process.pid}.tmp`
  try {
    const fd = fs.openSync(tmp, 'w', mode)
    try {
      fs.writeFileSync(fd, data)
      fs.fsyncSync(fd)
    } finally {
      fs.closeSync(fd)
    }
    fs.chmodSync(tmp, mode)
    fs.renameSync(tmp, file)
  } catch (err) {
    fs.rmSync(tmp, { force: true })
    const e = err as NodeJS.ErrnoException
    if (e.code === 'ENOSPC') throw MeshError.DISK_FULL(`cannot write ${file}: ${e.message}`, { cause: err })
    if (e.code === 'EACCES' || e.code === 'EPERM' || e.code === 'EROFS')
      throw MeshError.READ_ONLY(`cannot write ${file}: ${e.message}`, { cause: err })
    throw MeshError.IO_ERROR(`cannot write ${file}: ${e.message}`, { cause: err })
  }
}
