/**
 * The `vibes` command line: `serve` runs a node, `status` asks one how it is.
 *
 * Exit codes: 0 success, 1 failure (server unreachable, start-up failed), 2 bad usage or
 * configuration, 3 credentials refused.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { Chunk, Context, DateTime, Deferred, Duration, Effect, Layer, Option, Schema, Stream } from "effect"
import * as Command from "@effect/cli/Command"
import * as Options from "@effect/cli/Options"
import * as Client from "../../rpc/Client.js"
import {
  compileGlob,
  EventFilter,
  EventLogStats,
  type RetentionStats,
  StoredEvent
} from "../../rpc/Events.js"
import { follow } from "../../rpc/Follow.js"
import { ClusterInfo } from "../../rpc/System.js"
import * as Config from "../config/Config.js"
import {
  answerWithin,
  CliFailure,
  clientLayer,
  configFailure,
  connectionOptions,
  dataDirOption,
  describeError,
  resolveConnection,
  serverFile,
  ServerFile,
  timeoutOption,
  toCliFailure,
  withClient
} from "./Connection.js"
import * as ArtifactCommands from "./ArtifactCommands.js"
import * as JobCommands from "./JobCommands.js"
import * as RecordingCommands from "./RecordingCommands.js"
import * as NotifyCommands from "./NotifyCommands.js"
import * as PtyHostCommand from "./PtyHostCommand.js"
import * as FileCommands from "./FileCommands.js"
import * as GitCommands from "./GitCommands.js"
import * as WorkspaceCommands from "./WorkspaceCommands.js"
import * as ProxyCommands from "./ProxyCommands.js"
import * as ConversationCommands from "./ConversationCommands.js"
import { formatBytes, json, printable, table } from "./Display.js"
import * as SessionCommands from "./SessionCommands.js"
import { version } from "../Version.js"

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

      // Loaded here, so client commands start without the server's modules.
      const [Server, Telemetry] = yield* Effect.promise(() =>
        Promise.all([import("../server/Server.js"), import("../../infra/telemetry/Telemetry.js")])
      )
      const node = Server.layer(config, {
        onListening: (announcement) =>
          Effect.gen(function* () {
            writeServerFile(config.dataDir, announcement.url)
            // The login URL carries the token: it goes to a 0600 file and to a terminal, never to a log.
            const loginFile = writeLoginFile(config.dataDir, announcement.loginUrl)
            yield* Effect.addFinalizer(() => Effect.sync(() => removeServerFile(config.dataDir)))
            yield* Effect.logInfo("vibes is listening").pipe(
              Effect.annotateLogs({
                url: announcement.url,
                loginUrlFile: loginFile,
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
        Effect.mapError(
          (error) =>
            // A provider that cannot be used is a configuration mistake, like a bad variable.
            new CliFailure({
              message: error.message,
              exitCode: error._tag === "ProxyConfigError" || error._tag === "EdgeConfigError" ? 2 : 1
            })
        ),
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

/** Name of the file in the data dir that holds the login URL (it carries the admin token). */
export const loginUrlFile = "login-url"

const writeLoginFile = (dataDir: string, loginUrl: string): string => {
  const file = path.join(dataDir, loginUrlFile)
  fs.rmSync(file, { force: true })
  fs.writeFileSync(file, loginUrl + "\n", { mode: 0o600, flag: "wx" })
  return file
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
    ...connectionOptions,
    json: Options.boolean("json").pipe(Options.withDescription("Print the answer as JSON"))
  },
  (flags) =>
    Effect.gen(function* () {
      const connection = yield* resolveConnection(flags)
      const info = yield* withClient(connection, flags.timeout, (client) => client.System.Info())
      if (flags.json) {
        console.log(
          json({
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
            `vibes ${printable(info.version)} at ${connection.url}`,
            `node      ${printable(info.nodeId)}`,
            `database  ${info.database}`,
            `started   ${info.startedAt.toJSON()}`,
            `uptime    ${formatUptime(info.uptimeMillis)}`
          ].join("\n")
        )
      }
    })
).pipe(Command.withDescription("Ask a vibes server how it is (System.Info). Exit 0 when it answers."))

// cluster ---------------------------------------------------------------------------------

const encodeCluster = Schema.encodeSync(ClusterInfo)

