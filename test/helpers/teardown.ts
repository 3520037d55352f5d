/**
 * What a test makes, it undoes: each helper that takes the test context `t` registers its own teardown here,
 * so a test body has no try/finally and no list of things to clean up.
 *
 * node's test runner runs `t.after` hooks in the order they were added; teardowns here run in the reverse
 * order (the last thing made goes first: a node is stopped before its folder is removed), all of them even
 * when one fails, and the test fails with the first error.
 */
import type { TestContext } from 'node:test'
import { startNodeProcess, startTs, type Child } from './proc.ts'

export type { TestContext }

const stacks = new WeakMap<TestContext, Array<() => unknown>>()

/** Runs `fn` when the test ends, before every teardown registered earlier. */
export function teardown(t: TestContext, fn: () => unknown): void {
  let stack = stacks.get(t)
  if (stack === undefined) {
    const fns: Array<() => unknown> = []
    stacks.set(t, fns)
    t.after(async () => {
      const errors: unknown[] = []
      for (let f = fns.pop(); f !== undefined; f = fns.pop()) {
        try {
          await f()
        } catch (err) {
          errors.push(err)
        }
      }
      if (errors.length > 0) throw errors[0]
    })
    stack = fns
  }
  stack.push(fn)
}

/** `node --import tsx SCRIPT ARGS...` (see proc.ts), killed with SIGKILL when the test ends if still running. */
export function tsProcess(t: TestContext, script: string, args: string[], opts: { env?: NodeJS.ProcessEnv } = {}) {
  const child = startTs(script, args, opts)
  teardown(t, () => child.kill('SIGKILL'))
  return child
}

/** `node ARGV...` (see proc.ts), killed with SIGKILL when the test ends if still running. */
export function nodeProcess(t: TestContext, argv: string[], label: string): Child {
  const child = startNodeProcess(argv, label)
  teardown(t, () => child.kill('SIGKILL'))
  return child
}
