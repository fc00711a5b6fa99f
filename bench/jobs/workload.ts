/**
 * The job the load benchmark runs, under vibes and under the baseline alike, and how its output
 * is checked.
 *
 * One bash process prints one line of exactly 1,000 bytes a second:
 * `<VIBES_JOB_ID> <index, 6 digits> <print time, 16 digits of µs since the epoch> <padding>\n`.
 * The print time comes from bash's `$EPOCHREALTIME` and the pause from `read -t 1` on a FIFO
 * nobody writes to, so the loop forks nothing: on the 2-core VM these benchmarks were written on,
 * a fork and exec costs ~7 ms of CPU, and `sleep 1` plus `date +%s%N` in every job would need ~14
 * cores for 1,000 jobs.
 *
 * Before its first line a job waits for a gate file to exist (polling 5 times a second, with
 * builtins only) and then for its phase, a fraction of a second: the benchmark opens the gate once
 * every job runs, so all of them then print for the same stretch, their lines spread evenly over
 * each second.
 *
 * Everything in a line but the print time is known in advance, so the check below compares the
 * text byte for byte with the timestamp as a 16-digit wildcard.
 */
import * as childProcess from "node:child_process"
import * as fs from "node:fs"
import { Option } from "effect"
import * as Proc from "../../infra/proc/Proc.js"

/** Bytes of one line, its newline included. */
export const lineBytes = 1000

const idChars = 36
const paddingChars = lineBytes - (idChars + 1 + 6 + 1 + 16 + 1 + 1)

/** The padding of every line: printable, varied, no quote or backslash. */
export const padding = Array.from(
  { length: paddingChars },
  (_, i) => "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:;-_+=()[]{}"[(i * 7) % 76]
).join("")

/** The loop; `$1` is the FIFO, `$2` the padding, `$3` the number of lines, `$4` the gate, `$5` the phase. */
const script = [
  'exec 3<>"$1"',
  "n=0",
  // An orphan whose benchmark died gives up after 10 minutes.
  'while [ ! -e "$4" ]; do n=$((n+1)); [ "$n" -le 3000 ] || exit 3; read -t 0.2 -u 3 || :; done',
  'read -t "$5" -u 3 || :',
  "i=0",
  'while [ "$i" -lt "$3" ]; do',
  "  i=$((i+1))",
  `  printf '%s %06d %s %s\\n' "$VIBES_JOB_ID" "$i" "\${EPOCHREALTIME//[!0-9]/}" "$2"`,
  '  if [ "$i" -lt "$3" ]; then read -t 1 -u 3 || :; fi',
  "done"
].join("\n")

/** The program every job runs. */
export const program = "/bin/bash"

/** Its process name, to find the jobs in /proc. */
export const programName = "bash"

/** What a job needs besides its line count. */
export interface Setup {
  /** The FIFO the jobs pause on. */
  readonly fifo: string
  /** The file whose existence starts the jobs. */
  readonly gate: string
}

/**
 * Arguments of `program` for job `k` of `jobs`, printing `lines` lines once `setup.gate` exists,
 * starting `k / jobs` of a second after that.
 */
export const args = (setup: Setup, lines: number, k: number, jobs: number): ReadonlyArray<string> => [
  "-c",
  script,
  "bash",
  setup.fifo,
  padding,
  String(lines),
  setup.gate,
  (k / Math.max(1, jobs)).toFixed(3)
]

/** Creates the FIFO the jobs pause on (nobody ever writes to it; each job opens it read-write, as whatever user it runs as). */
export const makeFifo = (file: string): void => {
  childProcess.execFileSync("mkfifo", ["-m", "666", file])
  if (!fs.statSync(file).isFIFO()) throw new Error(`${file} is not a FIFO`)
}

/** Wall-clock milliseconds since the epoch with sub-millisecond precision, as the lines carry. */
export const wallMillis = (): number => performance.timeOrigin + performance.now()

/** A parsed line. */
export interface Line {
  readonly index: number
  /** When it was printed, wall-clock ms since the epoch. */
  readonly printedAt: number
}

const digits16 = /^\d{16}$/

/** Parses one line of `jobId` (without its newline); undefined unless it is exactly as printed. */
export const parseLine = (jobId: string, text: string): Line | undefined => {
  if (text.length !== lineBytes - 1) return undefined
  if (!text.startsWith(`${jobId} `) || text.slice(idChars + 7, idChars + 8) !== " ") return undefined
  const index = text.slice(idChars + 1, idChars + 7)
  const stamp = text.slice(idChars + 8, idChars + 24)
  if (!/^\d{6}$/.test(index) || !digits16.test(stamp)) return undefined
  if (text.slice(idChars + 24) !== ` ${padding}`) return undefined
  return { index: Number(index), printedAt: Number(stamp) / 1000 }
}

