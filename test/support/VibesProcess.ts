/**
 * The `vibes` CLI run as a separate process: the bundle of the sources made for this test run.
 */
import * as childProcess from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"
import * as readline from "node:readline"
import { fileURLToPath } from "node:url"
import { Deferred, Effect } from "effect"
import * as DataDir from "../../infra/datadir/DataDir.js"
import { entry } from "./CliEntry.js"

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..")

/** The shell command that runs the CLI: append arguments. */
export const commandLine = `${process.execPath} ${entry}`

/** The environment for a child: this one, minus what would leak between tests. */
export const childEnv = (extra: Record<string, string | undefined> = {}): NodeJS.ProcessEnv => {
  const env: NodeJS.ProcessEnv = { ...process.env, VIBES_LOG_FORMAT: "json", ...extra }
  for (const key of [
    "VIBES_URL",
    "VIBES_TOKEN",
    "VIBES_PORT",
    "VIBES_HOST",
    "VIBES_ADMIN_TOKEN",
    "VIBES_NODE_ID"
  ]) {
    if (!(key in extra)) delete env[key]
  }
  for (const [key, value] of Object.entries(extra)) if (value === undefined) delete env[key]
  return env
}

/** How a finished CLI run went. */
export interface Result {
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string
}

/** The package's name and version, from its package.json. */
export const packageJson = (): { readonly name: string; readonly version: string } => {
  const parsed: unknown = JSON.parse(fs.readFileSync(path.join(root, "package.json"), "utf8"))
  const field = (key: string) =>
    typeof parsed === "object" && parsed !== null && key in parsed ? String(Reflect.get(parsed, key)) : ""
  return { name: field("name"), version: field("version") }
}

/** Runs `vibes <args>` to completion. */
export const run = (args: ReadonlyArray<string>, env: NodeJS.ProcessEnv = childEnv()) =>
  runScript(entry, args, env)

/** Runs `node <script> <args>` to completion; `script` relative to the package's root. */
export const runScript = (script: string, args: ReadonlyArray<string>, env: NodeJS.ProcessEnv = childEnv()) =>
  Effect.async<Result>((resume) => {
    const child = childProcess.spawn(process.execPath, [script, ...args], {
      cwd: root,
      env,
      stdio: ["ignore", "pipe", "pipe"]
    })
    let stdout = ""
    let stderr = ""
    child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString("utf8")))
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString("utf8")))
    child.once("close", (code) => resume(Effect.succeed({ code, stdout, stderr })))
    return Effect.sync(() => child.kill("SIGKILL"))
  })

/** A `vibes serve` process that is listening. */
export interface Serving {
  readonly url: string
  readonly loginUrl: string
  readonly dataDir: string
  readonly child: childProcess.ChildProcess
  /** Every line the process wrote to stdout so far. */
  readonly lines: Array<string>
  /** Completes with the exit code (or signal name) when the process ends. */
  readonly exited: Deferred.Deferred<{ readonly code: number | null; readonly signal: NodeJS.Signals | null }>
}

/** Which `vibes` to run, and where: this run's bundle in the package's root by default. */
export interface Launch {
  /** The executable and its first arguments (e.g. an installed `bin/vibes`). */
  readonly command: readonly [string, ...Array<string>]
  readonly cwd: string
}

/**
 * Starts `vibes serve --port <port>` (0: a free one) on `dataDir` and waits for its "listening" log line. When the
 * scope closes, a process still running is stopped (TERM, then KILL), and so is a Postgres it left.
 */
