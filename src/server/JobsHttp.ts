/**
 * The jobs REST API, for scripts and browsers:
 *
 * - `GET  /api/jobs?limit=N&status=S`: newest first, N from 1 to 1000 (default 50);
 * - `GET  /api/jobs/:id`;
 * - `GET  /api/jobs/:id/logs[?after=SEQ]`: the stored output as JSON; with `follow=1`,
 *   Server-Sent Events (`log`, `progress`, `done`; the event id is the sequence number, so
 *   `Last-Event-ID` resumes exactly);
 * - `POST /api/jobs` with a job spec: 201 and the job;
 * - `POST /api/jobs/cancel` with `{ "jobId": … }`.
 *
 * Errors are JSON `{ error, message }` (and `field`, naming a refused field of a job spec): 400 for
 * bad input, 413 for a body over `maxBodyBytes`, 404 for an unknown job, 503 when the store cannot
 * be reached.
 */
import { Chunk, type Duration, Effect, Either, Option, Schema, Stream } from "effect"
import * as HttpRouter from "@effect/platform/HttpRouter"
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import { JobId, JobInfo, type JobError, JobOutput, JobSpec, JobStatus, maxListLimit } from "../../rpc/Jobs.js"
import { Jobs } from "../../actors/job/Jobs.js"
import { sseHeaders } from "../../infra/net/Headers.js"
import type { WorkspaceError } from "../../rpc/Workspaces.js"
import * as WorkspacesHttp from "./WorkspacesHttp.js"
import { badRequest, formatIssue, json, jsonBody, refuse } from "./JsonApi.js"

/** The largest request body accepted, in bytes. */
export const maxBodyBytes = 1024 * 1024

const statusOf = (error: JobError | WorkspaceError) =>
  error._tag === "JobNotFound"
    ? 404
    : error._tag === "InvalidJobRequest"
      ? 400
      : error._tag === "JobsUnavailable"
        ? 503
        : WorkspacesHttp.statusOf(error)

const failure = (error: JobError | WorkspaceError) =>
  json(statusOf(error), {
    error: error._tag,
    message: error.message,
    ...((error._tag === "InvalidJobRequest" || error._tag === "InvalidWorkspaceRequest") &&
    error.field !== undefined
      ? { field: error.field }
      : {})
  })

const encodeInfo = Schema.encodeSync(JobInfo)
const encodeInfos = Schema.encodeSync(Schema.Array(JobInfo))
const encodeOutput = Schema.encodeSync(JobOutput)

const decodeId = (raw: string | undefined) =>
  Either.mapLeft(Schema.decodeUnknownEither(JobId)(raw ?? ""), formatIssue)

const body = <A, I>(schema: Schema.Schema<A, I>) => jsonBody(schema, maxBodyBytes)

const list = Effect.gen(function* () {
  const request = yield* HttpServerRequest.HttpServerRequest
  const jobs = yield* Jobs
  const query = new URL(request.url, "http://localhost").searchParams
  const rawLimit = query.get("limit")
  const limit = rawLimit === null ? 50 : Number(rawLimit)
  if (!/^\d+$/.test(rawLimit ?? "50") || limit < 1 || limit > maxListLimit) {
    return badRequest(
      `limit must be an integer from 1 to ${maxListLimit}, not ${JSON.stringify((rawLimit ?? "").slice(0, 40))}`
    )
  }
  const rawStatus = query.get("status")
  const status =
    rawStatus === null
      ? Either.right(Option.none())
      : Either.map(Schema.decodeUnknownEither(JobStatus)(rawStatus), Option.some)
  if (Either.isLeft(status)) {
    return badRequest(
      `status must be one of ${JobStatus.literals.join(", ")}, not ${JSON.stringify((rawStatus ?? "").slice(0, 40))}`
    )
  }
  return yield* jobs
    .list(limit, status.right)
    .pipe(Effect.match({ onFailure: failure, onSuccess: (infos) => json(200, encodeInfos(infos)) }))
})

