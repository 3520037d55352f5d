import { encodeJoinCode, MeshError } from '../../protocol/index.ts'
import { askNode, createInvite, readMeshState, readSiteKey, sitePaths } from '../../node/index.ts'
import { readConfig, resolveDir } from '../config.ts'
import { out, parse, parseDuration, type Command } from './common.ts'

export const usage = `mesh invite --dir DIR [--expires 24h] [--blind | --observer]

Makes a one-time join code that lets one new site into the mesh, and prints it as the last line.
  --expires D   how long the code is valid: 30m, 24h, 7d (default 24h)
  --blind       for a blind site: it stores and serves every encrypted log but can read none of them (no data
                key, no replica, cannot promote): a box at home or a rented machine that is no honeypot
  --observer    for an observer: it receives the members, the datasets and every site's signed reports, never a
                log's blocks and no data key: the owner's laptop or an office PC running mesh dashboard
The node of this site must be running (mesh start) when the new site uses the code.`

export const command: Command = {
  usage,
  summary: 'print a one-time join code for a new site',
  async run(args) {
    const { values } = parse('invite', args, {
      expires: { type: 'string' },
      blind: { type: 'boolean' },
      observer: { type: 'boolean' }
    })
    const blind = values.blind === true
    const observer = values.observer === true
    if (blind && observer) {
      throw MeshError.USAGE('--blind and --observer are two kinds of site: give one', {
        hint:
          'Try: mesh invite --observer (sees the mesh, holds nothing), or mesh invite --blind (holds the logs, ' +
          'reads none)'
      })
    }
    const role = blind ? ('blind' as const) : observer ? ('observer' as const) : undefined
    const dir = resolveDir(values.dir)
    const cfg = readConfig(dir)
    const paths = sitePaths(dir)
    const keyPair = readSiteKey(paths)
    const state = readMeshState(paths)
    const ttl = parseDuration(values.expires ?? '24h', '--expires')
    const invite = createInvite(paths, ttl, Date.now(), role)
    const code = encodeJoinCode({
      meshId: state.meshId,
      inviter: keyPair.publicKey,
      seed: invite.seed,
      expiresAt: invite.expiresAt,
      ...(role ? { role } : {})
    })
    const running = (await askNode(dir, 'ping').catch(() => null)) !== null
    const until = new Date(invite.expiresAt * 1000).toISOString()
    const kind = blind ? 'Blind-site join' : observer ? 'Observer join' : 'Join'
    out(`${kind} code made by ${cfg.site}, valid once until ${until}.`)
    out('At the new site, run:')
    const bootstrap = cfg.bootstrap ? ` --bootstrap ${cfg.bootstrap.join(',')}` : ''
    out(`  mesh join CODE --dir DIR --site NAME${role ? '' : ' --sqlite PATH'}${bootstrap}`)
    if (!running) out(`The node here is not running: start it (mesh start --dir ${dir}) before the code is used.`)
    const plain = blind ? state.datasets.filter((d) => d.encryptedFrom === undefined).map((d) => d.name) : []
    if (plain.length > 0) {
      out(
        `Not held by a blind site until they move to encrypted logs (mesh encrypt; see UPGRADE.md): ` +
          `${plain.join(', ')}.`
      )
    }
    out('Keep the code secret: whoever has it can join until it is used or expires.')
    out(code)
    return 0
  }
}
