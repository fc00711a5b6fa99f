/**
 * Job commands of the CLI: `run`, `jobs`, `logs`, `cancel`.
 *
 * `vibes run` submits a job and, unless detached, streams its output as it arrives (stdout to
 * stdout, stderr to stderr, vibes' own lines to stderr with a `[vibes] ` prefix) and exits with the
 * job's exit code. Ctrl-C cancels the job and keeps streaming until it has stopped.
 */
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import {
  Cause,
  Context,
  DateTime,
  Deferred,
  Effect,
  Exit,
  Fiber,
  Layer,
  Option,
  Schema,
  Stream
} from "effect"
import * as Args from "@effect/cli/Args"
import * as Command from "@effect/cli/Command"
import * as Options from "@effect/cli/Options"
import * as ParseResult from "effect/ParseResult"
import * as Client from "../../rpc/Client.js"
import {
  ArtifactsWhen,
  commandLine,
  type JobDone,
  JobId,
  JobInfo,
  JobOutput,
  JobSpec,
  jobSpecIssue,
  JobStatus,
  maxListLimit,
  parseSshTarget
} from "../../rpc/Jobs.js"
import {
  answerWithin,
  CliFailure,
  clientLayer,
  type Connection,
  connectionOptions,
  dataDirOption,
  resolveConnection,
  toCliFailure,
  tokenOption,
  urlOption
} from "./Connection.js"
import { json, printable, printableLines } from "./Display.js"

/** The exit code of `vibes run` and `vibes logs -f` when the job was canceled (as after Ctrl-C). */
export const canceledExitCode = 130

/** What the job's end means as an exit code: its own code, 128 + a killing signal, 130 when canceled. */
export const exitCodeOf = (done: Pick<JobDone, "status" | "exitCode" | "signal">): number => {
  switch (done.status) {
    case "succeeded":
      return 0
    case "canceled":
      return canceledExitCode
    case "failed": {
      if (done.signal !== null) {
        const number = Object.entries(os.constants.signals).find(([name]) => name === done.signal)?.[1]
        return number === undefined ? 1 : 128 + number
      }
      return done.exitCode !== null && done.exitCode !== 0 ? done.exitCode : 1
    }
    default:
      return 1
  }
}

// Errors --------------------------------------------------------------------------------------

/** Job errors as CLI failures: a refused request is bad usage (2), an unknown job a refusal (1). */
export const jobFailure =
  (connection: Connection) =>
  (error: unknown): CliFailure => {
    if (typeof error === "object" && error !== null && "_tag" in error && "message" in error) {
      const message = String(error.message)
      if (error._tag === "InvalidJobRequest" || error._tag === "InvalidArtifactRequest") {
        return new CliFailure({ message, exitCode: 2 })
      }
      if (
        error._tag === "JobNotFound" ||
        error._tag === "JobsUnavailable" ||
        error._tag === "ArtifactNotFound" ||
        error._tag === "StorageUnavailable"
      ) {
        return new CliFailure({ message, exitCode: 1 })
      }
    }
    return toCliFailure(connection)(error)
  }

/** Runs `use` with a connected client, failing with one-line CLI failures (job errors included). */
const withJobsClient = <A, E, R>(
  connection: Connection,
  timeoutSeconds: number,
  use: (client: Client.Client) => Effect.Effect<A, E, R>
) =>
  Effect.flatMap(Client.VibesClient, use).pipe(
    Effect.provide(clientLayer(connection)),
    answerWithin(connection, timeoutSeconds),
    Effect.mapError(jobFailure(connection))
  )

export const usage = (message: string) => new CliFailure({ message, exitCode: 2 })

export const jobIdArg = Args.text({ name: "job-id" }).pipe(
  Args.withDescription("The job's id (printed by `vibes run`, listed by `vibes jobs`)")
)

/** A job id from the command line, or a usage failure. */
export const checkJobId = (text: string) =>
  Schema.decodeUnknown(JobId)(text).pipe(
    Effect.mapError((error) =>
      usage(`'${text}' is not a job id: ${ParseResult.TreeFormatter.formatErrorSync(error)}`)
    )
  )

// Output --------------------------------------------------------------------------------------

let pipeWatched = false

/**
 * A reader that went away (`vibes run … | head`) is treated like Ctrl-C: the command stops (and
 * `run` cancels its job) instead of crashing on EPIPE while the job runs on.
 */
