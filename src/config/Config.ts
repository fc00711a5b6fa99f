/**
 * Configuration of a vibes node: `VIBES_*` environment variables (and `DATABASE_URL`,
 * `OTEL_EXPORTER_OTLP_ENDPOINT`), overridable by CLI flags. Every value is checked here, and a
 * bad one fails with a message that names its variable.
 */
import * as os from "node:os"
import * as path from "node:path"
import { Config, Duration, Either, LogLevel, Option, Redacted } from "effect"

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
}

/** `$XDG_DATA_HOME/vibes`, else `~/.local/share/vibes`. */
export const defaultDataDir = (env: NodeJS.ProcessEnv = process.env): string => {
  const xdg = env["XDG_DATA_HOME"]
  return xdg !== undefined && xdg !== ""
    ? path.join(xdg, "vibes")
    : path.join(os.homedir(), ".local", "share", "vibes")
}

const port = (name: string, fallback: number) =>
  Config.integer(name).pipe(
    Config.validate({
      message: "must be a port number between 0 and 65535",
      validation: (n) => n >= 0 && n <= 65535
    }),
    Config.withDefault(fallback)
  )

const positiveInt = (name: string, fallback: number, max: number) =>
  Config.integer(name).pipe(
    Config.validate({
      message: `must be an integer between 1 and ${max}`,
      validation: (n) => n >= 1 && n <= max
    }),
    Config.withDefault(fallback)
  )

const nonNegativeInt = (name: string, fallback: number) =>
  Config.integer(name).pipe(
    Config.validate({ message: "must be a non-negative integer", validation: (n) => n >= 0 }),
    Config.withDefault(fallback)
  )

const duration = (name: string, fallback: Duration.DurationInput) =>
  Config.duration(name).pipe(
    Config.validate({
      message: "must be a positive duration such as '10 seconds'",
      validation: Duration.greaterThan(0)
    }),
    Config.withDefault(Duration.decode(fallback)),
    Config.map(Duration.decode)
  )

const nonEmpty = (name: string) =>
  Config.string(name).pipe(
    Config.validate({ message: "must not be empty", validation: (s) => s.trim() !== "" }),
    Config.option
  )

/** The node's host to listen on. */
export const host = Config.string("VIBES_HOST").pipe(
  Config.validate({ message: "must not be empty", validation: (s) => s.trim() !== "" }),
  Config.withDefault("127.0.0.1")
)
/** The node's port to listen on; 0 picks a free one. */
export const httpPort = port("VIBES_PORT", 7432)
/** The data directory (token, embedded Postgres, PTY host socket). */
export const dataDir = Config.string("VIBES_DATA_DIR").pipe(
  Config.validate({ message: "must be an absolute path", validation: (s) => path.isAbsolute(s) }),
  Config.orElse(() => Config.sync(() => defaultDataDir()))
)

const databaseUrl = Config.redacted("DATABASE_URL").pipe(
  Config.validate({
    message: "must be a postgres:// or postgresql:// URL",
    validation: (value) => isPostgresUrl(value)
  }),
  Config.option
)

const logFormat = Config.literal(
  "auto",
  "json",
  "pretty"
)("VIBES_LOG_FORMAT").pipe(Config.withDefault("auto" as const))

const otlpEndpoint = Config.string("OTEL_EXPORTER_OTLP_ENDPOINT").pipe(
  Config.validate({
    message: "must be an http(s) URL",
    validation: (s) => Either.isRight(Either.try(() => new URL(s))) && /^https?:/.test(s)
  }),
  Config.option
)

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
  adminToken: Config.redacted("VIBES_ADMIN_TOKEN").pipe(
    Config.validate({
      message: "must be at least 16 characters",
      validation: (value) => Redacted.value(value).length >= 16
    }),
    Config.option
  ),
  logFormat,
  logLevel: Config.logLevel("VIBES_LOG_LEVEL").pipe(Config.withDefault(LogLevel.Info)),
  shutdownTimeout: duration("VIBES_SHUTDOWN_TIMEOUT", "10 seconds"),
  embeddedPgMaxRestarts: nonNegativeInt("VIBES_PG_MAX_RESTARTS", 5),
  otlpEndpoint
})

/** Settings of the CLI's client commands (`vibes status`, …). */
export interface ClientConfig {
  readonly url: Option.Option<string>
  readonly token: Option.Option<Redacted.Redacted<string>>
  readonly dataDir: string
}

/** `VIBES_URL`, `VIBES_TOKEN` and the data dir, for client commands. */
export const clientConfig: Config.Config<ClientConfig> = Config.all({
  url: Config.string("VIBES_URL").pipe(
    Config.validate({ message: "must be an http(s) URL", validation: isHttpUrl }),
    Config.option
  ),
  token: Config.redacted("VIBES_TOKEN").pipe(Config.option),
  dataDir
})

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
