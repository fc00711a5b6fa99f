/**
 * Keeps one server process running for the life of a scope: the mechanism the embedded Postgres
 * (`PgSupervisor`) and the bundled nats-server (`NatsSupervisor`) share.
 *
 * `supervise` starts the child and waits until its readiness probe passes (failing at once when
 * the child exits first, and killing it when it is not ready in time), retrying the start with
 * exponential backoff. Afterwards it watches the child: when it dies, the supervisor clears what
 * it left behind (`beforeRestart`), starts it again with the same backoff, and gives up after
 * `maxRestarts` (status `failed`, `failed` fails). Closing the scope sends the stop signal,
 * waits `stopTimeout`, then SIGKILL.
 */
import type * as childProcess from "node:child_process"
import {
  Deferred,
  type Duration,
  Effect,
  Fiber,
  Metric,
  Option,
  Ref,
  Schedule,
  type Scope,
  SubscriptionRef
} from "effect"

/** Restarts of supervised children (the PTY host, the embedded Postgres, nats-server), by child. */
export const restartsTotal = Metric.counter("vibes_supervised_restarts_total", {
  description: "Times a supervised child process died and was started again, by child",
  incremental: true
})

/** Where the supervised server is in its life. */
export type Status = "starting" | "running" | "restarting" | "stopping" | "stopped" | "failed"

/** A started child, and how it ended once it has. */
interface Running {
  readonly child: childProcess.ChildProcess
  readonly exited: Deferred.Deferred<string>
}

/** What to supervise. */
export interface Spec<E extends { readonly message: string }> {
  /** How logs and errors name the server, e.g. `nats-server`. */
  readonly name: string
  /** Its label in metrics, e.g. `nats`. */
  readonly metricLabel: string
  /** Starts the child (not waiting for it to be ready). */
  readonly spawn: Effect.Effect<childProcess.ChildProcess, E>
  /** Passes once the child answers (retried until it does). */
  readonly probe: Effect.Effect<unknown, unknown>
  /** Spacing of the probe's tries. */
  readonly probeEvery: Duration.DurationInput
  /** The error of a start that failed. */
  readonly fail: (message: string) => E
  /** The child's log file, named in start-up errors. */
  readonly logFile: string
  /** What a dead child left behind is cleared before the next start (an orphan, a pid file). */
  readonly beforeRestart: Effect.Effect<void>
  /** The signal that asks the child to stop. */
  readonly stopSignal: NodeJS.Signals
  readonly startTimeout: Duration.DurationInput
  readonly stopTimeout: Duration.DurationInput
  readonly restartBackoff: Duration.DurationInput
  readonly maxRestarts: number
}

/** The supervised child, as a supervisor service exposes it. */
export interface Supervised<E> {
  /** Pid of the running child, if one runs. */
  readonly pid: Effect.Effect<Option.Option<number>>
  /** The status, with its changes. */
  readonly status: SubscriptionRef.SubscriptionRef<Status>
  /** How many times the child was restarted after dying. */
  readonly restarts: Effect.Effect<number>
  /** Fails once the supervisor has given up on restarting. */
  readonly failed: Effect.Effect<never, E>
}

