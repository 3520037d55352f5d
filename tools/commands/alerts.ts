import { MeshError } from '../../protocol/index.ts'
import { readConfig, resolveDir } from '../config.ts'
import { askRunningNode, out, parse, type Command } from './common.ts'

export const command: Command = {
  usage: `mesh alerts test|daily --dir DIR [--json]

Asks the running node to send, now, through the email and webhook set under "alerts" in config.json:
  test    a short test message;
  daily   the daily summary (each site's disk space and versions, the last 24 hours of each dataset, anything
          wrong), which the sending site also sends by itself every day at alerts.dailyAt.
A failure says what to fix, and shows as a WARN in mesh status until a message gets through.`,
  summary: 'send a test message or the daily summary now',
  async run(args) {
    const { values, positionals } = parse('alerts', args, { json: { type: 'boolean' } }, true)
    const what = positionals[0]
    if (positionals.length !== 1 || (what !== 'test' && what !== 'daily'))
      throw MeshError.USAGE('say test or daily', { hint: 'Try: mesh alerts test --dir DIR' })
    const dir = resolveDir(values.dir)
    readConfig(dir)
    const res = await askRunningNode<{ sent: string[] }>(dir, { cmd: 'alerts', what }, 60_000)
    if (values.json) out(JSON.stringify(res))
    else out(`${what === 'test' ? 'Test message' : 'Daily summary'} sent by ${res.sent.join(' and ')}.`)
    return 0
  }
}
