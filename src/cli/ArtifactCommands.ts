/**
 * Artifact commands of the CLI: `vibes artifacts JOB` lists what a job kept, `vibes artifact get
 * JOB NAME [-o FILE]` downloads one (to `FILE.part`, renamed once whole and its sha256 checked),
 * with a progress bar on stderr when stderr is a terminal.
 */
import { createHash } from "node:crypto"
import * as fsp from "node:fs/promises"
import * as path from "node:path"
import { Context, Effect, Layer, Option, Schema, Stream } from "effect"
import * as Args from "@effect/cli/Args"
import * as Command from "@effect/cli/Command"
import * as Options from "@effect/cli/Options"
import * as ParseResult from "effect/ParseResult"
import { ArtifactInfo, ArtifactName } from "../../rpc/Artifacts.js"
import * as Client from "../../rpc/Client.js"
import { answerWithin, CliFailure, clientLayer, connectionOptions, resolveConnection } from "./Connection.js"
import { formatBytes, json, printable } from "./Display.js"
import { checkJobId, jobFailure, jobIdArg, usage, write } from "./JobCommands.js"

const encodeInfos = Schema.encodeSync(Schema.Array(ArtifactInfo))

/** One line of the progress bar: `[#####-----]  50%  5.0 MiB / 10.0 MiB`. */
export const progressLine = (done: number, total: number, width = 30): string => {
  const fraction = total === 0 ? 1 : Math.min(1, done / total)
  const filled = Math.round(fraction * width)
  return `[${"#".repeat(filled)}${"-".repeat(width - filled)}] ${String(Math.floor(fraction * 100)).padStart(3)}%  ${formatBytes(done)} / ${formatBytes(total)}`
}

const connected = (flags: Parameters<typeof resolveConnection>[0]) =>
  Effect.gen(function* () {
    const connection = yield* resolveConnection(flags)
    // A download may take long: the client lives as long as the command.
    const client = yield* Effect.map(Layer.build(clientLayer(connection)), Context.get(Client.VibesClient))
    return { connection, client }
  })

/**
 * Writes `bytes` to `target` ('-': stdout) through `target.part`, renamed once all of it came and
 * matched `size` and `sha256`; a progress bar on stderr when it is a terminal.
 */
export const save = <E>(
  bytes: Stream.Stream<Uint8Array, E>,
  expected: {
    readonly label: string
    readonly target: string
    readonly size: number
    readonly sha256: string
  }
): Effect.Effect<void, E | CliFailure> =>
  Effect.gen(function* () {
    const { label: name, target } = expected
    const info = expected
    const hash = createHash("sha256")
    let received = 0
    const showProgress = process.stderr.isTTY === true
    let shownAt = 0
    const progress = (final: boolean) =>
      showProgress && (final || Date.now() - shownAt >= 100)
        ? Effect.suspend(() => {
            shownAt = Date.now()
            // `ESC [ K` clears what a longer line before left.
            return write(process.stderr, `\r${progressLine(received, info.size)}\u001b[K${final ? "\n" : ""}`)
          })
        : Effect.void
    const counted = bytes.pipe(
      Stream.tap((chunk) =>
        Effect.zipRight(
          Effect.sync(() => {
            hash.update(chunk)
            received += chunk.length
          }),
          progress(false)
        )
      )
    )
    const checked = Effect.suspend(() => {
      const sha256 = hash.digest("hex")
      return received === info.size && sha256 === info.sha256
        ? progress(true)
        : Effect.fail(
            new CliFailure({
              message: `the download of ${printable(name)} does not match: got ${received} bytes with sha256 ${sha256}, expected ${info.size} bytes with sha256 ${info.sha256}`,
              exitCode: 1
            })
          )
    })
    if (target === "-") {
      yield* Stream.runForEach(counted, (chunk) =>
        Effect.async<void>((resume) => {
          process.stdout.write(chunk, () => resume(Effect.void))
        })
      )
      return yield* checked
    }
    const part = `${target}.part`
    const cannot = (cause: unknown) =>
      new CliFailure({ message: `cannot write ${printable(target)}: ${String(cause)}`, exitCode: 1 })
    yield* Effect.acquireUseRelease(
      Effect.tryPromise({ try: () => fsp.open(part, "w", 0o644), catch: cannot }),
      (file) =>
        Stream.runForEach(counted, (chunk) =>
          Effect.tryPromise({ try: () => file.write(chunk).then(() => undefined), catch: cannot })
        ).pipe(Effect.zipRight(checked)),
      (file) => Effect.promise(() => file.close().catch(() => undefined))
    ).pipe(
      Effect.zipRight(Effect.tryPromise({ try: () => fsp.rename(part, target), catch: cannot })),
      Effect.onError(() => Effect.promise(() => fsp.rm(part, { force: true })))
    )
    yield* write(
      process.stderr,
      `saved ${printable(name)} to ${printable(target)} (${formatBytes(info.size)})\n`
    )
  })

