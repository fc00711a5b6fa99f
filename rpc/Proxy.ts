/**
 * The AI-provider proxy: how providers are configured, what the `Proxy` RPC group answers
 * (providers with their health, and request statistics), and the wire names of its settings.
 */
import { Schema } from "effect"
import * as Rpc from "@effect/rpc/Rpc"
import * as RpcGroup from "@effect/rpc/RpcGroup"
import { AuthMiddleware } from "./Auth.js"

/** A provider's name: the `<provider>` of `/proxy/<provider>/…`. */
export const ProviderName = Schema.String.pipe(
  Schema.pattern(/^[a-z0-9][a-z0-9_-]{0,62}$/, {
    message: () => "a provider name is 1 to 63 lower-case letters, digits, '-' or '_'"
  })
)

/** Whose API the provider speaks: decides error bodies and where token usage is read. */
export const ProviderFormat = Schema.Literal("anthropic", "openai")
export type ProviderFormat = typeof ProviderFormat.Type

/**
 * How the provider key goes upstream: `x-api-key: KEY`, `authorization: Bearer KEY`, a header
 * of your choice (with an optional prefix), or no key at all (a local model server).
 */
export const ProviderAuth = Schema.Union(
  Schema.Literal("x-api-key", "bearer", "none"),
  Schema.Struct({
    header: Schema.String.pipe(Schema.pattern(/^[A-Za-z0-9-]{1,100}$/)),
    prefix: Schema.optional(Schema.String)
  })
)
export type ProviderAuth = typeof ProviderAuth.Type

/** Retries of a request that failed before its first byte reached the client. */
export const ProviderRetry = Schema.Struct({
  /** Attempts in all, the first included (1 = no retry). */
  maxAttempts: Schema.Int.pipe(Schema.between(1, 10)),
  initialDelayMs: Schema.Int.pipe(Schema.between(0, 60_000)),
  maxDelayMs: Schema.Int.pipe(Schema.between(0, 300_000)),
  /** A `Retry-After` longer than this is not waited for: the 429/503 goes back to the client. */
  maxRetryAfterMs: Schema.Int.pipe(Schema.between(0, 300_000))
})
export type ProviderRetry = typeof ProviderRetry.Type

/** The circuit breaker: open after `failures` failures in a row, for `openMs`, then one trial. */
export const ProviderCircuit = Schema.Struct({
  failures: Schema.Int.pipe(Schema.between(1, 1000)),
  openMs: Schema.Int.pipe(Schema.between(100, 3_600_000))
})
export type ProviderCircuit = typeof ProviderCircuit.Type

/** One provider as configured (`VIBES_PROXY_PROVIDERS` or the file in `VIBES_PROXY_CONFIG`). */
export const ProviderConfig = Schema.Struct({
  name: ProviderName,
  /** Upstream base URL; the path after `/proxy/<name>` is appended to it. */
  baseUrl: Schema.String.pipe(
    Schema.filter((s) => {
      try {
        const url = new URL(s)
        return (url.protocol === "http:" || url.protocol === "https:") && url.search === "" && url.hash === ""
          ? true
          : "baseUrl must be an http(s) URL without query or fragment"
      } catch {
        return "baseUrl must be an http(s) URL"
      }
    })
  ),
  format: ProviderFormat,
  auth: ProviderAuth,
  /** The environment variable holding the key. */
  keyEnv: Schema.optional(Schema.String.pipe(Schema.pattern(/^[A-Za-z_][A-Za-z0-9_]*$/))),
  /** A file holding the key (absolute path, mode 0600): read at start. */
  keyFile: Schema.optional(Schema.String),
  /** Headers added to every upstream request. */
  headers: Schema.optionalWith(Schema.Record({ key: Schema.String, value: Schema.String }), {
    default: () => ({})
  }),
  connectTimeoutMs: Schema.optionalWith(Schema.Int.pipe(Schema.between(1, 600_000)), {
    default: () => 10_000
  }),
  /** Until the upstream's response headers: past it, 504. */
  firstByteTimeoutMs: Schema.optionalWith(Schema.Int.pipe(Schema.between(1, 3_600_000)), {
    default: () => 300_000
  }),
  /** Longest silence within a response body before it is cut. */
  idleTimeoutMs: Schema.optionalWith(Schema.Int.pipe(Schema.between(1, 3_600_000)), {
    default: () => 300_000
  }),
  retry: Schema.optionalWith(ProviderRetry, {
    default: () => ({ maxAttempts: 3, initialDelayMs: 250, maxDelayMs: 8_000, maxRetryAfterMs: 60_000 })
  }),
  circuit: Schema.optionalWith(ProviderCircuit, { default: () => ({ failures: 5, openMs: 30_000 }) }),
  /** Whether its requests are recorded as conversations (bodies, redacted). */
  record: Schema.optionalWith(Schema.Boolean, { default: () => true })
})
export type ProviderConfig = typeof ProviderConfig.Type

/** The state of a provider's circuit breaker. */
export const CircuitState = Schema.Literal("closed", "open", "half-open")
export type CircuitState = typeof CircuitState.Type

/** A provider as `Proxy.Providers` reports it (never its key). */
export class ProviderInfo extends Schema.Class<ProviderInfo>("ProviderInfo")({
  name: Schema.String,
  baseUrl: Schema.String,
  format: ProviderFormat,
  /** Where the key comes from (`env:NAME`, `file:PATH`) and whether one was found. */
  keySource: Schema.NullOr(Schema.String),
  hasKey: Schema.Boolean,
  circuit: CircuitState,
  consecutiveFailures: Schema.NonNegativeInt,
  requests: Schema.NonNegativeInt,
  errors: Schema.NonNegativeInt,
  lastStatus: Schema.NullOr(Schema.Int),
  lastRequestAt: Schema.NullOr(Schema.DateTimeUtc)
}) {}

/** Request counts, latency and tokens of one provider and model since the node started. */
export class ProxyStatsRow extends Schema.Class<ProxyStatsRow>("ProxyStatsRow")({
  provider: Schema.String,
  model: Schema.NullOr(Schema.String),
  requests: Schema.NonNegativeInt,
  errors: Schema.NonNegativeInt,
  inputTokens: Schema.NonNegativeInt,
  outputTokens: Schema.NonNegativeInt,
  latencyP50Ms: Schema.Number,
  latencyP99Ms: Schema.Number,
  ttfbP50Ms: Schema.Number
}) {}

/** What `Proxy.Stats` answers. */
export class ProxyStats extends Schema.Class<ProxyStats>("ProxyStats")({
  since: Schema.DateTimeUtc,
  rows: Schema.Array(ProxyStatsRow)
}) {}

/** RPCs about the proxy of the node a client talks to. */
export class ProxyRpcs extends RpcGroup.make(
  Rpc.make("Providers", { success: Schema.Array(ProviderInfo) }),
  Rpc.make("Stats", { success: ProxyStats })
)
  .prefix("Proxy.")
  .middleware(AuthMiddleware) {}

/** Why a proxied request failed, as `proxy.request` events and metrics name it. */
export const ProxyErrorKind = Schema.Literal(
  "unauthorized",
  "unknown_provider",
  "no_key",
  "body_too_large",
  "rate_limited",
  "circuit_open",
  "budget_exceeded",
  "connect",
  "timeout",
  "upstream_status",
  "upstream_reset",
  "client_closed"
)
export type ProxyErrorKind = typeof ProxyErrorKind.Type
