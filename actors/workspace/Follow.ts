/**
 * Follow mode: a workspace's main checkout keeps up with a branch that an agent works on in a
 * worktree of its own, so a person (an editor, a dev server) watching the main checkout sees the
 * agent's commits as they land. git keeps a branch in one worktree at a time, so the main
 * checkout holds the branch's commit on a detached HEAD; each new commit is checked out there.
 *
 * Never forced: with uncommitted changes to tracked files, unmerged paths, a checkout git refuses
 * (an untracked file in the way), a main checkout moved off what vibes put there or switched to a
 * branch, following is `blocked` (a `workspace.follow_blocked` event and the state in
 * `Workspaces.List`) and the main checkout is left alone; it resumes by itself once allowed.
 *
 * What wakes it: the `git.*` events of the followed branch (the watcher sees the agent's commits),
 * and a poll for what no event reports (a person cleaning up a dirty main checkout).
 */
import * as fs from "node:fs"
import { Context, type Duration, Effect, Layer, Option, Queue, Schedule, Schema, Stream } from "effect"
import { SqlClient } from "@effect/sql/SqlClient"
import { EventFilter } from "../../rpc/Events.js"
import {
  type FollowBlock,
  GitConflict,
  InvalidBranchName,
  InvalidWorkspaceRequest,
  type WorkspaceInfo,
  WorktreeDirty
} from "../../rpc/Workspaces.js"
import { EventBus } from "../../infra/eventlog/EventBus.js"
import { Emitter } from "../../infra/eventlog/Emitter.js"
import { Git, isValidBranch } from "../../infra/git/Git.js"
import { parseStatus } from "./GitService.js"
import { GitWatcher } from "./GitWatcher.js"
import { refused, RepoLock, unavailable, type WorkspaceError, Workspaces } from "./Workspaces.js"

/** Follow mode of the workspaces. */
export class Follower extends Context.Tag("vibes/Follower")<
  Follower,
  {
    /** The main checkout of `workspace` follows `branch` from now on (checked out at once). */
    readonly follow: (workspace: string, branch: string) => Effect.Effect<WorkspaceInfo, WorkspaceError>
    /** Stops following; switches the main checkout back to its branch when clean and unmoved. */
    readonly unfollow: (workspace: string) => Effect.Effect<WorkspaceInfo, WorkspaceError>
    /** Brings the main checkout of a followed workspace up to its branch now (or finds why not). */
    readonly sync: (workspace: WorkspaceInfo) => Effect.Effect<void, WorkspaceError>
  }
>() {}

const invalid = (field: string, message: string) => new InvalidWorkspaceRequest({ field, message })

const GitEventData = Schema.Struct({ workspace: Schema.String })
const decodeGitEvent = Schema.decodeUnknownOption(GitEventData)

