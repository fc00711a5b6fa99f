/**
 * The AI-provider proxy of a node: `/proxy/<provider>/<path>` goes to the provider's base URL
 * with the provider key injected and the client's own credentials removed; the response,
 * Server-Sent Events included, is piped back chunk by chunk as it arrives.
 *
 * Before the first byte goes back, failures are retried (connection errors, 429 and 5xx, with
 * exponential backoff and jitter, honouring `Retry-After`); after it, never. Each provider has a
 * circuit breaker, each client (the admin token, or a session's token) a token bucket. Every
 * request becomes a `proxy.request` event with its status, latency, time to first byte and
 * token usage, and counts in the metrics.
 *
 * The state is per node (a service, not an entity): the request path cannot afford a hop
 * through the cluster, and a provider's health is what this node sees of it.
 */
import type * as http from "node:http"
import {
  Cause,
  Context,
  DateTime,
  Effect,
  Fiber,
  Layer,
  Metric,
  MetricBoundaries,
  Option,
  Redacted,
  Runtime,
  Schedule
} from "effect"
import { type NewEvent, newEvent } from "../../rpc/Events.js"
import { toStorable, truncate } from "../../rpc/Text.js"
import { securityHeaders, sseHeaders } from "../../infra/net/Headers.js"
import {
  ProviderInfo,
  ProxyStats,
  ProxyStatsRow,
  type ProviderConfig,
  type ProviderFormat,
  type ProxyErrorKind
} from "../../rpc/Proxy.js"
import { AdminToken } from "../../infra/auth/AdminToken.js"
import { tagged } from "../../infra/telemetry/MetricTags.js"
import { appendOrMark, EventLog } from "../../infra/eventlog/EventLog.js"
import { CircuitBreaker, RateLimiter } from "./Guards.js"
import * as Providers from "./Providers.js"
import * as ProxyTokens from "./ProxyTokens.js"
import * as Usage from "./Usage.js"
import * as Prices from "./Prices.js"
import * as Recorder from "./Recorder.js"
import * as Turns from "./Turns.js"
import { ConversationStore } from "./ConversationStore.js"
import { type Price, ReplayFailed } from "../../rpc/Conversations.js"

/** How the proxy of a node is set up. */
export interface ProxySettings {
  readonly nodeId: string
  /** Configured providers, on top of the built-in ones. */
  readonly providers: ReadonlyArray<ProviderConfig>
  /** Largest request body accepted, in bytes. */
  readonly maxBodyBytes: number
  /** Requests a second per client (0: no limit), and the burst above it. */
  readonly rate: number
  readonly burst: number
  /**
   * Where a request comes from and whether that address may present credentials now (refused
   * credentials count against it, as on every other route). Without it, nothing is throttled.
   */
  readonly guard?: CredentialGuard
  /** Recording of requests as conversation turns; without it, nothing is recorded. */
  readonly recording?: RecordingSettings
  /** Prices per provider and model, to cost each request. */
  readonly prices?: ReadonlyArray<Price>
  /** Spend limits, in US dollars: per session or job (over the last 30 days), and per UTC day. */
  readonly budget?: Budget
}

/** How the proxy records conversations. */
export interface RecordingSettings extends Omit<Recorder.RecorderSettings, "nodeId"> {
  /** Off: no provider records (each provider can also be turned off by its `record`). */
  readonly enabled: boolean
  /** The most response bytes kept of one answer (the rest reaches the client, not the record). */
  readonly maxResponseBytes: number
}

/** Spend limits in US dollars; null is no limit. */
export interface Budget {
  readonly session: number | null
  readonly daily: number | null
}

/** The node's failed-credential throttle, as the proxy's plain-Node path uses it. */
export interface CredentialGuard {
  /** The client's address (through trusted proxies only). */
  readonly address: (request: http.IncomingMessage) => string
  /** Milliseconds the address must still wait before its credentials are checked. */
  readonly lockedFor: (address: string) => number
  readonly refused: (address: string, via: string) => void
  readonly accepted: (address: string) => void
}

/** The proxy of this node. */
export class Proxy extends Context.Tag("vibes/Proxy")<
  Proxy,
  {
    /**
     * Answers one `/proxy/…` request straight on the node's HTTP server, outside the Effect
     * router: the request path stays synchronous, with no fiber, until the upstream answers.
     */
    readonly serve: (request: http.IncomingMessage, response: http.ServerResponse) => void
    /** The providers with their health (never their keys). */
    readonly providers: Effect.Effect<ReadonlyArray<ProviderInfo>>
    /** Requests, errors, latency and tokens per provider and model since the node started. */
    readonly stats: Effect.Effect<ProxyStats>
    /**
     * The variables that point the agents of a session or job at this proxy (`ANTHROPIC_BASE_URL`,
     * `OPENAI_BASE_URL`, their key variables set to its own token, `VIBES_PROXY_URL`,
     * `VIBES_PROXY_TOKEN`), for a server reachable at `serverUrl`. Its token is valid from now
     * until `ended`.
     */
    readonly clientEnv: (holder: ProxyTokens.Holder, serverUrl: string) => Record<string, string>
    /** The session or job has ended: its token is refused from now on. */
    readonly ended: (holder: ProxyTokens.Holder) => void
    /** The environment variables provider keys are read from: secrets no session may see. */
    readonly keyVariables: ReadonlySet<string>
    /** The provider keys this node holds. */
    readonly keys: ReadonlyArray<Redacted.Redacted<string>>
    /**
     * Sends a request body to a provider as the proxy would (its key, its timeouts), without
     * retries and without recording it: to replay a recorded turn. Its cost counts in the day's spend.
     */
    readonly replay: (
      provider: string,
      path: string,
      body: Buffer
    ) => Effect.Effect<
      {
        readonly status: number
        readonly body: Buffer
        readonly latencyMs: number
        readonly costUsd: number | null
        readonly format: ProviderFormat
      },
      ReplayFailed
    >
  }
