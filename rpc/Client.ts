/**
 * The typed client for a vibes server, usable from Node and from a browser.
 *
 * Node callers provide `NodeSocket.layerWebSocketConstructor`; browsers provide
 * `Socket.layerWebSocketConstructorGlobal`. Browsers normally pass no token: the login cookie set
 * by `/login` travels on the WebSocket upgrade. A server that refuses the credentials refuses the
 * upgrade itself (401, or 429 after too many failures), so every call fails with `RpcClientError`;
 * `isRefusal` tells that apart from a network failure.
 */
import { Context, Layer, Option, Redacted } from "effect"
import * as Socket from "@effect/platform/Socket"
import * as RpcClient from "@effect/rpc/RpcClient"
import type { RpcClientError } from "@effect/rpc/RpcClientError"
import type * as RpcGroup from "@effect/rpc/RpcGroup"
import * as RpcSerialization from "@effect/rpc/RpcSerialization"
import { rpcProtocols } from "./Auth.js"
import { ArtifactsRpcs } from "./Artifacts.js"
import { EventsRpcs } from "./EventsRpcs.js"
import { JobsRpcs } from "./Jobs.js"
import { ProxyRpcs } from "./Proxy.js"
import { ConversationsRpcs } from "./Conversations.js"
import { RecordingsRpcs } from "./Recordings.js"
import { SessionsRpcs } from "./Sessions.js"
import { RequestMetrics } from "./RequestMetrics.js"
import { SystemRpcs } from "./System.js"
import { WorkspacesRpcs } from "./Workspaces.js"
import { GitRpcs } from "./Git.js"
import { FilesRpcs } from "./Files.js"
import { NotifyRpcs } from "./Notify.js"

/** Every RPC a vibes server answers at `/rpc`. */
export class VibesRpcs extends SystemRpcs.merge(
  EventsRpcs,
  SessionsRpcs,
  JobsRpcs,
  ArtifactsRpcs,
  RecordingsRpcs,
  ProxyRpcs,
  ConversationsRpcs,
  WorkspacesRpcs,
  GitRpcs,
  FilesRpcs,
  NotifyRpcs
).middleware(RequestMetrics) {}

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

/**
 * The msgpack-over-WebSocket protocol to `<url>/rpc`. The token, when there is one, travels once in
 * the upgrade's subprotocol list; a browser without one is authenticated by its login cookie.
 */
export const layerProtocol = (
  url: string,
  token: Option.Option<Redacted.Redacted<string>> = Option.none()
): Layer.Layer<RpcClient.Protocol, never, Socket.WebSocketConstructor> =>
  RpcClient.layerProtocolSocket({ retryTransientErrors: false }).pipe(
    Layer.provide(
      Layer.effect(
        Socket.Socket,
        Socket.makeWebSocket(rpcUrl(url), {
          protocols: rpcProtocols(Option.getOrUndefined(Option.map(token, Redacted.value)))
        })
      )
    ),
    Layer.provide(RpcSerialization.layerMsgPack)
  )

/** A `VibesClient` connected to `options.url`. */
export const layer = (
  options: ConnectOptions
): Layer.Layer<VibesClient, never, Socket.WebSocketConstructor> =>
  Layer.scoped(VibesClient, RpcClient.make(VibesRpcs)).pipe(
    Layer.provide(layerProtocol(options.url, options.token))
  )

/** Why a server refused a connection, as far as the error tells (Node clients see the status). */
export type Refusal = "unauthorized" | "too-many-attempts"

/**
 * Finds the HTTP status of a refused upgrade in an error's chain of causes: 401 (credentials
 * refused) or 429 (too many refused credentials from this address). Browsers do not expose it.
 */
export const refusalOf = (error: unknown): Option.Option<Refusal> => {
  let current: unknown = error
  for (let depth = 0; depth < 10 && typeof current === "object" && current !== null; depth++) {
    if ("message" in current && typeof current.message === "string") {
      const match = /Unexpected server response: (401|429)\b/.exec(current.message)
      if (match !== null) return Option.some(match[1] === "401" ? "unauthorized" : "too-many-attempts")
    }
    current = "cause" in current ? current.cause : "reason" in current ? undefined : undefined
  }
  return Option.none()
}
