/**
 * The providers the proxy knows: the built-in Anthropic and OpenAI entries, overridden or
 * extended by configuration, each with its key loaded at start (from an environment variable or a
 * 0600 file) and a keep-alive connection pool to its upstream.
 */
import * as fs from "node:fs"
import * as http from "node:http"
import * as https from "node:https"
import * as path from "node:path"
import { Effect, Option, Redacted, Schema } from "effect"
import type { ProviderConfig } from "../../rpc/Proxy.js"

/** A provider's configuration cannot be used; the server does not start. */
export class ProxyConfigError extends Schema.TaggedError<ProxyConfigError>()("ProxyConfigError", {
  message: Schema.String
}) {}

/** What a provider has unless its configuration says otherwise. */
export const defaults = {
  headers: {},
  connectTimeoutMs: 10_000,
  firstByteTimeoutMs: 300_000,
  idleTimeoutMs: 300_000,
  retry: { maxAttempts: 3, initialDelayMs: 250, maxDelayMs: 8_000, maxRetryAfterMs: 60_000 },
  circuit: { failures: 5, openMs: 30_000 },
  record: true
} satisfies Partial<ProviderConfig>

/** The providers every node has unless configuration replaces them by name. */
export const builtIns: ReadonlyArray<ProviderConfig> = [
  {
    ...defaults,
    name: "anthropic",
    baseUrl: "https://api.anthropic.com",
    format: "anthropic",
    auth: "x-api-key",
    keyEnv: "ANTHROPIC_API_KEY"
  },
  {
    ...defaults,
    name: "openai",
    baseUrl: "https://api.openai.com",
    format: "openai",
    auth: "bearer",
    keyEnv: "OPENAI_API_KEY"
  }
]

/** A provider ready to take requests. */
export interface Provider {
  readonly config: ProviderConfig
  /** The upstream base, without a trailing slash. */
  readonly base: URL
  readonly basePath: string
  readonly key: Option.Option<Redacted.Redacted<string>>
  /** `env:NAME` or `file:PATH`, or null when the provider takes no key. */
  readonly keySource: string | null
  /** Keep-alive connections to the upstream. */
  readonly agent: http.Agent
  readonly request: typeof http.request
  /** The header that carries the key upstream, and its value. */
  readonly keyHeader: Option.Option<readonly [string, string]>
}

/** The built-ins with the configured providers on top (same name replaces). */
export const merge = (configured: ReadonlyArray<ProviderConfig>): ReadonlyArray<ProviderConfig> => {
  const byName = new Map<string, ProviderConfig>()
  for (const provider of [...builtIns, ...configured]) byName.set(provider.name, provider)
  return [...byName.values()]
}

const readKeyFile = (file: string): Effect.Effect<string, ProxyConfigError> =>
  Effect.try({
    try: () => {
      if (!path.isAbsolute(file)) throw new Error("the path must be absolute")
      const stat = fs.statSync(file)
      if ((stat.mode & 0o077) !== 0) {
        throw new Error(`its mode is ${(stat.mode & 0o777).toString(8)}; make it 0600 (chmod 600 ${file})`)
      }
      const key = fs.readFileSync(file, "utf8").trim()
      if (key === "") throw new Error("it is empty")
      return key
    },
    catch: (cause) =>
      new ProxyConfigError({
        message: `cannot use the key file ${file}: ${cause instanceof Error ? cause.message : String(cause)}`
      })
  })

const keyHeader = (
  auth: ProviderConfig["auth"],
  key: Option.Option<Redacted.Redacted<string>>
): Option.Option<readonly [string, string]> =>
  Option.flatMap(key, (redacted) => {
    const value = Redacted.value(redacted)
    if (auth === "none") return Option.none()
    if (auth === "x-api-key") return Option.some(["x-api-key", value] as const)
    if (auth === "bearer") return Option.some(["authorization", `Bearer ${value}`] as const)
    return Option.some([auth.header.toLowerCase(), `${auth.prefix ?? ""}${value}`] as const)
  })

/** Loads one provider: its key and its connection pool. */
export const load = (
  config: ProviderConfig,
  env: Readonly<Record<string, string | undefined>> = process.env
): Effect.Effect<Provider, ProxyConfigError> =>
  Effect.gen(function* () {
    let key = Option.none<Redacted.Redacted<string>>()
    let keySource: string | null = null
    if (config.keyFile !== undefined) {
      key = Option.some(Redacted.make(yield* readKeyFile(config.keyFile)))
      keySource = `file:${config.keyFile}`
    } else if (config.keyEnv !== undefined) {
      const value = env[config.keyEnv]
      key =
        value !== undefined && value.trim() !== "" ? Option.some(Redacted.make(value.trim())) : Option.none()
      keySource = `env:${config.keyEnv}`
    }
    const base = new URL(config.baseUrl)
    const secure = base.protocol === "https:"
    const agentOptions = {
      keepAlive: true,
      keepAliveMsecs: 1000,
      maxSockets: 512,
      maxFreeSockets: 64,
      scheduling: "lifo" as const
    }
    return {
      config,
      base,
      basePath: base.pathname.replace(/\/+$/, ""),
      key,
      keySource,
      agent: secure ? new https.Agent(agentOptions) : new http.Agent(agentOptions),
      request: secure ? https.request : http.request,
      keyHeader: keyHeader(config.auth, key)
    }
  })

/** Whether requests can go to the provider: it needs a key unless its auth is `none`. */
export const usable = (provider: Provider): boolean =>
  provider.config.auth === "none" || Option.isSome(provider.key)