const watchPipes = () => {
  if (pipeWatched) return
  pipeWatched = true
  for (const stream of [process.stdout, process.stderr]) {
    stream.on("error", (error: NodeJS.ErrnoException) => {
      if (error.code === "EPIPE") process.kill(process.pid, "SIGINT")
    })
  }
}

/** Writes `text`, waiting until it is handed to the OS; a reader gone away acts like Ctrl-C. */
export const write = (target: NodeJS.WriteStream, text: string) =>
  Effect.async<void>((resume) => {
    watchPipes()
    target.write(text, () => resume(Effect.void))
  })

/** Prints a job's output as it arrives: raw stdout and stderr, vibes' lines and progress prefixed. */
const makePrinter = () => {
  let progress: number | null = null
  return (item: JobOutput): Effect.Effect<void> => {
    switch (item._tag) {
      case "JobLog":
        return item.stream === "stdout"
          ? write(process.stdout, item.chunk)
          : item.stream === "stderr"
            ? write(process.stderr, item.chunk)
            : // vibes' own lines quote commands and remote messages: shown, not obeyed.
              write(process.stderr, printableLines(item.chunk).replace(/^(?=.)/gm, "[vibes] "))
      case "JobProgress":
        if (item.percent === progress) return Effect.void
        progress = item.percent
        return write(process.stderr, `[vibes] progress ${item.percent}%\n`)
      case "JobDone":
        return Effect.void
    }
  }
}

const encodeOutput = Schema.encodeSync(JobOutput)

/** Runs `output` to its end, printing every item; the `JobDone` it ended with, if any. */
const printAll = <E, R>(output: Stream.Stream<JobOutput, E, R>, asJson: boolean) => {
  const print = asJson
    ? (item: JobOutput) => write(process.stdout, `${json(encodeOutput(item))}\n`)
    : makePrinter()
  return output.pipe(
    Stream.runFoldEffect(Option.none<JobDone>(), (done, item) =>
      Effect.as(print(item), item._tag === "JobDone" ? Option.some(item) : done)
    )
  )
}

// Parsing the flags of `run` ------------------------------------------------------------------

const durationUnits: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }

/** Milliseconds of `90s`, `10m`, `1h30m`, `500ms`, `2d` or bare seconds (`30`); `undefined` otherwise. */
export const parseDuration = (text: string): number | undefined => {
  if (/^\d+$/.test(text)) return Number(text) * 1000
  if (!/^(\d+(\.\d+)?(ms|s|m|h|d))+$/.test(text)) return undefined
  let total = 0
  for (const [, amount, , unit] of text.matchAll(/(\d+(\.\d+)?)(ms|s|m|h|d)/g)) {
    total += Number(amount) * (durationUnits[unit ?? ""] ?? Number.NaN)
  }
  return Number.isFinite(total) ? Math.round(total) : undefined
}

/** `--at`: an ISO time (`2030-01-01T09:00:00Z`) or a time from now (`+30s`, `+5m`). */
const parseAt = (text: string, now: number): Option.Option<DateTime.Utc> => {
  if (text.startsWith("+")) {
    const millis = parseDuration(text.slice(1))
    return millis === undefined ? Option.none() : Option.some(DateTime.unsafeMake(now + millis))
  }
  return /^\d{4}-\d{2}-\d{2}/.test(text) ? DateTime.make(text) : Option.none()
}

/** `K=V` pairs of repeated flags, as a record. */
const parsePairs = (flag: string, pairs: ReadonlyArray<string>) =>
  Effect.gen(function* () {
    const record: Record<string, string> = {}
    for (const pair of pairs) {
      const at = pair.indexOf("=")
      if (at <= 0) return yield* usage(`--${flag} takes NAME=VALUE, got '${pair}'`)
      record[pair.slice(0, at)] = pair.slice(at + 1)
    }
    return record
  })

