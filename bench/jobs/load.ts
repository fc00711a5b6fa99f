/**
 * Many concurrent jobs writing steadily: whether every byte is kept, what a running job costs the
 * server in memory, and how long a line takes from the job to a follower, against a plain Node
 * program doing the least work that keeps the same output (`baseline.ts`), in the same run.
 *
 * Every job is one bash loop printing one 1,000-byte line a second for `BENCH_SECONDS` seconds
 * (see `workload.ts`: the line carries its print time; the loop forks nothing). Jobs wait for a
 * gate file before their first line; the gate opens once all of them run (every job's bash is a
 * child of the server, or of the baseline), so that all N then print for the same `BENCH_SECONDS`,
 * however long starting them took; `BENCH_GATE=0` opens it before the first job starts instead.
 *
 * - **vibes**: a `vibes serve` child process (compiled build, fresh database, its own data dir,
 *   127.0.0.1 only, `VIBES_JOB_SLOTS` ≥ the job count). After a few warm-up jobs and a quiet
 *   spell (the idle RSS), `BENCH_JOBS` jobs are started with `Jobs.Execute` (the `stream`
 *   strategy: no PTY host), `BENCH_SUBMIT_CONCURRENCY` calls at a time; the first `BENCH_FOLLOW`
 *   of them (default: all) are followed to the end on that stream (`JobAccepted`, then what
 *   `Jobs.Logs({ follow: true })` would send), the rest are only submitted. Each line a follower
 *   receives gives a latency: receive time minus the print time in the line, both from this
 *   machine's wall clock. The server's RSS is read every second.
 * - **baseline**: `baseline.ts` in a child process spawns the same number of the same loops with
 *   `child_process.spawn`, reads the pipes, and appends each chunk read as a row with multi-row
 *   INSERTs into a plain table of the same database; its latency is print to pipe read (and print
 *   to INSERT committed), its memory its own RSS.
 *
 * Afterwards the output stored (read back with `Jobs.Logs`, without following: the `job.log`
 * events; the baseline's table ORDER BY seq) and what each follower received are compared byte for
 * byte with what the jobs printed. Memory counts the RSS
 * samples taken while every job was running (from the last job's first line to the first job's
 * last line), minus the RSS before the jobs started, over the job count.
 *
 * Env (or `--jobs=N`, `--seconds=S`, `--follow=F`): BENCH_JOBS (JOBS, 1000), BENCH_SECONDS
 * (SECONDS, 60), BENCH_FOLLOW (FOLLOW, all), BENCH_SUBMIT_CONCURRENCY (16), BENCH_GATE (1),
 * BENCH_SYSTEMS (vibes,baseline), BENCH_EVENT_BACKEND (postgres, or jetstream: vibes on its bundled,
 * supervised nats-server, started in the server's data dir), DATABASE_URL, BENCH_CPU_PROF (a directory for the server's CPU
 * profile), BENCH_DUMP (a file for every vibes line's print time and latencies, as JSON).
 */
import * as childProcess from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"
import * as readline from "node:readline"
import { fileURLToPath } from "node:url"
import type pg from "pg"
import { Cause, Deferred, DateTime, Effect, Fiber, Redacted, Stream } from "effect"
import type * as Client from "../../rpc/Client.js"
import { type JobOutput, JobSpec, type ExecuteOutput } from "../../rpc/Jobs.js"
import * as Harness from "../events/harness.js"
import * as Sessions from "../sessions/harness.js"
import type { BaselineResult } from "./baseline.js"
import * as Workload from "./workload.js"

const here = path.dirname(fileURLToPath(import.meta.url))

/** `--name=value` from the command line, else the first of `names` set in the environment. */
const option = (flag: string, names: ReadonlyArray<string>, fallback: number): number => {
  const fromFlag = process.argv.find((arg) => arg.startsWith(`--${flag}=`))
  if (fromFlag !== undefined) process.env[names[0] ?? flag] = fromFlag.slice(flag.length + 3)
  for (const name of names) if ((process.env[name] ?? "") !== "") return Harness.envInt(name, fallback)
  return fallback
}

const jobCount = option("jobs", ["BENCH_JOBS", "JOBS"], 1000)
const seconds = option("seconds", ["BENCH_SECONDS", "SECONDS"], 60)
const followCount = Math.min(jobCount, option("follow", ["BENCH_FOLLOW", "FOLLOW"], jobCount))
const submitConcurrency = Harness.envInt("BENCH_SUBMIT_CONCURRENCY", 16)
const systems = Harness.envList("BENCH_SYSTEMS", ["vibes", "baseline"])
const cpuProfDir = process.env["BENCH_CPU_PROF"]
const gated = process.env["BENCH_GATE"] !== "0"
const warmupJobs = 5
const eventBackend = process.env["BENCH_EVENT_BACKEND"] === "jetstream" ? "jetstream" : "postgres"
/** How long the jobs may take beyond their own duration before the run counts as failed. */
const graceSeconds = 300
const baselineTable = "baseline_job_events"

// Measuring ---------------------------------------------------------------------------------

