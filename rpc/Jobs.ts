/**
 * Jobs: the models, errors and the `Jobs` RPC group.
 *
 * A job is a command run to completion, locally (`stream`: stdout and stderr kept apart),
 * in a pseudo-terminal (`terminal`) or on another machine over SSH (`ssh`). It is queued, waits
 * for a worker slot in priority order, may be delayed (`runAt`), retried with exponential backoff
 * and timed out; its output is kept chunk by chunk as `job.log` events and streamed to followers.
 */
import { Effect, Option, Schema } from "effect"
import * as Rpc from "@effect/rpc/Rpc"
import * as RpcGroup from "@effect/rpc/RpcGroup"
import { AuthMiddleware } from "./Auth.js"
import {
  BoundedText,
  check,
  checkExec,
  ExecString,
  type FieldIssue,
  hasControl,
  PathText,
  toStorable,
  truncate
} from "./Text.js"
import { WorkspaceError } from "./Workspaces.js"

/** A job's id (a UUIDv7). */
export const JobId = Schema.String.pipe(
  Schema.pattern(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/, {
    message: () => "a job id is a UUID like 0193d9b4-7c1e-7a2b-9c3d-4e5f60718293"
  })
)
export type JobId = typeof JobId.Type

/** How a job runs. */
export const JobStrategy = Schema.Literal("stream", "terminal", "ssh")
export type JobStrategy = typeof JobStrategy.Type

/**
 * Where a job is in its life. Waiting: `queued` (for `runAt` or a worker slot) and `retrying`
 * (backing off after a failed attempt). Running: `running`. Final: `succeeded` (exit 0),
 * `failed` (the last attempt failed, or the job could not start), `timed_out` (the last attempt hit
 * the timeout), `canceled`, and `dead` (a job with retries that failed every attempt: the dead
 * letters).
 */
export const JobStatus = Schema.Literal(
  "queued",
  "running",
  "retrying",
  "succeeded",
  "failed",
  "timed_out",
  "canceled",
  "dead"
)
export type JobStatus = typeof JobStatus.Type

/** Statuses after which nothing more happens to a job. */
export const finalStatuses: ReadonlyArray<JobStatus> = [
  "succeeded",
  "failed",
  "timed_out",
  "canceled",
  "dead"
]

/** Whether `status` is final. */
export const isFinal = (status: JobStatus): boolean => finalStatuses.includes(status)

/** Output streams of a job. `system` lines are written by vibes (start, retry, cancel, errors). */
export const LogStream = Schema.Literal("stdout", "stderr", "system")
export type LogStream = typeof LogStream.Type

/**
 * How to authenticate over SSH. Job records hold this reference, never a secret: `key-file` names
 * a private key file on the server; `agent` uses the ssh-agent at `socket` (the server's
 * `SSH_AUTH_SOCK` when omitted); `password` names a secret the server reads from
 * `<data dir>/secrets/<name>` (mode 0600) or the `VIBES_SECRET_<NAME>` variable.
 */
export const SshCredential = Schema.Union(
  Schema.TaggedStruct("key-file", {
    path: Schema.String,
    /** A secret name for the key's passphrase, resolved like `password`. */
    passphraseSecret: Schema.optional(Schema.String)
  }),
  Schema.TaggedStruct("agent", { socket: Schema.optional(Schema.String) }),
  Schema.TaggedStruct("password", { secret: Schema.String })
)
export type SshCredential = typeof SshCredential.Type

/**
 * A secret's name: a file name in `<data dir>/secrets/` (so no `/`, and not `.` or `..`) that
 * also makes a variable name: 1 to 100 letters, digits, `_`, `.` or `-`, not starting with `.`.
 */
export const secretNamePattern = /^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}$/

/** A secret's name (see `secretNamePattern`). */
export const SecretName = Schema.String.pipe(
  Schema.filter((name) =>
    secretNamePattern.test(name)
      ? true
      : "is not a secret name: use 1 to 100 letters, digits, '_', '.' or '-', not starting with '.'"
  )
)

