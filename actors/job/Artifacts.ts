/**
 * Job artifacts: after a job's last attempt, the files in its working directory that match its
 * `artifacts` globs are streamed into the node's `Storage` under
 * `<tenant>/jobs/<job id>/artifacts/<name>` and recorded in `job_artifacts` with their size and
 * sha256. Listing and downloading read the table, then the storage.
 *
 * Symlinks are never followed nor kept. A match is refused (and said so in the job's log) when it
 * leads out of the working directory (a file or folder swapped for a symlink while it was read),
 * is not a regular file, or has a name that cannot be a storage key.
 */
import * as fsp from "node:fs/promises"
import * as path from "node:path"
import { Context, DateTime, Effect, Layer, Option, type Scope, Stream } from "effect"
import * as NodeStream from "@effect/platform-node/NodeStream"
import { SqlClient } from "@effect/sql/SqlClient"
import { glob } from "tinyglobby"
import {
  type ArtifactError,
  ArtifactInfo,
  ArtifactNotFound,
  InvalidArtifactRequest,
  StorageUnavailable
} from "../../rpc/Artifacts.js"
import { JobNotFound, JobsUnavailable, type JobSpec, type JobStatus } from "../../rpc/Jobs.js"
import * as Storage from "../../infra/storage/Storage.js"

/** The most files one job keeps; matches past it are reported, not kept. */
export const maxArtifacts = 1000

/** The tenant jobs belong to (vibes has one until tenants arrive). */
const tenant = "default"

/** How collection reports what it did, line by line (into the job's log) and kept file by kept file. */
export interface Report {
  readonly kept: (info: ArtifactInfo) => Effect.Effect<void>
  readonly line: (text: string) => Effect.Effect<void>
}

/** Whether a job that ended with `status` keeps its artifacts. */
export const wanted = (spec: JobSpec, status: JobStatus): boolean =>
  spec.artifacts.length > 0 &&
  (spec.artifactsWhen === "always" ||
    (spec.artifactsWhen === "success" ? status === "succeeded" : status !== "succeeded"))

/** A job's artifacts. */
export class Artifacts extends Context.Tag("vibes/Artifacts")<
  Artifacts,
  {
    /** Keeps the files under `cwd` matching `globs`; never fails (problems go to `report.line`). */
    readonly collect: (
      jobId: string,
      cwd: string,
      globs: ReadonlyArray<string>,
      report: Report
    ) => Effect.Effect<ReadonlyArray<ArtifactInfo>>
    readonly list: (jobId: string) => Effect.Effect<ReadonlyArray<ArtifactInfo>, ArtifactError>
    readonly get: (jobId: string, name: string) => Effect.Effect<ArtifactInfo, ArtifactError>
    /** Opens an artifact's bytes from `offset` on; the read closes with the scope. */
    readonly open: (
      jobId: string,
      name: string,
      range?: Storage.ByteRange
    ) => Effect.Effect<
      { readonly info: ArtifactInfo; readonly download: Storage.Download },
      ArtifactError | Storage.InvalidRange,
      Scope.Scope
    >
    /** Deletes the stored artifacts of jobs finished before `cutoff` (their rows go with the jobs). */
    readonly prune: (cutoff: Date) => Effect.Effect<number, JobsUnavailable>
  }
>() {}

interface Row {
  readonly job_id: string
  readonly name: string
  readonly storage_key: string
  readonly size: string | number
  readonly sha256: string
  readonly created_at: Date
}

const toInfo = (row: Row) =>
  ArtifactInfo.make({
    jobId: row.job_id,
    name: row.name,
    size: Number(row.size),
    sha256: row.sha256,
    createdAt: DateTime.unsafeFromDate(row.created_at)
  })

const unavailable = (error: { readonly message: string }) =>
  new JobsUnavailable({ message: `the job store is unavailable: ${error.message}` })

const storageUnavailable = (error: { readonly message: string }) =>
  new StorageUnavailable({ message: `the artifact storage is unavailable: ${error.message}` })

/**
 * `file` opened for reading if it is a regular file under `root` (a real path, no symlink
 * components), else why not.
 */
