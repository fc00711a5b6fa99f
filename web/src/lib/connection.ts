/**
 * The browser's connection to its vibes server: the typed RPC client from rpc/ over one
 * WebSocket (the login cookie travels on the upgrade), calls as promises, and streams that
 * reconnect by themselves.
 */
import { Cause, Duration, Effect, Exit, Fiber, Layer, ManagedRuntime, Option, Schedule, Stream } from "effect"
import * as Socket from "@effect/platform/Socket"
import * as AttachClient from "../../../rpc/AttachClient.js"
import * as Client from "../../../rpc/Client.js"

/** Where the backend URL override lives in localStorage. */
export const backendUrlKey = "vibes.backendUrl"

/** The server this UI talks to: the override from the settings, else the page's own origin. */
export const backendUrl = (): string => {
  const stored = localStorage.getItem(backendUrlKey)
  return stored !== null && stored.trim() !== "" ? stored : location.origin
}

const runtime = ManagedRuntime.make(
  Client.layer({ url: backendUrl(), token: Option.none() }).pipe(
    Layer.provide(Socket.layerWebSocketConstructorGlobal)
  )
)

/** A failure as a person reads it, with the error's tag when it has one. */
export class CallError extends Error {
  constructor(
    readonly tag: string,
    message: string
  ) {
    super(message)
  }
}

const toCallError = (cause: Cause.Cause<unknown>): CallError => {
  const failure = Cause.failureOption(cause)
  if (Option.isSome(failure)) {
    const error = failure.value
    if (typeof error === "object" && error !== null) {
      const tag = "_tag" in error && typeof error._tag === "string" ? error._tag : "Error"
      const message = "message" in error && typeof error.message === "string" ? error.message : String(error)
      return new CallError(tag, message)
    }
    return new CallError("Error", String(error))
  }
  return new CallError("Defect", Cause.pretty(cause))
}

let checking = false

/**
 * A server that no longer accepts the login refuses the WebSocket itself, which a browser reports
 * as a plain connection failure: ask `/api/whoami` (once at a time) and go to the login page when
 * it answers 401 (that answer also clears the dead cookie).
 */
const checkLogin = () => {
  if (checking) return
  checking = true
  fetch(new URL("/api/whoami", backendUrl()), { credentials: "same-origin" })
    .then((response) => {
      if (response.status === 401) location.assign("/login")
    })
    .catch(() => undefined)
    .finally(() => {
      checking = false
    })
}

/** The login is gone (expired or revoked): show the login page instead of a broken app. */
const onUnauthorized = (error: CallError) => {
  if (error.tag === "Unauthorized") location.assign("/login")
  else if (error.tag === "RpcClientError") checkLogin()
}

/** Calls the server: `call((c) => c.Jobs.List({}))`. Rejects with a `CallError`. */
export const call = <A, E>(f: (client: Client.Client) => Effect.Effect<A, E>): Promise<A> =>
  runtime.runPromiseExit(Effect.flatMap(Client.VibesClient, f)).then((exit) => {
    if (Exit.isSuccess(exit)) return exit.value
    const error = toCallError(exit.cause)
    onUnauthorized(error)
    throw error
  })

/** Errors after which a stream is opened again: the connection, or a terminal that is restarting. */
const transient = new Set([
  "RpcClientError",
  "SessionUnavailable",
  "JobsUnavailable",
  "SubscriberLagged",
  "StreamCut"
])

/** True for a failure that a reconnect may cure. */
export const isTransient = (error: CallError): boolean => transient.has(error.tag)

/** What a followed stream reports besides its items. */
export interface FollowHandlers<A> {
  readonly onItem: (item: A) => void
  /** The stream is (re)connected and delivering. */
  readonly onConnected?: () => void
  /** The connection dropped; it is being opened again. */
  readonly onReconnecting?: (error: CallError) => void
  /** It ended for good: `undefined` when it was complete, else the error. */
  readonly onEnd?: (error: CallError | undefined) => void
  /**
   * Whether an end of the stream is its real end (e.g. the session's `Ended` arrived). When it is
   * not (a server that stops ends its streams), the stream is opened again. Default: it is.
   */
  readonly complete?: () => boolean
}

/** A stream that ended before its end: opened again like a dropped connection. */
class StreamCut {
  readonly _tag = "StreamCut"
  readonly message = "the server ended the stream early"
}

/**
 * Follows a stream, opening it again (from where `open` says, e.g. the last sequence number)
 * after a transient failure, with backoff up to 2 s. Returns a function that stops it.
 */