/** A remote machine for an `ssh` job. */
export class SshTarget extends Schema.Class<SshTarget>("SshTarget")({
  host: Schema.String,
  port: Schema.optionalWith(Schema.Int.pipe(Schema.between(1, 65535)), { default: () => 22 }),
  user: Schema.String,
  credential: SshCredential,
  /** The known_hosts file to check the host key against; the server's default when omitted. */
  knownHosts: Schema.optional(Schema.String),
  /**
   * Trusts exactly this host key (`SHA256:…`, as `ssh-keygen -lf` prints it) even when it is not
   * in known_hosts or differs from it: the explicit way to accept a new or changed key.
   */
  trustHostKey: Schema.optional(Schema.String)
}) {}

/** Parses `user@host[:port]` (IPv6 hosts in brackets); `undefined` when it does not parse. */
export const parseSshTarget = (
  text: string
): { readonly user: string; readonly host: string; readonly port: number } | undefined => {
  const match = /^([A-Za-z0-9._][A-Za-z0-9._-]*)@(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::(\d{1,5}))?$/.exec(
    text
  )
  if (match === null) return undefined
  const [, user, rawHost, rawPort] = match
  if (user === undefined || rawHost === undefined) return undefined
  const port = rawPort === undefined ? 22 : Number(rawPort)
  if (!Number.isInteger(port) || port < 1 || port > 65535) return undefined
  const host = rawHost.startsWith("[") ? rawHost.slice(1, -1) : rawHost
  return { user, host, port }
}

/** When a job's artifacts are collected. */
export const ArtifactsWhen = Schema.Literal("always", "success", "failure")
export type ArtifactsWhen = typeof ArtifactsWhen.Type

/** The most artifact globs one job may name. */
export const maxArtifactGlobs = 100

/** An artifact glob: relative to the job's directory, never out of it. */
const ArtifactGlob = BoundedText(1024).pipe(
  Schema.filter((glob) => glob.trim() !== "" || "is empty"),
  Schema.filter((glob) => !glob.startsWith("/") || "must be relative to the job's working directory"),
  Schema.filter(
    (glob) => !glob.split("/").includes("..") || "must not climb out of the job's working directory ('..')"
  ),
  Schema.filter((glob) => !hasControl(glob) || "must not contain control characters")
)

/** Retries: up to `maxAttempts` runs in all, waiting `initialDelayMs * factor^(n-1)` (capped) between. */
export class RetryPolicy extends Schema.Class<RetryPolicy>("RetryPolicy")({
  maxAttempts: Schema.optionalWith(Schema.Int.pipe(Schema.between(1, 100)), { default: () => 1 }),
  initialDelayMs: Schema.optionalWith(Schema.Int.pipe(Schema.between(0, 86_400_000)), {
    default: () => 1000
  }),
  factor: Schema.optionalWith(Schema.Number.pipe(Schema.between(1, 10)), { default: () => 2 }),
  maxDelayMs: Schema.optionalWith(Schema.Int.pipe(Schema.between(0, 86_400_000)), {
    default: () => 300_000
  })
}) {}

/** The longest command line accepted, in characters. */
export const maxCommandLength = 64 * 1024

/** A label's name. */
export const labelKeyPattern = /^[A-Za-z0-9_./-]{1,63}$/

/** The longest label value accepted, in characters. */
export const maxLabelValueLength = 256

/**
 * What to run and how. The schema gives the shape; what the text may contain and how large it may
 * be is checked by the server (`checkJobSpec`), so that a refusal is an `InvalidJobRequest` naming
 * the field.
 */
