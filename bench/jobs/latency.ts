/**
 * Submit-to-first-output latency of a trivial job, against starting the same process directly,
 * in the same run.
 *
 * The job is `/bin/echo <marker>`. Measured, one call after another (`BENCH_LATENCY_RUNS` of each,
 * default 200, the systems taken in turn so that drift on the machine hits them alike), and again
 * with `BENCH_LATENCY_CONCURRENCY` (default 16) calls at a time:
 *
 * - **vibes stream** / **vibes terminal**: `Jobs.Execute` on a typed client over the WebSocket of
 *   a `vibes serve` child process (compiled build, fresh database, 127.0.0.1), from the call to the
 *   first `JobLog` holding the marker; also to `JobAccepted` (the job is stored and queued) and to
 *   `JobDone` (the exit is stored).
 * - **spawn**: `child_process.spawn` in this process, from the call to the first stdout chunk;
 * - **spawn after INSERT**: a committed `INSERT` of a job row into a plain table, then the spawn:
 *   the least a runner that keeps a durable record of the job must do first;
 * - **node-pty**: `node-pty` spawn in this process, from the call to the first chunk (the floor of
 *   the `terminal` strategy).
 *
 * Env: BENCH_LATENCY_RUNS, BENCH_LATENCY_CONCURRENCY, BENCH_SYSTEMS (all five by default:
 * stream,terminal,spawn,insert,pty), DATABASE_URL.
 */
import * as childProcess from "node:child_process"
import * as crypto from "node:crypto"
import pg from "pg"
import { Deferred, Effect, Redacted, Stream } from "effect"
import type * as Client from "../../rpc/Client.js"
import { JobSpec, type JobStrategy } from "../../rpc/Jobs.js"
import * as Harness from "../events/harness.js"
import * as Sessions from "../sessions/harness.js"

const runs = Harness.envInt("BENCH_LATENCY_RUNS", 200)
const concurrency = Harness.envInt("BENCH_LATENCY_CONCURRENCY", 16)
const systems = Harness.envList("BENCH_SYSTEMS", ["stream", "terminal", "spawn", "insert", "pty"])
const warmup = 10
const table = "baseline_jobs"

/** One measured call, ms from its start. */
interface Sample {
  readonly firstOutput: number
  /** vibes: `JobAccepted`; spawn after INSERT: the INSERT committed. */
  readonly accepted?: number
  /** vibes: `JobDone`; baselines: the process closed. */
  readonly done: number
}

const timeout = (what: string) =>
  Effect.timeoutFail({
    duration: "60 seconds",
    onTimeout: () => new Harness.BenchError({ message: `${what} took more than 60 s` })
  })

/** `Jobs.Execute` of `echo <marker>` with `strategy`. */
const viaVibes = (client: Client.Client, strategy: JobStrategy) =>
  Effect.gen(function* () {
    const marker = crypto.randomUUID()
    const start = Harness.now()
    let accepted = Number.NaN
    let firstOutput = Number.NaN
    let done = Number.NaN
    let status = ""
    yield* Sessions.orBench(
      client.Jobs.Execute(JobSpec.make({ command: "/bin/echo", args: [marker], strategy })).pipe(
        Stream.runForEach((output) =>
          Effect.sync(() => {
            const at = Harness.now() - start
            if (output._tag === "JobAccepted") accepted = at
            if (output._tag === "JobLog" && Number.isNaN(firstOutput) && output.chunk.includes(marker)) {
              firstOutput = at
            }
            if (output._tag === "JobDone") {
              done = at
              status = output.status
            }
          })
        )
      )
    ).pipe(timeout(`a ${strategy} job`))
    if (status !== "succeeded" || Number.isNaN(firstOutput)) {
      return yield* new Harness.BenchError({
        message: `a ${strategy} job ended ${status || "without JobDone"}${Number.isNaN(firstOutput) ? " without its output" : ""}`
      })
    }
    return { firstOutput, accepted, done } satisfies Sample
  })

