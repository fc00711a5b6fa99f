/**
 * Configuration of a vibes node: `VIBES_*` environment variables (and `DATABASE_URL`,
 * `OTEL_EXPORTER_OTLP_ENDPOINT`), overridable by CLI flags. Every value is checked here, and a
 * bad one fails with a message that names its variable.
 */
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import {
  Config,
  ConfigError,
  Duration,
  Either,
  LogLevel,
  Option,
  ParseResult,
  Redacted,
  Schema
} from "effect"
import { compileGlob } from "../../rpc/Events.js"
import { RetentionPolicy } from "../../infra/eventlog/EventLog.js"
import type { ClusterConfig } from "../../infra/cluster/Cluster.js"
export type { ClusterConfig }
import * as EventBackend from "../../infra/eventlog/EventBackend.js"
import * as StorageBackend from "../../infra/storage/StorageBackend.js"
import * as AllowedHosts from "../../infra/net/AllowedHosts.js"
import * as ClientAddress from "../../infra/net/ClientAddress.js"
import type { Limits as RpcLimits } from "../../infra/rpc/RpcSocketServer.js"
import { ProviderConfig } from "../../rpc/Proxy.js"
import { type Price, PriceTable } from "../../rpc/Conversations.js"
import type * as Sandbox from "../../infra/sandbox/Sandbox.js"
import type { Settings as NotifySettings } from "../../actors/notify/Notifier.js"

/** How log lines are written. `auto` means JSON unless stdout is a terminal. */
export type LogFormat = "auto" | "json" | "pretty"

/** Everything `vibes serve` needs to know. */
export interface ServerConfig {
  readonly host: string
  readonly port: number
  readonly dataDir: string
  readonly databaseUrl: Option.Option<Redacted.Redacted<string>>
  readonly dbPoolSize: number
  readonly dbConnectTimeout: Duration.Duration
  readonly dbQueryTimeout: Duration.Duration
  readonly nodeId: Option.Option<string>
  readonly adminToken: Option.Option<Redacted.Redacted<string>>
  readonly logFormat: LogFormat
  readonly logLevel: LogLevel.LogLevel
  readonly shutdownTimeout: Duration.Duration
  readonly embeddedPgMaxRestarts: number
  readonly otlpEndpoint: Option.Option<string>
  /** Events a live subscriber may have waiting before it is cut off as lagging. */
  readonly eventsSubscriberBuffer: number
  /** Interval of the SSE heartbeat comment. */
  readonly sseHeartbeat: Duration.Duration
  /** Where the event log lives (`VIBES_EVENT_BACKEND`, `VIBES_NATS_*`). */
  readonly eventBackend: EventBackend.EventBackend
  /** Where artifacts and recordings are kept (`VIBES_STORAGE`, `VIBES_STORAGE_DIR`, `VIBES_S3_*`). */
  readonly storage: StorageBackend.StorageBackend
  /** Retention policies of the event log. */
  readonly eventsRetention: ReadonlyArray<RetentionPolicy>
  /** How often retention runs. */
  readonly eventsRetentionInterval: Duration.Duration
  /** Lines of scrollback each session's screen model keeps. */
  readonly sessionScrollback: number
  /** Quiet time after which a session counts as idle. */
  readonly sessionIdleAfter: Duration.Duration
  /** The argv that starts `vibes pty-host`; by default this very program. */
  readonly ptyHostCommand: Option.Option<ReadonlyArray<string>>
  /** Stop the PTY host (and every session) when the server stops: for tests, never the default. */
  readonly stopPtyHostOnExit: boolean
  /** Jobs that may run at once on this node; the rest wait in priority order. */
  readonly jobSlots: number
  /** Time between SIGTERM and SIGKILL when a job is canceled or times out. */
  readonly jobKillGrace: Duration.Duration
  /** Finished jobs and job output older than this are pruned. */
  readonly jobRetention: Duration.Duration
  /** The known_hosts file SSH jobs are checked against unless a job names its own. */
  readonly sshKnownHosts: string
  /** Interval of SSH keepalive messages; the connection is dropped after 3 unanswered. */
  readonly sshKeepalive: Duration.Duration
  /** The built web UI served at `/`; by default the package's `dist/web`. */
  readonly webDir: Option.Option<string>
  /** AI providers of the proxy beyond (or replacing) the built-in `anthropic` and `openai`. */
  readonly proxyProviders: ReadonlyArray<ProviderConfig>
  /** Largest request body the proxy accepts, in bytes. */
  readonly proxyMaxBody: number
  /** Proxy requests a second per client (0: no limit), and the burst allowed above that rate. */
  readonly proxyRate: number
  readonly proxyBurst: number
  /** Conversation recording, prices and budgets of the proxy. */
  readonly proxyConversations: ProxyConversationsConfig
  /** `VIBES_SANDBOX`: `auto` runs sessions and jobs as `runAs` when vibes runs as root, in namespaces of their own otherwise (where the machine allows); `namespaces` refuses to start without them; `off` never isolates. */
  readonly sandbox: Sandbox.SandboxMode
  /** `VIBES_RUN_AS`: the user sessions and jobs run as under a root server (created when missing). */
  readonly runAs: string
  /** Cluster mode (`VIBES_RUNNER_PORT` set), else a single node that is its own runner. */
  readonly cluster: Option.Option<ClusterConfig>
  /**
   * Host names this node answers to (`VIBES_ALLOWED_HOSTS`); empty: the loopback names when it
   * listens on loopback (anything else then needs a list, or `*`).
   */
  readonly allowedHosts: ReadonlyArray<string>
  /** Reverse proxies whose `X-Forwarded-*` headers are believed (`VIBES_TRUSTED_PROXIES`). */
  readonly trustedProxies: ClientAddress.TrustedProxies
  /** Limits of each `/rpc` connection. */
  readonly rpcLimits: RpcLimits
  /** Long-lived connections (RPC sockets, event and log streams) one client address may hold. */
  readonly maxStreamsPerClient: number
  /** How long a browser login lasts after its cookie was last renewed. */
  readonly loginTtl: Duration.Duration
  /** When conditions raise `system.alert` events (see `Alerts`). */
  readonly alerts: AlertSettings
  /** How webhook deliveries are retried (`VIBES_NOTIFY_RETRY_BASE`, `VIBES_NOTIFY_RETRY_MAX`). */
  readonly notify: NotifySettings
  /** How often this node records that it is alive in `vibes_nodes`. */
  readonly heartbeat: Duration.Duration
  /** Silence after which a node that did not stop cleanly counts as gone: its sessions are lost. */
  readonly nodeLostAfter: Duration.Duration
}