export class JobSpec extends Schema.Class<JobSpec>("JobSpec")({
  /** The program, or with `shell` a whole shell line. */
  command: Schema.String,
  args: Schema.optionalWith(Schema.Array(Schema.String), { default: () => [] }),
  /** Runs `command` with `/bin/sh -c` (the arguments become `$1`, `$2`, …). */
  shell: Schema.optionalWith(Schema.Boolean, { default: () => false }),
  strategy: Schema.optionalWith(JobStrategy, { default: () => "stream" as const }),
  /** Working directory; the server's home directory when omitted (the remote login directory over SSH). */
  cwd: Schema.optional(Schema.String),
  /** Added to (and overriding) the server's environment; sent as `env` requests over SSH. */
  env: Schema.optionalWith(Schema.Record({ key: Schema.String, value: Schema.String }), {
    default: () => ({})
  }),
  /** Each attempt is stopped after this long and counts as timed out. */
  timeoutMs: Schema.optional(Schema.Int.pipe(Schema.between(1, 7 * 86_400_000))),
  /** Higher runs first when worker slots are scarce. */
  priority: Schema.optionalWith(Schema.Int.pipe(Schema.between(-1000, 1000)), { default: () => 0 }),
  /** Not started before this time. */
  runAt: Schema.optional(Schema.DateTimeUtc),
  retry: Schema.optionalWith(RetryPolicy, { default: () => RetryPolicy.make({}) }),
  labels: Schema.optionalWith(Schema.Record({ key: Schema.String, value: Schema.String }), {
    default: () => ({})
  }),
  /** Required for (and only for) the `ssh` strategy. */
  ssh: Schema.optional(SshTarget),
  /**
   * Files to keep once the job ends: globs relative to its working directory (`dist/**`,
   * `report.xml`), matched after the last attempt; see `Artifacts`.
   */
  artifacts: Schema.optionalWith(Schema.Array(Schema.String), { default: () => [] }),
  /** When artifacts are collected: `always` (the default), on `success` only, or on `failure` only. */
  artifactsWhen: Schema.optionalWith(ArtifactsWhen, { default: () => "always" as const }),
  /** Terminal size for the `terminal` strategy. */
  cols: Schema.optionalWith(Schema.Int.pipe(Schema.between(2, 1000)), { default: () => 120 }),
  rows: Schema.optionalWith(Schema.Int.pipe(Schema.between(2, 1000)), { default: () => 40 }),
  /** A workspace: the job runs in a worktree of its own on `branch` (`cwd` is then refused). */
  workspace: Schema.optional(Schema.String),
  /** With `workspace`: the branch; made from `from` (default: the workspace's default branch) when new. */
  branch: Schema.optional(Schema.String),
  /** With `workspace`: what a new branch starts from (a branch, tag or commit). */
  from: Schema.optional(Schema.String)
}) {}

/** The command line of a spec as one string, for the `command` column and listings. */
export const commandLine = (spec: JobSpec): string =>
  [
    spec.command,
    ...spec.args.map((arg) => (/^[A-Za-z0-9_./:=@%+-]+$/.test(arg) ? arg : JSON.stringify(arg)))
  ].join(" ")

/** A job as clients see it. */
export class JobInfo extends Schema.Class<JobInfo>("JobInfo")({
  id: JobId,
  spec: JobSpec,
  status: JobStatus,
  /** Attempts started so far. */
  attempts: Schema.Int,
  exitCode: Schema.NullOr(Schema.Int),
  /** The signal that ended the last attempt (`SIGTERM`, …), if any. */
  signal: Schema.NullOr(Schema.String),
  /** Why the job failed or was stopped, in words. */
  error: Schema.NullOr(Schema.String),
  /** The last `::progress N` the job printed (0–100). */
  progress: Schema.NullOr(Schema.Number),
  nodeId: Schema.NullOr(Schema.String),
  createdAt: Schema.DateTimeUtc,
  startedAt: Schema.NullOr(Schema.DateTimeUtc),
  finishedAt: Schema.NullOr(Schema.DateTimeUtc)
}) {}

