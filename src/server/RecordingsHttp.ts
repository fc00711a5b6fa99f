/**
 * The session recordings REST API:
 *
 * - `POST /api/sessions/:id/export`: writes the session's history as asciicast v2 to storage;
 *   201 and the recording (`name`, `size`, `sha256`, `createdAt`);
 * - `GET /api/sessions/:id/recordings/:name`: the recording, streamed, as
 *   `application/x-asciicast`.
 *
 * Errors are JSON `{ error, message }`: 400 for bad input, 404 for an unknown session or
 * recording, 503 when the log or the storage cannot be reached.
 */
import { Effect, Either, Schema } from "effect"
import * as HttpRouter from "@effect/platform/HttpRouter"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import { RecordingInfo, RecordingName, type RecordingError } from "../../rpc/Recordings.js"
import { SessionId } from "../../rpc/Sessions.js"
import { Recordings } from "../../actors/session/Recordings.js"
import { securityHeaders } from "../../infra/net/Headers.js"
import { badRequest, formatIssue, json } from "./JsonApi.js"

const failure = (error: RecordingError) =>
  json(error._tag === "SessionNotFound" || error._tag === "RecordingNotFound" ? 404 : 503, {
    error: error._tag,
    message: error.message
  })

const encodeInfo = Schema.encodeSync(RecordingInfo)

const decode = <A, I>(schema: Schema.Schema<A, I>, raw: string | undefined) =>
  Either.mapLeft(Schema.decodeUnknownEither(schema)(raw ?? ""), formatIssue)

const exportCast = Effect.gen(function* () {
  const params = yield* HttpRouter.params
  const recordings = yield* Recordings
  const id = decode(SessionId, params["id"])
  if (Either.isLeft(id)) return badRequest(id.left)
  return yield* recordings
    .export(id.right)
    .pipe(Effect.match({ onFailure: failure, onSuccess: (info) => json(201, encodeInfo(info)) }))
})

const download = Effect.gen(function* () {
  const params = yield* HttpRouter.params
  const recordings = yield* Recordings
  const id = decode(SessionId, params["id"])
  if (Either.isLeft(id)) return badRequest(id.left)
  const name = decode(RecordingName, params["name"])
  if (Either.isLeft(name)) return badRequest(name.left)
  const opened = yield* Effect.either(recordings.download(id.right, name.right))
  if (Either.isLeft(opened)) return failure(opened.left)
  return HttpServerResponse.stream(opened.right.body, {
    contentType: "application/x-asciicast",
    contentLength: opened.right.size,
    headers: { ...securityHeaders, "content-disposition": `attachment; filename="${name.right}"` }
  })
})

/** Every recordings route's handler, by method and path, and whether it may stream for long. */
export const handlers = [
  ["POST", "/api/sessions/:id/export", exportCast, false],
  ["GET", "/api/sessions/:id/recordings/:name", download, true]
] as const
