/**
 * How a job attempt runs: `stream` (a local process, stdout and stderr apart), `terminal` (a
 * PTY of the machine's PTY host; one stream, colours kept) and `ssh` (a remote command).
 *
 * Each strategy starts the command in the attempt's scope, hands every output chunk to `onOutput`
 * in order, and reports the exit. `signal` reaches the whole process tree: the local process group
 * (the program is started in its own), the PTY's groups, or the remote shell's group.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { Effect, Exit, Fiber, Option, Redacted, Schema, type Scope, Stream } from "effect"
import * as Command from "@effect/platform/Command"
import type { CommandExecutor } from "@effect/platform/CommandExecutor"
import { type JobSpec, secretNamePattern, type SshCredential } from "../../rpc/Jobs.js"
import { toStorable } from "../../rpc/Text.js"
import { PtyHost, PtySpec } from "../../infra/pty/PtyHost.js"
import * as Ssh from "../../infra/ssh/Ssh.js"

/** How an attempt's command ended. */
export interface ExitStatus {
  readonly code: number | null
  readonly signal: string | null
}

/** The attempt could not run (or lost its command); the message says why. */
export class AttemptFailed extends Schema.TaggedError<AttemptFailed>()("AttemptFailed", {
  message: Schema.String
}) {}

/** Signals a job's process tree may get. */
export type JobSignal = "SIGTERM" | "SIGKILL"

/** A running attempt. */
export interface Running {
  /** The local process group (`stream`). */
  readonly pid: number | null
  /** The PTY (`terminal`). */
  readonly ptyId: string | null
  /** Resolves when the command ended and all its output was handed over. */
  readonly exit: Effect.Effect<ExitStatus, AttemptFailed>
  /** Signals the whole process tree. */
  readonly signal: (signal: JobSignal) => Effect.Effect<void>
  /** Whether any process of the tree still runs. */
  readonly alive: Effect.Effect<boolean>
}

/** Where an attempt's bytes go. */
export type OnOutput = (stream: "stdout" | "stderr", bytes: Uint8Array) => Effect.Effect<void>

/** What every strategy gets. */
export interface Context {
  readonly jobId: string
  readonly attempt: number
  readonly spec: JobSpec
  /** The full environment of a local command. */
  readonly env: Readonly<Record<string, string>>
  readonly home: string
  /** The argv prefix a local program starts through (the sandbox's), empty for none. */
  readonly wrapper?: ReadonlyArray<string>
  readonly onOutput: OnOutput
}

/** Server settings the SSH strategy needs. */
export interface SshSettings {
  readonly dataDir: string
  readonly knownHosts: string
  readonly keepalive: number
}

/** How long output may still arrive after the program exited (from children holding its pipes). */
const drainAfterExit = "1 second"

const groupAlive = (pgid: number): boolean => {
  try {
    process.kill(-pgid, 0)
    return true
  } catch {
    return false
  }
}

const signalGroup = (pgid: number, signal: JobSignal) =>
  Effect.sync(() => {
    try {
      process.kill(-pgid, signal)
    } catch {
      // Nothing of the group is left.
    }
  })

/** Why a spawn that threw failed, in words a person can act on. */
export const spawnFailure = (defect: unknown): string => {
  const code =
    typeof defect === "object" && defect !== null && "code" in defect && typeof defect.code === "string"
      ? defect.code
      : undefined
  const message = defect instanceof Error ? defect.message : String(defect)
  switch (code) {
    case "E2BIG":
      return "its arguments and environment are larger than the kernel accepts (E2BIG); pass large data in a file or on stdin"
    case "ERR_INVALID_ARG_VALUE":
    case "ERR_INVALID_ARG_TYPE":
      return `an argument or environment entry is not valid (${message})`
    default:
      return code === undefined ? message : `${message} (${code})`
  }
}

const exitSignal = (message: string): string | null => /signal: (SIG[A-Z0-9]+)/.exec(message)?.[1] ?? null

/** Whether `file` names an executable, looked up in `PATH` of `env` when it has no slash. */
const findable = (file: string, cwd: string, env: Readonly<Record<string, string>>): boolean => {
  const executable = (candidate: string) => {
    try {
      fs.accessSync(candidate, fs.constants.X_OK)
      return fs.statSync(candidate).isFile()
    } catch {
      return false
    }
  }
  if (file.includes("/")) return executable(path.resolve(cwd, file))
  return (env["PATH"] ?? "/bin:/usr/bin")
    .split(":")
    .some((dir) => executable(path.resolve(cwd, dir === "" ? "." : dir, file)))
}

