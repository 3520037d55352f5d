import { createRequire } from 'node:module'
import { MeshNode, parseListen } from '../../node/index.ts'
import { protectConfig } from '../alerts-config.ts'
import { configPath, networkOptions, readConfig, resolveBootstrap, resolveDir } from '../config.ts'
import { createLogger } from '../logger.ts'
import { parse, type Command } from './common.ts'

const require = createRequire(import.meta.url)
export const VERSION = (require('branchmesh/package.json') as { version: string }).version

export const usage = `mesh start --dir DIR [--bootstrap HOST:PORT[,...]] [--log-level info] [--log-json]
           [--dashboard HOST:PORT]

Runs this site's node in the foreground: captures its databases, protects the other sites' datasets, and
keeps going as sites come and go. Ctrl-C (SIGINT) or SIGTERM stops it cleanly. The log is also written
as JSON lines to DIR/node.N.log (DIR/current.log links to the newest), rotated at 10 MB, 5 files kept.
To have it started at boot: mesh service install.
  --dashboard HOST:PORT   also serve the dashboard (web page and /metrics) there, e.g. 127.0.0.1:8080
                          (config.json: "dashboard": {"listen": ...}); beyond loopback it needs a token`

export const command: Command = {
  usage,
  summary: 'run the node in the foreground',
  async run(args) {
    const { values } = parse('start', args, {
      'log-level': { type: 'string' },
      'log-json': { type: 'boolean' },
      dashboard: { type: 'string' }
    })
    const dir = resolveDir(values.dir)
    const cfg = readConfig(dir)
    const bootstrap = resolveBootstrap(values.bootstrap, cfg.bootstrap)
    const listen = values.dashboard ?? cfg.dashboard?.listen ?? null
    const dashboard = {
      listen: listen === null ? null : parseListen(listen, values.dashboard ? '--dashboard' : 'dashboard.listen'),
      token: cfg.dashboard?.token ?? null,
      sampleMs: (cfg.dashboard?.sampleSeconds ?? 300) * 1000
    }
    const logger = await createLogger({ level: values['log-level'] ?? cfg.logLevel, dir, json: values['log-json'] })
    const widened = protectConfig(configPath(dir), cfg.alerts)
    if (widened) logger.warn(widened)
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
      unitMemoryBytes: (cfg.maxUnitMemoryMB ?? 64) * 1024 * 1024,
      batchMs: Math.round((cfg.link?.batchSeconds ?? 0) * 1000),
      encryptNewDatasets: cfg.encryptNewDatasets,
      appVersion: cfg.appVersion,
      retryMs: cfg.retrySeconds?.map((s) => Math.round(s * 1000)),
      link: cfg.link,
      alerts: cfg.alerts,
      dashboard
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
