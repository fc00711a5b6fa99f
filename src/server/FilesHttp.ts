/**
 * The files REST API, for scripts and browsers. The target is in the query (`workspace` and
 * `branch`, or `session`, or `job`), with `path` relative to its root:
 *
 * - `GET /api/files?path=&offset=&limit=`: a directory page; `GET /api/files/stat?path=`;
 * - `GET /api/files/download?path=`: the file's bytes, streamed (`Range: bytes=A-B` answers 206);
 * - `PUT /api/files/upload?path=[&overwrite=1]`: the body, streamed to a temporary file beside it
 *   and renamed into place when complete; at most `maxUploadBytes` (413 past it, nothing kept);
 *   201 with the file and the SHA-256 of what was written;
 * - `POST /api/files/mkdir|rename|delete` with the `Files` RPC's payload as JSON.
 *
 * Errors are JSON `{ error, message, field?, reason? }`: 400 for a refused path or bad input, 404
 * nothing there, 409 something there, 413 too large, and the workspace errors' statuses.
 */
import { Effect, Either, Exit, Schema, Scope, Stream } from "effect"
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import type * as HttpRouter from "@effect/platform/HttpRouter"
import { GitTarget } from "../../rpc/Git.js"
import {
  DeleteFile,
  DirectoryPage,
  FileEntry,
  type FilesError,
  ListFiles,
  MakeDirectory,
  maxUploadBytes,
  RenameFile
} from "../../rpc/Files.js"
import { Files } from "../../actors/workspace/Files.js"
import { securityHeaders } from "../../infra/net/Headers.js"
import { badRequest, formatIssue, json, jsonBody, refuse } from "./JsonApi.js"
import * as WorkspacesHttp from "./WorkspacesHttp.js"

const statusOf = (error: FilesError): number => {
  switch (error._tag) {
    case "PathRefused":
    case "InvalidFileRequest":
      return 400
    case "FileNotFound":
      return 404
    case "FileExists":
      return 409
    case "FileTooLarge":
      return 413
    case "FilesUnavailable":
      return 503
    default:
      return WorkspacesHttp.statusOf(error)
  }
}

const failure = (error: FilesError) =>
  json(statusOf(error), {
    error: error._tag,
    message: error.message,
    ...("field" in error ? { field: error.field } : {}),
    ...(error._tag === "PathRefused" ? { reason: error.reason } : {})
  })

const answer = <A, R>(
  call: Effect.Effect<A, FilesError, R>,
  ok: (value: A) => HttpServerResponse.HttpServerResponse
) => Effect.match(call, { onFailure: failure, onSuccess: ok })

/** The query decoded with `schema`: numbers from their digits, unknown parameters refused. */
const fromQuery = <A, I>(schema: Schema.Schema<A, I>) =>
  Effect.map(HttpServerRequest.HttpServerRequest, (request) => {
    const raw: Record<string, unknown> = {}
    for (const [key, value] of new URL(request.url, "http://localhost").searchParams) {
      raw[key] = ["offset", "limit"].includes(key) && /^\d{1,15}$/.test(value) ? Number(value) : value
    }
    return Either.mapLeft(Schema.decodeUnknownEither(schema)(raw, { onExcessProperty: "error" }), formatIssue)
  })

const PathQuery = Schema.Struct({ ...GitTarget, path: Schema.String })
const UploadQuery = Schema.Struct({
  ...GitTarget,
  path: Schema.String,
  overwrite: Schema.optional(Schema.Literal("1", "true", "0", "false"))
})

const encodeEntry = Schema.encodeSync(FileEntry)

const list = Effect.gen(function* () {
  const files = yield* Files
  const query = yield* fromQuery(ListFiles)
  if (Either.isLeft(query)) return badRequest(query.left)
  const request = query.right
  return yield* answer(files.list(request, request.path, request.offset, request.limit), (page) =>
    json(200, Schema.encodeSync(DirectoryPage)(page))
  )
})

const stat = Effect.gen(function* () {
  const files = yield* Files
  const query = yield* fromQuery(PathQuery)
  if (Either.isLeft(query)) return badRequest(query.left)
  return yield* answer(files.stat(query.right, query.right.path), (entry) => json(200, encodeEntry(entry)))
})

/** `bytes=A-B`, `bytes=A-` or `bytes=-N` of a file of `size`; undefined when unsatisfiable. */
const rangeOf = (
  header: string,
  size: number
): { readonly start: number; readonly end: number } | undefined => {
  const match = /^bytes=(\d*)-(\d*)$/.exec(header.trim())
  if (match === null || (match[1] === "" && match[2] === "")) return undefined
  if (match[1] === "") {
    const suffix = Number(match[2])
    return suffix === 0 ? undefined : { start: Math.max(0, size - suffix), end: size - 1 }
  }
  const start = Number(match[1])
  const end = match[2] === "" ? size - 1 : Math.min(size - 1, Number(match[2]))
  return start > end || start >= size ? undefined : { start, end }
}

