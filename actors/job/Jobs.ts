/**
 * The jobs facade that the RPC handlers and the REST routes share: checks a submission, records
 * it, and hands it to its entity as a persisted message; routes cancel and logs to the entity
 * (wherever its shard lives); answers `Get` and `List` from the table.
 *
 * At start it re-sends `Submit` for every unfinished job (duplicates of a stored message are
 * ignored), which covers a node that stopped between recording a job and sending its message, and
 * it prunes jobs finished longer ago than the retention (their output goes by event retention).
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { Context, Duration, Effect, Layer, Option, Schedule, Stream } from "effect"
import * as EntityId from "@effect/cluster/EntityId"
import { Sharding } from "@effect/cluster/Sharding"
import {
  checkJobSpec,
  commandLine,
  ExecuteOutput,
  InvalidJobRequest,
  JobAccepted,
  type JobError,
  type JobInfo,
  type JobNotFound,
  type JobOutput,
  JobSpec,
  type JobStatus,
  JobsUnavailable
} from "../../rpc/Jobs.js"
import { truncate } from "../../rpc/Text.js"
import { uuidv7 } from "../../infra/eventlog/EventLog.js"
import * as Ssh from "../../infra/ssh/Ssh.js"
import { Emitter } from "../../infra/eventlog/Emitter.js"
import { Artifacts } from "./Artifacts.js"
import { Job } from "./JobEntity.js"
import { JobLogs } from "./JobLogs.js"
import { JobSettings } from "./JobSettings.js"
import { JobStore } from "./JobStore.js"
import { readSecret } from "./Strategies.js"
import { Workspaces, type WorkspaceError } from "../workspace/Workspaces.js"

const jobErrorTags = new Set(["JobNotFound", "InvalidJobRequest", "JobsUnavailable"])

/** Keeps job errors; anything the cluster raised becomes `JobsUnavailable`. */
const toJobError = <E extends { readonly _tag: string; readonly message?: string }>(error: E): JobError =>
  jobErrorTags.has(error._tag)
    ? (error as unknown as JobError)
    : new JobsUnavailable({
        message: `the job is unreachable right now (${error._tag}${error.message !== undefined ? `: ${error.message}` : ""}); retry`
      })

/** The jobs of the cluster, as clients use them. */
export class Jobs extends Context.Tag("vibes/Jobs")<
  Jobs,
  {
    /** Records and queues a job; in a worktree of its own when the spec names a workspace. */
    readonly submit: (spec: JobSpec) => Effect.Effect<JobInfo, JobError | WorkspaceError>
    /** Submits, then streams the accepted job, its output and its end. */
    readonly execute: (spec: JobSpec) => Stream.Stream<ExecuteOutput, JobError | WorkspaceError>
    readonly cancel: (jobId: string) => Effect.Effect<JobInfo, JobError>
    readonly get: (jobId: string) => Effect.Effect<JobInfo, JobError>
    readonly list: (
      limit: number,
      status: Option.Option<JobStatus>
    ) => Effect.Effect<ReadonlyArray<JobInfo>, JobError>
    readonly logs: (jobId: string, after: number, follow: boolean) => Stream.Stream<JobOutput, JobError>
  }
>() {}

/** The longest command line a `job.submitted` event carries, in characters (cut with `…`). */
export const maxSummaryChars = 16 * 1024

/**
 * Checks what the schema cannot: the text and sizes (`checkJobSpec`), strategy and target agree,
 * the cwd and the credential exist.
 */
