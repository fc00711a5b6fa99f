/**
 * A fake AI provider for proxy tests: a plain `node:http` server on a loopback port that answers
 * `POST /v1/messages` (Anthropic), `POST /v1/chat/completions`, `POST /v1/responses` and
 * `GET /v1/models` (OpenAI) like the real APIs, JSON or SSE. It records every request, and a script
 * of behaviours (error statuses, hangs, gated or broken streams) replaces the normal answer of the
 * next requests, one each, so that tests can drive failures without sleeping.
 */
import * as http from "node:http"
import { Data, Deferred, Effect, Exit, FiberId, type Scope } from "effect"
import type { ProviderConfig } from "../../rpc/Proxy.js"
import * as Providers from "../../actors/proxy/Providers.js"

/** What the fake does with one request instead of its normal answer. */
export type Behaviour = Data.TaggedEnum<{
  /** Answers `status`, with an error body in the API's format unless `body` is given. */
  Status: { readonly status: number; readonly body?: string; readonly headers?: Record<string, string> }
  /** Reads the request and never answers, until the client aborts or the server closes. */
  Hang: Record<never, never>
  /** Sends the headers and the first chunk of the normal answer, the rest once `gate` is released. */
  Gated: { readonly gate: Gate }
  /** Destroys the socket, at once or after the headers and the first chunk of the normal answer. */
  Destroy: { readonly afterFirstChunk: boolean }
}>

/** Constructors for `Behaviour`s. */
export const Behaviour = Data.taggedEnum<Behaviour>()

/** Holds a `Gated` answer after its first chunk until the test releases it. */
export interface Gate {
  /** Sends the rest of the answer. */
  readonly release: Effect.Effect<void>
  /** Resolves once the headers and the first chunk were written to the socket. */
  readonly firstSent: Effect.Effect<void>
  readonly released: Deferred.Deferred<void>
  readonly firstWritten: Deferred.Deferred<void>
}

/** A closed gate, for `Behaviour.Gated`. */
export const makeGate: Effect.Effect<Gate> = Effect.map(
  Effect.zip(Deferred.make<void>(), Deferred.make<void>()),
  ([released, firstWritten]) => ({
    release: Effect.asVoid(Deferred.succeed(released, undefined)),
    firstSent: Deferred.await(firstWritten),
    released,
    firstWritten
  })
)

/** One request the fake received. */
export interface RecordedRequest {
  readonly method: string
  /** The path without the query. */
  readonly path: string
  /** The query without `?`, "" if none. */
  readonly query: string
  /** Lower-case names; repeated headers joined with ", ". */
  readonly headers: Readonly<Record<string, string>>
  readonly body: Buffer
  /** True once the connection closed before the response ended (client abort, `Hang`, `Destroy`). */
  readonly aborted: boolean
  /** Resolves when the response ended or was aborted. */
  readonly finished: Effect.Effect<void>
}

/** How the normal answers look. */
export interface Options {
  /** The key both APIs accept; "sk-fake" by default. */
  readonly apiKey?: string
  /** Reported input tokens; 12 by default. */
  readonly inputTokens?: number
  /** Reported output tokens; the number of chunks by default. */
  readonly outputTokens?: number
  /** The reply text, one stream event each; `["Hel", "lo", " wor", "ld", "!"]` by default. */
  readonly chunks?: ReadonlyArray<string>
}

/** A running fake provider. */
export interface FakeProvider {
  /** `http://127.0.0.1:<port>`, without a trailing slash. */
  readonly url: string
  readonly port: number
  readonly apiKey: string
  readonly inputTokens: number
  readonly outputTokens: number
  readonly chunks: ReadonlyArray<string>
  /** Every request received so far, in order (a live array). */
  readonly requests: ReadonlyArray<RecordedRequest>
  /** The `index`-th request (from 0), once it arrived with its whole body. */
  readonly request: (index: number) => Effect.Effect<RecordedRequest>
  /** Resolves once the `index`-th request was aborted; dies if its response ended normally. */
  readonly untilAborted: (index: number) => Effect.Effect<void>
  /** Behaviours for the next requests, one each, after those already queued. */
  readonly enqueue: (...behaviours: ReadonlyArray<Behaviour>) => Effect.Effect<void>
  /** Queues a `Gated` answer and yields its gate. */
  readonly enqueueGated: Effect.Effect<Gate>
}

type Api = "anthropic" | "openai"

