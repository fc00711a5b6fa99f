/**
 * Supervises the machine's PTY host (`vibes pty-host`): attaches to the host answering on
 * `<dataDir>/pty-host.sock`, or starts one detached (it outlives this process, and with it the
 * shells), checks its health every `healthInterval`, and starts a new one with backoff when it
 * is gone. The PTYs of a host that died are gone too: callers get `PtyNotFound` for them.
 *
 * Releasing the layer leaves the host running, so sessions survive a server restart, unless
 * `stopHostOnRelease` asks for a `Shutdown` (tests, `vibes serve` when told to). A host left
 * alone exits by itself once no program runs in it, leaving the exits no server took in the data
 * dir (see `PtyHostServer`).
 */
import * as childProcess from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"
import {
  Context,
  Deferred,
  Duration,
  Effect,
  Fiber,
  Layer,
  Metric,
  Option,
  Ref,
  Schedule,
  Schema,
  type Scope,
  SubscriptionRef
} from "effect"
import * as DataDir from "../../infra/datadir/DataDir.js"
import * as ChildSupervisor from "./ChildSupervisor.js"
import type { PtyHost } from "../../infra/pty/PtyHost.js"
import * as PtyHostClient from "../../infra/pty/PtyHostClient.js"
import { isRunning, runningHostPid, socketPath } from "../../infra/pty/PtyHostRpcs.js"

/** The PTY host could not be started. */
export class PtyHostSupervisorError extends Schema.TaggedError<PtyHostSupervisorError>()(
  "PtyHostSupervisorError",
  { message: Schema.String }
) {}

/** Where the supervised host is in its life. */
export type Status = "starting" | "running" | "restarting" | "stopping" | "stopped"

/** The supervisor's view of the host. */
export class PtyHostSupervisor extends Context.Tag("vibes/PtyHostSupervisor")<
  PtyHostSupervisor,
  {
    readonly socketPath: string
    /** Where the host writes its log. */
    readonly logFile: string
    /** The status, with its changes. */
    readonly status: SubscriptionRef.SubscriptionRef<Status>
    /** Pid of the host that last answered. */
    readonly pid: Effect.Effect<Option.Option<number>>
    /** How many times a new host was started after one was lost. */
    readonly restarts: Effect.Effect<number>
  }
>() {}

/** Options of the supervisor. */
export interface Options {
  /** The vibes data directory: socket, pid file and log of the host. */
  readonly dataDir: string
  /** The argv that runs `vibes pty-host --data-dir <dataDir>`. */
  readonly command: ReadonlyArray<string>
  /** Time between health checks. Default 2 s. */
  readonly healthInterval?: Duration.DurationInput
  /** Shut the host (and every PTY) down when the layer is released. Default false. */
  readonly stopHostOnRelease?: boolean
  /** How long a new host may take to answer. Default 15 s. */
  readonly startTimeout?: Duration.DurationInput
  /** The host's environment (without the server's secrets). Default: the server's. */
  readonly env?: Readonly<Record<string, string>>
}

/** Name of the host's log file in the data dir. */
export const logFileName = "pty-host.log"

const fail = (message: string) => new PtyHostSupervisorError({ message })
const messageOf = (cause: unknown): string => (cause instanceof Error ? cause.message : String(cause))

const kill = (pid: number) =>
  Effect.sync(() => {
    try {
      process.kill(pid, "SIGKILL")
    } catch {
      // already gone
    }
  })

/** Waits, polling, until `pid` has exited; false if it still runs after `within`. */
const awaitGone = (pid: number, within: Duration.DurationInput) =>
  Effect.suspend(() => (isRunning(pid) ? Effect.fail("running") : Effect.void)).pipe(
    Effect.retry(Schedule.spaced("25 millis").pipe(Schedule.upTo(within))),
    Effect.as(true),
    Effect.orElseSucceed(() => false)
  )

const logTail = (logFile: string): string => {
  try {
    return fs.readFileSync(logFile, "utf8").trim().split("\n").slice(-5).join("\n")
  } catch {
    return ""
  }
}

/** Builds the supervisor; needs the client of the host's socket. */
export const make = (
  options: Options
): Effect.Effect<
  PtyHostSupervisor["Type"],
  PtyHostSupervisorError,
  PtyHostClient.PtyHostControl | Scope.Scope
