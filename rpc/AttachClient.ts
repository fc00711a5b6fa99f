/**
 * The typed attach client: a session's terminal over the attach socket (`AttachProtocol.ts`),
 * from Node (provide `NodeSocket.layerWebSocketConstructor`) or a browser
 * (`Socket.layerWebSocketConstructorGlobal`). The web UI, `vibes attach`, the tests and the
 * benchmarks all attach through it, so resuming is written once:
 *
 * - every byte arrives once and in order: after a dropped connection the client attaches again
 *   with `from` = the next byte it expects, and trims what it already has; when the server no
 *   longer has those bytes it sends a screen instead (an `Attached` with a screen, or `Reset`);
 * - keystrokes typed while no connection is up are sent once one is (a frame that was on its way
 *   when a connection dropped may be lost, as with any terminal over a network);
 * - the connection is attempted again with backoff for `reconnectFor`; the stream says so with a
 *   `Reconnecting` element. It fails with `AttachFailed` when the server refuses the attachment for
 *   good (no such session, bad parameters, credentials) or the time is up.
 */
import { Data, Deferred, Duration, Effect, Option, Queue, Redacted, Schema, type Scope, Stream } from "effect"
import * as Socket from "@effect/platform/Socket"
import { tokenProtocolPrefix } from "./Auth.js"
import {
  AttachCloseCode,
  attachPath,
  attachProtocol,
  decodeOutput,
  Resize,
  ServerMessageJson,
  ClientMessageJson
} from "./AttachProtocol.js"
import { type AttachEvent, maxInputBytes, Output } from "./Sessions.js"

/** The connection dropped; the client is attaching again. */
export class Reconnecting extends Data.TaggedClass("Reconnecting")<{ readonly reason: string }> {}

/** What the stream of an attachment carries: the session's events, and reconnections. */
export type AttachClientEvent = AttachEvent | Reconnecting

/** The server refused the attachment for good, or it could not be restored in time. */
export class AttachFailed extends Schema.TaggedError<AttachFailed>()("AttachFailed", {
  /** The session error's tag (`SessionNotFound`, …), `Unauthorized`, or `Unreachable`. */
  error: Schema.String,
  message: Schema.String
}) {}

/** How to attach. */
export interface AttachOptions {
  /** Base URL of the server, e.g. `http://127.0.0.1:7432`; an effect is asked again at each attempt. */
  readonly url: string | Effect.Effect<string>
  /** The admin token; omit in a browser that logged in with the cookie. */
  readonly token: Option.Option<Redacted.Redacted<string>>
  readonly sessionId: string
  /** Watch only: the server refuses this client's keystrokes and sizes. */
  readonly readOnly?: boolean
  /** The client's terminal size at each (re)attachment; the PTY follows its last writer's size. */
  readonly size?: () => { readonly cols: number; readonly rows: number } | undefined
  /** Scrollback lines in the starting screen (the server's default: 1000). */
  readonly scrollback?: number
  /** How long to keep attaching again after a connection drops (default 2 minutes). */
  readonly reconnectFor?: Duration.DurationInput
}

/** An attachment: its events, and what the client sends. */
export interface Attachment {
  /** The session's events, from `Attached` to `Ended`; read it once. */
  readonly events: Stream.Stream<AttachClientEvent, AttachFailed>
  /** Keystrokes, in order (sent when a connection is up). */
  readonly input: (data: Uint8Array) => Effect.Effect<void>
  /** The client's terminal changed size (only the latest unsent size is sent). */
  readonly resize: (cols: number, rows: number) => Effect.Effect<void>
}

/** Turns an http(s) base URL into the ws(s) URL of a path on it. */
const socketUrl = (baseUrl: string, path: string): string => {
  const url = new URL(baseUrl)
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:"
  const [pathname = "", search = ""] = path.split("?")
  url.pathname = `${url.pathname.replace(/\/+$/, "")}${pathname}`
  url.search = search
  url.hash = ""
  return url.toString()
}

