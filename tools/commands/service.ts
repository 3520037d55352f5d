/**
 * `mesh service`: runs this data directory's node as a systemd service, so that no one has to remember to
 * start it (issue 17). It writes the unit file itself and asks systemctl to enable it; where systemd does not
 * run (a container, Windows, macOS) the unit is still written and the command says plainly that it is not
 * enabled, and how to start the node instead. It does not manage launchd or Windows services (see README).
 */
import { execFile } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { askNode } from '../../node/index.ts'
import { MeshError } from '../../protocol/index.ts'
import { readConfig, resolveDir } from '../config.ts'
import { out, parse, type Command } from './common.ts'
import { VERSION } from './start.ts'

const usage = `mesh service install|uninstall|status --dir DIR [--user] [--json]

Runs this data directory's node as a systemd service: started at boot once the network is online, restarted
when it fails.
  install     writes branchmesh-SITE.service and enables it (systemctl enable --now); without --user as root,
              in /etc/systemd/system (running as the data directory's owner); with --user, in
              ~/.config/systemd/user (then \`loginctl enable-linger\` lets it run without a login)
  uninstall   stops and disables it, and removes the unit file
  status      whether the unit is installed, enabled and running (--json for scripts)
Where systemctl is missing or fails, install writes the unit and says that it could not enable it.`

export interface UnitOptions {
  site: string
  dir: string
  /** The node binary and the mesh script (absolute). */
  node: string
  script: string
  user: boolean
  /** The system unit runs as this user id (the data directory's owner); none: root. */
  uid?: number
}

/** The unit's name for a site. Site names are letters, digits, dots, dashes and underscores (config.ts). */
export function unitName(site: string): string {
  return `branchmesh-${site}.service`
}

/** One ExecStart word: double-quoted, with `\`, `"`, `%` (specifiers) and `$` (variables) escaped. */
function word(s: string): string {
  return `"${s.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/%/g, '%%').replace(/\$/g, '$$$$')}"`
}

/** The unit file's text. */
export function unitFile(o: UnitOptions): string {
  const lines = [
    `# Written by \`mesh service install\` (branchmesh ${VERSION}) for the data directory ${o.dir}.`,
    '# Remove it with `mesh service uninstall`; edits are lost when it is installed again.',
    '[Unit]',
    `Description=branchmesh node of site ${o.site} (${o.dir.replace(/%/g, '%%')})`,
    'Wants=network-online.target',
    'After=network-online.target',
    '',
    '[Service]',
    'Type=simple',
    `ExecStart=${[o.node, o.script, 'start', '--dir', o.dir].map(word).join(' ')}`,
    `WorkingDirectory=${o.dir.replace(/%/g, '%%')}`,
    'Restart=on-failure',
    'RestartSec=10',
    // SIGTERM stops the node cleanly: a promotion or fence under way gets up to 10 s to finish its step.
    'KillSignal=SIGTERM',
    'TimeoutStopSec=60',
    ...(o.uid !== undefined && o.uid !== 0 ? [`User=${o.uid}`] : []),
    '',
    '[Install]',
    `WantedBy=${o.user ? 'default.target' : 'multi-user.target'}`,
    ''
  ]
  return lines.join('\n')
}

/** Where the unit file goes. */
export function unitDir(user: boolean): string {
  if (!user) return '/etc/systemd/system'
  const config = process.env.XDG_CONFIG_HOME ?? path.join(os.homedir(), '.config')
  return path.join(config, 'systemd', 'user')
}

/** Runs systemctl; resolves with its output, or an error that says why it could not. */
function systemctl(user: boolean, args: string[]): Promise<{ ok: boolean; out: string; why: string }> {
  const all = [...(user ? ['--user'] : []), ...args]
  return new Promise((resolve) => {
    execFile('systemctl', all, { timeout: 30_000 }, (err, stdout, stderr) => {
      const out = String(stdout).trim()
      if (!err) return resolve({ ok: true, out, why: '' })
      const e = err as NodeJS.ErrnoException & { killed?: boolean }
      const why =
        e.code === 'ENOENT'
          ? 'systemctl is not installed (systemd does not manage this machine)'
          : e.killed
            ? `systemctl ${all.join(' ')} did not answer within 30 s`
            : `systemctl ${all.join(' ')} failed: ${String(stderr).trim().split('\n')[0] || e.message}`
      resolve({ ok: false, out, why })
    })
  })
}

