/** The engines, by the name a dataset's log gives (DatasetInfo.engine, the log header's engine). */
import { MeshError } from '../protocol/index.ts'
import type { Engine } from './engine.ts'
import { postgresEngine } from './postgres/engine.ts'
import { sqliteEngine } from './sqlite/engine.ts'

export const ENGINES: Readonly<Record<string, Engine>> = { sqlite: sqliteEngine, postgres: postgresEngine }

/** The engine of a dataset; BAD_LOG for a name this software does not know (a newer site's dataset). */
export function engineFor(name: string): Engine {
  const e = ENGINES[name]
  if (!e) {
    throw MeshError.BAD_LOG(`this software has no engine named ${JSON.stringify(name)}`, {
      hint: 'The dataset was made by a newer branchmesh: upgrade this site.'
    })
  }
  return e
}