const toBase64Url = (text: string): string => {
  let binary = ""
  for (const byte of new TextEncoder().encode(text)) binary += String.fromCharCode(byte)
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "")
}

/** The subprotocols offered: the attach protocol, and the token when there is one. */
export const attachProtocols = (token: string | undefined): Array<string> =>
  token === undefined ? [attachProtocol] : [attachProtocol, tokenProtocolPrefix + toBase64Url(token)]

/** The HTTP status of a refused upgrade, where the error says (Node does; browsers do not). */
const refusedStatus = (error: unknown): number | undefined => {
  let current: unknown = error
  for (let depth = 0; depth < 10 && typeof current === "object" && current !== null; depth++) {
    if ("message" in current && typeof current.message === "string") {
      const match = /Unexpected server response: (\d{3})\b/.exec(current.message)
      if (match !== null) return Number(match[1])
    }
    current = "cause" in current ? current.cause : "error" in current ? current.error : undefined
  }
  return undefined
}

/** Why one connection ended: for good, or worth attaching again. */
class Dropped extends Data.TaggedError("Dropped")<{ readonly reason: string }> {}

/** What a connection's end means: the session refused for good, or a drop worth retrying. */
const whyClosed = (error: Socket.SocketError, sessionId: string): AttachFailed | Dropped => {
  if (Socket.SocketCloseError.is(error)) {
    const reason =
      error.closeReason !== undefined && error.closeReason !== ""
        ? error.closeReason
        : `closed with ${error.code}`
    switch (error.code) {
      case AttachCloseCode.notFound:
        return new AttachFailed({ error: "SessionNotFound", message: reason })
      case AttachCloseCode.badRequest:
      case AttachCloseCode.protocolError:
      case AttachCloseCode.tooLarge:
        return new AttachFailed({ error: "InvalidSessionRequest", message: reason })
      default:
        return new Dropped({ reason })
    }
  }
  const status = refusedStatus(error)
  if (status === 401) {
    return new AttachFailed({ error: "Unauthorized", message: "the server refused the credentials (401)" })
  }
  if (status === 404 || status === 400) {
    return new AttachFailed({
      error: status === 404 ? "SessionNotFound" : "InvalidSessionRequest",
      message: `the server refused to attach to ${sessionId} (${status})`
    })
  }
  return new Dropped({ reason: status !== undefined ? `refused (${status})` : error.message })
}

const decodeServerMessage = Schema.decodeEither(ServerMessageJson)
const encodeClientMessage = Schema.encodeSync(ClientMessageJson)

