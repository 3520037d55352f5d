/**
 * Sites whose business database is PostgreSQL, for mesh tests: each site has its own throwaway cluster (its
 * own database server, as a real site would), a data directory set up with the real `mesh` commands, and a
 * node running as its own OS process. Each site keeps its replicas of the other sites' PostgreSQL datasets
 * on its own cluster (--replica-postgres).
 */
import fs from 'node:fs'
import path from 'node:path'
import { pgReplicaUrl } from '../../adapters/postgres/engine.ts'
import type { DatasetInfo } from '../../protocol/index.ts'
import { allowOldNode, MESH, mesh, testnet } from './mesh.ts'
import { tmpDir } from './db.ts'
import { pgDump, startCluster, type PgCluster } from './pg.ts'
import { startNodeProcess, type Child } from './proc.ts'
import { teardown, type TestContext } from './teardown.ts'

export class PgSite {
  readonly name: string
  readonly dir: string
  readonly bootstrap: string
  cluster!: PgCluster
  /** The database the business application writes. */
  url!: string
  node: Child | null = null

  /** A server without logical decoding (wal_level=replica): the site captures with triggers. */
  readonly noDecoding: boolean

  constructor(root: string, name: string, bootstrap: string, opts: { noDecoding?: boolean } = {}) {
    this.name = name
    this.dir = path.join(root, name)
    this.bootstrap = bootstrap
    this.noDecoding = opts.noDecoding ?? false
  }

  async create(): Promise<void> {
    this.cluster = await startCluster(this.noDecoding ? { conf: ['wal_level = replica'] } : {})
    this.url = await this.cluster.createDatabase('shop')
  }

  private siteArgs(): string[] {
    const capture = this.noDecoding ? ['--capture', 'triggers'] : []
    return [
      '--dir',
      this.dir,
      '--site',
      this.name,
      '--postgres',
      this.url,
      ...capture,
      '--replica-postgres',
      this.cluster.url('postgres'),
      '--bootstrap',
      this.bootstrap
    ]
  }

  async init(): Promise<void> {
    const r = await mesh(['init', ...this.siteArgs()])
    if (r.code !== 0) throw new Error(`mesh init failed: ${r.stderr}`)
  }

  async invite(): Promise<string> {
    const r = await mesh(['invite', '--dir', this.dir])
    if (r.code !== 0) throw new Error(`mesh invite failed: ${r.stderr}`)
    return r.stdout.trim().split('\n').pop()!
  }

  async join(code: string): Promise<void> {
    const r = await mesh(['join', code, ...this.siteArgs()])
    if (r.code !== 0) throw new Error(`mesh join failed: ${r.stderr}`)
  }

  async start(): Promise<void> {
    allowOldNode(this.dir)
    this.node = startNodeProcess([MESH, 'start', '--dir', this.dir, '--log-json'], `the node in ${this.dir}`)
    await this.node.waitLine(/"msg":"ready"/, 60_000)
  }

  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    await this.node?.kill(signal)
    this.node = null
  }

  /** The id of the dataset this site created. */
  datasetId(): string {
    return JSON.parse(fs.readFileSync(path.join(this.dir, 'config.json'), 'utf8')).datasets[0].id
  }

  /** Where this site keeps its replica of `origin`'s dataset. */
  replicaUrl(origin: PgSite): string {
    const info = { id: origin.datasetId(), name: 'shop', originSite: origin.name } as DatasetInfo
    return pgReplicaUrl(this.cluster.url('postgres'), info)
  }

  async holdsExactly(origin: PgSite): Promise<boolean> {
    try {
      return JSON.stringify(await pgDump(this.replicaUrl(origin))) === JSON.stringify(await pgDump(origin.url))
    } catch {
      return false
    }
  }
}

/**
 * A PostgreSQL site in `root` with its cluster started and its database `shop` made; its node is killed and
 * its cluster stopped and removed when the test ends.
 */
export async function pgSite(
  t: TestContext,
  root: string,
  name: string,
  bootstrap: string,
  opts: { noDecoding?: boolean } = {}
): Promise<PgSite> {
  const site = new PgSite(root, name, bootstrap, opts)
  teardown(t, async () => {
    await site.stop('SIGKILL')
    await site.cluster?.stop()
  })
  await site.create()
  return site
}

/**
 * Two PostgreSQL sites, a and b, each with its own cluster, on a testnet of their own; stopped and removed when
 * the test ends. `b.noDecoding`: b's server has no logical decoding.
 */
export async function twoPgSites(
  t: TestContext,
  opts: { noDecoding?: boolean } = {}
): Promise<{ a: PgSite; b: PgSite; dir: string }> {
  const dir = tmpDir(t, 'mesh-pg-')
  const bootstrap = await testnet(t)
  const a = await pgSite(t, dir, 'a', bootstrap)
  const b = await pgSite(t, dir, 'b', bootstrap, { noDecoding: opts.noDecoding })
  return { a, b, dir }
}
