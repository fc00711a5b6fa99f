/**
 * The system's `git`, run as a child process: vibes never parses git's objects itself. Every call
 * gets a small, fixed environment (no `GIT_*` of the server's, no prompts, C locale, no optional
 * locks so reads never take the index lock an agent's commit needs) and trusts the repository it
 * was pointed at (`safe.directory`): the caller registered it.
 */
import * as childProcess from "node:child_process"
import { Context, Effect, Layer, Schema } from "effect"

/** git ran and failed (or could not be started): its exit code and what it wrote on stderr. */
export class GitFailed extends Schema.TaggedError<GitFailed>()("GitFailed", {
  args: Schema.Array(Schema.String),
  exitCode: Schema.NullOr(Schema.Int),
  stderr: Schema.String,
  message: Schema.String
}) {}

/** What a successful git call wrote. */
export interface GitOutput {
  readonly stdout: Buffer
  readonly stderr: string
}

/** Options of one call. */
export interface RunOptions {
  /** Refuse (and kill git) past this much stdout; default 64 MiB. */
  readonly maxBuffer?: number
  /** Bytes written to git's stdin. */
  readonly input?: string
  /** Exit codes that are answers, not failures (`git diff --no-index` exits 1 on a difference). */
  readonly okExitCodes?: ReadonlyArray<number>
}

/** Who git runs as: the server's user, or the account programs run as (when vibes is root). */
export interface GitSettings {
  readonly uid?: number
  readonly gid?: number
  readonly home?: string
}

/** Runs git. */
export class Git extends Context.Tag("vibes/Git")<
  Git,
  {
    /** `git -C cwd args…`; fails with `GitFailed` on a non-zero exit. */
    readonly run: (
      cwd: string,
      args: ReadonlyArray<string>,
      options?: RunOptions
    ) => Effect.Effect<GitOutput, GitFailed>
    /** `run`, its stdout as text with the trailing newline removed. */
    readonly text: (
      cwd: string,
      args: ReadonlyArray<string>,
      options?: RunOptions
    ) => Effect.Effect<string, GitFailed>
  }
>() {}

const firstLine = (text: string) => text.trim().split("\n")[0] ?? ""

/** Git as `settings` says. */
export const make = (settings: GitSettings = {}): Git["Type"] => {
  const env: Record<string, string> = {
    PATH: process.env["PATH"] ?? "/usr/local/bin:/usr/bin:/bin",
    HOME: settings.home ?? process.env["HOME"] ?? "/",
    LANG: "C",
    LC_ALL: "C",
    GIT_TERMINAL_PROMPT: "0",
    GIT_OPTIONAL_LOCKS: "0",
    GIT_CONFIG_NOSYSTEM: "1"
  }
  const run = (cwd: string, args: ReadonlyArray<string>, options: RunOptions = {}) =>
    Effect.async<GitOutput, GitFailed>((resume, signal) => {
      const child = childProcess.execFile(
        "git",
        ["-c", "safe.directory=*", "-c", "core.quotePath=false", "-C", cwd, ...args],
        {
          env,
          signal,
          encoding: "buffer",
          maxBuffer: options.maxBuffer ?? 64 * 1024 * 1024,
          ...(settings.uid !== undefined ? { uid: settings.uid } : {}),
          ...(settings.gid !== undefined ? { gid: settings.gid } : {})
        },
        (error, stdout, stderr) => {
          const err = stderr.toString("utf8")
          if (error === null) return resume(Effect.succeed({ stdout, stderr: err }))
          const code = typeof error.code === "number" ? error.code : null
          if (code !== null && options.okExitCodes?.includes(code) === true)
            return resume(Effect.succeed({ stdout, stderr: err }))
          const why =
            error.code === "ERR_CHILD_PROCESS_STDIO_MAXBUFFER"
              ? `its output is larger than ${options.maxBuffer ?? 64 * 1024 * 1024} bytes`
              : firstLine(err) !== ""
                ? firstLine(err)
                : error.message
          resume(
            Effect.fail(
              new GitFailed({
                args: [...args],
                exitCode: code,
                stderr: err.slice(0, 4096),
                message: `git ${args[0] ?? ""} failed: ${why}`
              })
            )
          )
        }
      )
      if (options.input !== undefined) child.stdin?.end(options.input)
      else child.stdin?.end()
    })
  return {
    run,
    text: (cwd, args, options) =>
      Effect.map(run(cwd, args, options), (output) => output.stdout.toString("utf8").replace(/\n$/, ""))
  }
}

/** Git as the server's user. */
export const layer = (settings: GitSettings = {}): Layer.Layer<Git> => Layer.succeed(Git, make(settings))

/**
 * Whether git accepts `name` as a branch name (`git check-ref-format --branch`): no `..`, no
 * spaces or control characters, no `~^:?*[\`, not starting with `-`, not ending with `.lock`, ….
 */
export const isValidBranch = (git: Git["Type"], name: string): Effect.Effect<boolean> =>
  name === "" || name.startsWith("-") || name.includes("\u0000") || name.length > 250
    ? Effect.succeed(false)
    : git.run("/", ["check-ref-format", "--branch", name]).pipe(
        Effect.as(true),
        Effect.orElseSucceed(() => false)
      )
