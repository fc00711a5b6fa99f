/**
 * `vibes export SESSION [-o FILE]`: records a session's output history as an asciicast v2 file
 * in the server's storage and downloads it (by default to `<session id>.cast`), ready for
 * `asciinema play`.
 */
import { Context, DateTime, Effect, Layer, Option, Schema, Stream } from "effect"
import * as Args from "@effect/cli/Args"
import * as Command from "@effect/cli/Command"
import * as Options from "@effect/cli/Options"
import * as ParseResult from "effect/ParseResult"
import * as Client from "../../rpc/Client.js"
import { RecordingEntry } from "../../rpc/Recordings.js"
import { SessionId } from "../../rpc/Sessions.js"
import { save } from "./ArtifactCommands.js"
import {
  answerWithin,
  CliFailure,
  clientLayer,
  connectionOptions,
  resolveConnection,
  toCliFailure
} from "./Connection.js"
import { formatBytes, json, printable, table } from "./Display.js"

/** `--from`/`--to` as a time, or bad usage (exit 2). */
const time = (flag: string, value: Option.Option<string>) =>
  Option.match(value, {
    onNone: () => Effect.succeedNone,
    onSome: (text) =>
      Option.match(DateTime.make(text), {
        onNone: () =>
          Effect.fail(
            new CliFailure({
              message: `${flag} '${printable(text)}' is not a time such as 2026-12-07T21:00:00Z`,
              exitCode: 2
            })
          ),
        onSome: (t) => Effect.succeed(Option.some(DateTime.toUtc(t)))
      })
  })

/** The session id argument, checked (bad usage, exit 2, when it is not one). */
const checkedSession = (text: string) =>
  Schema.decodeUnknown(SessionId)(text).pipe(
    Effect.mapError(
      (error) =>
        new CliFailure({
          message: `'${printable(text)}' is not a session id: ${ParseResult.TreeFormatter.formatErrorSync(error)}`,
          exitCode: 2
        })
    )
  )

const exportCommand = Command.make(
  "export",
  {
    ...connectionOptions,
    sessionId: Args.text({ name: "session-id" }).pipe(
      Args.withDescription("The session's id (see `vibes ls`)")
    ),
    from: Options.text("from").pipe(
      Options.withDescription(
        "Record from this time on (ISO 8601, e.g. 2026-12-07T21:00:00Z). Default: the start"
      ),
      Options.optional
    ),
    to: Options.text("to").pipe(
      Options.withDescription("Record up to this time (ISO 8601). Default: now"),
      Options.optional
    ),
    output: Options.text("output").pipe(
      Options.withAlias("o"),
      Options.withDescription(
        "Where to write the recording ('-' for stdout). Default: <session-id>.cast, here"
      ),
      Options.optional
    )
  },
  (flags) =>
    Effect.gen(function* () {
      const sessionId = yield* checkedSession(flags.sessionId)
      const from = yield* time("--from", flags.from)
      const to = yield* time("--to", flags.to)
      const connection = yield* resolveConnection(flags)
      const failure = toCliFailure(connection)
      const client = yield* Effect.map(Layer.build(clientLayer(connection)), Context.get(Client.VibesClient))
      const recording = yield* client.Recordings.Export({
        sessionId,
        ...(Option.isSome(from) ? { from: from.value } : {}),
        ...(Option.isSome(to) ? { to: to.value } : {})
      }).pipe(answerWithin(connection, flags.timeout), Effect.mapError(failure))
      yield* save(
        client.Recordings.Download({ sessionId, name: recording.name }).pipe(Stream.mapError(failure)),
        {
          label: `recording ${recording.name}`,
          target: Option.getOrElse(flags.output, () => `${sessionId}.cast`),
          size: recording.size,
          sha256: recording.sha256
        }
      )
    }).pipe(Effect.scoped)
).pipe(
  Command.withDescription(
    "Record a session's output history (as far as the server keeps it; or between --from and --to) as an asciicast v2 file in the server's storage, and download it. Example: `vibes export build-1_0193d9b4-7c1e-7a2b-9c3d-4e5f60718293 -o build.cast && asciinema play build.cast`."
  )
)

const listCommand = Command.make(
  "recordings",
  {
    ...connectionOptions,
    sessionId: Args.text({ name: "session-id" }).pipe(
      Args.withDescription("The session's id (see `vibes ls`)")
    ),
    json: Options.boolean("json").pipe(Options.withDescription("Print JSON instead of a table"))
  },
  (flags) =>
    Effect.gen(function* () {
      const sessionId = yield* checkedSession(flags.sessionId)
      const connection = yield* resolveConnection(flags)
      const client = yield* Effect.map(Layer.build(clientLayer(connection)), Context.get(Client.VibesClient))
      const entries = yield* client.Recordings.List({ sessionId }).pipe(
        answerWithin(connection, flags.timeout),
        Effect.mapError(toCliFailure(connection))
      )
      if (flags.json) {
        console.log(json(Schema.encodeSync(Schema.Array(RecordingEntry))(entries), 2))
        return
      }
      if (entries.length === 0) {
        console.log(
          `session ${printable(sessionId)} has no recordings (make one: vibes export ${printable(sessionId)})`
        )
        return
      }
      console.log(
        table([
          ["NAME", "SIZE", "CREATED"],
          ...entries.map((e) => [e.name, formatBytes(e.size), DateTime.formatIso(e.createdAt)])
        ])
      )
    }).pipe(Effect.scoped)
).pipe(
  Command.withDescription(
    "List a session's recordings in the server's storage (made by `vibes export`), oldest first."
  )
)

/** The recording subcommands. */
export const commands = [exportCommand, listCommand] as const
