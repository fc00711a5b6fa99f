/**
 * The `jobs` table: one row a job, written by its entity at every change of status. Reads for
 * `Get` and `List` come straight from here, so any node answers them.
 */
import { Context, DateTime, Duration, Effect, Layer, Option, Schema } from "effect"
import { SqlClient } from "@effect/sql/SqlClient"
import type { SqlError } from "@effect/sql/SqlError"
import {
  commandLine,
  JobInfo,
  JobNotFound,
  JobSpec,
  JobsUnavailable,
  type JobStatus
} from "../../rpc/Jobs.js"

interface Row {
  readonly id: string
  readonly spec: unknown
  readonly status: JobStatus
  readonly attempts: number
  readonly exit_code: number | null
  readonly exit_signal: string | null
  readonly error: string | null
  readonly progress: number | null
  readonly node_id: string | null
  readonly pid: number | null
  readonly pty_id: string | null
  readonly created_at: Date
  readonly started_at: Date | null
  readonly finished_at: Date | null
}

/** A job row with what the entity needs beyond `JobInfo`. */
export interface StoredJob {
  readonly info: JobInfo
  /** The local process group of the running attempt (`stream`), for recovery after a crash. */
  readonly pid: number | null
  /** The PTY of the running attempt (`terminal`). */
  readonly ptyId: string | null
}

/** Fields an update may set. */
export interface Patch {
  readonly status?: JobStatus
  readonly attempts?: number
  readonly exitCode?: number | null
  readonly signal?: string | null
  readonly error?: string | null
  readonly progress?: number | null
  readonly nodeId?: string | null
  readonly pid?: number | null
  readonly ptyId?: string | null
  readonly startedAt?: Date | null
  readonly finishedAt?: Date | null
}

const decodeSpec = Schema.decodeUnknown(JobSpec)
const encodeSpec = Schema.encode(JobSpec)

const unavailable = (error: SqlError | { readonly message: string }) =>
  new JobsUnavailable({ message: `the job store is unavailable: ${error.message}` })

const toStored = (row: Row) =>
  Effect.map(
    Effect.mapError(decodeSpec(row.spec), (error) =>
      unavailable({ message: `job ${row.id}: ${error.message}` })
    ),
    (spec): StoredJob => ({
      info: JobInfo.make({
        id: row.id,
        spec,
        status: row.status,
        attempts: row.attempts,
        exitCode: row.exit_code,
        signal: row.exit_signal,
        error: row.error,
        progress: row.progress,
        nodeId: row.node_id,
        createdAt: DateTime.unsafeMake(row.created_at),
        startedAt: row.started_at === null ? null : DateTime.unsafeMake(row.started_at),
        finishedAt: row.finished_at === null ? null : DateTime.unsafeMake(row.finished_at)
      }),
      pid: row.pid,
      ptyId: row.pty_id
    })
  )

/** Reads and writes job rows. */
export class JobStore extends Context.Tag("vibes/JobStore")<
  JobStore,
  {
    /** Inserts a queued job; an existing row with this id is left as it is. */
    readonly insert: (id: string, spec: JobSpec, createdAt: Date) => Effect.Effect<StoredJob, JobsUnavailable>
    readonly get: (id: string) => Effect.Effect<Option.Option<StoredJob>, JobsUnavailable>
    readonly getOrFail: (id: string) => Effect.Effect<StoredJob, JobsUnavailable | JobNotFound>
    /** Newest first. */
    readonly list: (
      limit: number,
      status: Option.Option<JobStatus>
    ) => Effect.Effect<ReadonlyArray<JobInfo>, JobsUnavailable>
    readonly update: (id: string, patch: Patch) => Effect.Effect<StoredJob, JobsUnavailable | JobNotFound>
    /**
     * Puts job `seen.id` back in the queue with `attempts` counted, if its row is still as `seen`
     * (status, node and attempts: compare-and-set), so that a node stopping late never overwrites
     * what a newer owner wrote. Whether it did.
     */
    readonly handBack: (seen: JobInfo, attempts: number) => Effect.Effect<boolean, JobsUnavailable>
    /**
     * Whether job `id` runs on a node other than `nodeId` that has beaten within `within`: that node
     * is alive (stopping, say), and ends or hands back the attempt itself.
     */
    readonly runsElsewhere: (
      id: string,
      nodeId: string,
      within: Duration.Duration
    ) => Effect.Effect<boolean, JobsUnavailable>
    /** Ids of jobs that are not final, oldest first: to resume after a restart. */
    readonly unfinished: Effect.Effect<ReadonlyArray<string>, JobsUnavailable>
    /**
     * Deletes jobs finished before `cutoff`; returns how many. (Their output is `job.log` events,
     * which event retention deletes: see `JobLogs.withRetention`.)
     */
    readonly prune: (cutoff: Date) => Effect.Effect<number, JobsUnavailable>
  }
>() {}

