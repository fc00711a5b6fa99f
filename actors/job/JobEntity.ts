/**
 * One job as a cluster entity, keyed by job id.
 *
 * `Submit` is a persisted message: it is stored before the caller hears back, and its handler runs
 * the job to the end (delay, worker slot, attempts, backoff), so a node that dies mid-job has the
 * message replayed when the job's shard is taken up again. The handler then finds the row still
 * `running`: the attempt the crash cut short counts as failed (its orphaned process group is
 * killed), and the retry policy decides what follows. Logs written before the crash stay.
 *
 * On a graceful shutdown the running attempt is stopped (SIGTERM, a short grace, SIGKILL) and the
 * job is handed back to the queue: the row returns to `queued`, the attempt is not counted, and the
 * unprocessed message runs it again when the node (or the next owner of the shard) starts.
 *
 * `Cancel`, `Status` and `Logs` are volatile and run beside a running `Submit`.
 */
import {
  DateTime,
  Deferred,
  Duration,
  Effect,
  Fiber,
  Metric,
  Option,
  Schedule,
  Schema,
  type Scope
} from "effect"
import * as ClusterSchema from "@effect/cluster/ClusterSchema"
import * as Entity from "@effect/cluster/Entity"
import type { CommandExecutor } from "@effect/platform/CommandExecutor"
import * as Rpc from "@effect/rpc/Rpc"
import {
  isFinal,
  JobDone,
  JobError,
  JobId,
  JobInfo,
  JobOutput,
  JobProgress,
  JobSpec,
  type JobStatus,
  type LogStream
} from "../../rpc/Jobs.js"
import { truncate } from "../../rpc/Text.js"
import { PtyHost } from "../../infra/pty/PtyHost.js"
import type { KnownType, PayloadOf } from "../../rpc/Events.js"
import { Emitter } from "../../infra/eventlog/Emitter.js"
import * as Artifacts from "./Artifacts.js"
import { JobLogs, maxChunkChars, sanitize, split } from "./JobLogs.js"
import { JobSettings } from "./JobSettings.js"
import { JobStore, type StoredJob } from "./JobStore.js"
import { Scheduler } from "./Scheduler.js"
import * as Strategies from "./Strategies.js"
import * as ChildEnv from "../../infra/sandbox/ChildEnv.js"
import * as Proc from "../../infra/proc/Proc.js"

/** The entity's protocol; the public `Jobs` RPCs route here by job id. */
export const Job = Entity.make("Job", [
  Rpc.make("Submit", {
    payload: { jobId: JobId, spec: JobSpec },
    primaryKey: (payload) => payload.jobId,
    success: JobInfo,
    error: JobError
  }).annotate(ClusterSchema.Persisted, true),
  Rpc.make("Cancel", { success: JobInfo, error: JobError }),
  Rpc.make("Status", { success: JobInfo, error: JobError }),
  Rpc.make("Logs", {
    payload: { after: Schema.Int, follow: Schema.Boolean },
    success: JobOutput,
    error: JobError,
    stream: true
  })
]).annotateRpcs(ClusterSchema.ClientTracingEnabled, false)

const finished = Metric.counter("vibes_jobs_finished_total", {
  description: "Jobs that reached a final status",
  incremental: true
})
const attemptsStarted = Metric.counter("vibes_job_attempts_total", {
  description: "Job attempts started",
  incremental: true
})

/** How one attempt ended. */
type Outcome =
  | { readonly _tag: "Exited"; readonly code: number | null; readonly signal: string | null }
  | { readonly _tag: "TimedOut"; readonly code: number | null; readonly signal: string | null }
  | { readonly _tag: "Canceled"; readonly code: number | null; readonly signal: string | null }
  | { readonly _tag: "Failed"; readonly message: string }

const progressLine = /^::progress\s+(\d+(?:\.\d+)?)\s*$/

