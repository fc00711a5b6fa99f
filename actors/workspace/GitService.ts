/**
 * The git service: status, branches, log and diff of a workspace's repository, of the worktree of
 * a branch, or of a session's or job's worktree, read with the system's git and answered in
 * bounded pages (a diff lists its files with `--numstat` first and reads the patches of one page
 * only; binary files are reported as binary, never as bytes).
 */
import * as fs from "node:fs"
import * as nodePath from "node:path"
import { Context, DateTime, Effect, Layer, Option } from "effect"
import { SqlClient } from "@effect/sql/SqlClient"
import {
  BranchInfo,
  CheckedOut,
  type CheckoutRequest,
  CommitInfo,
  CommitMade,
  type CommitRequest,
  DiffPage,
  type DiffRequest,
  FileDiff,
  GitStatus,
  maxPatchBytes,
  maxUntrackedBytes,
  StatusEntry
} from "../../rpc/Git.js"
import {
  GitConflict,
  GitRefused,
  InvalidBranchName,
  InvalidWorkspaceRequest,
  NotARepository,
  NothingToCommit,
  PathInUse,
  type WorkspaceInfo,
  WorktreeDirty
} from "../../rpc/Workspaces.js"
import { Git, isValidBranch } from "../../infra/git/Git.js"
import { GitWatcher } from "./GitWatcher.js"
import {
  parseWorktreeList,
  realPath,
  refused,
  RepoLock,
  unavailable,
  type WorkspaceError,
  Workspaces
} from "./Workspaces.js"

/** Where a git call looks (see `rpc/Git.ts` `GitTarget`). */
export interface Target {
  readonly workspace?: string | undefined
  readonly branch?: string | undefined
  readonly session?: string | undefined
  readonly job?: string | undefined
}

/** A located target: the directory git runs in, and the workspace when there is one. */
export interface Located {
  readonly dir: string
  readonly workspace: Option.Option<WorkspaceInfo>
}

/** The git service. */
export class GitService extends Context.Tag("vibes/GitService")<
  GitService,
  {
    /** The directory of a target (a worktree or checkout), checked to exist. */
    readonly locate: (target: Target) => Effect.Effect<Located, WorkspaceError>
    readonly status: (
      target: Target,
      offset: number,
      limit: number
    ) => Effect.Effect<GitStatus, WorkspaceError>
    readonly branches: (
      target: Target,
      offset: number,
      limit: number
    ) => Effect.Effect<ReadonlyArray<BranchInfo>, WorkspaceError>
    readonly log: (
      target: Target,
      ref: string | undefined,
      offset: number,
      limit: number
    ) => Effect.Effect<ReadonlyArray<CommitInfo>, WorkspaceError>
    readonly diff: (request: DiffRequest) => Effect.Effect<DiffPage, WorkspaceError>
    /** Commits in the target (under its repository's lock); the watcher reports it as `git.commit`. */
    readonly commit: (request: CommitRequest) => Effect.Effect<CommitMade, WorkspaceError>
    /** Switches the target's checkout to a branch (under its repository's lock). */
    readonly checkout: (request: CheckoutRequest) => Effect.Effect<CheckedOut, WorkspaceError>
  }
>() {}

const invalid = (field: string, message: string) => new InvalidWorkspaceRequest({ field, message })

/** The empty tree's id: what HEAD is before the first commit. */
const emptyTree = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"

