/**
 * `GET /api/events`: the event log as Server-Sent Events.
 *
 * Query: `types` (globs, repeated or comma-separated), `session`, `job`, `tenant`, `from` (an
 * offset, `latest`, or an ISO time), `consumer` (resume after its committed offset) and `limit`
 * (end after that many events). `Last-Event-ID` wins over `from`: the stream resumes just after
 * it. Each event's `id:` is its offset and `data:` its JSON; a comment goes out every heartbeat
 * interval; a subscriber that falls behind gets `event: lagged` and is closed, and its
 * EventSource reconnects from where it was.
 */
import { Readable } from "node:stream"
import { Duration, Effect, Either, Exit, Option, Runtime, Schema, Scope } from "effect"
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import * as NodeHttpServerRequest from "@effect/platform-node/NodeHttpServerRequest"
import { compileFilter, EventFilter, StoredEvent } from "../../rpc/Events.js"
import { consumerPattern, type Start } from "../../rpc/EventsRpcs.js"
import { hasControl, isStorable } from "../../rpc/Text.js"
import { EventBus } from "../../infra/eventlog/EventBus.js"
import { EventLog } from "../../infra/eventlog/EventLog.js"
import { resolveStart } from "./EventsHandlers.js"
import { sseHeaders } from "../../infra/net/Headers.js"

/** A request the endpoint refuses, with the reason. */
export interface BadRequest {
  readonly _tag: "BadRequest"
  readonly message: string
}

/** What a valid request asks for. */
export interface Query {
  readonly filter: EventFilter
  readonly start: Start
  readonly limit: Option.Option<number>
}

const bad = (message: string): Either.Either<never, BadRequest> =>
  Either.left({ _tag: "BadRequest", message })

const idParam = /^[^\s]{1,200}$/
const offsetText = /^\d{1,15}$/

/** Checks the query string and `Last-Event-ID`; nothing is subscribed until both are valid. */
export const parseQuery = (
  params: URLSearchParams,
  lastEventId: string | undefined
): Either.Either<Query, BadRequest> => {
  for (const key of params.keys()) {
    if (!["types", "session", "job", "tenant", "from", "consumer", "limit"].includes(key)) {
      return bad(`unknown parameter '${key}'; use types, session, job, tenant, from, consumer or limit`)
    }
  }
  const types = params
    .getAll("types")
    .flatMap((value) => value.split(","))
    .map((glob) => glob.trim())
    .filter((glob) => glob !== "")
  const ids: Record<string, string> = {}
  for (const [param, field] of [
    ["session", "sessionId"],
    ["job", "jobId"],
    ["tenant", "tenantId"]
  ] as const) {
    const value = params.get(param)
    if (value === null) continue
    // Nor control characters: NUL cannot even be compared by Postgres.
    if (!idParam.test(value) || hasControl(value) || !isStorable(value)) {
      return bad(`'${param}' must be 1 to 200 characters without spaces or control characters`)
    }
    ids[field] = value
  }
  const filter = EventFilter.make({ types, ...ids })
  const compiled = compileFilter(filter)
  if (Either.isLeft(compiled)) return bad(compiled.left.message)

  let limit = Option.none<number>()
  const limitText = params.get("limit")
  if (limitText !== null) {
    if (!offsetText.test(limitText) || Number(limitText) < 1) {
      return bad(`'limit' must be a positive integer, not '${limitText.slice(0, 40)}'`)
    }
    limit = Option.some(Number(limitText))
  }

  let start: Start = { _tag: "Latest" }
  if (lastEventId !== undefined && lastEventId.trim() !== "") {
    const id = lastEventId.trim()
    if (!offsetText.test(id)) return bad(`Last-Event-ID must be an event offset, not '${id.slice(0, 40)}'`)
    start = { _tag: "Offset", offset: Number(id) + 1 }
  } else if (params.get("consumer") !== null) {
    const name = params.get("consumer") ?? ""
    if (!consumerPattern.test(name)) {
      return bad("'consumer' must be 1 to 100 letters, digits, '.', '_', ':' or '-'")
    }
    if (params.get("from") !== null) return bad("give either 'from' or 'consumer', not both")
    start = { _tag: "Consumer", name }
  } else {
    const from = params.get("from")
    if (from !== null) {
      if (from === "latest") start = { _tag: "Latest" }
      else if (offsetText.test(from)) start = { _tag: "Offset", offset: Number(from) }
      else {
        const time = Date.parse(from)
        if (!/^\d{4}-\d{2}-\d{2}/.test(from) || Number.isNaN(time)) {
          return bad(`'from' must be an offset, 'latest' or an ISO time, not '${from.slice(0, 40)}'`)
        }
        start = { _tag: "Time", epochMillis: Math.max(0, time) }
      }
    }
  }
  return Either.right({ filter, start, limit })
}