/** Whether a lone argument is a shell line rather than a program: `make && ./run > out`. */
const shellSyntax = /[\s|&;<>()$`"'\\*?]/

/** The default SSH key: `~/.ssh/id_ed25519` or `~/.ssh/id_rsa`, whichever exists. */
const defaultIdentity = (): string | undefined =>
  ["id_ed25519", "id_rsa"]
    .map((name) => path.join(os.homedir(), ".ssh", name))
    .find((file) => fs.existsSync(file))

const runOptions = {
  ssh: Options.text("ssh").pipe(
    Options.withDescription("Run on this machine over SSH: user@host[:port] (IPv6 hosts in brackets)"),
    Options.optional
  ),
  identity: Options.text("identity").pipe(
    Options.withDescription("With --ssh: private key file. Default: ~/.ssh/id_ed25519 or ~/.ssh/id_rsa"),
    Options.optional
  ),
  passwordSecret: Options.text("password-secret").pipe(
    Options.withDescription(
      "With --ssh: log in with the password the server keeps as secret NAME (<data dir>/secrets/NAME or $VIBES_SECRET_NAME)"
    ),
    Options.optional
  ),
  agent: Options.boolean("agent").pipe(
    Options.withDescription("With --ssh: authenticate with the server's ssh-agent")
  ),
  knownHosts: Options.text("known-hosts").pipe(
    Options.withDescription("With --ssh: the known_hosts file to check the host key against"),
    Options.optional
  ),
  trustHostKey: Options.text("trust-host-key").pipe(
    Options.withDescription(
      "With --ssh: accept exactly this host key (SHA256:…, as ssh-keygen -lf prints it)"
    ),
    Options.optional
  ),
  pty: Options.boolean("pty").pipe(
    Options.withDescription("Run in a pseudo-terminal (stdout and stderr arrive merged, as on a terminal)")
  ),
  priority: Options.integer("priority").pipe(
    Options.withDescription("-1000 to 1000; higher runs first when worker slots are scarce. Default: 0"),
    Options.optional
  ),
  at: Options.text("at").pipe(
    Options.withDescription(
      "Do not start before this time: ISO (2030-01-01T09:00:00Z) or from now (+30s, +5m)"
    ),
    Options.optional
  ),
  timeout: Options.text("timeout").pipe(
    Options.withDescription(
      "The job's time limit: each attempt is stopped after this long (90s, 10m, 1h30m) and counts as timed out"
    ),
    Options.optional
  ),
  retries: Options.integer("retries").pipe(
    Options.withDescription("Run again up to N times after a failure, with exponential backoff. Default: 0"),
    Options.optional
  ),
  cwd: Options.text("cwd").pipe(
    Options.withDescription(
      "Working directory. Default: the current directory (locally), the login directory (over --ssh)"
    ),
    Options.optional
  ),
  workspace: Options.text("workspace").pipe(
    Options.withDescription("Run in a worktree of this workspace (with --branch), instead of a directory"),
    Options.optional
  ),
  branch: Options.text("branch").pipe(
    Options.withDescription("With --workspace: the branch of the job's worktree, new or existing"),
    Options.optional
  ),
  from: Options.text("from").pipe(
    Options.withDescription(
      "With --workspace: where a new branch starts. Default: the workspace's default branch"
    ),
    Options.optional
  ),
  env: Options.text("env").pipe(
    Options.withDescription("Set an environment variable for the job: NAME=VALUE (repeatable)"),
    Options.repeated
  ),
  label: Options.text("label").pipe(
    Options.withDescription("Attach a label to the job: KEY=VALUE (repeatable)"),
    Options.repeated
  ),
  artifact: Options.text("artifact").pipe(
    Options.withDescription(
      "Keep the files matching this glob (relative to the job's directory, e.g. 'dist/**') once the job ends; list them with `vibes artifacts JOB` (repeatable)"
    ),
    Options.repeated
  ),
  artifactsWhen: Options.choice("artifacts-when", ArtifactsWhen.literals).pipe(
    Options.withDescription("When to keep the --artifact files: always (the default), success or failure"),
    Options.withDefault("always" as const)
  ),
  detach: Options.boolean("detach").pipe(
    Options.withAlias("d"),
    Options.withDescription(
      "Submit and print the job's id without waiting; follow later with `vibes logs -f ID`"
    )
  ),
  command: Args.text({ name: "command" }).pipe(
    Args.withDescription(
      "The program and its arguments, after `--`. One argument with shell syntax (spaces, |, &&, ;, >) runs as a shell line"
    ),
    Args.repeated
  )
}

type RunFlags = Command.Command.ParseConfig<typeof runOptions>

/** The job `vibes run` asks for, checked here so that bad flags are reported by name. */
const specOf = (flags: RunFlags) =>
  Effect.gen(function* () {
    const [program, ...args] = flags.command
    if (program === undefined) {
      return yield* usage("nothing to run: give a command after `--`, e.g. vibes run -- make test")
    }
    const credentials = [Option.isSome(flags.identity), flags.agent, Option.isSome(flags.passwordSecret)]
    if (credentials.filter(Boolean).length > 1) {
      return yield* usage("give at most one of --identity, --agent and --password-secret")
    }
    const sshOnly =
      credentials.some(Boolean) || Option.isSome(flags.knownHosts) || Option.isSome(flags.trustHostKey)
    if (Option.isNone(flags.ssh) && sshOnly) {
      return yield* usage(
        "--identity, --agent, --password-secret, --known-hosts and --trust-host-key only apply with --ssh"
      )
    }
    if (Option.isSome(flags.ssh) && flags.pty)
      return yield* usage("--pty runs locally; it cannot be combined with --ssh")
    if (Option.isSome(flags.priority) && Math.abs(flags.priority.value) > 1000) {
      return yield* usage("--priority must be between -1000 and 1000")
    }
    if (Option.isSome(flags.retries) && (flags.retries.value < 0 || flags.retries.value > 99)) {
      return yield* usage("--retries must be between 0 and 99")
    }
    let timeoutMs: number | undefined
    if (Option.isSome(flags.timeout)) {
      timeoutMs = parseDuration(flags.timeout.value)
      if (timeoutMs === undefined || timeoutMs < 1 || timeoutMs > 7 * 86_400_000) {
        return yield* usage(
          `--timeout takes a duration up to 7d like 90s, 10m or 1h30m, got '${flags.timeout.value}'`
        )
      }
    }
    let runAt: DateTime.Utc | undefined
    if (Option.isSome(flags.at)) {
      const at = parseAt(flags.at.value, Date.now())
      if (Option.isNone(at)) {
        return yield* usage(
          `--at takes an ISO time (2030-01-01T09:00:00Z) or +DURATION (+30s, +5m), got '${flags.at.value}'`
        )
      }
      runAt = at.value
    }
    const env = yield* parsePairs("env", flags.env)
    const labels = yield* parsePairs("label", flags.label)

    let ssh: typeof JobSpec.Encoded.ssh
    if (Option.isSome(flags.ssh)) {
      const target = parseSshTarget(flags.ssh.value)
      if (target === undefined) {
        return yield* usage(
          `--ssh takes user@host[:port] (e.g. deploy@build.example.com:2222), got '${flags.ssh.value}'`
        )
      }
      let credential: NonNullable<typeof JobSpec.Encoded.ssh>["credential"]
      if (flags.agent) credential = { _tag: "agent" }
      else if (Option.isSome(flags.passwordSecret))
        credential = { _tag: "password", secret: flags.passwordSecret.value }
      else {
        const identity = Option.getOrUndefined(flags.identity) ?? defaultIdentity()
        if (identity === undefined) {
          return yield* usage(
            "no SSH key at ~/.ssh/id_ed25519 or ~/.ssh/id_rsa: pass --identity FILE, --agent or --password-secret NAME"
          )
        }
        credential = { _tag: "key-file", path: path.resolve(identity) }
      }
      ssh = {
        ...target,
        credential,
        ...(Option.isSome(flags.knownHosts) ? { knownHosts: path.resolve(flags.knownHosts.value) } : {}),
        ...(Option.isSome(flags.trustHostKey) ? { trustHostKey: flags.trustHostKey.value } : {})
      }
    }

    const shell = args.length === 0 && shellSyntax.test(program)
    const cwd = Option.match(flags.cwd, {
      onNone: () => (ssh === undefined && Option.isNone(flags.workspace) ? process.cwd() : undefined),
      onSome: (dir) => (ssh === undefined ? path.resolve(dir) : dir)
    })
    const encoded: typeof JobSpec.Encoded = {
      command: program,
      args,
      shell,
      strategy: ssh !== undefined ? "ssh" : flags.pty ? "terminal" : "stream",
      env,
      labels,
      artifacts: flags.artifact,
      artifactsWhen: flags.artifactsWhen,
      ...(cwd !== undefined ? { cwd } : {}),
      ...(Option.isSome(flags.workspace) ? { workspace: flags.workspace.value } : {}),
      ...(Option.isSome(flags.branch) ? { branch: flags.branch.value } : {}),
      ...(Option.isSome(flags.from) ? { from: flags.from.value } : {}),
      ...(ssh !== undefined ? { ssh } : {}),
      ...(timeoutMs !== undefined ? { timeoutMs } : {}),
      ...(Option.isSome(flags.priority) ? { priority: flags.priority.value } : {}),
      ...(runAt !== undefined ? { runAt: DateTime.formatIso(runAt) } : {}),
      ...(Option.isSome(flags.retries) ? { retry: { maxAttempts: flags.retries.value + 1 } } : {}),
      ...(flags.pty && process.stdout.isTTY === true
        ? { cols: Math.max(2, process.stdout.columns), rows: Math.max(2, process.stdout.rows) }
        : {})
    }
    const spec = yield* Schema.decodeUnknown(JobSpec)(encoded).pipe(
      Effect.mapError((error) => usage(`invalid job: ${ParseResult.TreeFormatter.formatErrorSync(error)}`))
    )
    // What the server would refuse is refused here, before connecting.
    const issue = jobSpecIssue(spec)
    if (Option.isSome(issue)) return yield* usage(`invalid job: ${issue.value.message}`)
    return spec
  })

// run -----------------------------------------------------------------------------------------

/**
 * Executes `spec` and prints its output until it ends; the exit code it maps to. Completing `stop`
 * cancels the job (the output goes on until it has stopped) and makes the exit code 130.
 */
const execute = (
  connection: Connection,
  connectTimeout: number,
  spec: JobSpec,
  stop: Deferred.Deferred<void>
) =>
  Effect.gen(function* () {
    const client = yield* Effect.map(Layer.build(clientLayer(connection)), Context.get(Client.VibesClient))
    const accepted = yield* Deferred.make<JobInfo>()
    yield* Effect.forkScoped(
      Effect.gen(function* () {
        yield* Deferred.await(stop)
        const job = yield* Deferred.await(accepted)
        yield* write(process.stderr, `[vibes] canceling job ${job.id} (Ctrl-C again to stop waiting)\n`)
        yield* client.Jobs.Cancel({ jobId: job.id }).pipe(
          Effect.catchAll((error) =>
            write(
              process.stderr,
              `[vibes] could not cancel job ${job.id}: ${jobFailure(connection)(error).message}\n`
            )
          )
        )
      })
    )
    const print = makePrinter()
    let acceptedId: string | undefined
    const output = client.Jobs.Execute(spec).pipe(
      Stream.runFoldEffect(Option.none<JobDone>(), (done, item) => {
        switch (item._tag) {
          case "JobAccepted":
            acceptedId = item.job.id
            return Effect.as(
              Effect.zipRight(
                Deferred.succeed(accepted, item.job),
                write(process.stderr, `job ${printable(item.job.id)} ${item.job.status}\n`)
              ),
              done
            )
          case "JobDone":
            return Effect.succeed(Option.some(item))
          default:
            return Effect.as(print(item), done)
        }
      })
    )
    const unanswered = Effect.zipRight(
      Deferred.await(accepted).pipe(answerWithin(connection, connectTimeout)),
      Effect.never
    )
    const done = yield* Effect.raceFirst(output, unanswered).pipe(
      Effect.mapError((error) => {
        const failure = jobFailure(connection)(error)
        return acceptedId !== undefined && failure.exitCode === 1
          ? new CliFailure({
              message: `${failure.message}; job ${acceptedId} may go on: follow it with vibes logs -f ${acceptedId}`,
              exitCode: 1
            })
          : failure
      })
    )
    if (yield* Deferred.isDone(stop)) return canceledExitCode
    return yield* Option.match(done, {
      onNone: () =>
        Effect.fail(
          new CliFailure({
            message: `the server ended the output of job ${acceptedId ?? "(not accepted)"} before the job finished`,
            exitCode: 1
          })
        ),
      onSome: (end) => Effect.succeed(exitCodeOf(end))
    })
  }).pipe(Effect.scoped)

/** Sets the exit code of the process, and reports a failure the way `main` does. */
const exitWith = (exit: Exit.Exit<number, CliFailure>) =>
  Effect.sync(() => {
    if (Exit.isSuccess(exit)) {
      process.exitCode = exit.value
      return
    }
    const failure = Cause.failureOption(exit.cause)
    if (Option.isSome(failure)) {
      console.error(`vibes: ${printable(failure.value.message)}`)
      process.exitCode = failure.value.exitCode
    } else if (!Cause.isInterruptedOnly(exit.cause)) {
      console.error(`vibes: ${printableLines(Cause.pretty(exit.cause))}`)
      process.exitCode = 1
    }
  })

const run = Command.make(
  "run",
  {
    url: urlOption,
    token: tokenOption,
    dataDir: dataDirOption,
    connectTimeout: Options.integer("connect-timeout").pipe(
      Options.withDescription("Seconds to wait for the server to accept the job"),
      Options.withDefault(10)
    ),
    ...runOptions
  },
  (flags) =>
    Effect.gen(function* () {
      const spec = yield* specOf(flags)
      const connection = yield* resolveConnection(flags)
      if (flags.detach) {
        const job = yield* withJobsClient(connection, flags.connectTimeout, (client) =>
          client.Jobs.Submit(spec)
        )
        yield* write(process.stdout, `${printable(job.id)}\n`)
        return
      }
      // The job is followed in a fiber of its own, so that Ctrl-C (which interrupts this one)
      // can cancel the job and still wait for its last output.
      const stop = yield* Deferred.make<void>()
      const follower = yield* Effect.forkDaemon(execute(connection, flags.connectTimeout, spec, stop))
      const exit = yield* Fiber.await(follower).pipe(
        Effect.onInterrupt(() =>
          Effect.gen(function* () {
            yield* Deferred.succeed(stop, undefined)
            yield* Effect.flatMap(Fiber.await(follower), exitWith)
          })
        )
      )
      process.exitCode = yield* exit
    })
).pipe(
  Command.withDescription(
    "Run a command as a job and stream its output: stdout to stdout, stderr to stderr, vibes' own lines to stderr as `[vibes] …`. Exits with the job's exit code (128+N if killed by signal N; 1 if it failed otherwise, timed out or ran out of retries; 130 if canceled). Ctrl-C cancels the job and waits for it to stop; --detach prints the job's id and returns at once. Examples: `vibes run -- make test`, `vibes run 'npm ci && npm test'`, `vibes run --ssh deploy@build.example.com:2222 --timeout 10m --retries 2 -- ./deploy.sh prod`."
  )
)

// jobs ----------------------------------------------------------------------------------------

/** `1.2s`, `3m 04s`, `2h 05m`, `3d 4h`. */
const formatDuration = (millis: number): string => {
  if (millis < 60_000) return `${(millis / 1000).toFixed(1)}s`
  const seconds = Math.floor(millis / 1000)
  const two = (n: number) => String(n).padStart(2, "0")
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m ${two(seconds % 60)}s`
  if (seconds < 86_400) return `${Math.floor(seconds / 3600)}h ${two(Math.floor((seconds % 3600) / 60))}m`
  return `${Math.floor(seconds / 86_400)}d ${Math.floor((seconds % 86_400) / 3600)}h`
}

