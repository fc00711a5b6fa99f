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
import { Context, DateTime, Effect, FiberRef, Layer, Option, Schedule, Schema, Stream } from "effect"
import { SqlClient } from "@effect/sql/SqlClient"
import { SqlError } from "@effect/sql/SqlError"
import {
  type AddWorkspace,
  branchSlug,
  ClosePolicy,
  FollowBlock,
  FollowInfo,
  type GitConflict,
  GitRefused,
  InvalidBranchName,
  InvalidWorkspaceRequest,
  NotARepository,
  type NothingToCommit,
  PathInUse,
  WorkspaceExists,
  WorkspaceInfo,
  WorkspaceName,
  WorkspaceNotFound,
  WorkspacesUnavailable,
  WorktreeDirty,
  WorktreeInfo,
  WorktreeState
} from "../../rpc/Workspaces.js"
import { EventFilter } from "../../rpc/Events.js"
import { EventBus } from "../../infra/eventlog/EventBus.js"
import { Emitter } from "../../infra/eventlog/Emitter.js"
import { GitWatcher, parseWorktreeList } from "./GitWatcher.js"
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
  created_at: Schema.DateFromSelf,
  follow_branch: Schema.NullOr(Schema.String),
  follow_state: Schema.NullOr(Schema.Literal("following", "blocked")),
  follow_reason: Schema.NullOr(FollowBlock),
  follow_message: Schema.NullOr(Schema.String),
  follow_commit: Schema.NullOr(Schema.String),
  follow_restore: Schema.NullOr(Schema.String),
  follow_updated_at: Schema.NullOr(Schema.DateFromSelf)
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
    createdAt: DateTime.unsafeFromDate(row.created_at),
    follow:
      row.follow_branch === null
        ? null
        : FollowInfo.make({
            branch: row.follow_branch,
            state: row.follow_state ?? "following",
            reason: row.follow_reason,
            message: row.follow_message,
            commit: row.follow_commit,
            restore: row.follow_restore,
            updatedAt: DateTime.unsafeFromDate(row.follow_updated_at ?? row.created_at)
          })
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

/**
 * Events written under a repository lock wait for its transaction to commit (the event log is not
 * in it): a reader who sees the event then finds the rows it speaks of. Outside a lock, none wait.
 */
const afterCommit = FiberRef.unsafeMake<Array<Effect.Effect<unknown>> | undefined>(undefined)

/** Runs `effect` once the current repository lock's transaction has committed (now, outside one). */
const onCommit = <A>(effect: Effect.Effect<A>): Effect.Effect<void> =>
  Effect.flatMap(FiberRef.get(afterCommit), (queued) =>
    queued === undefined ? Effect.asVoid(effect) : Effect.sync(() => void queued.push(effect))
  )

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
          Effect.suspend(() => {
            const queued: Array<Effect.Effect<unknown>> = []
            // The transaction holds the advisory lock until the git operation is done (and rolls
            // back what the operation wrote to the store when it fails); its events go after it.
            return sql
              .withTransaction(
                Effect.zipRight(
                  sql`SELECT pg_advisory_xact_lock(${lockClass}, hashtext(${workspaceId}))`,
                  Effect.locally(effect, afterCommit, queued)
                )
              )
              .pipe(
                Effect.mapError((error) => (error instanceof SqlError ? unavailable(error) : error)),
                Effect.tap(() => Effect.forEach(queued, (event) => event, { discard: true }))
              )
          })
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
    /**
     * Makes the worktree of `branch` for `owner` (a new branch from `from` or the default branch,
     * or an existing one), or takes over the worktree vibes kept for that branch.
     */
    readonly prepare: (request: {
      readonly workspace: string
      readonly branch: string
      readonly from?: string | undefined
      readonly owner: Owner
    }) => Effect.Effect<WorktreeInfo, WorkspaceError>
    /** `owner` ended: its worktrees are kept or removed as their workspace's close policy says. */
    readonly release: (owner: Owner) => Effect.Effect<void, WorkspaceError>
    /** `owner` never started: the worktree made for it goes again when it holds nothing new. */
    readonly abandon: (owner: Owner) => Effect.Effect<void, WorkspaceError>
    readonly worktrees: (workspace: string) => Effect.Effect<ReadonlyArray<WorktreeInfo>, WorkspaceError>
    readonly removeWorktree: (
      workspace: string,
      branch: string,
      force: boolean
    ) => Effect.Effect<WorktreeInfo, WorkspaceError>
  }
>() {}

/** Who a worktree is for. */
export type Owner = { readonly kind: "session" | "job"; readonly id: string }