const get = Effect.gen(function* () {
  const params = yield* HttpRouter.params
  const jobs = yield* Jobs
  const id = decodeId(params["id"])
  if (Either.isLeft(id)) return badRequest(id.left)
  return yield* jobs
    .get(id.right)
    .pipe(Effect.match({ onFailure: failure, onSuccess: (info) => json(200, encodeInfo(info)) }))
})

const frame = (output: JobOutput): string => {
  const data = JSON.stringify(encodeOutput(output))
  switch (output._tag) {
    case "JobLog":
      return `id: ${output.seq}\nevent: log\ndata: ${data}\n\n`
    case "JobProgress":
      return `event: progress\ndata: ${data}\n\n`
    case "JobDone":
      return `event: done\ndata: ${data}\n\n`
  }
}

const logs = (heartbeat: Duration.Duration) =>
  Effect.gen(function* () {
    const request = yield* HttpServerRequest.HttpServerRequest
    const params = yield* HttpRouter.params
    const jobs = yield* Jobs
    const id = decodeId(params["id"])
    if (Either.isLeft(id)) return badRequest(id.left)
    const query = new URL(request.url, "http://localhost").searchParams
    const follow = ["1", "true", "yes"].includes(query.get("follow") ?? "")
    const rawAfter = query.get("after") ?? request.headers["last-event-id"] ?? "0"
    if (!/^\d{1,15}$/.test(rawAfter)) {
      return badRequest(`after must be a sequence number, not ${JSON.stringify(rawAfter.slice(0, 40))}`)
    }
    const after = Number(rawAfter)
    // Unknown ids answer 404 before any stream starts.
    const info = yield* Effect.either(jobs.get(id.right))
    if (Either.isLeft(info)) return failure(info.left)
    if (!follow) {
      const collected = yield* Stream.runCollect(jobs.logs(id.right, after, false)).pipe(Effect.either)
      if (Either.isLeft(collected)) return failure(collected.left)
      return json(200, {
        job: encodeInfo(info.right),
        logs: Chunk.toReadonlyArray(collected.right).map((output) => encodeOutput(output))
      })
    }
    const encoder = new TextEncoder()
    const events = jobs.logs(id.right, after, true).pipe(
      Stream.map(frame),
      Stream.catchAll((error) =>
        Stream.succeed(
          `event: error\ndata: ${JSON.stringify({ error: error._tag, message: error.message })}\n\n`
        )
      )
    )
    const beats = Stream.tick(heartbeat).pipe(Stream.drop(1), Stream.as(": heartbeat\n\n"))
    const stream = Stream.concat(Stream.succeed("retry: 1000\n: connected\n\n"), events).pipe(
      Stream.merge(beats, { haltStrategy: "left" }),
      Stream.map((text) => encoder.encode(text))
    )
    return HttpServerResponse.stream(stream, {
      contentType: "text/event-stream; charset=utf-8",
      headers: sseHeaders
    })
  })

const submit = Effect.gen(function* () {
  const jobs = yield* Jobs
  const spec = yield* body(JobSpec)
  if (Either.isLeft(spec)) return refuse(spec.left)
  return yield* jobs
    .submit(spec.right)
    .pipe(Effect.match({ onFailure: failure, onSuccess: (info) => json(201, encodeInfo(info)) }))
})

const cancel = Effect.gen(function* () {
  const jobs = yield* Jobs
  const request = yield* body(Schema.Struct({ jobId: JobId }))
  if (Either.isLeft(request)) return refuse(request.left)
  return yield* jobs
    .cancel(request.right.jobId)
    .pipe(Effect.match({ onFailure: failure, onSuccess: (info) => json(200, encodeInfo(info)) }))
})

/**
 * Every jobs route's handler, by method and path, and whether it may stream for long (it then
 * holds one of the client's stream slots); the caller checks credentials first.
 */
export const handlers = (heartbeat: Duration.Duration) =>
  [
    ["GET", "/api/jobs", list, false],
    ["GET", "/api/jobs/:id", get, false],
    ["GET", "/api/jobs/:id/logs", logs(heartbeat), true],
    ["POST", "/api/jobs", submit, false],
    ["POST", "/api/jobs/cancel", cancel, false]
  ] as const