/** Starts the child (ready), watches it and stops it with the scope. */
export const supervise = <E extends { readonly message: string }>(
  spec: Spec<E>
): Effect.Effect<Supervised<E>, E, Scope.Scope> =>
  Effect.gen(function* () {
    const status = yield* SubscriptionRef.make<Status>("starting")
    const current = yield* Ref.make(Option.none<Running>())
    const restarts = yield* Ref.make(0)
    const stopping = yield* Ref.make(false)
    const gaveUp = yield* Deferred.make<never, E>()

    const kill = (running: Running, signal: NodeJS.Signals) =>
      Effect.sync(() => {
        if (running.child.exitCode === null && running.child.signalCode === null) running.child.kill(signal)
      })

    const spawn = Effect.gen(function* () {
      const child = yield* spec.spawn
      const exited = yield* Deferred.make<string>()
      child.once("error", (error) =>
        Deferred.unsafeDone(exited, Effect.succeed(`spawn error: ${error.message}`))
      )
      child.once("exit", (code, signal) =>
        Deferred.unsafeDone(
          exited,
          Effect.succeed(signal !== null ? `signal ${signal}` : `exit code ${code}`)
        )
      )
      const running: Running = { child, exited }
      yield* Ref.set(current, Option.some(running))
      return running
    })

    const waitReady = (running: Running) =>
      spec.probe.pipe(
        // Retried without end: only the race below and the timeout stop it.
        Effect.retry(Schedule.spaced(spec.probeEvery)),
        Effect.orDie,
        Effect.raceFirst(
          Deferred.await(running.exited).pipe(
            Effect.flatMap((how) =>
              Effect.fail(spec.fail(`${spec.name} exited during start-up (${how}); see ${spec.logFile}`))
            )
          )
        ),
        Effect.timeoutFail({
          duration: spec.startTimeout,
          onTimeout: () => spec.fail(`${spec.name} was not ready in time; see ${spec.logFile}`)
        }),
        Effect.tapError(() => kill(running, "SIGKILL"))
      )

    const startOnce = Effect.gen(function* () {
      const running = yield* spawn
      yield* waitReady(running)
      yield* SubscriptionRef.set(status, "running")
      return running
    })

    const backoff = Schedule.exponential(spec.restartBackoff).pipe(
      Schedule.intersect(Schedule.recurs(spec.maxRestarts))
    )

    // The first start gets the same bounded retries as a restart.
    let running = yield* startOnce.pipe(Effect.retry(backoff))

    const watch = Effect.gen(function* () {
      for (;;) {
        const how = yield* Deferred.await(running.exited)
        yield* Ref.set(current, Option.none())
        if (yield* Ref.get(stopping)) return
        yield* Effect.logWarning(`${spec.name} died (${how}); restarting`)
        yield* SubscriptionRef.set(status, "restarting")
        yield* Ref.update(restarts, (n) => n + 1)
        yield* Metric.increment(Metric.tagged(restartsTotal, "child", spec.metricLabel))
        yield* spec.beforeRestart
        const next = yield* startOnce.pipe(
          Effect.tapError((error) => Effect.logWarning(`${spec.name} restart failed: ${error.message}`)),
          Effect.retry(backoff),
          Effect.either
        )
        if (next._tag === "Left") {
          yield* SubscriptionRef.set(status, "failed")
          yield* Effect.logError(`gave up restarting ${spec.name}: ${next.left.message}`)
          yield* Deferred.fail(gaveUp, next.left)
          return
        }
        running = next.right
      }
    })
    const watcher = yield* Effect.forkDaemon(watch)

    yield* Effect.addFinalizer(() =>
      Effect.gen(function* () {
        yield* Ref.set(stopping, true)
        yield* SubscriptionRef.set(status, "stopping")
        yield* Fiber.interrupt(watcher)
        const live = yield* Ref.get(current)
        if (Option.isSome(live)) {
          yield* kill(live.value, spec.stopSignal)
          const stopped = yield* Deferred.await(live.value.exited).pipe(
            Effect.timeout(spec.stopTimeout),
            Effect.option
          )
          if (Option.isNone(stopped)) {
            yield* Effect.logWarning(`${spec.name} did not stop in time; killing it`)
            yield* kill(live.value, "SIGKILL")
            yield* Deferred.await(live.value.exited)
          }
        }
        yield* SubscriptionRef.set(status, "stopped")
      })
    )

    return {
      pid: Ref.get(current).pipe(
        Effect.map(
          Option.flatMap((r) => (r.child.pid === undefined ? Option.none() : Option.some(r.child.pid)))
        )
      ),
      status,
      restarts: Ref.get(restarts),
      failed: Deferred.await(gaveUp)
    }
  })