/**
 * Splits a job's output into lines as it arrives: `push` returns the lines a chunk completed
 * (undefined for a line that is not as printed).
 */
export const lineSplitter = (jobId: string) => {
  let partial = ""
  return (chunk: string): Array<Line | undefined> => {
    const pieces = (partial + chunk).split("\n")
    partial = pieces.pop() ?? ""
    return pieces.map((piece) => parseLine(jobId, piece))
  }
}

/** What a job's output lacks or has too much of, in bytes, against what it printed. */
export interface Check {
  readonly expectedBytes: number
  readonly bytes: number
  /** Lines never seen. */
  readonly lostBytes: number
  /** Lines seen more than once (the repeats). */
  readonly duplicatedBytes: number
  /** Lines seen after a line printed later. */
  readonly outOfOrderBytes: number
  /** Bytes that are not a line as printed (torn, altered, or a line that was never printed). */
  readonly corruptBytes: number
  /** Print times of the lines, by index (1-based; 0 where lost). */
  readonly printedAt: ReadonlyArray<number>
}

/** Compares the whole output `text` of `jobId` with the `lines` lines it printed. */
export const check = (jobId: string, text: string, lines: number): Check => {
  const printedAt = Array.from({ length: lines + 1 }, () => 0)
  let duplicatedBytes = 0
  let outOfOrderBytes = 0
  let corruptBytes = 0
  let highest = 0
  let seen = 0
  const pieces = text.split("\n")
  const tail = pieces.pop() ?? ""
  corruptBytes += tail.length
  for (const piece of pieces) {
    const line = parseLine(jobId, piece)
    if (line === undefined || line.index < 1 || line.index > lines) {
      corruptBytes += piece.length + 1
    } else if ((printedAt[line.index] ?? 0) > 0) {
      duplicatedBytes += lineBytes
    } else {
      printedAt[line.index] = line.printedAt
      seen++
      if (line.index < highest) outOfOrderBytes += lineBytes
      highest = Math.max(highest, line.index)
    }
  }
  return {
    expectedBytes: lines * lineBytes,
    bytes: Buffer.byteLength(text),
    lostBytes: (lines - seen) * lineBytes,
    duplicatedBytes,
    outOfOrderBytes,
    corruptBytes,
    printedAt
  }
}

/** Totals of many checks. */
export interface Totals {
  readonly jobs: number
  readonly expectedBytes: number
  readonly bytes: number
  readonly lostBytes: number
  readonly duplicatedBytes: number
  readonly outOfOrderBytes: number
  readonly corruptBytes: number
  /** Jobs with any of those. */
  readonly badJobs: number
}

/** Adds up checks. */
export const totals = (checks: ReadonlyArray<Check>): Totals => {
  const sum = (f: (c: Check) => number) => checks.reduce((s, c) => s + f(c), 0)
  return {
    jobs: checks.length,
    expectedBytes: sum((c) => c.expectedBytes),
    bytes: sum((c) => c.bytes),
    lostBytes: sum((c) => c.lostBytes),
    duplicatedBytes: sum((c) => c.duplicatedBytes),
    outOfOrderBytes: sum((c) => c.outOfOrderBytes),
    corruptBytes: sum((c) => c.corruptBytes),
    badJobs: checks.filter((c) => c.lostBytes + c.duplicatedBytes + c.outOfOrderBytes + c.corruptBytes > 0)
      .length
  }
}

/**
 * The stretch when every job ran: from the last job's first line to the first job's last line
 * (wall-clock ms); `undefined` when they never all ran at once.
 */
export const allRunning = (
  checks: ReadonlyArray<Check>
): { readonly from: number; readonly to: number } | undefined => {
  let from = 0
  let to = Number.POSITIVE_INFINITY
  for (const c of checks) {
    const times = c.printedAt.filter((t) => t > 0)
    const first = times[0]
    const last = times[times.length - 1]
    if (first === undefined || last === undefined) return undefined
    from = Math.max(from, first)
    to = Math.min(to, last)
  }
  return to > from ? { from, to } : undefined
}

// Processes -------------------------------------------------------------------------------------

/** The processes below `pid` (children, their children, …), only those named `name` if given. */
export const descendants = Proc.descendants

/** SIGKILLs every job process left whose command line names `dir` (the benchmark's own directory). */
export const killLeftovers = (dir: string): number => {
  let killed = 0
  for (const pid of Proc.pids()) {
    if (Option.getOrUndefined(Proc.comm(pid)) !== programName) continue
    if (!Option.exists(Proc.cmdline(pid), (line) => line.includes(dir))) continue
    try {
      process.kill(pid, "SIGKILL")
      killed++
    } catch {
      // gone meanwhile
    }
  }
  return killed
}
