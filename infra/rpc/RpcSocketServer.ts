/**
 * The server side of `/rpc`: an `@effect/rpc` protocol over WebSockets that only ever sees
 * connections whose credentials were checked at the upgrade, with limits per connection.
 *
 * Each binary frame holds msgpack messages. A frame over `maxFrameBytes` (refused by the socket
 * before it is buffered whole), more than `maxMessagesPerFrame` messages in one frame, or more
 * than `maxInFlight` requests without an answer close that connection with a close code and a log
 * line; nothing else slows down. A frame that is not msgpack, or a message that is not shaped as
 * the RPC protocol says, closes it as a protocol error: the server never guesses.
 *
 * Every RPC gets the identity of its connection through `AuthMiddleware`.
 */
import { Context, Effect, Layer, Mailbox, Option, Runtime } from "effect"
import * as RpcServer from "@effect/rpc/RpcServer"
import type { FromClientEncoded, FromServerEncoded } from "@effect/rpc/RpcMessage"
import { Packr, Unpackr } from "msgpackr"
import type { WebSocket } from "ws"
import { AuthMiddleware, type Identity, Unauthorized } from "../../rpc/Auth.js"

/** Limits of one connection. */
export interface Limits {
  /** Largest frame accepted, in bytes. */
  readonly maxFrameBytes: number
  /** Most messages one frame may hold. */
  readonly maxMessagesPerFrame: number
  /** Most requests a connection may have waiting for their answer. */
  readonly maxInFlight: number
}

/** The defaults: 1 MiB frames, 16 messages a frame, 256 requests in flight. */
export const defaultLimits: Limits = {
  maxFrameBytes: 1024 * 1024,
  maxMessagesPerFrame: 16,
  maxInFlight: 256
}

/** Close codes this endpoint uses (RFC 6455 §7.4.1). */
export const CloseCode = {
  /** A text frame: the endpoint speaks binary msgpack only. */
  unsupportedData: 1003,
  /** Malformed msgpack, or a message of the wrong shape. */
  protocolError: 1002,
  /** A limit other than the frame size was exceeded. */
  policyViolation: 1008,
  /** The frame was larger than the limit. */
  tooBig: 1009
} as const

/** The connections of the RPC endpoint. */
export class RpcConnections extends Context.Tag("vibes/RpcConnections")<
  RpcConnections,
  {
    readonly limits: Limits
    /** Serves an authenticated, open WebSocket until it closes. */
    readonly serve: (socket: WebSocket, identity: Identity) => void
    /** The identity of a connection, while it is open. */
    readonly identity: (clientId: number) => Option.Option<Identity>
    /** Connections open now. */
    readonly size: () => number
  }
>() {}

const messageTags = new Set(["Request", "Ack", "Interrupt", "Ping", "Eof"])
const requestId = /^\d{1,20}$/

const isStringPair = (value: unknown): value is [string, string] =>
  Array.isArray(value) &&
  value.length === 2 &&
  typeof value[0] === "string" &&
  typeof value[1] === "string" &&
  value[0].length <= 256 &&
  value[1].length <= 8192

const hiddenHeaders = new Set(["authorization", "cookie", "sec-websocket-protocol"])

/** The message as the RPC server expects it, or a reason it is not one. */
export const validate = (value: unknown): FromClientEncoded | string => {
  if (typeof value !== "object" || value === null || Array.isArray(value)) return "a message must be a map"
  if (!("_tag" in value) || typeof value._tag !== "string" || !messageTags.has(value._tag)) {
    return "a message needs a _tag of Request, Ack, Interrupt, Ping or Eof"
  }
  switch (value._tag) {
    case "Ping":
      return { _tag: "Ping" }
    case "Eof":
      return { _tag: "Eof" }
    case "Ack":
    case "Interrupt": {
      const id = "requestId" in value ? value.requestId : undefined
      if (typeof id !== "string" || !requestId.test(id)) return `${value._tag} needs a numeric requestId`
      return { _tag: value._tag, requestId: id }
    }
    default: {
      const id = "id" in value ? value.id : undefined
      const tag = "tag" in value ? value.tag : undefined
      const headers = "headers" in value ? value.headers : []
      if (typeof id !== "string" || !requestId.test(id)) return "a Request needs a numeric id"
      if (typeof tag !== "string" || tag.length === 0 || tag.length > 200) return "a Request needs a tag"
      if (!Array.isArray(headers) || headers.length > 64 || !headers.every(isStringPair)) {
        return "a Request's headers must be at most 64 [name, value] pairs of strings"
      }
      const traceId = "traceId" in value && typeof value.traceId === "string" ? value.traceId : undefined
      const spanId = "spanId" in value && typeof value.spanId === "string" ? value.spanId : undefined
      const sampled = "sampled" in value && typeof value.sampled === "boolean" ? value.sampled : undefined
      return {
        _tag: "Request",
        id,
        tag,
        payload: "payload" in value ? value.payload : undefined,
        headers: headers.filter(([name]) => !hiddenHeaders.has(name.toLowerCase())),
        ...(traceId !== undefined && traceId.length <= 64 ? { traceId } : {}),
        ...(spanId !== undefined && spanId.length <= 64 ? { spanId } : {}),
        ...(sampled !== undefined ? { sampled } : {})
      }
    }
  }
}

interface Connection {
  readonly socket: WebSocket
  readonly identity: Identity
  readonly packr: Packr
  readonly inFlight: Set<string>
}

