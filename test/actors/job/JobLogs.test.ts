import { expect, layer } from "@effect/vitest"
import { Chunk, Deferred, Duration, Effect, Fiber, Layer, Option, Stream } from "effect"
import { SqlClient } from "@effect/sql/SqlClient"
import { EventFilter, NewEvent } from "../../../rpc/Events.js"
import { JobDone, JobSpec } from "../../../rpc/Jobs.js"
import * as JobLogs from "../../../actors/job/JobLogs.js"
import * as JobStore from "../../../actors/job/JobStore.js"
import { EventLog, RetentionPolicy, uuidv7 } from "../../../infra/eventlog/EventLog.js"
import * as PgEventLog from "../../../infra/eventlog/PgEventLog.js"
import * as Migrations from "../../../infra/db/Migrations.js"
import * as TestDatabase from "../../support/TestDatabase.js"

const Live = JobLogs.layer("test-node").pipe(
  Layer.provideMerge(JobStore.layer),
  Layer.provideMerge(PgEventLog.layer({ nodeId: "test-node" })),
  Layer.provideMerge(Layer.effectDiscard(Migrations.run)),
  Layer.provideMerge(TestDatabase.layerSql)
)

const newJob = Effect.gen(function* () {
  const store = yield* JobStore.JobStore
  const id = uuidv7()
  yield* store.insert(id, JobSpec.make({ command: "true" }), new Date())
  return id
})

const entry = (jobId: string, seq: number, chunk: string): JobLogs.Entry => ({
  jobId,
  seq,
  stream: "stdout",
  chunk,
  ts: new Date()
})