/** Every error of a workspace call. */
export type WorkspaceError =
  | WorkspaceNotFound
  | WorkspaceExists
  | NotARepository
  | InvalidBranchName
  | PathInUse
  | WorktreeDirty
  | InvalidWorkspaceRequest
  | GitRefused
  | GitConflict
  | NothingToCommit
  | WorkspacesUnavailable

const WorktreeRow = Schema.Struct({
  id: Schema.String,
  workspace_id: Schema.String,
  workspace: Schema.String,
  branch: Schema.String,
  path: Schema.String,
  session_id: Schema.NullOr(Schema.String),
  job_id: Schema.NullOr(Schema.String),
  state: WorktreeState,
  created_at: Schema.DateFromSelf,
  closed_at: Schema.NullOr(Schema.DateFromSelf)
})
type WorktreeRow = typeof WorktreeRow.Type
const decodeWorktrees = Schema.decodeUnknown(Schema.Array(WorktreeRow))

const toWorktree = (row: WorktreeRow): WorktreeInfo =>
  WorktreeInfo.make({
    id: row.id,
    workspace: row.workspace,
    branch: row.branch,
    path: row.path,
    sessionId: row.session_id,
    jobId: row.job_id,
    state: row.state,
    createdAt: DateTime.unsafeFromDate(row.created_at),
    closedAt: row.closed_at === null ? null : DateTime.unsafeFromDate(row.closed_at)
  })

export { parseWorktreeList } from "./GitWatcher.js"

const isName = Schema.is(WorkspaceName)

const invalid = (field: string, message: string) => new InvalidWorkspaceRequest({ field, message })

