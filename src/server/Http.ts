/**
 * The HTTP surface of a node: `/healthz`, `/readyz`, `/metrics`, `/login`, `/logout`, `/`,
 * `/api/whoami`, `/api/events`, `/api/jobs…`, `/rpc`, `/proxy/…` and `/hooks/<name>`. Everything
 * but `/healthz` requires credentials, checked before any body or frame is read; for
 * `/hooks/<name>` the credential is the hook's signature over the body (read under a cap, verified
 * before it is parsed).
 *
 * In front of everything (`createServer`): the `Host` header must name this node
 * (`VIBES_ALLOWED_HOSTS`; `/healthz` excepted, for probes), a request from another origin's page
 * is refused, `/proxy/…` goes to the proxy's plain-Node path, and WebSocket upgrades go to the gate
 * (`rpcGate`), which authenticates them before the socket is accepted.
 */
import * as http from "node:http"
import type * as stream from "node:stream"
import { Context, Duration, Effect, Either, FiberSet, Layer, Option, Runtime, Schema } from "effect"
import * as HttpIncomingMessage from "@effect/platform/HttpIncomingMessage"
import * as HttpLayerRouter from "@effect/platform/HttpLayerRouter"
import * as HttpMiddleware from "@effect/platform/HttpMiddleware"
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import * as NodeHttpServerRequest from "@effect/platform-node/NodeHttpServerRequest"
import * as RpcServer from "@effect/rpc/RpcServer"
import { SqlClient } from "@effect/sql/SqlClient"
import { type WebSocket, WebSocketServer } from "ws"
import {
  cookieName,
  type Identity,
  legacyCookieName,
  Principal,
  rpcProtocol,
  type TooManyAttempts,
  type Unauthorized
} from "../../rpc/Auth.js"
import { VibesRpcs } from "../../rpc/Client.js"
import * as AttachProtocol from "../../rpc/AttachProtocol.js"
import { attachProtocol } from "../../rpc/AttachProtocol.js"
import { AttachSession } from "../../rpc/Sessions.js"
import { AdminToken } from "../../infra/auth/AdminToken.js"
import { Authenticator, cookieValue } from "../../infra/auth/Credentials.js"
import { type Client as LoginClient, Logins } from "../../infra/auth/Logins.js"
import * as AllowedHosts from "../../infra/net/AllowedHosts.js"
import * as ClientAddress from "../../infra/net/ClientAddress.js"
import type { StreamSlots } from "../../infra/net/StreamSlots.js"
import * as RpcSocketServer from "../../infra/rpc/RpcSocketServer.js"
import * as RequestMetrics from "../../infra/telemetry/RequestMetrics.js"
import { PrometheusMetrics } from "../../infra/telemetry/Telemetry.js"
import { Emitter } from "../../infra/eventlog/Emitter.js"
import { NodeInfo } from "./NodeInfo.js"
import * as EventsHandlers from "./EventsHandlers.js"
import * as EventsHttp from "./EventsHttp.js"
import * as JobsHandlers from "./JobsHandlers.js"
import * as ArtifactsHandlers from "./ArtifactsHandlers.js"
import * as ArtifactsHttp from "./ArtifactsHttp.js"
import * as RecordingsHandlers from "./RecordingsHandlers.js"
import * as RecordingsHttp from "./RecordingsHttp.js"
import * as JobsHttp from "./JobsHttp.js"
import * as SessionsHandlers from "./SessionsHandlers.js"
import * as SessionsHttp from "./SessionsHttp.js"
import * as WorkspacesHttp from "./WorkspacesHttp.js"
import * as FilesHttp from "./FilesHttp.js"
import * as AttachSocket from "./AttachSocket.js"
import { formatIssue } from "./JsonApi.js"
import * as ProxyHandlers from "./ProxyHandlers.js"
import * as ConversationsHandlers from "./ConversationsHandlers.js"
import * as ConversationsHttp from "./ConversationsHttp.js"
import * as SystemHandlers from "./SystemHandlers.js"
import * as WorkspacesHandlers from "./WorkspacesHandlers.js"
import * as GitHandlers from "./GitHandlers.js"
import * as FilesHandlers from "./FilesHandlers.js"
import * as NotifyHandlers from "./NotifyHandlers.js"
import * as HooksHttp from "./HooksHttp.js"
import type { Proxy } from "../../actors/proxy/Proxy.js"
import * as WebUi from "./WebUi.js"
import { securityHeaders } from "../../infra/net/Headers.js"