/** When conditions raise alerts: see `Alerts` in the server. */
export interface AlertSettings {
  /** How often the conditions are checked. */
  readonly every: Duration.Duration
  /** Free space of the data dir's filesystem, in percent, below which the disk counts as low. */
  readonly diskFreePercent: number
  /** Events a named consumer may be behind the head. */
  readonly consumerLag: number
  /** Restarts of one supervised child within `restartsWithin` that raise an alert. */
  readonly restarts: number
  readonly restartsWithin: Duration.Duration
}

const GiB = 1024 * 1024 * 1024
const days = (n: number) => n * 86_400_000

/**
 * The default retention, so that the log's disk use is bounded without any setting (README,
 * "Bounded disk"): terminal output goes once a later snapshot of its session covers it, and
 * beyond 2 GiB in all; a session keeps only its newest snapshot; proxy request records go after
 * 30 days and beyond 512 MiB. (Job output, `job.log`, goes with its jobs: `VIBES_JOB_RETENTION`,
 * and beyond 2 GiB; see `JobLogs.withRetention`.) Other events are small and rare, and kept.
 */
export const defaultRetention: ReadonlyArray<RetentionPolicy> = [
  RetentionPolicy.make({ types: ["session.output"], snapshotType: "session.snapshot", maxBytes: 2 * GiB }),
  RetentionPolicy.make({ types: ["session.snapshot"], snapshotType: "session.snapshot" }),
  RetentionPolicy.make({ types: ["proxy.request"], maxAgeMillis: days(30), maxBytes: GiB / 2 })
]

