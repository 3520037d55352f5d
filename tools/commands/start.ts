import { createRequire } from 'node:module'
import { MeshNode } from '../../node/index.ts'
import { networkOptions, readConfig, resolveBootstrap, resolveDir } from '../config.ts'
import { createLogger } from '../logger.ts'
import { parse, type Command } from './common.ts'

const require = createRequire(import.meta.url)
export const VERSION = (require('../../package.json') as { version: string }).version

export const usage = `mesh start --dir DIR [--bootstrap HOST:PORT[,...]] [--log-level info] [--log-json]

Runs this site's node in the foreground: captures its databases, protects the other sites' datasets, and
keeps going as sites come and go. Ctrl-C (SIGINT) or SIGTERM stops it cleanly. The log is also written
as JSON lines to DIR/node.log.`

export const command: Command = {
  usage,
  summary: 'run the node in the foreground',
  async run(args) {
    const { values } = parse('start', args, { 'log-level': { type: 'string' }, 'log-json': { type: 'boolean' } })
    const dir = resolveDir(values.dir)
    const cfg = readConfig(dir)
    const bootstrap = resolveBootstrap(values.bootstrap, cfg.bootstrap)
    const logger = createLogger({ level: values['log-level'] ?? cfg.logLevel, dir, json: values['log-json'] })
    const node = new MeshNode({
      dir,
      site: cfg.site,
      datasets: cfg.datasets,
      network: networkOptions(bootstrap),
      software: `branchmesh/${VERSION}`,
      logger,
      thresholds: cfg.status,
      replicaPostgres: cfg.replicaPostgres ?? undefined,
      snapshots: cfg.snapshots,
      checkpointMs: cfg.checkpointSeconds * 1000,
      guard: cfg.guard,
      unitMemoryBytes: (cfg.maxUnitMemoryMB ?? 64) * 1024 * 1024
    })
    let stopping = false
    let onSignal!: (signal: string) => void
    const signalled = new Promise<string>((resolve) => (onSignal = resolve))
    const stop = (signal: string) => {
      if (stopping) {
        logger.warn('second signal: exiting now', { signal })
        process.exit(130)
      }
      stopping = true
      onSignal(signal)
    }
    // A bug in a background task must be loud, not silent; the node keeps serving the rest.
    process.on('unhandledRejection', (err) =>
      logger.error('internal error (please report it)', { error: (err as Error)?.stack ?? String(err) })
    )
    process.on('SIGINT', () => stop('SIGINT'))
    process.on('SIGTERM', () => stop('SIGTERM'))
    try {
      await node.start()
    } catch (err) {
      await node.close().catch(() => {})
      throw err
    }
    node.dhtReady(15_000).then((ok) => {
      if (!ok && !stopping) {
        logger.warn('cannot reach the DHT yet; the node keeps trying', {
          bootstrap: bootstrap ?? 'public DHT',
          hint: bootstrap
            ? 'Check that the bootstrap nodes are running and reachable from here.'
            : 'Check the internet connection.'
        })
      }
    })
    logger.info('ready', { site: cfg.site, status: `mesh status --dir ${dir}` })
    // A signal during start() is acted on as soon as start() is done.
    logger.info('stopping', { signal: await signalled })
    await node.close()
    logger.flush()
    return 0
  }
}