/** Extra readiness checks beyond the database (e.g. the embedded Postgres supervisor). */
export type ReadinessCheck = Effect.Effect<Option.Option<string>>

/** What the front door of a node knows: the names it answers to, whom it trusts, its limits. */
export class Edge extends Context.Tag("vibes/Edge")<
  Edge,
  {
    readonly allowedHosts: AllowedHosts.AllowedHosts
    readonly trustedProxies: ClientAddress.TrustedProxies
    /** Long-lived connections per client address. */
    readonly streams: StreamSlots
  }
>() {}

const escapeHtml = (text: string) => text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`)

const json = (status: number, body: unknown, headers: Record<string, string> = {}) =>
  HttpServerResponse.unsafeJson(body, { status, headers: { ...securityHeaders, ...headers } })

const page = (status: number, title: string, body: string, headers: Record<string, string> = {}) =>
  HttpServerResponse.text(
    `<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">` +
      `<title>${title}</title></head><body style="font-family:system-ui;max-width:40rem;margin:3rem auto">` +
      `${body}</body></html>`,
    { status, contentType: "text/html; charset=utf-8", headers: { ...securityHeaders, ...headers } }
  )

const loginForm = (message: string, status = 401, headers: Record<string, string> = {}) =>
  page(
    status,
    "vibes: log in",
    `<h1>vibes</h1><p>${escapeHtml(message)}</p><form method="post" action="/login">` +
      `<label for="token">Admin token</label> <input id="token" name="token" type="password" autocomplete="off" required> ` +
      `<button type="submit">Log in</button></form>` +
      `<p>The token is in <code>admin-token</code> in the server's data directory, and in the login URL it gives at start-up.</p>`,
    headers
  )

/** Where the request comes from, through trusted proxies only. */
export const originOf = (request: HttpServerRequest.HttpServerRequest) =>
  Effect.map(Edge, (edge) =>
    ClientAddress.resolve(edge.trustedProxies, Option.getOrUndefined(request.remoteAddress), request.headers)
  )

const cookieOptions = (secure: boolean, maxAge: Duration.Duration) => ({
  httpOnly: true,
  sameSite: "strict" as const,
  path: "/",
  maxAge,
  secure
})

const expireLoginCookies = (response: HttpServerResponse.HttpServerResponse) =>
  response.pipe(
    HttpServerResponse.expireCookie(cookieName, { path: "/", httpOnly: true, sameSite: "strict" }),
    HttpServerResponse.expireCookie(legacyCookieName, { path: "/", httpOnly: true, sameSite: "strict" })
  )

const refusal = (
  error: Unauthorized | TooManyAttempts,
  onMissing: (message: string) => HttpServerResponse.HttpServerResponse,
  hadCookie: boolean
): HttpServerResponse.HttpServerResponse => {
  if (error._tag === "TooManyAttempts") {
    return json(
      429,
      { error: error._tag, message: error.message, retryAfterSeconds: error.retryAfterSeconds },
      { "retry-after": String(error.retryAfterSeconds), connection: "close" }
    )
  }
  const response = onMissing(error.message)
  return hadCookie ? expireLoginCookies(response) : response
}

/**
 * Runs `handler` as the request's identity when its credentials are good, else answers 401 (or
 * 429 while its address is locked out) without reading the body. A browser login older than the
 * rotation interval gets a new id in the same answer.
 */