/** `child_process.spawn` of `echo <marker>`. */
const viaSpawn = (before?: () => Promise<void>) =>
  Effect.gen(function* () {
    const marker = crypto.randomUUID()
    const first = yield* Deferred.make<number>()
    const closed = yield* Deferred.make<number>()
    const start = Harness.now()
    let accepted: number | undefined
    if (before !== undefined) {
      yield* Effect.tryPromise({
        try: before,
        catch: (cause) => new Harness.BenchError({ message: `the INSERT failed: ${String(cause)}` })
      })
      accepted = Harness.now() - start
    }
    const child = childProcess.spawn("/bin/echo", [marker], { stdio: ["ignore", "pipe", "pipe"] })
    let text = ""
    child.stdout.setEncoding("utf8")
    child.stdout.on("data", (chunk: string) => {
      text += chunk
      if (text.includes(marker)) Deferred.unsafeDone(first, Effect.succeed(Harness.now() - start))
    })
    child.once("close", () => Deferred.unsafeDone(closed, Effect.succeed(Harness.now() - start)))
    const firstOutput = yield* Deferred.await(first).pipe(timeout("a spawned echo"))
    const done = yield* Deferred.await(closed).pipe(timeout("a spawned echo"))
    return accepted === undefined ? { firstOutput, done } : { firstOutput, accepted, done }
  })

/** `node-pty` spawn of `echo <marker>`. */
const viaPty = Effect.scoped(
  Effect.gen(function* () {
    const marker = crypto.randomUUID()
    const first = yield* Deferred.make<number>()
    const closed = yield* Deferred.make<number>()
    const start = Harness.now()
    const terminal = yield* Sessions.rawPty("/bin/echo", [marker], { cols: 80, rows: 24 })
    let text = ""
    Sessions.onBytes(terminal, (chunk) => {
      text += chunk.toString("utf8")
      if (text.includes(marker)) Deferred.unsafeDone(first, Effect.succeed(Harness.now() - start))
    })
    terminal.onExit(() => Deferred.unsafeDone(closed, Effect.succeed(Harness.now() - start)))
    const firstOutput = yield* Deferred.await(first).pipe(timeout("a node-pty echo"))
    const done = yield* Deferred.await(closed).pipe(timeout("a node-pty echo"))
    return { firstOutput, done } satisfies Sample
  })
)

/** The committed INSERT of a job row a durable runner makes before it starts the process. */
const insertJob = (db: pg.Pool) => () =>
  db
    .query(`INSERT INTO ${table} (id, command, status, spec) VALUES ($1, $2, 'queued', $3)`, [
      crypto.randomUUID(),
      "/bin/echo",
      JSON.stringify({ command: "/bin/echo", strategy: "stream" })
    ])
    .then(() => undefined)

const names: Record<string, string> = {
  stream: "vibes `stream` (Jobs.Execute)",
  terminal: "vibes `terminal` (Jobs.Execute)",
  spawn: "spawn (baseline)",
  insert: "spawn after INSERT (baseline)",
  pty: "node-pty spawn (baseline)"
}

interface Spread {
  readonly p50: number
  readonly p99: number
  readonly max: number
}

const spreadOf = (values: ReadonlyArray<number>): Spread => ({
  p50: Harness.percentile(values, 50),
  p99: Harness.percentile(values, 99),
  max: Math.max(...values)
})

