#!/usr/bin/env node
// The `mesh` command. The sources are TypeScript, run through tsx (a dependency), so there is no build step.
import { register } from 'tsx/esm/api'
register()
const { main } = await import('./cli.ts')
process.exit(await main(process.argv.slice(2)))