>() {}

// Metrics ---------------------------------------------------------------------------------------

const requestsTotal = Metric.counter("vibes_proxy_requests_total", {
  description: "Requests through the AI-provider proxy, by provider, model and status",
  incremental: true
})
const errorsTotal = Metric.counter("vibes_proxy_errors_total", {
  description: "Proxy requests that failed, by provider and kind",
  incremental: true
})
const tokensTotal = Metric.counter("vibes_proxy_tokens_total", {
  description: "Tokens reported by providers, by provider, model and direction",
  incremental: true
})
const latencyBoundaries = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300]
const latencySeconds = Metric.histogram(
  "vibes_proxy_request_duration_seconds",
  MetricBoundaries.fromIterable(latencyBoundaries),
  "Time from a proxy request to the end of its response"
)
const ttfbSeconds = Metric.histogram(
  "vibes_proxy_ttfb_seconds",
  MetricBoundaries.fromIterable(latencyBoundaries),
  "Time from a proxy request to the upstream's response headers"
)

// Wire details ----------------------------------------------------------------------------------

/** Headers that belong to one connection and never cross the proxy. */
const hopByHop = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "proxy-authenticate",
  "proxy-authorization",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade"
])

/** What the client sends that never goes upstream: its credentials for vibes, and what we set. */
const notForwarded = new Set([
  "host",
  "authorization",
  "x-api-key",
  "cookie",
  "content-length",
  "accept-encoding"
])

/**
 * What the upstream sends that never reaches the client: cookies (the proxy answers on vibes'
 * own origin, where a provider's cookie has no business), and the headers vibes sets itself.
 */
const notReturned = new Set([
  "set-cookie",
  "set-cookie2",
  ...Object.keys(securityHeaders),
  ...Object.keys(sseHeaders)
])

const connectionListed = (value: string | Array<string> | undefined): Set<string> =>
  new Set(
    (Array.isArray(value) ? value.join(",") : (value ?? ""))
      .split(",")
      .map((name) => name.trim().toLowerCase())
      .filter((name) => name !== "")
  )

/** The error body a client of `format` expects. */
const errorBody = (format: ProviderFormat, status: number, message: string): unknown => {
  if (format === "anthropic") {
    const type =
      status === 401
        ? "authentication_error"
        : status === 404
          ? "not_found_error"
          : status === 413
            ? "request_too_large"
            : status === 429
              ? "rate_limit_error"
              : status === 400
                ? "invalid_request_error"
                : "api_error"
    return { type: "error", error: { type, message } }
  }
  const code =
    status === 401
      ? "invalid_api_key"
      : status === 404
        ? "not_found"
        : status === 413
          ? "request_too_large"
          : status === 429
            ? "rate_limit_exceeded"
            : status === 400
              ? "invalid_request"
              : status === 504
                ? "upstream_timeout"
                : "upstream_error"
  const type =
    status < 500 && status !== 429 ? "invalid_request_error" : status === 429 ? "requests" : "server_error"
  return { error: { message, type, param: null, code } }
}

/**
 * The error body of a spent budget, as each API says "out of credit": OpenAI's
 * `insufficient_quota` (429), Anthropic's `invalid_request_error` (400, as its low-balance
 * answer). Sent with `x-should-retry: false`, which the official SDKs honour.
 */
const budgetAnswer = (format: ProviderFormat, message: string) =>
  format === "anthropic"
    ? { status: 400, body: { type: "error", error: { type: "invalid_request_error", message } } }
    : {
        status: 429,
        body: { error: { message, type: "insufficient_quota", param: null, code: "insufficient_quota" } }
      }

/** `Retry-After` in ms (seconds or an HTTP date), or null. */
const retryAfterMs = (value: string | Array<string> | undefined, now: number = Date.now()): number | null => {
  const text = Array.isArray(value) ? value[0] : value
  if (text === undefined || text.trim() === "") return null
  const seconds = Number(text)
  if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000)
  const date = Date.parse(text)
  return Number.isNaN(date) ? null : Math.max(0, date - now)
}

/** Exponential backoff with "equal jitter": half the delay fixed, half random. */
const backoffMs = (retry: ProviderConfig["retry"], attempt: number): number => {
  const delay = Math.min(retry.maxDelayMs, retry.initialDelayMs * 2 ** (attempt - 1))
  return delay / 2 + Math.random() * (delay / 2)
}