const authenticated = <E, R>(
  handler: Effect.Effect<HttpServerResponse.HttpServerResponse, E, R>,
  onMissing: (message: string) => HttpServerResponse.HttpServerResponse = (message) =>
    json(401, { error: "Unauthorized", message }, { connection: "close" })
) =>
  Effect.gen(function* () {
    const request = yield* HttpServerRequest.HttpServerRequest
    const authenticator = yield* Authenticator
    const origin = yield* originOf(request)
    const identity = yield* Effect.either(authenticator.authenticate(request.headers, origin))
    if (Either.isLeft(identity)) {
      const hadCookie = Option.isSome(cookieValue(request.headers["cookie"], cookieName))
      return refusal(identity.left, onMissing, hadCookie)
    }
    const response = yield* Effect.provideService(handler, Principal, identity.right)
    return yield* renewLogin(request, identity.right, origin, response)
  })

/** Gives a browser whose login id is due for rotation its new id. */
const renewLogin = (
  request: HttpServerRequest.HttpServerRequest,
  identity: Identity,
  origin: ClientAddress.Origin,
  response: HttpServerResponse.HttpServerResponse
) =>
  Effect.gen(function* () {
    if (identity.via !== "cookie") return response
    const logins = yield* Logins
    const id = Option.getOrUndefined(cookieValue(request.headers["cookie"], cookieName))
    if (id === undefined) return response
    const login = yield* Effect.orElseSucceed(logins.verify(id), () => Option.none())
    if (Option.isNone(login) || !logins.rotationDue(login.value, new Date())) return response
    const issued = yield* Effect.orElseSucceed(logins.rotate(id, loginClient(request, origin)), () =>
      Option.none()
    )
    return Option.match(issued, {
      onNone: () => response,
      onSome: (next) =>
        HttpServerResponse.unsafeSetCookie(
          response,
          cookieName,
          next.id,
          cookieOptions(origin.secure, Duration.millis(next.login.expiresAt.getTime() - Date.now()))
        )
    })
  })

const loginClient = (
  request: HttpServerRequest.HttpServerRequest,
  origin: ClientAddress.Origin
): LoginClient => ({
  address: origin.address,
  userAgent: request.headers["user-agent"]
})

const healthy = JSON.stringify({ status: "ok" })

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

/** `/api/whoami`: the caller's identity (and a 401 that clears a dead login cookie). */
const whoami = HttpLayerRouter.add(
  "GET",
  "/api/whoami",
  authenticated(
    Effect.map(Principal, (identity) =>
      json(200, {
        kind: identity.kind,
        via: identity.via,
        login: identity.login,
        clientAddress: identity.clientAddress
      })
    )
  )
)

/** The largest login form accepted, in bytes. */
const maxLoginBody = 4096

const LoginForm = Schema.Struct({ token: Schema.String.pipe(Schema.maxLength(1024)) })

/**
 * Logs a browser in with the admin token: the cookie gets a new login id, never the token. The
 * token comes from the form (POST) or from the login URL the server prints (GET `?token=`).
 * Wrong tokens count against the client's address like any refused credential.
 */