export const serve = (
  dataDir: string,
  env: NodeJS.ProcessEnv = childEnv(),
  port = 0,
  launch: Launch = { command: [process.execPath, entry], cwd: root }
) =>
  Effect.gen(function* () {
    const listening = yield* Deferred.make<{ url: string }, Error>()
    const exited = yield* Deferred.make<{ code: number | null; signal: NodeJS.Signals | null }>()
    const lines: Array<string> = []
    const child = yield* Effect.acquireRelease(
      Effect.sync(() =>
        childProcess.spawn(
          launch.command[0],
          [...launch.command.slice(1), "serve", "--port", String(port), "--data-dir", dataDir],
          {
            cwd: launch.cwd,
            env,
            stdio: ["ignore", "pipe", "pipe"]
          }
        )
      ),
      (child) => stop(child, exited, dataDir)
    )
    let stderr = ""
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString("utf8")))
    readline.createInterface({ input: child.stdout }).on("line", (line) => {
      lines.push(line)
      try {
        const entry: unknown = JSON.parse(line)
        if (isListening(entry)) {
          Deferred.unsafeDone(listening, Effect.succeed({ url: entry.annotations.url }))
        }
      } catch {
        // not a log line
      }
    })
    child.once("exit", (code, signal) => {
      Deferred.unsafeDone(exited, Effect.succeed({ code, signal }))
      Deferred.unsafeDone(
        listening,
        Effect.fail(
          new Error(
            `vibes serve exited (${code ?? signal}) before listening:\n${stderr}\n${lines.join("\n")}`
          )
        )
      )
    })
    const { url } = yield* Deferred.await(listening)
    const loginUrl = fs.readFileSync(path.join(dataDir, "login-url"), "utf8").trim()
    return { url, loginUrl, dataDir, child, lines, exited } satisfies Serving
  })

const isListening = (
  entry: unknown
): entry is { message: "vibes is listening"; annotations: { url: string } } =>
  typeof entry === "object" &&
  entry !== null &&
  "message" in entry &&
  entry.message === "vibes is listening" &&
  "annotations" in entry &&
  typeof entry.annotations === "object" &&
  entry.annotations !== null &&
  "url" in entry.annotations &&
  typeof entry.annotations.url === "string"

const stop = (
  child: childProcess.ChildProcess,
  exited: Deferred.Deferred<{ code: number | null; signal: NodeJS.Signals | null }>,
  dataDir: string
) =>
  Effect.gen(function* () {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGTERM")
      const done = yield* Deferred.await(exited).pipe(Effect.timeout("20 seconds"), Effect.option)
      if (done._tag === "None") {
        child.kill("SIGKILL")
        yield* Deferred.await(exited)
      }
    }
    const pid = postmasterPid(dataDir)
    if (pid !== undefined && DataDir.isAlive(pid)) process.kill(pid, "SIGKILL")
  })

/** The pid in the embedded Postgres' postmaster.pid, if there is one. */
export const postmasterPid = (dataDir: string): number | undefined => {
  try {
    const pid = Number.parseInt(fs.readFileSync(path.join(dataDir, "postgres", "postmaster.pid"), "utf8"), 10)
    return Number.isInteger(pid) && pid > 0 ? pid : undefined
  } catch {
    return undefined
  }
}

/** A long-running `vibes <args>` (e.g. `events --follow`) whose output is watched line by line. */
export interface Running {
  readonly child: childProcess.ChildProcess
  readonly stdout: Array<string>
  readonly stderr: () => string
  /** Resolves once a stdout line satisfies `predicate`. */
  readonly untilLine: (predicate: (line: string) => boolean) => Effect.Effect<string>
  readonly exited: Deferred.Deferred<number | null>
}

/** Starts `vibes <args>`; it is killed when the scope closes if it still runs. */
export const start = (args: ReadonlyArray<string>, env: NodeJS.ProcessEnv = childEnv()) =>
  Effect.gen(function* () {
    const exited = yield* Deferred.make<number | null>()
    const child = yield* Effect.acquireRelease(
      Effect.sync(() =>
        childProcess.spawn(process.execPath, [entry, ...args], {
          cwd: root,
          env,
          stdio: ["ignore", "pipe", "pipe"]
        })
      ),
      (child) =>
        Effect.sync(() => child.exitCode === null && child.signalCode === null && child.kill("SIGKILL"))
    )
    const stdout: Array<string> = []
    let stderr = ""
    const waiters = new Set<() => void>()
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString("utf8")))
    readline.createInterface({ input: child.stdout }).on("line", (line) => {
      stdout.push(line)
      for (const waiter of [...waiters]) waiter()
    })
    child.once("close", (code) => Deferred.unsafeDone(exited, Effect.succeed(code)))
    const untilLine = (predicate: (line: string) => boolean) =>
      Effect.async<string>((resume) => {
        const check = () => {
          const found = stdout.find(predicate)
          if (found !== undefined) {
            waiters.delete(check)
            resume(Effect.succeed(found))
          }
        }
        waiters.add(check)
        check()
        return Effect.sync(() => waiters.delete(check))
      })
    return { child, stdout, stderr: () => stderr, untilLine, exited } satisfies Running
  })