const RetentionJson = Schema.parseJson(
  Schema.Array(
    Schema.Struct({
      types: Schema.NonEmptyArray(Schema.String),
      maxAge: Schema.optional(Schema.String),
      maxBytes: Schema.optional(Schema.Int.pipe(Schema.positive())),
      snapshotType: Schema.optional(Schema.String),
      ignoreConsumers: Schema.optional(Schema.Boolean)
    })
  )
)

/**
 * Parses `VIBES_EVENTS_RETENTION`: a JSON array of policies such as
 * `[{"types":["job.log"],"maxAge":"30 days"},{"types":["session.output"],"maxBytes":1073741824}]`.
 */
export const parseRetention = (text: string): Either.Either<ReadonlyArray<RetentionPolicy>, string> =>
  Either.flatMap(
    Either.mapLeft(Schema.decodeUnknownEither(RetentionJson)(text), (error) =>
      ParseResult.TreeFormatter.formatErrorSync(error)
    ),
    (policies) =>
      Either.all(
        policies.map((policy) => {
          for (const glob of [...policy.types, ...(policy.snapshotType ? [policy.snapshotType] : [])]) {
            const compiled = compileGlob(glob)
            if (Either.isLeft(compiled)) return Either.left(compiled.left.message)
          }
          const maxAge = policy.maxAge === undefined ? Option.none() : Duration.decodeUnknown(policy.maxAge)
          if (policy.maxAge !== undefined && Option.isNone(maxAge)) {
            return Either.left(`maxAge '${policy.maxAge}' is not a duration such as '7 days'`)
          }
          if (
            policy.maxAge === undefined &&
            policy.maxBytes === undefined &&
            policy.snapshotType === undefined
          ) {
            return Either.left(
              `the policy for ${policy.types.join(", ")} sets none of maxAge, maxBytes, snapshotType`
            )
          }
          return Either.right(
            RetentionPolicy.make({
              types: policy.types,
              ...(Option.isSome(maxAge)
                ? { maxAgeMillis: Math.max(1, Math.round(Duration.toMillis(maxAge.value))) }
                : {}),
              ...(policy.maxBytes !== undefined ? { maxBytes: policy.maxBytes } : {}),
              ...(policy.snapshotType !== undefined ? { snapshotType: policy.snapshotType } : {}),
              ignoreConsumers: policy.ignoreConsumers ?? false
            })
          )
        })
      )
  )

const eventsRetention = Config.string("VIBES_EVENTS_RETENTION").pipe(
  Config.mapOrFail((text) =>
    Either.mapLeft(parseRetention(text), (why) =>
      ConfigError.InvalidData([], `VIBES_EVENTS_RETENTION is not a valid list of retention policies: ${why}`)
    )
  ),
  Config.withDefault(defaultRetention)
)

const ProvidersJson = Schema.parseJson(Schema.Array(ProviderConfig))

/**
 * Parses a JSON list of providers, e.g.
 * `[{"name":"local","baseUrl":"http://127.0.0.1:11434","format":"openai","auth":"none"}]`.
 */
export const parseProviders = (text: string): Either.Either<ReadonlyArray<ProviderConfig>, string> =>
  Either.flatMap(
    Either.mapLeft(Schema.decodeUnknownEither(ProvidersJson)(text), (error) =>
      ParseResult.TreeFormatter.formatErrorSync(error)
    ),
    (providers) => {
      const names = new Set<string>()
      for (const provider of providers) {
        if (names.has(provider.name)) return Either.left(`provider '${provider.name}' is listed twice`)
        names.add(provider.name)
        if (provider.keyEnv !== undefined && provider.keyFile !== undefined) {
          return Either.left(`provider '${provider.name}' sets both keyEnv and keyFile; choose one`)
        }
        if (provider.keyFile !== undefined && !path.isAbsolute(provider.keyFile)) {
          return Either.left(`provider '${provider.name}': keyFile must be an absolute path`)
        }
      }
      return Either.right(providers)
    }
  )