const truncate = (text: string, width: number) =>
  text.length <= width ? text : `${text.slice(0, width - 1)}…`

const columns = [
  ["ID", 36],
  ["STATUS", 9],
  ["EXIT", 7],
  ["STRATEGY", 8],
  ["STARTED", 19],
  ["DURATION", 8]
] as const

/** One row of `vibes jobs`, the command cut to `commandWidth`. */
const formatRow = (job: JobInfo, now: number, commandWidth: number): string => {
  const started = job.startedAt
  const duration =
    started === null
      ? "-"
      : formatDuration(
          (job.finishedAt === null ? now : DateTime.toEpochMillis(job.finishedAt)) -
            DateTime.toEpochMillis(started)
        )
  const cells = [
    printable(job.id),
    job.status,
    printable(job.signal ?? (job.exitCode === null ? "-" : String(job.exitCode))),
    job.spec.strategy,
    started === null ? "-" : DateTime.formatIso(started).slice(0, 19),
    duration
  ]
  const command = job.spec.shell && job.spec.args.length === 0 ? job.spec.command : commandLine(job.spec)
  return [
    ...cells.map((cell, i) => cell.padEnd(columns[i]?.[1] ?? 0)),
    truncate(printable(command), commandWidth)
  ].join("  ")
}

const encodeJobs = Schema.encodeSync(Schema.Array(JobInfo))

