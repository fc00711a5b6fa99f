/**
 * Helpers for session tests: a watched attach stream, waiting on conditions, the PTY host's pid.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { Effect, type Fiber, Layer, Option, Redacted, type Scope, Stream } from "effect"
import * as NodeSocket from "@effect/platform-node/NodeSocket"
import * as Client from "../../rpc/Client.js"
import type { AttachEvent, Screen } from "../../rpc/Sessions.js"
import * as Proc from "../../infra/proc/Proc.js"

/** A client of `url` with `token`. */
export const clientLayer = (url: string, token: string) =>
  Client.layer({ url, token: Option.some(Redacted.make(token)) }).pipe(
    Layer.provide(NodeSocket.layerWebSocketConstructor)
  )

/** An attach stream being read in the background. */
export interface Watched {
  readonly events: Array<AttachEvent>
  /** The first screen the stream started from, if it did not resume. */
  readonly screen: () => Screen | null
  readonly attachmentId: () => string
  /** Every output byte received, concatenated. */
  readonly bytes: () => Buffer
  readonly text: () => string
  /** Sequence number of the next byte expected. */
  readonly seq: () => number
  /** Waits (bounded) until `predicate` holds. */
  readonly until: (predicate: (watched: Watched) => boolean, what: string) => Effect.Effect<void, Error>
  readonly fiber: Fiber.RuntimeFiber<void, unknown>
  /** How the stream ended, if it did. */
  readonly done: () => Option.Option<"ended" | "failed">
}

/** Reads `stream` in a fiber of the current scope. */
export const watch = <E>(stream: Stream.Stream<AttachEvent, E>): Effect.Effect<Watched, never, Scope.Scope> =>
  Effect.gen(function* () {
    const events: Array<AttachEvent> = []
    const chunks: Array<Buffer> = []
    const waiters = new Set<() => void>()
    let seq = 0
    let screen: Screen | null = null
    let attachmentId = ""
    let done: Option.Option<"ended" | "failed"> = Option.none()
    const notify = () => {
      for (const waiter of [...waiters]) waiter()
    }
    const fiber = yield* stream.pipe(
      Stream.runForEach((event) =>
        Effect.sync(() => {
          events.push(event)
          if (event._tag === "Attached") {
            screen = event.screen
            attachmentId = event.attachmentId
            seq = event.seq
          } else if (event._tag === "Output") {
            chunks.push(Buffer.from(event.data))
            seq = event.seq + event.data.length
          }
          notify()
        })
      ),
      Effect.tap(() =>
        Effect.sync(() => {
          done = Option.some("ended")
          notify()
        })
      ),
      Effect.tapErrorCause(() =>
        Effect.sync(() => {
          done = Option.some("failed")
          notify()
        })
      ),
      Effect.ignore,
      Effect.forkScoped
    )
    const watched: Watched = {
      events,
      screen: () => screen,
      attachmentId: () => attachmentId,
      bytes: () => Buffer.concat(chunks),
      text: () => Buffer.concat(chunks).toString("utf8"),
      seq: () => seq,
      until: (predicate, what) =>
        Effect.async<void>((resume) => {
          const check = () => {
            if (predicate(watched)) {
              waiters.delete(check)
              resume(Effect.void)
            }
          }
          waiters.add(check)
          check()
          return Effect.sync(() => waiters.delete(check))
        }).pipe(
          Effect.timeoutFail({
            duration: "60 seconds",
            onTimeout: () => new Error(`timed out waiting for ${what}; got:\n${watched.text().slice(-2000)}`)
          })
        ),
      fiber,
      done: () => done
    }
    return watched
  })

/** Polls `check` until it returns Some (bounded): for state that has no change notification. */
export const eventually = <A, E, R>(
  check: Effect.Effect<Option.Option<A>, E, R>,
  what: string,
  timeout: number = 60_000
): Effect.Effect<A, E | Error, R> =>
  Effect.gen(function* () {
    const deadline = Date.now() + timeout
    for (;;) {
      const result = yield* check
      if (Option.isSome(result)) return result.value
      if (Date.now() > deadline) return yield* Effect.fail(new Error(`timed out waiting for ${what}`))
      yield* Effect.sleep("50 millis")
    }
  })

/** The pid of the PTY host of `dataDir`, from its `pty-host.json`. */
export const ptyHostPid = (dataDir: string): number | undefined => {
  try {
    const parsed: unknown = JSON.parse(fs.readFileSync(path.join(dataDir, "pty-host.json"), "utf8"))
    return typeof parsed === "object" && parsed !== null && "pid" in parsed && typeof parsed.pid === "number"
      ? parsed.pid
      : undefined
  } catch {
    return undefined
  }
}

/** Children of `pid` (from /proc). */
export const childrenOf = (pid: number): Array<number> => Proc.childrenOf(pid)

/** Open file descriptors of `pid`. */
export const fdCount = (pid: number): number => fs.readdirSync(`/proc/${pid}/fd`).length

/** Stops the PTY host of `dataDir` (and with it every session) when the scope closes. */
export const stopPtyHostAtEnd = (dataDir: string) =>
  Effect.addFinalizer(() =>
    Effect.gen(function* () {
      const pid = ptyHostPid(dataDir)
      if (pid === undefined) return
      yield* Effect.sync(() => {
        try {
          process.kill(pid, "SIGTERM")
        } catch {
          // already gone
        }
      })
      yield* eventually(
        Effect.sync(() => {
          try {
            process.kill(pid, 0)
            return Option.none()
          } catch {
            return Option.some(true)
          }
        }),
        "the PTY host to stop",
        15_000
      ).pipe(
        Effect.catchAll(() =>
          Effect.sync(() => {
            try {
              process.kill(pid, "SIGKILL")
            } catch {
              // already gone
            }
          })
        )
      )
    })
  )