/** `VIBES_PROXY_PROVIDERS` (JSON), else the JSON file named by `VIBES_PROXY_CONFIG`, else none. */
const proxyProviders = Config.all({
  inline: Config.string("VIBES_PROXY_PROVIDERS").pipe(Config.option),
  file: Config.string("VIBES_PROXY_CONFIG").pipe(Config.option)
}).pipe(
  Config.mapOrFail(({ inline, file }) => {
    if (Option.isSome(inline)) {
      return Either.mapLeft(parseProviders(inline.value), (why) =>
        ConfigError.InvalidData([], `VIBES_PROXY_PROVIDERS is not a valid list of providers: ${why}`)
      )
    }
    if (Option.isNone(file)) return Either.right([])
    if (!path.isAbsolute(file.value)) {
      return Either.left(ConfigError.InvalidData([], "VIBES_PROXY_CONFIG must be an absolute path"))
    }
    return Either.flatMap(
      Either.try({
        try: () => fs.readFileSync(file.value, "utf8"),
        catch: (error) =>
          ConfigError.InvalidData([], `VIBES_PROXY_CONFIG: cannot read ${file.value}: ${String(error)}`)
      }),
      (text) =>
        Either.mapLeft(parseProviders(text), (why) =>
          ConfigError.InvalidData(
            [],
            `VIBES_PROXY_CONFIG (${file.value}) is not a valid list of providers: ${why}`
          )
        )
    )
  })
)

/** How the proxy records conversations, prices them and limits spend. */
export interface ProxyConversationsConfig {
  /** `VIBES_PROXY_RECORD` (default on): record proxied requests as conversation turns. */
  readonly record: boolean
  /** `VIBES_PROXY_RECORD_RETENTION` (default 30 days): turns older than this are deleted. */
  readonly retention: Duration.Duration
  /** `VIBES_PROXY_RECORD_MAX_RESPONSE` (default 32 MiB): response bytes kept of one answer. */
  readonly maxResponseBytes: number
  /** `VIBES_PROXY_RECORD_QUEUE` (default 256 MiB): bytes of captures waiting to be recorded. */
  readonly queueBytes: number
  /** `VIBES_PROXY_REDACT` (JSON list of regular expressions): also redacted from recorded bodies. */
  readonly redactPatterns: ReadonlyArray<RegExp>
  /** `VIBES_PROXY_PRICES` (JSON price table, or the JSON file named by `VIBES_PROXY_PRICES_FILE`). */
  readonly prices: ReadonlyArray<Price>
  /** `VIBES_PROXY_BUDGET_SESSION`, `VIBES_PROXY_BUDGET_DAILY`: US dollars, none by default. */
  readonly budgetSession: number | null
  readonly budgetDaily: number | null
}

/** The defaults of `ProxyConversationsConfig`: recording on, no prices, no budgets. */
export const proxyConversationsDefaults: ProxyConversationsConfig = {
  record: true,
  retention: Duration.days(30),
  maxResponseBytes: 32 * 1024 * 1024,
  queueBytes: 256 * 1024 * 1024,
  redactPatterns: [],
  prices: [],
  budgetSession: null,
  budgetDaily: null
}

/** `$XDG_DATA_HOME/vibes`, else `~/.local/share/vibes`. */
export const defaultDataDir = (env: NodeJS.ProcessEnv = process.env): string => {
  const xdg = env["XDG_DATA_HOME"]
  return xdg !== undefined && xdg !== ""
    ? path.join(xdg, "vibes")
    : path.join(os.homedir(), ".local", "share", "vibes")
}

/** A variable that must satisfy `valid`; the message names the variable (Config paths get lost in combinators). */
const checked = <A>(name: string, config: Config.Config<A>, rule: string, valid: (a: A) => boolean) =>
  config.pipe(Config.validate({ message: `${name} ${rule}`, validation: valid }))

const port = (name: string, fallback: number) =>
  checked(
    name,
    Config.integer(name),
    "must be a port number between 0 and 65535",
    (n) => n >= 0 && n <= 65535
  ).pipe(Config.withDefault(fallback))

const positiveInt = (name: string, fallback: number, max: number) =>
  checked(
    name,
    Config.integer(name),
    `must be an integer between 1 and ${max}`,
    (n) => n >= 1 && n <= max
  ).pipe(Config.withDefault(fallback))