/** One RSS reading (KiB), with the job processes running then. */
interface Sample {
  readonly at: number
  readonly rss: number
  readonly other: number
  readonly jobs: number
}

/** The shell processes at one moment. */
interface ShellSample {
  readonly at: number
  readonly count: number
  readonly rss: number
}

/** Reads RSS and counts the jobs every second (their RSS every 5 s) until interrupted. */
const sampler = (pid: number, otherPid: () => number | undefined) =>
  Effect.gen(function* () {
    const samples: Array<Sample> = []
    const shells: Array<ShellSample> = []
    const fiber = yield* Effect.forkScoped(
      Effect.gen(function* () {
        for (let tick = 0; ; tick++) {
          samples.push({
            at: Workload.wallMillis(),
            rss: Sessions.rssKiB(pid),
            other: Sessions.rssKiB(otherPid()),
            jobs: Workload.descendants(pid, Workload.programName).length
          })
          if (tick % 5 === 2) {
            const tree = Workload.descendants(pid, Workload.programName)
            const rss = tree.reduce(
              (sum, p) => sum + (Number.isNaN(Sessions.rssKiB(p)) ? 0 : Sessions.rssKiB(p)),
              0
            )
            shells.push({ at: Workload.wallMillis(), count: tree.length, rss })
          }
          yield* Effect.sleep("1 second")
        }
      })
    )
    return { samples, shells, stop: Fiber.interrupt(fiber) }
  })

/**
 * Opens the gate once `count` jobs run below `pid` (at most 300 s); when it opened. (Under the
 * sandbox a job's shell is a grandchild: the namespaces' init sits between.)
 */
const openGate = (pid: number, gate: string, count: number) =>
  Effect.gen(function* () {
    const deadline = Harness.now() + 300_000
    while (Workload.descendants(pid, Workload.programName).length < count) {
      if (Harness.now() > deadline) {
        return yield* new Harness.BenchError({ message: `${count} jobs never ran at once` })
      }
      yield* Effect.sleep("100 millis")
    }
    fs.writeFileSync(gate, "")
    return Workload.wallMillis()
  })

/** RSS (KiB) of `pid` once quiet: the later of two readings 5 s apart. */
const quietRss = (pids: ReadonlyArray<number | undefined>) =>
  Effect.gen(function* () {
    yield* Sessions.settle(pids, 60)
    yield* Effect.sleep("5 seconds")
    return pids.map(Sessions.rssKiB)
  })

/** Latency percentiles of a list, ms. */
interface Spread {
  readonly count: number
  readonly p50: number
  readonly p95: number
  readonly p99: number
  readonly max: number
}

const spread = (values: ReadonlyArray<number>): Spread => {
  const sorted = Float64Array.from(values).sort()
  const at = (p: number) =>
    sorted[Math.min(sorted.length, Math.max(1, Math.ceil((p / 100) * sorted.length))) - 1]
  return {
    count: sorted.length,
    p50: at(50) ?? Number.NaN,
    p95: at(95) ?? Number.NaN,
    p99: at(99) ?? Number.NaN,
    max: sorted[sorted.length - 1] ?? Number.NaN
  }
}

/** Per-line latencies with the print time of each line (to cut them to a window). */
interface Latencies {
  readonly printedAt: Array<number>
  readonly values: Array<number>
  /** The line's number in its job (1 = first), where known. */
  readonly index?: Array<number>
}

const within = (l: Latencies, window: { readonly from: number; readonly to: number } | undefined) =>
  window === undefined
    ? []
    : l.values.filter((_, i) => (l.printedAt[i] ?? 0) >= window.from && (l.printedAt[i] ?? 0) <= window.to)

const meanOf = (values: ReadonlyArray<number>) =>
  values.length === 0 ? Number.NaN : values.reduce((s, v) => s + v, 0) / values.length

/** CPU seconds of the server (or the baseline runner), Postgres, and this process. */
interface Cpu {
  readonly process: number
  readonly postgres: number
  readonly client: number
}

/** What one system's run gives. */
interface Outcome {
  readonly system: string
  /** Stored output against what was printed. */
  readonly stored: Workload.Totals
  /** What followers received (vibes only). */
  readonly followed: Workload.Totals | undefined
  readonly window: { readonly from: number; readonly to: number } | undefined
  /** When the first job was started, wall-clock ms. */
  readonly startedAt: number
  /** Seconds from the first start call until all jobs ran (the gate opened). */
  readonly rampSeconds: number
  readonly idleRss: number
  readonly windowRss: ReadonlyArray<number>
  readonly shells: ReadonlyArray<ShellSample>
  /** Print to the reader of record (follower / pipe read). */
  readonly latency: Latencies
  /** Print to the server's read of the pipe (vibes, the JobLog's `ts`, ms precision). */
  readonly serverRead: Latencies
  /** Print to stored (baseline: INSERT committed). */
  readonly storedLatency: Latencies
  /** CPU seconds while the jobs were started, and from then until all had ended. */
  readonly cpuStart: Cpu
  readonly cpuRun: Cpu
  /** The fewest jobs running at any RSS sample while all ran. */
  readonly fewestRunning: number
  readonly notes: ReadonlyArray<string>
  /** The other process's RSS (vibes: the PTY host) idle and loaded, and its CPU seconds. */
  readonly other: { readonly idle: number; readonly loaded: number; readonly cpu: number } | undefined
}