const download = Effect.gen(function* () {
  const files = yield* Files
  const request = yield* HttpServerRequest.HttpServerRequest
  const query = yield* fromQuery(PathQuery)
  if (Either.isLeft(query)) return badRequest(query.left)
  // The file stays open until its bytes are sent (or the client goes).
  const scope = yield* Scope.make()
  const opened = yield* Effect.either(files.download(query.right, query.right.path).pipe(Scope.extend(scope)))
  if (Either.isLeft(opened)) {
    yield* Scope.close(scope, Exit.void)
    return failure(opened.left)
  }
  const file = opened.right
  const header = request.headers["range"]
  const range = header === undefined ? { start: 0, end: file.size - 1 } : rangeOf(header, file.size)
  if (range === undefined) {
    yield* Scope.close(scope, Exit.void)
    return HttpServerResponse.empty({
      status: 416,
      headers: { ...securityHeaders, "content-range": `bytes */${file.size}` }
    })
  }
  const length = Math.max(0, range.end - range.start + 1)
  const body = (length === 0 ? Stream.empty : file.bytes(range.start, range.end)).pipe(
    Stream.ensuring(Scope.close(scope, Exit.void))
  )
  return HttpServerResponse.stream(body, {
    status: header === undefined ? 200 : 206,
    contentType: "application/octet-stream",
    contentLength: length,
    headers: {
      ...securityHeaders,
      "accept-ranges": "bytes",
      "content-disposition": `attachment; filename*=UTF-8''${encodeURIComponent(file.name)}`,
      ...(header === undefined ? {} : { "content-range": `bytes ${range.start}-${range.end}/${file.size}` })
    }
  })
})

const upload = Effect.gen(function* () {
  const files = yield* Files
  const request = yield* HttpServerRequest.HttpServerRequest
  const query = yield* fromQuery(UploadQuery)
  if (Either.isLeft(query)) return badRequest(query.left)
  if (Number(request.headers["content-length"] ?? "0") > maxUploadBytes) {
    return json(413, {
      error: "FileTooLarge",
      message: `the upload is larger than the limit of ${maxUploadBytes} bytes`
    })
  }
  const overwrite = query.right.overwrite === "1" || query.right.overwrite === "true"
  return yield* answer(
    files.upload(query.right, query.right.path, request.stream, { overwrite, maxBytes: maxUploadBytes }),
    (written) => json(201, { ...encodeEntry(written.entry), sha256: written.sha256 })
  )
})

const maxJsonBytes = 64 * 1024

const mkdir = Effect.gen(function* () {
  const files = yield* Files
  const body = yield* jsonBody(MakeDirectory, maxJsonBytes)
  if (Either.isLeft(body)) return refuse(body.left)
  return yield* answer(files.mkdir(body.right, body.right.path, body.right.parents), (entry) =>
    json(201, encodeEntry(entry))
  )
})

const rename = Effect.gen(function* () {
  const files = yield* Files
  const body = yield* jsonBody(RenameFile, maxJsonBytes)
  if (Either.isLeft(body)) return refuse(body.left)
  const { from, to, overwrite } = body.right
  return yield* answer(files.rename(body.right, from, to, overwrite), (entry) =>
    json(200, encodeEntry(entry))
  )
})

const remove = Effect.gen(function* () {
  const files = yield* Files
  const body = yield* jsonBody(DeleteFile, maxJsonBytes)
  if (Either.isLeft(body)) return refuse(body.left)
  return yield* answer(files.remove(body.right, body.right.path, body.right.recursive), () =>
    HttpServerResponse.empty({ status: 204, headers: securityHeaders })
  )
})

/** Every files route's handler, by method and path; the caller checks credentials first. */
export const handlers: ReadonlyArray<
  readonly [
    "GET" | "POST" | "PUT",
    `/api/${string}`,
    Effect.Effect<
      HttpServerResponse.HttpServerResponse,
      never,
      Files | HttpServerRequest.HttpServerRequest | HttpRouter.RouteContext
    >
  ]
> = [
  ["GET", "/api/files", list],
  ["GET", "/api/files/stat", stat],
  ["GET", "/api/files/download", download],
  ["PUT", "/api/files/upload", upload],
  ["POST", "/api/files/mkdir", mkdir],
  ["POST", "/api/files/rename", rename],
  ["POST", "/api/files/delete", remove]
]
