/**
 * The HTTP surface of a node: `/healthz`, `/readyz`, `/metrics`, `/login`, `/logout`, `/`,
 * `/api/events`, `/api/jobs…`, `/rpc` and `/proxy/…`. Everything but `/healthz` requires the admin
 * token (the proxy also takes a session's proxy token).
 */
import * as http from "node:http"
import { Duration, Effect, Layer, Option } from "effect"
import * as HttpLayerRouter from "@effect/platform/HttpLayerRouter"
import * as HttpMiddleware from "@effect/platform/HttpMiddleware"
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import * as RpcSerialization from "@effect/rpc/RpcSerialization"
import * as RpcServer from "@effect/rpc/RpcServer"
import { SqlClient } from "@effect/sql/SqlClient"
import { cookieName } from "../../rpc/Auth.js"
import { VibesRpcs } from "../../rpc/Client.js"
import { AdminToken } from "../../infra/auth/AdminToken.js"
import * as Credentials from "../../infra/auth/Credentials.js"
import { PrometheusMetrics } from "../../infra/telemetry/Telemetry.js"
import { NodeInfo } from "./NodeInfo.js"
import * as EventsHandlers from "./EventsHandlers.js"
import * as EventsHttp from "./EventsHttp.js"
import * as JobsHandlers from "./JobsHandlers.js"
import * as JobsHttp from "./JobsHttp.js"
import * as SessionsHandlers from "./SessionsHandlers.js"
import * as ProxyHandlers from "./ProxyHandlers.js"
import * as SystemHandlers from "./SystemHandlers.js"
import type { Proxy } from "../../actors/proxy/Proxy.js"
import * as WebUi from "./WebUi.js"
import { securityHeaders } from "./Headers.js"

/** Extra readiness checks beyond the database (e.g. the embedded Postgres supervisor). */
export type ReadinessCheck = Effect.Effect<Option.Option<string>>

const escapeHtml = (text: string) => text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`)

const json = (status: number, body: unknown) =>
  HttpServerResponse.unsafeJson(body, { status, headers: securityHeaders })

const unauthorized = (message: string) => json(401, { error: "Unauthorized", message })

const page = (status: number, title: string, body: string) =>
  HttpServerResponse.text(
    `<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">` +
      `<title>${title}</title></head><body style="font-family:system-ui;max-width:40rem;margin:3rem auto">` +
      `${body}</body></html>`,
    { status, contentType: "text/html; charset=utf-8", headers: securityHeaders }
  )

const loginForm = (message: string) =>
  page(
    401,
    "vibes: log in",
    `<h1>vibes</h1><p>${message}</p><form method="get" action="/login">` +
      `<label for="token">Admin token</label> <input id="token" name="token" type="password" autocomplete="off" required> ` +
      `<button type="submit">Log in</button></form>` +
      `<p>The token is in <code>admin-token</code> in the server's data directory, and in the login URL it prints at start-up.</p>`
  )

/** Runs `handler` when the request carries the admin token, else answers 401. */
const authenticated = <E, R>(
  handler: Effect.Effect<HttpServerResponse.HttpServerResponse, E, R>,
  onMissing: (message: string) => HttpServerResponse.HttpServerResponse = unauthorized
) =>
  Effect.flatMap(HttpServerRequest.HttpServerRequest, (request) =>
    Credentials.check(request.headers).pipe(
      Effect.matchEffect({
        onFailure: (error) => Effect.succeed(onMissing(error.message)),
        onSuccess: () => handler
      })
    )
  )

const healthz = HttpLayerRouter.add("GET", "/healthz", Effect.succeed(json(200, { status: "ok" })))

const readyz = (extra: ReadinessCheck) =>
  HttpLayerRouter.add(
    "GET",
    "/readyz",
    authenticated(
      Effect.gen(function* () {
        const sql = yield* SqlClient
        const node = yield* NodeInfo
        const problem = yield* extra
        if (Option.isSome(problem)) return json(503, { status: "unavailable", reason: problem.value })
        const database = yield* sql`SELECT 1`.pipe(
          Effect.timeout(Duration.seconds(2)),
          Effect.as(Option.none<string>()),
          Effect.catchAll((error) => Effect.succeed(Option.some(`database unreachable: ${error.message}`)))
        )
        return Option.match(database, {
          onNone: () => json(200, { status: "ready", database: node.database, migrations: "applied" }),
          onSome: (reason) => json(503, { status: "unavailable", reason })
        })
      })
    )
  )

