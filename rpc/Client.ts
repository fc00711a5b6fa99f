/**
 * The typed client for a vibes server, usable from Node and from a browser.
 *
 * Node callers provide `NodeSocket.layerWebSocketConstructor`; browsers provide
 * `Socket.layerWebSocketConstructorGlobal`. Browsers normally pass no token: the `vibes_token`
 * cookie set by `/login` travels on the WebSocket upgrade.
 */
import { Context, Effect, Layer, Option, Redacted } from "effect"
import * as Headers from "@effect/platform/Headers"
import * as Socket from "@effect/platform/Socket"
import * as RpcClient from "@effect/rpc/RpcClient"
import type { RpcClientError } from "@effect/rpc/RpcClientError"
import type * as RpcGroup from "@effect/rpc/RpcGroup"
import * as RpcMiddleware from "@effect/rpc/RpcMiddleware"
import * as RpcSerialization from "@effect/rpc/RpcSerialization"
import { AuthMiddleware } from "./Auth.js"
import { EventsRpcs } from "./EventsRpcs.js"
import { JobsRpcs } from "./Jobs.js"
import { ProxyRpcs } from "./Proxy.js"
import { SessionsRpcs } from "./Sessions.js"
import { SystemRpcs } from "./System.js"

/** Every RPC a vibes server answers at `/rpc`. */
export class VibesRpcs extends SystemRpcs.merge(EventsRpcs, SessionsRpcs, JobsRpcs, ProxyRpcs) {}

/** What the client can call: `client.System.Info()`, … */
export type Client = RpcClient.RpcClient<RpcGroup.Rpcs<typeof VibesRpcs>, RpcClientError>

/** The connected client as a service. */
export class VibesClient extends Context.Tag("vibes/VibesClient")<VibesClient, Client>() {}

/** Options for reaching a server. */
export interface ConnectOptions {
  /** Base URL of the server, e.g. `http://127.0.0.1:7432`. `/rpc` is appended. */
  readonly url: string
  /** The admin token; omit in a browser that logged in with the cookie. */
  readonly token: Option.Option<Redacted.Redacted<string>>
}

/** Turns an http(s) base URL into the ws(s) URL of the RPC endpoint. */
export const rpcUrl = (baseUrl: string): string => {
  const url = new URL(baseUrl)
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:"
  url.pathname = `${url.pathname.replace(/\/+$/, "")}/rpc`
  url.search = ""
  url.hash = ""
  return url.toString()
}

/** Adds the bearer token, when there is one, to every request. */
export const layerAuth = (
  token: Option.Option<Redacted.Redacted<string>>
): Layer.Layer<RpcMiddleware.ForClient<AuthMiddleware>> =>
  RpcMiddleware.layerClient(AuthMiddleware, ({ request }) =>
    Effect.succeed(
      Option.match(token, {
        onNone: () => request,
        onSome: (value) => ({
          ...request,
          headers: Headers.set(request.headers, "authorization", `Bearer ${Redacted.value(value)}`)
        })
      })
    )
  )

/** The msgpack-over-WebSocket protocol to `<url>/rpc`. */
export const layerProtocol = (
  url: string
): Layer.Layer<RpcClient.Protocol, never, Socket.WebSocketConstructor> =>
  RpcClient.layerProtocolSocket({ retryTransientErrors: false }).pipe(
    Layer.provide(Socket.layerWebSocket(rpcUrl(url))),
    Layer.provide(RpcSerialization.layerMsgPack)
  )

/** A `VibesClient` connected to `options.url`. */
export const layer = (
  options: ConnectOptions
): Layer.Layer<VibesClient, never, Socket.WebSocketConstructor> =>
  Layer.scoped(VibesClient, RpcClient.make(VibesRpcs)).pipe(
    Layer.provide(layerProtocol(options.url)),
    Layer.provide(layerAuth(options.token))
  )