/** The protocol and the connection registry, for `RpcServer.layer`. */
export const layer = (limits: Limits = defaultLimits): Layer.Layer<RpcServer.Protocol | RpcConnections> =>
  Layer.scopedContext(
    Effect.gen(function* () {
      const runtime = yield* Effect.runtime<never>()
      const runFork = Runtime.runFork(runtime)
      const disconnects = yield* Mailbox.make<number>()
      const connections = new Map<number, Connection>()
      let nextId = 0
      let writeRequest: (clientId: number, message: FromClientEncoded) => Effect.Effect<void> = () =>
        Effect.void

      const refuse = (id: number, connection: Connection, code: number, reason: string) => {
        runFork(
          Effect.logWarning(`closed an RPC connection: ${reason}`).pipe(
            Effect.annotateLogs({ clientAddress: connection.identity.clientAddress, closeCode: code })
          )
        )
        connections.delete(id)
        connection.socket.close(code, reason.slice(0, 120))
      }

      const onFrame = (id: number, connection: Connection, unpackr: Unpackr, data: Buffer) => {
        const messages: Array<FromClientEncoded> = []
        let problem: string | undefined
        try {
          unpackr.unpackMultiple(data, (value: unknown) => {
            if (messages.length >= limits.maxMessagesPerFrame) {
              problem = `more than ${limits.maxMessagesPerFrame} messages in one frame`
              return false
            }
            const message = validate(value)
            if (typeof message === "string") {
              problem = message
              return false
            }
            messages.push(message)
            return true
          })
        } catch {
          return refuse(id, connection, CloseCode.protocolError, "a frame that is not valid msgpack")
        }
        if (problem !== undefined) {
          const code = problem.startsWith("more than") ? CloseCode.policyViolation : CloseCode.protocolError
          return refuse(id, connection, code, problem)
        }
        for (const message of messages) {
          if (message._tag === "Request") {
            if (connection.inFlight.size >= limits.maxInFlight && !connection.inFlight.has(message.id)) {
              return refuse(
                id,
                connection,
                CloseCode.policyViolation,
                `more than ${limits.maxInFlight} requests in flight`
              )
            }
            connection.inFlight.add(message.id)
          }
        }
        runFork(Effect.forEach(messages, (message) => writeRequest(id, message), { discard: true }))
      }

      const serve = (socket: WebSocket, identity: Identity) => {
        const id = nextId++
        // Records (msgpackr's structures) are per connection, on both sides.
        const unpackr = new Unpackr({ useRecords: true })
        const connection: Connection = {
          socket,
          identity,
          packr: new Packr({ useRecords: true }),
          inFlight: new Set()
        }
        connections.set(id, connection)
        socket.on("message", (data, isBinary) => {
          if (!connections.has(id)) return
          if (!isBinary) {
            return refuse(
              id,
              connection,
              CloseCode.unsupportedData,
              "text frames are not accepted; send msgpack"
            )
          }
          const bytes = Array.isArray(data)
            ? Buffer.concat(data)
            : Buffer.isBuffer(data)
              ? data
              : Buffer.from(data)
          onFrame(id, connection, unpackr, bytes)
        })
        socket.on("error", (error) => {
          runFork(
            Effect.logWarning(`RPC connection failed: ${error.message}`).pipe(
              Effect.annotateLogs({ clientAddress: identity.clientAddress })
            )
          )
        })
        socket.once("close", () => {
          connections.delete(id)
          disconnects.unsafeOffer(id)
        })
      }

      const protocol = yield* RpcServer.Protocol.make((write) => {
        writeRequest = write
        return Effect.succeed({
          disconnects,
          send: (clientId: number, response: FromServerEncoded) =>
            Effect.sync(() => {
              const connection = connections.get(clientId)
              if (connection === undefined) return
              if (response._tag === "Exit") connection.inFlight.delete(response.requestId)
              if (connection.socket.readyState !== connection.socket.OPEN) return
              connection.socket.send(connection.packr.pack(response))
            }),
          end: (clientId: number) =>
            Effect.sync(() => {
              connections.get(clientId)?.socket.close(1000)
            }),
          clientIds: Effect.sync(() => new Set(connections.keys())),
          initialMessage: Effect.succeedNone,
          supportsAck: true,
          supportsTransferables: false,
          supportsSpanPropagation: true
        })
      })

      yield* Effect.addFinalizer(() =>
        Effect.sync(() => {
          for (const connection of connections.values()) connection.socket.close(1001, "server stopping")
        })
      )

      return Context.make(RpcServer.Protocol, protocol).pipe(
        Context.add(
          RpcConnections,
          RpcConnections.of({
            limits,
            serve,
            identity: (clientId) =>
              Option.map(Option.fromNullable(connections.get(clientId)), (connection) => connection.identity),
            size: () => connections.size
          })
        )
      )
    })
  )

/** `AuthMiddleware` on the server: each RPC gets its connection's identity. */
export const layerAuth: Layer.Layer<AuthMiddleware, never, RpcConnections> = Layer.effect(
  AuthMiddleware,
  Effect.map(RpcConnections, (connections) =>
    AuthMiddleware.of(({ clientId }) =>
      Option.match(connections.identity(clientId), {
        onNone: () => Effect.fail(new Unauthorized({ message: "this connection is not authenticated" })),
        onSome: Effect.succeed
      })
    )
  )
)
