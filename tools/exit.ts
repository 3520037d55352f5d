/** The exit codes every command shares, in a module of their own: `mesh version` loads nothing more. */
export const EXIT_USAGE = 64
export const EXIT_ERROR = 1