/** The workspaces, on the node's database and git. */
export const layer = Layer.effect(
  Workspaces,
  Effect.gen(function* () {
    const sql = yield* SqlClient
    const git = yield* Git
    const lock = yield* RepoLock
    const emitter = yield* Emitter
    const watcher = yield* GitWatcher

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
        const info = toInfo(row)
        yield* watcher.ensure(info)
        yield* emitter.emit(
          "workspace.added",
          { workspace: info.name, path: info.path, defaultBranch: info.defaultBranch },
          { component: "workspace" }
        )
        return info
      }).pipe(Effect.withSpan("Workspaces.add"))

    const worktreeRows = (where: ReturnType<typeof sql.and>) =>
      Effect.flatMap(
        sql`SELECT w.id, w.workspace_id, ws.name AS workspace, w.branch, w.path, w.session_id, w.job_id,
                   w.state, w.created_at, w.closed_at
            FROM vibes_worktrees w JOIN vibes_workspaces ws ON ws.id = w.workspace_id
            WHERE ${where} ORDER BY w.created_at DESC, w.id DESC`,
        decodeWorktrees
      ).pipe(Effect.mapError(unavailable))

    const setState = (id: string, state: WorktreeState) =>
      sql`UPDATE vibes_worktrees SET state = ${state}, closed_at = ${state === "active" ? null : new Date()}
          WHERE id = ${id}`.pipe(Effect.asVoid, Effect.mapError(unavailable))

    const ownerOf = (row: WorktreeRow) =>
      row.session_id !== null ? `session ${row.session_id}` : `job ${row.job_id ?? "?"}`

    const ownerEnvelope = (row: WorktreeRow) => ({
      component: "workspace",
      ...(row.session_id !== null ? { sessionId: row.session_id } : {}),
      ...(row.job_id !== null ? { jobId: row.job_id } : {})
    })

    /**
     * Closes a worktree (the caller holds its repository's lock): `keep` leaves it; `clean-only`
     * removes it when it has no uncommitted change, else keeps it; `save` stashes uncommitted
     * changes first (`git stash list` in the repository shows them), then removes it; `force`
     * removes it with whatever it holds.
     */
    const close = (repository: string, row: WorktreeRow, mode: "keep" | "clean-only" | "save" | "force") =>
      Effect.gen(function* () {
        let stashed = false
        let state: WorktreeState = "kept"
        if (mode !== "keep") {
          if (Option.isNone(yield* realPath(row.path))) {
            state = "removed"
          } else {
            const changes = yield* git
              .text(row.path, ["status", "--porcelain", "--untracked-files=normal"])
              .pipe(Effect.mapError(refused))
            if (changes !== "" && mode === "save") {
              yield* git
                .run(row.path, [
                  "stash",
                  "push",
                  "--include-untracked",
                  "-m",
                  `vibes: uncommitted work of ${ownerOf(row)} on ${row.branch}`
                ])
                .pipe(Effect.mapError(refused))
              stashed = true
            }
            if (changes === "" || mode !== "clean-only") {
              yield* git
                .run(repository, ["worktree", "remove", "--force", row.path])
                .pipe(Effect.mapError(refused))
              state = "removed"
            }
          }
          if (state === "removed") yield* git.run(repository, ["worktree", "prune"]).pipe(Effect.ignore)
        }
        yield* setState(row.id, state)
        yield* onCommit(
          emitter.emit(
            "workspace.worktree_closed",
            { workspace: row.workspace, branch: row.branch, path: row.path, state, stashed },
            ownerEnvelope(row)
          )
        )
        return { ...row, state, closed_at: new Date() }
      })

    const remove = (name: string, force: boolean) =>
      Effect.gen(function* () {
        const workspace = yield* get(name)
        return yield* lock.with(
          workspace.id,
          Effect.gen(function* () {
            const rows = yield* worktreeRows(
              sql.and([sql`w.workspace_id = ${workspace.id}`, sql`w.state <> 'removed'`])
            )
            for (const row of rows) {
              if (Option.isNone(yield* realPath(row.path))) continue
              if (row.state === "active" && !force) {
                return yield* new PathInUse({
                  path: row.path,
                  message: `worktree ${row.path} is in use by ${ownerOf(row)}; end it first, or force`
                })
              }
              const changes = yield* git
                .text(row.path, ["status", "--porcelain", "--untracked-files=normal"])
                .pipe(Effect.mapError(refused))
              if (changes !== "" && !force) {
                return yield* new WorktreeDirty({
                  path: row.path,
                  message: `worktree ${row.path} has uncommitted changes; commit them, or force to lose them`
                })
              }
            }
            for (const row of rows) yield* close(workspace.path, row, "force")
            yield* sql`DELETE FROM vibes_workspaces WHERE id = ${workspace.id}`.pipe(
              Effect.mapError(unavailable)
            )
            yield* watcher.forget(workspace.id)
            yield* onCommit(
              emitter.emit(
                "workspace.removed",
                { workspace: workspace.name, path: workspace.path },
                { component: "workspace" }
              )
            )
            return workspace
          })
        )
      }).pipe(Effect.withSpan("Workspaces.remove"))

    const branchExists = (repository: string, branch: string) =>
      git.run(repository, ["show-ref", "--verify", "--quiet", `refs/heads/${branch}`]).pipe(
        Effect.as(true),
        Effect.orElseSucceed(() => false)
      )

    const prepare = (request: {
      readonly workspace: string
      readonly branch: string
      readonly from?: string | undefined
      readonly owner: Owner
    }) =>
      Effect.gen(function* () {
        const workspace = yield* get(request.workspace)
        // A workspace added on another node, or before a restart: its git events start now.
        yield* watcher.ensure(workspace)
        const { branch, owner } = request
        if (!(yield* isValidBranch(git, branch))) {
          return yield* new InvalidBranchName({
            branch,
            message: `git refuses ${JSON.stringify(branch.slice(0, 100))} as a branch name`
          })
        }
        if (request.from !== undefined && (request.from === "" || request.from.startsWith("-"))) {
          return yield* invalid(
            "from",
            `from must name a branch, tag or commit, not ${JSON.stringify(request.from)}`
          )
        }
        const target = path.join(workspace.worktreesDir, branchSlug(branch))
        return yield* lock.with(
          workspace.id,
          Effect.gen(function* () {
            const exists = yield* branchExists(workspace.path, branch)
            if (exists && request.from !== undefined) {
              return yield* invalid(
                "from",
                `branch ${branch} exists already; from only says where a new branch starts`
              )
            }
            const listed = parseWorktreeList(
              yield* git
                .text(workspace.path, ["worktree", "list", "--porcelain", "-z"])
                .pipe(Effect.mapError(refused))
            )
            const checkedOut = listed.find((entry) => entry.branch === `refs/heads/${branch}`)
            if (checkedOut !== undefined) {
              const ours = yield* worktreeRows(
                sql.and([
                  sql`w.workspace_id = ${workspace.id}`,
                  sql`w.path = ${checkedOut.path}`,
                  sql`w.state <> 'removed'`
                ])
              )
              const kept = ours.find((row) => row.state === "kept")
              if (kept !== undefined) {
                yield* sql`UPDATE vibes_worktrees SET state = 'active', closed_at = NULL,
                             session_id = ${owner.kind === "session" ? owner.id : null},
                             job_id = ${owner.kind === "job" ? owner.id : null}
                           WHERE id = ${kept.id}`.pipe(Effect.mapError(unavailable))
                const [row] = yield* worktreeRows(sql.and([sql`w.id = ${kept.id}`]))
                if (row !== undefined) return toWorktree(row)
              }
              const user = ours.find((row) => row.state === "active")
              return yield* new PathInUse({
                path: checkedOut.path,
                message: `branch ${branch} is checked out at ${checkedOut.path}${user !== undefined ? ` for ${ownerOf(user)}` : ""}; git keeps a branch in one worktree at a time`
              })
            }
            if (Option.isSome(yield* realPath(target))) {
              return yield* new PathInUse({
                path: target,
                message: `${target} exists already (another branch with the same directory name, or a leftover); remove it or choose another branch name`
              })
            }
            const base = request.from ?? workspace.defaultBranch
            if (!exists) {
              const found = yield* git
                .run(workspace.path, ["rev-parse", "--verify", "--quiet", `${base}^{commit}`])
                .pipe(Effect.option)
              if (Option.isNone(found)) {
                return yield* invalid(
                  "from",
                  `there is no branch, tag or commit named ${JSON.stringify(base.slice(0, 100))} in workspace ${workspace.name}`
                )
              }
            }
            yield* git
              .run(
                workspace.path,
                exists ? ["worktree", "add", target, branch] : ["worktree", "add", "-b", branch, target, base]
              )
              .pipe(Effect.mapError(refused))
            const id = uuidv7()
            yield* sql`
              INSERT INTO vibes_worktrees (id, tenant_id, workspace_id, branch, path, session_id, job_id, state)
              VALUES (${id}, ${defaultTenant}, ${workspace.id}, ${branch}, ${target},
                      ${owner.kind === "session" ? owner.id : null}, ${owner.kind === "job" ? owner.id : null}, 'active')
            `.pipe(Effect.mapError(unavailable))
            const [row] = yield* worktreeRows(sql.and([sql`w.id = ${id}`]))
            if (row === undefined) return yield* unavailable({ message: `worktree ${id} vanished` })
            yield* onCommit(
              emitter.emit(
                "workspace.worktree_created",
                { workspace: workspace.name, branch, path: target, newBranch: !exists },
                ownerEnvelope(row)
              )
            )
            return toWorktree(row)
          })
        )
      }).pipe(Effect.withSpan("Workspaces.prepare"))

    const ownedBy = (owner: Owner) =>
      worktreeRows(
        sql.and([
          owner.kind === "session" ? sql`w.session_id = ${owner.id}` : sql`w.job_id = ${owner.id}`,
          sql`w.state = 'active'`
        ])
      )

    /** Closes each active worktree of `owner` in `mode` (or its workspace's policy). */
    const closeOwned = (
      owner: Owner,
      mode: (policy: ClosePolicy) => "keep" | "clean-only" | "save" | "force"
    ) =>
      Effect.gen(function* () {
        for (const row of yield* ownedBy(owner)) {
          const workspace = yield* Effect.flatMap(
            sql`SELECT * FROM vibes_workspaces WHERE id = ${row.workspace_id}`,
            decodeRows
          ).pipe(Effect.mapError(unavailable))
          const info = workspace[0]
          // Another machine's repository: its own node closes it.
          if (info === undefined || Option.isNone(yield* realPath(info.path))) continue
          yield* lock.with(
            info.id,
            Effect.gen(function* () {
              const [current] = yield* worktreeRows(sql.and([sql`w.id = ${row.id}`]))
              if (current?.state !== "active") return
              yield* close(info.path, current, mode(info.close_policy))
            })
          )
        }
      })

    const release = (owner: Owner) =>
      closeOwned(owner, (policy) =>
        policy === "keep" ? "keep" : policy === "remove-when-clean" ? "clean-only" : "save"
      ).pipe(Effect.withSpan("Workspaces.release"))

    const abandon = (owner: Owner) => closeOwned(owner, () => "clean-only")

    const worktrees = (name: string) =>
      Effect.flatMap(get(name), (workspace) =>
        worktreeRows(sql.and([sql`w.workspace_id = ${workspace.id}`]))
      ).pipe(Effect.map((rows) => rows.map(toWorktree)))

    const removeWorktree = (name: string, branch: string, force: boolean) =>
      Effect.gen(function* () {
        const workspace = yield* get(name)
        return yield* lock.with(
          workspace.id,
          Effect.gen(function* () {
            const [row] = yield* worktreeRows(
              sql.and([
                sql`w.workspace_id = ${workspace.id}`,
                sql`w.branch = ${branch}`,
                sql`w.state <> 'removed'`
              ])
            )
            if (row === undefined) {
              return yield* new WorkspaceNotFound({
                workspace: name,
                message: `workspace ${name} has no worktree of branch ${JSON.stringify(branch.slice(0, 100))} made by vibes`
              })
            }
            if (row.state === "active" && !force) {
              return yield* new PathInUse({
                path: row.path,
                message: `worktree ${row.path} is in use by ${ownerOf(row)}; end it first, or force`
              })
            }
            const closed = yield* close(workspace.path, row, force ? "force" : "clean-only")
            if (closed.state !== "removed") {
              return yield* new WorktreeDirty({
                path: row.path,
                message: `worktree ${row.path} has uncommitted changes; commit them, or force to lose them`
              })
            }
            return toWorktree(closed)
          })
        )
      })

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
      remove,
      prepare,
      release,
      abandon,
      worktrees,
      removeWorktree
    })
  })
)