const logIn = (token: Effect.Effect<Option.Option<string>, never, HttpServerRequest.HttpServerRequest>) =>
  HttpMiddleware.withLoggerDisabled(
    Effect.gen(function* () {
      const request = yield* HttpServerRequest.HttpServerRequest
      const authenticator = yield* Authenticator
      const admin = yield* AdminToken
      const logins = yield* Logins
      const emitter = yield* Emitter
      const origin = yield* originOf(request)
      const wait = authenticator.lockedFor(origin.address)
      if (wait > 0) {
        const seconds = Math.ceil(wait / 1000)
        return loginForm(`Too many wrong tokens from your address; try again in ${seconds} s.`, 429, {
          "retry-after": String(seconds)
        })
      }
      const given = yield* token
      if (Option.isNone(given) || given.value === "") return loginForm("Log in with the admin token.")
      if (!admin.verify(given.value)) {
        authenticator.refused(origin.address, "login")
        return loginForm("That token is not valid for this server.")
      }
      authenticator.accepted(origin.address)
      const issued = yield* Effect.either(logins.create("admin", loginClient(request, origin)))
      if (Either.isLeft(issued)) {
        yield* Effect.logError(issued.left.message)
        return loginForm("The login could not be recorded; try again.", 503)
      }
      yield* emitter.emit(
        "auth.login",
        {
          clientAddress: origin.address,
          login: issued.right.login.ref,
          userAgent: request.headers["user-agent"]?.slice(0, 300) ?? null
        },
        { component: "auth" }
      )
      yield* Effect.logInfo("logged in").pipe(
        Effect.annotateLogs({ clientAddress: origin.address, login: issued.right.login.ref })
      )
      // The redirect takes a token in the URL out of the address bar and the history.
      return HttpServerResponse.redirect("/", { status: 303, headers: securityHeaders }).pipe(
        HttpServerResponse.expireCookie(legacyCookieName, { path: "/", httpOnly: true, sameSite: "strict" }),
        HttpServerResponse.unsafeSetCookie(
          cookieName,
          issued.right.id,
          cookieOptions(origin.secure, Duration.millis(issued.right.login.expiresAt.getTime() - Date.now()))
        )
      )
    })
  )

// Not access-logged: its URL carries the token.
const loginGet = HttpLayerRouter.add(
  "GET",
  "/login",
  logIn(
    Effect.map(HttpServerRequest.HttpServerRequest, (request) =>
      Option.fromNullable(new URL(request.url, "http://localhost").searchParams.get("token"))
    )
  )
)

const loginPost = HttpLayerRouter.add(
  "POST",
  "/login",
  logIn(
    HttpServerRequest.schemaBodyUrlParams(LoginForm).pipe(
      HttpIncomingMessage.withMaxBodySize(Option.some(maxLoginBody)),
      Effect.map((form) => Option.some(form.token)),
      Effect.orElseSucceed(() => Option.none<string>())
    )
  )
)