/** A piece of a job's output, numbered in order from 1 within the job. */
export class JobLog extends Schema.TaggedClass<JobLog>()("JobLog", {
  seq: Schema.Int,
  stream: LogStream,
  chunk: Schema.String,
  ts: Schema.DateTimeUtc
}) {}

/** The job printed `::progress N`. */
export class JobProgress extends Schema.TaggedClass<JobProgress>()("JobProgress", {
  percent: Schema.Number
}) {}

/** The job reached a final status; the last element of a log stream. */
export class JobDone extends Schema.TaggedClass<JobDone>()("JobDone", {
  status: JobStatus,
  exitCode: Schema.NullOr(Schema.Int),
  signal: Schema.NullOr(Schema.String)
}) {}

/** `Execute` answers with the accepted job first. */
export class JobAccepted extends Schema.TaggedClass<JobAccepted>()("JobAccepted", { job: JobInfo }) {}

/** What a log stream carries. */
export const JobOutput = Schema.Union(JobLog, JobProgress, JobDone)
export type JobOutput = typeof JobOutput.Type

/** What `Execute` streams. */
export const ExecuteOutput = Schema.Union(JobAccepted, JobLog, JobProgress, JobDone)
export type ExecuteOutput = typeof ExecuteOutput.Type

/** No job has this id. */
export class JobNotFound extends Schema.TaggedError<JobNotFound>()("JobNotFound", {
  jobId: Schema.String,
  message: Schema.String
}) {}

/** The request was refused as it stands: the message says what to change, `field` which field. */
export class InvalidJobRequest extends Schema.TaggedError<InvalidJobRequest>()("InvalidJobRequest", {
  /** The refused field's dotted path (`args.2`, `env.PATH`, `ssh.credential.passphraseSecret`). */
  field: Schema.optional(Schema.String),
  message: Schema.String
}) {}

const SshRules = Schema.Struct({
  host: Schema.String.pipe(
    Schema.filter((host) =>
      /^[A-Za-z0-9._:-]{1,255}$/.test(host)
        ? true
        : "is not a host name or address: 1 to 255 letters, digits, '.', '-', '_' or ':'"
    )
  ),
  user: Schema.String.pipe(
    Schema.filter((user) =>
      user.length >= 1 && user.length <= 64 && !/[\s@]/.test(user) && !hasControl(user)
        ? true
        : "is not a user name: 1 to 64 characters without spaces, control characters or '@'"
    )
  ),
  credential: Schema.Union(
    Schema.Struct({
      _tag: Schema.Literal("key-file"),
      path: PathText.pipe(Schema.filter((path) => path !== "" || "must name the private key file")),
      passphraseSecret: Schema.optional(SecretName)
    }),
    Schema.Struct({ _tag: Schema.Literal("agent"), socket: Schema.optional(PathText) }),
    Schema.Struct({ _tag: Schema.Literal("password"), secret: SecretName })
  ),
  knownHosts: Schema.optional(PathText),
  trustHostKey: Schema.optional(
    Schema.String.pipe(
      Schema.filter((key) =>
        /^SHA256:[A-Za-z0-9+/]{43}=?$/.test(key)
          ? true
          : "is not a host key fingerprint: SHA256: and 43 base64 characters, as ssh-keygen -lf prints it"
      )
    )
  )
})

const JobSpecRules = Schema.Struct({
  command: ExecString.pipe(
    Schema.filter((command) => command.trim() !== "" || "is empty"),
    Schema.filter((command) =>
      command.length <= maxCommandLength
        ? true
        : `is ${command.length} characters long; the most accepted is ${maxCommandLength}`
    )
  ),
  args: Schema.Array(ExecString),
  cwd: Schema.optional(PathText),
  env: Schema.Record({ key: Schema.String, value: ExecString }),
  labels: Schema.Record({ key: Schema.String, value: BoundedText(maxLabelValueLength) }),
  artifacts: Schema.Array(ArtifactGlob).pipe(
    Schema.filter((globs) => globs.length <= maxArtifactGlobs || `names more than ${maxArtifactGlobs} globs`)
  ),
  ssh: Schema.optional(SshRules),
  workspace: Schema.optional(BoundedText(200)),
  branch: Schema.optional(BoundedText(250)),
  from: Schema.optional(BoundedText(250))
})