/** A local process with stdout and stderr apart, through `@effect/platform`'s Command. */
export const stream = (ctx: Context): Effect.Effect<Running, AttemptFailed, CommandExecutor | Scope.Scope> =>
  Effect.gen(function* () {
    const { spec } = ctx
    // Through a wrapper, a missing program would be the wrapper's exit code: say so as node would.
    if (
      (ctx.wrapper ?? []).length > 0 &&
      !spec.shell &&
      !findable(spec.command, spec.cwd ?? ctx.home, ctx.env)
    ) {
      return yield* new AttemptFailed({
        message: `could not start ${spec.command}: no such file or directory (command or working directory ${spec.cwd ?? ctx.home})`
      })
    }
    const [file, ...args] = [
      ...(ctx.wrapper ?? []),
      ...(spec.shell ? ["/bin/sh", "-c", spec.command, "sh", ...spec.args] : [spec.command, ...spec.args])
    ]
    const command = Command.make(file ?? spec.command, ...args).pipe(
      Command.workingDirectory(spec.cwd ?? ctx.home),
      Command.env(ctx.env, { extendEnv: false }),
      Command.stdin(Stream.empty)
    )
    const proc = yield* Command.start(command).pipe(
      Effect.mapError(
        (error) =>
          new AttemptFailed({
            message:
              error._tag === "SystemError" && error.reason === "NotFound"
                ? `could not start ${spec.command}: ${error.description ?? "no such file or directory"} (command or working directory ${spec.cwd ?? ctx.home})`
                : `could not start ${spec.command}: ${error.message}`
          })
      ),
      // node throws from spawn (E2BIG, a NUL in an argument): a failed attempt, not a crash.
      Effect.catchAllDefect((defect) =>
        Effect.fail(
          new AttemptFailed({ message: `could not start ${spec.command}: ${spawnFailure(defect)}` })
        )
      )
    )
    const pid = proc.pid
    const pump = (name: "stdout" | "stderr", source: Stream.Stream<Uint8Array, unknown>) =>
      source.pipe(
        Stream.runForEach((bytes) => ctx.onOutput(name, bytes)),
        Effect.ignore
      )
    const readers = yield* Effect.forkScoped(
      Effect.all([pump("stdout", proc.stdout), pump("stderr", proc.stderr)], {
        concurrency: 2,
        discard: true
      })
    )
    const exit = Effect.gen(function* () {
      const code = yield* Effect.either(proc.exitCode)
      const status: ExitStatus =
        code._tag === "Right"
          ? { code: code.right, signal: null }
          : { code: null, signal: exitSignal(code.left.message) ?? "SIGKILL" }
      // Children that still hold the pipes get a moment, then the group goes.
      const drained = yield* Fiber.join(readers).pipe(Effect.timeoutOption(drainAfterExit))
      if (Option.isNone(drained)) {
        yield* signalGroup(pid, "SIGKILL")
        yield* Fiber.join(readers).pipe(Effect.timeoutOption(drainAfterExit))
      }
      return status
    })
    return {
      pid,
      ptyId: null,
      exit,
      signal: (signal) => signalGroup(pid, signal),
      alive: Effect.sync(() => groupAlive(pid))
    }
  })

/** A PTY of the machine's PTY host: one output stream with the program's colours. */
export const terminal = (ctx: Context): Effect.Effect<Running, AttemptFailed, PtyHost | Scope.Scope> =>
  Effect.gen(function* () {
    const host = yield* PtyHost
    const { spec } = ctx
    const id = `job-${ctx.jobId}-${ctx.attempt}`
    const [file, ...args] = spec.shell
      ? ["/bin/sh", "-c", spec.command, "sh", ...spec.args]
      : [spec.command, ...spec.args]
    const info = yield* Effect.acquireRelease(
      host.spawn(
        PtySpec.make({
          id,
          file: file ?? spec.command,
          args,
          cwd: spec.cwd ?? ctx.home,
          env: { ...ctx.env, TERM: "xterm-256color", COLORTERM: "truecolor" },
          cols: spec.cols,
          rows: spec.rows,
          wrapper: ctx.wrapper ?? []
        })
      ),
      () => Effect.ignore(host.release(id))
    ).pipe(Effect.mapError((error) => new AttemptFailed({ message: error.message })))
    const exit = host.output(id, 0).pipe(
      Stream.runFoldEffect(
        { code: null, signal: null } as ExitStatus,
        (status, element): Effect.Effect<ExitStatus> => {
          switch (element._tag) {
            case "Data":
              return Effect.as(ctx.onOutput("stdout", element.data), status)
            case "Gap":
              return Effect.succeed(status)
            case "Exited":
              return Effect.succeed({ code: element.exit.exitCode, signal: element.exit.signal })
          }
        }
      ),
      Effect.mapError((error) => new AttemptFailed({ message: `lost the terminal: ${error.message}` }))
    )
    return {
      pid: info.pid,
      ptyId: id,
      exit,
      signal: (signal) => Effect.ignore(host.signal(id, signal)),
      alive: host.get(id).pipe(
        Effect.map((pty) => pty.exit === null || groupAlive(pty.pid)),
        Effect.orElseSucceed(() => false)
      )
    }
  })