// Checking stored output --------------------------------------------------------------------

interface StoredRow {
  readonly job_id: string
  readonly seq: string
  readonly stream: string
  readonly chunk: string
}

/** Reads the output of `jobIds` from `table`, 50 jobs a query, and checks it. */
const checkStored = (db: pg.Client, table: string, jobIds: ReadonlyArray<string>) =>
  Effect.gen(function* () {
    const checks: Array<Workload.Check> = []
    let seqProblems = 0
    let otherChunks = 0
    let rows = 0
    for (let at = 0; at < jobIds.length; at += 50) {
      const ids = jobIds.slice(at, at + 50)
      const result = yield* Harness.rawQuery<StoredRow>(
        db,
        `SELECT t.job_id::text AS job_id, t.seq, t.stream, t.chunk FROM ${table} t
         WHERE t.job_id = ANY($1::uuid[]) ORDER BY t.job_id, t.seq`,
        [ids]
      )
      const byJob = new Map<string, Array<StoredRow>>()
      for (const row of result.rows) {
        const list = byJob.get(row.job_id) ?? []
        list.push(row)
        byJob.set(row.job_id, list)
      }
      for (const id of ids) {
        const list = byJob.get(id) ?? []
        rows += list.length
        list.forEach((row, i) => {
          if (Number(row.seq) !== i + 1) seqProblems++
          if (row.stream !== "stdout") otherChunks++
        })
        const text = list
          .filter((row) => row.stream === "stdout")
          .map((row) => row.chunk)
          .join("")
        checks.push(Workload.check(id, text, seconds))
      }
    }
    return { checks, seqProblems, otherChunks, rows }
  })

/** What vibes kept of each job, read back through its API (`Jobs.Logs` without following). */
const checkLogs = (client: Client.Client, jobIds: ReadonlyArray<string>) =>
  Effect.gen(function* () {
    let seqProblems = 0
    let otherChunks = 0
    let rows = 0
    const checks = yield* Effect.forEach(
      jobIds,
      (id) =>
        Sessions.orBench(Stream.runCollect(client.Jobs.Logs({ jobId: id }))).pipe(
          Effect.map((outputs) => {
            let text = ""
            let expected = 1
            for (const output of outputs) {
              if (output._tag !== "JobLog") continue
              rows++
              if (output.seq !== expected) seqProblems++
              expected = output.seq + 1
              if (output.stream === "stdout") text += output.chunk
              else otherChunks++
            }
            return Workload.check(id, text, seconds)
          })
        ),
      { concurrency: 16 }
    )
    return { checks, seqProblems, otherChunks, rows }
  })

// vibes -------------------------------------------------------------------------------------

/** A followed job: what arrived, and when. */
interface Follower {
  jobId: string
  readonly chunks: Array<string>
  status: string
  error: string | undefined
}

/** Job `k` of the run. */
const spec = (setup: Workload.Setup, k: number) =>
  JobSpec.make({
    command: Workload.program,
    args: Workload.args(setup, seconds, k, jobCount),
    strategy: "stream"
  })

/** Runs `job` to the end on an `Execute` stream, handing every element to `onOutput`. */
const execute = (client: Client.Client, job: JobSpec, onOutput: (output: ExecuteOutput) => void) =>
  Sessions.orBench(
    client.Jobs.Execute(job).pipe(Stream.runForEach((output) => Effect.sync(() => onOutput(output))))
  )