const list = Command.make(
  "artifacts",
  {
    ...connectionOptions,
    jobId: jobIdArg,
    json: Options.boolean("json").pipe(Options.withDescription("Print the artifacts as a JSON array"))
  },
  (flags) =>
    Effect.gen(function* () {
      const jobId = yield* checkJobId(flags.jobId)
      const { connection, client } = yield* connected(flags)
      const artifacts = yield* client.Artifacts.List({ jobId }).pipe(
        answerWithin(connection, flags.timeout),
        Effect.mapError(jobFailure(connection))
      )
      if (flags.json) return yield* write(process.stdout, `${json(encodeInfos(artifacts), 2)}\n`)
      if (artifacts.length === 0) return yield* write(process.stdout, `job ${jobId} kept no artifacts\n`)
      const width = Math.max(4, ...artifacts.map((artifact) => String(artifact.size).length))
      const lines = artifacts.map(
        (artifact) =>
          `${String(artifact.size).padStart(width)}  ${artifact.sha256}  ${printable(artifact.name)}`
      )
      yield* write(
        process.stdout,
        [`${"SIZE".padStart(width)}  ${"SHA256".padEnd(64)}  NAME`, ...lines].join("\n") + "\n"
      )
    }).pipe(Effect.scoped)
).pipe(
  Command.withDescription(
    "List the artifacts a job kept (see `vibes run --artifact`): size in bytes, sha256 and name. Example: `vibes artifacts 0193d9b4-7c1e-7a2b-9c3d-4e5f60718293`."
  )
)

const get = Command.make(
  "get",
  {
    ...connectionOptions,
    jobId: jobIdArg,
    name: Args.text({ name: "name" }).pipe(
      Args.withDescription("The artifact's name as `vibes artifacts` lists it (e.g. dist/app.js)")
    ),
    output: Options.text("output").pipe(
      Options.withAlias("o"),
      Options.withDescription("Where to write it ('-' for stdout). Default: the name's last part, here"),
      Options.optional
    )
  },
  (flags) =>
    Effect.gen(function* () {
      const jobId = yield* checkJobId(flags.jobId)
      const name = yield* Schema.decodeUnknown(ArtifactName)(flags.name).pipe(
        Effect.mapError((error) =>
          usage(
            `'${printable(flags.name)}' is not an artifact name: ${ParseResult.TreeFormatter.formatErrorSync(error)}`
          )
        )
      )
      const target = Option.getOrElse(flags.output, () => path.basename(name))
      const { connection, client } = yield* connected(flags)
      const failure = jobFailure(connection)
      const info = yield* client.Artifacts.Get({ jobId, name }).pipe(
        answerWithin(connection, flags.timeout),
        Effect.mapError(failure)
      )
      yield* save(client.Artifacts.Download({ jobId, name }).pipe(Stream.mapError(failure)), {
        label: name,
        target,
        size: info.size,
        sha256: info.sha256
      })
    }).pipe(Effect.scoped)
).pipe(
  Command.withDescription(
    "Download one artifact of a job to a file (by default its name's last part, in this directory), checking its sha256; a progress bar shows on a terminal. Example: `vibes artifact get 0193d9b4-7c1e-7a2b-9c3d-4e5f60718293 dist/app.js -o app.js`."
  )
)

const artifact = Command.make("artifact").pipe(
  Command.withDescription("Work with one artifact of a job: `vibes artifact get JOB NAME [-o FILE]`."),
  Command.withSubcommands([get])
)

/** The artifact subcommands. */
export const commands = [list, artifact] as const
