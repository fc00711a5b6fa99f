/**
 * The workspaces and git REST API, for scripts:
 *
 * - `GET /api/workspaces`, `POST /api/workspaces` (an `AddWorkspace`: 201), `GET` and
 *   `DELETE /api/workspaces/:name[?force=1]`, `GET /api/workspaces/:name/worktrees`;
 * - `GET /api/git/status|branches|log|diff` with the target in the query (`workspace` and
 *   `branch`, or `session`, or `job`) and the call's parameters (`offset`, `limit`, `ref`,
 *   `against`, `base`), answered as the `Git` RPCs answer.
 *
 * Errors are JSON `{ error, message, field? }` with the status of `statusOf`.
 */
import { Effect, Either, Schema } from "effect"
import * as HttpRouter from "@effect/platform/HttpRouter"
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import type * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import {
  BranchInfo,
  CommitInfo,
  DiffPage,
  DiffRequest,
  GitStatus,
  GitTarget,
  LogRequest,
  maxPageSize
} from "../../rpc/Git.js"
import { AddWorkspace, type WorkspaceError, WorkspaceInfo, WorktreeInfo } from "../../rpc/Workspaces.js"
import { GitService } from "../../actors/workspace/GitService.js"
import { Workspaces } from "../../actors/workspace/Workspaces.js"
import { badRequest, formatIssue, json, jsonBody, refuse } from "./JsonApi.js"

/** 404 unknown, 400 bad input, 409 a conflict with what is there, 422 git refused, 503 unavailable. */
export const statusOf = (error: WorkspaceError): number => {
  switch (error._tag) {
    case "WorkspaceNotFound":
      return 404
    case "InvalidWorkspaceRequest":
    case "InvalidBranchName":
    case "NotARepository":
      return 400
    case "WorkspaceExists":
    case "PathInUse":
    case "WorktreeDirty":
    case "GitConflict":
    case "NothingToCommit":
      return 409
    case "GitRefused":
      return 422
    case "WorkspacesUnavailable":
      return 503
  }
}

const failure = (error: WorkspaceError) =>
  json(statusOf(error), {
    error: error._tag,
    message: error.message,
    ...(error._tag === "InvalidWorkspaceRequest" ? { field: error.field } : {})
  })

const answer = <A, R>(
  call: Effect.Effect<A, WorkspaceError, R>,
  ok: (value: A) => HttpServerResponse.HttpServerResponse
) => Effect.match(call, { onFailure: failure, onSuccess: ok })

/** The largest JSON body accepted: a workspace to add. */
const maxBodyBytes = 64 * 1024

/** The query decoded with `schema`: numbers from their digits, unknown parameters refused. */
const fromQuery = <A, I>(schema: Schema.Schema<A, I>) =>
  Effect.map(HttpServerRequest.HttpServerRequest, (request) => {
    const raw: Record<string, unknown> = {}
    for (const [key, value] of new URL(request.url, "http://localhost").searchParams) {
      raw[key] = ["offset", "limit"].includes(key) && /^\d{1,15}$/.test(value) ? Number(value) : value
    }
    return Either.mapLeft(Schema.decodeUnknownEither(schema)(raw, { onExcessProperty: "error" }), (error) =>
      formatIssue(error)
    )
  })

const nameParam = Effect.map(HttpRouter.params, (params) => params["name"] ?? "")

const encodeInfo = Schema.encodeSync(WorkspaceInfo)

const list = Effect.flatMap(Workspaces, (workspaces) =>
  answer(workspaces.list, (infos) =>
    json(
      200,
      infos.map((info) => encodeInfo(info))
    )
  )
)

const add = Effect.gen(function* () {
  const workspaces = yield* Workspaces
  const body = yield* jsonBody(AddWorkspace, maxBodyBytes)
  if (Either.isLeft(body)) return refuse(body.left)
  return yield* answer(workspaces.add(body.right), (info) => json(201, encodeInfo(info)))
})

const get = Effect.gen(function* () {
  const workspaces = yield* Workspaces
  return yield* answer(workspaces.get(yield* nameParam), (info) => json(200, encodeInfo(info)))
})

const remove = Effect.gen(function* () {
  const workspaces = yield* Workspaces
  const query = yield* fromQuery(
    Schema.Struct({ force: Schema.optional(Schema.Literal("1", "true", "0", "false")) })
  )
  if (Either.isLeft(query)) return badRequest(query.left)
  const force = query.right.force === "1" || query.right.force === "true"
  return yield* answer(workspaces.remove(yield* nameParam, force), (info) => json(200, encodeInfo(info)))
})

const worktrees = Effect.gen(function* () {
  const workspaces = yield* Workspaces
  return yield* answer(workspaces.worktrees(yield* nameParam), (rows) =>
    json(200, Schema.encodeSync(Schema.Array(WorktreeInfo))(rows))
  )
})

const PagedTarget = Schema.Struct({
  ...GitTarget,
  offset: Schema.optional(Schema.NonNegativeInt),
  limit: Schema.optional(Schema.Int.pipe(Schema.between(1, maxPageSize)))
})

const status = Effect.gen(function* () {
  const git = yield* GitService
  const query = yield* fromQuery(PagedTarget)
  if (Either.isLeft(query)) return badRequest(query.left)
  const { offset = 0, limit = 1000 } = query.right
  return yield* answer(git.status(query.right, offset, limit), (result) =>
    json(200, Schema.encodeSync(GitStatus)(result))
  )
})

const branches = Effect.gen(function* () {
  const git = yield* GitService
  const query = yield* fromQuery(PagedTarget)
  if (Either.isLeft(query)) return badRequest(query.left)
  const { offset = 0, limit = 1000 } = query.right
  return yield* answer(git.branches(query.right, offset, limit), (result) =>
    json(200, Schema.encodeSync(Schema.Array(BranchInfo))(result))
  )
})

const log = Effect.gen(function* () {
  const git = yield* GitService
  const query = yield* fromQuery(LogRequest)
  if (Either.isLeft(query)) return badRequest(query.left)
  const request = query.right
  return yield* answer(git.log(request, request.ref, request.offset, request.limit), (result) =>
    json(200, Schema.encodeSync(Schema.Array(CommitInfo))(result))
  )
})

const diff = Effect.gen(function* () {
  const git = yield* GitService
  const query = yield* fromQuery(DiffRequest)
  if (Either.isLeft(query)) return badRequest(query.left)
  return yield* answer(git.diff(query.right), (result) => json(200, Schema.encodeSync(DiffPage)(result)))
})

/** Every workspace and git route's handler, by method and path; the caller checks credentials first. */
export const handlers: ReadonlyArray<
  readonly [
    "GET" | "POST" | "DELETE",
    `/api/${string}`,
    Effect.Effect<
      HttpServerResponse.HttpServerResponse,
      never,
      Workspaces | GitService | HttpServerRequest.HttpServerRequest | HttpRouter.RouteContext
    >
  ]
> = [
  ["GET", "/api/workspaces", list],
  ["POST", "/api/workspaces", add],
  ["GET", "/api/workspaces/:name", get],
  ["DELETE", "/api/workspaces/:name", remove],
  ["GET", "/api/workspaces/:name/worktrees", worktrees],
  ["GET", "/api/git/status", status],
  ["GET", "/api/git/branches", branches],
  ["GET", "/api/git/log", log],
  ["GET", "/api/git/diff", diff]
]