const list = Command.make(
  "jobs",
  {
    ...connectionOptions,
    limit: Options.integer("limit").pipe(
      Options.withDescription(`How many of the newest jobs to show (1-${maxListLimit})`),
      Options.withDefault(50)
    ),
    status: Options.choice("status", JobStatus.literals).pipe(
      Options.withDescription("Only jobs with this status"),
      Options.optional
    ),
    json: Options.boolean("json").pipe(Options.withDescription("Print the jobs as a JSON array"))
  },
  (flags) =>
    Effect.gen(function* () {
      if (flags.limit < 1 || flags.limit > maxListLimit) {
        return yield* usage(`--limit must be between 1 and ${maxListLimit}`)
      }
      const connection = yield* resolveConnection(flags)
      const jobs = yield* withJobsClient(connection, flags.timeout, (client) =>
        client.Jobs.List({ limit: flags.limit, status: Option.getOrUndefined(flags.status) })
      )
      if (flags.json) {
        yield* write(process.stdout, `${json(encodeJobs(jobs), 2)}\n`)
        return
      }
      if (jobs.length === 0) {
        yield* write(process.stdout, "no jobs\n")
        return
      }
      const fixed = columns.reduce((width, [, w]) => width + w + 2, 0)
      const commandWidth = Math.max(20, process.stdout.isTTY === true ? process.stdout.columns - fixed : 60)
      const now = Date.now()
      const header = [...columns.map(([name, width]) => name.padEnd(width)), "COMMAND"].join("  ")
      yield* write(
        process.stdout,
        [header, ...jobs.map((job) => formatRow(job, now, commandWidth))].join("\n") + "\n"
      )
    })
).pipe(
  Command.withDescription(
    "List jobs, newest first: id, status, exit code (or signal), strategy, start, duration and command. Example: `vibes jobs --status running --limit 20`."
  )
)