/** Revokes the browser's login (every id of it, on every node) and clears its cookies. */
const logout = (method: "GET" | "POST") =>
  HttpLayerRouter.add(
    method,
    "/logout",
    Effect.gen(function* () {
      const request = yield* HttpServerRequest.HttpServerRequest
      const logins = yield* Logins
      const emitter = yield* Emitter
      const origin = yield* originOf(request)
      const id = cookieValue(request.headers["cookie"], cookieName)
      if (Option.isSome(id)) {
        const revoked = yield* Effect.either(logins.revoke(id.value))
        if (Either.isLeft(revoked)) {
          yield* Effect.logError(revoked.left.message)
          return page(503, "vibes", "<p>The login could not be revoked; try again.</p>")
        }
        if (Option.isSome(revoked.right)) {
          yield* emitter.emit(
            "auth.logout",
            { clientAddress: origin.address, login: revoked.right.value.ref },
            { component: "auth" }
          )
        }
      }
      return expireLoginCookies(
        HttpServerResponse.redirect("/login", { status: 303, headers: securityHeaders })
      )
    })
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

/** The 403 body for a request from another origin's page. */
const foreignOrigin = (origin: string) => ({
  error: "Forbidden",
  message: `requests from ${origin.slice(0, 200)} are not accepted by this server`
})

/** True when `origin` is this server as the browser reached it (`host`: the effective host). */
export const originMatches = (origin: string, host: string | undefined): boolean => {
  if (host === undefined) return false
  try {
    const url = new URL(origin)
    return (url.protocol === "http:" || url.protocol === "https:") && url.host === host.toLowerCase()
  } catch {
    return false
  }
}

/**
 * A long-lived stream (events, log follows) holds one of its client's stream slots while open;
 * a client that holds them all gets 429.
 */
const holdingSlot = <E, R>(
  handler: Effect.Effect<HttpServerResponse.HttpServerResponse, E, R>
): Effect.Effect<HttpServerResponse.HttpServerResponse, E, R | Edge | HttpServerRequest.HttpServerRequest> =>
  Effect.gen(function* () {
    const request = yield* HttpServerRequest.HttpServerRequest
    const edge = yield* Edge
    const origin = yield* originOf(request)
    const release = edge.streams.take(origin.address)
    if (release === undefined) {
      return json(
        429,
        {
          error: "TooManyStreams",
          message: `this address holds ${edge.streams.limit} open streams already; close one first`
        },
        { "retry-after": "5" }
      )
    }
    const response = yield* handler.pipe(Effect.onError(() => Effect.sync(release)))
    NodeHttpServerRequest.toServerResponse(request).once("close", release)
    return response
  })

/** `/rpc`: every RPC group, served on the connections the gate accepts. */
const rpc = (limits: RpcSocketServer.Limits) =>
  RpcServer.layer(VibesRpcs).pipe(
    Layer.provide(SystemHandlers.layer),
    Layer.provide(EventsHandlers.layer),
    Layer.provide(SessionsHandlers.layer),
    Layer.provide(JobsHandlers.layer),
    Layer.provide(ArtifactsHandlers.layer),
    Layer.provide(RecordingsHandlers.layer),
    Layer.provide(ProxyHandlers.layer),
    Layer.provide(ConversationsHandlers.layer),
    Layer.provide(WorkspacesHandlers.layer),
    Layer.provide(GitHandlers.layer),
    Layer.provide(FilesHandlers.layer),
    Layer.provide(NotifyHandlers.layer),
    Layer.provide(RpcSocketServer.layerAuth),
    Layer.provide(RequestMetrics.layerRpc),
    Layer.provideMerge(RpcSocketServer.layer(limits))
  )

/** `/api/events`: the event log as Server-Sent Events. */
const events = (heartbeat: Duration.Duration) =>
  HttpLayerRouter.add("GET", "/api/events", authenticated(holdingSlot(EventsHttp.handler(heartbeat))))

/**
 * `/hooks/<name>`: inbound webhooks, authenticated by the hook's own signature, not the vibes
 * token (see HooksHttp).
 */
const hooks = HttpLayerRouter.add(
  "POST",
  "/hooks/:name",
  Effect.flatMap(HttpServerRequest.HttpServerRequest, (request) =>
    Effect.flatMap(originOf(request), (origin) => HooksHttp.receive(origin.address))
  )
)

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
    readyz(options.readiness),
    metrics,
    whoami,
    loginGet,
    loginPost,
    logout("GET"),
    logout("POST"),
    home(options.web),
    assets(options.web),
    events(options.sseHeartbeat),
    hooks,
    ...JobsHttp.handlers(options.sseHeartbeat).map(([method, path, handler, long]) =>
      HttpLayerRouter.add(method, path, authenticated(long ? holdingSlot(handler) : handler))
    ),
    ...ArtifactsHttp.handlers.map(([method, path, handler, long]) =>
      HttpLayerRouter.add(method, path, authenticated(long ? holdingSlot(handler) : handler))
    ),
    ...RecordingsHttp.handlers.map(([method, path, handler, long]) =>
      HttpLayerRouter.add(method, path, authenticated(long ? holdingSlot(handler) : handler))
    ),
    ...SessionsHttp.handlers.map(([method, path, handler]) =>
      HttpLayerRouter.add(method, path, authenticated(handler))
    ),
    ...WorkspacesHttp.handlers.map(([method, path, handler]) =>
      HttpLayerRouter.add(method, path, authenticated(handler))
    ),
    ...FilesHttp.handlers.map(([method, path, handler]) =>
      HttpLayerRouter.add(method, path, authenticated(handler))
    ),
    ...ConversationsHttp.handlers.map(([method, path, handler]) =>
      HttpLayerRouter.add(method, path, authenticated(handler))
    )
  ).pipe(Layer.provide(RequestMetrics.httpMiddleware.layer))

// The front door ---------------------------------------------------------------------------------

/** Handles an upgrade the front door let through. */
export type UpgradeHandler = (request: http.IncomingMessage, socket: stream.Duplex, head: Buffer) => void