const vibes = (db: Harness.BenchDatabase, admin: pg.Client, fifo: string, dir: string) =>
  Effect.scoped(
    Effect.gen(function* () {
      const server = yield* Sessions.serve(db, {
        env: {
          VIBES_JOB_SLOTS: String(Math.max(2000, jobCount)),
          VIBES_HOST: "127.0.0.1",
          VIBES_EVENT_BACKEND: eventBackend,
          // Every job is followed on a stream of its own, all on one client.
          VIBES_MAX_STREAMS_PER_CLIENT: String(jobCount + 100),
          VIBES_MAX_IN_FLIGHT: String(jobCount + 100)
        },
        cpuProfDir
      })
      yield* Harness.progress(
        `vibes serve (pid ${server.pid}, events on ${eventBackend}) listens on ${server.url}`
      )
      const client = yield* Sessions.connect(server)

      // Warm-up: the code paths of submitting, running, storing and following a job.
      const warmGate = path.join(dir, "gate-warm-up")
      fs.writeFileSync(warmGate, "")
      const warmSpec = JobSpec.make({
        command: Workload.program,
        args: Workload.args({ fifo, gate: warmGate }, 2, 0, 1),
        strategy: "stream"
      })
      yield* Effect.forEach(
        Array.from({ length: warmupJobs }),
        () => Sessions.orBench(client.Jobs.Execute(warmSpec).pipe(Stream.runDrain)),
        { concurrency: warmupJobs }
      )
      const [idleRss = Number.NaN, idleHost = Number.NaN] = yield* quietRss([server.pid, server.ptyHostPid()])
      yield* Harness.progress(`idle: server ${(idleRss / 1024).toFixed(1)} MiB RSS`)

      const latency: Latencies = { printedAt: [], values: [], index: [] }
      const serverRead: Latencies = { printedAt: [], values: [] }
      const followers: Array<Follower> = []
      const jobIds: Array<string> = []
      const rejected: Array<string> = []
      const { samples, shells, stop } = yield* sampler(server.pid, server.ptyHostPid)
      const setup = { fifo, gate: path.join(dir, "gate-vibes") }
      if (!gated) fs.writeFileSync(setup.gate, "")
      const cpuBefore = Sessions.cpuSample(server)
      const startedAt = Workload.wallMillis()
      const startMicros = Sessions.monotonicMicros()

      const start = (k: number) =>
        Effect.gen(function* () {
          if (k >= followCount) {
            const info = yield* Sessions.orBench(client.Jobs.Submit(spec(setup, k)))
            jobIds[k] = info.id
            return
          }
          const accepted = yield* Deferred.make<string>()
          const follower: Follower = { jobId: "", chunks: [], status: "running", error: undefined }
          let split: ReturnType<typeof Workload.lineSplitter> | undefined
          const onOutput = (output: ExecuteOutput | JobOutput) => {
            switch (output._tag) {
              case "JobAccepted":
                follower.jobId = output.job.id
                split = Workload.lineSplitter(output.job.id)
                Deferred.unsafeDone(accepted, Effect.succeed(output.job.id))
                return
              case "JobLog": {
                if (output.stream !== "stdout" || split === undefined) return
                const receivedAt = Workload.wallMillis()
                const readAt = DateTime.toEpochMillis(output.ts)
                follower.chunks.push(output.chunk)
                for (const line of split(output.chunk)) {
                  if (line === undefined) continue
                  latency.printedAt.push(line.printedAt)
                  latency.values.push(receivedAt - line.printedAt)
                  latency.index?.push(line.index)
                  serverRead.printedAt.push(line.printedAt)
                  serverRead.values.push(readAt - line.printedAt)
                }
                return
              }
              case "JobDone":
                follower.status = output.status
                return
              case "JobProgress":
                return
            }
          }
          followers[k] = follower
          const run = yield* execute(client, spec(setup, k), onOutput).pipe(
            Effect.catchAllCause((cause) => Effect.sync(() => (follower.error = Cause.pretty(cause)))),
            Effect.forkScoped
          )
          jobIds[k] = yield* Deferred.await(accepted).pipe(
            Effect.raceFirst(
              Effect.zipRight(
                Fiber.await(run),
                Effect.fail(
                  new Harness.BenchError({
                    message: `job ${k} was not accepted: ${follower.error ?? "the stream ended first"}`
                  })
                )
              )
            )
          )
        })

      const submitted = yield* Harness.timed(
        Effect.forEach(
          Array.from({ length: jobCount }, (_, k) => k),
          (k) => Effect.catchAll(start(k), (error) => Effect.sync(() => rejected.push(error.message))),
          { concurrency: submitConcurrency, discard: true }
        )
      )
      const accepted = jobIds.filter((id) => id !== undefined)
      yield* Harness.progress(
        `${accepted.length} jobs accepted in ${(submitted[1] / 1000).toFixed(1)} s${rejected.length > 0 ? `; ${rejected.length} not: ${rejected[0]}` : ""}`
      )
      const gateOpened = yield* openGate(server.pid, setup.gate, accepted.length)
      const cpuGate = Sessions.cpuSample(server)
      const runWindow = Sessions.monotonicMicros()
      const startWindow = `${startMicros}–${runWindow}`
      yield* Harness.progress(
        `all ${accepted.length} jobs run ${((gateOpened - startedAt) / 1000).toFixed(1)} s after the first start`
      )

      // Until every job is final (followers see their JobDone; the table says so for the rest).
      const deadline = Harness.now() + (seconds + graceSeconds) * 1000
      for (;;) {
        const counts = yield* Harness.rawQuery<{ status: string; n: string }>(
          admin,
          "SELECT status, count(*)::text AS n FROM jobs WHERE id = ANY($1::uuid[]) GROUP BY status",
          [accepted]
        )
        const byStatus = new Map(counts.rows.map((r) => [r.status, Number(r.n)]))
        const final = ["succeeded", "failed", "timed_out", "canceled", "dead"].reduce(
          (s, status) => s + (byStatus.get(status) ?? 0),
          0
        )
        const pendingFollowers = followers.filter(
          (f) => f.status === "running" && f.error === undefined
        ).length
        if (final >= accepted.length && pendingFollowers === 0) break
        if (Harness.now() > deadline) {
          return yield* new Harness.BenchError({
            message: `jobs still unfinished after ${seconds + graceSeconds} s: ${JSON.stringify(Object.fromEntries(byStatus))}`
          })
        }
        yield* Effect.sleep("2 seconds")
      }
      yield* stop
      const dump = process.env["BENCH_DUMP"]
      if (dump !== undefined && dump !== "") fs.writeFileSync(dump, JSON.stringify({ latency, serverRead }))
      const cpuStart = Sessions.cpuSpent(cpuBefore, cpuGate)
      const cpuRun = Sessions.cpuSpent(cpuGate, Sessions.cpuSample(server))
      yield* Harness.progress(
        `monotonic µs windows (for a CPU profile): starting ${startWindow}, running ${runWindow}–${Sessions.monotonicMicros()}`
      )
      yield* Harness.progress("all jobs done; checking the stored output")

      const statuses = yield* Harness.rawQuery<{ status: string; n: string }>(
        admin,
        "SELECT status, count(*)::text AS n FROM jobs WHERE id = ANY($1::uuid[]) GROUP BY status",
        [accepted]
      )
      const stored = yield* checkLogs(client, accepted)
      const window = Workload.allRunning(stored.checks)
      const followed = followers
        .filter((f) => f.jobId !== "")
        .map((f) => Workload.check(f.jobId, f.chunks.join(""), seconds))
      const notes = [
        `${accepted.length} of ${jobCount} jobs accepted${rejected.length > 0 ? ` (refused or failed: ${rejected.length}, first: ${rejected[0]})` : ""}; started with Jobs.Execute (${followCount} followed on that stream, ${jobCount - followCount} only submitted), ${submitConcurrency} calls at a time, in ${(submitted[1] / 1000).toFixed(1)} s`,
        `job statuses: ${statuses.rows.map((r) => `${r.status} ${r.n}`).join(", ")}`,
        `event backend: ${eventBackend}`,
        `job.log chunks of these jobs: ${Harness.count(stored.rows)} for ${Harness.count(jobCount * seconds)} lines (${stored.otherChunks} not stdout); sequence numbers not 1, 2, 3, …: ${stored.seqProblems}`,
        `followers that failed: ${followers.filter((f) => f.error !== undefined).length}${followers.find((f) => f.error !== undefined)?.error !== undefined ? ` (first: ${followers.find((f) => f.error !== undefined)?.error})` : ""}`
      ]
      const inWindow = samples.filter((s) => window !== undefined && s.at >= window.from && s.at <= window.to)
      return {
        system: "vibes",
        stored: Workload.totals(stored.checks),
        followed: Workload.totals(followed),
        window,
        startedAt,
        rampSeconds: (gateOpened - startedAt) / 1000,
        idleRss,
        windowRss: inWindow.map((s) => s.rss),
        fewestRunning: Math.min(...inWindow.map((s) => s.jobs)),
        shells: shells.filter((s) => window !== undefined && s.at >= window.from && s.at <= window.to),
        latency,
        serverRead,
        storedLatency: { printedAt: [], values: [] },
        cpuStart: { process: cpuStart.server, postgres: cpuStart.postgres, client: cpuStart.client },
        cpuRun: { process: cpuRun.server, postgres: cpuRun.postgres, client: cpuRun.client },
        notes,
        other: {
          idle: idleHost,
          loaded: Math.max(...inWindow.map((s) => s.other)),
          cpu: cpuStart.ptyHost + cpuRun.ptyHost
        }
      } satisfies Outcome
    })
  )

