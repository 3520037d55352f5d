/**
 * The dashboard's web server: one page on localhost, served whole by the node (no build step, no CDN: the
 * page's files are in this folder and uPlot's come from node_modules), its live updates as server-sent events,
 * the charts' history, and Prometheus metrics at /metrics.
 *
 * It is read-only: GET and HEAD only, and nothing it serves changes the node. It binds to loopback unless told
 * otherwise, and anywhere else only with a token (DASHBOARD_TOKEN when there is none). A token, when set, is
 * asked of every request, loopback too: as `Authorization: Bearer TOKEN`, the cookie the page gets, or once as
 * `?token=TOKEN` (answered with that cookie and a redirect, so the token leaves the address bar). The token is
 * never logged, and not put in any answer but that cookie.
 */
import crypto from 'node:crypto'
import fs from 'node:fs'
import http from 'node:http'
import { createRequire } from 'node:module'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { MeshError } from '../../protocol/index.ts'
import type { Logger } from '../../adapters/index.ts'
import type { SiteStatus } from '../status.ts'
import { dailyChart, lagChart, type ChartHistory } from './history.ts'
import { DashboardMetrics } from './metrics.ts'
import { dashboardView } from './view.ts'
import { isLoopback } from './listen.ts'

export { isLoopback, parseListen } from './listen.ts'

const require = createRequire(import.meta.url)
const HERE = path.dirname(fileURLToPath(import.meta.url))
const COOKIE = 'branchmesh_token'

/** The files of the page, by path: where each is and its type. */
const FILES: Record<string, { file: () => string; type: string }> = {
  '/': { file: () => path.join(HERE, 'index.html'), type: 'text/html; charset=utf-8' },
  '/app.js': { file: () => path.join(HERE, 'app.js'), type: 'text/javascript; charset=utf-8' },
  '/app.css': { file: () => path.join(HERE, 'app.css'), type: 'text/css; charset=utf-8' },
  '/uplot.js': { file: () => require.resolve('uplot/dist/uPlot.iife.min.js'), type: 'text/javascript; charset=utf-8' },
  '/uplot.css': { file: () => require.resolve('uplot/dist/uPlot.min.css'), type: 'text/css; charset=utf-8' }
}

export interface DashboardOptions {
  host: string
  port: number
  /** Asked of every request when set; required when `host` is not loopback. */
  token?: string | null
  /** The status to show, as `mesh status` builds it. */
  status: () => Promise<SiteStatus>
  /** The charts' history, or null when none is kept. */
  history: () => ChartHistory | null
  logger: Logger
  /** A request came with a wrong token (from that address): the node shows a WARN. */
  onBadToken?: (from: string) => void
  /** How often the page gets a new view while it is open (default 2 s). */
  pushMs?: number
}

export class Dashboard {
  readonly metrics = new DashboardMetrics()
  private server: http.Server | null = null
  private readonly clients = new Set<http.ServerResponse>()
  private timer: NodeJS.Timeout | null = null
  private lastBadTokenLog = 0

  constructor(private readonly opts: DashboardOptions) {
    if (!isLoopback(opts.host) && !opts.token) {
      throw MeshError.DASHBOARD_TOKEN(
        `the dashboard may listen on ${opts.host}, reachable from other machines, only with a token`,
        {
          hint:
            'Set "dashboard": {"token": "..."} (16 characters or more) in config.json, or listen on ' +
            '127.0.0.1 and reach it through an SSH tunnel.'
        }
      )
    }
  }

  /** Where it listens, once listening (the port chosen when 0 was asked). */
  address(): { host: string; port: number } | null {
    const a = this.server?.address()
    return a && typeof a === 'object' ? { host: this.opts.host, port: a.port } : null
  }