const nonNegativeInt = (name: string, fallback: number) =>
  checked(name, Config.integer(name), "must be a non-negative integer", (n) => n >= 0).pipe(
    Config.withDefault(fallback)
  )

const duration = (name: string, fallback: Duration.DurationInput) =>
  checked(
    name,
    Config.duration(name),
    "must be a positive duration such as '10 seconds'",
    Duration.greaterThan(0)
  ).pipe(Config.withDefault(Duration.decode(fallback)), Config.map(Duration.decode))

const nonEmpty = (name: string) =>
  checked(name, Config.string(name), "must not be empty", (s) => s.trim() !== "").pipe(Config.option)

/** The node's host to listen on. */
export const host = checked(
  "VIBES_HOST",
  Config.string("VIBES_HOST"),
  "must not be empty",
  (s) => s.trim() !== ""
).pipe(Config.withDefault("127.0.0.1"))
/** The node's port to listen on; 0 picks a free one. */
export const httpPort = port("VIBES_PORT", 7432)
/** The data directory (token, embedded Postgres, PTY host socket). */
export const dataDir = checked(
  "VIBES_DATA_DIR",
  Config.string("VIBES_DATA_DIR"),
  "must be an absolute path",
  (s) => path.isAbsolute(s)
).pipe(Config.option, Config.map(Option.getOrElse(() => defaultDataDir())))

const databaseUrl = checked(
  "DATABASE_URL",
  Config.redacted("DATABASE_URL"),
  "must be a postgres:// or postgresql:// URL",
  isPostgresUrl
).pipe(Config.option)

const logFormat = Config.literal(
  "auto",
  "json",
  "pretty"
)("VIBES_LOG_FORMAT").pipe(Config.withDefault("auto" as const))

const otlpEndpoint = checked(
  "OTEL_EXPORTER_OTLP_ENDPOINT",
  Config.string("OTEL_EXPORTER_OTLP_ENDPOINT"),
  "must be an http(s) URL",
  isHttpUrl
).pipe(Config.option)

/**
 * Cluster mode: on when `VIBES_RUNNER_PORT` is set. The runner address comes from the `VIBES_RUNNER_*`
 * variables only; the generic `HOST`/`PORT` never reach it.
 */
const cluster: Config.Config<
  Option.Option<Omit<ClusterConfig, "secret"> & { readonly secret: Option.Option<Redacted.Redacted<string>> }>
> = Config.all({
  runnerPort: checked(
    "VIBES_RUNNER_PORT",
    Config.integer("VIBES_RUNNER_PORT"),
    "must be a port number between 1 and 65535",
    (n) => n >= 1 && n <= 65535
  ).pipe(Config.option),
  runnerHost: checked(
    "VIBES_RUNNER_HOST",
    Config.string("VIBES_RUNNER_HOST"),
    "must be a host name or address without spaces",
    (s) => /^[^\s/]+$/.test(s)
  ).pipe(Config.withDefault("127.0.0.1")),
  runnerListenHost: checked(
    "VIBES_RUNNER_LISTEN_HOST",
    Config.string("VIBES_RUNNER_LISTEN_HOST"),
    "must be a host name or address without spaces",
    (s) => /^[^\s/]+$/.test(s)
  ).pipe(Config.option),
  shardLockExpiration: duration("VIBES_SHARD_LOCK_EXPIRATION", "3 seconds"),
  shardLockRefresh: duration("VIBES_SHARD_LOCK_REFRESH", "1 second"),
  shardRefresh: duration("VIBES_SHARD_REFRESH_INTERVAL", "500 millis"),
  secret: checked(
    "VIBES_CLUSTER_SECRET",
    Config.redacted("VIBES_CLUSTER_SECRET"),
    "must be at least 16 characters",
    (value) => Redacted.value(value).length >= 16
  ).pipe(Config.option)
}).pipe(
  Config.map(({ runnerPort, runnerHost, runnerListenHost, ...timing }) =>
    Option.map(runnerPort, (port) => ({
      runnerHost,
      runnerPort: port,
      runnerListenHost: Option.getOrElse(runnerListenHost, () => runnerHost),
      ...timing
    }))
  )
)