const checkLabels = (labels: Readonly<Record<string, string>>): Option.Option<FieldIssue> => {
  for (const key of Object.keys(labels)) {
    if (!labelKeyPattern.test(key)) {
      const field = `labels.${truncate(toStorable(key), 100)}`
      return Option.some({
        field,
        message: `${field}: a label name is 1 to 63 letters, digits, '_', '.', '/' or '-'`
      })
    }
  }
  return Option.none()
}

/**
 * Checks what a job spec's schema cannot: every string is storable and short enough for exec,
 * secret names cannot leave the secrets directory, and command, arguments, environment and cwd
 * together stay within `Text.maxExecBytes`. The first refused field, if any.
 */
export const jobSpecIssue = (spec: JobSpec): Option.Option<FieldIssue> =>
  check(JobSpecRules, spec).pipe(
    Option.orElse(() => checkLabels(spec.labels)),
    Option.orElse(() => checkExec(spec))
  )

/** `jobSpecIssue` as an effect that fails with `InvalidJobRequest`. */
export const checkJobSpec = (spec: JobSpec): Effect.Effect<void, InvalidJobRequest> => {
  const issue = jobSpecIssue(spec)
  return Option.isSome(issue) ? Effect.fail(new InvalidJobRequest(issue.value)) : Effect.void
}

/** The job store could not be reached; nothing was changed. Retry later. */
export class JobsUnavailable extends Schema.TaggedError<JobsUnavailable>()("JobsUnavailable", {
  message: Schema.String
}) {}

export const JobError = Schema.Union(JobNotFound, InvalidJobRequest, JobsUnavailable)
export type JobError = typeof JobError.Type

/** The most jobs one `List` returns. */
export const maxListLimit = 1000

const ById = { jobId: JobId }

/** `List`: the newest `limit` jobs, optionally of one status. */
export class ListJobs extends Schema.Class<ListJobs>("ListJobs")({
  limit: Schema.optionalWith(Schema.Int.pipe(Schema.between(1, maxListLimit)), { default: () => 50 }),
  status: Schema.optional(JobStatus)
}) {}

/** `Logs`: a job's output. */
export class JobLogsRequest extends Schema.Class<JobLogsRequest>("JobLogsRequest")({
  ...ById,
  /** Keeps the stream open with live output until the job ends. */
  follow: Schema.optionalWith(Schema.Boolean, { default: () => false }),
  /** Only output with a sequence number above this. */
  after: Schema.optionalWith(Schema.Int.pipe(Schema.nonNegative()), { default: () => 0 })
}) {}

/** Everything a client can ask of jobs. */
export class JobsRpcs extends RpcGroup.make(
  Rpc.make("Submit", { payload: JobSpec, success: JobInfo, error: Schema.Union(JobError, WorkspaceError) }),
  Rpc.make("Execute", {
    payload: JobSpec,
    success: ExecuteOutput,
    error: Schema.Union(JobError, WorkspaceError),
    stream: true
  }),
  Rpc.make("Cancel", { payload: ById, success: JobInfo, error: JobError }),
  Rpc.make("Get", { payload: ById, success: JobInfo, error: JobError }),
  Rpc.make("List", {
    payload: ListJobs,
    success: Schema.Array(JobInfo),
    error: JobError
  }),
  Rpc.make("Logs", {
    payload: JobLogsRequest,
    success: JobOutput,
    error: JobError,
    stream: true
  })
)
  .prefix("Jobs.")
  .middleware(AuthMiddleware) {}
