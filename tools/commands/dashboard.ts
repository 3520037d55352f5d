import { Dashboard, DEFAULT_STEP_MS, parseListen, readHistory } from '../../node/index.ts'
import { readConfig, resolveDir } from '../config.ts'
import { createLogger } from '../logger.ts'
import { out, parse, type Command } from './common.ts'
import { readStatus } from './status.ts'

export const usage = `mesh dashboard --dir DIR [--listen 127.0.0.1:8080]

Serves the dashboard, a read-only web page showing every site and dataset of the mesh as this site sees it
(verdicts and their reasons, lag, copies, checkpoints, verifies, snapshots, divergences, disks, versions,
30 days of charts), updated live, and Prometheus metrics at /metrics. Runs in the foreground until Ctrl-C.
It shows what \`mesh status\` shows: asked of the running node, or read from what it saved when no node runs
(then every site shows as last heard). The charts come from DIR/dashboard-history.json, kept by the node.
The node can serve the same page itself: mesh start --dashboard HOST:PORT.
  --listen HOST:PORT   where to listen (default: "dashboard.listen" of config.json, else 127.0.0.1:8080);
                       an address other than loopback needs "dashboard": {"token": ...} in config.json`

export const command: Command = {
  usage,
  summary: 'serve the dashboard web page (and /metrics) on localhost',
  async run(args) {
    const { values } = parse('dashboard', args, { listen: { type: 'string' } })
    const dir = resolveDir(values.dir)
    const cfg = readConfig(dir)
    const listen = parseListen(
      values.listen ?? cfg.dashboard?.listen ?? '127.0.0.1:8080',
      values.listen ? '--listen' : 'dashboard.listen'
    )
    const logger = await createLogger({ level: cfg.logLevel })
    const step = (cfg.dashboard?.sampleSeconds ?? DEFAULT_STEP_MS / 1000) * 1000
    const dashboard = new Dashboard({
      ...listen,
      token: cfg.dashboard?.token ?? null,
      status: () => readStatus(dir),
      // Read again at most once a minute: the node rewrites it every sample.
      history: cached(() => readHistory(dir, step), 60_000),
      logger
    })
    await dashboard.listen()
    const a = dashboard.address()
    const host = a?.host.includes(':') ? `[${a.host}]` : a?.host
    out(`The dashboard of ${cfg.site}: http://${host}:${a?.port}/${cfg.dashboard?.token ? '?token=TOKEN' : ''}`)
    out(`Prometheus metrics: http://${host}:${a?.port}/metrics. Ctrl-C stops it.`)
    const signal = await new Promise<string>((resolve) => {
      process.once('SIGINT', () => resolve('SIGINT'))
      process.once('SIGTERM', () => resolve('SIGTERM'))
    })
    logger.info('stopping', { signal })
    await dashboard.close()
    logger.flush()
    return 0
  }
}

function cached<T>(read: () => T, ms: number): () => T {
  let at = 0
  let value: T
  return () => {
    if (Date.now() - at > ms) {
      value = read()
      at = Date.now()
    }
    return value
  }
}
