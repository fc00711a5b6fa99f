/**
 * The workspaces of the cluster (`vibes_workspaces`): git repositories on a server's disk that
 * sessions and jobs can work in, each on a worktree and branch of its own. Registering checks the
 * repository with git itself; removing takes the worktrees vibes made with it, never uncommitted
 * work unless forced, never a branch.
 *
 * Git operations that touch a repository's shared refs and worktree list run one at a time per
 * repository (`RepoLock`): in this process, and across nodes through a Postgres advisory lock.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { Context, DateTime, Effect, Layer, Option, Schema } from "effect"
import { SqlClient } from "@effect/sql/SqlClient"
import { SqlError } from "@effect/sql/SqlError"
import {
  type AddWorkspace,
  ClosePolicy,
  GitRefused,
  InvalidBranchName,
  InvalidWorkspaceRequest,
  NotARepository,
  PathInUse,
  WorkspaceExists,
  WorkspaceInfo,
  WorkspaceName,
  WorkspaceNotFound,
  WorkspacesUnavailable,
  WorktreeDirty
} from "../../rpc/Workspaces.js"
import { uuidv7 } from "../../infra/eventlog/EventLog.js"
import { Git, type GitFailed, isValidBranch } from "../../infra/git/Git.js"

/** The tenant of every workspace until principals carry one. */
export const defaultTenant = "default"

const DbRow = Schema.Struct({
  id: Schema.String,
  name: Schema.String,
  path: Schema.String,
  default_branch: Schema.String,
  worktrees_dir: Schema.String,
  close_policy: ClosePolicy,
  created_at: Schema.DateFromSelf
})
const decodeRows = Schema.decodeUnknown(Schema.Array(DbRow))

const toInfo = (row: typeof DbRow.Type): WorkspaceInfo =>
  WorkspaceInfo.make({
    id: row.id,
    name: row.name,
    path: row.path,
    defaultBranch: row.default_branch,
    worktreesDir: row.worktrees_dir,
    closePolicy: row.close_policy,
    createdAt: DateTime.unsafeFromDate(row.created_at)
  })

/** The store failed; nothing was changed. */
export const unavailable = (error: SqlError | { readonly message: string }) =>
  new WorkspacesUnavailable({ message: `the workspace store is unavailable: ${error.message}` })

/** git refused; its message, as the client's error. */
export const refused = (error: GitFailed) => new GitRefused({ message: error.message })

/** The real path of `p`, or none when nothing is there. */
export const realPath = (p: string): Effect.Effect<Option.Option<string>> =>
  Effect.promise(() =>
    fs.promises.realpath(p).then(
      (real) => Option.some(real),
      () => Option.none()
    )
  )

/** Whether `child` is `parent` or below it. */
export const isWithin = (parent: string, child: string) => {
  const relative = path.relative(parent, child)
  return relative === "" || (!relative.startsWith("..") && !path.isAbsolute(relative))
}

/** Serializes git operations on one repository, in this process and across the cluster. */
export class RepoLock extends Context.Tag("vibes/RepoLock")<
  RepoLock,
  {
    /** Runs `effect` holding the lock of the repository of workspace `workspaceId`. */
    readonly with: <A, E, R>(
      workspaceId: string,
      effect: Effect.Effect<A, E, R>
    ) => Effect.Effect<A, E | WorkspacesUnavailable, R>
  }
>() {}

/** Advisory-lock class of repository locks (the first key of `pg_advisory_xact_lock(int, int)`). */
const lockClass = 0x76_69_62 // "vib"

/** The repository lock, on the node's database. */
export const repoLockLayer = Layer.effect(
  RepoLock,
  Effect.gen(function* () {
    const sql = yield* SqlClient
    const semaphores = new Map<string, Effect.Semaphore>()
    const semaphore = (id: string) => {
      let found = semaphores.get(id)
      if (found === undefined) {
        found = Effect.unsafeMakeSemaphore(1)
        semaphores.set(id, found)
      }
      return found
    }
    return RepoLock.of({
      with: <A, E, R>(workspaceId: string, effect: Effect.Effect<A, E, R>) =>
        semaphore(workspaceId).withPermits(1)(
          // The transaction holds the advisory lock until the git operation is done (and rolls back
          // what the operation wrote to the store when it fails).
          sql
            .withTransaction(
              Effect.zipRight(
                sql`SELECT pg_advisory_xact_lock(${lockClass}, hashtext(${workspaceId}))`,
                effect
              )
            )
            .pipe(Effect.mapError((error) => (error instanceof SqlError ? unavailable(error) : error)))
        )
    })
  })
)