// logs ----------------------------------------------------------------------------------------

const logs = Command.make(
  "logs",
  {
    ...connectionOptions,
    jobId: jobIdArg,
    follow: Options.boolean("follow").pipe(
      Options.withAlias("f"),
      Options.withDescription(
        "After the stored output, print live output until the job ends; exit with its code"
      )
    ),
    json: Options.boolean("json").pipe(
      Options.withDescription("Print each output item (JobLog, JobProgress, JobDone) as one JSON line")
    )
  },
  (flags) =>
    Effect.gen(function* () {
      const jobId = yield* checkJobId(flags.jobId)
      const connection = yield* resolveConnection(flags)
      // Output may take long to print and, followed, hours to end: the client lives as long as the command.
      const client = yield* Effect.map(Layer.build(clientLayer(connection)), Context.get(Client.VibesClient))
      yield* client.Jobs.Get({ jobId }).pipe(
        answerWithin(connection, flags.timeout),
        Effect.mapError(jobFailure(connection))
      )
      const done = yield* printAll(client.Jobs.Logs({ jobId, follow: flags.follow }), flags.json).pipe(
        Effect.mapError(jobFailure(connection))
      )
      if (!flags.follow) return
      return yield* Option.match(done, {
        onNone: () =>
          Effect.fail(
            new CliFailure({
              message: `the server ended the output before job ${jobId} finished; follow again with vibes logs -f ${jobId}`,
              exitCode: 1
            })
          ),
        onSome: (end) =>
          Effect.sync(() => {
            process.exitCode = exitCodeOf(end)
          })
      })
    }).pipe(Effect.scoped)
).pipe(
  Command.withDescription(
    "Print a job's output: stdout to stdout, stderr to stderr, vibes' own lines to stderr as `[vibes] …`. With -f, go on with live output until the job ends and exit with its exit code, as `vibes run` does. Example: `vibes logs -f 0193d9b4-7c1e-7a2b-9c3d-4e5f60718293`."
  )
)

// cancel --------------------------------------------------------------------------------------

/** How long the server may take to stop a job: its kill grace and then some. */
const cancelAllowance = 30

const cancel = Command.make("cancel", { ...connectionOptions, jobId: jobIdArg }, (flags) =>
  Effect.gen(function* () {
    const jobId = yield* checkJobId(flags.jobId)
    const connection = yield* resolveConnection(flags)
    const job = yield* withJobsClient(connection, flags.timeout + cancelAllowance, (client) =>
      client.Jobs.Cancel({ jobId })
    )
    yield* write(process.stdout, `job ${printable(job.id)} ${job.status}\n`)
  })
).pipe(
  Command.withDescription(
    "Cancel a job: a waiting job never starts; a running one gets SIGTERM, then SIGKILL after the server's grace period. Waits until it has stopped and prints its final status (a finished job is left as it is). Example: `vibes cancel 0193d9b4-7c1e-7a2b-9c3d-4e5f60718293`."
  )
)

/** The job subcommands. */
export const commands = [run, list, logs, cancel] as const