/** Reads a named secret: `<data dir>/secrets/<name>` (mode 0600), else `VIBES_SECRET_<NAME>`. */
export const readSecret = (
  dataDir: string,
  name: string
): Effect.Effect<Redacted.Redacted<string>, AttemptFailed> =>
  Effect.suspend(() => {
    // A name is a file name in the secrets directory, never a path out of it.
    if (!secretNamePattern.test(name)) {
      return Effect.fail(
        new AttemptFailed({
          message: `'${toStorable(name).slice(0, 100)}' is not a secret name: use 1 to 100 letters, digits, '_', '.' or '-', not starting with '.'`
        })
      )
    }
    const file = `${dataDir}/secrets/${name}`
    const variable = `VIBES_SECRET_${name.toUpperCase().replace(/[^A-Z0-9]/g, "_")}`
    if (fs.existsSync(file)) {
      const mode = fs.statSync(file).mode & 0o077
      if (mode !== 0) {
        return Effect.fail(
          new AttemptFailed({
            message: `the secret file ${file} is readable by others; run chmod 600 ${file}`
          })
        )
      }
      return Effect.try({
        try: () => Redacted.make(fs.readFileSync(file, "utf8").replace(/\r?\n$/, "")),
        catch: () => new AttemptFailed({ message: `the secret file ${file} could not be read` })
      })
    }
    const value = process.env[variable]
    return value === undefined || value === ""
      ? Effect.fail(
          new AttemptFailed({
            message: `no secret named ${name}: create ${file} (mode 0600) or set ${variable}`
          })
        )
      : Effect.succeed(Redacted.make(value))
  })

/** The SSH authentication a credential reference stands for. */
export const sshAuth = (
  settings: SshSettings,
  credential: SshCredential
): Effect.Effect<Ssh.SshAuth, AttemptFailed> => {
  switch (credential._tag) {
    case "key-file":
      return Effect.map(
        credential.passphraseSecret === undefined
          ? Effect.succeedNone
          : Effect.asSome(readSecret(settings.dataDir, credential.passphraseSecret)),
        (passphrase): Ssh.SshAuth => ({ _tag: "KeyFile", path: credential.path, passphrase })
      )
    case "agent": {
      const socket = credential.socket ?? process.env["SSH_AUTH_SOCK"]
      return socket === undefined || socket === ""
        ? Effect.fail(new AttemptFailed({ message: "no ssh-agent: SSH_AUTH_SOCK is not set on the server" }))
        : Effect.succeed({ _tag: "Agent", socket })
    }
    case "password":
      return Effect.map(readSecret(settings.dataDir, credential.secret), (password): Ssh.SshAuth => ({
        _tag: "Password",
        password
      }))
  }
}

/** The remote command line of a spec: the shell line itself, or the quoted argv. */
export const remoteCommand = (spec: JobSpec): string =>
  spec.shell && spec.args.length === 0
    ? spec.command
    : spec.shell
      ? `sh -c ${Ssh.shellQuote(spec.command)} sh ${spec.args.map(Ssh.shellQuote).join(" ")}`
      : [spec.command, ...spec.args].map(Ssh.shellQuote).join(" ")

/** A remote command over SSH. */
export const ssh = (
  ctx: Context,
  settings: SshSettings
): Effect.Effect<Running, AttemptFailed, Scope.Scope> =>
  Effect.gen(function* () {
    const { spec } = ctx
    const target = spec.ssh
    if (target === undefined) return yield* new AttemptFailed({ message: "an ssh job needs a target" })
    const auth = yield* sshAuth(settings, target.credential)
    const remote = yield* Ssh.exec(
      {
        host: target.host,
        port: target.port,
        user: target.user,
        auth,
        knownHostsPath: target.knownHosts ?? settings.knownHosts,
        trustHostKey: Option.fromNullable(target.trustHostKey),
        keepaliveInterval: settings.keepalive,
        keepaliveCountMax: 3,
        readyTimeout: "20 seconds"
      },
      remoteCommand(spec),
      { env: spec.env, cwd: Option.fromNullable(spec.cwd) }
    ).pipe(Effect.mapError((error) => new AttemptFailed({ message: error.message })))
    const pump = (name: "stdout" | "stderr", source: Stream.Stream<Uint8Array, Ssh.SshError>) =>
      Stream.runForEach(source, (bytes) => ctx.onOutput(name, bytes))
    const readers = yield* Effect.forkScoped(
      Effect.all([pump("stdout", remote.stdout), pump("stderr", remote.stderr)], {
        concurrency: 2,
        discard: true
      }).pipe(Effect.exit)
    )
    let ended = false
    const exit = Effect.gen(function* () {
      const status = yield* remote.exit.pipe(
        Effect.mapError((error) => new AttemptFailed({ message: error.message }))
      )
      ended = true
      const read = yield* Fiber.join(readers).pipe(Effect.timeoutOption(drainAfterExit))
      if (Option.isSome(read) && Exit.isFailure(read.value)) {
        yield* Effect.logWarning("output of an ssh job ended with an error")
      }
      return { code: status.code, signal: status.signal }
    })
    return {
      pid: null,
      ptyId: null,
      exit,
      signal: (signal) => remote.signal(signal),
      alive: Effect.sync(() => !ended)
    }
  })
