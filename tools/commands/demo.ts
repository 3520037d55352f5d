/** `mesh demo`: the story and its steps are in tools/demo/ (story.ts first). */
import { MeshError } from '../../protocol/index.ts'
import { runDemo } from '../demo/story.ts'
import { parse, type Command } from './common.ts'

export const usage = `mesh demo [--keep]

Shows branchmesh at work on this machine, with nothing to set up and no internet: three shops (shop-north,
shop-south, shop-east), each with its own database and a node of its own, trade for a while and protect each
other. Then shop-east is lost (its node killed; its till keeps selling, cut off), shop-north takes over its
data with \`mesh promote\` and shop-east's business keeps selling there, shop-south follows by itself, and
shop-east comes back: it is fenced, keeps the sales it made while cut off in a folder for review, and follows
shop-north. The demo checks, row by row, that every copy of every shop's data equals its current origin and
that the folder holds exactly shop-east's offline sales. Takes about 40 seconds.
Everything happens in a temporary folder, removed at the end.
  --keep   keep the temporary folder (databases, copies, divergence folder, node logs) to look at afterwards
Exit code: 0 if every check passes, 1 if not (or if something failed).`

export const command: Command = {
  usage,
  summary: 'three shops on this machine protecting each other, then a failover (about 40 s)',
  async run(args) {
    const { values } = parse('demo', args, { keep: { type: 'boolean' } })
    if (values.dir !== undefined || values.bootstrap !== undefined) {
      const why = 'mesh demo takes neither --dir nor --bootstrap: it makes its own temporary folder and test network'
      throw MeshError.USAGE(why, { hint: 'Try: mesh demo' })
    }
    return runDemo(values.keep === true)
  }
}