// Baseline ----------------------------------------------------------------------------------

const cpuSpent = (before: Cpu, after: Cpu): Cpu => ({
  process: after.process - before.process,
  postgres: after.postgres - before.postgres,
  client: after.client - before.client
})

const isMessage = (value: unknown): value is { ready?: number; spawned?: boolean; done?: boolean } =>
  typeof value === "object" && value !== null && ("ready" in value || "spawned" in value || "done" in value)

const parseResult = (text: string): BaselineResult => {
  const value: unknown = JSON.parse(text)
  if (typeof value !== "object" || value === null || !("jobIds" in value) || !("readLatency" in value)) {
    throw new Error("the baseline's result file is not a result")
  }
  // The file is written by baseline.ts from a BaselineResult: a documented boundary.
  return value as BaselineResult
}

/** The baseline runner as a child process, killed (with its jobs) with the scope. */
const baselineRunner = (db: Harness.BenchDatabase, setup: Workload.Setup, resultFile: string) =>
  Effect.gen(function* () {
    const exited = yield* Deferred.make<void>()
    const child = yield* Effect.acquireRelease(
      Effect.sync(() =>
        childProcess.spawn(process.execPath, ["--import", "tsx", path.join(here, "baseline.ts")], {
          env: {
            ...process.env,
            BENCH_BASELINE_DATABASE_URL: Redacted.value(db.url),
            BENCH_BASELINE_JOBS: String(jobCount),
            BENCH_BASELINE_LINES: String(seconds),
            BENCH_BASELINE_FIFO: setup.fifo,
            BENCH_BASELINE_GATE: setup.gate,
            BENCH_BASELINE_TABLE: baselineTable,
            BENCH_BASELINE_RESULT: resultFile
          },
          stdio: ["pipe", "pipe", "inherit"]
        })
      ),
      (child) =>
        Effect.gen(function* () {
          if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) return
          const tree = Workload.descendants(child.pid)
          child.kill("SIGTERM")
          const done = yield* Deferred.await(exited).pipe(Effect.timeout("5 seconds"), Effect.option)
          if (done._tag === "None") child.kill("SIGKILL")
          for (const pid of tree) {
            try {
              process.kill(pid, "SIGKILL")
            } catch {
              // gone
            }
          }
        })
    )
    child.once("exit", () => Deferred.unsafeDone(exited, Effect.void))
    const ready = yield* Deferred.make<number, Harness.BenchError>()
    const spawned = yield* Deferred.make<void, Harness.BenchError>()
    const done = yield* Deferred.make<void, Harness.BenchError>()
    readline.createInterface({ input: child.stdout }).on("line", (line) => {
      try {
        const message: unknown = JSON.parse(line)
        if (!isMessage(message)) return
        if (message.ready !== undefined) Deferred.unsafeDone(ready, Effect.succeed(message.ready))
        if (message.spawned === true) Deferred.unsafeDone(spawned, Effect.void)
        if (message.done === true) Deferred.unsafeDone(done, Effect.void)
      } catch {
        // not a message
      }
    })
    child.once("exit", (code) => {
      const failure = Effect.fail(new Harness.BenchError({ message: `the baseline exited (${code})` }))
      Deferred.unsafeDone(ready, failure)
      Deferred.unsafeDone(spawned, failure)
      Deferred.unsafeDone(done, failure)
    })
    const pid = yield* Deferred.await(ready)
    return {
      pid,
      go: Effect.sync(() => child.stdin.write("go\n")),
      spawned: Deferred.await(spawned),
      done: Deferred.await(done)
    }
  })