/** Splits `/proxy/<name>/<rest>?<query>`; null when the path tries to climb out of the provider. */
const target = (url: string): { readonly name: string; readonly rest: string } | null => {
  const match = /^\/proxy\/([^/?#]*)(\/[^?#]*)?(\?[^#]*)?/.exec(url)
  if (match === null) return null
  const rest = match[2] ?? ""
  for (const segment of rest.split("/")) {
    let decoded = segment
    try {
      decoded = decodeURIComponent(segment)
    } catch {
      return null
    }
    if (decoded === "." || decoded === ".." || decoded.includes("/") || decoded.includes("\\")) return null
  }
  return { name: match[1] ?? "", rest: rest + (match[3] ?? "") }
}

// Reading the request ---------------------------------------------------------------------------

type BodyResult =
  { readonly _tag: "Body"; readonly body: Buffer } | { readonly _tag: "TooLarge" } | { readonly _tag: "Gone" }

/** Reads the request body up to `limit` bytes, then calls `done` once. */
const readBody = (incoming: http.IncomingMessage, limit: number, done: (result: BodyResult) => void) => {
  const chunks: Array<Buffer> = []
  let size = 0
  const cleanup = () => {
    incoming.off("data", onData)
    incoming.off("end", onEnd)
    incoming.off("error", onGone)
    incoming.off("close", onClose)
  }
  const onData = (chunk: Buffer) => {
    size += chunk.length
    if (size > limit) {
      cleanup()
      incoming.resume()
      done({ _tag: "TooLarge" })
    } else chunks.push(chunk)
  }
  const onEnd = () => {
    cleanup()
    done({ _tag: "Body", body: chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks, size) })
  }
  const onGone = () => {
    cleanup()
    done({ _tag: "Gone" })
  }
  const onClose = () => {
    if (!incoming.complete) onGone()
  }
  incoming.on("data", onData)
  incoming.on("end", onEnd)
  incoming.on("error", onGone)
  incoming.on("close", onClose)
}

/** Writes a JSON error in the client's provider format. */
const writeError = (
  response: http.ServerResponse,
  format: ProviderFormat,
  status: number,
  message: string,
  headers: Record<string, string> = {}
) => {
  if (response.headersSent || response.destroyed) {
    response.destroy()
    return
  }
  const body = JSON.stringify(errorBody(format, status, `vibes proxy: ${message}`))
  response.writeHead(status, {
    ...securityHeaders,
    "content-type": "application/json",
    "content-length": Buffer.byteLength(body),
    ...headers
  })
  response.end(body)
}

// Calling the provider --------------------------------------------------------------------------

type Attempt =
  | { readonly _tag: "Response"; readonly response: http.IncomingMessage }
  | { readonly _tag: "Failed"; readonly kind: "connect" | "timeout"; readonly message: string }

/** Sends one request upstream; `done` is called once, unless the returned request is destroyed first. */
const send = (
  provider: Providers.Provider,
  method: string,
  path: string,
  headers: http.OutgoingHttpHeaders,
  body: Buffer,
  done: (attempt: Attempt) => void
): http.ClientRequest => {
  let timedOut = false
  let settled = false
  const request = provider.request(
    {
      agent: provider.agent,
      protocol: provider.base.protocol,
      hostname: provider.base.hostname,
      port: provider.base.port === "" ? undefined : Number(provider.base.port),
      method,
      path,
      headers
    },
    (response) => {
      clearTimeout(firstByte)
      if (settled) return
      settled = true
      done({ _tag: "Response", response })
    }
  )
  const firstByte = setTimeout(() => {
    timedOut = true
    request.destroy(new Error(`no response within ${provider.config.firstByteTimeoutMs} ms`))
  }, provider.config.firstByteTimeoutMs)
  request.on("socket", (socket) => {
    if (!socket.connecting) return
    const connect = setTimeout(() => {
      request.destroy(new Error(`could not connect within ${provider.config.connectTimeoutMs} ms`))
    }, provider.config.connectTimeoutMs)
    socket.once("connect", () => clearTimeout(connect))
    socket.once("close", () => clearTimeout(connect))
  })
  request.on("error", (error) => {
    clearTimeout(firstByte)
    if (settled) return
    settled = true
    done({ _tag: "Failed", kind: timedOut ? "timeout" : "connect", message: error.message })
  })
  request.on("close", () => {
    clearTimeout(firstByte)
    // Destroyed by the proxy itself (the client went away): nobody waits for an answer.
    settled = true
  })
  request.end(body)
  return request
}

// Statistics ------------------------------------------------------------------------------------

interface Tally {
  requests: number
  errors: number
  inputTokens: number
  outputTokens: number
  latencies: Array<number>
  ttfbs: Array<number>
}

const sampleSize = 2048

const percentile = (values: ReadonlyArray<number>, p: number): number => {
  if (values.length === 0) return 0
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? 0
}

const pushSample = (samples: Array<number>, value: number) => {
  if (samples.length >= sampleSize) samples.splice(0, samples.length - sampleSize + 1)
  samples.push(value)
}

interface ProviderState {
  readonly provider: Providers.Provider
  readonly circuit: CircuitBreaker
  requests: number
  errors: number
  lastStatus: number | null
  lastRequestAt: Date | null
}

/** What one request did, as the event and the metrics record it. */
interface Outcome {
  readonly provider: string
  readonly model: string | null
  readonly method: string
  readonly path: string
  readonly status: number
  readonly latencyMillis: number
  readonly ttfbMillis: number | null
  readonly inputTokens: number | null
  readonly outputTokens: number | null
  readonly attempts: number
  readonly streamed: boolean
  readonly client: ProxyTokens.ProxyClient
  readonly errorKind: ProxyErrorKind | null
  readonly bytes: number
}

/** Distinct models per provider that statistics and metrics name; the rest count as "other". */
const maxModels = 200

const round = (ms: number) => Math.round(ms * 1000) / 1000

/** Events waiting for the log beyond which new ones are dropped (and counted) rather than kept. */
const maxPendingEvents = 50_000

/** How long an event waits for others to share its append (a batch of this many goes at once). */
const lingerMs = 25
const batchSize = 1000

/**
 * Appends events in batches, one append at a time. An event waits up to `lingerMs` for others,
 * so the append (tens of µs of CPU however many events it holds) runs once per batch, off the
 * path of the requests that follow, rather than once per request.
 */
const batcher = (
  append: (events: ReadonlyArray<NewEvent>) => Effect.Effect<void>,
  runFork: (effect: Effect.Effect<void>) => Fiber.RuntimeFiber<void>
) => {
  let pending: Array<NewEvent> = []
  let running: Fiber.RuntimeFiber<void> | null = null
  let timer: NodeJS.Timeout | null = null
  let dropped = 0
  const flush = () => {
    if (timer !== null) {
      clearTimeout(timer)
      timer = null
    }
    if (running !== null || pending.length === 0) return
    const batch = pending
    pending = []
    const fiber = runFork(append(batch))
    running = fiber
    fiber.addObserver(() => {
      running = null
      schedule()
    })
  }
  const schedule = () => {
    if (pending.length >= batchSize) flush()
    else if (timer === null && running === null && pending.length > 0) timer = setTimeout(flush, lingerMs)
  }
  const drain: Effect.Effect<void> = Effect.suspend(() => {
    if (running !== null) return Effect.zipRight(Fiber.await(running), drain)
    if (pending.length === 0) return Effect.void
    flush()
    return drain
  })
  return {
    push: (event: NewEvent) => {
      if (pending.length >= maxPendingEvents) {
        dropped += 1
        if (dropped % 1000 === 1) {
          runFork(
            Effect.logWarning(
              `the event log is not keeping up: ${dropped} proxy.request events dropped so far`
            )
          )
        }
        return
      }
      pending.push(event)
      schedule()
    },
    /** Waits until every event pushed so far is appended. */
    drain
  }
}

// The service -----------------------------------------------------------------------------------

/** The proxy for `settings`; it needs the admin token (for client credentials) and the event log. */
export const layer = (
  settings: ProxySettings
): Layer.Layer<Proxy, Providers.ProxyConfigError, AdminToken | EventLog | ConversationStore> =>
  Layer.scoped(
    Proxy,
    Effect.gen(function* () {
      const admin = yield* AdminToken
      const log = yield* EventLog
      const tokens = ProxyTokens.make(admin)
      const loaded = yield* Effect.forEach(Providers.merge(settings.providers), (config) =>
        Providers.load(config)
      )
      yield* Effect.addFinalizer(() =>
        Effect.sync(() => loaded.forEach((provider) => provider.agent.destroy()))
      )
      const states = new Map<string, ProviderState>(
        loaded.map((provider) => [
          provider.config.name,
          {
            provider,
            circuit: new CircuitBreaker(provider.config.circuit),
            requests: 0,
            errors: 0,
            lastStatus: null,
            lastRequestAt: null
          }
        ])
      )
      const limiter = new RateLimiter(settings.rate, settings.burst)
      const tallies = new Map<string, { provider: string; model: string | null; tally: Tally }>()
      const since = yield* DateTime.now
      const runtime = yield* Effect.runtime<never>()
      const runFork = Runtime.runFork(runtime)
      const events = batcher(
        (batch) =>
          appendOrMark(log, batch, Schedule.stop).pipe(
            Effect.catchAll((error) =>
              Effect.logWarning(`could not record ${batch.length} proxy.request events: ${error.message}`)
            )
          ),
        runFork
      )
      yield* Effect.addFinalizer(() => events.drain)
      const store = yield* ConversationStore
      const recording = settings.recording
      // Created after the event batcher: closed before it, so its last proxy.turn events go out.
      const recorder =
        recording === undefined || !recording.enabled
          ? null
          : yield* Recorder.make(
              {
                ...recording,
                nodeId: settings.nodeId,
                secrets: [
                  ...recording.secrets,
                  ...loaded.flatMap((p) => Option.toArray(p.key)).map(Redacted.value)
                ]
              },
              store,
              events.push
            )
      const prices = settings.prices ?? []
      const budget = settings.budget ?? { session: null, daily: null }
      /** Spend per session or job (`holderKey`), and of the current UTC day. */
      const spent = new Map<string, number>()
      let today = { day: new Date().toISOString().slice(0, 10), usd: 0 }
      if (prices.length > 0 && (budget.session !== null || budget.daily !== null)) {
        const loaded = yield* store
          .spent(30)
          .pipe(
            Effect.catchAll((error) =>
              Effect.as(
                Effect.logWarning(`proxy budgets start from zero: cannot read past spend (${error.message})`),
                { byHolder: [], today: 0 }
              )
            )
          )
        for (const { key, usd } of loaded.byHolder) spent.set(key, usd)
        today.usd = loaded.today
      }
      /** Holders (and days) whose spent budget has been announced by an event already. */
      const announced = new Set<string>()
      const addSpend = (client: ProxyTokens.ProxyClient, usd: number) => {
        const day = new Date().toISOString().slice(0, 10)
        if (today.day !== day) today = { day, usd: 0 }
        today.usd += usd
        Option.map(ProxyTokens.holderOf(client), (holder) => {
          const key = ProxyTokens.holderKey(holder)
          spent.set(key, (spent.get(key) ?? 0) + usd)
        })
      }
      /** The budget a client has spent, if any: its own, else the day's. */
      const overBudget = (
        client: ProxyTokens.ProxyClient
      ): {
        readonly scope: "session" | "job" | "daily"
        readonly key: string
        readonly budget: number
        readonly spent: number
      } | null => {
        const holder = ProxyTokens.holderOf(client)
        if (budget.session !== null && Option.isSome(holder)) {
          const key = ProxyTokens.holderKey(holder.value)
          const usd = spent.get(key) ?? 0
          if (usd >= budget.session)
            return { scope: holder.value.kind, key, budget: budget.session, spent: usd }
        }
        if (budget.daily !== null) {
          const day = new Date().toISOString().slice(0, 10)
          if (today.day !== day) today = { day, usd: 0 }
          if (today.usd >= budget.daily)
            return { scope: "daily", key: `daily:${day}`, budget: budget.daily, spent: today.usd }
        }
        return null
      }
      // Valid tokens seen lately, so a request costs no hash; a new admin token means a new process.
      const verdicts = new Map<string, ProxyTokens.ProxyClient>()
      /** Sessions and jobs running on this node: only their tokens are accepted. */
      const live = new Set<string>()
      const isLive = (client: ProxyTokens.ProxyClient) =>
        Option.match(ProxyTokens.holderOf(client), {
          onNone: () => true,
          onSome: (holder) => live.has(ProxyTokens.holderKey(holder))
        })
      const verify = (token: string): Option.Option<ProxyTokens.ProxyClient> => {
        const known = verdicts.get(token)
        const verdict = known !== undefined ? Option.some(known) : tokens.verify(token)
        if (Option.isSome(verdict) && known === undefined) {
          if (verdicts.size >= 1024) verdicts.clear()
          verdicts.set(token, verdict.value)
        }
        return Option.filter(verdict, isLive)
      }
      const modelsSeen = new Map<string, Set<string>>()
      /** The model as statistics and metrics name it: at most `maxModels` per provider, then "other". */
      const modelLabel = (provider: string, model: string | null): string => {
        if (model === null) return "unknown"
        if (!/^[A-Za-z0-9._:/@-]{1,100}$/.test(model)) return "other"
        const seen = modelsSeen.get(provider) ?? new Set<string>()
        modelsSeen.set(provider, seen)
        if (seen.has(model)) return model
        if (seen.size >= maxModels) return "other"
        seen.add(model)
        return model
      }

      /** Records an outcome: statistics now, the event and metrics in the background. */
      const record = (outcome: Outcome) => {
        const state = states.get(outcome.provider)
        if (state !== undefined) {
          state.requests += 1
          if (outcome.errorKind !== null) state.errors += 1
          state.lastStatus = outcome.status
          state.lastRequestAt = new Date()
        }
        // Models come from clients: statistics and metric labels keep a bounded number of them.
        const model = modelLabel(outcome.provider, outcome.model)
        const key = `${outcome.provider}\0${model}`
        const entry = tallies.get(key) ?? {
          provider: outcome.provider,
          model: outcome.model === null ? null : model,
          tally: { requests: 0, errors: 0, inputTokens: 0, outputTokens: 0, latencies: [], ttfbs: [] }
        }
        tallies.set(key, entry)
        entry.tally.requests += 1
        if (outcome.errorKind !== null) entry.tally.errors += 1
        entry.tally.inputTokens += outcome.inputTokens ?? 0
        entry.tally.outputTokens += outcome.outputTokens ?? 0
        pushSample(entry.tally.latencies, outcome.latencyMillis)
        if (outcome.ttfbMillis !== null) pushSample(entry.tally.ttfbs, outcome.ttfbMillis)

        const sessionId = outcome.client.kind === "session" ? outcome.client.sessionId : undefined
        const jobId = outcome.client.kind === "job" ? outcome.client.jobId : undefined
        // Built by this code from checked values: no validation on the request path.
        const event = newEvent(
          "proxy.request",
          {
            // These come from the client or the upstream: made storable and bounded, so that
            // one request cannot make the log refuse the batch it is in.
            provider: truncate(toStorable(outcome.provider), 100),
            model: outcome.model === null ? null : truncate(toStorable(outcome.model), 200),
            method: truncate(toStorable(outcome.method), 20),
            path: truncate(toStorable(outcome.path), 2048),
            status: outcome.status,
            latencyMillis: round(outcome.latencyMillis),
            ttfbMillis: outcome.ttfbMillis === null ? null : round(outcome.ttfbMillis),
            inputTokens: outcome.inputTokens,
            outputTokens: outcome.outputTokens,
            attempts: outcome.attempts,
            streamed: outcome.streamed,
            client: outcome.client.kind,
            errorKind: outcome.errorKind,
            bytes: outcome.bytes
          },
          {
            source: { nodeId: settings.nodeId, component: "proxy" },
            tenantId: "default",
            severity:
              outcome.errorKind === null
                ? "info"
                : outcome.status >= 500 || outcome.status === 0
                  ? "warn"
                  : "info",
            ...(sessionId !== undefined ? { sessionId } : {}),
            ...(jobId !== undefined ? { jobId } : {})
          }
        )
        const provider = outcome.provider
        tagged(requestsTotal, { provider, model, status: String(outcome.status) }).unsafeUpdate(1, [])
        if (outcome.errorKind !== null)
          tagged(errorsTotal, { provider, kind: outcome.errorKind }).unsafeUpdate(1, [])
        tagged(latencySeconds, { provider }).unsafeUpdate(outcome.latencyMillis / 1000, [])
        if (outcome.ttfbMillis !== null)
          tagged(ttfbSeconds, { provider }).unsafeUpdate(outcome.ttfbMillis / 1000, [])
        if (outcome.inputTokens !== null)
          tagged(tokensTotal, { provider, model, direction: "input" }).unsafeUpdate(outcome.inputTokens, [])
        if (outcome.outputTokens !== null)
          tagged(tokensTotal, { provider, model, direction: "output" }).unsafeUpdate(outcome.outputTokens, [])
        events.push(event)
      }

      /** Records a failure of `state`'s provider; when it opens the circuit, says so in the log. */
      const failed = (state: ProviderState) => {
        if (!state.circuit.failed()) return
        events.push(
          newEvent(
            "proxy.circuit_opened",
            {
              provider: truncate(toStorable(state.provider.config.name), 100),
              failures: state.circuit.failures,
              openMillis: state.provider.config.circuit.openMs
            },
            {
              source: { nodeId: settings.nodeId, component: "proxy" },
              tenantId: "default",
              severity: "error"
            }
          )
        )
      }

      /** `answer`, with a defect in it logged and answered 500 instead of ending the process. */
      const serve = (request: http.IncomingMessage, response: http.ServerResponse): void => {
        try {
          answer(request, response)
        } catch (defect) {
          runFork(Effect.logError("the proxy failed on a request", Cause.die(defect)))
          writeError(response, "openai", 500, "internal error; see the server log")
        }
      }

      const answer = (request: http.IncomingMessage, response: http.ServerResponse): void => {
        const started = performance.now()
        const headers = request.headers
        const url = request.url ?? "/"
        const parsed = target(url)
        const state = parsed === null ? undefined : states.get(parsed.name)
        const format: ProviderFormat = state?.provider.config.format ?? "openai"
        const guard = settings.guard
        const address = guard?.address(request)
        const locked = guard !== undefined && address !== undefined ? guard.lockedFor(address) : 0
        if (locked > 0) {
          request.resume()
          const seconds = Math.ceil(locked / 1000)
          return writeError(
            response,
            format,
            429,
            `too many refused credentials from this address; try again in ${seconds} s`,
            { "retry-after": String(seconds), connection: "close" }
          )
        }
        const credential = ProxyTokens.presented(headers)
        const client = Option.flatMap(credential, verify)
        if (guard !== undefined && address !== undefined && Option.isSome(credential)) {
          if (Option.isSome(client)) guard.accepted(address)
          else guard.refused(address, "proxy")
        }
        if (Option.isNone(client)) {
          request.resume()
          return writeError(
            response,
            format,
            401,
            Option.isNone(credential)
              ? "no credentials: send the vibes token as 'authorization: Bearer <token>' or 'x-api-key: <token>'"
              : "the token is not valid for this server"
          )
        }
        const method = request.method ?? "GET"
        const base = {
          provider: parsed?.name ?? "",
          method,
          path: parsed?.rest.split("?")[0] ?? url,
          client: client.value,
          attempts: 0,
          streamed: false,
          ttfbMillis: null,
          inputTokens: null,
          outputTokens: null,
          bytes: 0
        }
        const refuse = (
          status: number,
          errorKind: ProxyErrorKind,
          message: string,
          extraHeaders: Record<string, string> = {},
          model: string | null = null
        ) => {
          record({ ...base, model, status, errorKind, latencyMillis: performance.now() - started })
          writeError(response, format, status, message, extraHeaders)
        }
        if (parsed === null) {
          request.resume()
          return refuse(
            400,
            "unknown_provider",
            "the path must be /proxy/<provider>/<path>, without '.' or '..' segments"
          )
        }
        if (state === undefined) {
          request.resume()
          return refuse(
            404,
            "unknown_provider",
            `unknown provider '${parsed.name}'; this server knows: ${[...states.keys()].join(", ")}`
          )
        }
        const provider = state.provider
        const clientKey = Option.match(ProxyTokens.holderOf(client.value), {
          onNone: () => "admin",
          onSome: ProxyTokens.holderKey
        })
        const wait = limiter.take(clientKey)
        if (wait > 0) {
          request.resume()
          return refuse(
            429,
            "rate_limited",
            `too many requests from this client; retry in ${Math.ceil(wait)} s`,
            {
              "retry-after": String(Math.ceil(wait))
            }
          )
        }
        const over = overBudget(client.value)
        if (over !== null) {
          request.resume()
          const message = `vibes proxy: the ${over.scope} budget of $${over.budget.toFixed(2)} is spent ($${over.spent.toFixed(4)}); raise VIBES_PROXY_BUDGET_${over.scope === "daily" ? "DAILY" : "SESSION"} to go on`
          const answer = budgetAnswer(format, message)
          record({
            ...base,
            model: null,
            status: answer.status,
            errorKind: "budget_exceeded",
            latencyMillis: performance.now() - started
          })
          if (!announced.has(over.key)) {
            announced.add(over.key)
            events.push(
              newEvent(
                "proxy.budget_exceeded",
                { scope: over.scope, budgetUsd: over.budget, spentUsd: over.spent },
                {
                  source: { nodeId: settings.nodeId, component: "proxy" },
                  tenantId: "default",
                  severity: "warn",
                  ...(client.value.kind === "session" ? { sessionId: client.value.sessionId } : {}),
                  ...(client.value.kind === "job" ? { jobId: client.value.jobId } : {})
                }
              )
            )
          }
          const text = JSON.stringify(answer.body)
          response.writeHead(answer.status, {
            ...securityHeaders,
            "content-type": "application/json",
            "content-length": Buffer.byteLength(text),
            "x-should-retry": "false"
          })
          return void response.end(text)
        }
        const tooLarge = () =>
          refuse(413, "body_too_large", `the request body is larger than ${settings.maxBodyBytes} bytes`, {
            connection: "close"
          })
        const declared = Number(headers["content-length"] ?? "0")
        if (Number.isFinite(declared) && declared > settings.maxBodyBytes) return tooLarge()
        readBody(request, settings.maxBodyBytes, (read) => {
          if (read._tag === "TooLarge") return tooLarge()
          if (read._tag === "Gone") {
            record({
              ...base,
              model: null,
              status: 0,
              errorKind: "client_closed",
              latencyMillis: performance.now() - started
            })
            return
          }
          const body = read.body
          const model = Usage.requestModel(body, headers["content-type"])
          if (!Providers.usable(provider)) {
            return refuse(
              503,
              "no_key",
              `no API key is configured for provider '${provider.config.name}' (${provider.keySource ?? "none"})`,
              {},
              model
            )
          }
          const admitted = state.circuit.admit()
          if (!admitted.ok) {
            return refuse(
              503,
              "circuit_open",
              `provider '${provider.config.name}' is failing; its circuit is open`,
              { "retry-after": String(Math.ceil(admitted.retryAfterMs / 1000)) },
              model
            )
          }
          forward(state, request, response, parsed.rest, body, { ...base, model }, started)
        })
      }

      /** Sends the request upstream (with retries) and answers with its response. */
      const forward = (
        state: ProviderState,
        request: http.IncomingMessage,
        response: http.ServerResponse,
        rest: string,
        body: Buffer,
        base: Omit<Outcome, "status" | "latencyMillis" | "errorKind">,
        started: number
      ): void => {
        const provider = state.provider
        const config = provider.config
        const format = config.format
        const incomingHeaders = request.headers
        const listed = connectionListed(incomingHeaders["connection"])
        const upstreamHeaders: http.OutgoingHttpHeaders = {}
        for (const name in incomingHeaders) {
          const value = incomingHeaders[name]
          if (value === undefined || hopByHop.has(name) || notForwarded.has(name) || listed.has(name))
            continue
          upstreamHeaders[name] = value
        }
        for (const name in config.headers) upstreamHeaders[name.toLowerCase()] = config.headers[name]
        upstreamHeaders["accept-encoding"] = "identity"
        upstreamHeaders["content-length"] = String(body.length)
        if (Option.isSome(provider.keyHeader)) {
          const [name, value] = provider.keyHeader.value
          upstreamHeaders[name] = value
        }
        const path = provider.basePath + (rest.startsWith("/") ? rest : `/${rest}`)
        let attempts = 0
        let settled = false
        let answered = false
        let upstream: http.ClientRequest | null = null
        let backoff: NodeJS.Timeout | null = null
        let passing = false
        let clientGone = false
        const finish = (outcome: Partial<Outcome> & Pick<Outcome, "status" | "errorKind">) => {
          if (settled) return
          settled = true
          record({ ...base, attempts, latencyMillis: performance.now() - started, ...outcome })
        }
        // The client went away: the upstream request (or the wait for the next attempt) goes too.
        response.once("close", () => {
          if (response.writableFinished) return
          clientGone = true
          if (passing) {
            // The response under way records itself when its upstream closes.
            upstream?.destroy()
            return
          }
          if (backoff !== null) clearTimeout(backoff)
          upstream?.destroy()
          if (!answered) state.circuit.released()
          finish({ status: 0, errorKind: "client_closed" })
        })
        const retryIn = (delay: number) => {
          backoff = setTimeout(() => {
            backoff = null
            attempt()
          }, delay)
        }
        const attempt = () => {
          if (settled) return
          attempts += 1
          upstream = send(provider, request.method ?? "GET", path, upstreamHeaders, body, (result) => {
            if (settled) return
            const last = attempts >= config.retry.maxAttempts
            if (result._tag === "Failed") {
              if (result.kind === "connect" && !last) return retryIn(backoffMs(config.retry, attempts))
              answered = true
              failed(state)
              const status = result.kind === "timeout" ? 504 : 502
              finish({ status, errorKind: result.kind })
              return writeError(
                response,
                format,
                status,
                result.kind === "timeout"
                  ? `provider '${config.name}' did not answer in time (${result.message})`
                  : `cannot reach provider '${config.name}': ${result.message}`
              )
            }
            const upstreamResponse = result.response
            const status = upstreamResponse.statusCode ?? 502
            const retryable = status === 429 || status >= 500
            if (retryable && !last) {
              const after = retryAfterMs(upstreamResponse.headers["retry-after"])
              if (after === null || after <= config.retry.maxRetryAfterMs) {
                upstreamResponse.resume()
                return retryIn(Math.max(after ?? 0, backoffMs(config.retry, attempts)))
              }
            }
            answered = true
            if (status >= 500) failed(state)
            else state.circuit.succeeded()
            pass(upstreamResponse, status)
          })
        }

        /** Writes the upstream response back as it arrives, reading usage on the way; records it at its end. */
        const pass = (upstreamResponse: http.IncomingMessage, status: number) => {
          passing = true
          const ttfbMillis = performance.now() - started
          const contentType = String(upstreamResponse.headers["content-type"] ?? "")
          const streamed = contentType.includes("text/event-stream")
          const usage: Usage.Usage = { model: null, inputTokens: null, outputTokens: null }
          const sse = streamed ? new Usage.SseReader(usage) : null
          const json = !streamed && contentType.includes("json") ? new Usage.JsonReader() : null
          let bytes = 0
          let ended = false
          // The answer's chunks, kept by reference for the recorder (up to its limit).
          const api = recorder === null || !config.record ? null : Turns.apiOf(base.method, base.path)
          const captured: Array<Buffer> | null = api === null ? null : []
          const captureLimit = recording?.maxResponseBytes ?? 0
          let capturedBytes = 0
          const end = (errorKind: ProxyErrorKind | null) => {
            json?.end(usage)
            const model = usage.model ?? base.model
            const costUsd =
              prices.length === 0
                ? null
                : Prices.costOf(prices, config.name, model, Usage.priced(usage, format))
            if (costUsd !== null && costUsd > 0) addSpend(base.client, costUsd)
            if (recorder !== null && api !== null && captured !== null) {
              const client = base.client
              recorder.submit({
                api,
                provider: config.name,
                path: base.path,
                status,
                errorKind,
                streamed,
                client: client.kind,
                sessionId: client.kind === "session" ? client.sessionId : null,
                jobId: client.kind === "job" ? client.jobId : null,
                latencyMs: performance.now() - started,
                ttfbMs: ttfbMillis,
                model,
                costUsd,
                request: body,
                response: captured,
                responseBytes: bytes,
                responseTruncated: capturedBytes < bytes
              })
            }
            finish({
              status,
              errorKind,
              model: usage.model ?? base.model,
              ttfbMillis,
              inputTokens: usage.inputTokens,
              outputTokens: usage.outputTokens,
              streamed,
              bytes
            })
          }
          upstream?.setTimeout(config.idleTimeoutMs, () =>
            upstream?.destroy(new Error(`no data for ${config.idleTimeoutMs} ms`))
          )
          const responseHeaders: http.OutgoingHttpHeaders = {}
          const listedUp = connectionListed(upstreamResponse.headers["connection"])
          for (const name in upstreamResponse.headers) {
            const value = upstreamResponse.headers[name]
            if (value === undefined || hopByHop.has(name) || notReturned.has(name) || listedUp.has(name))
              continue
            responseHeaders[name] = value
          }
          // vibes' own headers on every answer (an upstream HTML page is still on vibes' origin);
          // an event stream's tell proxies not to buffer it.
          Object.assign(responseHeaders, streamed ? sseHeaders : securityHeaders)
          try {
            response.writeHead(status, responseHeaders)
          } catch (error) {
            // A header Node will not send (an invalid value): nothing of this answer can go back.
            ended = true
            upstream?.destroy()
            finish({ status: 502, errorKind: "upstream_status", ttfbMillis })
            return writeError(
              response,
              format,
              502,
              `provider '${config.name}' sent a header that cannot be passed on: ${error instanceof Error ? error.message : String(error)}`
            )
          }
          // An event stream's headers go now: its first event may be a while.
          if (streamed) response.flushHeaders()
          const drained = () => upstreamResponse.resume()
          upstreamResponse.on("data", (chunk: Buffer) => {
            bytes += chunk.length
            sse?.push(chunk)
            json?.push(chunk)
            if (captured !== null && capturedBytes + chunk.length <= captureLimit) {
              captured.push(chunk)
              capturedBytes += chunk.length
            }
            if (!response.write(chunk)) {
              upstreamResponse.pause()
              response.once("drain", drained)
            }
          })
          upstreamResponse.on("end", () => {
            ended = true
            response.end()
            end(status >= 400 ? "upstream_status" : null)
          })
          upstreamResponse.on("error", () => undefined)
          upstreamResponse.on("close", () => {
            if (ended) return
            // Cut off before its end: the client must not take what it got for a whole answer.
            end(clientGone ? "client_closed" : "upstream_reset")
            response.destroy()
          })
        }

        attempt()
      }

      const providers = Effect.sync(() =>
        [...states.values()].map(
          (state) =>
            new ProviderInfo({
              name: state.provider.config.name,
              baseUrl: state.provider.config.baseUrl,
              format: state.provider.config.format,
              keySource: state.provider.keySource,
              hasKey: Option.isSome(state.provider.key),
              circuit: state.circuit.state(),
              consecutiveFailures: state.circuit.failures,
              requests: state.requests,
              errors: state.errors,
              lastStatus: state.lastStatus,
              lastRequestAt:
                state.lastRequestAt === null ? null : DateTime.unsafeFromDate(state.lastRequestAt)
            })
        )
      )

      const stats = Effect.sync(
        () =>
          new ProxyStats({
            since,
            rows: [...tallies.values()]
              .sort(
                (a, b) => a.provider.localeCompare(b.provider) || (a.model ?? "").localeCompare(b.model ?? "")
              )
              .map(
                ({ provider, model, tally }) =>
                  new ProxyStatsRow({
                    provider,
                    model,
                    requests: tally.requests,
                    errors: tally.errors,
                    inputTokens: tally.inputTokens,
                    outputTokens: tally.outputTokens,
                    latencyP50Ms: round(percentile(tally.latencies, 50)),
                    latencyP99Ms: round(percentile(tally.latencies, 99)),
                    ttfbP50Ms: round(percentile(tally.ttfbs, 50))
                  })
              )
          })
      )

      const clientEnv = (holder: ProxyTokens.Holder, serverUrl: string): Record<string, string> => {
        live.add(ProxyTokens.holderKey(holder))
        const token = tokens.mint(holder)
        const root = `${serverUrl.replace(/\/+$/, "")}/proxy`
        const env: Record<string, string> = { VIBES_PROXY_URL: root, VIBES_PROXY_TOKEN: token }
        for (const state of states.values()) {
          const config = state.provider.config
          if (!Providers.usable(state.provider)) continue
          if (config.keyEnv !== undefined) env[config.keyEnv] = token
          if (config.name === "anthropic") env["ANTHROPIC_BASE_URL"] = `${root}/anthropic`
          if (config.name === "openai") env["OPENAI_BASE_URL"] = `${root}/openai/v1`
        }
        return env
      }

      const keyVariables = new Set(
        loaded.flatMap((provider) => (provider.config.keyEnv === undefined ? [] : [provider.config.keyEnv]))
      )
      const ended = (holder: ProxyTokens.Holder) => {
        live.delete(ProxyTokens.holderKey(holder))
      }
      const keys = loaded.flatMap((provider) => Option.toArray(provider.key))
      const replay = (name: string, path: string, body: Buffer) =>
        Effect.async<
          { status: number; body: Buffer; latencyMs: number; costUsd: number | null; format: ProviderFormat },
          ReplayFailed
        >((resume) => {
          const state = states.get(name)
          if (state === undefined || !Providers.usable(state.provider)) {
            resume(
              Effect.fail(
                new ReplayFailed({ message: `provider '${name}' is not configured with a key on this node` })
              )
            )
            return
          }
          const provider = state.provider
          const headers: http.OutgoingHttpHeaders = {
            "content-type": "application/json",
            "content-length": String(body.length),
            "accept-encoding": "identity",
            ...(provider.config.format === "anthropic" ? { "anthropic-version": "2023-06-01" } : {})
          }
          for (const header in provider.config.headers)
            headers[header.toLowerCase()] = provider.config.headers[header]
          if (Option.isSome(provider.keyHeader))
            headers[provider.keyHeader.value[0]] = provider.keyHeader.value[1]
          const started = performance.now()
          const request = send(provider, "POST", provider.basePath + path, headers, body, (attempt) => {
            if (attempt._tag === "Failed") {
              resume(Effect.fail(new ReplayFailed({ message: `provider '${name}': ${attempt.message}` })))
              return
            }
            const chunks: Array<Buffer> = []
            attempt.response.on("data", (chunk: Buffer) => chunks.push(chunk))
            attempt.response.on("error", (error) =>
              resume(Effect.fail(new ReplayFailed({ message: error.message })))
            )
            attempt.response.on("end", () => {
              const answer = Buffer.concat(chunks)
              const usage: Usage.Usage = { model: null, inputTokens: null, outputTokens: null }
              const reader = new Usage.JsonReader(answer.length + 1)
              reader.push(answer)
              reader.end(usage)
              const format = provider.config.format
              const costUsd =
                prices.length === 0
                  ? null
                  : Prices.costOf(prices, name, usage.model, Usage.priced(usage, format))
              if (costUsd !== null && costUsd > 0) addSpend({ kind: "admin" }, costUsd)
              resume(
                Effect.succeed({
                  status: attempt.response.statusCode ?? 502,
                  body: answer,
                  latencyMs: performance.now() - started,
                  costUsd,
                  format
                })
              )
            })
          })
          return Effect.sync(() => request.destroy())
        })
      return Proxy.of({ serve, providers, stats, clientEnv, ended, keyVariables, keys, replay })
    })
  )