  /** Listens; DASHBOARD_LISTEN with the reason when it cannot (a port already in use). */
  async listen(): Promise<void> {
    const server = http.createServer((req, res) => {
      this.handle(req, res).catch((err) => {
        this.opts.logger.warn('dashboard request failed', { error: (err as Error).message })
        if (!res.headersSent) send(res, 500, 'text/plain; charset=utf-8', `${(err as Error).message}\n`)
        else res.end()
      })
    })
    const { host, port } = this.opts
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(port, host, () => {
        server.off('error', reject)
        resolve()
      })
    }).catch((err: NodeJS.ErrnoException) => {
      const why =
        err.code === 'EADDRINUSE'
          ? 'the port is already in use'
          : err.code === 'EADDRNOTAVAIL'
            ? "that address is not one of this machine's"
            : err.code === 'EACCES'
              ? 'this user may not use that port'
              : err.message
      throw MeshError.DASHBOARD_LISTEN(`the dashboard cannot listen on ${host}:${port}: ${why}`, {
        context: { host, port, code: err.code },
        cause: err
      })
    })
    this.server = server
    this.timer = setInterval(() => void this.push(), this.opts.pushMs ?? 2000)
  }

  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer)
    for (const c of this.clients) c.end()
    this.clients.clear()
    const server = this.server
    this.server = null
    if (!server) return
    server.closeAllConnections?.()
    await new Promise<void>((resolve) => server.close(() => resolve()))
  }

  private async view() {
    return dashboardView(await this.opts.status())
  }

  /** A new view to every open page. */
  private async push(): Promise<void> {
    if (this.clients.size === 0) return
    let data: string
    try {
      data = JSON.stringify(await this.view())
    } catch (err) {
      data = JSON.stringify({ error: MeshError.wrap(err, MeshError.IO_ERROR).message })
    }
    for (const c of this.clients) c.write(`event: view\ndata: ${data}\n\n`)
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://dashboard')
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.setHeader('Allow', 'GET, HEAD')
      return send(res, 405, 'text/plain; charset=utf-8', 'The dashboard is read-only.\n')
    }
    if (!this.authorized(req, res, url)) return
    const file = FILES[url.pathname]
    if (file) {
      res.setHeader('Cache-Control', 'no-cache')
      return send(res, 200, file.type, fs.readFileSync(file.file()))
    }
    switch (url.pathname) {
      case '/api/view':
        return json(res, await this.view())
      case '/api/history': {
        const h = this.opts.history()
        const now = Date.now()
        return json(res, { lag: h ? lagChart(h, now) : null, daily: h ? dailyChart(h, now) : null })
      }
      case '/metrics': {
        const text = await this.metrics.render(await this.view())
        return send(res, 200, this.metrics.registry.contentType, text)
      }
      case '/events':
        return this.events(req, res)
      default:
        return send(res, 404, 'text/plain; charset=utf-8', 'Not found.\n')
    }
  }

  private async events(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    res.writeHead(200, {
      'Content-Type': 'text/event-stream; charset=utf-8',
      'Cache-Control': 'no-store',
      Connection: 'keep-alive'
    })
    res.write('retry: 2000\n\n')
    this.clients.add(res)
    req.on('close', () => this.clients.delete(res))
    try {
      res.write(`event: view\ndata: ${JSON.stringify(await this.view())}\n\n`)
    } catch (err) {
      res.write(`event: view\ndata: ${JSON.stringify({ error: (err as Error).message })}\n\n`)
    }
  }

  /** Whether the request may be answered; if not, it is answered here (401, with what to do). */
  private authorized(req: http.IncomingMessage, res: http.ServerResponse, url: URL): boolean {
    const token = this.opts.token
    if (!token) return true
    const fromQuery = url.searchParams.get('token')
    const bearer = /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1]
    const cookie = (req.headers.cookie ?? '')
      .split(';')
      .map((x) => x.trim().split('='))
      .find(([k]) => k === COOKIE)?.[1]
    const given = fromQuery ?? bearer ?? (cookie === undefined ? undefined : decodeURIComponent(cookie))
    if (given !== undefined && sameToken(given, token)) {
      if (fromQuery !== null) {
        // The token leaves the address bar (and the browser's history) for a cookie only this page reads.
        url.searchParams.delete('token')
        res.setHeader('Set-Cookie', `${COOKIE}=${encodeURIComponent(token)}; HttpOnly; SameSite=Strict; Path=/`)
        res.setHeader('Location', `${url.pathname}${url.search}`)
        send(res, 303, 'text/plain; charset=utf-8', '')
        return false
      }
      return true
    }
    const from = req.socket.remoteAddress ?? 'unknown'
    const e =
      given === undefined
        ? MeshError.DASHBOARD_TOKEN('this dashboard asks for a token, and the request had none')
        : MeshError.DASHBOARD_TOKEN(`a dashboard request from ${from} had a wrong token`)
    if (given !== undefined) {
      this.metrics.badTokens.inc()
      this.opts.onBadToken?.(from)
      // Logged once a minute at most: a client retrying in a loop must not fill the log.
      if (Date.now() - this.lastBadTokenLog > 60_000) {
        this.lastBadTokenLog = Date.now()
        this.opts.logger.warn('dashboard request with a wrong token refused', { from, code: e.code, hint: e.hint })
      }
    }
    res.setHeader('WWW-Authenticate', 'Bearer realm="branchmesh"')
    send(res, 401, 'text/plain; charset=utf-8', `${e.message}\nWhat to do: ${e.hint}\n`)
    return false
  }
}

function sameToken(a: string, b: string): boolean {
  const h = (s: string) => crypto.createHash('sha256').update(s).digest()
  return crypto.timingSafeEqual(h(a), h(b))
}

function send(res: http.ServerResponse, code: number, type: string, body: string | Buffer): void {
  res.writeHead(code, {
    'Content-Type': type,
    'X-Content-Type-Options': 'nosniff',
    'Content-Security-Policy': "default-src 'self'; style-src 'self' 'unsafe-inline'",
    'Referrer-Policy': 'no-referrer'
  })
  res.end(res.req?.method === 'HEAD' ? undefined : body)
}

function json(res: http.ServerResponse, body: unknown): void {
  res.setHeader('Cache-Control', 'no-store')
  send(res, 200, 'application/json; charset=utf-8', JSON.stringify(body))
}