const redactPatterns = Config.string("VIBES_PROXY_REDACT").pipe(
  Config.mapOrFail((text) =>
    Either.flatMap(
      Either.mapLeft(Schema.decodeUnknownEither(Schema.parseJson(Schema.Array(Schema.String)))(text), () =>
        ConfigError.InvalidData([], "VIBES_PROXY_REDACT must be a JSON list of regular expressions")
      ),
      (sources) =>
        Either.try({
          try: () => sources.map((source) => new RegExp(source, "g")),
          catch: (error) =>
            ConfigError.InvalidData(
              [],
              `VIBES_PROXY_REDACT: ${error instanceof Error ? error.message : String(error)}`
            )
        })
    )
  ),
  Config.withDefault<ReadonlyArray<RegExp>>([])
)

const prices = Config.all({
  inline: Config.string("VIBES_PROXY_PRICES").pipe(Config.option),
  file: Config.string("VIBES_PROXY_PRICES_FILE").pipe(Config.option)
}).pipe(
  Config.mapOrFail(({ inline, file }) => {
    const decode = (text: string, where: string) =>
      Either.mapLeft(Schema.decodeUnknownEither(Schema.parseJson(PriceTable))(text), (error) =>
        ConfigError.InvalidData([], `${where} is not a valid price table: ${error.message}`)
      )
    if (Option.isSome(inline)) return decode(inline.value, "VIBES_PROXY_PRICES")
    if (Option.isNone(file)) return Either.right<ReadonlyArray<Price>>([])
    return Either.flatMap(
      Either.try({
        try: () => fs.readFileSync(file.value, "utf8"),
        catch: (error) =>
          ConfigError.InvalidData([], `VIBES_PROXY_PRICES_FILE: cannot read ${file.value}: ${String(error)}`)
      }),
      (text) => decode(text, `VIBES_PROXY_PRICES_FILE (${file.value})`)
    )
  })
)

const dollars = (name: string) =>
  checked(name, Config.number(name), "must be a non-negative amount of US dollars", (n) => n >= 0).pipe(
    Config.map((n): number | null => n),
    Config.withDefault<number | null>(null)
  )

const proxyConversations: Config.Config<ProxyConversationsConfig> = Config.all({
  record: Config.boolean("VIBES_PROXY_RECORD").pipe(Config.withDefault(true)),
  retention: duration("VIBES_PROXY_RECORD_RETENTION", "30 days"),
  maxResponseBytes: positiveInt("VIBES_PROXY_RECORD_MAX_RESPONSE", 32 * 1024 * 1024, 1024 * 1024 * 1024),
  queueBytes: positiveInt("VIBES_PROXY_RECORD_QUEUE", 256 * 1024 * 1024, 16 * 1024 * 1024 * 1024),
  redactPatterns,
  prices,
  budgetSession: dollars("VIBES_PROXY_BUDGET_SESSION"),
  budgetDaily: dollars("VIBES_PROXY_BUDGET_DAILY")
})

