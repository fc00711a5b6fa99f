/**
 * The sessions REST API, for scripts, curl and other languages (the same calls as the typed
 * client's `Sessions` group):
 *
 * - `GET    /api/sessions[?state=S]`: newest first;
 * - `POST   /api/sessions` with a session spec (as `vibes/rpc`'s `CreateSession`): 201 and the session;
 * - `GET    /api/sessions/:id`;
 * - `DELETE /api/sessions/:id`: closes it (its program gets SIGHUP), 200 and the session;
 * - `POST   /api/sessions/:id/input`: the bytes to type, as the raw body (any type but JSON), or
 *   JSON `{ "text": "…" }` or `{ "base64": "…" }`; 204;
 * - `POST   /api/sessions/:id/resize` with `{ "cols": C, "rows": R }`: 204;
 * - `POST   /api/sessions/:id/signal` with `{ "signal": "INT" | "TERM" | "HUP" | "KILL" }`: 204;
 * - `GET    /api/sessions/:id/screen[?format=text|vt|json]`: the screen now, as text (the default),
 *   as the VT sequence that redraws it, or as JSON (both, with the cursor and size).
 *
 * Errors are JSON `{ error, message }` (and `field`, naming a refused field): 400 bad input, 404
 * unknown session, 409 the session is not running, 413 a body over its limit, 422 the program
 * could not start, 503 the session's node cannot be reached now.
 */
import { Effect, Either, Schema } from "effect"
import * as HttpRouter from "@effect/platform/HttpRouter"
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import {
  CreateSession,
  maxInputBytes,
  Screen,
  type SessionError,
  SessionInfo,
  SessionSignal,
  SessionState
} from "../../rpc/Sessions.js"
import { securityHeaders } from "../../infra/net/Headers.js"
import { badRequest, json, jsonBody, rawBody, refuse } from "./JsonApi.js"
import { SessionsApi } from "./SessionsHandlers.js"
import type { WorkspaceError } from "../../rpc/Workspaces.js"
import * as WorkspacesHttp from "./WorkspacesHttp.js"

/** The largest JSON body accepted: a session spec, or input as base64 or escaped text. */
const maxJsonBytes = 4 * maxInputBytes

/** The largest body of a resize or a signal, a few fields. */
const maxSmallJsonBytes = 4096

const statusOf = (error: SessionError | WorkspaceError): number => {
  switch (error._tag) {
    case "SessionNotFound":
      return 404
    case "InvalidSessionRequest":
      return 400
    case "SpawnFailed":
      return 422
    case "SessionNotRunning":
      return 409
    case "ReadOnlyAttachment":
      return 403
    case "SessionUnavailable":
      return 503
    default:
      return WorkspacesHttp.statusOf(error)
  }
}

const failure = (error: SessionError | WorkspaceError) =>
  json(statusOf(error), {
    error: error._tag,
    message: error.message,
    ...(error._tag === "InvalidSessionRequest" || error._tag === "InvalidWorkspaceRequest"
      ? { field: error.field }
      : {})
  })

const noContent = HttpServerResponse.empty({ status: 204, headers: securityHeaders })

const encodeInfo = Schema.encodeSync(SessionInfo)
const encodeInfos = Schema.encodeSync(Schema.Array(SessionInfo))
const encodeScreen = Schema.encodeSync(Screen)

/** Answers `call`'s success with `ok`, its session error with the matching status. */
const answer = <A, R>(
  call: Effect.Effect<A, SessionError | WorkspaceError, R>,
  ok: (value: A) => HttpServerResponse.HttpServerResponse
) => Effect.match(call, { onFailure: failure, onSuccess: ok })

const sessionId = Effect.map(HttpRouter.params, (params) => params["id"] ?? "")

const query = Effect.map(
  HttpServerRequest.HttpServerRequest,
  (request) => new URL(request.url, "http://localhost").searchParams
)

const list = Effect.gen(function* () {
  const api = yield* SessionsApi
  const raw = (yield* query).get("state")
  if (raw !== null && !Schema.is(SessionState)(raw)) {
    return badRequest(
      `state must be one of ${SessionState.literals.join(", ")}, not ${JSON.stringify(raw.slice(0, 40))}`
    )
  }
  return yield* answer(api["Sessions.List"](raw === null ? {} : { state: raw }), (infos) =>
    json(200, encodeInfos(infos))
  )
})