/** The node's HTTP server, with the slot for the WebSocket gate. */
export interface NodeServer extends http.Server {
  /** Installs (or, with undefined, removes) the handler of upgrades. */
  setUpgradeHandler(handler: UpgradeHandler | undefined): void
}

/** Answers a raw socket (an upgrade request) with a short HTTP response and closes it. */
export const rejectUpgrade = (
  socket: stream.Duplex,
  status: number,
  body: unknown,
  headers: Record<string, string> = {}
): void => {
  const text = JSON.stringify(body)
  const lines = [
    `HTTP/1.1 ${status} ${http.STATUS_CODES[status] ?? "Error"}`,
    "content-type: application/json",
    `content-length: ${Buffer.byteLength(text)}`,
    "connection: close",
    ...Object.entries({ ...securityHeaders, ...headers }).map(([name, value]) => `${name}: ${value}`)
  ]
  socket.on("error", () => socket.destroy())
  // Destroyed once the answer is out (or after a few seconds if the client does not read it): what
  // the client sends after its refused upgrade is never read, and cannot hold the socket open.
  socket.once("finish", () => socket.destroy())
  setTimeout(() => socket.destroy(), 5000).unref()
  socket.end(`${lines.join("\r\n")}\r\n\r\n${text}`)
}

const pathOf = (url: string | undefined): string => {
  const raw = url ?? "/"
  const query = raw.indexOf("?")
  return query < 0 ? raw : raw.slice(0, query)
}

const wrongHost = (host: string | undefined) => ({
  error: "MisdirectedRequest",
  message: `this node does not answer to host '${(host ?? "").slice(0, 200)}'; list it in VIBES_ALLOWED_HOSTS on the node`
})

/**
 * The node's HTTP server. `/proxy/…` requests (the AI-provider proxy) go straight to the proxy
 * before the Effect router sees them: the proxy answers in plain Node callbacks, with no fiber,
 * router or middleware on its path, so it adds well under a millisecond. It checks its own
 * credentials (the admin token or a session's proxy token, never the cookie) and records every
 * request as a `proxy.request` event instead of an access-log line.
 */
export const createServer = (options: {
  readonly proxy: Proxy["Type"]
  readonly allowedHosts: AllowedHosts.AllowedHosts
  readonly trustedProxies: ClientAddress.TrustedProxies
  /** The node's long-lived connection slots: a proxy request holds one until it is answered. */
  readonly streams: StreamSlots
}): NodeServer => {
  let upgradeHandler: UpgradeHandler | undefined
  const front = (request: http.IncomingMessage, response: http.ServerResponse): boolean => {
    const path = pathOf(request.url)
    // Liveness answers in plain Node, for probes from anywhere: it stalls only when the process does.
    if (path === "/healthz") {
      request.resume()
      response.writeHead(200, { ...securityHeaders, "content-type": "application/json" })
      response.end(request.method === "HEAD" ? undefined : healthy)
      return true
    }
    const origin = ClientAddress.resolve(
      options.trustedProxies,
      request.socket.remoteAddress,
      request.headers
    )
    const reject = (status: number, body: unknown) => {
      request.resume()
      response.writeHead(status, {
        ...securityHeaders,
        "content-type": "application/json",
        connection: "close"
      })
      response.end(JSON.stringify(body))
      return true
    }
    if (!AllowedHosts.allows(options.allowedHosts, origin.host)) return reject(421, wrongHost(origin.host))
    const from = request.headers["origin"]
    if (from !== undefined && !originMatches(from, origin.host)) return reject(403, foreignOrigin(from))
    if (!path.startsWith("/proxy/")) return false
    const release = options.streams.take(origin.address)
    if (release === undefined) {
      response.setHeader("retry-after", "5")
      return reject(429, {
        error: "TooManyStreams",
        message: `this address holds ${options.streams.limit} open streams already; close one first`
      })
    }
    response.once("close", release)
    options.proxy.serve(request, response)
    return true
  }
  const upgrade = (request: http.IncomingMessage, socket: stream.Duplex, head: Buffer) => {
    const origin = ClientAddress.resolve(
      options.trustedProxies,
      request.socket.remoteAddress,
      request.headers
    )
    if (!AllowedHosts.allows(options.allowedHosts, origin.host)) {
      return rejectUpgrade(socket, 421, wrongHost(origin.host))
    }
    const from = request.headers["origin"]
    if (from !== undefined && !originMatches(from, origin.host)) {
      return rejectUpgrade(socket, 403, foreignOrigin(from))
    }
    if (upgradeHandler === undefined) {
      return rejectUpgrade(socket, 503, { error: "Unavailable", message: "the node is starting or stopping" })
    }
    upgradeHandler(request, socket, head)
  }
  class Server extends http.Server {
    setUpgradeHandler(handler: UpgradeHandler | undefined): void {
      upgradeHandler = handler
    }
    override emit(event: string, ...args: Array<unknown>): boolean {
      if (event === "request") {
        const [request, response] = args
        if (
          request instanceof http.IncomingMessage &&
          response instanceof http.ServerResponse &&
          front(request, response)
        )
          return true
      } else if (event === "upgrade") {
        const [request, socket, head] = args
        if (request instanceof http.IncomingMessage && Buffer.isBuffer(head)) {
          upgrade(request, socket as stream.Duplex, head)
          return true
        }
      }
      return super.emit(event, ...args)
    }
  }
  return new Server()
}