/** The whole server configuration from the environment. */
export const serverConfig: Config.Config<ServerConfig> = Config.all({
  host,
  port: httpPort,
  dataDir,
  databaseUrl,
  dbPoolSize: positiveInt("VIBES_DB_POOL_SIZE", 10, 1000),
  dbConnectTimeout: duration("VIBES_DB_CONNECT_TIMEOUT", "10 seconds"),
  dbQueryTimeout: duration("VIBES_DB_QUERY_TIMEOUT", "30 seconds"),
  nodeId: nonEmpty("VIBES_NODE_ID"),
  adminToken: checked(
    "VIBES_ADMIN_TOKEN",
    Config.redacted("VIBES_ADMIN_TOKEN"),
    "must be at least 16 characters",
    (value) => Redacted.value(value).length >= 16
  ).pipe(Config.option),
  logFormat,
  logLevel: Config.logLevel("VIBES_LOG_LEVEL").pipe(Config.withDefault(LogLevel.Info)),
  shutdownTimeout: duration("VIBES_SHUTDOWN_TIMEOUT", "10 seconds"),
  embeddedPgMaxRestarts: nonNegativeInt("VIBES_PG_MAX_RESTARTS", 5),
  otlpEndpoint,
  eventsSubscriberBuffer: positiveInt("VIBES_EVENTS_SUBSCRIBER_BUFFER", 4096, 1_000_000),
  sseHeartbeat: duration("VIBES_SSE_HEARTBEAT", "15 seconds"),
  eventBackend: EventBackend.config,
  storage: StorageBackend.config,
  eventsRetention,
  eventsRetentionInterval: duration("VIBES_EVENTS_RETENTION_INTERVAL", "1 hour"),
  sessionScrollback: positiveInt("VIBES_SESSION_SCROLLBACK", 10_000, 1_000_000),
  sessionIdleAfter: duration("VIBES_SESSION_IDLE_AFTER", "5 seconds"),
  ptyHostCommand: Config.succeed(Option.none()),
  stopPtyHostOnExit: Config.succeed(false),
  jobSlots: positiveInt("VIBES_JOB_SLOTS", 32, 100_000),
  jobKillGrace: duration("VIBES_JOB_KILL_GRACE", "5 seconds"),
  jobRetention: duration("VIBES_JOB_RETENTION", "30 days"),
  sshKnownHosts: checked(
    "VIBES_SSH_KNOWN_HOSTS",
    Config.string("VIBES_SSH_KNOWN_HOSTS"),
    "must be an absolute path",
    (s) => path.isAbsolute(s)
  ).pipe(Config.withDefault(path.join(os.homedir(), ".ssh", "known_hosts"))),
  sshKeepalive: duration("VIBES_SSH_KEEPALIVE", "15 seconds"),
  webDir: checked("VIBES_WEB_DIR", Config.string("VIBES_WEB_DIR"), "must be an absolute path", (s) =>
    path.isAbsolute(s)
  ).pipe(Config.option),
  proxyProviders,
  proxyMaxBody: positiveInt("VIBES_PROXY_MAX_BODY", 32 * 1024 * 1024, 1024 * 1024 * 1024),
  proxyRate: nonNegativeInt("VIBES_PROXY_RATE", 20),
  proxyBurst: positiveInt("VIBES_PROXY_BURST", 40, 1_000_000),
  proxyConversations,
  sandbox: Config.literal(
    "auto",
    "namespaces",
    "off"
  )("VIBES_SANDBOX").pipe(Config.withDefault<Sandbox.SandboxMode>("auto")),
  runAs: checked(
    "VIBES_RUN_AS",
    Config.string("VIBES_RUN_AS"),
    "must be a user name (letters, digits, '_', '-', '.'; not starting with '-')",
    (s) => /^[A-Za-z0-9_.][A-Za-z0-9_.-]{0,31}$/.test(s)
  ).pipe(Config.withDefault("vibes")),
  cluster,
  allowedHosts: Config.string("VIBES_ALLOWED_HOSTS").pipe(
    Config.mapOrFail((text) => {
      const entries = text
        .split(",")
        .map((entry) => entry.trim())
        .filter((entry) => entry !== "")
      return Either.mapBoth(AllowedHosts.make(entries), {
        onLeft: (why) => ConfigError.InvalidData([], `VIBES_ALLOWED_HOSTS: ${why}`),
        onRight: () => entries
      })
    }),
    Config.withDefault<ReadonlyArray<string>>([])
  ),
  trustedProxies: Config.string("VIBES_TRUSTED_PROXIES").pipe(
    Config.mapOrFail((text) =>
      Either.mapLeft(ClientAddress.parseTrustedProxies(text), (why) =>
        ConfigError.InvalidData([], `VIBES_TRUSTED_PROXIES: ${why}`)
      )
    ),
    Config.withDefault(ClientAddress.none)
  ),
  rpcLimits: Config.all({
    maxFrameBytes: positiveInt("VIBES_MAX_FRAME_BYTES", 1024 * 1024, 64 * 1024 * 1024),
    maxMessagesPerFrame: positiveInt("VIBES_MAX_MESSAGES_PER_FRAME", 16, 10_000),
    maxInFlight: positiveInt("VIBES_MAX_IN_FLIGHT", 256, 100_000)
  }),
  maxStreamsPerClient: positiveInt("VIBES_MAX_STREAMS_PER_CLIENT", 128, 1_000_000),
  loginTtl: duration("VIBES_LOGIN_TTL", "7 days"),
  alerts: Config.all({
    every: duration("VIBES_ALERT_INTERVAL", "30 seconds"),
    diskFreePercent: positiveInt("VIBES_ALERT_DISK_FREE_PERCENT", 5, 99),
    consumerLag: positiveInt("VIBES_ALERT_CONSUMER_LAG", 100_000, Number.MAX_SAFE_INTEGER),
    restarts: positiveInt("VIBES_ALERT_RESTARTS", 3, 1_000_000),
    restartsWithin: duration("VIBES_ALERT_RESTARTS_WITHIN", "10 minutes")
  }),
  notify: Config.all({
    retryBase: duration("VIBES_NOTIFY_RETRY_BASE", "1 second"),
    retryMax: duration("VIBES_NOTIFY_RETRY_MAX", "5 minutes"),
    refreshEvery: Config.succeed(Duration.seconds(5))
  }),
  heartbeat: duration("VIBES_HEARTBEAT_INTERVAL", "2 seconds"),
  nodeLostAfter: duration("VIBES_NODE_LOST_AFTER", "30 seconds")
}).pipe(
  Config.mapOrFail((config) =>
    Option.isSome(config.cluster) && Option.isNone(config.databaseUrl)
      ? Either.left(
          ConfigError.InvalidData(
            [],
            "VIBES_RUNNER_PORT turns on cluster mode, which needs DATABASE_URL: every node must use the same Postgres"
          )
        )
      : Option.isSome(config.cluster) &&
          Duration.lessThanOrEqualTo(
            config.cluster.value.shardLockExpiration,
            config.cluster.value.shardLockRefresh
          )
        ? Either.left(
            ConfigError.InvalidData(
              [],
              "VIBES_SHARD_LOCK_EXPIRATION must be longer than VIBES_SHARD_LOCK_REFRESH, or locks lapse between refreshes"
            )
          )
        : Option.match(config.cluster, {
            onNone: () => Either.right({ ...config, cluster: Option.none<ClusterConfig>() }),
            onSome: (cluster) =>
              Option.match(
                Option.orElse(cluster.secret, () => config.adminToken),
                {
                  onNone: () =>
                    Either.left(
                      ConfigError.InvalidData(
                        [],
                        "cluster mode needs a secret every node shares, so that only they reach each other's runner port: set VIBES_CLUSTER_SECRET (or VIBES_ADMIN_TOKEN) on every node"
                      )
                    ),
                  onSome: (secret) =>
                    Either.right({ ...config, cluster: Option.some({ ...cluster, secret }) })
                }
              )
          })
  )
)