export const follow = <A, E>(
  open: (client: Client.Client) => Stream.Stream<A, E>,
  handlers: FollowHandlers<A>
): (() => void) => {
  let first = true
  const complete = handlers.complete ?? (() => true)
  const attempt = Effect.flatMap(Client.VibesClient, (client) =>
    open(client).pipe(
      Stream.runForEach((item) =>
        Effect.sync(() => {
          if (first) {
            first = false
            handlers.onConnected?.()
          }
          handlers.onItem(item)
        })
      )
    )
  ).pipe(
    Effect.flatMap(() => (complete() ? Effect.void : Effect.fail<E | StreamCut>(new StreamCut()))),
    Effect.tapError((error) =>
      Effect.sync(() => {
        const failure = toCallError(Cause.fail(error))
        if (isTransient(failure)) {
          first = true
          handlers.onReconnecting?.(failure)
          if (failure.tag === "RpcClientError") checkLogin()
        }
      })
    ),
    Effect.retry({
      while: (error) => isTransient(toCallError(Cause.fail(error))),
      schedule: Schedule.exponential(Duration.millis(100)).pipe(
        Schedule.union(Schedule.spaced(Duration.seconds(2)))
      )
    })
  )
  const fiber = runtime.runFork(attempt)
  fiber.addObserver((exit) => {
    if (Exit.isSuccess(exit)) handlers.onEnd?.(undefined)
    else if (!Cause.isInterruptedOnly(exit.cause)) {
      const error = toCallError(exit.cause)
      onUnauthorized(error)
      handlers.onEnd?.(error)
    }
  })
  return () => {
    runtime.runFork(Fiber.interrupt(fiber))
  }
}

/** What an attached terminal reports. */
export interface TerminalHandlers {
  readonly onEvent: (event: AttachClient.AttachClientEvent) => void
  /** The attachment ended for good: the session ended (no error) or the server refused it. */
  readonly onEnd: (error: CallError | undefined) => void
}

/** An attached terminal: what it sends, and how it stops. */
export interface AttachedTerminal {
  readonly input: (data: Uint8Array) => void
  readonly resize: (cols: number, rows: number) => void
  readonly stop: () => void
}

/**
 * Attaches to a session over its attach socket with the typed attach client (the login cookie
 * travels on the upgrade), attaching again for as long as the page is open when the connection
 * drops; a dropped connection may be a login that ended, which sends the page to the login form.
 */
export const attachTerminal = (
  options: Omit<AttachClient.AttachOptions, "url" | "token" | "reconnectFor">,
  handlers: TerminalHandlers
): AttachedTerminal => {
  let attachment: AttachClient.Attachment | undefined
  const pending: Array<(attachment: AttachClient.Attachment) => Effect.Effect<void>> = []
  const fiber = Effect.runFork(
    Effect.gen(function* () {
      const attached = yield* AttachClient.attach({
        ...options,
        url: backendUrl(),
        token: Option.none(),
        reconnectFor: Duration.infinity
      })
      attachment = attached
      for (const send of pending.splice(0)) yield* send(attached)
      yield* attached.events.pipe(
        Stream.runForEach((event) =>
          Effect.sync(() => {
            if (event._tag === "Reconnecting") checkLogin()
            handlers.onEvent(event)
          })
        )
      )
    }).pipe(Effect.scoped, Effect.provide(Socket.layerWebSocketConstructorGlobal))
  )
  fiber.addObserver((exit) => {
    if (Exit.isSuccess(exit)) handlers.onEnd(undefined)
    else if (!Cause.isInterruptedOnly(exit.cause)) handlers.onEnd(toCallError(exit.cause))
  })
  const run = (send: (attachment: AttachClient.Attachment) => Effect.Effect<void>) => {
    if (attachment === undefined) pending.push(send)
    else Effect.runFork(send(attachment))
  }
  return {
    input: (data) => run((a) => a.input(data)),
    resize: (cols, rows) => run((a) => a.resize(cols, rows)),
    stop: () => {
      Effect.runFork(Fiber.interrupt(fiber))
    }
  }
}

/** Short relative time: "12 s ago", "3 min ago", else a local date. */
export const ago = (date: Date, now: number = Date.now()): string => {
  const seconds = Math.round((now - date.getTime()) / 1000)
  if (seconds < 5) return "just now"
  if (seconds < 60) return `${seconds} s ago`
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`
  return date.toLocaleString()
}

/** A duration in ms as "850 ms", "12.3 s", "4 min 2 s". */
export const formatDuration = (ms: number): string => {
  if (ms < 1000) return `${Math.round(ms)} ms`
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`
  const minutes = Math.floor(ms / 60_000)
  return `${minutes} min ${Math.round((ms % 60_000) / 1000)} s`
}
