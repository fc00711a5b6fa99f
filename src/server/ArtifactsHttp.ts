/**
 * The artifacts REST API:
 *
 * - `GET /api/jobs/:id/artifacts`: the job's artifacts (`name`, `size`, `sha256`, `createdAt`);
 * - `GET /api/jobs/:id/artifact?name=NAME`: one artifact's bytes, streamed (never held whole),
 *   with `content-length`, `x-content-sha256`, and a single `Range` (`bytes=S-E`, `bytes=S-`,
 *   `bytes=-N`) answered with 206, or 416 when it lies past the end.
 *
 * Errors are JSON `{ error, message }`: 400 for bad input, 404 for an unknown job or artifact, 503
 * when the job store or the storage cannot be reached.
 */
import { Effect, Either, Schema, Stream } from "effect"
import * as HttpRouter from "@effect/platform/HttpRouter"
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import { type ArtifactError, ArtifactInfo, ArtifactName } from "../../rpc/Artifacts.js"
import { JobId } from "../../rpc/Jobs.js"
import * as Artifacts from "../../actors/job/Artifacts.js"
import { securityHeaders } from "../../infra/net/Headers.js"
import { badRequest, formatIssue, json } from "./JsonApi.js"

const statusOf = (error: ArtifactError) =>
  error._tag === "JobNotFound" || error._tag === "ArtifactNotFound"
    ? 404
    : error._tag === "InvalidArtifactRequest"
      ? 400
      : 503

const failure = (error: ArtifactError) => json(statusOf(error), { error: error._tag, message: error.message })

const encodeInfos = Schema.encodeSync(Schema.Array(ArtifactInfo))

const decodeId = (raw: string | undefined) =>
  Either.mapLeft(Schema.decodeUnknownEither(JobId)(raw ?? ""), formatIssue)

/** The inclusive byte range a `Range` header asks of `size` bytes: none (all), or unsatisfiable. */
export const parseRange = (
  header: string | undefined,
  size: number
):
  | { readonly _tag: "All" }
  | { readonly _tag: "Part"; start: number; end: number }
  | { readonly _tag: "Unsatisfiable" } => {
  if (header === undefined) return { _tag: "All" }
  const match = /^bytes=(\d{0,15})-(\d{0,15})$/.exec(header.trim())
  // Several ranges, or another unit: answered whole, as RFC 9110 allows.
  if (match === null || (match[1] === "" && match[2] === "")) return { _tag: "All" }
  const [, rawStart = "", rawEnd = ""] = match
  if (rawStart === "") {
    const suffix = Number(rawEnd)
    if (suffix === 0 || size === 0) return { _tag: "Unsatisfiable" }
    return { _tag: "Part", start: Math.max(0, size - suffix), end: size - 1 }
  }
  const start = Number(rawStart)
  const end = rawEnd === "" ? size - 1 : Math.min(Number(rawEnd), size - 1)
  if (start >= size || end < start) return { _tag: "Unsatisfiable" }
  return { _tag: "Part", start, end }
}

const list = Effect.gen(function* () {
  const params = yield* HttpRouter.params
  const artifacts = yield* Artifacts.Artifacts
  const id = decodeId(params["id"])
  if (Either.isLeft(id)) return badRequest(id.left)
  return yield* artifacts
    .list(id.right)
    .pipe(Effect.match({ onFailure: failure, onSuccess: (infos) => json(200, encodeInfos(infos)) }))
})

const download = Effect.gen(function* () {
  const request = yield* HttpServerRequest.HttpServerRequest
  const params = yield* HttpRouter.params
  const artifacts = yield* Artifacts.Artifacts
  const id = decodeId(params["id"])
  if (Either.isLeft(id)) return badRequest(id.left)
  const rawName = new URL(request.url, "http://localhost").searchParams.get("name")
  const name = Either.mapLeft(Schema.decodeUnknownEither(ArtifactName)(rawName ?? ""), formatIssue)
  if (Either.isLeft(name)) return badRequest(`name: ${name.left}`)
  const info = yield* Effect.either(artifacts.get(id.right, name.right))
  if (Either.isLeft(info)) return failure(info.left)
  const size = info.right.size
  const range = parseRange(request.headers["range"], size)
  if (range._tag === "Unsatisfiable") {
    return HttpServerResponse.unsafeJson(
      { error: "RangeNotSatisfiable", message: `the artifact has ${size} bytes` },
      { status: 416, headers: { ...securityHeaders, "content-range": `bytes */${size}` } }
    )
  }
  const start = range._tag === "Part" ? range.start : 0
  const end = range._tag === "Part" ? range.end : size - 1
  const body = Stream.unwrapScoped(
    Effect.map(
      artifacts.open(id.right, name.right, range._tag === "Part" ? { start, end } : undefined),
      ({ download }) => download.body
    )
  )
  const base = name.right.split("/").pop() ?? "artifact"
  return HttpServerResponse.stream(body, {
    status: range._tag === "Part" ? 206 : 200,
    contentType: "application/octet-stream",
    contentLength: end - start + 1,
    headers: {
      ...securityHeaders,
      "accept-ranges": "bytes",
      "x-content-sha256": info.right.sha256,
      "content-disposition": `attachment; filename*=UTF-8''${encodeURIComponent(base)}`,
      ...(range._tag === "Part" ? { "content-range": `bytes ${start}-${end}/${size}` } : {})
    }
  })
})

/** Every artifacts route's handler, by method and path, and whether it may stream for long. */
export const handlers = [
  ["GET", "/api/jobs/:id/artifacts", list, false],
  ["GET", "/api/jobs/:id/artifact", download, true]
] as const
