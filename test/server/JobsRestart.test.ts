import { describe, expect, it } from "@effect/vitest"
import * as fs from "node:fs"
import * as path from "node:path"
import {
  Chunk,
  Context,
  DateTime,
  Deferred,
  Effect,
  Exit,
  Fiber,
  Layer,
  Option,
  Redacted,
  Schedule,
  Scope,
  Stream
} from "effect"
import pg from "pg"
import * as Client from "../../rpc/Client.js"
import { EventFilter, type StoredEvent } from "../../rpc/Events.js"
import { JobSpec, type JobOutput } from "../../rpc/Jobs.js"
import { clientLayer, eventually, stopPtyHostAtEnd } from "../support/Attach.js"
import * as Processes from "../support/Processes.js"
import * as TestDatabase from "../support/TestDatabase.js"
import { tempDir, writableTempDir } from "../support/TempDir.js"
import * as Vibes from "../support/VibesProcess.js"

const stdout = (outputs: ReadonlyArray<JobOutput>) =>
  outputs.flatMap((o) => (o._tag === "JobLog" && o.stream === "stdout" ? [o.chunk] : [])).join("")

/** A node on `dataDir` ending with `scope`, and its client, ending with `clientScope` (or `scope`). */
const node = (
  dataDir: string,
  env: NodeJS.ProcessEnv,
  scope: Scope.Scope,
  clientScope: Scope.Scope = scope
) =>
  Effect.gen(function* () {
    const serving = yield* Vibes.serve(dataDir, env).pipe(Scope.extend(scope))
    const token = fs.readFileSync(path.join(dataDir, "admin-token"), "utf8").trim()
    const rpc = yield* Effect.map(
      Layer.build(clientLayer(serving.url, token)).pipe(Scope.extend(clientScope)),
      Context.get(Client.VibesClient)
    )
    return { serving, rpc }
  })

const setup = (prefix: string) =>
  Effect.gen(function* () {
    const dataDir = yield* tempDir(`vibes-${prefix}-`)
    yield* stopPtyHostAtEnd(dataDir)
    const database = yield* TestDatabase.freshDatabase(`vibes_${prefix}`)
    return {
      dataDir,
      databaseUrl: Redacted.value(database.url),
      env: Vibes.childEnv({ DATABASE_URL: Redacted.value(database.url) })
    }
  })

/** Every event in the log at `url`, in offset order. */
const allEvents = (url: string) =>
  Effect.promise(async () => {
    const client = new pg.Client({ connectionString: url })
    await client.connect()
    try {
      const result = await client.query<{ offset: string; type: string; job_id: string | null }>(
        `SELECT "offset", type, job_id FROM vibes_events ORDER BY "offset"`
      )
      return result.rows.map((row) => ({ offset: Number(row.offset), type: row.type, jobId: row.job_id }))
    } finally {
      await client.end()
    }
  })

