/**
 * A `vibes serve` child process for the SSE benchmark, like `test/support/VibesProcess.serve` but
 * with extra Node flags (e.g. `--cpu-prof`, which Node 20 refuses in `NODE_OPTIONS`).
 */
import * as childProcess from "node:child_process"
import * as path from "node:path"
import * as readline from "node:readline"
import { fileURLToPath } from "node:url"
import { Deferred, Effect, type Scope } from "effect"
import { BenchError } from "./harness.js"

const projectRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..")

/** A listening server. */
export interface Serving {
  readonly url: string
  readonly pid: number | undefined
}

/** What to start. */
export interface Options {
  readonly dataDir: string
  /** Set on top of this process' environment (minus what points at another node). */
  readonly env: Record<string, string>
  /** Node flags before `--import tsx`. */
  readonly nodeArgs: ReadonlyArray<string>
  /** The checkout whose `src/main.ts` runs: this one unless measuring a modified copy. */
  readonly root?: string
}

const isListening = (entry: unknown): entry is { annotations: { url: string } } =>
  typeof entry === "object" &&
  entry !== null &&
  "message" in entry &&
  entry.message === "vibes is listening" &&
  "annotations" in entry &&
  typeof entry.annotations === "object" &&
  entry.annotations !== null &&
  "url" in entry.annotations &&
  typeof entry.annotations.url === "string"

/**
 * Starts `vibes serve --port 0` with JSON logs and waits for its "vibes is listening" line.
 * When the scope closes it is stopped: SIGTERM, then SIGKILL after 20 seconds.
 */
export const serve = (options: Options): Effect.Effect<Serving, BenchError, Scope.Scope> =>
  Effect.gen(function* () {
    const env: NodeJS.ProcessEnv = { ...process.env, VIBES_LOG_FORMAT: "json", ...options.env }
    for (const key of ["VIBES_URL", "VIBES_TOKEN", "VIBES_PORT", "VIBES_HOST", "VIBES_ADMIN_TOKEN"]) {
      if (!(key in options.env)) delete env[key]
    }
    const listening = yield* Deferred.make<string, BenchError>()
    const exited = yield* Deferred.make<void>()
    const root = options.root ?? projectRoot
    const entry = path.join(root, "src", "main.ts")
    let stderr = ""
    const child = yield* Effect.acquireRelease(
      Effect.sync(() =>
        childProcess.spawn(
          process.execPath,
          [
            ...options.nodeArgs,
            "--import",
            "tsx",
            entry,
            "serve",
            "--port",
            "0",
            "--data-dir",
            options.dataDir
          ],
          { cwd: root, env, stdio: ["ignore", "pipe", "pipe"] }
        )
      ),
      (child) =>
        Effect.gen(function* () {
          if (child.exitCode !== null || child.signalCode !== null) return
          child.kill("SIGTERM")
          const done = yield* Deferred.await(exited).pipe(Effect.timeout("20 seconds"), Effect.option)
          if (done._tag === "None") {
            child.kill("SIGKILL")
            yield* Deferred.await(exited)
          }
        })
    )
    child.stderr.on("data", (chunk: Buffer) => {
      stderr = (stderr + chunk.toString("utf8")).slice(-20_000)
    })
    // Stdout must be drained, or the server blocks on its logs.
    readline.createInterface({ input: child.stdout }).on("line", (line) => {
      if (!line.includes("vibes is listening")) return
      try {
        const parsed: unknown = JSON.parse(line)
        if (isListening(parsed)) Deferred.unsafeDone(listening, Effect.succeed(parsed.annotations.url))
      } catch {
        // not a log line
      }
    })
    child.once("exit", (code, signal) => {
      Deferred.unsafeDone(exited, Effect.void)
      Deferred.unsafeDone(
        listening,
        Effect.fail(new BenchError({ message: `vibes serve exited (${code ?? signal}):\n${stderr}` }))
      )
    })
    const url = yield* Deferred.await(listening)
    return { url, pid: child.pid }
  })
