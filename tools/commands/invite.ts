import { encodeJoinCode } from '../../protocol/index.ts'
import { askNode, createInvite, readMeshState, readSiteKey, sitePaths } from '../../node/index.ts'
import { readConfig, resolveDir } from '../config.ts'
import { out, parse, parseDuration, type Command } from './common.ts'

export const usage = `mesh invite --dir DIR [--expires 24h]

Makes a one-time join code that lets one new site into the mesh, and prints it as the last line.
  --expires D   how long the code is valid: 30m, 24h, 7d (default 24h)
The node of this site must be running (mesh start) when the new site uses the code.`

export const command: Command = {
  usage,
  summary: 'print a one-time join code for a new site',
  async run(args) {
    const { values } = parse('invite', args, { expires: { type: 'string' } })
    const dir = resolveDir(values.dir)
    const cfg = readConfig(dir)
    const paths = sitePaths(dir)
    const keyPair = readSiteKey(paths)
    const state = readMeshState(paths)
    const ttl = parseDuration(values.expires ?? '24h', '--expires')
    const invite = createInvite(paths, ttl)
    const code = encodeJoinCode({
      meshId: state.meshId,
      inviter: keyPair.publicKey,
      seed: invite.seed,
      expiresAt: invite.expiresAt
    })
    const running = (await askNode(dir, 'ping').catch(() => null)) !== null
    out(`Join code made by ${cfg.site}, valid once until ${new Date(invite.expiresAt * 1000).toISOString()}.`)
    out('At the new site, run:')
    out(
      `  mesh join CODE --dir DIR --site NAME --sqlite ` +
        `PATH${cfg.bootstrap ? ` --bootstrap ${cfg.bootstrap.join(',')}` : ''}`
    )
    if (!running) out(`The node here is not running: start it (mesh start --dir ${dir}) before the code is used.`)
    out('Keep the code secret: whoever has it can join until it is used or expires.')
    out(code)
    return 0
  }
}