/** The cluster as a table: one line a node, then the shard groups. */
export const formatCluster = (info: ClusterInfo): string => {
  const header = ["NODE", "STATE", "MACHINE", "SHARDS", "ENTITIES", "SESSIONS", "JOBS", "LAST SEEN", "URL"]
  const rows = info.nodes.map((node) => [
    printable(node.nodeId) + (node.nodeId === info.nodeId ? " *" : ""),
    node.state,
    node.machine === null ? "-" : printable(node.machine),
    String(node.shards),
    String(node.entities),
    String(node.sessions),
    String(node.jobs),
    DateTime.formatIso(node.lastSeenAt),
    node.url === null ? "-" : printable(node.url)
  ])
  const widths = header.map((title, i) => Math.max(title.length, ...rows.map((row) => (row[i] ?? "").length)))
  const line = (cells: ReadonlyArray<string>) =>
    cells
      .map((cell, i) => cell.padEnd(widths[i] ?? 0))
      .join("  ")
      .trimEnd()
  const up = info.nodes.filter((node) => node.state === "up").length
  return [
    `${info.mode === "cluster" ? "cluster" : "single node"}: ${up} of ${info.nodes.length} nodes up, ${info.shardsPerGroup} shards a group, entities ${printable(info.entityTypes.join(", "))}`,
    "",
    line(header),
    ...rows.map(line),
    "",
    "GROUP".padEnd(24) + "  SHARDS HELD  OWNERS",
    ...info.groups.map(
      (group) =>
        `${printable(group.name).padEnd(24)}  ${`${group.shards}/${info.shardsPerGroup}`.padEnd(11)}  ${printable(group.owners.join(", "))}`
    )
  ].join("\n")
}

const cluster = Command.make(
  "cluster",
  {
    ...connectionOptions,
    json: Options.boolean("json").pipe(Options.withDescription("Print the answer as JSON"))
  },
  (flags) =>
    Effect.gen(function* () {
      const connection = yield* resolveConnection(flags)
      const info = yield* withClient(connection, flags.timeout, (client) => client.System.Cluster())
      console.log(flags.json ? json(encodeCluster(info)) : formatCluster(info))
    })
).pipe(
  Command.withDescription(
    "Show the cluster (System.Cluster): every node with its state (up, unresponsive, lost, stopped), shards, entities, sessions and jobs, and who holds each shard group. * marks the node that answered."
  )
)

// events ----------------------------------------------------------------------------------

/** One event as a line: offset, time, type, severity when not info, ids, payload (escaped for a terminal), raw bytes' size. */
export const formatEvent = (event: StoredEvent): string =>
  [
    `#${event.offset}`,
    DateTime.formatIso(event.ts),
    printable(event.type),
    event.severity !== "info" ? event.severity.toUpperCase() : "",
    event.sessionId !== undefined ? `session=${printable(event.sessionId)}` : "",
    event.jobId !== undefined ? `job=${printable(event.jobId)}` : "",
    json(event.data),
    event.bytes !== undefined ? `+${event.bytes.length} bytes` : ""
  ]
    .filter((part) => part !== "")
    .join(" ")

const encodeEvent = Schema.encodeSync(StoredEvent)

/** Events one `Events.Read` fetches while printing up to the head. */
const readPage = 1000

const events = Command.make(
  "events",
  {
    ...connectionOptions,
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
          console.log(flags.json ? json(encodeEvent(event)) : formatEvent(event))
        })
      // Without --follow: the matching events up to the head as it was, read page by page; a
      // subscription would wait at the head for a match that may never come.
      const stream = flags.follow
        ? follow(client, { _tag: "Offset", offset: from }, filter)
        : Stream.paginateChunkEffect(from, (start) =>
            start > head
              ? Effect.succeed([Chunk.empty<StoredEvent>(), Option.none<number>()] as const)
              : Effect.map(client.Events.Read({ from: start, filter, limit: readPage }), (page) => {
                  const upToHead = page.filter((event) => event.offset <= head)
                  const next = page[page.length - 1]
                  return [
                    Chunk.unsafeFromArray(upToHead),
                    page.length < readPage || next === undefined || next.offset >= head
                      ? Option.none<number>()
                      : Option.some(next.offset + 1)
                  ] as const
                })
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
    "Print events from the log: the last 20 by default, from an offset with --from, and live with --follow. `vibes events stats` shows what the log holds."
  )
)

/** A duration for people: 45 s, 12 min, 3.5 h, 30 days. */
const formatAge = (millis: number): string =>
  millis < 120_000
    ? `${Math.round(millis / 1000)} s`
    : millis < 7_200_000
      ? `${Math.round(millis / 60_000)} min`
      : millis < 172_800_000
        ? `${(millis / 3_600_000).toFixed(1)} h`
        : `${Math.round(millis / 86_400_000)} days`

/** A retention policy in a line: `session.output: covered by session.snapshot, at most 2.0 GiB`. */
const formatPolicy = (policy: RetentionStats): string =>
  `${policy.types.join(", ")}: ${[
    policy.snapshotType !== null ? `once covered by ${policy.snapshotType}` : "",
    policy.maxAgeMillis !== null ? `after ${formatAge(policy.maxAgeMillis)}` : "",
    policy.maxBytes !== null ? `beyond ${formatBytes(policy.maxBytes)}` : ""
  ]
    .filter((part) => part !== "")
    .join(", ")}`