/** Parses `git status --porcelain=v2 --branch -z`. */
export const parseStatus = (output: string) => {
  const header = {
    oid: null as string | null,
    head: null as string | null,
    upstream: null as string | null,
    ahead: 0,
    behind: 0
  }
  const entries: Array<StatusEntry> = []
  const fields = output.split("\0")
  const rest = (line: string, skip: number) => {
    let at = 0
    for (let i = 0; i < skip; i++) at = line.indexOf(" ", at) + 1
    return line.slice(at)
  }
  for (let i = 0; i < fields.length; i++) {
    const line = fields[i] ?? ""
    if (line.startsWith("# branch.oid ")) {
      const oid = line.slice("# branch.oid ".length)
      header.oid = oid === "(initial)" ? null : oid
    } else if (line.startsWith("# branch.head ")) {
      const head = line.slice("# branch.head ".length)
      header.head = head === "(detached)" ? null : head
    } else if (line.startsWith("# branch.upstream "))
      header.upstream = line.slice("# branch.upstream ".length)
    else if (line.startsWith("# branch.ab ")) {
      const [ahead, behind] = line.slice("# branch.ab ".length).split(" ")
      header.ahead = Math.abs(Number(ahead))
      header.behind = Math.abs(Number(behind))
    } else if (line.startsWith("1 ")) {
      const xy = line.slice(2, 4)
      entries.push(
        StatusEntry.make({
          path: rest(line, 8),
          origPath: null,
          kind: "changed",
          index: xy[0] ?? ".",
          worktree: xy[1] ?? "."
        })
      )
    } else if (line.startsWith("2 ")) {
      const xy = line.slice(2, 4)
      const origPath = fields[i + 1] ?? ""
      i++
      entries.push(
        StatusEntry.make({
          path: rest(line, 9),
          origPath,
          kind: "renamed",
          index: xy[0] ?? ".",
          worktree: xy[1] ?? "."
        })
      )
    } else if (line.startsWith("u ")) {
      const xy = line.slice(2, 4)
      entries.push(
        StatusEntry.make({
          path: rest(line, 10),
          origPath: null,
          kind: "unmerged",
          index: xy[0] ?? "U",
          worktree: xy[1] ?? "U"
        })
      )
    } else if (line.startsWith("? ")) {
      entries.push(
        StatusEntry.make({
          path: line.slice(2),
          origPath: null,
          kind: "untracked",
          index: "?",
          worktree: "?"
        })
      )
    }
  }
  return { header, entries }
}

/** One file of `git diff --numstat -z`. */
export interface NumstatEntry {
  readonly path: string
  readonly oldPath: string | null
  readonly added: number | null
  readonly deleted: number | null
}

/** Parses `git diff --numstat -z` (renames are `A\tD\t\0old\0new\0`; binary files count `-`). */
export const parseNumstat = (output: string): ReadonlyArray<NumstatEntry> => {
  const fields = output.split("\0")
  const files: Array<NumstatEntry> = []
  for (let i = 0; i < fields.length; i++) {
    const field = fields[i] ?? ""
    if (field === "") continue
    const [added = "-", deleted = "-", ...named] = field.split("\t")
    const count = (text: string) => (text === "-" ? null : Number(text))
    const name = named.join("\t")
    if (name === "") {
      const oldPath = fields[i + 1] ?? ""
      const newPath = fields[i + 2] ?? ""
      i += 2
      files.push({ path: newPath, oldPath, added: count(added), deleted: count(deleted) })
    } else files.push({ path: name, oldPath: null, added: count(added), deleted: count(deleted) })
  }
  return files
}

/** Splits a multi-file patch into one patch a file, in git's order. */
export const splitPatch = (patch: string): ReadonlyArray<string> =>
  patch === "" ? [] : patch.split(/^(?=diff --git )/m).filter((part) => part.startsWith("diff --git "))

const literal = (p: string) => `:(literal)${p}`