/** A response as written: status, headers and the pieces written one `res.write` each. */
interface Answer {
  readonly status: number
  readonly headers: Record<string, string>
  readonly pieces: ReadonlyArray<string>
}

const errorTypes: Record<number, string> = {
  400: "invalid_request_error",
  401: "authentication_error",
  403: "permission_error",
  404: "not_found_error",
  413: "request_too_large",
  429: "rate_limit_error",
  529: "overloaded_error"
}

const errorBody = (api: Api, status: number, message: string, code: string | null = null): string => {
  const type = errorTypes[status] ?? (status >= 500 ? "api_error" : "invalid_request_error")
  return JSON.stringify(
    api === "anthropic"
      ? { type: "error", error: { type, message } }
      : {
          error: {
            message,
            type: status === 401 ? "invalid_request_error" : type,
            param: null,
            code
          }
        }
  )
}

/** A JSON answer, in two pieces so that `Gated` and `Destroy` can cut it. */
const json = (status: number, value: unknown): Answer => {
  const body = typeof value === "string" ? value : JSON.stringify(value)
  const half = Math.floor(body.length / 2)
  return {
    status,
    headers: { "content-type": "application/json", "content-length": String(Buffer.byteLength(body)) },
    pieces: [body.slice(0, half), body.slice(half)]
  }
}

const sse = (pieces: ReadonlyArray<string>): Answer => ({
  status: 200,
  headers: { "content-type": "text/event-stream", "cache-control": "no-cache" },
  pieces
})

const event = (name: string, data: unknown) => `event: ${name}\ndata: ${JSON.stringify(data)}\n\n`

const isRecord = (value: unknown): value is Record<string, unknown> =>
  typeof value === "object" && value !== null && !Array.isArray(value)

const parseBody = (body: Buffer): Record<string, unknown> | undefined => {
  try {
    const value: unknown = JSON.parse(body.toString("utf8"))
    return isRecord(value) ? value : {}
  } catch {
    return undefined
  }
}

const flatten = (headers: http.IncomingHttpHeaders): Record<string, string> => {
  const flat: Record<string, string> = {}
  for (const [name, value] of Object.entries(headers)) {
    if (value !== undefined) flat[name] = Array.isArray(value) ? value.join(", ") : value
  }
  return flat
}