/** The query of an attach socket's URL, as text. */
const AttachQuery = Schema.Struct({
  cols: Schema.optional(Schema.NumberFromString.pipe(Schema.int())),
  rows: Schema.optional(Schema.NumberFromString.pipe(Schema.int())),
  readOnly: Schema.optional(Schema.Literal("true", "false", "1", "0")),
  from: Schema.optional(Schema.NumberFromString.pipe(Schema.int(), Schema.nonNegative())),
  scrollback: Schema.optional(Schema.NumberFromString.pipe(Schema.int(), Schema.nonNegative()))
})
const decodeAttachQuery = Schema.decodeUnknownEither(AttachQuery, { onExcessProperty: "error" })

/** The attach request of an upgrade to `/api/sessions/<sessionId>/attach`, or why it is refused. */
const attachRequest = (sessionId: string, url: string | undefined): Either.Either<AttachSession, string> => {
  const query = Object.fromEntries(new URL(url ?? "/", "http://vibes").searchParams)
  return Either.map(
    Either.mapLeft(decodeAttachQuery(query), (error) => formatIssue(error)),
    (parsed) =>
      new AttachSession({
        sessionId,
        readOnly: parsed.readOnly === "true" || parsed.readOnly === "1",
        ...(parsed.cols !== undefined ? { cols: parsed.cols } : {}),
        ...(parsed.rows !== undefined ? { rows: parsed.rows } : {}),
        ...(parsed.from !== undefined ? { from: parsed.from } : {}),
        ...(parsed.scrollback !== undefined ? { scrollback: parsed.scrollback } : {})
      })
  )
}

/**
 * The WebSocket gate: `/rpc` (the typed RPC) and `/api/sessions/<id>/attach` (the attach socket).
 * Credentials are checked before the upgrade is accepted, so no frame of an unauthenticated client
 * is ever read; an attach socket's parameters and session are checked then too (400, 404).
 */
