/**
 * The `vibes` command line: `serve` runs a node, `status` asks one how it is.
 *
 * Exit codes: 0 success, 1 failure (server unreachable, start-up failed), 2 bad usage or
 * configuration, 3 credentials refused.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { Cause, ConfigError, Deferred, Duration, Effect, Layer, Option, Redacted, Schema } from "effect"
import * as Command from "@effect/cli/Command"
import * as Options from "@effect/cli/Options"
import * as NodeSocket from "@effect/platform-node/NodeSocket"
import { Unauthorized } from "../../rpc/Auth.js"
import * as Client from "../../rpc/Client.js"
import * as AdminToken from "../../infra/auth/AdminToken.js"
import * as Telemetry from "../../infra/telemetry/Telemetry.js"
import * as Config from "../config/Config.js"
import * as Server from "../server/Server.js"
import { version } from "../Version.js"

/** A failure the CLI reports as one line and an exit code. */
export class CliFailure extends Schema.TaggedError<CliFailure>()("CliFailure", {
  message: Schema.String,
  exitCode: Schema.Int
}) {}

/** Name of the file in the data dir where a running server says where it listens. */
export const serverFile = "server.json"

const ServerFile = Schema.parseJson(Schema.Struct({ url: Schema.String, pid: Schema.Int }))

const configFailure = (error: ConfigError.ConfigError) =>
  new CliFailure({ message: `invalid configuration: ${String(error).replace(/\s+/g, " ")}`, exitCode: 2 })

const dataDirOption = Options.text("data-dir").pipe(
  Options.withDescription(
    "Data directory (token, embedded Postgres). Default: $VIBES_DATA_DIR or ~/.local/share/vibes"
  ),
  Options.optional
)

// serve -----------------------------------------------------------------------------------

const serve = Command.make(
  "serve",
  {
    host: Options.text("host").pipe(
      Options.withDescription("Address to listen on. Default: $VIBES_HOST or 127.0.0.1"),
      Options.optional
    ),
    port: Options.integer("port").pipe(
      Options.withDescription("Port to listen on (0 picks a free one). Default: $VIBES_PORT or 7432"),
      Options.optional
    ),
    dataDir: dataDirOption
  },
  (flags) =>
    Effect.gen(function* () {
      const env = yield* Config.serverConfig.pipe(Effect.mapError(configFailure))
      if (Option.isSome(flags.port) && (flags.port.value < 0 || flags.port.value > 65535)) {
        return yield* new CliFailure({ message: "--port must be between 0 and 65535", exitCode: 2 })
      }
      const config: Config.ServerConfig = {
        ...env,
        host: Option.getOrElse(flags.host, () => env.host),
        port: Option.getOrElse(flags.port, () => env.port),
        dataDir: Option.match(flags.dataDir, {
          onNone: () => env.dataDir,
          onSome: (dir) => path.resolve(dir)
        })
      }
      const isTTY = process.stdout.isTTY === true
      const fatal = yield* Deferred.make<never, CliFailure>()
      const watchdog = () =>
        setTimeout(
          () => {
            console.error("vibes: shutdown took too long; exiting")
            process.exit(1)
          },
          Duration.toMillis(config.shutdownTimeout) + 20_000
        ).unref()
      process.once("SIGTERM", watchdog)
      process.once("SIGINT", watchdog)

      const node = Server.layer(config, {
        onListening: (announcement) =>
          Effect.gen(function* () {
            writeServerFile(config.dataDir, announcement.url)
            yield* Effect.addFinalizer(() => Effect.sync(() => removeServerFile(config.dataDir)))
            yield* Effect.logInfo("vibes is listening").pipe(
              Effect.annotateLogs({
                url: announcement.url,
                loginUrl: announcement.loginUrl,
                nodeId: announcement.nodeId
              })
            )
            if (isTTY) {
              console.log(
                `\n  vibes ${version} is listening on ${announcement.url}\n  Log in: ${announcement.loginUrl}\n`
              )
            }
          }),
        onFatal: (error) => Deferred.fail(fatal, new CliFailure({ message: error.message, exitCode: 1 }))
      })

      yield* Layer.launch(node).pipe(
        Effect.mapError((error) => new CliFailure({ message: error.message, exitCode: 1 })),
        Effect.raceFirst(Deferred.await(fatal)),
        Effect.provide(Telemetry.layerLogger({ format: config.logFormat, level: config.logLevel, isTTY }))
      )
    })
).pipe(
  Command.withDescription(
    "Run a vibes node: HTTP, RPC and the database (embedded unless DATABASE_URL is set)."
  )
)

const writeServerFile = (dataDir: string, url: string) => {
  const file = path.join(dataDir, serverFile)
  fs.writeFileSync(file, JSON.stringify({ url, pid: process.pid }) + "\n", { mode: 0o600 })
}

const removeServerFile = (dataDir: string) => {
  const file = path.join(dataDir, serverFile)
  try {
    const parsed = Schema.decodeUnknownOption(ServerFile)(fs.readFileSync(file, "utf8"))
    if (Option.isSome(parsed) && parsed.value.pid === process.pid) fs.rmSync(file, { force: true })
  } catch {
    // already gone
  }
}

// status ----------------------------------------------------------------------------------

const urlOption = Options.text("url").pipe(
  Options.withDescription(
    "Server URL. Default: $VIBES_URL, the local server of the data dir, or http://127.0.0.1:7432"
  ),
  Options.optional
)
const tokenOption = Options.redacted("token").pipe(
  Options.withDescription("Admin token. Default: $VIBES_TOKEN, or the token file in the data dir"),
  Options.optional
)
const timeoutOption = Options.integer("timeout").pipe(
  Options.withDescription("Seconds to wait for the server"),
  Options.withDefault(10)
)