const finalJobStatuses = ["succeeded", "failed", "timed_out", "canceled", "dead"]

/**
 * Applies the close policy when a session or job ends: follows `session.closed`, `session.exited`,
 * `session.lost` (final unless the session's restart policy starts it again) and `job.done`, and
 * at start closes what ended while no node was watching.
 */
export const closerLayer = Layer.scopedDiscard(
  Effect.gen(function* () {
    const workspaces = yield* Workspaces
    const bus = yield* EventBus
    const sql = yield* SqlClient
    const releaseLogged = (owner: Owner) =>
      workspaces
        .release(owner)
        .pipe(
          Effect.catchAll((error) =>
            Effect.logWarning(`could not close the worktree of ${owner.kind} ${owner.id}: ${error.message}`)
          )
        )
    const sessionEnded = (sessionId: string, type: string, data: unknown) =>
      Effect.gen(function* () {
        if (type === "session.closed") return true
        const rows = yield* sql<{ readonly restart_policy: string }>`
          SELECT restart_policy FROM vibes_sessions WHERE id = ${sessionId}`
        const policy = rows[0]?.restart_policy ?? "never"
        if (policy === "never") return true
        const ended = Schema.decodeUnknownOption(
          Schema.Struct({ exitCode: Schema.NullOr(Schema.Number), signal: Schema.NullOr(Schema.String) })
        )(data)
        return (
          policy === "on-failure" &&
          type === "session.exited" &&
          Option.isSome(ended) &&
          ended.value.exitCode === 0 &&
          ended.value.signal === null
        )
      }).pipe(Effect.orElseSucceed(() => false))
    const follow = bus
      .subscribe(
        { _tag: "Latest" },
        EventFilter.make({ types: ["session.closed", "session.exited", "session.lost", "job.done"] })
      )
      .pipe(
        Stream.runForEach((event) =>
          Effect.gen(function* () {
            if (event.type === "job.done" && event.jobId !== undefined) {
              return yield* releaseLogged({ kind: "job", id: event.jobId })
            }
            if (
              event.sessionId !== undefined &&
              (yield* sessionEnded(event.sessionId, event.type, event.data))
            ) {
              yield* releaseLogged({ kind: "session", id: event.sessionId })
            }
          })
        ),
        Effect.catchAll((error) => Effect.logWarning(`worktree closer resubscribes: ${error.message}`))
      )
    // What ended while no node was watching (or while this one was resubscribing).
    const sweep = Effect.gen(function* () {
      const rows = yield* sql<{ readonly session_id: string | null; readonly job_id: string | null }>`
        SELECT w.session_id, w.job_id FROM vibes_worktrees w
        LEFT JOIN vibes_sessions s ON s.id = w.session_id
        LEFT JOIN jobs j ON j.id::text = w.job_id
        WHERE w.state = 'active' AND (
          (s.id IS NOT NULL AND s.state <> 'running' AND (s.state = 'closed' OR s.restart_policy = 'never'))
          OR (j.id IS NOT NULL AND j.status IN ${sql.in(finalJobStatuses)}))`
      for (const row of rows) {
        if (row.session_id !== null) yield* releaseLogged({ kind: "session", id: row.session_id })
        else if (row.job_id !== null) yield* releaseLogged({ kind: "job", id: row.job_id })
      }
    }).pipe(
      Effect.catchAll((error) =>
        Effect.logWarning(`could not close the worktrees of ended work: ${error.message}`)
      )
    )
    // A subscriber that fell behind is cut off: it follows again, and sweeps what it missed.
    yield* Effect.zipRight(Effect.fork(sweep), follow).pipe(
      Effect.repeat(Schedule.spaced("1 second")),
      Effect.forkScoped
    )
  })
)
