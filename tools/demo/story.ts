/**
 * `mesh demo`: three shops on this machine protecting each other, then a failover, with nothing to set up.
 *
 * It runs the real thing: a local DHT test network (in this process); for each shop a SQLite database written
 * by a simulated till (tools/demo/shop.ts, in this process, so the writes come from another process than the
 * node's, as in a real shop); and the real commands: `mesh init`, `invite`, `join` and `promote` run here
 * through their own `run` (their output kept, shown only if they fail), and each shop's node is `mesh start`
 * in its own OS process (tools/demo/mesh.ts).
 *
 * The story: the copies converge; shop-east is cut off (its node SIGKILLed: no goodbye) while its till keeps
 * selling into its own database; shop-north promotes its copy of shop-east's data (`mesh promote`, tried
 * again while the refusal is ORIGIN_HEALTHY, as a killed node looks alive until it misses its heartbeats) and
 * a till for shop-east's business writes into the promoted file; shop-south follows the new epoch without a
 * command; shop-east's node comes back, is fenced, keeps its offline sales in a divergence folder and follows
 * as a copy. The demo then checks, row by row, that every copy of every shop's data equals its current origin
 * (shop-east's own database included, rebuilt), and that the divergence folder holds exactly the rows
 * shop-east's till wrote while cut off. Exit 0 only if so.
 *
 * What it does not show: sales still on their way when a shop is cut off do not reach the others; after a
 * failover they end up in that shop's divergence folder like the ones made while cut off. The demo waits until
 * they have arrived before it pulls the plug, so that the divergence holds exactly the offline sales, which
 * it checks. Nor does it fail back (`mesh handover` at shop-north would).
 *
 * Every child is stopped and the temporary folder removed, on success, on failure and on Ctrl-C. Each child
 * also stops itself if this process dies without cleaning up (its stdin, a pipe from here, closes).
 */
import { checkCopies, checkDivergence, failure, finish, verdict, type Verdict } from './report.ts'
import { Demo, Interrupted } from './stage.ts'
import {
  closingTime,
  cutOffEast,
  eastReturns,
  findEachOther,
  introduce,
  joinShops,
  openShops,
  promoteAtNorth,
  sellWhileCutOff,
  southFollows,
  startMesh,
  startNodes,
  startTestnet,
  trade
} from './steps.ts'

/** The story, step by step; its verdict. */
async function story(demo: Demo): Promise<Verdict> {
  demo.armDeadline()
  introduce(demo)
  openShops(demo)
  await startTestnet(demo)
  await startMesh(demo)
  await joinShops(demo)
  await startNodes(demo)
  await findEachOther(demo)
  await trade(demo)
  const dark = await cutOffEast(demo)
  const offline = await sellWhileCutOff(demo, dark)
  const promoted = await promoteAtNorth(demo, dark)
  await southFollows(demo, promoted)
  const div = await eastReturns(demo, offline)
  await closingTime(demo)
  const copies = await checkCopies(demo, dark)
  const divergence = checkDivergence(demo, dark, offline, div)
  return verdict(demo, { dark: dark.checks, copies, divergence }, offline, div)
}

/**
 * Runs the demo in a new temporary folder (kept afterwards with `keep`), cleans up whatever happened, and
 * prints the verdict. Returns the exit code: 0 if every check passed, 130 on Ctrl-C, else 1.
 */
export async function runDemo(keep: boolean): Promise<number> {
  const demo = new Demo(keep)
  const onExit = () => demo.emergency()
  let signals = 0
  const onSignal = (sig: NodeJS.Signals) => {
    signals++
    if (signals > 1) {
      // A second Ctrl-C: stop everything now.
      demo.emergency()
      process.exit(130)
    }
    demo.interrupted = true
    demo.stopAll(new Interrupted(sig))
  }
  process.on('exit', onExit)
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)

  let v: Verdict
  let code: number
  try {
    v = await story(demo)
    code = v.ok ? 0 : 1
  } catch (err) {
    v = failure(err)
    code = err instanceof Interrupted ? 130 : 1
  }
  await finish(demo, v)
  process.off('exit', onExit)
  process.off('SIGINT', onSignal)
  process.off('SIGTERM', onSignal)
  return code
}
