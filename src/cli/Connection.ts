/**
 * What the CLI's client commands share: where the server is, the token, the connected client,
 * and how failures become one line and an exit code.
 *
 * Exit codes: 0 success, 1 failure (server unreachable, start-up failed), 2 bad usage or
 * configuration, 3 credentials refused.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { Cause, type ConfigError, Duration, Effect, Layer, Option, type Redacted, Schema } from "effect"
import * as Options from "@effect/cli/Options"
import * as NodeSocket from "@effect/platform-node/NodeSocket"
import { Unauthorized } from "../../rpc/Auth.js"
import * as Client from "../../rpc/Client.js"
import * as AdminToken from "../../infra/auth/AdminToken.js"
import * as Config from "../config/Config.js"

/** A failure the CLI reports as one line and an exit code. */
export class CliFailure extends Schema.TaggedError<CliFailure>()("CliFailure", {
  message: Schema.String,
  exitCode: Schema.Int
}) {}

/** Name of the file in the data dir where a running server says where it listens. */
export const serverFile = "server.json"

export const ServerFile = Schema.parseJson(Schema.Struct({ url: Schema.String, pid: Schema.Int }))

export const configFailure = (error: ConfigError.ConfigError) =>
  new CliFailure({ message: `invalid configuration: ${String(error).replace(/\s+/g, " ")}`, exitCode: 2 })

export const dataDirOption = Options.text("data-dir").pipe(
  Options.withDescription(
    "Data directory (token, embedded Postgres). Default: $VIBES_DATA_DIR or ~/.local/share/vibes"
  ),
  Options.optional
)

export const urlOption = Options.text("url").pipe(
  Options.withDescription(
    "Server URL, or the URLs of several nodes of a cluster separated by commas (the first that " +
      "answers is used). Default: $VIBES_URL, the local server of the data dir, or http://127.0.0.1:7432"
  ),
  Options.optional
)
export const tokenOption = Options.redacted("token").pipe(
  Options.withDescription("Admin token. Default: $VIBES_TOKEN, or the token file in the data dir"),
  Options.optional
)
export const timeoutOption = Options.integer("timeout").pipe(
  Options.withDescription("Seconds to wait for the server"),
  Options.withDefault(10)
)

/** Where and with what token a client command connects. */
export const resolveConnection = (flags: {
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
    const given = flags.url.pipe(
      Option.orElse(() => env.url),
      Option.orElse(() => local),
      Option.getOrElse(() => "http://127.0.0.1:7432")
    )
    const urls = Config.splitUrls(given)
    const bad = urls.find((url) => !Config.isHttpUrl(url))
    if (bad !== undefined) {
      return yield* new CliFailure({ message: `--url must be an http(s) URL, got '${bad}'`, exitCode: 2 })
    }
    const fromFile = yield* AdminToken.read(dataDir)
    const token = flags.token.pipe(
      Option.orElse(() => env.token),
      Option.orElse(() => fromFile)
    )
    return yield* liveConnection({ url: urls[0] ?? given, urls, token })
  })

/** Whether the server at `url` answers `/healthz` within 2 s. */
const answers = (url: string) =>
  Effect.tryPromise((signal) => fetch(`${url.replace(/\/+$/, "")}/healthz`, { signal })).pipe(
    Effect.timeout("2 seconds"),
    Effect.map((response) => response.ok),
    Effect.orElseSucceed(() => false)
  )

/**
 * With several URLs (nodes of one cluster), the connection to the first that answers, in the
 * order given; when none does, the first, whose error the command reports.
 */
export const liveConnection = (connection: Connection): Effect.Effect<Connection> =>
  connection.urls.length <= 1
    ? Effect.succeed(connection)
    : Effect.forEach(connection.urls, answers, { concurrency: "unbounded" }).pipe(
        Effect.map((live) => ({ ...connection, url: connection.urls[live.indexOf(true)] ?? connection.url }))
      )

export const readServerFile = (dataDir: string): Option.Option<string> => {
  try {
    return Schema.decodeUnknownOption(ServerFile)(
      fs.readFileSync(path.join(dataDir, serverFile), "utf8")
    ).pipe(Option.map((file) => file.url))
  } catch {
    return Option.none()
  }
}

/** Where a client command connects: `url`, one of `urls` (the nodes the user named). */
export type Connection = {
  readonly url: string
  readonly urls: ReadonlyArray<string>
  readonly token: Option.Option<Redacted.Redacted<string>>
}

/** Errors about what the user asked for: exit code 2. */
const usageErrors = new Set([
  "InvalidSessionRequest",
  "SpawnFailed",
  "InvalidGlob",
  "InvalidConsumer",
  "InvalidWorkspaceRequest",
  "InvalidBranchName",
  "NotARepository",
  "PathRefused",
  "InvalidFileRequest",
  "InvalidNotifyRequest"
])
/** Errors about the state of things on the server: exit code 1 with the server's message. */
const refusals = new Set([
  "SessionNotFound",
  "SessionNotRunning",
  "ReadOnlyAttachment",
  "SessionUnavailable",
  "RecordingNotFound",
  "StorageUnavailable",
  "WorkspaceNotFound",
  "WorkspaceExists",
  "PathInUse",
  "WorktreeDirty",
  "GitRefused",
  "GitConflict",
  "NothingToCommit",
  "WorkspacesUnavailable",
  "FileNotFound",
  "FileExists",
  "FileTooLarge",
  "FilesUnavailable",
  "NotifyNotFound",
  "NotifyUnavailable",
  "ConversationNotFound",
  "ConversationsUnavailable",
  "ReplayFailed"
])

const isTagged = (error: unknown): error is { readonly _tag: string; readonly message: string } =>
  typeof error === "object" &&
  error !== null &&
  "_tag" in error &&
  typeof error._tag === "string" &&
  "message" in error &&
  typeof error.message === "string"

/** Turns transport, auth and request failures into one-line CLI failures. */
export const toCliFailure =
  (connection: Connection) =>
  (error: unknown): CliFailure =>
    error instanceof CliFailure
      ? error
      : isTagged(error) && usageErrors.has(error._tag)
        ? new CliFailure({ message: error.message, exitCode: 2 })
        : isTagged(error) && refusals.has(error._tag)
          ? new CliFailure({ message: error.message, exitCode: 1 })
          : Option.isSome(Client.refusalOf(error))
            ? new CliFailure({
                message:
                  Client.refusalOf(error).pipe(Option.getOrThrow) === "too-many-attempts"
                    ? `${connection.url} refuses credentials from this address for now (too many wrong tokens); try again later`
                    : Option.isNone(connection.token)
                      ? `${connection.url} needs a token: pass --token or set VIBES_TOKEN`
                      : `${connection.url} refused the token`,
                exitCode: 3
              })
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

export const clientLayer = (connection: Connection) =>
  Client.layer({ url: connection.url, token: connection.token }).pipe(
    Layer.provide(NodeSocket.layerWebSocketConstructor)
  )

export const answerWithin = (connection: Connection, timeoutSeconds: number) =>
  Effect.timeoutFail({
    duration: Duration.seconds(timeoutSeconds),
    onTimeout: () =>
      new CliFailure({ message: `no answer from ${connection.url} within ${timeoutSeconds}s`, exitCode: 1 })
  })

/** Runs `use` with a connected client, turning transport and auth failures into one-liners. */
export const withClient = <A, E, R>(
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
export const describeError = (error: unknown): string => {
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

/** The options every client command takes. */
export const connectionOptions = {
  url: urlOption,
  token: tokenOption,
  dataDir: dataDirOption,
  timeout: timeoutOption
}