/** The store on the node's SQL client. */
export const layer = Layer.effect(
  JobStore,
  Effect.gen(function* () {
    const sql = yield* SqlClient
    const get = (id: string) =>
      sql<Row>`SELECT * FROM jobs WHERE id = ${id}`.pipe(
        Effect.mapError(unavailable),
        Effect.flatMap((rows) =>
          rows[0] === undefined ? Effect.succeedNone : Effect.asSome(toStored(rows[0]))
        )
      )
    const getOrFail = (id: string) =>
      Effect.flatMap(get(id), (found) =>
        Option.match(found, {
          onNone: () => Effect.fail(new JobNotFound({ jobId: id, message: `no job has the id ${id}` })),
          onSome: Effect.succeed
        })
      )
    return JobStore.of({
      insert: (id, spec, createdAt) =>
        Effect.gen(function* () {
          const encoded = yield* Effect.mapError(encodeSpec(spec), (error) => unavailable(error))
          const inserted = yield* sql<Row>`
            INSERT INTO jobs (id, command, type, status, spec, priority, run_at, labels, created_at)
            VALUES (${id}, ${commandLine(spec)}, ${spec.strategy}, 'queued', ${JSON.stringify(encoded)}::jsonb,
              ${spec.priority}, ${spec.runAt === undefined ? null : DateTime.toDate(spec.runAt)},
              ${JSON.stringify(spec.labels)}::jsonb, ${createdAt})
            ON CONFLICT (id) DO NOTHING
            RETURNING *
          `.pipe(Effect.mapError(unavailable))
          if (inserted[0] !== undefined) return yield* toStored(inserted[0])
          // Recorded before (the entity re-inserts what the facade recorded): the stored row wins.
          return yield* Effect.catchTag(getOrFail(id), "JobNotFound", () =>
            Effect.fail(unavailable({ message: `job ${id} vanished after insert` }))
          )
        }),
      get,
      getOrFail,
      list: (limit, status) =>
        Option.match(status, {
          onNone: () => sql<Row>`SELECT * FROM jobs ORDER BY created_at DESC, id DESC LIMIT ${limit}`,
          onSome: (s) =>
            sql<Row>`SELECT * FROM jobs WHERE status = ${s} ORDER BY created_at DESC, id DESC LIMIT ${limit}`
        }).pipe(
          Effect.mapError(unavailable),
          Effect.flatMap((rows) =>
            Effect.forEach(rows, (row) => Effect.map(toStored(row), (job) => job.info))
          )
        ),
      update: (id, patch) => {
        const columns: Record<string, unknown> = {}
        if (patch.status !== undefined) columns.status = patch.status
        if (patch.attempts !== undefined) columns.attempts = patch.attempts
        if (patch.exitCode !== undefined) columns.exit_code = patch.exitCode
        if (patch.signal !== undefined) columns.exit_signal = patch.signal
        if (patch.error !== undefined) columns.error = patch.error
        if (patch.progress !== undefined) columns.progress = patch.progress
        if (patch.nodeId !== undefined) columns.node_id = patch.nodeId
        if (patch.pid !== undefined) columns.pid = patch.pid
        if (patch.ptyId !== undefined) columns.pty_id = patch.ptyId
        if (patch.startedAt !== undefined) columns.started_at = patch.startedAt
        if (patch.finishedAt !== undefined) columns.finished_at = patch.finishedAt
        return sql<Row>`UPDATE jobs SET ${sql.update(columns)} WHERE id = ${id} RETURNING *`.pipe(
          Effect.mapError(unavailable),
          Effect.flatMap((rows): Effect.Effect<StoredJob, JobsUnavailable | JobNotFound> =>
            rows[0] === undefined
              ? Effect.fail(new JobNotFound({ jobId: id, message: `no job has the id ${id}` }))
              : toStored(rows[0])
          )
        )
      },
      handBack: (seen, attempts) =>
        sql<{ readonly id: string }>`
          UPDATE jobs SET status = 'queued', attempts = ${attempts}, pid = NULL, pty_id = NULL
          WHERE id = ${seen.id} AND status = ${seen.status} AND attempts = ${seen.attempts}
            AND node_id IS NOT DISTINCT FROM ${seen.nodeId}
          RETURNING id
        `.pipe(
          Effect.map((rows) => rows.length > 0),
          Effect.mapError(unavailable)
        ),
      runsElsewhere: (id, nodeId, within) =>
        sql<{ readonly id: string }>`
          SELECT j.id FROM jobs j JOIN vibes_nodes n ON n.node_id = j.node_id
          WHERE j.id = ${id} AND j.status = 'running' AND j.node_id <> ${nodeId}
            AND n.last_seen_at > now() - make_interval(secs => ${Duration.toSeconds(within)})
        `.pipe(
          Effect.map((rows) => rows.length > 0),
          Effect.mapError(unavailable)
        ),
      unfinished: sql<{ readonly id: string }>`
        SELECT id FROM jobs WHERE status IN ('queued', 'running', 'retrying') ORDER BY created_at
      `.pipe(
        Effect.map((rows) => rows.map((row) => row.id)),
        Effect.mapError(unavailable)
      ),
      prune: (cutoff) =>
        sql<{ readonly n: number }>`
          WITH d AS (
            DELETE FROM jobs WHERE finished_at < ${cutoff} AND status NOT IN ('queued', 'running', 'retrying')
            RETURNING 1
          ) SELECT count(*)::int AS n FROM d
        `.pipe(
          Effect.map((rows) => rows[0]?.n ?? 0),
          Effect.mapError(unavailable)
        )
    })
  })
)
