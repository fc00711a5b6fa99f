/**
 * A raw WebSocket to a node's `/rpc` (or its attach socket), for tests that send what no well-behaved client would:
 * frames of any bytes, and upgrades with any headers, from any local address.
 */
import * as net from "node:net"
import { Effect, Scope } from "effect"
import { Packr } from "msgpackr"
import WebSocket from "ws"
import * as Client from "../../rpc/Client.js"

/** How an upgrade went: the socket, or the HTTP status it was refused with. */
export type Upgrade =
  | { readonly _tag: "Open"; readonly socket: WebSocket }
  | { readonly _tag: "Refused"; readonly status: number; readonly body: string }

/** Options of a raw connection. */
export interface Options {
  readonly headers?: Record<string, string>
  readonly protocols?: ReadonlyArray<string>
  /** The local address to connect from (any 127.x.y.z works on Linux loopback). */
  readonly localAddress?: string
  /** Another WebSocket path than `/rpc` (the attach socket's), with its query. */
  readonly path?: string
}

/** A frame a socket received. */
export interface Frame {
  readonly binary: boolean
  readonly data: Buffer
}

const receivedFrames = new WeakMap<WebSocket, Array<Frame>>()

/**
 * Every frame `socket` (opened by `upgrade`) has received, from the first: they are collected from
 * the moment the socket is made, so none can arrive before anyone listens.
 */
export const framesOf = (socket: WebSocket): ReadonlyArray<Frame> => receivedFrames.get(socket) ?? []

/** Opens `/rpc` of `url`; closed with the scope. */
export const upgrade = (url: string, options: Options = {}): Effect.Effect<Upgrade, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.async<Upgrade>((resume) => {
      const target =
        options.path === undefined ? Client.rpcUrl(url) : `${url.replace(/^http/, "ws")}${options.path}`
      const socket = new WebSocket(target, [...(options.protocols ?? ["vibes.rpc.v1"])], {
        headers: options.headers ?? {},
        ...(options.localAddress !== undefined ? { localAddress: options.localAddress } : {})
      })
      const frames: Array<Frame> = []
      receivedFrames.set(socket, frames)
      socket.on("message", (data: Buffer, binary: boolean) => frames.push({ binary, data }))
      socket.once("open", () => resume(Effect.succeed({ _tag: "Open", socket })))
      socket.once("unexpected-response", (_request, response) => {
        let body = ""
        response.on("data", (chunk: Buffer) => (body += chunk.toString("utf8")))
        response.on("end", () =>
          resume(Effect.succeed({ _tag: "Refused", status: response.statusCode ?? 0, body }))
        )
        response.on("error", () =>
          resume(Effect.succeed({ _tag: "Refused", status: response.statusCode ?? 0, body }))
        )
      })
      socket.on("error", () => undefined)
    }),
    (result) => Effect.sync(() => (result._tag === "Open" ? result.socket.terminate() : undefined))
  )

/** An open, authenticated socket (the test fails when the upgrade is refused). */
export const open = (url: string, token: string, options: Options = {}) =>
  Effect.flatMap(
    upgrade(url, { ...options, headers: { authorization: `Bearer ${token}`, ...(options.headers ?? {}) } }),
    (result) =>
      result._tag === "Open"
        ? Effect.succeed(result.socket)
        : Effect.dieMessage(`the upgrade was refused with ${result.status}: ${result.body}`)
  )

/** How a socket was closed by the server, and every message it got before. */
export interface Closed {
  readonly code: number
  readonly reason: string
  readonly messages: number
}

/**
 * Starts watching `socket` (before anything is sent on it); the effect it returns waits until the
 * server closes it and tells how many messages arrived before.
 */
export const watchClose = (socket: WebSocket): Effect.Effect<Effect.Effect<Closed>> =>
  Effect.sync(() => {
    let messages = 0
    socket.on("message", () => messages++)
    const done = new Promise<Closed>((resolve) =>
      socket.once("close", (code, reason) => resolve({ code, reason: reason.toString("utf8"), messages }))
    )
    return Effect.promise(() => done)
  })

/** A msgpack encoder as the RPC client uses (records on). */
export const packr = () => new Packr({ useRecords: true })

/** The next message the server sends on `socket`, decoded. */
export const nextMessage = (socket: WebSocket, decoder: Packr): Effect.Effect<unknown> =>
  Effect.async<unknown>((resume) => {
    socket.once("message", (data: Buffer) => resume(Effect.succeed(decoder.unpack(data))))
  })

/** Sends raw bytes over a plain TCP connection and collects the answer until the server closes. */
export const rawHttp = (url: string, request: string | Buffer): Effect.Effect<string> =>
  Effect.async<string>((resume) => {
    const target = new URL(url)
    const socket = net.connect(Number(target.port), target.hostname)
    let answer = ""
    socket.on("data", (chunk) => (answer += chunk.toString("latin1")))
    socket.on("error", () => resume(Effect.succeed(answer)))
    socket.on("close", () => resume(Effect.succeed(answer)))
    // Half-closed after the request, so the server ends the connection once it answered.
    socket.end(request)
    return Effect.sync(() => socket.destroy())
  })