const eventStats = Command.make(
  "stats",
  {
    ...connectionOptions,
    json: Options.boolean("json").pipe(Options.withDescription("Print the statistics as JSON"))
  },
  (flags) =>
    Effect.gen(function* () {
      const connection = yield* resolveConnection(flags)
      const stats = yield* withClient(connection, flags.timeout, (client) => client.Events.Stats())
      if (flags.json) {
        console.log(json(Schema.encodeSync(EventLogStats)(stats), 2))
        return
      }
      const now = Date.now()
      const age = (ts: DateTime.Utc | null) =>
        ts === null ? "-" : formatAge(now - DateTime.toEpochMillis(ts))
      console.log(
        [
          `${stats.backend} event log: head #${stats.head}, ${stats.events} events, ${formatBytes(stats.bytes)} of payload${
            stats.storedBytes !== null ? `, ${formatBytes(stats.storedBytes)} stored` : ""
          }`,
          "",
          table([
            ["TYPE", "EVENTS", "PAYLOAD", "SHARE", "OLDEST", "NEWEST"],
            ...stats.types.map((t) => [
              t.type,
              String(t.events),
              formatBytes(t.bytes),
              stats.bytes === 0 ? "-" : `${((100 * t.bytes) / stats.bytes).toFixed(1)}%`,
              age(t.oldest),
              age(t.newest)
            ])
          ]),
          "",
          stats.consumers.length === 0
            ? "consumers: none"
            : table([
                ["CONSUMER", "OFFSET", "LAG"],
                ...stats.consumers.map((c) => [c.name, String(c.offset), String(c.lag)])
              ]),
          "",
          "retention (VIBES_EVENTS_RETENTION, VIBES_JOB_RETENTION):",
          ...(stats.retention.length === 0 ? ["  none: every event is kept"] : []),
          ...stats.retention.map((policy) => `  ${printable(formatPolicy(policy))}`)
        ].join("\n")
      )
    })
).pipe(
  Command.withDescription(
    "What the event log holds: events and payload bytes per type (largest first), their oldest and newest, named consumers and their lag, and the retention policies that bound it."
  )
)

// doctor ----------------------------------------------------------------------------------

const doctor = Command.make(
  "doctor",
  {
    host: Options.text("host").pipe(
      Options.withDescription("Address the node listens on. Default: $VIBES_HOST or 127.0.0.1"),
      Options.optional
    ),
    port: Options.integer("port").pipe(
      Options.withDescription("Port the node listens on. Default: $VIBES_PORT or 7432"),
      Options.optional
    ),
    dataDir: dataDirOption,
    timeout: timeoutOption,
    json: Options.boolean("json").pipe(
      Options.withDescription("Print the checks as JSON: { ok, checks: [{ name, status, detail, fix? }] }")
    )
  },
  (flags) =>
    Effect.gen(function* () {
      if (Option.isSome(flags.port) && (flags.port.value < 0 || flags.port.value > 65535)) {
        return yield* new CliFailure({ message: "--port must be between 0 and 65535", exitCode: 2 })
      }
      const env = yield* Config.serverConfig.pipe(Effect.mapError(configFailure))
      const config: Config.ServerConfig = {
        ...env,
        host: Option.getOrElse(flags.host, () => env.host),
        port: Option.getOrElse(flags.port, () => env.port),
        dataDir: Option.match(flags.dataDir, {
          onNone: () => env.dataDir,
          onSome: (dir) => path.resolve(dir)
        })
      }
      const Doctor = yield* Effect.promise(() => import("./Doctor.js"))
      const checks = yield* Doctor.run(config, flags.timeout)
      const failed = checks.filter((check) => check.status === "FAIL")
      console.log(
        flags.json
          ? json({ ok: failed.length === 0, checks })
          : `vibes ${version} doctor (data dir ${config.dataDir})\n${Doctor.format(checks)}`
      )
      if (failed.length > 0) {
        return yield* new CliFailure({
          message: `${failed.length} of ${checks.length} checks failed: ${failed.map((check) => check.name).join(", ")}`,
          exitCode: 1
        })
      }
    })
).pipe(
  Command.withDescription(
    "Check what a node needs on this machine (Node.js, the terminal module, the database, the data dir, free disk, the port, the PTY host, nats-server, chromium) and print a fix for each problem. Exit 0 when nothing failed (warnings allowed), 1 when a check failed."
  )
)

// root ------------------------------------------------------------------------------------

/** The `vibes` command and its subcommands. */
export const command = Command.make("vibes").pipe(
  Command.withDescription(
    "vibes: terminal sessions, jobs and AI-provider traffic with a durable event history."
  ),
  Command.withSubcommands([
    serve,
    status,
    cluster,
    Command.withSubcommands(events, [eventStats]),
    doctor,
    ...SessionCommands.commands,
    ...JobCommands.commands,
    ...ArtifactCommands.commands,
    ...RecordingCommands.commands,
    ProxyCommands.command,
    ...ConversationCommands.commands,
    WorkspaceCommands.command,
    GitCommands.command,
    FileCommands.command,
    NotifyCommands.command,
    PtyHostCommand.command
  ])
)

/** Parses `argv` (without node and script) and runs the chosen command. */
export const run = Command.run(command, { name: "vibes", version })
export { CliFailure, serverFile } from "./Connection.js"