export const validate = (spec: JobSpec, dataDir: string): Effect.Effect<void, InvalidJobRequest> =>
  Effect.gen(function* () {
    yield* checkJobSpec(spec)
    const invalid = (field: string, message: string) => Effect.fail(new InvalidJobRequest({ field, message }))
    const refusedAs = (field: string) => (error: { readonly message: string }) =>
      new InvalidJobRequest({ field, message: error.message })
    if (spec.strategy === "ssh") {
      const target = spec.ssh
      if (target === undefined) {
        return yield* invalid("ssh", "an ssh job needs a target: ssh { host, user, credential }")
      }
      const credential = target.credential
      if (credential._tag === "key-file") {
        const passphrase =
          credential.passphraseSecret === undefined
            ? Option.none()
            : Option.some(
                yield* readSecret(dataDir, credential.passphraseSecret).pipe(
                  Effect.mapError(refusedAs("ssh.credential.passphraseSecret"))
                )
              )
        yield* Ssh.checkKeyFile(credential.path, passphrase).pipe(
          Effect.mapError(refusedAs("ssh.credential.path"))
        )
      } else if (credential._tag === "password") {
        yield* readSecret(dataDir, credential.secret).pipe(
          Effect.mapError(refusedAs("ssh.credential.secret"))
        )
      } else if ((credential.socket ?? process.env["SSH_AUTH_SOCK"] ?? "") === "") {
        return yield* invalid(
          "ssh.credential.socket",
          "agent authentication needs an ssh-agent: SSH_AUTH_SOCK is not set on the server"
        )
      }
      if (target.knownHosts !== undefined && !path.isAbsolute(target.knownHosts)) {
        return yield* invalid(
          "ssh.knownHosts",
          `knownHosts must be an absolute path, not ${target.knownHosts}`
        )
      }
      return
    }
    if (spec.ssh !== undefined) {
      return yield* invalid(
        "ssh",
        `a ${spec.strategy} job runs locally; drop the ssh target or use the ssh strategy`
      )
    }
    if (spec.cwd !== undefined) {
      if (!path.isAbsolute(spec.cwd))
        return yield* invalid("cwd", `cwd must be an absolute path, not ${spec.cwd}`)
      const isDir = yield* Effect.sync(() => {
        try {
          return fs.statSync(spec.cwd ?? "").isDirectory()
        } catch {
          return false
        }
      })
      if (!isDir) return yield* invalid("cwd", `cwd ${spec.cwd} is not a directory on the server`)
    }
  })