/** Follow mode, with its background loop on this machine's followed workspaces. */
export const layer = (options: { readonly pollInterval: Duration.DurationInput }) =>
  Layer.scoped(
    Follower,
    Effect.gen(function* () {
      const git = yield* Git
      const sql = yield* SqlClient
      const lock = yield* RepoLock
      const emitter = yield* Emitter
      const bus = yield* EventBus
      const workspaces = yield* Workspaces
      const watcher = yield* GitWatcher

      const tipOf = (dir: string, branch: string) =>
        git
          .text(dir, ["rev-parse", "--verify", "--quiet", `refs/heads/${branch}^{commit}`])
          .pipe(Effect.option)

      const headOf = (dir: string) =>
        git.text(dir, ["rev-parse", "--verify", "--quiet", "HEAD"]).pipe(Effect.option)

      const branchOf = (dir: string) =>
        git.text(dir, ["symbolic-ref", "--quiet", "--short", "HEAD"]).pipe(Effect.option)

      /** Unmerged paths and changes to tracked files of the main checkout. */
      const changesOf = (dir: string) =>
        Effect.map(
          git
            .run(dir, ["status", "--porcelain=v2", "-z", "--untracked-files=no"])
            .pipe(Effect.mapError(refused)),
          (output) => {
            const { entries } = parseStatus(output.stdout.toString("utf8"))
            return {
              unmerged: entries.filter((e) => e.kind === "unmerged").map((e) => e.path),
              changed: entries.filter((e) => e.kind !== "unmerged").map((e) => e.path)
            }
          }
        )

      const isAncestor = (dir: string, older: string, newer: string) =>
        git.run(dir, ["merge-base", "--is-ancestor", older, newer]).pipe(
          Effect.as(true),
          Effect.orElseSucceed(() => false)
        )

      const record = (
        id: string,
        state: "following" | "blocked",
        reason: FollowBlock | null,
        message: string | null,
        commit: string | null
      ) =>
        sql`UPDATE vibes_workspaces SET follow_state = ${state}, follow_reason = ${reason},
              follow_message = ${message}, follow_commit = ${commit}, follow_updated_at = now()
            WHERE id = ${id}`.pipe(Effect.asVoid, Effect.mapError(unavailable))

      type Outcome =
        | { readonly _tag: "Unchanged" }
        | { readonly _tag: "Synced"; readonly from: string | null; readonly to: string }
        | {
            readonly _tag: "Blocked"
            readonly reason: FollowBlock
            readonly message: string
            readonly commit: string | null
          }

      /** One step of following, under the repository's lock; what happened, to report after it. */
      const step = (workspace: WorkspaceInfo): Effect.Effect<Outcome, WorkspaceError> =>
        Effect.gen(function* () {
          const current = yield* workspaces.get(workspace.name)
          const follow = current.follow
          if (follow === null) return { _tag: "Unchanged" } as const
          const dir = current.path
          const blocked = (reason: FollowBlock, message: string, commit: string | null) =>
            Effect.gen(function* () {
              const same = follow.state === "blocked" && follow.reason === reason
              if (!same || follow.message !== message)
                yield* record(current.id, "blocked", reason, message, follow.commit)
              // Reported once a reason: a blocked checkout that stays blocked is no news.
              return same
                ? ({ _tag: "Unchanged" } as const)
                : ({ _tag: "Blocked", reason, message, commit } as const)
            })
          const tip = yield* tipOf(dir, follow.branch)
          if (Option.isNone(tip)) {
            return yield* blocked(
              "gone",
              `branch ${follow.branch} no longer exists; the main checkout stays where it is`,
              null
            )
          }
          const head = Option.getOrNull(yield* headOf(dir))
          const onBranch = yield* branchOf(dir)
          const first = follow.commit === null
          if (!first) {
            if (Option.isSome(onBranch)) {
              return yield* blocked(
                "switched",
                `the main checkout was switched to branch ${onBranch.value}; vibes leaves it there (unfollow, or follow again)`,
                tip.value
              )
            }
            if (head === tip.value && follow.state === "following") return { _tag: "Unchanged" } as const
            if (head !== follow.commit && head !== null && !(yield* isAncestor(dir, head, tip.value))) {
              return yield* blocked(
                "diverged",
                `the main checkout is at ${head.slice(0, 12)}, not where following left it (${follow.commit.slice(0, 12)}); vibes does not move it (unfollow, or follow again)`,
                tip.value
              )
            }
          }
          const { unmerged, changed } = yield* changesOf(dir)
          if (unmerged.length > 0) {
            return yield* blocked(
              "conflict",
              `the main checkout has ${unmerged.length} unmerged path(s) (${unmerged.slice(0, 3).join(", ")}); resolve them to follow ${follow.branch}`,
              tip.value
            )
          }
          if (changed.length > 0) {
            return yield* blocked(
              "dirty",
              `the main checkout has uncommitted changes to ${changed.length} tracked file(s) (${changed.slice(0, 3).join(", ")}); commit, stash or discard them to follow ${follow.branch}`,
              tip.value
            )
          }
          if (head !== tip.value || Option.isSome(onBranch)) {
            const switched = yield* git
              .run(dir, ["checkout", "--quiet", "--detach", tip.value, "--"])
              .pipe(Effect.either)
            if (switched._tag === "Left") {
              return yield* blocked(
                "conflict",
                `git refused to check out ${tip.value.slice(0, 12)} of ${follow.branch} in the main checkout: ${switched.left.message}`,
                tip.value
              )
            }
          }
          yield* record(current.id, "following", null, null, tip.value)
          return head === tip.value && follow.state === "following" && !first
            ? ({ _tag: "Unchanged" } as const)
            : ({ _tag: "Synced", from: head, to: tip.value } as const)
        })

      const report = (workspace: WorkspaceInfo, branch: string, outcome: Outcome) =>
        outcome._tag === "Synced"
          ? emitter.emit(
              "workspace.follow_synced",
              { workspace: workspace.name, branch, from: outcome.from, to: outcome.to },
              { component: "workspace" }
            )
          : outcome._tag === "Blocked"
            ? emitter.emit(
                "workspace.follow_blocked",
                {
                  workspace: workspace.name,
                  branch,
                  reason: outcome.reason,
                  message: outcome.message,
                  commit: outcome.commit
                },
                { component: "workspace" }
              )
            : Effect.void

      const sync = (workspace: WorkspaceInfo) =>
        Effect.gen(function* () {
          if (workspace.follow === null) return
          const outcome = yield* lock.with(workspace.id, step(workspace))
          yield* report(workspace, workspace.follow.branch, outcome)
        })

      const follow = (name: string, branch: string) =>
        Effect.gen(function* () {
          const workspace = yield* workspaces.get(name)
          if (!(yield* isValidBranch(git, branch))) {
            return yield* new InvalidBranchName({
              branch,
              message: `git refuses ${JSON.stringify(branch.slice(0, 100))} as a branch name`
            })
          }
          yield* watcher.ensure(workspace)
          const restore = yield* lock.with(
            workspace.id,
            Effect.gen(function* () {
              const dir = workspace.path
              if (Option.isNone(yield* tipOf(dir, branch))) {
                return yield* invalid(
                  "branch",
                  `there is no branch ${JSON.stringify(branch.slice(0, 100))} in workspace ${name}`
                )
              }
              const onBranch = Option.getOrNull(yield* branchOf(dir))
              if (onBranch === branch) {
                return yield* invalid(
                  "branch",
                  `the main checkout of ${name} has ${branch} checked out itself; follow a branch another worktree works on`
                )
              }
              const { unmerged, changed } = yield* changesOf(dir)
              if (unmerged.length > 0) {
                return yield* new GitConflict({
                  paths: unmerged.slice(0, 100),
                  message: `the main checkout ${dir} has unmerged paths; resolve them before following ${branch}`
                })
              }
              if (changed.length > 0) {
                return yield* new WorktreeDirty({
                  path: dir,
                  message: `the main checkout ${dir} has uncommitted changes to ${changed.length} tracked file(s); commit or stash them before following ${branch}`
                })
              }
              // Following another branch already: keep the branch to go back to from the first follow.
              const restore = workspace.follow === null ? onBranch : workspace.follow.restore
              yield* sql`UPDATE vibes_workspaces SET follow_branch = ${branch}, follow_state = 'following',
                           follow_reason = NULL, follow_message = NULL, follow_commit = NULL,
                           follow_restore = ${restore}, follow_updated_at = now()
                         WHERE id = ${workspace.id}`.pipe(Effect.mapError(unavailable))
              return restore
            })
          )
          yield* emitter.emit(
            "workspace.follow_started",
            { workspace: name, branch, restore },
            { component: "workspace" }
          )
          yield* sync(yield* workspaces.get(name))
          return yield* workspaces.get(name)
        }).pipe(Effect.withSpan("Workspaces.follow"))

      const unfollow = (name: string) =>
        Effect.gen(function* () {
          const workspace = yield* workspaces.get(name)
          const follow = workspace.follow
          if (follow === null) {
            return yield* invalid("workspace", `the main checkout of ${name} follows no branch`)
          }
          const restored = yield* lock.with(
            workspace.id,
            Effect.gen(function* () {
              const dir = workspace.path
              let restored: string | null = null
              const head = Option.getOrNull(yield* headOf(dir))
              const detached = Option.isNone(yield* branchOf(dir))
              if (follow.restore !== null && detached && head === follow.commit) {
                const { unmerged, changed } = yield* changesOf(dir)
                if (unmerged.length === 0 && changed.length === 0) {
                  const back = yield* git
                    .run(dir, ["switch", "--quiet", "--no-guess", follow.restore])
                    .pipe(Effect.either)
                  if (back._tag === "Right") restored = follow.restore
                }
              }
              yield* sql`UPDATE vibes_workspaces SET follow_branch = NULL, follow_state = NULL,
                           follow_reason = NULL, follow_message = NULL, follow_commit = NULL,
                           follow_restore = NULL, follow_updated_at = now()
                         WHERE id = ${workspace.id}`.pipe(Effect.mapError(unavailable))
              return restored
            })
          )
          yield* emitter.emit(
            "workspace.follow_stopped",
            { workspace: name, branch: follow.branch, restored },
            { component: "workspace" }
          )
          return yield* workspaces.get(name)
        }).pipe(Effect.withSpan("Workspaces.unfollow"))

      /** Syncs the followed workspaces on this machine (`only`: those of that name). */
      const syncAll = (only: Option.Option<string>) =>
        Effect.gen(function* () {
          for (const workspace of yield* workspaces.list) {
            const follow = workspace.follow
            if (follow === null) continue
            if (Option.isSome(only) && only.value !== workspace.name) continue
            if (!fs.existsSync(workspace.path)) continue
            yield* sync(workspace).pipe(
              Effect.catchAll((error) =>
                Effect.logWarning(`following ${follow.branch} in ${workspace.name}: ${error.message}`)
              )
            )
          }
        }).pipe(
          Effect.catchAll((error) => Effect.logWarning(`cannot list followed workspaces: ${error.message}`))
        )

      const wake = yield* Queue.sliding<Option.Option<string>>(64)
      yield* bus
        .subscribe(
          { _tag: "Latest" },
          EventFilter.make({
            types: ["git.commit", "git.branch_moved", "git.branch_created", "git.branch_deleted"]
          })
        )
        .pipe(
          Stream.runForEach((event) =>
            Queue.offer(
              wake,
              Option.map(decodeGitEvent(event.data), (data) => data.workspace)
            )
          ),
          Effect.catchAll((error) => Effect.logWarning(`follow mode resubscribes: ${error.message}`)),
          Effect.repeat(Schedule.spaced("1 second")),
          Effect.forkScoped
        )
      yield* Effect.raceFirst(
        Queue.take(wake),
        Effect.as(Effect.sleep(options.pollInterval), Option.none<string>())
      ).pipe(Effect.flatMap(syncAll), Effect.forever, Effect.forkScoped)

      return Follower.of({ follow, unfollow, sync })
    })
  )