const metrics = HttpLayerRouter.add(
  "GET",
  "/metrics",
  authenticated(
    Effect.flatMap(PrometheusMetrics, (prometheus) => prometheus.render).pipe(
      Effect.map((body) =>
        HttpServerResponse.text(body, {
          contentType: "text/plain; version=0.0.4; charset=utf-8",
          headers: securityHeaders
        })
      )
    )
  )
)

// Not access-logged: its URL carries the token.
const login = HttpLayerRouter.add(
  "GET",
  "/login",
  HttpMiddleware.withLoggerDisabled(
    Effect.gen(function* () {
      const request = yield* HttpServerRequest.HttpServerRequest
      const admin = yield* AdminToken
      const token = new URL(request.url, "http://localhost").searchParams.get("token")
      if (token === null || token === "") return loginForm("Log in with the admin token.")
      if (!admin.verify(token)) return loginForm("That token is not valid for this server.")
      // The redirect takes the token out of the address bar and the history.
      return HttpServerResponse.redirect("/", { status: 303, headers: securityHeaders }).pipe(
        HttpServerResponse.unsafeSetCookie(cookieName, token, {
          httpOnly: true,
          sameSite: "strict",
          path: "/",
          maxAge: Duration.days(30),
          secure: request.headers["x-forwarded-proto"] === "https"
        })
      )
    })
  )
)

const logout = (method: "GET" | "POST") =>
  HttpLayerRouter.add(
    method,
    "/logout",
    Effect.succeed(
      HttpServerResponse.redirect("/login", { status: 303, headers: securityHeaders }).pipe(
        HttpServerResponse.expireCookie(cookieName, { path: "/", httpOnly: true, sameSite: "strict" })
      )
    )
  )

/** Sends one file of the built UI, gzipped when the browser takes it. */
const sendAsset = (asset: WebUi.Asset, acceptEncoding: string | undefined) => {
  const gzip = WebUi.acceptsGzip(acceptEncoding) ? asset.gzip : Option.none()
  return HttpServerResponse.uint8Array(
    Option.getOrElse(gzip, () => asset.body),
    {
      contentType: asset.contentType,
      headers: {
        ...securityHeaders,
        "cache-control": asset.immutable ? "private, max-age=31536000, immutable" : "no-store",
        vary: "accept-encoding",
        ...(Option.isSome(gzip) ? { "content-encoding": "gzip" } : {})
      }
    }
  )
}

/** `/`: the web UI for a logged-in browser, the login form for anyone else. */
const home = (web: WebUi.WebUi) =>
  HttpLayerRouter.add(
    "GET",
    "/",
    authenticated(
      Effect.flatMap(HttpServerRequest.HttpServerRequest, (request) => {
        const index = web._tag === "Built" ? web.assets.get("/") : undefined
        if (index !== undefined) return Effect.succeed(sendAsset(index, request.headers["accept-encoding"]))
        return Effect.map(NodeInfo, (node) =>
          page(
            200,
            "vibes",
            `<h1>vibes ${escapeHtml(node.version)}</h1><p>Node <code>${escapeHtml(node.nodeId)}</code> is running ` +
              `with an ${node.database} database.</p>` +
              `<p>${escapeHtml(web._tag === "Missing" ? web.reason : "")}</p>` +
              `<form method="post" action="/logout"><button>Log out</button></form>`
          )
        )
      }),
      (message) => loginForm(message)
    )
  )

/** The UI's other files (`/assets/…`, icons); unknown paths are a 404. */
const assets = (web: WebUi.WebUi) =>
  HttpLayerRouter.add(
    "GET",
    "/assets/*",
    authenticated(
      Effect.map(HttpServerRequest.HttpServerRequest, (request) => {
        const urlPath = new URL(request.url, "http://localhost").pathname
        const asset = web._tag === "Built" ? web.assets.get(urlPath) : undefined
        return asset === undefined
          ? json(404, { error: "NotFound", message: `no such file: ${urlPath}` })
          : sendAsset(asset, request.headers["accept-encoding"])
      })
    )
  )

/**
 * Refuses a request that a page of another origin made with this browser's cookie (a WebSocket
 * upgrade, a form post): when a request says where it comes from, that must be here. Programs
 * (the CLI, curl) send no `Origin` and are not affected; CORS stays closed (no allow headers).
 */