layer(Live, { timeout: 60_000, excludeTestServices: true })("job output writer", (it) => {
  it.effect("stores chunks in order, once: as job.log events, which the job log reads", () =>
    Effect.gen(function* () {
      const logs = yield* JobLogs.JobLogs
      const log = yield* EventLog
      const jobId = yield* newJob
      for (let seq = 1; seq <= 100; seq++) yield* logs.write(entry(jobId, seq, `line ${seq}\n`))
      yield* logs.flush
      expect(yield* logs.lastSeq(jobId)).toBe(100)
      const stored = Chunk.toReadonlyArray(yield* Stream.runCollect(logs.stream(jobId, 0, false)))
      expect(stored.map((o) => (o._tag === "JobLog" ? o.chunk : "")).join("")).toBe(
        Array.from({ length: 100 }, (_, i) => `line ${i + 1}\n`).join("")
      )
      const events = yield* log.read(1, EventFilter.make({ jobId, types: ["job.log"] }), 1000)
      expect(events.length).toBe(100)
      expect(events[0]?.data).toMatchObject({ jobId, seq: 1, stream: "stdout", chunk: "line 1\n" })
      // No second copy: the job_events table is gone.
      const sql = yield* SqlClient
      const tables = yield* sql<{
        n: number
      }>`SELECT count(*)::int AS n FROM pg_tables WHERE tablename = 'job_events'`
      expect(tables[0]?.n).toBe(0)
      // NUL cannot go into Postgres text; it is kept visible instead of failing the write.
      expect(JobLogs.sanitize("a\u0000b")).toBe("a\uFFFDb")
    })
  )

  it.effect(
    "a chunk the log refuses for good is not retried: an event.dropped marker takes its place, and the rest is stored",
    () =>
      Effect.gen(function* () {
        const logs = yield* JobLogs.JobLogs
        const log = yield* EventLog
        const sql = yield* SqlClient
        const jobId = yield* newJob
        yield* sql`CREATE SEQUENCE poison_chunk_tries`
        yield* sql.unsafe(`
          CREATE FUNCTION refuse_poison_chunk() RETURNS trigger AS $$
          BEGIN
            IF NEW.data->>'chunk' = 'poison' THEN
              PERFORM nextval('poison_chunk_tries');
              RAISE EXCEPTION 'no_poison' USING ERRCODE = 'check_violation';
            END IF;
            RETURN NEW;
          END $$ LANGUAGE plpgsql`)
        yield* sql`CREATE TRIGGER no_poison BEFORE INSERT ON vibes_events FOR EACH ROW EXECUTE FUNCTION refuse_poison_chunk()`
        yield* logs.write(entry(jobId, 1, "before"))
        yield* logs.write(entry(jobId, 2, "poison"))
        yield* logs.write(entry(jobId, 3, "after"))
        yield* logs.flush
        yield* sql`DROP TRIGGER no_poison ON vibes_events`
        yield* logs.write(entry(jobId, 4, "fine"))
        yield* logs.flush
        const [tries] = yield* sql<{ n: string }>`SELECT last_value AS n FROM poison_chunk_tries`
        // In the batch it came in, then alone: never retried.
        expect(Number(tries?.n)).toBeLessThanOrEqual(2)
        const events = yield* log.read(
          1,
          EventFilter.make({ jobId, types: ["job.log", "event.dropped"] }),
          10
        )
        expect(events.map((e) => [e.type, e.severity, e.data])).toEqual([
          ["job.log", "info", expect.objectContaining({ chunk: "before" })],
          ["event.dropped", "error", expect.objectContaining({ type: "job.log", reason: "EventRejected" })],
          ["job.log", "info", expect.objectContaining({ chunk: "after" })],
          ["job.log", "info", expect.objectContaining({ chunk: "fine" })]
        ])
        const stored = Chunk.toReadonlyArray(yield* Stream.runCollect(logs.stream(jobId, 0, false)))
        expect(stored.map((o) => (o._tag === "JobLog" ? o.seq : o._tag))).toEqual([1, 3, 4])
        expect(yield* logs.lastSeq(jobId)).toBe(4)
      })
  )

  it.effect("a chunk appended twice (a retried append) is read once", () =>
    Effect.gen(function* () {
      const logs = yield* JobLogs.JobLogs
      const log = yield* EventLog
      const jobId = yield* newJob
      yield* logs.write(entry(jobId, 1, "one\n"))
      yield* logs.write(entry(jobId, 2, "two\n"))
      yield* logs.flush
      const [first] = yield* log.read(1, EventFilter.make({ jobId, types: ["job.log"] }), 1)
      // The same chunk again, as an append whose reply was lost and which was sent again would be.
      if (first === undefined) return yield* Effect.die("no job.log event")
      yield* log.append([NewEvent.make({ type: "job.log", source: first.source, jobId, data: first.data })])
      yield* logs.write(entry(jobId, 3, "three\n"))
      yield* logs.flush
      const stored = Chunk.toReadonlyArray(yield* Stream.runCollect(logs.stream(jobId, 0, false)))
      expect(stored.map((o) => (o._tag === "JobLog" ? o.chunk : o._tag)).join("")).toBe("one\ntwo\nthree\n")
      const after = Chunk.toReadonlyArray(yield* Stream.runCollect(logs.stream(jobId, 1, false)))
      expect(after.map((o) => (o._tag === "JobLog" ? o.seq : o._tag))).toEqual([2, 3])
    })
  )

  it.effect("output with NUL or half a surrogate pair is stored as U+FFFD", () =>
    Effect.gen(function* () {
      const logs = yield* JobLogs.JobLogs
      const log = yield* EventLog
      const jobId = yield* newJob
      yield* logs.write(entry(jobId, 1, "nul\u0000 high\uD83D"))
      yield* logs.write(entry(jobId, 2, "\uDE00low"))
      yield* logs.flush
      const stored = Chunk.toReadonlyArray(yield* Stream.runCollect(logs.stream(jobId, 0, false)))
      expect(stored.map((o) => (o._tag === "JobLog" ? o.chunk : ""))).toEqual([
        "nul\uFFFD high\uFFFD",
        "\uFFFDlow"
      ])
      const events = yield* log.read(1, EventFilter.make({ jobId, types: ["job.log"] }), 10)
      expect(events.map((e) => (e.data as { chunk: string }).chunk)).toEqual([
        "nul\uFFFD high\uFFFD",
        "\uFFFDlow"
      ])
    })
  )

  it.effect("output is cut into chunks between characters, never inside a surrogate pair", () =>
    Effect.sync(() => {
      const text = `${"x".repeat(5)}\uD83D\uDE00${"y".repeat(3)}`
      const pieces = JobLogs.split(text, 6)
      expect(pieces.join("")).toBe(text)
      expect(pieces).toEqual(["xxxxx", "\uD83D\uDE00yyy", ""].filter((p) => p !== ""))
      expect(pieces.every((piece) => piece.length <= 6)).toBe(true)
    })
  )

  it.effect("a follower gets stored output, then live output, then the end", () =>
    Effect.gen(function* () {
      const logs = yield* JobLogs.JobLogs
      const store = yield* JobStore.JobStore
      const jobId = yield* newJob
      yield* store.update(jobId, { status: "running" })
      yield* logs.write(entry(jobId, 1, "before\n"))
      yield* logs.flush
      const follower = yield* logs.stream(jobId, 0, true).pipe(
        Stream.map((o) => (o._tag === "JobLog" ? o.chunk : o._tag)),
        Stream.runCollect,
        Effect.fork
      )
      // The follower is registered once it has read the stored line; wait through a second follower.
      yield* logs.stream(jobId, 0, true).pipe(Stream.take(1), Stream.runDrain)
      yield* logs.write(entry(jobId, 2, "live\n"))
      yield* logs.flush
      yield* store.update(jobId, { status: "succeeded", exitCode: 0 })
      yield* logs.publish(jobId, new JobDone({ status: "succeeded", exitCode: 0, signal: null }))
      const seen = Chunk.toReadonlyArray(yield* follower.await.pipe(Effect.flatten))
      expect(seen).toEqual(["before\n", "live\n", "JobDone"])
    })
  )

  it.effect("a follower that falls behind loses nothing: the gaps and the tail come from the log", () =>
    Effect.gen(function* () {
      const logs = yield* JobLogs.JobLogs
      const store = yield* JobStore.JobStore
      const jobId = yield* newJob
      yield* store.update(jobId, { status: "running" })
      const started = yield* Deferred.make<void>()
      const go = yield* Deferred.make<void>()
      // Takes the first chunk, then stops reading until told: its inbox (4,096 items) overflows.
      const follower = yield* logs.stream(jobId, 0, true).pipe(
        Stream.tap((o) =>
          o._tag === "JobLog" && o.seq === 1
            ? Effect.zipRight(Deferred.succeed(started, undefined), Deferred.await(go))
            : Effect.void
        ),
        Stream.runCollect,
        Effect.fork
      )
      yield* logs.write(entry(jobId, 1, "1\n"))
      yield* Deferred.await(started)
      const last = 6000
      for (let seq = 2; seq <= last; seq++) yield* logs.write(entry(jobId, seq, `${seq}\n`))
      yield* logs.flush
      yield* store.update(jobId, { status: "succeeded", exitCode: 0 })
      yield* logs.publish(jobId, new JobDone({ status: "succeeded", exitCode: 0, signal: null }), last)
      yield* Deferred.succeed(go, undefined)
      const seen = Chunk.toReadonlyArray(yield* Fiber.join(follower))
      expect(seen.map((o) => (o._tag === "JobLog" ? o.seq : o._tag))).toEqual([
        ...Array.from({ length: last }, (_, i) => i + 1),
        "JobDone"
      ])
    })
  )

  it.effect("retention deletes finished jobs, and their output goes by the job.log event policy", () =>
    Effect.gen(function* () {
      const logs = yield* JobLogs.JobLogs
      const store = yield* JobStore.JobStore
      const log = yield* EventLog
      const old = yield* newJob
      const recent = yield* newJob
      const longAgo = new Date(Date.now() - 40 * 86_400_000)
      yield* store.update(old, { status: "succeeded", finishedAt: longAgo })
      yield* logs.write(entry(old, 1, "old\n"))
      yield* logs.write(entry(recent, 1, "recent\n"))
      yield* logs.flush
      const pruned = yield* store.prune(new Date(Date.now() - 30 * 86_400_000))
      expect(pruned).toBeGreaterThanOrEqual(1)
      expect(Option.isNone(yield* store.get(old))).toBe(true)
      expect(Option.isSome(yield* store.get(recent))).toBe(true)
      // The job retention becomes an event policy for job.log, beside the operator's own policies.
      const policies = JobLogs.withRetention([], Duration.days(30))
      expect(policies.map((p) => [p.types, p.maxAgeMillis])).toEqual([[["job.log"], 30 * 86_400_000]])
      const own = RetentionPolicy.make({ types: ["job.*"], maxAgeMillis: 1000 })
      expect(JobLogs.withRetention([own], Duration.days(30))).toEqual([own])
      // 20 days on, the output is kept; 40 days on, it is gone.
      yield* log.applyRetention(policies, Date.now() + 20 * 86_400_000)
      expect(yield* logs.lastSeq(recent)).toBe(1)
      yield* log.applyRetention(policies, Date.now() + 40 * 86_400_000)
      expect(yield* logs.lastSeq(recent)).toBe(0)
      expect(yield* log.read(1, EventFilter.make({ jobId: old, types: ["job.log"] }), 10)).toEqual([])
    })
  )
})
