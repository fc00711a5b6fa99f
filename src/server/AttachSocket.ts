/**
 * The server side of the attach socket (`rpc/AttachProtocol.ts`): one WebSocket per attached
 * client, whose credentials and parameters the gate checked before the upgrade. Output goes out as
 * binary frames without acknowledgements, reading the session only while the socket's send buffer
 * is within its window; keystrokes that arrive while one `Input` is on its way gather into the
 * next. Control stays with the session calls (`SessionsApi`), so the socket adds no second path
 * into the session.
 */
import { Deferred, Effect, Option, Queue, Schema, Stream } from "effect"
import type { WebSocket } from "ws"
import {
  AttachCloseCode,
  ClientMessageJson,
  Failure,
  maxClientFrameBytes,
  sendWindowBytes,
  type ServerMessage,
  ServerMessageJson,
  encodeOutput
} from "../../rpc/AttachProtocol.js"
import { type AttachSession, maxInputBytes, type SessionError } from "../../rpc/Sessions.js"
import { SessionsApi } from "./SessionsHandlers.js"

const encodeMessage = Schema.encodeSync(ServerMessageJson)
const decodeClientMessage = Schema.decodeUnknownEither(ClientMessageJson)

/** The close code that tells a client what a session error means for it. */
export const closeCodeOf = (error: SessionError): number => {
  switch (error._tag) {
    case "SessionNotFound":
      return AttachCloseCode.notFound
    case "InvalidSessionRequest":
      return AttachCloseCode.badRequest
    default:
      return AttachCloseCode.unavailable
  }
}

/** A WebSocket close reason is at most 123 bytes. */
const reasonOf = (message: string) => (message.length > 120 ? `${message.slice(0, 117)}...` : message)

type Incoming =
  | { readonly _tag: "Keys"; readonly data: Uint8Array }
  | { readonly _tag: "Resize"; readonly cols: number; readonly rows: number }

/** Serves `request` on `ws` until the session ends, the client goes or the node stops. */
export const serve = (ws: WebSocket, request: AttachSession): Effect.Effect<void, never, SessionsApi> =>
  Effect.gen(function* () {
    const api = yield* SessionsApi
    const sessionId = request.sessionId
    const attachment = yield* Deferred.make<string>()
    const gone = yield* Deferred.make<void>()
    const incoming = yield* Queue.unbounded<Incoming>()
    let queuedBytes = 0
    let paused = false

    const close = (code: number, reason: string) =>
      Effect.sync(() => {
        if (ws.readyState === ws.OPEN || ws.readyState === ws.CONNECTING) ws.close(code, reasonOf(reason))
      })

    /** Sends a frame; waits for it to leave only when the send buffer is beyond the window. */
    const send = (frame: Uint8Array | string) =>
      Effect.async<void>((resume) => {
        if (ws.readyState !== ws.OPEN) return resume(Effect.void)
        let waiting = false
        ws.send(frame, () => {
          if (waiting) resume(Effect.void)
        })
        if (ws.bufferedAmount > sendWindowBytes) waiting = true
        else resume(Effect.void)
      })
    const sendMessage = (message: ServerMessage) => send(encodeMessage(message))

    ws.on("message", (data: Buffer, isBinary: boolean) => {
      if (isBinary) {
        queuedBytes += data.length
        Queue.unsafeOffer(incoming, { _tag: "Keys", data: new Uint8Array(data) })
        // A client that types faster than the session takes it is read no further for now.
        if (queuedBytes > 2 * maxInputBytes && !paused) {
          paused = true
          ws.pause()
        }
        return
      }
      const message = decodeClientMessage(data.toString("utf8"))
      if (message._tag === "Left") {
        ws.close(AttachCloseCode.protocolError, "a text frame must be a Resize message")
        return
      }
      Queue.unsafeOffer(incoming, message.right)
    })
    ws.once("close", () => Deferred.unsafeDone(gone, Effect.void))
    // A frame over the limit, or one that breaks the WebSocket protocol: ws closes the socket
    // (1009, 1002) and reports it here; the close ends the attachment.
    ws.on("error", () => undefined)
    if (ws.readyState !== ws.OPEN) yield* Deferred.succeed(gone, undefined)

    const refused = (error: SessionError) =>
      sendMessage(new Failure({ error: error._tag, message: error.message }))

    // Keystrokes and resizes, in the order the client sent them; keys that wait meanwhile go as one.
    const forward = Effect.gen(function* () {
      const attachmentId = yield* Deferred.await(attachment)
      /** What was taken to see whether it fits the keys before it, and did not: it goes next. */
      let carried: Incoming | undefined
      for (;;) {
        const first = carried ?? (yield* Queue.take(incoming))
        carried = undefined
        if (first._tag === "Resize") {
          yield* api["Sessions.Resize"]({ sessionId, cols: first.cols, rows: first.rows, attachmentId }).pipe(
            Effect.catchAll(refused)
          )
          continue
        }
        const keys = [first.data]
        let size = first.data.length
        while (size < maxInputBytes) {
          const next = yield* Queue.poll(incoming)
          if (Option.isNone(next)) break
          if (next.value._tag !== "Keys" || size + next.value.data.length > maxInputBytes) {
            carried = next.value
            break
          }
          keys.push(next.value.data)
          size += next.value.data.length
        }
        const data = keys.length === 1 ? first.data : Buffer.concat(keys)
        queuedBytes -= size
        if (paused && queuedBytes <= maxInputBytes) {
          paused = false
          ws.resume()
        }
        yield* api["Sessions.Input"]({ sessionId, data, attachmentId }).pipe(Effect.catchAll(refused))
      }
    })

    const output = api["Sessions.Attach"](request).pipe(
      Stream.runForEach((event) => {
        switch (event._tag) {
          case "Attached":
            return Effect.zipRight(Deferred.succeed(attachment, event.attachmentId), sendMessage(event))
          case "Output":
            return send(encodeOutput(event.seq, event.data))
          case "Ended":
            return Effect.zipRight(
              sendMessage(event),
              close(AttachCloseCode.ended, `the session is ${event.state}`)
            )
          default:
            return sendMessage(event)
        }
      }),
      Effect.catchAll((error) => Effect.zipRight(refused(error), close(closeCodeOf(error), error.message)))
    )

    yield* Effect.raceFirst(
      Effect.raceFirst(output, Effect.zipRight(forward, Effect.never)),
      Deferred.await(gone)
    ).pipe(
      // The node stops: the client attaches again, here after the restart or elsewhere.
      Effect.onInterrupt(() => close(AttachCloseCode.goingAway, "the node is stopping; attach again"))
    )
  })

/** Frames larger than this are refused by the WebSocket server itself (close 1009). */
export const maxPayload = maxClientFrameBytes
