/**
 * `vibes export SESSION [-o FILE]`: records a session's output history as an asciicast v2 file
 * in the server's storage and downloads it (by default to `<session id>.cast`), ready for
 * `asciinema play`.
 */
import { Context, Effect, Layer, Option, Schema, Stream } from "effect"
import * as Args from "@effect/cli/Args"
import * as Command from "@effect/cli/Command"
import * as Options from "@effect/cli/Options"
import * as ParseResult from "effect/ParseResult"
import * as Client from "../../rpc/Client.js"
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
import { printable } from "./Display.js"

const exportCommand = Command.make(
  "export",
  {
    ...connectionOptions,
    sessionId: Args.text({ name: "session-id" }).pipe(
      Args.withDescription("The session's id (see `vibes ls`)")
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
      const sessionId = yield* Schema.decodeUnknown(SessionId)(flags.sessionId).pipe(
        Effect.mapError(
          (error) =>
            new CliFailure({
              message: `'${printable(flags.sessionId)}' is not a session id: ${ParseResult.TreeFormatter.formatErrorSync(error)}`,
              exitCode: 2
            })
        )
      )
      const connection = yield* resolveConnection(flags)
      const failure = toCliFailure(connection)
      const client = yield* Effect.map(Layer.build(clientLayer(connection)), Context.get(Client.VibesClient))
      const recording = yield* client.Recordings.Export({ sessionId }).pipe(
        answerWithin(connection, flags.timeout),
        Effect.mapError(failure)
      )
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
    "Record a session's output history (as far as the server keeps it) as an asciicast v2 file in the server's storage, and download it. Example: `vibes export build-1_0193d9b4-7c1e-7a2b-9c3d-4e5f60718293 -o build.cast && asciinema play build.cast`."
  )
)

/** The recording subcommands. */
export const commands = [exportCommand] as const