/** The git service, on the workspaces and git. */
export const layer = Layer.effect(
  GitService,
  Effect.gen(function* () {
    const git = yield* Git
    const workspaces = yield* Workspaces
    const sql = yield* SqlClient
    const lock = yield* RepoLock
    const watcher = yield* GitWatcher

    const existing = (dir: string, what: string) =>
      Effect.flatMap(realPath(dir), (real) =>
        Option.isSome(real)
          ? Effect.succeed(real.value)
          : Effect.fail(new NotARepository({ path: dir, message: `${what} at ${dir} is gone` }))
      )

    const ownedWorktree = (column: "session_id" | "job_id", id: string) =>
      Effect.gen(function* () {
        const rows = yield* sql<{ readonly path: string; readonly name: string }>`
          SELECT w.path, ws.name FROM vibes_worktrees w JOIN vibes_workspaces ws ON ws.id = w.workspace_id
          WHERE ${sql(column)} = ${id} ORDER BY w.created_at DESC LIMIT 1`.pipe(Effect.mapError(unavailable))
        return Option.fromNullable(rows[0])
      })

    const locate = (target: Target): Effect.Effect<Located, WorkspaceError> =>
      Effect.gen(function* () {
        const given = [target.workspace, target.session, target.job].filter((x) => x !== undefined).length
        if (given !== 1) {
          return yield* invalid(
            "workspace",
            "name exactly one of workspace (with an optional branch), session or job"
          )
        }
        if (target.session !== undefined || target.job !== undefined) {
          if (target.branch !== undefined)
            return yield* invalid("branch", "branch goes with workspace, not with session or job")
          const [column, id] =
            target.session !== undefined
              ? (["session_id", target.session] as const)
              : (["job_id", target.job ?? ""] as const)
          const owned = yield* ownedWorktree(column, id)
          if (Option.isSome(owned)) {
            const workspace = yield* workspaces.get(owned.value.name)
            return {
              dir: yield* existing(owned.value.path, "the worktree"),
              workspace: Option.some(workspace)
            }
          }
          if (target.session !== undefined) {
            const rows = yield* sql<{
              readonly cwd: string
            }>`SELECT cwd FROM vibes_sessions WHERE id = ${target.session}`.pipe(Effect.mapError(unavailable))
            const cwd = rows[0]?.cwd
            if (cwd !== undefined)
              return { dir: yield* existing(cwd, "the session's directory"), workspace: Option.none() }
          }
          return yield* invalid(
            target.session !== undefined ? "session" : "job",
            `no ${target.session !== undefined ? "session" : "job"} ${id} with a worktree or directory`
          )
        }
        const workspace = yield* workspaces.get(target.workspace ?? "")
        if (target.branch === undefined)
          return { dir: yield* existing(workspace.path, "the repository"), workspace: Option.some(workspace) }
        const listed = parseWorktreeList(
          yield* git
            .text(workspace.path, ["worktree", "list", "--porcelain", "-z"])
            .pipe(Effect.mapError(refused))
        )
        const found = listed.find((entry) => entry.branch === `refs/heads/${target.branch}`)
        if (found === undefined) {
          return yield* invalid(
            "branch",
            `branch ${JSON.stringify((target.branch ?? "").slice(0, 100))} is not checked out in a worktree of ${workspace.name}`
          )
        }
        return { dir: yield* existing(found.path, "the worktree"), workspace: Option.some(workspace) }
      })

    /** Whether `ref` names a commit in `dir`'s repository. */
    const commitOf = (dir: string, ref: string, field: string) =>
      ref === "" || ref.startsWith("-")
        ? Effect.fail(invalid(field, `${field} must name a branch, tag or commit`))
        : git
            .text(dir, ["rev-parse", "--verify", "--quiet", `${ref}^{commit}`])
            .pipe(
              Effect.mapError(() =>
                invalid(field, `there is no branch, tag or commit named ${JSON.stringify(ref.slice(0, 100))}`)
              )
            )

    const status = (target: Target, offset: number, limit: number) =>
      Effect.gen(function* () {
        const { dir } = yield* locate(target)
        const output = yield* git
          .run(dir, ["status", "--porcelain=v2", "--branch", "-z", "--untracked-files=normal"])
          .pipe(Effect.mapError(refused))
        const parsed = parseStatus(output.stdout.toString("utf8"))
        return GitStatus.make({
          path: dir,
          branch: parsed.header.head,
          head: parsed.header.oid,
          upstream: parsed.header.upstream,
          ahead: parsed.header.ahead,
          behind: parsed.header.behind,
          entries: parsed.entries.slice(offset, offset + limit),
          total: parsed.entries.length,
          offset
        })
      }).pipe(Effect.withSpan("Git.status"))

    const branches = (target: Target, offset: number, limit: number) =>
      Effect.gen(function* () {
        const { dir, workspace } = yield* locate(target)
        const output = yield* git
          .text(dir, [
            "for-each-ref",
            "--format=%(refname:short)%00%(objectname)%00%(subject)%00%(committerdate:iso-strict)%00%(upstream:short)%00%(worktreepath)",
            "refs/heads"
          ])
          .pipe(Effect.mapError(refused))
        const owners = Option.isSome(workspace)
          ? yield* sql<{
              readonly path: string
              readonly session_id: string | null
              readonly job_id: string | null
            }>`
              SELECT path, session_id, job_id FROM vibes_worktrees
              WHERE workspace_id = ${workspace.value.id} AND state <> 'removed'`.pipe(
              Effect.mapError(unavailable)
            )
          : []
        const lines = output === "" ? [] : output.split("\n")
        return lines.slice(offset, offset + limit).map((line) => {
          const [name = "", commit = "", subject = "", date = "", upstream = "", worktree = ""] =
            line.split("\0")
          const owner = owners.find((row) => row.path === worktree)
          return BranchInfo.make({
            name,
            commit,
            subject,
            committedAt: DateTime.unsafeMake(date),
            upstream: upstream === "" ? null : upstream,
            worktree: worktree === "" ? null : worktree,
            sessionId: owner?.session_id ?? null,
            jobId: owner?.job_id ?? null
          })
        })
      }).pipe(Effect.withSpan("Git.branches"))

    /** Commits of `dir` from `start` back, newest first. */
    const readLog = (dir: string, start: string, offset: number, limit: number) =>
      Effect.gen(function* () {
        const output = yield* git
          .text(dir, [
            "log",
            "--format=%H%x00%P%x00%an%x00%ae%x00%aI%x00%s",
            `--skip=${offset}`,
            `--max-count=${limit}`,
            "--end-of-options",
            start,
            "--"
          ])
          .pipe(Effect.mapError(refused))
        return (output === "" ? [] : output.split("\n")).map((line) => {
          const [commit = "", parents = "", author = "", email = "", date = "", subject = ""] =
            line.split("\0")
          return CommitInfo.make({
            commit,
            parents: parents === "" ? [] : parents.split(" "),
            author,
            email,
            authoredAt: DateTime.unsafeMake(date),
            subject
          })
        })
      })

    const log = (target: Target, ref: string | undefined, offset: number, limit: number) =>
      Effect.gen(function* () {
        const { dir } = yield* locate(target)
        const start = ref ?? "HEAD"
        yield* commitOf(dir, start, "ref")
        return yield* readLog(dir, start, offset, limit)
      }).pipe(Effect.withSpan("Git.log"))

    /**
     * An untracked file as `git diff` shows a new one (`git diff --no-index /dev/null file`, which
     * shows a symbolic link as its target, never what it points to); one larger than
     * `maxUntrackedBytes` is not read.
     */
    const untrackedDiff = (dir: string, file: string) =>
      Effect.gen(function* () {
        const base = { path: file, oldPath: null, untracked: true }
        const size = yield* Effect.promise(() =>
          fs.promises.lstat(nodePath.join(dir, file)).then(
            (stat) => (stat.isFile() ? stat.size : 0),
            () => 0
          )
        )
        if (size > maxUntrackedBytes) {
          return FileDiff.make({
            ...base,
            added: null,
            deleted: null,
            binary: false,
            patch: null,
            truncated: true
          })
        }
        const output = (yield* git.run(
          dir,
          ["diff", "--no-index", "--no-color", "--no-ext-diff", "--numstat", "-p", "--", "/dev/null", file],
          { okExitCodes: [1], maxBuffer: 4 * maxUntrackedBytes }
        )).stdout.toString("utf8")
        const [added = "-", deleted = "-"] = output.slice(0, output.indexOf("\n")).split("\t")
        const binary = added === "-"
        const at = output.indexOf("diff --git ")
        const patch = binary || at < 0 ? null : output.slice(at)
        const truncated = patch !== null && Buffer.byteLength(patch) > maxPatchBytes
        return FileDiff.make({
          ...base,
          added: binary ? null : Number(added),
          deleted: binary ? null : Number(deleted),
          binary,
          patch: truncated ? Buffer.from(patch).subarray(0, maxPatchBytes).toString("utf8") : patch,
          truncated
        })
      }).pipe(
        // Gone between the listing and the read (an agent at work): listed, without content.
        Effect.orElseSucceed(() =>
          FileDiff.make({
            path: file,
            oldPath: null,
            untracked: true,
            added: null,
            deleted: null,
            binary: false,
            patch: null,
            truncated: false
          })
        )
      )

    const diff = (request: DiffRequest) =>
      Effect.gen(function* () {
        const { dir, workspace } = yield* locate(request)
        let range: ReadonlyArray<string>
        let from: string
        let to: string
        let untracked: ReadonlyArray<string> = []
        if (request.against === "head") {
          if (request.base !== undefined) return yield* invalid("base", "base goes with against: base")
          const head = yield* git.run(dir, ["rev-parse", "--verify", "--quiet", "HEAD"]).pipe(
            Effect.as("HEAD"),
            Effect.orElseSucceed(() => emptyTree)
          )
          range = [head]
          from = "HEAD"
          to = "working tree"
          const others = yield* git
            .text(dir, ["ls-files", "--others", "--exclude-standard", "-z"])
            .pipe(Effect.mapError(refused))
          untracked = others.split("\0").filter((p) => p !== "")
        } else {
          const base = request.base ?? Option.getOrUndefined(Option.map(workspace, (w) => w.defaultBranch))
          if (base === undefined) return yield* invalid("base", "name the base to compare with")
          yield* commitOf(dir, base, "base")
          range = [`${base}...HEAD`]
          from = base
          to = yield* git.text(dir, ["rev-parse", "--abbrev-ref", "HEAD"]).pipe(Effect.mapError(refused))
        }
        const numstat = parseNumstat(
          (yield* git
            .run(dir, ["diff", "--numstat", "-z", "-M", "--no-ext-diff", "--end-of-options", ...range, "--"])
            .pipe(Effect.mapError(refused))).stdout.toString("utf8")
        )
        const page = numstat.slice(request.offset, request.offset + request.limit)
        const untrackedStart = Math.max(0, request.offset - numstat.length)
        const untrackedPage = untracked.slice(untrackedStart, untrackedStart + request.limit - page.length)
        const textual = page.filter((file) => file.added !== null)
        const patches =
          textual.length === 0
            ? []
            : splitPatch(
                (yield* git
                  .run(
                    dir,
                    [
                      "diff",
                      "-M",
                      "--no-color",
                      "--no-ext-diff",
                      "--end-of-options",
                      ...range,
                      "--",
                      ...textual.flatMap((file) =>
                        file.oldPath === null
                          ? [literal(file.path)]
                          : [literal(file.oldPath), literal(file.path)]
                      )
                    ],
                    { maxBuffer: 256 * 1024 * 1024 }
                  )
                  .pipe(Effect.mapError(refused))).stdout.toString("utf8")
              )
        const byPath = new Map<string, string>()
        if (patches.length === textual.length)
          textual.forEach((file, i) => byPath.set(file.path, patches[i] ?? ""))
        const files = page.map((file) => {
          const patch = byPath.get(file.path)
          const truncated = patch !== undefined && Buffer.byteLength(patch) > maxPatchBytes
          return FileDiff.make({
            path: file.path,
            oldPath: file.oldPath,
            added: file.added,
            deleted: file.deleted,
            binary: file.added === null,
            patch:
              patch === undefined
                ? null
                : truncated
                  ? Buffer.from(patch).subarray(0, maxPatchBytes).toString("utf8")
                  : patch,
            truncated
          })
        })
        const added = yield* Effect.forEach(untrackedPage, (file) => untrackedDiff(dir, file), {
          concurrency: 4
        })
        return DiffPage.make({
          from,
          to,
          files: [...files, ...added],
          total: numstat.length + untracked.length,
          offset: request.offset,
          untracked: untracked.slice(0, 1000)
        })
      }).pipe(Effect.withSpan("Git.diff"))

    /** Runs `effect` under the lock of the target's repository, its watcher started first. */
    const locked = <A>(located: Located, effect: Effect.Effect<A, WorkspaceError>) =>
      Option.match(located.workspace, {
        onNone: () => lock.with(`dir:${located.dir}`, effect),
        onSome: (workspace) => Effect.zipRight(watcher.ensure(workspace), lock.with(workspace.id, effect))
      })

    /** The unmerged paths and the changes to tracked files of a checkout. */
    const changesOf = (dir: string) =>
      Effect.map(
        git
          .run(dir, ["status", "--porcelain=v2", "-z", "--untracked-files=no"])
          .pipe(Effect.mapError(refused)),
        (output) => {
          const { entries } = parseStatus(output.stdout.toString("utf8"))
          return {
            unmerged: entries.filter((entry) => entry.kind === "unmerged").map((entry) => entry.path),
            changed: entries.filter((entry) => entry.kind !== "unmerged").map((entry) => entry.path)
          }
        }
      )

    const conflict = (dir: string, paths: ReadonlyArray<string>, doing: string) =>
      new GitConflict({
        paths: paths.slice(0, 100),
        message: `${dir} has ${paths.length} unmerged path(s) (${paths.slice(0, 3).join(", ")}${paths.length > 3 ? ", …" : ""}); resolve them before ${doing}`
      })

    const commit = (request: CommitRequest) =>
      Effect.gen(function* () {
        const located = yield* locate(request)
        const { dir } = located
        return yield* locked(
          located,
          Effect.gen(function* () {
            const { unmerged } = yield* changesOf(dir)
            if (unmerged.length > 0) return yield* conflict(dir, unmerged, "committing")
            if (request.all) yield* git.run(dir, ["add", "--all"]).pipe(Effect.mapError(refused))
            const staged = yield* git.run(dir, ["diff", "--cached", "--quiet", "--no-ext-diff"]).pipe(
              Effect.as(false),
              Effect.catchAll((error) =>
                error.exitCode === 1 ? Effect.succeed(true) : Effect.fail(refused(error))
              )
            )
            if (!staged) {
              return yield* new NothingToCommit({
                path: dir,
                message: request.all
                  ? `${dir} has no change to commit`
                  : `nothing is staged in ${dir}; stage changes first, or commit with all`
              })
            }
            yield* git
              .run(dir, ["commit", "--quiet", "--cleanup=strip", "-F", "-"], { input: request.message })
              .pipe(Effect.mapError(refused))
            const [made] = yield* readLog(dir, "HEAD", 0, 1)
            const branch = yield* git
              .text(dir, ["symbolic-ref", "--quiet", "--short", "HEAD"])
              .pipe(Effect.orElseSucceed(() => ""))
            if (made === undefined)
              return yield* new GitRefused({ message: "git commit left no commit behind" })
            return CommitMade.make({ path: dir, branch: branch === "" ? null : branch, commit: made })
          })
        )
      }).pipe(Effect.withSpan("Git.commit"))

    const checkout = (request: CheckoutRequest) =>
      Effect.gen(function* () {
        const located = yield* locate(request)
        const { dir } = located
        const to = request.to
        if (!(yield* isValidBranch(git, to))) {
          return yield* new InvalidBranchName({
            branch: to,
            message: `git refuses ${JSON.stringify(to.slice(0, 100))} as a branch name`
          })
        }
        if (request.from !== undefined && !request.create)
          return yield* invalid("from", "from goes with create: it says where the new branch starts")
        const made = yield* sql<{ readonly session_id: string | null; readonly job_id: string | null }>`
          SELECT session_id, job_id FROM vibes_worktrees WHERE path = ${dir} AND state <> 'removed' LIMIT 1`.pipe(
          Effect.mapError(unavailable)
        )
        if (made[0] !== undefined) {
          const owner =
            made[0].session_id !== null ? `session ${made[0].session_id}` : `job ${made[0].job_id ?? "?"}`
          return yield* invalid(
            "to",
            `${dir} is the worktree vibes made for ${owner} and stays on its branch; check out in the workspace's main checkout`
          )
        }
        const following = Option.isSome(located.workspace)
          ? yield* sql<{ readonly follow_branch: string | null }>`
              SELECT follow_branch FROM vibes_workspaces WHERE id = ${located.workspace.value.id}`.pipe(
              Effect.mapError(unavailable)
            )
          : []
        const followed = following[0]?.follow_branch ?? null
        if (followed !== null && Option.isSome(located.workspace) && dir === located.workspace.value.path) {
          return yield* invalid(
            "to",
            `the main checkout of ${located.workspace.value.name} follows branch ${followed}; unfollow it first (vibes workspace unfollow ${located.workspace.value.name})`
          )
        }
        return yield* locked(
          located,
          Effect.gen(function* () {
            const exists = yield* git.run(dir, ["show-ref", "--verify", "--quiet", `refs/heads/${to}`]).pipe(
              Effect.as(true),
              Effect.orElseSucceed(() => false)
            )
            if (request.create && exists)
              return yield* invalid("to", `branch ${to} exists already; check it out without create`)
            if (!request.create && !exists)
              return yield* invalid(
                "to",
                `there is no branch ${JSON.stringify(to.slice(0, 100))}; create it with create`
              )
            if (request.from !== undefined) yield* commitOf(dir, request.from, "from")
            if (exists) {
              const listed = parseWorktreeList(
                yield* git.text(dir, ["worktree", "list", "--porcelain", "-z"]).pipe(Effect.mapError(refused))
              )
              const elsewhere = listed.find((entry) => entry.branch === `refs/heads/${to}`)
              if (elsewhere !== undefined && elsewhere.path !== dir) {
                return yield* new PathInUse({
                  path: elsewhere.path,
                  message: `branch ${to} is checked out at ${elsewhere.path}; git keeps a branch in one worktree at a time`
                })
              }
            }
            const { unmerged, changed } = yield* changesOf(dir)
            if (unmerged.length > 0) return yield* conflict(dir, unmerged, "checking out")
            if (changed.length > 0) {
              return yield* new WorktreeDirty({
                path: dir,
                message: `${dir} has uncommitted changes to ${changed.length} tracked file(s); commit or stash them before checking out ${to}`
              })
            }
            yield* git
              .run(
                dir,
                request.create
                  ? [
                      "switch",
                      "--quiet",
                      "--create",
                      to,
                      ...(request.from !== undefined ? [request.from] : [])
                    ]
                  : ["switch", "--quiet", "--no-guess", to]
              )
              .pipe(Effect.mapError(refused))
            const commit = yield* git.text(dir, ["rev-parse", "HEAD"]).pipe(Effect.mapError(refused))
            return CheckedOut.make({ path: dir, branch: to, commit, created: request.create })
          })
        )
      }).pipe(Effect.withSpan("Git.checkout"))

    return GitService.of({ locate, status, branches, log, diff, commit, checkout })
  })
)