const baseline = (db: Harness.BenchDatabase, admin: pg.Client, fifo: string, dir: string) =>
  Effect.scoped(
    Effect.gen(function* () {
      yield* Harness.rawQuery(
        admin,
        `CREATE TABLE ${baselineTable} (
           job_id UUID NOT NULL, seq BIGINT NOT NULL, ts TIMESTAMPTZ NOT NULL, stream TEXT NOT NULL,
           chunk TEXT NOT NULL, PRIMARY KEY (job_id, seq))`
      )
      const resultFile = path.join(dir, "baseline-result.json")
      const setup = { fifo, gate: path.join(dir, "gate-baseline") }
      if (!gated) fs.writeFileSync(setup.gate, "")
      const runner = yield* baselineRunner(db, setup, resultFile)
      const [idleRss = Number.NaN] = yield* quietRss([runner.pid])
      yield* Harness.progress(`baseline (pid ${runner.pid}) idle: ${(idleRss / 1024).toFixed(1)} MiB RSS`)
      const { samples, shells, stop } = yield* sampler(runner.pid, () => undefined)
      const database = new URL(Redacted.value(db.url)).pathname.slice(1)
      const cpuNow = (): Cpu => ({
        process: Sessions.cpuMillis(runner.pid) / 1000,
        postgres: Sessions.postgresCpuMillis(database) / 1000,
        client: Sessions.ownCpuMillis() / 1000
      })
      const cpuBefore = cpuNow()
      const startedAt = Workload.wallMillis()
      yield* runner.go
      yield* runner.spawned
      const gateOpened = yield* openGate(runner.pid, setup.gate, jobCount)
      const cpuGate = cpuNow()
      yield* runner.done.pipe(
        Effect.timeoutFail({
          duration: `${seconds + graceSeconds} seconds`,
          onTimeout: () => new Harness.BenchError({ message: "the baseline did not finish" })
        })
      )
      yield* stop
      const cpuEnd = cpuNow()
      const result = parseResult(fs.readFileSync(resultFile, "utf8"))
      yield* Harness.progress("baseline done; checking the stored output")
      const stored = yield* checkStored(admin, baselineTable, result.jobIds)
      const window = Workload.allRunning(stored.checks)
      const inWindow = samples.filter((s) => window !== undefined && s.at >= window.from && s.at <= window.to)
      return {
        system: "baseline",
        stored: Workload.totals(stored.checks),
        followed: undefined,
        window,
        startedAt,
        rampSeconds: (gateOpened - startedAt) / 1000,
        idleRss,
        windowRss: inWindow.map((s) => s.rss),
        fewestRunning: Math.min(...inWindow.map((s) => s.jobs)),
        shells: shells.filter((s) => window !== undefined && s.at >= window.from && s.at <= window.to),
        latency: { printedAt: [...result.printedAt], values: [...result.readLatency] },
        serverRead: { printedAt: [...result.printedAt], values: [...result.readLatency] },
        storedLatency: { printedAt: [...result.printedAt], values: [...result.storedLatency] },
        cpuStart: cpuSpent(cpuBefore, cpuGate),
        cpuRun: cpuSpent(cpuGate, cpuEnd),
        notes: [
          `${jobCount} jobs spawned in ${((result.spawnEnd - result.spawnStart) / 1000).toFixed(1)} s`,
          `${Harness.count(result.rows)} rows in ${Harness.count(result.inserts)} INSERTs (${(result.rows / Math.max(1, result.inserts)).toFixed(1)} rows each, ${(result.insertMillis / Math.max(1, result.inserts)).toFixed(2)} ms each); sequence numbers not 1, 2, 3, …: ${stored.seqProblems}; non-zero exits: ${result.nonZeroExits}`
        ],
        other: undefined
      } satisfies Outcome
    })
  )

