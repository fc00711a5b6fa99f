/**
 * Watches the repositories of the workspaces on this machine and records what happens in them as
 * `git.*` events, whoever did it (an agent in a session, a person in a shell, vibes itself): new
 * commits on a branch (`git.commit`, oldest first), branches created, deleted or moved to an
 * unrelated commit, worktrees added or removed, a worktree switched to another branch.
 *
 * A change under the repository's git directory (`fs.watch`, recursive; object writes ignored)
 * wakes the watcher, which compares git's own answer (`for-each-ref`, `worktree list`) with the
 * last one; a poll every `pollInterval` catches what the file system did not report.
 */
import * as fs from "node:fs"
import * as fsPath from "node:path"
import {
  Context,
  Deferred,
  type Duration,
  Effect,
  ExecutionStrategy,
  Exit,
  Layer,
  Option,
  Queue,
  Schedule,
  Scope
} from "effect"
import { SqlClient } from "@effect/sql/SqlClient"
import { Git, type GitFailed } from "../../infra/git/Git.js"
import { Emitter } from "../../infra/eventlog/Emitter.js"

/** What the watcher needs of a workspace. */
export interface Watched {
  readonly id: string
  readonly name: string
  readonly path: string
}

/** The watcher of this machine's repositories. */
export class GitWatcher extends Context.Tag("vibes/GitWatcher")<
  GitWatcher,
  {
    /**
     * Watches `workspace` (when its repository is on this machine) from now on: resolves once the
     * state later changes are compared with has been read. Watching one already watched is a no-op.
     */
    readonly ensure: (workspace: Watched) => Effect.Effect<void>
    /** Stops watching a workspace. */
    readonly forget: (workspaceId: string) => Effect.Effect<void>
  }
>() {}

/** One entry of `git worktree list --porcelain -z`. */
export interface ListedWorktree {
  readonly path: string
  /** `refs/heads/…`, or none when detached. */
  readonly branch: string | undefined
}

/** Parses `git worktree list --porcelain -z`. */
export const parseWorktreeList = (output: string): ReadonlyArray<ListedWorktree> => {
  const entries: Array<ListedWorktree> = []
  let current: { path?: string; branch?: string } = {}
  for (const field of output.split("\0")) {
    if (field === "") {
      if (current.path !== undefined) entries.push({ path: current.path, branch: current.branch })
      current = {}
    } else if (field.startsWith("worktree ")) current.path = field.slice("worktree ".length)
    else if (field.startsWith("branch ")) current.branch = field.slice("branch ".length)
  }
  if (current.path !== undefined) entries.push({ path: current.path, branch: current.branch })
  return entries
}

const exists = (p: string) =>
  Effect.promise(() =>
    fs.promises.access(p).then(
      () => true,
      () => false
    )
  )

/** What the watcher compares: each branch's commit, and each worktree's branch. */
interface Snapshot {
  readonly branches: ReadonlyMap<string, string>
  readonly worktrees: ReadonlyMap<string, string | null>
}

/** The most commits one ref update reports one by one. */
const maxCommitsPerUpdate = 100

/** File-system events that never change refs or worktrees. */
const ignored = (file: string) => file.startsWith("objects") || /(^|\/)index(\.lock)?$/.test(file)

