/**
 * What the command line needs from adapters/ without loading a database driver (node/client.ts re-exports it):
 * PostgreSQL URLs checked and redacted, and the mass-damage guard's default. Light modules only.
 */
export { checkUrl, redactUrl } from './postgres/url.ts'
export { DEFAULT_GUARD, type DamageGuard } from './types.ts'