describe("jobs across server restarts", () => {
  it.scopedLive(
    "kill -9 mid-job: after a restart the job is failed, its process tree is gone and its logs up to the crash are intact",
    () =>
      Effect.gen(function* () {
        const { dataDir, env } = yield* setup("jobcrash")
        const firstScope = yield* Scope.make()
        const first = yield* node(dataDir, env, firstScope)
        const job = yield* first.rpc.Jobs.Submit(
          JobSpec.make({
            command: "i=0; while true; do i=$((i+1)); echo line-$i; sleep 0.02; done",
            shell: true
          })
        )
        // Everything the client saw before the crash.
        let seen = ""
        yield* first.rpc.Jobs.Logs({ jobId: job.id, follow: true }).pipe(
          Stream.tap((o) =>
            Effect.sync(() => (seen += o._tag === "JobLog" && o.stream === "stdout" ? o.chunk : ""))
          ),
          Stream.takeUntil(() => seen.includes("line-20\n")),
          Stream.runDrain
        )
        first.serving.child.kill("SIGKILL")
        yield* Deferred.await(first.serving.exited)
        yield* Scope.close(firstScope, Exit.void)
        // The orphaned shell is still printing into a dead pipe (or dying of SIGPIPE).

        const second = yield* node(dataDir, env, yield* Effect.scope)
        const outputs = Chunk.toReadonlyArray(
          yield* Stream.runCollect(second.rpc.Jobs.Logs({ jobId: job.id, follow: true }))
        )
        const info = yield* second.rpc.Jobs.Get({ jobId: job.id })
        expect(info.status).toBe("failed")
        expect(info.error).toContain("stopped during the attempt")
        const stored = stdout(outputs)
        expect(stored.startsWith(seen)).toBe(true)
        const numbers = [...stored.matchAll(/line-(\d+)\n/g)].map((m) => Number(m[1]))
        expect(numbers).toEqual(Array.from({ length: numbers.length }, (_, i) => i + 1))
        expect(Processes.ofJob(job.id)).toEqual([])
      }),
    120_000
  )

  it.scopedLive(
    "a queued job survives kill -9 (its message is persisted) and a graceful stop hands a running job back to the queue",
    () =>
      Effect.gen(function* () {
        const { dataDir, env } = yield* setup("jobqueue")
        // Made by the job, which may run as the sandbox's user (the data dir is the server's alone).
        const marker = path.join(yield* writableTempDir("vibes-jobqueue-marker-"), "second-run")
        const firstScope = yield* Scope.make()
        const clientScope = yield* Scope.make()
        const first = yield* node(dataDir, env, firstScope, clientScope)
        const delayed = yield* first.rpc.Jobs.Submit(
          JobSpec.make({
            command: "echo delayed ran",
            shell: true,
            runAt: DateTime.unsafeMake(Date.now() + 2000)
          })
        )
        // Runs once until stopped; the next run finds the marker and finishes.
        const handedBack = yield* first.rpc.Jobs.Submit(
          JobSpec.make({
            command: `echo run $VIBES_JOB_ATTEMPT; if [ -e ${marker} ]; then echo finished; exit 0; fi; touch ${marker}; exec sleep 1005`,
            shell: true
          })
        )
        let seen = ""
        yield* first.rpc.Jobs.Logs({ jobId: handedBack.id, follow: true }).pipe(
          Stream.tap((o) =>
            Effect.sync(() => (seen += o._tag === "JobLog" && o.stream === "stdout" ? o.chunk : ""))
          ),
          Stream.takeUntil(() => seen.includes("run 1\n")),
          Stream.runDrain
        )
        // Disconnected first: the node's stop waits for open connections (up to its shutdown timeout).
        yield* Scope.close(clientScope, Exit.void)
        first.serving.child.kill("SIGTERM")
        const stopped = yield* Deferred.await(first.serving.exited)
        expect(stopped.code).toBe(0)
        yield* Scope.close(firstScope, Exit.void)
        expect(Processes.ofJob(handedBack.id)).toEqual([])

        const second = yield* node(dataDir, env, yield* Effect.scope)
        const outputs = Chunk.toReadonlyArray(
          yield* Stream.runCollect(second.rpc.Jobs.Logs({ jobId: handedBack.id, follow: true }))
        )

        const info = yield* second.rpc.Jobs.Get({ jobId: handedBack.id })
        expect(info.status).toBe("succeeded")
        expect(info.attempts).toBe(1)
        expect(stdout(outputs)).toBe("run 1\nrun 1\nfinished\n")
        const system = outputs.flatMap((o) => (o._tag === "JobLog" && o.stream === "system" ? [o.chunk] : []))
        expect(system.join("")).toContain("goes back to the queue")

        yield* second.rpc.Jobs.Logs({ jobId: delayed.id, follow: true }).pipe(Stream.runDrain)
        const late = yield* second.rpc.Jobs.Get({ jobId: delayed.id })
        expect(late.status).toBe("succeeded")
        const started = late.startedAt
        const runAt = delayed.spec.runAt
        expect(started !== null && runAt !== undefined).toBe(true)
        if (started === null || runAt === undefined) return
        expect(DateTime.toEpochMillis(started)).toBeGreaterThanOrEqual(DateTime.toEpochMillis(runAt))
      }),
    120_000
  )

  it.scopedLive(
    "a graceful stop stops running jobs before it writes system.stopped, the node's last event, even with a follower connected",
    () =>
      Effect.gen(function* () {
        const { dataDir, env, databaseUrl } = yield* setup("jobstop")
        const scope = yield* Scope.make()
        const first = yield* node(dataDir, env, scope)
        // A follower stays connected through the stop (the node waits for open connections).
        const followed: Array<StoredEvent> = []
        const follower = yield* first.rpc.Events.Subscribe({
          from: { _tag: "Latest" },
          filter: EventFilter.make({ types: ["system.*", "client.*", "job.**"] })
        }).pipe(
          Stream.runForEach((event) => Effect.sync(() => followed.push(event))),
          Effect.either,
          Effect.fork
        )
        // Until it sees a status call it made, the follower may not be subscribed yet.
        yield* first.rpc.System.Info().pipe(
          Effect.repeat({ until: () => followed.length > 0, schedule: Schedule.spaced("100 millis") })
        )
        const job = yield* first.rpc.Jobs.Submit(
          JobSpec.make({
            command: "i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.05; done",
            shell: true
          })
        )
        yield* eventually(
          Effect.sync(() =>
            followed.filter((event) => event.type === "job.log").length >= 5
              ? Option.some(true)
              : Option.none()
          ),
          "the job's output"
        )
        first.serving.child.kill("SIGTERM")
        expect((yield* Deferred.await(first.serving.exited)).code).toBe(0)
        expect(Processes.ofJob(job.id)).toEqual([])
        yield* Fiber.join(follower)
        expect(followed.map((event) => event.type).at(-1)).toBe("system.stopped")
        yield* Scope.close(scope, Exit.void)

        const events = yield* allEvents(databaseUrl)
        const stopped = events.findIndex((event) => event.type === "system.stopped")
        expect(stopped).toBeGreaterThan(0)
        expect(events.slice(stopped + 1)).toEqual([])
        const ofJob = events.filter((event) => event.jobId === job.id)
        expect(ofJob.length).toBeGreaterThan(5)
        expect(Math.max(...ofJob.map((event) => event.offset))).toBeLessThan(events[stopped]?.offset ?? 0)
      }),
    120_000
  )
})
