/**
 * The baseline of the jobs load benchmark: the least a Node program can do to run N jobs and keep
 * their output. Plain `child_process.spawn` and `pg`, no Effect, no server, no followers: it
 * reads each job's pipes, turns every chunk read into a row `(job_id, seq, ts, stream, chunk)` and
 * appends the rows with one multi-row `INSERT … VALUES` per batch (whatever is waiting, at most
 * 2,048 rows, one statement at a time), into a plain table of the same shape as `job_events`.
 *
 * For every line it records when the line was printed (from the line), when this process read it
 * from the pipe, and when the INSERT holding it committed.
 *
 * Run by `load.ts` as `node --import tsx bench/jobs/baseline.ts`, configured by the environment
 * (BENCH_BASELINE_DATABASE_URL, _JOBS, _LINES, _FIFO, _GATE, _TABLE, _RESULT). It prints
 * `{"ready":<pid>}` once connected, waits for a line on stdin, spawns the jobs and prints
 * `{"spawned":true}` (the jobs print once the benchmark creates the gate file), and when they all
 * ended and their rows are stored writes its measurements as JSON to the result file and prints
 * `{"done":true}`. SIGTERM kills the jobs.
 */
import * as childProcess from "node:child_process"
import * as crypto from "node:crypto"
import * as fs from "node:fs"
import * as os from "node:os"
import * as readline from "node:readline"
import pg from "pg"
import * as Workload from "./workload.js"

const setting = (name: string): string => {
  const value = process.env[`BENCH_BASELINE_${name}`]
  if (value === undefined || value === "") throw new Error(`BENCH_BASELINE_${name} is not set`)
  return value
}

const jobs = Number(setting("JOBS"))
const lines = Number(setting("LINES"))
const setup = { fifo: setting("FIFO"), gate: setting("GATE") }
const table = setting("TABLE")
const resultFile = setting("RESULT")
const batchRows = 2048

/** What the benchmark reads back from the result file. */
export interface BaselineResult {
  readonly jobIds: ReadonlyArray<string>
  /** Print time of every line read, wall-clock ms. */
  readonly printedAt: ReadonlyArray<number>
  /** Pipe read minus print time, ms, same order. */
  readonly readLatency: ReadonlyArray<number>
  /** INSERT commit minus print time, ms, same order. */
  readonly storedLatency: ReadonlyArray<number>
  /** Wall-clock ms when the first and the last job were spawned. */
  readonly spawnStart: number
  readonly spawnEnd: number
  readonly inserts: number
  readonly rows: number
  readonly insertMillis: number
  readonly nonZeroExits: number
}

interface Row {
  readonly jobId: string
  readonly seq: number
  readonly ts: Date
  readonly stream: "stdout" | "stderr"
  readonly chunk: string
  /** Print times of the lines this chunk completed. */
  readonly lines: ReadonlyArray<number>
}

const client = new pg.Client({ connectionString: setting("DATABASE_URL") })
const children = new Set<childProcess.ChildProcess>()
const pending: Array<Row> = []
const result = {
  jobIds: [] as Array<string>,
  printedAt: [] as Array<number>,
  readLatency: [] as Array<number>,
  storedLatency: [] as Array<number>,
  spawnStart: 0,
  spawnEnd: 0,
  inserts: 0,
  rows: 0,
  insertMillis: 0,
  nonZeroExits: 0
}
let writing = false
let running = 0
let finished: (() => void) | undefined

const maybeFinished = () => {
  if (running === 0 && !writing && pending.length === 0) finished?.()
}

const insert = async (rows: ReadonlyArray<Row>) => {
  const values: Array<unknown> = []
  const tuples = rows.map((row, i) => {
    values.push(row.jobId, row.seq, row.ts, row.stream, row.chunk)
    const at = i * 5
    return `($${at + 1}, $${at + 2}, $${at + 3}, $${at + 4}, $${at + 5})`
  })
  const start = performance.now()
  await client.query(
    `INSERT INTO ${table} (job_id, seq, ts, stream, chunk) VALUES ${tuples.join(", ")}`,
    values
  )
  const committed = Workload.wallMillis()
  result.insertMillis += performance.now() - start
  result.inserts++
  result.rows += rows.length
  for (const row of rows) for (const printed of row.lines) result.storedLatency.push(committed - printed)
}

const write = async () => {
  writing = true
  try {
    while (pending.length > 0) await insert(pending.splice(0, batchRows))
  } finally {
    writing = false
    maybeFinished()
  }
}

const kick = () => {
  if (!writing) {
    write().catch((error: unknown) => {
      console.error(`baseline insert failed: ${String(error)}`)
      process.exit(1)
    })
  }
}

const spawnJob = (jobId: string, k: number) => {
  const child = childProcess.spawn(Workload.program, [...Workload.args(setup, lines, k, jobs)], {
    cwd: os.homedir(),
    env: { ...process.env, VIBES_JOB_ID: jobId },
    stdio: ["ignore", "pipe", "pipe"]
  })
  children.add(child)
  running++
  let seq = 0
  const split = Workload.lineSplitter(jobId)
  const onChunk = (stream: "stdout" | "stderr") => (chunk: string) => {
    const at = Workload.wallMillis()
    const printed: Array<number> = []
    if (stream === "stdout") {
      for (const line of split(chunk)) {
        if (line === undefined) continue
        printed.push(line.printedAt)
        result.printedAt.push(line.printedAt)
        result.readLatency.push(at - line.printedAt)
      }
    }
    pending.push({ jobId, seq: ++seq, ts: new Date(), stream, chunk, lines: printed })
    kick()
  }
  child.stdout.setEncoding("utf8")
  child.stderr.setEncoding("utf8")
  child.stdout.on("data", onChunk("stdout"))
  child.stderr.on("data", onChunk("stderr"))
  child.once("close", (code) => {
    children.delete(child)
    if (code !== 0) result.nonZeroExits++
    running--
    maybeFinished()
  })
}

const main = async () => {
  client.on("error", (error) => console.error(`baseline database error: ${error.message}`))
  await client.connect()
  console.log(JSON.stringify({ ready: process.pid }))
  const stdin = readline.createInterface({ input: process.stdin })
  await new Promise<void>((resolve) => stdin.once("line", () => resolve()))
  stdin.close()
  const done = new Promise<void>((resolve) => (finished = resolve))
  result.spawnStart = Workload.wallMillis()
  for (let k = 0; k < jobs; k++) {
    const jobId = crypto.randomUUID()
    result.jobIds.push(jobId)
    spawnJob(jobId, k)
    // Let the pipes of the jobs already running be read between spawns.
    if (k % 10 === 9) await new Promise((resolve) => setImmediate(resolve))
  }
  result.spawnEnd = Workload.wallMillis()
  console.log(JSON.stringify({ spawned: true }))
  await done
  await client.end()
  fs.writeFileSync(resultFile, JSON.stringify(result))
  console.log(JSON.stringify({ done: true }))
  process.exit(0)
}

process.once("SIGTERM", () => {
  for (const child of children) child.kill("SIGKILL")
  process.exit(143)
})

main().catch((error: unknown) => {
  console.error(`baseline failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`)
  for (const child of children) child.kill("SIGKILL")
  process.exit(1)
})