const encodeEvent = Schema.encodeSync(StoredEvent)

const encoder = new TextEncoder()

// Encoded once per event, however many clients receive it.
const frames = new WeakMap<StoredEvent, Uint8Array>()
const frame = (event: StoredEvent): Uint8Array => {
  let bytes = frames.get(event)
  if (bytes === undefined) {
    bytes = encoder.encode(`id: ${event.offset}\ndata: ${JSON.stringify(encodeEvent(event))}\n\n`)
    frames.set(event, bytes)
  }
  return bytes
}

const control = (event: string, data: unknown) => `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`

/** The handler; the caller checks credentials first. */
export const handler = (heartbeat: Duration.Duration) =>
  Effect.gen(function* () {
    const request = yield* HttpServerRequest.HttpServerRequest
    const bus = yield* EventBus
    const log = yield* EventLog
    const url = new URL(request.url, "http://localhost")
    const lastEventId = request.headers["last-event-id"]
    const query = parseQuery(url.searchParams, lastEventId)
    if (Either.isLeft(query)) {
      return HttpServerResponse.unsafeJson(
        { error: "BadRequest", message: query.left.message },
        { status: 400, headers: sseHeaders }
      )
    }
    const { filter, limit, start } = query.right
    const from = yield* resolveStart(log, start).pipe(Effect.either)
    if (Either.isLeft(from)) {
      const status = from.left._tag === "InvalidConsumer" ? 400 : 503
      return HttpServerResponse.unsafeJson(
        { error: from.left._tag, message: from.left.message },
        { status, headers: sseHeaders }
      )
    }
    // The fan-out writes each frame straight into the response: no fiber per client. One object
    // a frame, so the readable's length is the client's backlog in events.
    const body = new Readable({ objectMode: true, read() {} })
    body.push("retry: 1000\n: connected\n\n")
    let sent = 0
    let ended = false
    const finish = (text?: string) => {
      if (ended) return
      ended = true
      if (text !== undefined) body.push(text)
      body.push(null)
    }
    const scope = yield* Scope.make()
    const attached = yield* bus
      .attach(from.right, filter, {
        offer: (event) => {
          if (ended) return
          body.push(frame(event))
          sent++
          if (Option.isSome(limit) && sent >= limit.value) finish()
        },
        backlog: () => body.readableLength,
        end: (reason) =>
          finish(
            reason._tag === "Lagged"
              ? control("lagged", { lastOffset: reason.error.lastOffset, message: reason.error.message })
              : reason._tag === "Failed"
                ? control("error", { error: reason.error._tag, message: reason.error.message })
                : undefined
          )
      })
      .pipe(Scope.extend(scope), Effect.either)
    if (Either.isLeft(attached)) {
      finish(control("error", { error: attached.left._tag, message: attached.left.message }))
    }
    const timer = setInterval(() => {
      if (!ended) body.push(": heartbeat\n\n")
    }, Duration.toMillis(heartbeat))
    const runtime = yield* Effect.runtime<never>()
    let released = false
    const release = () => {
      if (released) return
      released = true
      clearInterval(timer)
      finish()
      Runtime.runFork(runtime)(Scope.close(scope, Exit.void))
    }
    body.once("close", release)
    // Also when the client goes away before the body is piped to it.
    NodeHttpServerRequest.toServerResponse(request).once("close", release)
    return HttpServerResponse.raw(body, {
      contentType: "text/event-stream; charset=utf-8",
      headers: sseHeaders
    })
  })