/** Delay before attempt `next` (2, 3, …): `initial * factor^(next-2)`, capped. */
export const backoff = (spec: JobSpec, next: number): number =>
  Math.min(spec.retry.maxDelayMs, spec.retry.initialDelayMs * spec.retry.factor ** Math.max(0, next - 2))

/**
 * How long a job found running on another live node waits for that node to end the attempt or
 * hand it back (a stopping node takes the entity termination timeout, its shutdown grace and a
 * few writes); after that the attempt counts as failed, as after a crash.
 */
const handOverWait = Duration.seconds(30)

/** Processes of process group `pgid` that carry `VIBES_JOB_ID=jobId`: left behind by a crash. */
const orphans = (pgid: number, jobId: string): boolean =>
  Proc.pids().some(
    (pid) =>
      Option.exists(Proc.stat(pid), (stat) => stat.pgrp === pgid) && Proc.hasEnv(pid, "VIBES_JOB_ID", jobId)
  )

/** The entity's handlers. */
export const layer = Job.toLayer(
  Effect.gen(function* () {
    const address = yield* Entity.CurrentAddress
    const jobId = address.entityId
    const store = yield* JobStore
    const logs = yield* JobLogs
    const scheduler = yield* Scheduler
    const settings = yield* JobSettings
    const emitter = yield* Emitter
    const artifacts = yield* Artifacts.Artifacts
    const context = yield* Effect.context<CommandExecutor | PtyHost>()

    /** Completed by `Cancel`; every wait of the run races it. */
    const canceled = yield* Deferred.make<void>()
    /** Completed with the final info when the run ends. */
    let run: Option.Option<Deferred.Deferred<JobInfo>> = Option.none()

    /** Emits an event of this job (its payload names the job too). */
    const emit = <T extends KnownType>(type: T, data: PayloadOf<T>, severity?: "info" | "warn" | "error") =>
      emitter.emit(type, data, { component: "job", jobId, ...(severity ? { severity } : {}) })

    const execute = (spec: JobSpec): Effect.Effect<JobInfo, JobError> =>
      Effect.gen(function* () {
        let job: StoredJob = yield* store.insert(jobId, spec, new Date())
        if (isFinal(job.info.status)) return job.info
        let seq = yield* logs.lastSeq(jobId)
        const write = (stream: LogStream, text: string) =>
          Effect.gen(function* () {
            // Cut between characters: half a surrogate pair alone cannot be stored.
            for (const chunk of split(sanitize(text), maxChunkChars)) {
              yield* logs.write({ jobId, seq: ++seq, stream, chunk, ts: new Date() })
            }
          })
        const system = (line: string) => write("system", ChildEnv.redact(settings.secrets, `${line}\n`))

        /** Keeps the files the spec names, before the job is seen to end (so they are there when it is). */
        const collectArtifacts = (status: JobStatus) =>
          Effect.gen(function* () {
            if (!Artifacts.wanted(spec, status) || job.info.attempts === 0) return
            if (spec.strategy === "ssh") {
              return yield* system("artifacts are not collected from ssh jobs yet; none were kept")
            }
            yield* artifacts.collect(jobId, spec.cwd ?? settings.home, spec.artifacts, {
              kept: (info) =>
                Effect.asVoid(
                  emit("job.artifact", { jobId, name: info.name, size: info.size, sha256: info.sha256 })
                ),
              line: system
            })
          })

        const finish = (
          status: JobStatus,
          patch: { exitCode: number | null; signal: string | null; error: string | null }
        ) =>
          Effect.zipRight(
            collectArtifacts(status),
            Effect.gen(function* () {
              yield* logs.flush
              job = yield* store.update(jobId, { status, ...patch, finishedAt: new Date(), pid: null })
              yield* emit(
                "job.done",
                {
                  jobId,
                  status,
                  exitCode: patch.exitCode,
                  signal: patch.signal,
                  attempts: job.info.attempts
                },
                status === "succeeded" || status === "canceled" ? "info" : "warn"
              )
              yield* logs.publish(
                jobId,
                new JobDone({ status, exitCode: patch.exitCode, signal: patch.signal }),
                seq
              )
              yield* Metric.increment(Metric.tagged(finished, "status", status))
              return job.info
              // The row and its `job.done` go together: a node stopping in between would leave a
              // finished job without its event.
            }).pipe(Effect.uninterruptible)
          )

        /** Waits for `effect` unless the job is canceled first (then `None`). */
        const unlessCanceled = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
          Effect.raceFirst(Effect.asSome(effect), Effect.as(Deferred.await(canceled), Option.none<A>()))

        const cancelStatus = () =>
          Effect.zipRight(
            system("canceled"),
            finish("canceled", { exitCode: null, signal: null, error: "canceled by a client" })
          )

        // Running on another node that is alive (stopping, or whose shard locks lapsed under
        // load): it ends the attempt or hands the job back itself; two nodes never run it at once.
        if (job.info.status === "running" && job.info.nodeId !== settings.nodeId) {
          const stillThere = store.runsElsewhere(jobId, settings.nodeId, settings.liveWithin)
          yield* stillThere.pipe(
            Effect.repeat({ while: (held) => held, schedule: Schedule.spaced("100 millis") }),
            Effect.timeoutOption(handOverWait)
          )
          job = yield* store.getOrFail(jobId)
          if (isFinal(job.info.status)) return job.info
        }

        // A crash cut the last attempt short: its process group may still run.
        let recovered: Option.Option<Outcome> = Option.none()
        if (job.info.status === "running") {
          if (job.pid !== null && orphans(job.pid, jobId)) {
            yield* Effect.sync(() => {
              try {
                process.kill(-(job.pid ?? 0), "SIGKILL")
              } catch {
                // Already gone.
              }
            })
          }
          if (job.ptyId !== null) {
            const ptyId = job.ptyId
            yield* Effect.serviceOption(PtyHost).pipe(
              Effect.flatMap(
                Option.match({
                  onNone: () => Effect.void,
                  onSome: (host) => Effect.ignore(host.release(ptyId))
                })
              ),
              Effect.provide(context)
            )
          }
          const message = `vibes stopped while attempt ${job.info.attempts} ran; that attempt counts as failed`
          yield* system(message)
          recovered = Option.some({
            _tag: "Failed",
            message: "the node running the job stopped during the attempt"
          })
        }

        const attemptOnce = (attempt: number) => {
          const decoders = { stdout: new TextDecoder(), stderr: new TextDecoder() }
          // No secret of the server reaches the log, even cut between two chunks.
          const redactors = {
            stdout: ChildEnv.streamRedactor(settings.secrets),
            stderr: ChildEnv.streamRedactor(settings.secrets)
          }
          // The last bytes of a multi-byte character split at the end, and what redaction held back.
          const flushDecoders = Effect.forEach(["stdout", "stderr"] as const, (stream) => {
            const rest = redactors[stream].push(decoders[stream].decode()) + redactors[stream].end()
            return rest.length === 0 ? Effect.void : write(stream, rest)
          })
          return Effect.scoped(
            Effect.gen(function* () {
              const slot = yield* unlessCanceled(scheduler.slot(spec.priority))
              if (Option.isNone(slot)) return { _tag: "Canceled", code: null, signal: null } as Outcome
              const startedAt = new Date()
              job = yield* store.update(jobId, {
                status: "running",
                attempts: attempt,
                nodeId: settings.nodeId,
                ...(job.info.startedAt === null ? { startedAt } : {}),
                error: null,
                exitCode: null,
                signal: null
              })
              yield* Metric.increment(attemptsStarted)
              const partial = { stdout: "", stderr: "" }
              const onOutput: Strategies.OnOutput = (stream, bytes) =>
                Effect.gen(function* () {
                  const text = redactors[stream].push(decoders[stream].decode(bytes, { stream: true }))
                  if (text.length === 0) return
                  yield* write(stream, text)
                  // `::progress N` lines become progress events.
                  const lines = (partial[stream] + text).split("\n")
                  partial[stream] = (lines.pop() ?? "").slice(-256)
                  for (const line of lines) {
                    const match = progressLine.exec(line.replace(/\r$/, ""))
                    if (match?.[1] === undefined) continue
                    const percent = Math.min(100, Math.max(0, Number(match[1])))
                    yield* emit("job.progress", { jobId, percent })
                    yield* logs.publish(jobId, new JobProgress({ percent }))
                    yield* Effect.ignore(store.update(jobId, { progress: percent }))
                  }
                })
              // The attempt's proxy token works until the attempt ends.
              const proxyEnv = yield* Effect.acquireRelease(settings.proxyEnv(jobId), () =>
                settings.proxyEnded(jobId)
              )
              // The attempt's span, for the program to carry on the trace (W3C trace context).
              const span = yield* Effect.option(Effect.currentSpan)
              const ctx: Strategies.Context = {
                jobId,
                attempt,
                spec,
                wrapper: settings.wrapper,
                env: {
                  ...settings.env,
                  ...proxyEnv,
                  ...spec.env,
                  ...Option.match(span, {
                    onNone: () => ({}),
                    onSome: (s) => ({ TRACEPARENT: `00-${s.traceId}-${s.spanId}-${s.sampled ? "01" : "00"}` })
                  }),
                  VIBES_JOB_ID: jobId,
                  VIBES_JOB_ATTEMPT: String(attempt)
                },
                home: settings.home,
                onOutput
              }
              const strategy: Effect.Effect<
                Strategies.Running,
                Strategies.AttemptFailed,
                Scope.Scope | CommandExecutor | PtyHost
              > =
                spec.strategy === "stream"
                  ? Strategies.stream(ctx)
                  : spec.strategy === "terminal"
                    ? Strategies.terminal(ctx)
                    : Strategies.ssh(ctx, {
                        dataDir: settings.dataDir,
                        knownHosts: settings.sshKnownHosts,
                        keepalive: Duration.toMillis(settings.sshKeepalive)
                      })
              // A strategy that dies while starting (a spawn that threw) fails this attempt, never the entity.
              const started = yield* strategy.pipe(
                Effect.catchAllDefect((defect) =>
                  Effect.fail(
                    new Strategies.AttemptFailed({
                      message: `could not start ${spec.command}: ${Strategies.spawnFailure(defect)}`
                    })
                  )
                ),
                Effect.either,
                Effect.provide(context)
              )
              if (started._tag === "Left") {
                yield* system(started.left.message)
                return { _tag: "Failed", message: started.left.message } as Outcome
              }
              const running = started.right
              if (running.pid !== null || running.ptyId !== null) {
                job = yield* store.update(jobId, { pid: running.pid, ptyId: running.ptyId })
              }
              yield* emit("job.started", { jobId, attempt, pid: running.pid })
              const exitFiber = yield* Effect.fork(running.exit)

              /** SIGTERM to the tree, SIGKILL once `grace` has passed with any of it left. */
              const stop = (grace: Duration.Duration) =>
                Effect.gen(function* () {
                  yield* running.signal("SIGTERM")
                  const gone = yield* running.alive.pipe(
                    Effect.repeat({ while: (alive) => alive, schedule: Schedule.spaced("25 millis") }),
                    Effect.timeoutOption(grace)
                  )
                  if (Option.isNone(gone)) {
                    yield* system(`still running ${Duration.format(grace)} after SIGTERM; sending SIGKILL`)
                  }
                  // Also when the leader is gone: what is left of its group (a child that ignored
                  // SIGTERM, or one a remote shell cannot report) goes too.
                  yield* running.signal("SIGKILL")
                  return yield* Fiber.join(exitFiber).pipe(
                    Effect.timeoutOption("10 seconds"),
                    Effect.map(
                      Option.getOrElse((): Strategies.ExitStatus => ({ code: null, signal: "SIGKILL" }))
                    ),
                    Effect.catchAll(() => Effect.succeed<Strategies.ExitStatus>({ code: null, signal: null }))
                  )
                })
              // Shutdown (interruption): stop the tree quickly; the job goes back to the queue.
              yield* Effect.addFinalizer(() =>
                Effect.flatMap(exitFiber.poll, (done) =>
                  Option.isSome(done) ? Effect.void : Effect.asVoid(stop(settings.shutdownGrace))
                )
              )

              const timeout =
                spec.timeoutMs === undefined ? Effect.never : Effect.sleep(Duration.millis(spec.timeoutMs))
              const first = yield* Effect.raceAll([
                Effect.map(Fiber.join(exitFiber), (status) => ({ _tag: "Exited" as const, status })),
                Effect.as(Deferred.await(canceled), { _tag: "Canceled" as const }),
                Effect.as(timeout, { _tag: "TimedOut" as const })
              ]).pipe(Effect.either)
              if (first._tag === "Left") {
                yield* system(first.left.message)
                return { _tag: "Failed", message: first.left.message } as Outcome
              }
              const winner = first.right
              if (winner._tag === "Exited") {
                return { _tag: "Exited", code: winner.status.code, signal: winner.status.signal } as Outcome
              }
              yield* system(
                winner._tag === "Canceled"
                  ? "cancel requested: sending SIGTERM to the process group"
                  : `timed out after ${Duration.format(Duration.millis(spec.timeoutMs ?? 0))}: sending SIGTERM to the process group`
              )
              const status = yield* stop(settings.killGrace)
              return { _tag: winner._tag, code: status.code, signal: status.signal } as Outcome
            })
          ).pipe(Effect.ensuring(flushDecoders))
        }

        // Attempts, with backoff between them.
        for (;;) {
          const attempt = job.info.attempts + 1
          const outcome: Outcome = yield* Option.match(recovered, {
            onSome: (o) => Effect.succeed(o),
            onNone: () =>
              Effect.gen(function* () {
                if (yield* Deferred.isDone(canceled)) {
                  return { _tag: "Canceled", code: null, signal: null } as Outcome
                }
                if (spec.runAt !== undefined && attempt === 1) {
                  const wait = DateTime.toEpochMillis(spec.runAt) - Date.now()
                  if (wait > 0) {
                    const waited = yield* unlessCanceled(Effect.sleep(Duration.millis(wait)))
                    if (Option.isNone(waited))
                      return { _tag: "Canceled", code: null, signal: null } as Outcome
                  }
                }
                return yield* attemptOnce(attempt).pipe(
                  Effect.withSpan("Job.attempt", {
                    attributes: {
                      "vibes.job_id": jobId,
                      "vibes.attempt": attempt,
                      "vibes.node_id": settings.nodeId
                    }
                  })
                )
              })
          })
          recovered = Option.none()
          yield* logs.flush

          switch (outcome._tag) {
            case "Canceled":
              if (outcome.code === null && outcome.signal === null && job.info.status !== "running") {
                return yield* cancelStatus()
              }
              yield* system(`canceled (${outcome.signal ?? `exit code ${outcome.code}`})`)
              return yield* finish("canceled", {
                exitCode: outcome.code,
                signal: outcome.signal,
                error: "canceled by a client"
              })
            case "Exited":
              if (outcome.code === 0) {
                return yield* finish("succeeded", { exitCode: 0, signal: null, error: null })
              }
              break
            default:
              break
          }
          const reason =
            outcome._tag === "Failed"
              ? outcome.message
              : outcome._tag === "TimedOut"
                ? `timed out after ${spec.timeoutMs ?? 0} ms`
                : outcome.signal !== null
                  ? `killed by ${outcome.signal}`
                  : `exit code ${outcome.code}`
          const exitCode = outcome._tag === "Failed" ? null : outcome.code
          const signal = outcome._tag === "Failed" ? null : outcome.signal
          const done = job.info.attempts >= spec.retry.maxAttempts
          if (done) {
            const status: JobStatus =
              spec.retry.maxAttempts > 1 ? "dead" : outcome._tag === "TimedOut" ? "timed_out" : "failed"
            yield* system(
              status === "dead"
                ? `attempt ${job.info.attempts} of ${spec.retry.maxAttempts} failed (${reason}); no attempts left: dead-lettered`
                : `failed: ${reason}`
            )
            return yield* finish(status, { exitCode, signal, error: reason })
          }
          const delay = backoff(spec, job.info.attempts + 1)
          yield* system(
            `attempt ${job.info.attempts} of ${spec.retry.maxAttempts} failed (${reason}); retrying in ${Duration.format(Duration.millis(delay))}`
          )
          job = yield* store.update(jobId, { status: "retrying", exitCode, signal, error: reason, pid: null })
          yield* emit(
            "job.retrying",
            // The reason may quote the command (up to 64 Ki characters): cut to keep the event small.
            { jobId, attempt: job.info.attempts, delayMillis: delay, reason: truncate(reason, 4096) },
            "warn"
          )
          yield* logs.flush
          const waited = yield* unlessCanceled(Effect.sleep(Duration.millis(delay)))
          if (Option.isNone(waited)) {
            return yield* cancelStatus()
          }
        }
      }).pipe(
        // Interrupted (shutdown or shard move): back to the queue, this attempt uncounted.
        Effect.onInterrupt(() =>
          Effect.gen(function* () {
            const current = yield* store.get(jobId)
            if (Option.isNone(current) || isFinal(current.value.info.status)) return
            const info = current.value.info
            // Another node runs it now (this one stopped late): that node's row stays as it is.
            if (info.status === "running" && info.nodeId !== settings.nodeId) return
            const seq = yield* logs.lastSeq(jobId)
            yield* logs.write({
              jobId,
              seq: seq + 1,
              stream: "system",
              chunk: "the node is shutting down: the job goes back to the queue\n",
              ts: new Date()
            })
            yield* logs.flush
            const attempts = info.status === "running" ? info.attempts - 1 : info.attempts
            yield* store.handBack(info, Math.max(0, attempts))
          }).pipe(Effect.ignore)
        )
      )

    const current = Effect.map(store.getOrFail(jobId), (job) => job.info)

    return Job.of({
      Submit: (request) =>
        Effect.gen(function* () {
          const done = yield* Deferred.make<JobInfo>()
          run = Option.some(done)
          return yield* execute(request.payload.spec).pipe(
            Effect.tap((info) => Deferred.succeed(done, info)),
            Effect.ensuring(Effect.sync(() => (run = Option.none())))
          )
        }),
      Cancel: () =>
        Rpc.fork(
          Effect.gen(function* () {
            yield* Deferred.succeed(canceled, undefined)
            const active = run
            if (Option.isSome(active)) {
              const result = yield* Deferred.await(active.value).pipe(
                Effect.timeoutOption(Duration.sum(settings.killGrace, Duration.seconds(15)))
              )
              if (Option.isSome(result)) return result.value
              return yield* current
            }
            const info = yield* current
            if (isFinal(info.status)) return info
            // No run here (yet): the row alone says it is waiting; record the cancel there.
            const updated = yield* Effect.uninterruptible(
              Effect.tap(
                store.update(jobId, {
                  status: "canceled",
                  error: "canceled by a client",
                  finishedAt: new Date()
                }),
                (updated) =>
                  emit("job.done", {
                    jobId,
                    status: "canceled",
                    exitCode: null,
                    signal: null,
                    attempts: updated.info.attempts
                  })
              )
            )
            yield* logs.publish(jobId, new JobDone({ status: "canceled", exitCode: null, signal: null }))
            return updated.info
          })
        ),
      Status: () => Rpc.fork(current),
      Logs: (request) => Rpc.fork(logs.stream(jobId, request.payload.after, request.payload.follow))
    })
  }),
  { maxIdleTime: Duration.minutes(5) }
)
