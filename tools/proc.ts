/**
 * A child process running `node ...`, for `mesh demo` and for the tests: its output kept as lines, a wait for a
 * line that matches, a wait for its exit, a signal, and a stop that escalates from SIGTERM to SIGKILL.
 *
 * It does not interpret what the child prints (a JSON log line is a line like any other), and it does not stop
 * the child when this process dies: a child that must not outlive its parent watches its stdin (`stdin: 'pipe'`),
 * which closes then.
 */
import { spawn, type ChildProcess } from 'node:child_process'

export interface Exit {
  code: number | null
  signal: NodeJS.Signals | null
}

export interface StartOptions {
  /** Names the process in errors; default: the arguments. */
  label?: string
  cwd?: string
  /** The child's whole environment; default: this process's. */
  env?: NodeJS.ProcessEnv
  /** 'pipe': the child gets a stdin pipe that stays open while this process lives. Default: 'ignore'. */
  stdin?: 'ignore' | 'pipe'
  /** Keep at most this many lines of each kind (the oldest half is dropped when it is passed); default: all. */
  maxLines?: number
}

/** A wait for a line that failed: the time ran out, or the process exited first. */
export class ProcError extends Error {
  constructor(
    readonly reason: 'timeout' | 'exited',
    message: string
  ) {
    super(message)
  }
}

/** Lines a child prints after its exit event (still in the pipe) are read for this long before a wait fails. */
const LATE_LINES_MS = 50

export class NodeProc {
  readonly proc: ChildProcess
  readonly label: string
  /** Every line, stdout and stderr as they came. */
  readonly lines: string[] = []
  readonly stdout: string[] = []
  readonly stderr: string[] = []
  readonly exited: Promise<Exit>
  private readonly listeners = new Set<(line: string, from: 'stdout' | 'stderr') => void>()
  private readonly maxLines: number

  constructor(argv: string[], opts: StartOptions = {}) {
    this.label = opts.label ?? argv.join(' ')
    this.maxLines = opts.maxLines ?? Infinity
    this.proc = spawn(process.execPath, argv, {
      cwd: opts.cwd,
      env: opts.env ?? process.env,
      stdio: [opts.stdin ?? 'ignore', 'pipe', 'pipe']
    })
    this.proc.stdin?.on('error', () => {})
    this.proc.on('error', () => {})
    this.exited = new Promise((resolve) => this.proc.on('exit', (code, signal) => resolve({ code, signal })))
    this.read(this.proc.stdout!, 'stdout')
    this.read(this.proc.stderr!, 'stderr')
  }

  private read(stream: NodeJS.ReadableStream, from: 'stdout' | 'stderr'): void {
    let buf = ''
    stream.on('data', (d: Buffer) => {
      buf += d.toString()
      let i: number
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i)
        buf = buf.slice(i + 1)
        this.keep(this.lines, line)
        this.keep(this[from], line)
        for (const l of [...this.listeners]) l(line, from)
      }
    })
  }

  private keep(into: string[], line: string): void {
    into.push(line)
    if (into.length > this.maxLines) into.splice(0, Math.floor(this.maxLines / 2))
  }

  /** False once it has exited. */
  get running(): boolean {
    return this.proc.exitCode === null && this.proc.signalCode === null
  }

  /** Calls `fn` with every line from now on; returns the call that stops it. */
  onLine(fn: (line: string, from: 'stdout' | 'stderr') => void): () => void {
    this.listeners.add(fn)
    return () => this.listeners.delete(fn)
  }

  /**
   * The first line (printed so far or from now on) that matches `re`. Fails with a ProcError after `timeoutMs`
   * or when the process exits without printing one, and with the abort's reason when `abort` fires.
   */
  waitLine(re: RegExp, timeoutMs = 30_000, abort?: AbortSignal): Promise<string> {
    const have = this.lines.find((l) => re.test(l))
    if (have !== undefined) return Promise.resolve(have)
    if (abort?.aborted) return Promise.reject(abort.reason)
    return new Promise((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined
      let late: NodeJS.Timeout | undefined
      let settled = false
      const got = () => `; got:\n${this.lines.join('\n')}`
      const settle = (done: () => void) => {
        if (settled) return
        settled = true
        clearTimeout(timer)
        clearTimeout(late)
        off()
        abort?.removeEventListener('abort', onAbort)
        done()
      }
      const off = this.onLine((line) => {
        if (re.test(line)) settle(() => resolve(line))
      })
      const onAbort = () => settle(() => reject(abort!.reason))
      abort?.addEventListener('abort', onAbort, { once: true })
      timer = setTimeout(() => {
        settle(() => reject(new ProcError('timeout', `timed out waiting for ${re} from ${this.label}${got()}`)))
      }, timeoutMs)
      this.exited.then(() => {
        if (settled) return
        late = setTimeout(() => {
          settle(() => reject(new ProcError('exited', `${this.label} exited before ${re}${got()}`)))
        }, LATE_LINES_MS)
      })
    })
  }

  /** Sends `sig` if it still runs. */
  signal(sig: NodeJS.Signals): void {
    if (this.running) this.proc.kill(sig)
  }

  /** Sends `sig` (default SIGTERM) if it still runs, and waits for its exit. */
  async kill(sig: NodeJS.Signals = 'SIGTERM'): Promise<Exit> {
    this.signal(sig)
    return this.exited
  }

  /** SIGTERM, then SIGKILL if it has not exited after `graceMs`. */
  async stop(graceMs = 5000): Promise<Exit> {
    if (!this.running) return this.exited
    this.signal('SIGTERM')
    const t = setTimeout(() => this.signal('SIGKILL'), graceMs)
    const exit = await this.exited
    clearTimeout(t)
    return exit
  }

  /** The last `n` lines of stdout, then the last `n` of stderr: for a failure report. */
  tail(n = 12): string[] {
    return [...this.stdout.slice(-n), ...this.stderr.slice(-n)]
  }
}

/** Starts `node ARGV...`. */
export function startNode(argv: string[], opts: StartOptions = {}): NodeProc {
  return new NodeProc(argv, opts)
}