export const rpcGate = (server: NodeServer, limits: RpcSocketServer.Limits) =>
  Layer.scopedDiscard(
    Effect.gen(function* () {
      const authenticator = yield* Authenticator
      const connections = yield* RpcSocketServer.RpcConnections
      const sessions = yield* SessionsHandlers.SessionsApi
      const edge = yield* Edge
      const runFork = Runtime.runFork(yield* Effect.runtime<never>())
      // Attach sockets end with the node (their clients attach again).
      const attachments = yield* FiberSet.make()
      const runAttachment = yield* FiberSet.runtime(attachments)<SessionsHandlers.SessionsApi>()
      const rpcSockets = new WebSocketServer({
        noServer: true,
        maxPayload: limits.maxFrameBytes,
        perMessageDeflate: false,
        clientTracking: false,
        handleProtocols: (protocols) => (protocols.has(rpcProtocol) ? rpcProtocol : false)
      })
      const attachSockets = new WebSocketServer({
        noServer: true,
        maxPayload: AttachSocket.maxPayload,
        perMessageDeflate: false,
        clientTracking: false,
        handleProtocols: (protocols) => (protocols.has(attachProtocol) ? attachProtocol : false)
      })
      const tooManyStreams = {
        error: "TooManyStreams",
        message: `this address holds ${edge.streams.limit} open connections already`
      }
      /** Accepts the upgrade on `wss` holding one of the address's stream slots, then `use`s it. */
      const accept = (
        wss: WebSocketServer,
        request: http.IncomingMessage,
        socket: stream.Duplex,
        head: Buffer,
        address: string,
        use: (ws: WebSocket) => void
      ) => {
        if (socket.destroyed) return
        if (edge.streams.held(address) >= edge.streams.limit) {
          return rejectUpgrade(socket, 429, tooManyStreams, { "retry-after": "5" })
        }
        wss.handleUpgrade(request, socket, head, (ws) => {
          const release = edge.streams.take(address)
          if (release === undefined)
            return ws.close(RpcSocketServer.CloseCode.policyViolation, "too many connections")
          ws.once("close", release)
          use(ws)
        })
      }
      server.setUpgradeHandler((request, socket, head) => {
        const path = pathOf(request.url)
        const attachTo = AttachProtocol.sessionOfPath(path)
        if (path !== "/rpc" && attachTo === undefined) {
          return rejectUpgrade(socket, 404, {
            error: "NotFound",
            message: "WebSockets are served at /rpc and /api/sessions/<id>/attach"
          })
        }
        const origin = ClientAddress.resolve(
          edge.trustedProxies,
          request.socket.remoteAddress,
          request.headers
        )
        runFork(
          authenticator.authenticate(request.headers, origin).pipe(
            Effect.matchEffect({
              onFailure: (error) =>
                Effect.sync(() =>
                  error._tag === "TooManyAttempts"
                    ? rejectUpgrade(
                        socket,
                        429,
                        {
                          error: error._tag,
                          message: error.message,
                          retryAfterSeconds: error.retryAfterSeconds
                        },
                        { "retry-after": String(error.retryAfterSeconds) }
                      )
                    : rejectUpgrade(socket, 401, { error: error._tag, message: error.message })
                ),
              onSuccess: (identity) => {
                if (attachTo === undefined) {
                  return Effect.sync(() =>
                    accept(rpcSockets, request, socket, head, origin.address, (ws) =>
                      connections.serve(ws, identity)
                    )
                  )
                }
                const attach = attachRequest(attachTo, request.url)
                if (Either.isLeft(attach)) {
                  return Effect.sync(() =>
                    rejectUpgrade(socket, 400, { error: "InvalidSessionRequest", message: attach.left })
                  )
                }
                return sessions.exists(attachTo).pipe(
                  Effect.match({
                    onFailure: (error) =>
                      rejectUpgrade(socket, error._tag === "SessionNotFound" ? 404 : 503, {
                        error: error._tag,
                        message: error.message
                      }),
                    onSuccess: () =>
                      accept(attachSockets, request, socket, head, origin.address, (ws) => {
                        runAttachment(AttachSocket.serve(ws, attach.right))
                      })
                  })
                )
              }
            })
          )
        )
      })
      yield* Effect.addFinalizer(() =>
        Effect.sync(() => {
          server.setUpgradeHandler(undefined)
          rpcSockets.close()
          attachSockets.close()
        })
      )
    })
  )

export const rpcEndpoint = (server: NodeServer, limits: RpcSocketServer.Limits) =>
  rpcGate(server, limits).pipe(Layer.provideMerge(rpc(limits)), Layer.provide(SessionsHandlers.apiLayer))
