/**
 * The dashboard as part of a running node (`mesh start --dashboard HOST:PORT`, or "dashboard" in config.json):
 * it keeps the charts' history (always, whether or not the page is served, so that `mesh dashboard` has it
 * too) and serves the page from the node's own status.
 *
 * Bad input never stops the node: a port already in use, or a request with a wrong token, is a WARN in this
 * site's status (and in its log) while everything else runs on.
 */
import { MeshError } from '../../protocol/index.ts'
import type { MeshNode } from '../node.ts'
import type { SiteStatus } from '../status.ts'
import { DEFAULT_STEP_MS, readHistory, sample, writeHistory, type ChartHistory } from './history.ts'
import { Dashboard } from './server.ts'

export interface DashboardConfig {
  /** Where to serve the page; null: not served by the node (the history is kept all the same). */
  listen: { host: string; port: number } | null
  /** Asked of every request when set; needed to listen beyond loopback. */
  token?: string | null
  /** One chart sample per this many ms (default 5 minutes). */
  sampleMs?: number
}

/** How long a request with a wrong token shows as a WARN. */
const BAD_TOKEN_MS = 3600_000

export class NodeDashboard {
  server: Dashboard | null = null
  private history: ChartHistory | null = null
  private timer: NodeJS.Timeout | null = null
  /** Why the page is not served, when it was asked for. */
  private failed: MeshError | null = null
  private badToken: { from: string; at: number; count: number } | null = null

  constructor(private readonly node: MeshNode) {}

  async start(cfg: DashboardConfig | undefined): Promise<void> {
    const node = this.node
    const step = cfg?.sampleMs ?? DEFAULT_STEP_MS
    this.history = readHistory(node.paths.dir, step)
    this.timer = setInterval(() => void this.sample(), step)
    void this.sample()
    if (!cfg?.listen) return
    try {
      this.server = new Dashboard({
        host: cfg.listen.host,
        port: cfg.listen.port,
        token: cfg.token ?? null,
        status: () => node.status(),
        history: () => this.history,
        logger: node.logger,
        onBadToken: (from) => {
          const count = (this.badToken?.count ?? 0) + 1
          this.badToken = { from, at: Date.now(), count }
        }
      })
      await this.server.listen()
      const a = this.server.address()
      node.logger.info('dashboard', { url: `http://${a?.host}:${a?.port}/` })
    } catch (err) {
      this.server = null
      this.failed = MeshError.wrap(err, MeshError.DASHBOARD_LISTEN)
      node.logger.warn('the dashboard is not served; the node runs on', {
        code: this.failed.code,
        error: this.failed.message,
        hint: this.failed.hint
      })
    }
  }

  private async sample(): Promise<void> {
    const node = this.node
    if (node.closing || !this.history) return
    try {
      sample(this.history, await node.status(), Date.now())
      writeHistory(node.paths.dir, this.history)
    } catch (err) {
      node.logger.warn('cannot keep the dashboard history', { error: (err as Error).message })
    }
  }

  /** The dashboard's problems as reasons in this site's status. */
  annotate(st: SiteStatus): SiteStatus {
    const add = (text: string) => {
      st.reasons.push({ level: 'WARN', text })
      if (st.verdict === 'OK') st.verdict = 'WARN'
    }
    if (this.failed) add(`${this.failed.message.replace(/^[A-Z_]+: /, '')}: ${this.failed.hint}`)
    const bad = this.badToken
    if (bad && Date.now() - bad.at < BAD_TOKEN_MS) {
      add(
        `the dashboard refused ${bad.count} request${bad.count === 1 ? '' : 's'} with a wrong token, the last ` +
          `from ${bad.from} at ${new Date(bad.at).toISOString()}: if that was not you, someone is guessing it ` +
          `(change "dashboard.token" in config.json and restart the node)`
      )
    }
    return st
  }

  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer)
    await this.server?.close()
    if (this.history) {
      try {
        writeHistory(this.node.paths.dir, this.history)
      } catch {
        // Only charts: the next start begins from the last save.
      }
    }
  }
}