/** Starts the fake; it closes, with every open connection, when the scope closes. */
export const make = (options: Options = {}): Effect.Effect<FakeProvider, never, Scope.Scope> =>
  Effect.gen(function* () {
    const apiKey = options.apiKey ?? "sk-fake"
    const chunks = options.chunks ?? ["Hel", "lo", " wor", "ld", "!"]
    const text = chunks.join("")
    const input = options.inputTokens ?? 12
    const output = options.outputTokens ?? chunks.length
    const requests: Array<RecordedRequest> = []
    const arrivals = new Map<number, Deferred.Deferred<RecordedRequest>>()
    const script: Array<Behaviour> = []
    /** Responses not yet ended or aborted. */
    const open = new Set<Deferred.Deferred<void>>()
    let ids = 0

    const arrival = (index: number) => {
      const existing = arrivals.get(index)
      if (existing !== undefined) return existing
      const created = Deferred.unsafeMake<RecordedRequest>(FiberId.none)
      arrivals.set(index, created)
      return created
    }

    const anthropic = (body: Record<string, unknown>): Answer => {
      const id = `msg_fake_${++ids}`
      const model = typeof body["model"] === "string" ? body["model"] : "fake-model"
      const message = { id, type: "message", role: "assistant", model }
      if (body["stream"] !== true) {
        return json(200, {
          ...message,
          content: [{ type: "text", text }],
          stop_reason: "end_turn",
          stop_sequence: null,
          usage: { input_tokens: input, output_tokens: output }
        })
      }
      return sse([
        event("message_start", {
          type: "message_start",
          message: {
            ...message,
            content: [],
            stop_reason: null,
            stop_sequence: null,
            usage: { input_tokens: input, output_tokens: 1 }
          }
        }),
        event("content_block_start", {
          type: "content_block_start",
          index: 0,
          content_block: { type: "text", text: "" }
        }),
        ...chunks.map((chunk) =>
          event("content_block_delta", {
            type: "content_block_delta",
            index: 0,
            delta: { type: "text_delta", text: chunk }
          })
        ),
        event("content_block_stop", { type: "content_block_stop", index: 0 }),
        event("message_delta", {
          type: "message_delta",
          delta: { stop_reason: "end_turn", stop_sequence: null },
          usage: { output_tokens: output }
        }),
        event("message_stop", { type: "message_stop" })
      ])
    }

    const chat = (body: Record<string, unknown>): Answer => {
      const base = {
        id: `chatcmpl-fake${++ids}`,
        created: 1_700_000_000,
        model: typeof body["model"] === "string" ? body["model"] : "fake-model"
      }
      const usage = { prompt_tokens: input, completion_tokens: output, total_tokens: input + output }
      if (body["stream"] !== true) {
        return json(200, {
          ...base,
          object: "chat.completion",
          choices: [
            { index: 0, message: { role: "assistant", content: text }, logprobs: null, finish_reason: "stop" }
          ],
          usage
        })
      }
      const streamOptions = body["stream_options"]
      const withUsage = isRecord(streamOptions) && streamOptions["include_usage"] === true
      const chunk = (choices: ReadonlyArray<unknown>, extra: object = withUsage ? { usage: null } : {}) =>
        `data: ${JSON.stringify({ ...base, object: "chat.completion.chunk", choices, ...extra })}\n\n`
      return sse([
        ...chunks.map((content, i) =>
          chunk([
            {
              index: 0,
              delta: i === 0 ? { role: "assistant", content } : { content },
              logprobs: null,
              finish_reason: null
            }
          ])
        ),
        chunk([{ index: 0, delta: {}, logprobs: null, finish_reason: "stop" }]),
        ...(withUsage ? [chunk([], { usage })] : []),
        "data: [DONE]\n\n"
      ])
    }

    const responses = (body: Record<string, unknown>): Answer => {
      const id = `resp_fake${++ids}`
      const model = typeof body["model"] === "string" ? body["model"] : "fake-model"
      const usage = { input_tokens: input, output_tokens: output, total_tokens: input + output }
      const message = {
        type: "message",
        id: `msg_fake${ids}`,
        status: "completed",
        role: "assistant",
        content: [{ type: "output_text", text, annotations: [] }]
      }
      const response = (status: string, rest: object) => ({
        id,
        object: "response",
        created_at: 1_700_000_000,
        status,
        model,
        ...rest
      })
      if (body["stream"] !== true) return json(200, response("completed", { output: [message], usage }))
      let sequence = 0
      const next = (name: string, data: object) =>
        event(name, { type: name, sequence_number: sequence++, ...data })
      return sse([
        next("response.created", { response: response("in_progress", { output: [], usage: null }) }),
        ...chunks.map((delta) =>
          next("response.output_text.delta", {
            item_id: message.id,
            output_index: 0,
            content_index: 0,
            delta
          })
        ),
        next("response.completed", { response: response("completed", { output: [message], usage }) })
      ])
    }

    /** The normal answer to a request whose body was read. */
    const answer = (request: RecordedRequest): Answer => {
      const route = `${request.method} ${request.path}`
      const api: Api = request.path === "/v1/messages" ? "anthropic" : "openai"
      const handlers: Record<string, (body: Record<string, unknown>) => Answer> = {
        "POST /v1/messages": anthropic,
        "POST /v1/chat/completions": chat,
        "POST /v1/responses": responses,
        "GET /v1/models": () =>
          json(200, {
            object: "list",
            data: [{ id: "fake-model", object: "model", created: 1_700_000_000, owned_by: "fake" }]
          })
      }
      const handler = handlers[route]
      if (handler === undefined) {
        return json(404, errorBody(api, 404, `Unknown request URL: ${route}.`, "unknown_url"))
      }
      const authorized =
        api === "anthropic"
          ? request.headers["x-api-key"] === apiKey
          : request.headers["authorization"] === `Bearer ${apiKey}`
      if (!authorized) {
        return api === "anthropic"
          ? json(401, errorBody(api, 401, "invalid x-api-key"))
          : json(401, errorBody(api, 401, "Incorrect API key provided", "invalid_api_key"))
      }
      if (request.method === "GET") return handler({})
      const body = parseBody(request.body)
      if (body === undefined) {
        return json(400, errorBody(api, 400, "The request body is not valid JSON."))
      }
      return handler(body)
    }

    const handle = (req: http.IncomingMessage, res: http.ServerResponse) => {
      const url = new URL(`http://fake${req.url ?? "/"}`)
      const parts: Array<Buffer> = []
      const finished = Deferred.unsafeMake<void>(FiberId.none)
      open.add(finished)
      const recorded = {
        method: req.method ?? "GET",
        path: url.pathname,
        query: url.search.replace(/^\?/, ""),
        headers: flatten(req.headers),
        body: Buffer.alloc(0),
        aborted: false,
        finished: Deferred.await(finished)
      }
      let index = -1
      const record = () => {
        if (index >= 0) return
        recorded.body = Buffer.concat(parts)
        index = requests.push(recorded) - 1
        Deferred.unsafeDone(arrival(index), Exit.succeed(recorded))
      }
      res.on("close", () => {
        record()
        recorded.aborted = !res.writableFinished
        open.delete(finished)
        Deferred.unsafeDone(finished, Exit.void)
      })
      req.on("data", (part: Buffer) => parts.push(part))
      req.on("end", () => {
        record()
        const behaviour = script.shift()
        if (behaviour?._tag === "Hang") return
        if (behaviour?._tag === "Destroy" && !behaviour.afterFirstChunk) return void req.socket.destroy()
        if (behaviour?._tag === "Status") {
          const api: Api = recorded.path === "/v1/messages" ? "anthropic" : "openai"
          const message = `fake ${behaviour.status}`
          const body = behaviour.body ?? errorBody(api, behaviour.status, message)
          res.writeHead(behaviour.status, { "content-type": "application/json", ...behaviour.headers })
          return void res.end(body)
        }
        const { status, headers, pieces } = answer(recorded)
        res.writeHead(status, headers)
        const [first = "", ...rest] = pieces
        const finish = () => {
          for (const piece of rest) res.write(piece)
          res.end()
        }
        if (behaviour === undefined) {
          res.write(first)
          return finish()
        }
        res.write(first, (error) => {
          if (error !== undefined && error !== null) return
          if (behaviour._tag === "Destroy") return void req.socket.destroy()
          Deferred.unsafeDone(behaviour.gate.firstWritten, Exit.void)
          const cancel = Effect.runCallback(Deferred.await(behaviour.gate.released), {
            onExit: (exit) => {
              if (Exit.isSuccess(exit) && !res.destroyed) finish()
            }
          })
          res.on("close", () => cancel())
        })
      })
    }

    const server = yield* Effect.acquireRelease(
      Effect.async<http.Server, Error>((resume) => {
        const server = http.createServer(handle)
        server.once("error", (error) => resume(Effect.fail(error)))
        server.listen(0, "127.0.0.1", () => resume(Effect.succeed(server)))
      }).pipe(Effect.orDie),
      // Waits for the aborted responses' `close` events too, so that `aborted` holds once closed.
      (server) =>
        Effect.async<void>((resume) => {
          server.close(() => resume(Effect.void))
          server.closeAllConnections()
        }).pipe(Effect.zipRight(Effect.forEach(open, Deferred.await, { discard: true })))
    )
    const address = server.address()
    const port = typeof address === "object" && address !== null ? address.port : 0
    const request = (index: number) => Deferred.await(arrival(index))

    return {
      url: `http://127.0.0.1:${port}`,
      port,
      apiKey,
      inputTokens: input,
      outputTokens: output,
      chunks,
      requests,
      request,
      untilAborted: (index) =>
        Effect.flatMap(request(index), (recorded) =>
          Effect.flatMap(recorded.finished, () =>
            recorded.aborted
              ? Effect.void
              : Effect.dieMessage(`request ${index} (${recorded.path}) finished without being aborted`)
          )
        ),
      enqueue: (...behaviours) => Effect.sync(() => void script.push(...behaviours)),
      enqueueGated: Effect.tap(makeGate, (gate) =>
        Effect.sync(() => void script.push(Behaviour.Gated({ gate })))
      )
    }
  })

/** A proxy provider configuration for `url`, quick to give up (one attempt, short timeouts). */
export const providerConfig = (
  name: string,
  url: string,
  extra: Partial<ProviderConfig> = {}
): ProviderConfig => ({
  ...Providers.defaults,
  name,
  baseUrl: url,
  format: "openai",
  auth: "bearer",
  connectTimeoutMs: 2_000,
  firstByteTimeoutMs: 30_000,
  idleTimeoutMs: 30_000,
  retry: { maxAttempts: 1, initialDelayMs: 10, maxDelayMs: 50, maxRetryAfterMs: 2_000 },
  ...extra
})
