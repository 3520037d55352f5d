#!/usr/bin/env node
// The `mesh` command. Built by `npm run build` (tsc, tsconfig.build.json) into dist/tools/mesh.js, the `bin`
// of the package: it runs compiled JavaScript, with no TypeScript loader at run time.
import { main } from './cli.ts'

process.exit(await main(process.argv.slice(2)))