// Report ------------------------------------------------------------------------------------

const kib = (k: number) => (Number.isFinite(k) ? Harness.count(k) : "n/a")
const mib = (k: number) => (Number.isFinite(k) ? (k / 1024).toFixed(1) : "n/a")

/** Memory of one job (KiB): mean RSS while all ran, minus idle, over the jobs. */
const perJob = (o: Outcome) => (meanOf(o.windowRss) - o.idleRss) / jobCount
const perJobPeak = (o: Outcome) => (Math.max(...o.windowRss) - o.idleRss) / jobCount

const lossText = (t: Workload.Totals) =>
  `lost ${Harness.count(t.lostBytes)} / duplicated ${Harness.count(t.duplicatedBytes)} / out of order ${Harness.count(t.outOfOrderBytes)} / corrupt ${Harness.count(t.corruptBytes)} B of ${Harness.count(t.expectedBytes)}`

const lossless = (t: Workload.Totals) =>
  t.lostBytes + t.duplicatedBytes + t.outOfOrderBytes + t.corruptBytes === 0 && t.bytes === t.expectedBytes

const latencyRow = (name: string, s: Spread) =>
  Harness.row([
    name,
    Harness.count(s.count),
    Harness.millis(s.p50),
    Harness.millis(s.p95),
    Harness.millis(s.p99),
    Harness.millis(s.max)
  ])

const report = (outcomes: ReadonlyArray<Outcome>) =>
  Effect.gen(function* () {
    const v = outcomes.find((o) => o.system === "vibes")
    const b = outcomes.find((o) => o.system === "baseline")
    const vAll = v === undefined ? undefined : spread(v.latency.values)
    const bAll = b === undefined ? undefined : spread(b.latency.values)
    const bStored = b === undefined ? undefined : spread(b.storedLatency.values)

    yield* Harness.print("Targets:\n")
    yield* Harness.print(Harness.header(["target", "vibes", "baseline", "vibes / baseline", "verdict"]))
    if (v !== undefined) {
      yield* Harness.print(
        Harness.row([
          "no byte lost, duplicated or reordered (the stored log, and each follower)",
          `stored: ${lossText(v.stored)}; followers: ${v.followed === undefined ? "n/a" : lossText(v.followed)}`,
          b === undefined ? "" : `stored: ${lossText(b.stored)}`,
          "",
          lossless(v.stored) && (v.followed === undefined || lossless(v.followed)) ? "met" : "**missed**"
        ])
      )
      const mem = perJob(v)
      yield* Harness.print(
        Harness.row([
          "server memory per running job ≤ 1 MB",
          `${kib(mem)} KiB (peak ${kib(perJobPeak(v))})`,
          b === undefined ? "" : `${kib(perJob(b))} KiB (peak ${kib(perJobPeak(b))})`,
          b === undefined ? "" : Harness.ratio(mem, perJob(b)),
          Number.isFinite(mem) && mem * 1024 <= 1_000_000 ? "met" : "**missed**"
        ])
      )
      if (vAll !== undefined) {
        yield* Harness.print(
          Harness.row([
            "output to subscriber p99 ≤ 100 ms",
            `p99 ${Harness.millis(vAll.p99)} ms (p50 ${Harness.millis(vAll.p50)})`,
            bAll === undefined || bStored === undefined
              ? ""
              : `to pipe read p99 ${Harness.millis(bAll.p99)} ms (p50 ${Harness.millis(bAll.p50)}); to INSERT committed p99 ${Harness.millis(bStored.p99)} ms (p50 ${Harness.millis(bStored.p50)})`,
            bAll === undefined || bStored === undefined
              ? ""
              : `${Harness.ratio(vAll.p99, bAll.p99)} vs pipe read, ${Harness.ratio(vAll.p99, bStored.p99)} vs committed`,
            vAll.p99 <= 100 ? "met" : "**missed**"
          ])
        )
      }
    }
    yield* Harness.print("")

    yield* Harness.print(
      "Latency from print to reader, ms (vibes: a follower over the WebSocket; baseline: its pipe read):\n"
    )
    yield* Harness.print(Harness.header(["system: lines", "lines", "p50", "p95", "p99", "max"]))
    for (const o of outcomes) {
      yield* Harness.print(latencyRow(`${o.system}: all`, spread(o.latency.values)))
      yield* Harness.print(latencyRow(`${o.system}: while all ran`, spread(within(o.latency, o.window))))
      const index = o.latency.index
      if (index !== undefined) {
        const first = o.latency.values.filter((_, i) => index[i] === 1)
        const rest = o.latency.values.filter((_, i) => index[i] !== 1)
        yield* Harness.print(latencyRow(`${o.system}: first line of each job`, spread(first)))
        yield* Harness.print(latencyRow(`${o.system}: the other lines`, spread(rest)))
      }
      if (o.system === "vibes") {
        yield* Harness.print(
          latencyRow("vibes: print to server read (JobLog ts, 1 ms steps)", spread(o.serverRead.values))
        )
      } else {
        yield* Harness.print(
          latencyRow("baseline: print to INSERT committed", spread(o.storedLatency.values))
        )
        yield* Harness.print(
          latencyRow(
            "baseline: print to INSERT committed, while all ran",
            spread(within(o.storedLatency, o.window))
          )
        )
      }
    }
    yield* Harness.print("")

    yield* Harness.print("Memory and CPU:\n")
    yield* Harness.print(
      Harness.header([
        "system",
        "s to start all jobs",
        "s all ran (fewest jobs seen running)",
        "RSS idle MiB",
        "RSS while all ran, mean / max MiB (samples)",
        "per job KiB, mean / peak",
        "job processes: count, total RSS MiB",
        "CPU s while starting: server or runner / Postgres / bench",
        "CPU s while running: server or runner / Postgres / bench",
        "server or runner CPU µs a line while running"
      ])
    )
    const cpuText = (c: Cpu) => [c.process, c.postgres, c.client].map((x) => x.toFixed(1)).join(" / ")
    for (const o of outcomes) {
      const shell = o.shells[Math.floor(o.shells.length / 2)]
      yield* Harness.print(
        Harness.row([
          o.system,
          o.rampSeconds.toFixed(1),
          o.window === undefined
            ? "never"
            : `${((o.window.to - o.window.from) / 1000).toFixed(0)} (${o.fewestRunning})`,
          mib(o.idleRss),
          `${mib(meanOf(o.windowRss))} / ${mib(Math.max(...o.windowRss))} (${o.windowRss.length})`,
          `${kib(perJob(o))} / ${kib(perJobPeak(o))}`,
          shell === undefined ? "n/a" : `${shell.count}, ${mib(shell.rss)}`,
          cpuText(o.cpuStart),
          cpuText(o.cpuRun),
          Harness.count((o.cpuRun.process * 1e6) / (jobCount * seconds))
        ])
      )
    }
    yield* Harness.print("")
    for (const o of outcomes) {
      for (const note of o.notes) yield* Harness.print(`- ${o.system}: ${note}`)
      if (o.other !== undefined) {
        yield* Harness.print(
          `- ${o.system}: PTY host (not used by \`stream\` jobs) RSS idle ${mib(o.other.idle)} MiB, max while all ran ${mib(o.other.loaded)} MiB, CPU ${o.other.cpu.toFixed(1)} s`
        )
      }
    }
  })