/** Watches the repositories of this machine's workspaces for as long as the layer lives. */
export const layer = (options: { readonly pollInterval: Duration.DurationInput }) =>
  Layer.scoped(
    GitWatcher,
    Effect.gen(function* () {
      const git = yield* Git
      const emitter = yield* Emitter
      const sql = yield* SqlClient
      const scope = yield* Effect.scope
      const watching = new Map<
        string,
        { readonly scope: Scope.CloseableScope; readonly ready: Deferred.Deferred<void> }
      >()
      const lock = yield* Effect.makeSemaphore(1)

      const snapshot = (repository: string) =>
        Effect.gen(function* () {
          const refs = yield* git.text(repository, [
            "for-each-ref",
            "--format=%(refname:short)%00%(objectname)",
            "refs/heads"
          ])
          const listed = parseWorktreeList(
            yield* git.text(repository, ["worktree", "list", "--porcelain", "-z"])
          )
          return {
            branches: new Map(
              refs === ""
                ? []
                : refs.split("\n").map((line) => {
                    const [branch = "", commit = ""] = line.split("\0")
                    return [branch, commit] as const
                  })
            ),
            worktrees: new Map(
              listed.map((entry) => [
                entry.path,
                entry.branch === undefined ? null : entry.branch.replace(/^refs\/heads\//, "")
              ])
            )
          } satisfies Snapshot
        })

      /** The session or job working on `branch` in a worktree vibes made, for the envelope. */
      const ownerOf = (workspace: Watched, branch: string) =>
        sql<{ readonly session_id: string | null; readonly job_id: string | null }>`
          SELECT session_id, job_id FROM vibes_worktrees
          WHERE workspace_id = ${workspace.id} AND branch = ${branch} AND state = 'active' LIMIT 1`.pipe(
          Effect.map((rows) => ({
            component: "git",
            ...(rows[0]?.session_id != null ? { sessionId: rows[0].session_id } : {}),
            ...(rows[0]?.job_id != null ? { jobId: rows[0].job_id } : {})
          })),
          Effect.orElseSucceed(() => ({ component: "git" }))
        )

      const commits = (repository: string, from: string, to: string) =>
        Effect.gen(function* () {
          const output = yield* git.text(repository, [
            "log",
            `--max-count=${maxCommitsPerUpdate}`,
            "--format=%H%x00%P%x00%an%x00%ae%x00%s",
            `${from}..${to}`,
            "--"
          ])
          return (output === "" ? [] : output.split("\n")).reverse().map((line) => {
            const [commit = "", parents = "", author = "", email = "", subject = ""] = line.split("\0")
            return { commit, parents: parents === "" ? [] : parents.split(" "), author, email, subject }
          })
        })

      const report = (workspace: Watched, before: Snapshot, after: Snapshot) =>
        Effect.gen(function* () {
          const base = { workspace: workspace.name }
          for (const [branch, commit] of after.branches) {
            const previous = before.branches.get(branch)
            if (previous === commit) continue
            const envelope = yield* ownerOf(workspace, branch)
            if (previous === undefined) {
              yield* emitter.emit("git.branch_created", { ...base, branch, commit }, envelope)
              continue
            }
            const fastForward = yield* git
              .run(workspace.path, ["merge-base", "--is-ancestor", previous, commit])
              .pipe(
                Effect.as(true),
                Effect.orElseSucceed(() => false)
              )
            if (!fastForward) {
              yield* emitter.emit(
                "git.branch_moved",
                { ...base, branch, from: previous, to: commit },
                envelope
              )
            }
            for (const made of yield* commits(workspace.path, previous, commit)) {
              yield* emitter.emit("git.commit", { ...base, branch, ...made }, envelope)
            }
          }
          for (const [branch, commit] of before.branches) {
            if (!after.branches.has(branch)) {
              yield* emitter.emit("git.branch_deleted", { ...base, branch, commit }, { component: "git" })
            }
          }
          for (const [path, branch] of after.worktrees) {
            if (!before.worktrees.has(path)) {
              const envelope = branch === null ? { component: "git" } : yield* ownerOf(workspace, branch)
              yield* emitter.emit("git.worktree_added", { ...base, path, branch }, envelope)
            } else {
              const previous = before.worktrees.get(path) ?? null
              if (previous !== branch) {
                yield* emitter.emit(
                  "git.branch_switched",
                  { ...base, path, from: previous, to: branch },
                  { component: "git" }
                )
              }
            }
          }
          for (const [path, branch] of before.worktrees) {
            if (!after.worktrees.has(path)) {
              yield* emitter.emit("git.worktree_removed", { ...base, path, branch }, { component: "git" })
            }
          }
        })

      const watch = (workspace: Watched, ready: Deferred.Deferred<void>) =>
        Effect.gen(function* () {
          const commonDir = yield* git.text(workspace.path, [
            "rev-parse",
            "--path-format=absolute",
            "--git-common-dir"
          ])
          const wake = yield* Queue.sliding<void>(1)
          yield* Effect.acquireRelease(
            Effect.sync(() => {
              try {
                const watcher = fs.watch(commonDir, { recursive: true }, (_event, file) => {
                  if (file === null || !ignored(file.split(fsPath.sep).join("/"))) wake.unsafeOffer(undefined)
                })
                watcher.on("error", () => watcher.close())
                return Option.some(watcher)
              } catch {
                return Option.none<fs.FSWatcher>()
              }
            }),
            (watcher) => Effect.sync(() => Option.map(watcher, (w) => w.close()))
          )
          let last = yield* snapshot(workspace.path).pipe(Effect.ensuring(Deferred.succeed(ready, undefined)))
          // `git worktree add -b B` lists the new worktree without a branch for a moment (its HEAD
          // is written last): a new worktree seen without one is reported at the next look, with
          // the branch it has by then, or without one if it is still detached then.
          let settling = new Set<string>()
          yield* Effect.gen(function* () {
            yield* Effect.raceFirst(Queue.take(wake), Effect.sleep(options.pollInterval))
            const next = yield* snapshot(workspace.path)
            const worktrees = new Map(next.worktrees)
            const waiting = new Set<string>()
            for (const [path, branch] of next.worktrees) {
              if (branch === null && !last.worktrees.has(path) && !settling.has(path)) {
                worktrees.delete(path)
                waiting.add(path)
              }
            }
            settling = waiting
            const seen = { branches: next.branches, worktrees }
            yield* report(workspace, last, seen)
            last = seen
          }).pipe(
            Effect.catchAll((error: GitFailed) =>
              Effect.logWarning(`watching workspace ${workspace.name}: ${error.message}`)
            ),
            Effect.forever
          )
        })

      const forget = (workspaceId: string) =>
        lock.withPermits(1)(
          Effect.gen(function* () {
            const watcher = watching.get(workspaceId)
            if (watcher === undefined) return
            watching.delete(workspaceId)
            yield* Scope.close(watcher.scope, Exit.void)
          })
        )

      const ensure = (workspace: Watched) =>
        Effect.gen(function* () {
          const ready = yield* lock.withPermits(1)(
            Effect.gen(function* () {
              const known = watching.get(workspace.id)
              if (known !== undefined) return known.ready
              const ready = yield* Deferred.make<void>()
              if (!(yield* exists(workspace.path))) {
                yield* Deferred.succeed(ready, undefined)
                return ready
              }
              const child = yield* Scope.fork(scope, ExecutionStrategy.sequential)
              watching.set(workspace.id, { scope: child, ready })
              yield* watch(workspace, ready).pipe(
                Effect.catchAll((error) =>
                  Effect.logWarning(`cannot watch workspace ${workspace.name}: ${error.message}`)
                ),
                Effect.ensuring(Deferred.succeed(ready, undefined)),
                Effect.provideService(Scope.Scope, child),
                Effect.forkIn(child)
              )
              return ready
            })
          )
          yield* Deferred.await(ready)
        })

      /** Watches every workspace of this machine; stops for removed ones (added elsewhere, say). */
      const refresh = Effect.gen(function* () {
        const rows = yield* sql<Watched>`SELECT id, name, path FROM vibes_workspaces`
        const ids = new Set(rows.map((row) => row.id))
        for (const id of [...watching.keys()]) if (!ids.has(id)) yield* forget(id)
        for (const row of rows) yield* ensure(row)
      }).pipe(
        Effect.catchAll((error) => Effect.logWarning(`cannot list workspaces to watch: ${error.message}`))
      )

      yield* refresh.pipe(Effect.repeat(Schedule.spaced(options.pollInterval)), Effect.forkScoped)
      return GitWatcher.of({ ensure, forget })
    })
  )