export const command: Command = {
  usage,
  summary: 'run the node as a systemd service',
  async run(args) {
    const { values, positionals } = parse(
      'service',
      args,
      { user: { type: 'boolean' }, json: { type: 'boolean' } },
      true
    )
    const [action, ...extra] = positionals
    if (!['install', 'uninstall', 'status'].includes(action ?? '') || extra.length > 0) {
      throw MeshError.USAGE(action ? `unknown service action "${[action, ...extra].join(' ')}"` : 'no action given', {
        hint: 'Try: mesh service install --dir DIR [--user], mesh service status --dir DIR, or mesh help service'
      })
    }
    const dir = resolveDir(values.dir)
    const cfg = readConfig(dir)
    if (/[\n\r]/.test(dir)) {
      throw MeshError.USAGE('a data directory whose path has a line break cannot be named in a unit file', {
        hint: 'Move the data directory to a path without line breaks.'
      })
    }
    const user = values.user === true
    const name = unitName(cfg.site)
    const file = path.join(unitDir(user), name)
    const ctl = (cmd: string) => `systemctl ${user ? '--user ' : ''}${cmd}`

    if (action === 'install') {
      const script = fs.realpathSync(process.argv[1])
      const uid = user ? undefined : fs.statSync(dir).uid
      const text = unitFile({ site: cfg.site, dir, node: process.execPath, script, user, uid })
      try {
        fs.mkdirSync(path.dirname(file), { recursive: true })
        fs.writeFileSync(file, text, { mode: 0o644 })
      } catch (err) {
        const e = err as NodeJS.ErrnoException
        throw MeshError.wrap(err, MeshError.IO_ERROR, `cannot write ${file}: ${e.message}`, {
          hint:
            e.code === 'EACCES' || e.code === 'EPERM'
              ? 'A system service needs root: run it with sudo, or install a service of your own user with --user.'
              : 'Check that the folder can be written.'
        })
      }
      out(`Wrote ${file}.`)
      for (const step of [['daemon-reload'], ['enable', '--now', name]]) {
        const r = await systemctl(user, step)
        if (!r.ok) {
          throw MeshError.SERVICE_NOT_ENABLED(`the unit is written, but it could not be enabled: ${r.why}`, {
            hint:
              `On a machine where systemd runs: ${ctl('daemon-reload')} && ${ctl(`enable --now ${name}`)}. ` +
              `Until then, the node runs only when started by hand: mesh start --dir ${dir}`,
            context: { file }
          })
        }
      }
      out(`Enabled and started ${name}: it starts at boot once the network is online, and restarts if it fails.`)
      if (await askNode(dir, 'status').catch(() => null)) {
        out(
          'A node started by hand already runs on this data directory: the service starts its own (retrying ' +
            'every 10 s) once you stop that one.'
        )
      }
      if (user) out(`So that it runs while you are not logged in: loginctl enable-linger ${os.userInfo().username}`)
      out(`See it with: mesh service status --dir ${dir}${user ? ' --user' : ''}`)
      return 0
    }

    if (action === 'uninstall') {
      const had = fs.existsSync(file)
      const r = await systemctl(user, ['disable', '--now', name])
      if (had) fs.rmSync(file)
      const reload = await systemctl(user, ['daemon-reload'])
      out(had ? `Removed ${file}.` : `No unit file at ${file}.`)
      if (!r.ok || !reload.ok) {
        throw MeshError.SERVICE_NOT_ENABLED(`the service could not be stopped and disabled: ${r.why || reload.why}`, {
          hint: `If the node still runs, stop it (${ctl(`stop ${name}`)}, or Ctrl-C where it was started).`,
          context: { file }
        })
      }
      out(`Stopped and disabled ${name}.`)
      return 0
    }

    const installed = fs.existsSync(file)
    const enabled = await systemctl(user, ['is-enabled', name])
    const active = await systemctl(user, ['is-active', name])
    // is-enabled and is-active exit non-zero for "disabled" and "inactive" yet print them: those are answers.
    const answer = (r: { out: string; why: string }) => (r.out ? r.out : null)
    const status = {
      unit: name,
      file,
      installed,
      enabled: answer(enabled),
      active: answer(active),
      // Why systemd could not answer (is-enabled reads unit files and may answer when is-active cannot).
      systemd: answer(enabled) === null ? enabled.why : answer(active) === null ? active.why : null
    }
    if (values.json) {
      out(JSON.stringify(status))
      return 0
    }
    out(`${name}: ${installed ? `installed (${file})` : `not installed (no ${file})`}`)
    out(`enabled: ${status.enabled ?? 'unknown'}, running: ${status.active ?? 'unknown'}`)
    if (status.systemd) out(`systemd could not answer: ${status.systemd}`)
    return 0
  }
}