> =>
  Effect.gen(function* () {
    const socket = socketPath(options.dataDir)
    const logFile = path.join(options.dataDir, logFileName)
    const startTimeout = Duration.decode(options.startTimeout ?? "15 seconds")
    const [file, ...args] = options.command
    if (file === undefined) return yield* fail("no command to start the PTY host with")
    yield* DataDir.ensure(options.dataDir).pipe(Effect.mapError((error) => fail(error.message)))
    const control = yield* PtyHostClient.PtyHostControl

    const status = yield* SubscriptionRef.make<Status>("starting")
    const pid = yield* Ref.make(Option.none<number>())
    const restarts = yield* Ref.make(0)

    const spawn = Effect.gen(function* () {
      const exited = yield* Deferred.make<string>()
      const child = yield* Effect.try({
        try: () => {
          const fd = fs.openSync(logFile, "a", 0o600)
          try {
            return childProcess.spawn(file, args, {
              detached: true,
              stdio: ["ignore", fd, fd],
              ...(options.env === undefined ? {} : { env: { ...options.env } })
            })
          } finally {
            fs.closeSync(fd)
          }
        },
        catch: (cause) =>
          fail(`cannot start the PTY host (${options.command.join(" ")}): ${messageOf(cause)}`)
      })
      child.once("error", (error) =>
        Deferred.unsafeDone(exited, Effect.succeed(`could not run: ${error.message}`))
      )
      child.once("exit", (code, signal) =>
        Deferred.unsafeDone(
          exited,
          Effect.succeed(signal !== null ? `killed by ${signal}` : `exit code ${code}`)
        )
      )
      // The host must not keep this process alive, nor die with it.
      child.unref()
      return exited
    })

    /** Resolves once the client is connected to a host that answers. */
    const connected = control.ping.pipe(
      Effect.retry(Schedule.spaced("50 millis")),
      Effect.mapError((error) => fail(error.message)),
      Effect.tap((answer) => Ref.set(pid, Option.some(answer.pid)))
    )

    const answers = (timeout: Duration.DurationInput) =>
      Effect.map(Effect.option(PtyHostClient.ping(socket, timeout)), Option.isSome)

    /** Whether a host answers, after waiting out one that is closing and killing one that is wedged. */
    const hostAnswers = Effect.gen(function* () {
      if (yield* answers("2 seconds")) return true
      const holder = runningHostPid(options.dataDir)
      if (Option.isNone(holder) || (yield* awaitGone(holder.value, "10 seconds"))) return false
      if (yield* answers("5 seconds")) return true
      // Left alone, a wedged host would keep the socket (and its PTYs are unreachable anyway).
      yield* Effect.logWarning(`the PTY host (pid ${holder.value}) does not answer; killing it`)
      yield* kill(holder.value)
      yield* awaitGone(holder.value, "5 seconds")
      return false
    })

    /** Attaches to the host that answers, or starts one; true when it started one. */
    const start = Effect.gen(function* () {
      const timeout = Effect.timeoutFail({
        duration: startTimeout,
        onTimeout: () =>
          fail(
            `the PTY host did not answer on ${socket} within ${Duration.format(startTimeout)}; see ${logFile}`
          )
      })
      if (yield* hostAnswers) {
        yield* connected.pipe(timeout)
        yield* SubscriptionRef.set(status, "running")
        return false
      }
      const exited = yield* spawn
      yield* connected.pipe(
        Effect.raceFirst(
          Deferred.await(exited).pipe(
            Effect.flatMap((how) =>
              // Exit code 0: another host won the race to the socket; it will answer.
              how === "exit code 0"
                ? Effect.never
                : Effect.fail(fail(`the PTY host ended before answering (${how}): ${logTail(logFile)}`))
            )
          )
        ),
        timeout
      )
      yield* SubscriptionRef.set(status, "running")
      return true
    })

    yield* start
    const hostPid = yield* Ref.get(pid)
    yield* Effect.logInfo(
      `using the PTY host ${Option.match(hostPid, { onNone: () => "", onSome: (n) => `(pid ${n}) ` })}on ${socket}`
    )

    const backoff = Schedule.exponential("200 millis").pipe(Schedule.union(Schedule.spaced("10 seconds")))
    const healthCheck = control.ping.pipe(
      Effect.timeoutFail({
        duration: "5 seconds",
        onTimeout: () => fail("no answer to a ping within 5 seconds")
      })
    )
    const supervise = Effect.gen(function* () {
      for (;;) {
        yield* Effect.sleep(options.healthInterval ?? "2 seconds")
        const health = yield* Effect.either(healthCheck)
        if (health._tag === "Right") {
          yield* Ref.set(pid, Option.some(health.right.pid))
          continue
        }
        yield* Effect.logWarning(`the PTY host is gone (${health.left.message}); starting a new one`)
        yield* SubscriptionRef.set(status, "restarting")
        yield* Ref.set(pid, Option.none())
        const started = yield* start.pipe(
          Effect.tapError((error) => Effect.logWarning(`starting a new PTY host failed: ${error.message}`)),
          Effect.retry(backoff)
        )
        if (started) {
          yield* Ref.update(restarts, (n) => n + 1)
          yield* Metric.increment(Metric.tagged(ChildSupervisor.restartsTotal, "child", "pty-host"))
        }
      }
    })
    const supervisor = yield* Effect.forkScoped(supervise)

    yield* Effect.addFinalizer(() =>
      Effect.gen(function* () {
        yield* Fiber.interrupt(supervisor)
        if (options.stopHostOnRelease === true) {
          yield* SubscriptionRef.set(status, "stopping")
          const last = yield* Ref.get(pid)
          yield* control.shutdown.pipe(
            Effect.timeout("10 seconds"),
            Effect.catchAll((error) =>
              Effect.logWarning(`the PTY host did not take the Shutdown: ${String(error)}`)
            )
          )
          if (Option.isSome(last) && !(yield* awaitGone(last.value, "15 seconds"))) {
            yield* Effect.logWarning(`the PTY host (pid ${last.value}) did not stop in time; killing it`)
            yield* kill(last.value)
            yield* awaitGone(last.value, "5 seconds")
          }
        }
        yield* SubscriptionRef.set(status, "stopped")
      })
    )

    return {
      socketPath: socket,
      logFile,
      status,
      pid: Ref.get(pid),
      restarts: Ref.get(restarts)
    }
  })

/**
 * `PtyHost` (through `PtyHostClient`) on a supervised host, the supervisor itself, and
 * `PtyHostControl`. Building it waits until a host answers.
 */
export const layer = (
  options: Options
): Layer.Layer<PtyHost | PtyHostClient.PtyHostControl | PtyHostSupervisor, PtyHostSupervisorError> =>
  Layer.scoped(PtyHostSupervisor, make(options)).pipe(
    Layer.provideMerge(PtyHostClient.layer({ socketPath: socketPath(options.dataDir) }))
  )
