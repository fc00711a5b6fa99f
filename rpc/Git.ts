/**
 * The git service: what a workspace's repository, a branch's worktree or a session's worktree
 * holds (status, branches, log) and what changed (diff of the working tree against HEAD, or of
 * a branch against its base), in bounded pages. The models and the `Git` RPC group.
 */
import { Schema } from "effect"
import * as Rpc from "@effect/rpc/Rpc"
import * as RpcGroup from "@effect/rpc/RpcGroup"
import { AuthMiddleware } from "./Auth.js"
import { WorkspaceError } from "./Workspaces.js"

/**
 * Where to look: a workspace (its main checkout, or with `branch` the worktree that has the
 * branch checked out), or the worktree of a session or job (`session`, `job`).
 */
export const GitTarget = {
  workspace: Schema.optional(Schema.String),
  branch: Schema.optional(Schema.String),
  session: Schema.optional(Schema.String),
  job: Schema.optional(Schema.String)
}

/** The most entries one page holds. */
export const maxPageSize = 10_000

const Page = {
  offset: Schema.optionalWith(Schema.NonNegativeInt, { default: () => 0 }),
  limit: Schema.optionalWith(Schema.Int.pipe(Schema.between(1, maxPageSize)), { default: () => 1000 })
}

/** One changed path of `git status`: its index (`X`) and worktree (`Y`) letters, as git prints them. */
export class StatusEntry extends Schema.Class<StatusEntry>("StatusEntry")({
  path: Schema.String,
  /** Where a renamed or copied path came from. */
  origPath: Schema.NullOr(Schema.String),
  kind: Schema.Literal("changed", "renamed", "unmerged", "untracked"),
  index: Schema.String,
  worktree: Schema.String
}) {}

/** `git status` of one worktree, its entries paged. */
export class GitStatus extends Schema.Class<GitStatus>("GitStatus")({
  path: Schema.String,
  /** The branch checked out; null when HEAD is detached. */
  branch: Schema.NullOr(Schema.String),
  /** The commit checked out; null in a repository without commits. */
  head: Schema.NullOr(Schema.String),
  upstream: Schema.NullOr(Schema.String),
  ahead: Schema.Int,
  behind: Schema.Int,
  entries: Schema.Array(StatusEntry),
  /** Entries in all (the page holds `entries` from `offset`). */
  total: Schema.Int,
  offset: Schema.Int
}) {}

/** A local branch. */
export class BranchInfo extends Schema.Class<BranchInfo>("BranchInfo")({
  name: Schema.String,
  commit: Schema.String,
  subject: Schema.String,
  committedAt: Schema.DateTimeUtc,
  upstream: Schema.NullOr(Schema.String),
  /** The worktree that has it checked out, if any. */
  worktree: Schema.NullOr(Schema.String),
  /** The session or job working on it in a worktree vibes made, if any. */
  sessionId: Schema.NullOr(Schema.String),
  jobId: Schema.NullOr(Schema.String)
}) {}

/** One commit of a log. */
export class CommitInfo extends Schema.Class<CommitInfo>("CommitInfo")({
  commit: Schema.String,
  parents: Schema.Array(Schema.String),
  author: Schema.String,
  email: Schema.String,
  authoredAt: Schema.DateTimeUtc,
  subject: Schema.String
}) {}

/** What changed in one file. */
export class FileDiff extends Schema.Class<FileDiff>("FileDiff")({
  path: Schema.String,
  /** The path before a rename. */
  oldPath: Schema.NullOr(Schema.String),
  /** Lines added and deleted; null for a binary file. */
  added: Schema.NullOr(Schema.Int),
  deleted: Schema.NullOr(Schema.Int),
  binary: Schema.Boolean,
  /** The unified diff of the file; null for a binary file. */
  patch: Schema.NullOr(Schema.String),
  /** The patch was cut at `maxPatchBytes` (or, for an untracked file over `maxUntrackedBytes`, not read). */
  truncated: Schema.Boolean,
  /** A file git does not track yet, shown as a new file (as `git diff` shows an added one). */
  untracked: Schema.optionalWith(Schema.Boolean, { default: () => false })
}) {}

/** The largest untracked file a working-tree diff reads to show its content, in bytes. */
export const maxUntrackedBytes = 16 * 1024 * 1024

/** What a diff compares. */
export const DiffAgainst = Schema.Literal("head", "base")
export type DiffAgainst = typeof DiffAgainst.Type