const main = Effect.gen(function* () {
  const runLines = Sessions.runLines()
  const db = yield* Harness.database
  const machine = yield* Harness.machine(db)
  const admin = yield* Harness.rawClient(db)
  const dir = yield* Sessions.scratch("vibes-bench-jobs-")
  // Whatever happens, no job outlives the benchmark (the server and the baseline stop theirs, normally).
  yield* Effect.addFinalizer(() =>
    Effect.flatMap(
      Effect.sync(() => Workload.killLeftovers(dir)),
      (killed) => (killed > 0 ? Harness.progress(`killed ${killed} job processes left behind`) : Effect.void)
    )
  )
  // Jobs may run as another user (the sandbox's run-as user when the server is root): they read
  // the FIFO and look for the gates here.
  yield* Effect.sync(() => fs.chmodSync(dir, 0o755))
  const fifo = path.join(dir, "pause")
  yield* Effect.sync(() => Workload.makeFifo(fifo))
  yield* Harness.progress(`${jobCount} jobs × ${seconds} s (${followCount} followed) on ${db.where}`)

  const outcomes: Array<Outcome> = []
  if (systems.includes("vibes")) outcomes.push(yield* vibes(db, admin, fifo, dir))
  if (systems.includes("baseline")) outcomes.push(yield* baseline(db, admin, fifo, dir))

  yield* Harness.print(`### Jobs under load: ${jobCount} jobs × ${seconds} s, 1 kB/s each\n`)
  yield* Harness.print(Harness.machineMarkdown(machine))
  yield* Harness.print(runLines)
  yield* Harness.print(
    `- Command: \`${process.argv
      .slice(1)
      .map((a) => path.relative(process.cwd(), a) || a)
      .join(
        " "
      )}\` with BENCH_JOBS=${jobCount} BENCH_SECONDS=${seconds} BENCH_FOLLOW=${followCount} BENCH_GATE=${gated ? 1 : 0} BENCH_SUBMIT_CONCURRENCY=${submitConcurrency} BENCH_EVENT_BACKEND=${eventBackend}`
  )
  yield* Harness.print("")
  yield* report(outcomes)
  yield* Harness.print("")
})

Harness.run(main)