const create = Effect.gen(function* () {
  const api = yield* SessionsApi
  const spec = yield* jsonBody(CreateSession, maxJsonBytes)
  if (Either.isLeft(spec)) return refuse(spec.left)
  return yield* answer(api["Sessions.Create"](spec.right), (info) => json(201, encodeInfo(info)))
})

const get = Effect.gen(function* () {
  const api = yield* SessionsApi
  return yield* answer(api["Sessions.Get"]({ sessionId: yield* sessionId }), (info) =>
    json(200, encodeInfo(info))
  )
})

const close = Effect.gen(function* () {
  const api = yield* SessionsApi
  return yield* answer(api["Sessions.Close"]({ sessionId: yield* sessionId }), (info) =>
    json(200, encodeInfo(info))
  )
})

const InputJson = Schema.Union(
  Schema.Struct({ text: Schema.String }),
  Schema.Struct({ base64: Schema.Uint8ArrayFromBase64 })
)

const encoder = new TextEncoder()

const isJson = (contentType: string | undefined) =>
  /^application\/json\s*(;|$)/i.test((contentType ?? "").trim())

const input = Effect.gen(function* () {
  const api = yield* SessionsApi
  const request = yield* HttpServerRequest.HttpServerRequest
  const id = yield* sessionId
  const data = isJson(request.headers["content-type"])
    ? Either.map(yield* jsonBody(InputJson, maxJsonBytes), (body) =>
        "text" in body ? encoder.encode(body.text) : body.base64
      )
    : yield* rawBody(maxInputBytes)
  if (Either.isLeft(data)) return refuse(data.left)
  if (data.right.length > maxInputBytes) {
    return refuse({
      status: 413,
      message: `input of ${data.right.length} bytes is larger than the limit of ${maxInputBytes} bytes; send it in parts`
    })
  }
  return yield* answer(api["Sessions.Input"]({ sessionId: id, data: data.right }), () => noContent)
})

const resize = Effect.gen(function* () {
  const api = yield* SessionsApi
  const id = yield* sessionId
  const size = yield* jsonBody(Schema.Struct({ cols: Schema.Int, rows: Schema.Int }), maxSmallJsonBytes)
  if (Either.isLeft(size)) return refuse(size.left)
  return yield* answer(api["Sessions.Resize"]({ sessionId: id, ...size.right }), () => noContent)
})

const signal = Effect.gen(function* () {
  const api = yield* SessionsApi
  const id = yield* sessionId
  const body = yield* jsonBody(Schema.Struct({ signal: SessionSignal }), maxSmallJsonBytes)
  if (Either.isLeft(body)) return refuse(body.left)
  return yield* answer(api["Sessions.Signal"]({ sessionId: id, signal: body.right.signal }), () => noContent)
})

const formats = ["text", "vt", "json"] as const

const screen = Effect.gen(function* () {
  const api = yield* SessionsApi
  const id = yield* sessionId
  const format = (yield* query).get("format") ?? "text"
  if (!formats.some((known) => known === format)) {
    return badRequest(
      `format must be one of ${formats.join(", ")}, not ${JSON.stringify(format.slice(0, 40))}`
    )
  }
  return yield* answer(api["Sessions.Snapshot"]({ sessionId: id }), (screen) =>
    format === "json"
      ? json(200, encodeScreen(screen))
      : HttpServerResponse.text(format === "vt" ? screen.vt : `${screen.text}\n`, {
          headers: securityHeaders,
          contentType: "text/plain; charset=utf-8"
        })
  )
})

/** Every sessions route's handler, by method and path; the caller checks credentials first. */
export const handlers = [
  ["GET", "/api/sessions", list],
  ["POST", "/api/sessions", create],
  ["GET", "/api/sessions/:id", get],
  ["DELETE", "/api/sessions/:id", close],
  ["POST", "/api/sessions/:id/input", input],
  ["POST", "/api/sessions/:id/resize", resize],
  ["POST", "/api/sessions/:id/signal", signal],
  ["GET", "/api/sessions/:id/screen", screen]
] as const
