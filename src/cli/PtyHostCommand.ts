/**
 * `vibes pty-host`: runs the machine's PTY host for a data dir. `vibes serve` starts it on demand
 * (detached, so shells outlive the server); it exits by itself when it has had no running program
 * and no client for a while (leaving the exits of ended programs for the next server), and at once
 * when its data dir is removed.
 *
 * Settings: `VIBES_PTY_RING_BYTES` (output kept per PTY, default 8 MiB) and
 * `VIBES_PTY_HOST_IDLE_EXIT` (seconds without running programs or clients before the host exits,
 * default 30).
 */
import * as path from "node:path"
import { Config as EffectConfig, type ConfigError, Duration, Effect, LogLevel, Option, Schema } from "effect"
import * as Command from "@effect/cli/Command"
import * as Options from "@effect/cli/Options"
import { defaultIdleExit, defaultRingBytes } from "../../infra/pty/PtyHostDefaults.js"
import * as Config from "../config/Config.js"

/** `vibes pty-host` failed; `exitCode` as in the rest of the CLI (1 failure, 2 bad configuration). */
export class PtyHostCommandFailure extends Schema.TaggedError<PtyHostCommandFailure>()(
  "PtyHostCommandFailure",
  {
    message: Schema.String,
    exitCode: Schema.Int
  }
) {}

/** The host's settings from the environment. */
export const hostConfig = EffectConfig.all({
  dataDir: Config.dataDir,
  ringBytes: EffectConfig.integer("VIBES_PTY_RING_BYTES").pipe(
    EffectConfig.validate({
      message: "VIBES_PTY_RING_BYTES must be a positive number of bytes (at most 1 GiB)",
      validation: (n) => n >= 1 && n <= 1024 * 1024 * 1024
    }),
    EffectConfig.withDefault(defaultRingBytes)
  ),
  idleExit: EffectConfig.number("VIBES_PTY_HOST_IDLE_EXIT").pipe(
    EffectConfig.validate({
      message: "VIBES_PTY_HOST_IDLE_EXIT must be a positive number of seconds",
      validation: (n) => Number.isFinite(n) && n > 0
    }),
    EffectConfig.map(Duration.seconds),
    EffectConfig.withDefault(defaultIdleExit)
  )
})

const configFailure = (error: ConfigError.ConfigError) =>
  new PtyHostCommandFailure({
    message: `invalid configuration: ${String(error).replace(/\s+/g, " ")}`,
    exitCode: 2
  })

/** The `pty-host` command. */
export const command = Command.make(
  "pty-host",
  {
    dataDir: Options.text("data-dir").pipe(
      Options.withDescription(
        "Data directory (socket, pid file). Default: $VIBES_DATA_DIR or ~/.local/share/vibes"
      ),
      Options.optional
    )
  },
  (flags) =>
    Effect.gen(function* () {
      const settings = yield* hostConfig.pipe(Effect.mapError(configFailure))
      const dataDir = Option.match(flags.dataDir, {
        onNone: () => settings.dataDir,
        onSome: (dir) => path.resolve(dir)
      })
      // Loaded here, not with the CLI: the commands that talk to a server never need them.
      const [PtyHostServer, Telemetry] = yield* Effect.promise(() =>
        Promise.all([
          import("../../infra/pty/PtyHostServer.js"),
          import("../../infra/telemetry/Telemetry.js")
        ])
      )
      yield* PtyHostServer.run({ dataDir, ringBytes: settings.ringBytes, idleExit: settings.idleExit }).pipe(
        Effect.mapError((error) => new PtyHostCommandFailure({ message: error.message, exitCode: 1 })),
        Effect.provide(
          Telemetry.layerLogger({
            format: "auto",
            level: LogLevel.Info,
            isTTY: process.stdout.isTTY === true
          })
        )
      )
    })
).pipe(
  Command.withDescription(
    "Run the PTY host of a data dir: it holds the terminals of the sessions, so they outlive `vibes serve`. " +
      "Normally started by `vibes serve`."
  )
)
