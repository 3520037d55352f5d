/**
 * PostgreSQL connection URLs, checked and redacted. Loads no driver: the command line checks its configuration
 * with it (adapters/client.ts).
 */
import { MeshError } from '../../protocol/errors.ts'

/** The URL (or key=value connection string) with its password replaced, for messages and logs. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url)
    if (u.password) u.password = '***'
    for (const k of [...u.searchParams.keys()]) if (/^password$/i.test(k)) u.searchParams.set(k, '***')
    return u.toString()
  } catch {
    return url.replace(/:[^:@/]*@/, ':***@').replace(/(password\s*=\s*)('[^']*'|\S+)/gi, '$1***')
  }
}

/** The URL without its password, and the password (for PGPASSWORD), so no command line shows it. */
export function splitPassword(url: string): { url: string; password: string | null } {
  const u = new URL(url)
  let password: string | null = u.password ? decodeURIComponent(u.password) : null
  u.password = ''
  for (const k of [...u.searchParams.keys()]) {
    if (/^password$/i.test(k)) {
      password = u.searchParams.get(k)
      u.searchParams.delete(k)
    }
  }
  return { url: u.toString(), password }
}

/** Checks that `url` is a PostgreSQL connection URL naming a database. */
export function checkUrl(url: string): { database: string; host: string; port: number } {
  let u: URL
  try {
    u = new URL(url)
  } catch {
    throw MeshError.BAD_URL(`not a URL: ${redactUrl(url)}`)
  }
  if (u.protocol !== 'postgres:' && u.protocol !== 'postgresql:') {
    throw MeshError.BAD_URL(`${redactUrl(url)} is not a postgres:// URL`)
  }
  const database = decodeURIComponent(u.pathname.replace(/^\//, ''))
  if (!database)
    throw MeshError.BAD_URL(`${redactUrl(url)} names no database`, {
      hint: 'Add the database name: postgres://USER@HOST:PORT/DATABASE.'
    })
  return { database, host: u.hostname || 'localhost', port: Number(u.port || 5432) }
}