/** Where and with what token a client command connects. */
const resolveConnection = (flags: {
  readonly url: Option.Option<string>
  readonly token: Option.Option<Redacted.Redacted<string>>
  readonly dataDir: Option.Option<string>
}) =>
  Effect.gen(function* () {
    const env = yield* Config.clientConfig.pipe(Effect.mapError(configFailure))
    const dataDir = Option.match(flags.dataDir, {
      onNone: () => env.dataDir,
      onSome: (dir) => path.resolve(dir)
    })
    const local = readServerFile(dataDir)
    const url = flags.url.pipe(
      Option.orElse(() => env.url),
      Option.orElse(() => local),
      Option.getOrElse(() => "http://127.0.0.1:7432")
    )
    if (!Config.isHttpUrl(url)) {
      return yield* new CliFailure({ message: `--url must be an http(s) URL, got '${url}'`, exitCode: 2 })
    }
    const fromFile = yield* AdminToken.read(dataDir)
    const token = flags.token.pipe(
      Option.orElse(() => env.token),
      Option.orElse(() => fromFile)
    )
    return { url, token }
  })

const readServerFile = (dataDir: string): Option.Option<string> => {
  try {
    return Schema.decodeUnknownOption(ServerFile)(
      fs.readFileSync(path.join(dataDir, serverFile), "utf8")
    ).pipe(Option.map((file) => file.url))
  } catch {
    return Option.none()
  }
}

/** Runs `use` with a connected client, turning transport and auth failures into one-liners. */
const withClient = <A, E, R>(
  connection: { readonly url: string; readonly token: Option.Option<Redacted.Redacted<string>> },
  timeoutSeconds: number,
  use: (client: Client.Client) => Effect.Effect<A, E, R>
) =>
  Effect.flatMap(Client.VibesClient, use).pipe(
    Effect.provide(
      Client.layer({ url: connection.url, token: connection.token }).pipe(
        Layer.provide(NodeSocket.layerWebSocketConstructor)
      )
    ),
    Effect.timeoutFail({
      duration: Duration.seconds(timeoutSeconds),
      onTimeout: () =>
        new CliFailure({ message: `no answer from ${connection.url} within ${timeoutSeconds}s`, exitCode: 1 })
    }),
    Effect.catchAll((error) =>
      Effect.fail(
        error instanceof CliFailure
          ? error
          : error instanceof Unauthorized
            ? new CliFailure({
                message: Option.isNone(connection.token)
                  ? `${connection.url} needs a token: pass --token or set VIBES_TOKEN`
                  : `${connection.url} refused the token (${error.message})`,
                exitCode: 3
              })
            : new CliFailure({
                message: `cannot reach vibes at ${connection.url}: ${describeError(error)}`,
                exitCode: 1
              })
      )
    )
  )

/** The innermost message of a transport error (e.g. "connect ECONNREFUSED 127.0.0.1:7432"). */
const describeError = (error: unknown): string => {
  let message = "connection failed"
  let current: unknown = error
  for (let depth = 0; depth < 8 && typeof current === "object" && current !== null; depth++) {
    const candidate = Cause.isCause(current) ? Cause.squash(current) : current
    if (typeof candidate !== "object" || candidate === null) break
    if ("message" in candidate && typeof candidate.message === "string" && candidate.message !== "") {
      message = candidate.message
    }
    current = "cause" in candidate ? candidate.cause : undefined
  }
  return message
}

const formatUptime = (millis: number): string => {
  const seconds = Math.floor(millis / 1000)
  const d = Math.floor(seconds / 86400)
  const h = Math.floor((seconds % 86400) / 3600)
  const m = Math.floor((seconds % 3600) / 60)
  const s = seconds % 60
  return [d > 0 ? `${d}d` : "", h > 0 ? `${h}h` : "", m > 0 ? `${m}m` : "", `${s}s`]
    .filter((x) => x !== "")
    .join(" ")
}

const status = Command.make(
  "status",
  {
    url: urlOption,
    token: tokenOption,
    dataDir: dataDirOption,
    timeout: timeoutOption,
    json: Options.boolean("json").pipe(Options.withDescription("Print the answer as JSON"))
  },
  (flags) =>
    Effect.gen(function* () {
      const connection = yield* resolveConnection(flags)
      const info = yield* withClient(connection, flags.timeout, (client) => client.System.Info())
      if (flags.json) {
        console.log(
          JSON.stringify({
            url: connection.url,
            version: info.version,
            nodeId: info.nodeId,
            database: info.database,
            startedAt: info.startedAt.toJSON(),
            uptimeMillis: info.uptimeMillis
          })
        )
      } else {
        console.log(
          [
            `vibes ${info.version} at ${connection.url}`,
            `node      ${info.nodeId}`,
            `database  ${info.database}`,
            `started   ${info.startedAt.toJSON()}`,
            `uptime    ${formatUptime(info.uptimeMillis)}`
          ].join("\n")
        )
      }
    })
).pipe(Command.withDescription("Ask a vibes server how it is (System.Info). Exit 0 when it answers."))

// root ------------------------------------------------------------------------------------

/** The `vibes` command and its subcommands. */
export const command = Command.make("vibes").pipe(
  Command.withDescription(
    "vibes: terminal sessions, jobs and AI-provider traffic with a durable event history."
  ),
  Command.withSubcommands([serve, status])
)

/** Parses `argv` (without node and script) and runs the chosen command. */
export const run = Command.run(command, { name: "vibes", version })
