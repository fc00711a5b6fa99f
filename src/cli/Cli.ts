/**
 * The `vibes` command line: `serve` runs a node, `status` asks one how it is.
 *
 * Exit codes: 0 success, 1 failure (server unreachable, start-up failed), 2 bad usage or
 * configuration, 3 credentials refused.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import {
  Cause,
  ConfigError,
  Context,
  DateTime,
  Deferred,
  Duration,
  Effect,
  Layer,
  Option,
  Redacted,
  Schema,
  Stream
} from "effect"
import * as Command from "@effect/cli/Command"
import * as Options from "@effect/cli/Options"
import * as NodeSocket from "@effect/platform-node/NodeSocket"
import { Unauthorized } from "../../rpc/Auth.js"
import * as Client from "../../rpc/Client.js"
import { compileGlob, EventFilter, StoredEvent } from "../../rpc/Events.js"
import { follow } from "../../rpc/Follow.js"
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

type Connection = { readonly url: string; readonly token: Option.Option<Redacted.Redacted<string>> }

/** Turns transport and auth failures into one-line CLI failures. */
const toCliFailure =
  (connection: Connection) =>
  (error: unknown): CliFailure =>
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

const clientLayer = (connection: Connection) =>
  Client.layer({ url: connection.url, token: connection.token }).pipe(
    Layer.provide(NodeSocket.layerWebSocketConstructor)
  )

const answerWithin = (connection: Connection, timeoutSeconds: number) =>
  Effect.timeoutFail({
    duration: Duration.seconds(timeoutSeconds),
    onTimeout: () =>
      new CliFailure({ message: `no answer from ${connection.url} within ${timeoutSeconds}s`, exitCode: 1 })
  })

/** Runs `use` with a connected client, turning transport and auth failures into one-liners. */
const withClient = <A, E, R>(
  connection: Connection,
  timeoutSeconds: number,
  use: (client: Client.Client) => Effect.Effect<A, E, R>
) =>
  Effect.flatMap(Client.VibesClient, use).pipe(
    Effect.provide(clientLayer(connection)),
    answerWithin(connection, timeoutSeconds),
    Effect.mapError(toCliFailure(connection))
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

// events ----------------------------------------------------------------------------------

/** One event as a line: offset, time, type, severity when not info, ids, payload. */
export const formatEvent = (event: StoredEvent): string =>
  [
    `#${event.offset}`,
    DateTime.formatIso(event.ts),
    event.type,
    event.severity !== "info" ? event.severity.toUpperCase() : "",
    event.sessionId !== undefined ? `session=${event.sessionId}` : "",
    event.jobId !== undefined ? `job=${event.jobId}` : "",
    JSON.stringify(event.data)
  ]
    .filter((part) => part !== "")
    .join(" ")

const encodeEvent = Schema.encodeSync(StoredEvent)

const events = Command.make(
  "events",
  {
    url: urlOption,
    token: tokenOption,
    dataDir: dataDirOption,
    timeout: timeoutOption,
    type: Options.text("type").pipe(
      Options.withDescription(
        "Only events whose type matches this glob (repeatable): session.*, *.exited, job.**"
      ),
      Options.repeated
    ),
    session: Options.text("session").pipe(
      Options.withDescription("Only events of this session"),
      Options.optional
    ),
    job: Options.text("job").pipe(Options.withDescription("Only events of this job"), Options.optional),
    from: Options.integer("from").pipe(
      Options.withDescription("Start at this offset (inclusive). Default: the last --last events"),
      Options.optional
    ),
    last: Options.integer("last").pipe(
      Options.withDescription("Without --from: start this many offsets before the head"),
      Options.withDefault(20)
    ),
    follow: Options.boolean("follow").pipe(
      Options.withAlias("f"),
      Options.withDescription("Keep printing new events as they happen (Ctrl-C stops)")
    ),
    json: Options.boolean("json").pipe(Options.withDescription("Print each event as one JSON line"))
  },
  (flags) =>
    Effect.gen(function* () {
      if (Option.isSome(flags.from) && flags.from.value < 0) {
        return yield* new CliFailure({ message: "--from must be a non-negative offset", exitCode: 2 })
      }
      if (flags.last < 0)
        return yield* new CliFailure({ message: "--last must not be negative", exitCode: 2 })
      for (const glob of flags.type) {
        const compiled = compileGlob(glob)
        if (compiled._tag === "Left")
          return yield* new CliFailure({ message: compiled.left.message, exitCode: 2 })
      }
      const filter = EventFilter.make({
        types: flags.type,
        ...(Option.isSome(flags.session) ? { sessionId: flags.session.value } : {}),
        ...(Option.isSome(flags.job) ? { jobId: flags.job.value } : {})
      })
      const connection = yield* resolveConnection(flags)
      // The client lives as long as the command: following may take hours.
      const client = yield* Effect.map(Layer.build(clientLayer(connection)), Context.get(Client.VibesClient))
      const { head } = yield* client.Events.Head().pipe(
        answerWithin(connection, flags.timeout),
        Effect.mapError(toCliFailure(connection))
      )
      const from = Option.getOrElse(flags.from, () => Math.max(1, head - flags.last + 1))
      let last = from - 1
      const print = (event: StoredEvent) =>
        Effect.sync(() => {
          last = event.offset
          console.log(flags.json ? JSON.stringify(encodeEvent(event)) : formatEvent(event))
        })
      const stream = flags.follow
        ? follow(client, { _tag: "Offset", offset: from }, filter)
        : follow(client, { _tag: "Offset", offset: from }, filter).pipe(
            Stream.takeUntil((event) => event.offset >= head),
            // Nothing matching up to the head: stop at once rather than wait for a new event.
            Stream.interruptWhen(
              Effect.flatMap(client.Events.Read({ from, filter, limit: 1 }), (found) =>
                found.length > 0 && found[0] !== undefined && found[0].offset <= head
                  ? Effect.never
                  : Effect.void
              )
            )
          )
      yield* stream.pipe(
        Stream.runForEach(print),
        Effect.onInterrupt(() =>
          Effect.sync(() =>
            console.error(`vibes: stopped after offset ${last}; resume with --from ${last + 1}`)
          )
        ),
        Effect.mapError(
          (error) =>
            new CliFailure({
              message:
                error._tag === "InvalidGlob" || error._tag === "InvalidConsumer"
                  ? error.message
                  : error._tag === "RpcClientError"
                    ? `lost the connection to ${connection.url} (${describeError(error)}); resume with --from ${last + 1}`
                    : `the event stream from ${connection.url} failed: ${error.message}; resume with --from ${last + 1}`,
              exitCode:
                error._tag === "InvalidGlob" || error._tag === "InvalidConsumer"
                  ? 2
                  : error._tag === "Unauthorized"
                    ? 3
                    : 1
            })
        )
      )
      if (flags.follow) {
        return yield* new CliFailure({
          message: `the server closed the stream (it is shutting down); resume with --from ${last + 1}`,
          exitCode: 1
        })
      }
    }).pipe(Effect.scoped)
).pipe(
  Command.withDescription(
    "Print events from the log: the last 20 by default, from an offset with --from, and live with --follow."
  )
)

// root ------------------------------------------------------------------------------------

/** The `vibes` command and its subcommands. */
export const command = Command.make("vibes").pipe(
  Command.withDescription(
    "vibes: terminal sessions, jobs and AI-provider traffic with a durable event history."
  ),
  Command.withSubcommands([serve, status, events])
)

/** Parses `argv` (without node and script) and runs the chosen command. */
export const run = Command.run(command, { name: "vibes", version })