/** Attaches to `options.sessionId`; the attachment lasts as long as the scope. */
export const attach = (
  options: AttachOptions
): Effect.Effect<Attachment, never, Scope.Scope | Socket.WebSocketConstructor> =>
  Effect.gen(function* () {
    const construct = yield* Socket.WebSocketConstructor
    // Binary frames as ArrayBuffers (not Blobs, which a browser would hand over asynchronously).
    const binaryConstructor = Socket.WebSocketConstructor.of((url, protocols) => {
      const ws = construct(url, protocols)
      ws.binaryType = "arraybuffer"
      return ws
    })
    const token = Option.getOrUndefined(Option.map(options.token, Redacted.value))
    const reconnectFor = Duration.toMillis(Duration.decode(options.reconnectFor ?? Duration.minutes(2)))

    /** The next output byte the client expects, once it has a screen. */
    let seq: number | undefined
    /** Frames waiting for a connection, oldest first. */
    const outgoing: Array<Uint8Array | Resize> = []
    const doorbell = yield* Queue.sliding<void>(1)
    const ring = Effect.asVoid(Queue.offer(doorbell, undefined))

    /** One connection: its events until the session ends (then the stream ends) or it drops. */
    const connection = Stream.asyncScoped<AttachClientEvent, AttachFailed | Dropped>((emit) =>
      Effect.gen(function* () {
        const size = options.size?.()
        const path = attachPath(options.sessionId, {
          readOnly: options.readOnly,
          cols: size?.cols,
          rows: size?.rows,
          from: seq,
          scrollback: options.scrollback
        })
        const base = typeof options.url === "string" ? options.url : yield* options.url
        const socket = yield* Socket.makeWebSocket(socketUrl(base, path), {
          protocols: attachProtocols(token),
          closeCodeIsError: () => true
        }).pipe(Effect.provideService(Socket.WebSocketConstructor, binaryConstructor))
        const write = yield* socket.writer
        let ended = false
        const opened = yield* Deferred.make<void>()

        const onFrame = (frame: string | Uint8Array | ArrayBuffer) => {
          if (typeof frame !== "string") {
            const output = decodeOutput(frame instanceof Uint8Array ? frame : new Uint8Array(frame))
            if (output === undefined || seq === undefined) return
            // What the client has already (sent again after a resume) is skipped.
            const skip = Math.max(0, seq - output.seq)
            if (skip >= output.data.length) return
            const data = skip === 0 ? output.data : output.data.subarray(skip)
            seq = output.seq + skip + data.length
            void emit.single(new Output({ seq: output.seq + skip, data }))
            return
          }
          const message = decodeServerMessage(frame)
          if (message._tag === "Left") return
          const event = message.right
          switch (event._tag) {
            case "Attached":
              seq = event.seq
              break
            case "Reset":
              seq = event.screen.seq
              break
            case "Ended":
              ended = true
              break
            case "Failure":
              // A refused keystroke or size (read-only, …) goes with the stream; a closing reason
              // comes again with the close.
              return
          }
          void emit.single(event)
        }

        const sender = Effect.gen(function* () {
          yield* Deferred.await(opened)
          for (;;) {
            const next = outgoing.shift()
            if (next === undefined) {
              yield* Queue.take(doorbell)
              continue
            }
            yield* write(next instanceof Resize ? encodeClientMessage(next) : next)
          }
        })
        yield* Effect.forkScoped(sender)

        yield* socket.runRaw(onFrame, { onOpen: Deferred.succeed(opened, undefined) }).pipe(
          Effect.match({
            onFailure: (error) => (ended ? undefined : whyClosed(error, options.sessionId)),
            onSuccess: () => (ended ? undefined : new Dropped({ reason: "the connection closed" }))
          }),
          Effect.flatMap((failure) =>
            Effect.promise(() => (failure === undefined ? emit.end() : emit.fail(failure)))
          ),
          Effect.forkScoped
        )
      })
    )

    /** Connections one after another: a dropped one is followed by another after a pause. */
    const attempts = (since: number, attempt: number): Stream.Stream<AttachClientEvent, AttachFailed> => {
      let attached = false
      return connection.pipe(
        Stream.tap((event) => Effect.sync(() => (attached ||= event._tag === "Attached"))),
        Stream.catchAll((error) => {
          if (error._tag === "AttachFailed") return Stream.fail(error)
          const start = attached ? Date.now() : since
          const next = attached ? 0 : attempt + 1
          if (Date.now() - start > reconnectFor) {
            return Stream.fail(
              new AttachFailed({
                error: "Unreachable",
                message: `could not attach to ${options.sessionId} again within ${Duration.format(Duration.millis(reconnectFor))}: ${error.reason}`
              })
            )
          }
          const pause = Math.min(2000, 100 * 2 ** Math.min(next, 5))
          return Stream.concat(
            Stream.succeed(new Reconnecting({ reason: error.reason })),
            Stream.unwrap(Effect.as(Effect.sleep(Duration.millis(pause)), attempts(start, next)))
          )
        })
      )
    }

    return {
      events: Stream.suspend(() => attempts(Date.now(), 0)),
      input: (data) =>
        Effect.suspend(() => {
          for (let at = 0; at < data.length; at += maxInputBytes)
            outgoing.push(data.subarray(at, at + maxInputBytes))
          return ring
        }),
      resize: (cols, rows) =>
        Effect.suspend(() => {
          const at = outgoing.findIndex((frame) => frame instanceof Resize)
          if (at >= 0) outgoing.splice(at, 1)
          outgoing.push(new Resize({ cols, rows }))
          return ring
        })
    } satisfies Attachment
  })