/** A page of a diff. */
export class DiffPage extends Schema.Class<DiffPage>("DiffPage")({
  /** What the files are compared from and to, in git's words (`HEAD`, `main...feature`). */
  from: Schema.String,
  to: Schema.String,
  files: Schema.Array(FileDiff),
  /** Changed files in all, untracked ones included (the page holds `files` from `offset`). */
  total: Schema.Int,
  offset: Schema.Int,
  /**
   * Files git does not track yet (a working-tree diff only; the first 1,000): they come after the
   * tracked changes in `files`, each with `untracked` set and its content as a new file's patch.
   */
  untracked: Schema.Array(Schema.String)
}) {}

/** The largest patch of one file a diff carries, in bytes; a longer one is cut. */
export const maxPatchBytes = 256 * 1024

/** `Diff`: with `against: "head"` the working tree (staged or not) against HEAD; with `"base"` the branch against where it left `base`. */
export class DiffRequest extends Schema.Class<DiffRequest>("DiffRequest")({
  ...GitTarget,
  against: Schema.optionalWith(DiffAgainst, { default: () => "head" as const }),
  /** The base of `against: "base"`; default: the workspace's default branch. */
  base: Schema.optional(Schema.String),
  offset: Schema.optionalWith(Schema.NonNegativeInt, { default: () => 0 }),
  /** Files a page holds (1 to 1000, default 100). */
  limit: Schema.optionalWith(Schema.Int.pipe(Schema.between(1, 1000)), { default: () => 100 })
}) {}

/** `Log`: commits from `ref` back, newest first. */
export class LogRequest extends Schema.Class<LogRequest>("LogRequest")({
  ...GitTarget,
  /** The branch, tag or commit to start from; default: HEAD of the target. */
  ref: Schema.optional(Schema.String),
  offset: Schema.optionalWith(Schema.NonNegativeInt, { default: () => 0 }),
  limit: Schema.optionalWith(Schema.Int.pipe(Schema.between(1, 1000)), { default: () => 50 })
}) {}

/** A commit message: 1 to 64 KiB of text without NUL. */
export const CommitMessage = Schema.String.pipe(
  Schema.filter((text) => text.trim() !== "" && !text.includes("\u0000") && text.length <= 65_536, {
    message: () => "a commit message is 1 to 65,536 characters, not blank, without NUL"
  })
)

/**
 * `Commit`: commits what is staged in the target, or with `all` every change (new, changed and
 * deleted files, as `git add --all` stages them). Refused with unmerged paths (`GitConflict`) or
 * nothing to commit (`NothingToCommit`).
 */
export class CommitRequest extends Schema.Class<CommitRequest>("CommitRequest")({
  ...GitTarget,
  message: CommitMessage,
  all: Schema.optionalWith(Schema.Boolean, { default: () => false })
}) {}

/** A commit the git service made, and the branch it is on (null when HEAD is detached). */
export class CommitMade extends Schema.Class<CommitMade>("CommitMade")({
  path: Schema.String,
  branch: Schema.NullOr(Schema.String),
  commit: CommitInfo
}) {}

/**
 * `Checkout`: switches the target's checkout to branch `to` (with `create`, a new branch from
 * `from`, default HEAD). Refused when the checkout has uncommitted changes to tracked files
 * (`WorktreeDirty`) or unmerged paths (`GitConflict`), when `to` is checked out in another
 * worktree (`PathInUse`), and in a worktree vibes made for a session or job (it belongs to its
 * branch).
 */
export class CheckoutRequest extends Schema.Class<CheckoutRequest>("CheckoutRequest")({
  ...GitTarget,
  to: Schema.String,
  create: Schema.optionalWith(Schema.Boolean, { default: () => false }),
  from: Schema.optional(Schema.String)
}) {}

/** Where a checkout is after `Checkout`. */
export class CheckedOut extends Schema.Class<CheckedOut>("CheckedOut")({
  path: Schema.String,
  branch: Schema.String,
  commit: Schema.String,
  created: Schema.Boolean
}) {}

/** The `Git` RPC group, at `/rpc`. */
export class GitRpcs extends RpcGroup.make(
  Rpc.make("Status", { payload: { ...GitTarget, ...Page }, success: GitStatus, error: WorkspaceError }),
  Rpc.make("Branches", {
    payload: { ...GitTarget, ...Page },
    success: Schema.Array(BranchInfo),
    error: WorkspaceError
  }),
  Rpc.make("Log", { payload: LogRequest, success: Schema.Array(CommitInfo), error: WorkspaceError }),
  Rpc.make("Diff", { payload: DiffRequest, success: DiffPage, error: WorkspaceError }),
  Rpc.make("Commit", { payload: CommitRequest, success: CommitMade, error: WorkspaceError }),
  Rpc.make("Checkout", { payload: CheckoutRequest, success: CheckedOut, error: WorkspaceError })
)
  .prefix("Git.")
  .middleware(AuthMiddleware) {}