/** The facade, on the node's sharding, store and emitter. `pruneEvery` paces the retention. */
export const layer = (options: {
  readonly retention: Duration.Duration
  readonly pruneEvery: Duration.Duration
}) =>
  Layer.scoped(
    Jobs,
    Effect.gen(function* () {
      const makeClient = yield* Job.client
      const sharding = yield* Sharding
      const jobLogs = yield* JobLogs
      const store = yield* JobStore
      const emitter = yield* Emitter
      const settings = yield* JobSettings
      const artifacts = yield* Artifacts
      const workspaces = yield* Workspaces

      const send = (jobId: string, spec: JobSpec) =>
        makeClient(jobId).Submit({ jobId, spec }, { discard: true }).pipe(Effect.mapError(toJobError))

      /** The spec to run: in its own worktree when it names a workspace (made here, for `jobId`). */
      const inWorktree = (jobId: string, spec: JobSpec) =>
        Effect.gen(function* () {
          const refuse = (field: string, message: string) => new InvalidJobRequest({ field, message })
          if (spec.workspace === undefined) {
            if (spec.branch !== undefined || spec.from !== undefined) {
              return yield* refuse(
                spec.branch !== undefined ? "branch" : "from",
                "branch and from choose a worktree of a workspace: name the workspace too"
              )
            }
            return spec
          }
          if (spec.strategy === "ssh")
            return yield* refuse("workspace", "a job in a workspace runs locally, not over ssh")
          if (spec.cwd !== undefined)
            return yield* refuse("cwd", "a job in a workspace runs in its worktree: drop cwd")
          if (spec.branch === undefined)
            return yield* refuse("branch", "a job in a workspace needs the branch to work on")
          const worktree = yield* workspaces.prepare({
            workspace: spec.workspace,
            branch: spec.branch,
            from: spec.from,
            owner: { kind: "job", id: jobId }
          })
          return new JobSpec({ ...spec, cwd: worktree.path })
        })

      const submit = (requested: JobSpec) =>
        Effect.gen(function* () {
          yield* validate(requested, settings.dataDir)
          const jobId = uuidv7()
          const spec = yield* inWorktree(jobId, requested)
          const job = yield* store
            .insert(jobId, spec, new Date())
            .pipe(
              Effect.tapError(() =>
                spec === requested
                  ? Effect.void
                  : Effect.ignore(workspaces.abandon({ kind: "job", id: jobId }))
              )
            )
          yield* emitter.emit(
            "job.submitted",
            // A summary (the spec is in the jobs table): quoting can make it 4 times the size of
            // the arguments as JSON, so it is cut to stay within the event limit.
            {
              jobId,
              command: truncate(commandLine(spec), maxSummaryChars),
              strategy: spec.strategy,
              priority: spec.priority
            },
            { component: "job", jobId }
          )
          yield* send(jobId, spec).pipe(
            Effect.tapError((error) =>
              Effect.ignore(
                store.update(jobId, { status: "failed", error: error.message, finishedAt: new Date() })
              )
            )
          )
          return job.info
        })

      const known = (jobId: string) => Effect.asVoid(store.getOrFail(jobId))

      /** Whether the job's entity lives on this node, whose output writer then feeds its followers. */
      const isLocal = (jobId: string) => {
        const entityId = EntityId.make(jobId)
        return sharding.hasShardId(sharding.getShardId(entityId, Job.getShardGroup(entityId)))
      }

      // Stored output is read here from the event log, whichever node runs the job (also while
      // its entity moves); so is live output of a job of this node. The entity serves the
      // followers of jobs that live on other nodes.
      const output = (jobId: string, after: number, follow: boolean): Stream.Stream<JobOutput, JobError> =>
        !follow || isLocal(jobId)
          ? jobLogs.stream(jobId, after, follow)
          : makeClient(jobId).Logs({ after, follow }).pipe(Stream.mapError(toJobError))

      const logs = (jobId: string, after: number, follow: boolean): Stream.Stream<JobOutput, JobError> =>
        Number.isSafeInteger(after) && after >= 0
          ? Stream.unwrap(Effect.as(known(jobId), output(jobId, after, follow)))
          : Stream.fail(
              new InvalidJobRequest({
                field: "after",
                message: "after: must be a sequence number (a whole number from 0 to 2^53 - 1)"
              })
            )

      // Unfinished jobs get their message again (a stored one makes this a no-op).
      yield* Effect.forkScoped(
        Effect.gen(function* () {
          const ids = yield* store.unfinished
          for (const id of ids) {
            const job = yield* store.get(id)
            if (Option.isSome(job)) yield* Effect.ignore(send(id, job.value.info.spec))
          }
          if (ids.length > 0) yield* Effect.logInfo(`resumed ${ids.length} unfinished jobs`)
        }).pipe(
          Effect.catchAll((error) => Effect.logWarning(`could not resume unfinished jobs: ${error.message}`))
        )
      )

      // Retention.
      yield* Effect.forkScoped(
        Effect.suspend(() => {
          const cutoff = new Date(Date.now() - Duration.toMillis(options.retention))
          // The stored artifacts first: their rows go with the jobs.
          return Effect.zip(artifacts.prune(cutoff), store.prune(cutoff))
        }).pipe(
          Effect.tap(([kept, pruned]) =>
            pruned + kept > 0
              ? Effect.logInfo(`job retention deleted ${pruned} finished jobs and ${kept} artifacts`)
              : Effect.void
          ),
          Effect.catchAll((error) => Effect.logWarning(`job retention failed: ${error.message}`)),
          Effect.repeat(Schedule.spaced(options.pruneEvery))
        )
      )

      return Jobs.of({
        submit,
        execute: (spec) =>
          Stream.unwrap(
            Effect.map(submit(spec), (info) =>
              Stream.concat(Stream.succeed(new JobAccepted({ job: info })), output(info.id, 0, true))
            )
          ),
        cancel: (jobId) =>
          Effect.zipRight(known(jobId), makeClient(jobId).Cancel().pipe(Effect.mapError(toJobError))),
        get: (jobId) => Effect.map(store.getOrFail(jobId), (job) => job.info),
        list: (limit, status) => store.list(limit, status),
        logs
      })
    })
  )

/** The sharding requirement, for callers wiring the layer. */
export type Requires = Sharding | JobStore | JobLogs | Emitter | JobSettings | Workspaces
export type { JobNotFound }
