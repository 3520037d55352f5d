/**
 * The commands a hint prints, as a person would run them: `mesh CMD ARG [--flag value]...`, and where: "here"
 * (the site that printed it), "at SITE" or "at SITE or SITE" (each of them), or nothing said (here). A hint
 * that gives `--dir` is run as it is; otherwise the site's own data directory is added, as its default
 * directory would be there.
 */
export interface HintCommand {
  /** The command as printed, without `mesh`. */
  argv: string[]
  /** The sites named to run it at; [] for here. */
  at: string[]
  /** The text it was found in. */
  printed: string
}

/**
 * Every command in `text` that names one of `datasets` (prose such as "mesh verify found ..." names none), with
 * the sites among `sites` it is to run at.
 */
export function hintCommands(text: string, sites: readonly string[], datasets: readonly string[]): HintCommand[] {
  const site = sites.join('|')
  const dataset = [...datasets].sort((x, y) => y.length - x.length).join('|')
  const re = new RegExp(
    String.raw`\bmesh ([a-z][a-z-]*) (${dataset})(?![\w-])((?: --[a-z-]+(?: [^\s,;:\x60)]+)?)*)` +
      `(?: (here|at (?:${site})(?: or (?:${site}))*))?`,
    'g'
  )
  const out: HintCommand[] = []
  for (const m of text.matchAll(re)) {
    const flags = m[3]
      .trim()
      .split(/\s+/)
      .filter((w) => w !== '')
      .map((w) => w.replace(/\.$/, ''))
    const arg = m[2].replace(/\.$/, '')
    const at = m[4] && m[4] !== 'here' ? m[4].slice(3).split(' or ') : []
    out.push({ argv: [m[1], arg, ...flags], at, printed: m[0] })
  }
  return out
}