/** The workspaces. */
export class Workspaces extends Context.Tag("vibes/Workspaces")<
  Workspaces,
  {
    readonly add: (
      request: AddWorkspace
    ) => Effect.Effect<
      WorkspaceInfo,
      | InvalidWorkspaceRequest
      | NotARepository
      | InvalidBranchName
      | WorkspaceExists
      | PathInUse
      | GitRefused
      | WorkspacesUnavailable
    >
    readonly list: Effect.Effect<ReadonlyArray<WorkspaceInfo>, WorkspacesUnavailable>
    /** The workspace of that name. */
    readonly get: (name: string) => Effect.Effect<WorkspaceInfo, WorkspaceNotFound | WorkspacesUnavailable>
    readonly remove: (
      name: string,
      force: boolean
    ) => Effect.Effect<
      WorkspaceInfo,
      WorkspaceNotFound | WorktreeDirty | PathInUse | GitRefused | WorkspacesUnavailable
    >
  }
>() {}

const isName = Schema.is(WorkspaceName)

const invalid = (field: string, message: string) => new InvalidWorkspaceRequest({ field, message })

/** The workspaces, on the node's database and git. */
export const layer = Layer.effect(
  Workspaces,
  Effect.gen(function* () {
    const sql = yield* SqlClient
    const git = yield* Git
    const lock = yield* RepoLock

    const byName = (name: string) =>
      Effect.flatMap(
        sql`SELECT * FROM vibes_workspaces WHERE tenant_id = ${defaultTenant} AND name = ${name}`,
        decodeRows
      ).pipe(
        Effect.mapError(unavailable),
        Effect.map((rows) => Option.map(Option.fromNullable(rows[0]), toInfo))
      )

    const get = (name: string) =>
      (isName(name) ? byName(name) : Effect.succeed(Option.none<WorkspaceInfo>())).pipe(
        Effect.flatMap(
          Option.match({
            onNone: () =>
              Effect.fail(
                new WorkspaceNotFound({
                  workspace: name,
                  message: `no workspace named ${JSON.stringify(name.slice(0, 100))} (vibes workspace ls lists them)`
                })
              ),
            onSome: Effect.succeed
          })
        )
      )

    const add = (request: AddWorkspace) =>
      Effect.gen(function* () {
        if (request.name !== undefined && !isName(request.name)) {
          return yield* invalid(
            "name",
            "name: a workspace name is 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit"
          )
        }
        if (!path.isAbsolute(request.path)) {
          return yield* invalid("path", `path must be absolute on the server, not ${request.path}`)
        }
        const notRepository = (why: string) =>
          new NotARepository({ path: request.path, message: `${request.path} ${why}` })
        const real = yield* realPath(request.path)
        if (Option.isNone(real)) return yield* notRepository("does not exist on the server")
        const top = yield* git
          .text(real.value, ["rev-parse", "--show-toplevel"])
          .pipe(Effect.mapError(() => notRepository("is not inside a git repository with a working tree")))
        const topReal = Option.getOrElse(yield* realPath(top), () => top)
        const [gitDir, commonDir] = (yield* git
          .text(topReal, ["rev-parse", "--path-format=absolute", "--git-dir", "--git-common-dir"])
          .pipe(Effect.mapError(refused))).split("\n")
        if (gitDir !== commonDir) {
          return yield* notRepository(
            `is a linked worktree of the repository at ${path.dirname(commonDir ?? "")}; add that one`
          )
        }
        let defaultBranch = request.defaultBranch
        if (defaultBranch === undefined) {
          const head = yield* git
            .text(topReal, ["symbolic-ref", "--quiet", "--short", "HEAD"])
            .pipe(Effect.option)
          if (Option.isNone(head)) {
            return yield* invalid(
              "defaultBranch",
              `the repository at ${topReal} has no branch checked out (HEAD is detached); name its default branch`
            )
          }
          defaultBranch = head.value
        } else if (!(yield* isValidBranch(git, defaultBranch))) {
          return yield* new InvalidBranchName({
            branch: defaultBranch,
            message: `git refuses ${JSON.stringify(defaultBranch.slice(0, 100))} as a branch name`
          })
        }
        let worktreesDir = `${topReal}.worktrees`
        if (request.worktreesDir !== undefined) {
          if (!path.isAbsolute(request.worktreesDir)) {
            return yield* invalid(
              "worktreesDir",
              `worktreesDir must be absolute, not ${request.worktreesDir}`
            )
          }
          worktreesDir = Option.getOrElse(yield* realPath(request.worktreesDir), () =>
            path.resolve(request.worktreesDir ?? "")
          )
        }
        if (isWithin(topReal, worktreesDir)) {
          return yield* invalid(
            "worktreesDir",
            `worktreesDir ${worktreesDir} is inside the repository; its worktrees would show as untracked files there`
          )
        }
        const name =
          request.name ??
          path
            .basename(topReal)
            .replace(/[^A-Za-z0-9_.-]/g, "-")
            .replace(/^[_.-]+/, "")
        if (!isName(name)) {
          return yield* invalid(
            "name",
            `the directory's name does not make a workspace name; give one with name`
          )
        }
        const taken = yield* Effect.flatMap(
          sql`SELECT * FROM vibes_workspaces WHERE tenant_id = ${defaultTenant} AND (name = ${name} OR path = ${topReal})`,
          decodeRows
        ).pipe(Effect.mapError(unavailable))
        const sameName = taken.find((row) => row.name === name)
        if (sameName !== undefined) {
          return yield* new WorkspaceExists({
            workspace: name,
            message: `a workspace named ${name} exists already (at ${sameName.path}); choose another name`
          })
        }
        const samePath = taken.find((row) => row.path === topReal)
        if (samePath !== undefined) {
          return yield* new PathInUse({
            path: topReal,
            message: `${topReal} is registered already, as workspace ${samePath.name}`
          })
        }
        const rows = yield* Effect.flatMap(
          sql`
            INSERT INTO vibes_workspaces (id, tenant_id, name, path, default_branch, worktrees_dir, close_policy)
            VALUES (${uuidv7()}, ${defaultTenant}, ${name}, ${topReal}, ${defaultBranch}, ${worktreesDir}, ${request.closePolicy})
            ON CONFLICT DO NOTHING
            RETURNING *
          `,
          decodeRows
        ).pipe(Effect.mapError(unavailable))
        const row = rows[0]
        if (row === undefined) {
          return yield* new WorkspaceExists({
            workspace: name,
            message: `a workspace named ${name} or at ${topReal} was added at the same time; list them and retry`
          })
        }
        return toInfo(row)
      }).pipe(Effect.withSpan("Workspaces.add"))

    const WorktreeRow = Schema.Struct({
      id: Schema.String,
      path: Schema.String,
      state: Schema.String,
      session_id: Schema.NullOr(Schema.String),
      job_id: Schema.NullOr(Schema.String)
    })

    const remove = (name: string, force: boolean) =>
      Effect.gen(function* () {
        const workspace = yield* get(name)
        return yield* lock.with(
          workspace.id,
          Effect.gen(function* () {
            const worktrees = yield* Effect.flatMap(
              sql`SELECT id, path, state, session_id, job_id FROM vibes_worktrees
                  WHERE workspace_id = ${workspace.id} AND state <> 'removed'`,
              Schema.decodeUnknown(Schema.Array(WorktreeRow))
            ).pipe(Effect.mapError(unavailable))
            const present: Array<string> = []
            for (const worktree of worktrees) {
              if (Option.isNone(yield* realPath(worktree.path))) continue
              if (worktree.state === "active" && !force) {
                const owner = worktree.session_id ?? worktree.job_id ?? "?"
                return yield* new PathInUse({
                  path: worktree.path,
                  message: `worktree ${worktree.path} is in use by ${worktree.session_id !== null ? "session" : "job"} ${owner}; end it first, or force`
                })
              }
              const changes = yield* git
                .text(worktree.path, ["status", "--porcelain", "--untracked-files=normal"])
                .pipe(Effect.mapError(refused))
              if (changes !== "" && !force) {
                return yield* new WorktreeDirty({
                  path: worktree.path,
                  message: `worktree ${worktree.path} has uncommitted changes; commit them, or force to lose them`
                })
              }
              present.push(worktree.path)
            }
            for (const worktree of present) {
              yield* git
                .run(workspace.path, ["worktree", "remove", "--force", worktree])
                .pipe(Effect.mapError(refused))
            }
            yield* git.run(workspace.path, ["worktree", "prune"]).pipe(Effect.ignore)
            yield* sql`DELETE FROM vibes_workspaces WHERE id = ${workspace.id}`.pipe(
              Effect.mapError(unavailable)
            )
            return workspace
          })
        )
      }).pipe(Effect.withSpan("Workspaces.remove"))

    return Workspaces.of({
      add,
      list: Effect.flatMap(
        sql`SELECT * FROM vibes_workspaces WHERE tenant_id = ${defaultTenant} ORDER BY name`,
        decodeRows
      ).pipe(
        Effect.mapError(unavailable),
        Effect.map((rows) => rows.map(toInfo))
      ),
      get,
      remove
    })
  })
)
