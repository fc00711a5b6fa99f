/**
 * Proxy commands of the CLI: `vibes proxy ls` (providers and their health) and
 * `vibes proxy stats` (requests, errors, latency and tokens per provider and model).
 */
import { DateTime, Effect, Schema } from "effect"
import * as Command from "@effect/cli/Command"
import * as Options from "@effect/cli/Options"
import { ProviderInfo, ProxyStats } from "../../rpc/Proxy.js"
import { connectionOptions, resolveConnection, withClient } from "./Connection.js"
import { json as toJson, table } from "./Display.js"

const json = Options.boolean("json").pipe(Options.withDescription("Print JSON instead of a table"))

const print = (text: string) =>
  Effect.sync(() => process.stdout.write(text.endsWith("\n") ? text : `${text}\n`))

const health = (provider: ProviderInfo): string => {
  if (!provider.hasKey && provider.keySource !== null) return "no key"
  if (provider.circuit !== "closed") return `circuit ${provider.circuit}`
  return provider.lastStatus !== null && provider.lastStatus >= 500 ? "failing" : "ok"
}

const ls = Command.make("ls", { ...connectionOptions, json }, (flags) =>
  Effect.gen(function* () {
    const connection = yield* resolveConnection(flags)
    const providers = yield* withClient(connection, flags.timeout, (client) => client.Proxy.Providers())
    if (flags.json) {
      return yield* print(toJson(Schema.encodeSync(Schema.Array(ProviderInfo))(providers), 2))
    }
    const now = Date.now()
    yield* print(
      table([
        ["PROVIDER", "HEALTH", "FORMAT", "BASE URL", "KEY", "REQUESTS", "ERRORS", "LAST"],
        ...providers.map((provider) => [
          provider.name,
          health(provider),
          provider.format,
          provider.baseUrl,
          provider.keySource === null
            ? "none needed"
            : `${provider.keySource}${provider.hasKey ? "" : " (missing)"}`,
          String(provider.requests),
          String(provider.errors),
          provider.lastRequestAt === null
            ? "-"
            : `${provider.lastStatus ?? "-"} ${Math.round((now - DateTime.toEpochMillis(provider.lastRequestAt)) / 1000)}s ago`
        ])
      ])
    )
  })
).pipe(
  Command.withDescription(
    "List the AI providers of the server's proxy (/proxy/<provider>/…) with their health: key found, circuit breaker, requests, errors and the last status."
  )
)

const stats = Command.make("stats", { ...connectionOptions, json }, (flags) =>
  Effect.gen(function* () {
    const connection = yield* resolveConnection(flags)
    const result = yield* withClient(connection, flags.timeout, (client) => client.Proxy.Stats())
    if (flags.json) return yield* print(toJson(Schema.encodeSync(ProxyStats)(result), 2))
    if (result.rows.length === 0) {
      return yield* print(`no proxy requests since ${DateTime.formatIso(result.since)}`)
    }
    yield* print(
      table([
        [
          "PROVIDER",
          "MODEL",
          "REQUESTS",
          "ERRORS",
          "INPUT TOKENS",
          "OUTPUT TOKENS",
          "P50 MS",
          "P99 MS",
          "TTFB P50 MS"
        ],
        ...result.rows.map((row) => [
          row.provider,
          row.model ?? "-",
          String(row.requests),
          String(row.errors),
          String(row.inputTokens),
          String(row.outputTokens),
          row.latencyP50Ms.toFixed(1),
          row.latencyP99Ms.toFixed(1),
          row.ttfbP50Ms.toFixed(1)
        ])
      ]) +
        `\n(since ${DateTime.formatIso(result.since)}, this node; every request is also a proxy.request event: vibes events --type 'proxy.*')`
    )
  })
).pipe(
  Command.withDescription(
    "Requests, errors, latency and tokens per provider and model through the server's proxy since it started."
  )
)

/** `vibes proxy ls|stats`. */
export const command = Command.make("proxy").pipe(
  Command.withDescription("The AI-provider proxy: `vibes proxy ls`, `vibes proxy stats`."),
  Command.withSubcommands([ls, stats])
)