const main = Effect.gen(function* () {
  const runLines = Sessions.runLines()
  const db = yield* Harness.database
  const machine = yield* Harness.machine(db)
  const admin = yield* Harness.rawClient(db)
  yield* Harness.rawQuery(
    admin,
    `CREATE TABLE ${table} (id UUID PRIMARY KEY, command TEXT NOT NULL, status TEXT NOT NULL,
       spec JSONB NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT NOW())`
  )
  // A connection per concurrent call, as a runner with a pool would have.
  const pool = yield* Effect.acquireRelease(
    Effect.sync(() => new pg.Pool({ connectionString: Redacted.value(db.url), max: concurrency })),
    (p) => Effect.promise(() => p.end())
  )
  const cpuProfDir = process.env["BENCH_CPU_PROF"]
  const server = yield* Sessions.serve(db, {
    env: { VIBES_HOST: "127.0.0.1" },
    ...(cpuProfDir !== undefined && cpuProfDir !== "" ? { cpuProfDir } : {})
  })
  yield* Harness.progress(`vibes serve (pid ${server.pid}) listens on ${server.url}`)
  const client = yield* Sessions.connect(server)

  const measure: Record<string, Effect.Effect<Sample, Harness.BenchError>> = {
    stream: viaVibes(client, "stream"),
    terminal: viaVibes(client, "terminal"),
    spawn: viaSpawn(),
    insert: viaSpawn(insertJob(pool)),
    pty: viaPty
  }
  const chosen = systems.filter((s) => measure[s] !== undefined)

  yield* Harness.progress(`warm-up: ${warmup} calls of each`)
  for (const system of chosen) yield* Effect.repeatN(measure[system] ?? Effect.void, warmup - 1)

  const results = new Map<string, Map<number, Array<Sample>>>()
  const record = (system: string, level: number, sample: Sample) => {
    const byLevel = results.get(system) ?? new Map<number, Array<Sample>>()
    const list = byLevel.get(level) ?? []
    list.push(sample)
    byLevel.set(level, list)
    results.set(system, byLevel)
  }
  const levels = [...new Set([1, concurrency])]
  for (const level of levels) {
    yield* Harness.progress(`${runs} calls of each, ${level} at a time`)
    // Rounds of `level` calls of one system, the systems in turn.
    for (let done = 0; done < runs; done += level) {
      const batch = Math.min(level, runs - done)
      for (const system of chosen) {
        const samples = yield* Effect.all(
          Array.from({ length: batch }, () => measure[system] ?? viaPty),
          {
            concurrency: batch
          }
        )
        for (const sample of samples) record(system, level, sample)
      }
    }
  }

  yield* Harness.print(`### Jobs: submit to first output of \`/bin/echo\`\n`)
  yield* Harness.print(Harness.machineMarkdown(machine))
  yield* Harness.print(runLines)
  yield* Harness.print(
    `- Command: \`bench/jobs/latency.ts\` with BENCH_LATENCY_RUNS=${runs} BENCH_LATENCY_CONCURRENCY=${concurrency}`
  )
  yield* Harness.print("")
  yield* Harness.print(
    Harness.header([
      "system",
      "at a time",
      "first output p50 ms",
      "p99 ms",
      "max ms",
      "p50 / spawn p50",
      "p99 / spawn p99",
      "accepted p50 / p99 ms",
      "done p50 / p99 ms"
    ])
  )
  for (const level of levels) {
    const spawn = results.get("spawn")?.get(level)
    const spawnSpread = spawn === undefined ? undefined : spreadOf(spawn.map((s) => s.firstOutput))
    for (const system of chosen) {
      const samples = results.get(system)?.get(level) ?? []
      const first = spreadOf(samples.map((s) => s.firstOutput))
      const accepted = samples.flatMap((s) => (s.accepted === undefined ? [] : [s.accepted]))
      const done = spreadOf(samples.map((s) => s.done))
      yield* Harness.print(
        Harness.row([
          names[system] ?? system,
          level,
          Harness.millis(first.p50),
          Harness.millis(first.p99),
          Harness.millis(first.max),
          spawnSpread === undefined ? "" : Harness.ratio(first.p50, spawnSpread.p50),
          spawnSpread === undefined ? "" : Harness.ratio(first.p99, spawnSpread.p99),
          accepted.length === 0
            ? ""
            : `${Harness.millis(Harness.percentile(accepted, 50))} / ${Harness.millis(Harness.percentile(accepted, 99))}`,
          `${Harness.millis(done.p50)} / ${Harness.millis(done.p99)}`
        ])
      )
    }
  }
  yield* Harness.print("")
})

Harness.run(main)