export const openInside = async (root: string, file: string): Promise<fsp.FileHandle | string> => {
  const real = await fsp.realpath(file)
  if (!real.startsWith(root + path.sep)) return "it leads outside the job's working directory"
  const handle = await fsp.open(
    real,
    fsp.constants.O_RDONLY | fsp.constants.O_NOFOLLOW | fsp.constants.O_NONBLOCK
  )
  try {
    // What was opened, not what the path said a moment before (a folder may have been swapped).
    const opened = await fsp.readlink(`/proc/self/fd/${handle.fd}`).catch(() => real)
    if (!opened.startsWith(root + path.sep)) {
      await handle.close()
      return "it leads outside the job's working directory"
    }
    if (!(await handle.stat()).isFile()) {
      await handle.close()
      return "it is not a regular file"
    }
    return handle
  } catch (error) {
    await handle.close()
    throw error
  }
}

/** The service on the node's storage and SQL client. */
export const layer = Layer.effect(
  Artifacts,
  Effect.gen(function* () {
    const sql = yield* SqlClient
    const storage = yield* Storage.Storage

    const keep = (jobId: string, root: string, name: string, report: Report) =>
      Effect.gen(function* () {
        const key = Storage.key(tenant, `jobs/${jobId}/artifacts/${name}`)
        if (key._tag === "Left") {
          return yield* Effect.as(
            report.line(`artifact ${JSON.stringify(name)} refused: ${key.left.message}`),
            Option.none()
          )
        }
        const opened = yield* Effect.tryPromise(() => openInside(root, path.join(root, name)))
        if (typeof opened === "string") {
          return yield* Effect.as(
            report.line(`artifact ${JSON.stringify(name)} refused: ${opened}`),
            Option.none()
          )
        }
        const put = yield* Effect.acquireUseRelease(
          Effect.succeed(opened),
          (handle) =>
            storage.put(
              key.right,
              NodeStream.fromReadable<Error, Uint8Array>(
                () => handle.createReadStream({ autoClose: false, highWaterMark: 256 * 1024 }),
                (cause) => new Error(`cannot read ${name}: ${String(cause)}`)
              )
            ),
          (handle) => Effect.promise(() => handle.close().catch(() => undefined))
        )
        const rows = yield* sql<Row>`
          INSERT INTO job_artifacts (job_id, name, tenant_id, storage_key, size, sha256)
          VALUES (${jobId}, ${name}, ${tenant}, ${put.key}, ${put.size}, ${put.sha256})
          ON CONFLICT (job_id, name) DO UPDATE
            SET storage_key = EXCLUDED.storage_key, size = EXCLUDED.size, sha256 = EXCLUDED.sha256,
                created_at = now()
          RETURNING *
        `
        const row = rows[0]
        if (row === undefined) return Option.none()
        const info = toInfo(row)
        yield* report.kept(info)
        yield* report.line(`kept artifact ${name} (${info.size} bytes, sha256 ${info.sha256})`)
        return Option.some(info)
      }).pipe(
        Effect.catchAll((error) =>
          Effect.as(
            report.line(
              `artifact ${JSON.stringify(name)} not kept: ${"message" in error ? error.message : String(error)}`
            ),
            Option.none()
          )
        )
      )

    const collect: Artifacts["Type"]["collect"] = (jobId, cwd, globs, report) =>
      Effect.gen(function* () {
        const root = yield* Effect.tryPromise(() => fsp.realpath(cwd))
        const matches = yield* Effect.tryPromise(() =>
          glob([...globs], {
            cwd: root,
            // Symlinks are neither followed nor listed; `openInside` is the second lock (a file
            // swapped for a symlink after the listing).
            onlyFiles: true,
            dot: true,
            followSymbolicLinks: false,
            expandDirectories: false
          })
        )
        const names = [...new Set(matches)].sort()
        if (names.length === 0) {
          yield* report.line(
            `no file matched the artifact globs ${globs.map((g) => JSON.stringify(g)).join(", ")}`
          )
          return []
        }
        if (names.length > maxArtifacts) {
          yield* report.line(`${names.length} files matched; only the first ${maxArtifacts} are kept`)
        }
        const kept = yield* Effect.forEach(names.slice(0, maxArtifacts), (name) =>
          keep(jobId, root, name, report)
        )
        return kept.flatMap((info) => (Option.isSome(info) ? [info.value] : []))
      }).pipe(
        Effect.catchAll((error) =>
          Effect.as(report.line(`artifacts not collected: ${String(error.error)}`), [])
        ),
        Effect.withSpan("Artifacts.collect", { attributes: { jobId } })
      )

    const jobExists = (jobId: string) =>
      sql<{ readonly id: string }>`SELECT id FROM jobs WHERE id = ${jobId}`.pipe(
        Effect.mapError(unavailable),
        Effect.flatMap((rows) =>
          rows.length > 0
            ? Effect.void
            : Effect.fail(new JobNotFound({ jobId, message: `no job has the id ${jobId}` }))
        )
      )

    const list: Artifacts["Type"]["list"] = (jobId) =>
      Effect.zipRight(
        jobExists(jobId),
        sql<Row>`SELECT * FROM job_artifacts WHERE job_id = ${jobId} ORDER BY name`.pipe(
          Effect.mapError(unavailable),
          Effect.map((rows) => rows.map(toInfo))
        )
      )

    const row = (jobId: string, name: string) =>
      Effect.zipRight(
        jobExists(jobId),
        sql<Row>`SELECT * FROM job_artifacts WHERE job_id = ${jobId} AND name = ${name}`.pipe(
          Effect.mapError(unavailable),
          Effect.flatMap((rows) =>
            rows[0] === undefined
              ? Effect.fail(
                  new ArtifactNotFound({
                    jobId,
                    name,
                    message: `job ${jobId} has no artifact named ${JSON.stringify(name)}`
                  })
                )
              : Effect.succeed(rows[0])
          )
        )
      )

    const open: Artifacts["Type"]["open"] = (jobId, name, range) =>
      Effect.gen(function* () {
        const found = yield* row(jobId, name)
        const key = yield* Effect.mapError(
          Storage.checkedKey(tenant, found.storage_key.slice(tenant.length + 1)),
          storageUnavailable
        )
        const download = yield* storage.get(key, range).pipe(
          Effect.catchTags({
            ObjectNotFound: () =>
              Effect.fail(
                new ArtifactNotFound({
                  jobId,
                  name,
                  message: `the content of artifact ${JSON.stringify(name)} of job ${jobId} is gone from storage`
                })
              ),
            StorageError: (error) => Effect.fail(storageUnavailable(error))
          })
        )
        return { info: toInfo(found), download }
      })

    const prune: Artifacts["Type"]["prune"] = (cutoff) =>
      Effect.gen(function* () {
        const rows = yield* sql<{ readonly storage_key: string }>`
          SELECT a.storage_key FROM job_artifacts a JOIN jobs j ON j.id = a.job_id
          WHERE j.finished_at < ${cutoff} AND j.status NOT IN ('queued', 'running', 'retrying')
        `.pipe(Effect.mapError(unavailable))
        let deleted = 0
        for (const { storage_key } of rows) {
          const key = Storage.key(tenant, storage_key.slice(tenant.length + 1))
          if (key._tag === "Left") continue
          const gone = yield* Effect.either(storage.delete(key.right))
          if (gone._tag === "Right") deleted++
        }
        return deleted
      })

    return Artifacts.of({
      collect,
      list,
      get: (jobId, name) => Effect.map(row(jobId, name), toInfo),
      open,
      prune
    })
  })
)

/** The bytes of an artifact from `offset` on, as one stream. */
export const stream = (
  artifacts: Artifacts["Type"],
  jobId: string,
  name: string,
  offset: number
): Stream.Stream<Uint8Array, ArtifactError> =>
  Stream.unwrapScoped(
    artifacts.open(jobId, name, offset > 0 ? { start: offset } : undefined).pipe(
      Effect.map(({ download }) => Stream.mapError(download.body, storageUnavailable)),
      Effect.catchTag("InvalidRange", (error) =>
        Effect.fail(
          new InvalidArtifactRequest({
            message: `offset ${offset} is past the end of ${JSON.stringify(name)} (${error.size} bytes)`
          })
        )
      )
    )
  )