const sameOrigin = HttpLayerRouter.middleware(
  (effect) =>
    Effect.flatMap(HttpServerRequest.HttpServerRequest, (request) => {
      const origin = request.headers["origin"]
      if (origin === undefined || originMatches(origin, request.headers)) return effect
      return Effect.succeed(json(403, foreignOrigin(origin)))
    }),
  { global: true }
)

/** The 403 body for a request from another origin's page. */
const foreignOrigin = (origin: string) => ({
  error: "Forbidden",
  message: `requests from ${origin} are not accepted by this server`
})

/** True when `origin` is this server as the browser reached it. */
export const originMatches = (
  origin: string,
  headers: Readonly<Record<string, string | undefined>>
): boolean => {
  const host = headers["x-forwarded-host"] ?? headers["host"]
  if (host === undefined) return false
  try {
    const url = new URL(origin)
    return (url.protocol === "http:" || url.protocol === "https:") && url.host === host.toLowerCase()
  } catch {
    return false
  }
}

/** `/rpc`: every RPC group over WebSocket with msgpack, each call checked by `AuthMiddleware`. */
const rpc = RpcServer.layerHttpRouter({ group: VibesRpcs, path: "/rpc", protocol: "websocket" }).pipe(
  Layer.provide(SystemHandlers.layer),
  Layer.provide(EventsHandlers.layer),
  Layer.provide(SessionsHandlers.layer),
  Layer.provide(JobsHandlers.layer),
  Layer.provide(ProxyHandlers.layer),
  Layer.provide(Credentials.layerRpc),
  Layer.provide(RpcSerialization.layerMsgPack)
)

/** `/api/events`: the event log as Server-Sent Events. */
const events = (heartbeat: Duration.Duration) =>
  HttpLayerRouter.add("GET", "/api/events", authenticated(EventsHttp.handler(heartbeat)))

/** Options of the routes. */
export interface RouteOptions {
  /** Extra readiness checks beyond the database. */
  readonly readiness: ReadinessCheck
  /** Interval of the SSE heartbeat. */
  readonly sseHeartbeat: Duration.Duration
  /** The built web UI. */
  readonly web: WebUi.WebUi
}

/** Every route of the node. */
export const routes = (options: RouteOptions) =>
  Layer.mergeAll(
    healthz,
    readyz(options.readiness),
    metrics,
    login,
    logout("GET"),
    logout("POST"),
    home(options.web),
    assets(options.web),
    sameOrigin,
    events(options.sseHeartbeat),
    ...JobsHttp.handlers(options.sseHeartbeat).map(([method, path, handler]) =>
      HttpLayerRouter.add(method, path, authenticated(handler))
    ),
    rpc
  )

/**
 * The node's HTTP server. `/proxy/…` requests (the AI-provider proxy) go straight to the proxy
 * before the Effect router sees them: the proxy answers in plain Node callbacks, with no fiber,
 * router or middleware on its path, so it adds well under a millisecond. It checks its own
 * credentials (the admin token or a session's proxy token, never the cookie) and records every
 * request as a `proxy.request` event instead of an access-log line. A request from another
 * origin's page gets the same 403 as everywhere else.
 */
export const createServer = (proxy: Proxy["Type"]): http.Server => {
  const front = (request: http.IncomingMessage, response: http.ServerResponse): boolean => {
    if (request.url?.startsWith("/proxy/") !== true) return false
    const origin = request.headers["origin"]
    const host = request.headers["host"]
    const forwardedHost = request.headers["x-forwarded-host"]
    if (
      origin !== undefined &&
      !originMatches(origin, {
        host,
        "x-forwarded-host": typeof forwardedHost === "string" ? forwardedHost : undefined
      })
    ) {
      request.resume()
      const body = JSON.stringify(foreignOrigin(origin))
      response.writeHead(403, { ...securityHeaders, "content-type": "application/json" })
      response.end(body)
      return true
    }
    proxy.serve(request, response)
    return true
  }
  class NodeServer extends http.Server {
    override emit(event: string, ...args: Array<unknown>): boolean {
      if (event === "request") {
        const [request, response] = args
        if (
          request instanceof http.IncomingMessage &&
          response instanceof http.ServerResponse &&
          front(request, response)
        )
          return true
      }
      return super.emit(event, ...args)
    }
  }
  return new NodeServer()
}