/** Settings of the CLI's client commands (`vibes status`, …). */
export interface ClientConfig {
  readonly url: Option.Option<string>
  readonly token: Option.Option<Redacted.Redacted<string>>
  readonly dataDir: string
}

/** `VIBES_URL`, `VIBES_TOKEN` and the data dir, for client commands. */
export const clientConfig: Config.Config<ClientConfig> = Config.all({
  url: checked(
    "VIBES_URL",
    Config.string("VIBES_URL"),
    "must be an http(s) URL, or several separated by commas (nodes of one cluster)",
    (s) => splitUrls(s).every(isHttpUrl)
  ).pipe(Config.option),
  token: Config.redacted("VIBES_TOKEN").pipe(Config.option),
  dataDir
})

/** The URLs of a comma-separated list (`VIBES_URL`, `--url`), trimmed. */
export const splitUrls = (list: string): Array<string> => list.split(",").map((url) => url.trim())

/** True for an absolute http: or https: URL. */
export function isHttpUrl(s: string): boolean {
  return Either.match(
    Either.try(() => new URL(s)),
    {
      onLeft: () => false,
      onRight: (url) => url.protocol === "http:" || url.protocol === "https:"
    }
  )
}

function isPostgresUrl(value: Redacted.Redacted<string>): boolean {
  return Either.match(
    Either.try(() => new URL(Redacted.value(value))),
    {
      onLeft: () => false,
      onRight: (url) => url.protocol === "postgres:" || url.protocol === "postgresql:"
    }
  )
}
