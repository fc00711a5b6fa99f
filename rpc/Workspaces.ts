/**
 * Workspaces: git repositories registered with vibes, and the worktrees vibes makes in them so
 * that each session or job works on a branch of its own. The models, errors and the `Workspaces`
 * RPC group.
 */
import { Schema } from "effect"
import * as Rpc from "@effect/rpc/Rpc"
import * as RpcGroup from "@effect/rpc/RpcGroup"
import { AuthMiddleware } from "./Auth.js"
import { PathText } from "./Text.js"

/** A workspace's name: 1 to 64 letters, digits, `_`, `.` or `-`, starting with a letter or digit. */
export const WorkspaceName = Schema.String.pipe(
  Schema.pattern(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/, {
    message: () =>
      "a workspace name is 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit"
  })
)

/**
 * What happens to a session's or job's worktree when it ends: `keep` it (default), remove it when
 * it has no uncommitted change (`remove-when-clean`), or remove it whatever it holds
 * (`remove-always`, which still keeps a worktree with uncommitted changes unless the close is
 * forced). Branches and commits are never deleted.
 */
export const ClosePolicy = Schema.Literal("keep", "remove-when-clean", "remove-always")
export type ClosePolicy = typeof ClosePolicy.Type

/** Why a main checkout is not following its branch right now. */
export const FollowBlock = Schema.Literal("dirty", "conflict", "diverged", "switched", "gone")
export type FollowBlock = typeof FollowBlock.Type

/**
 * Follow mode: the workspace's main checkout follows `branch` (usually checked out in a session's
 * worktree): each new commit of it is checked out there (a detached HEAD), never forced. When it
 * cannot be, following is `blocked` with the `reason` until the main checkout allows it again.
 */
export class FollowInfo extends Schema.Class<FollowInfo>("FollowInfo")({
  branch: Schema.String,
  state: Schema.Literal("following", "blocked"),
  reason: Schema.NullOr(FollowBlock),
  message: Schema.NullOr(Schema.String),
  /** The commit last checked out in the main checkout by following. */
  commit: Schema.NullOr(Schema.String),
  /** The branch the main checkout was on when following began (unfollowing switches back to it). */
  restore: Schema.NullOr(Schema.String),
  updatedAt: Schema.DateTimeUtc
}) {}

/** A registered repository. */
export class WorkspaceInfo extends Schema.Class<WorkspaceInfo>("WorkspaceInfo")({
  id: Schema.String,
  name: Schema.String,
  /** The repository's top-level directory on the server (its real path). */
  path: Schema.String,
  /** The branch new branches start from when no `from` is given. */
  defaultBranch: Schema.String,
  /** Where vibes puts the worktrees of this workspace. */
  worktreesDir: Schema.String,
  closePolicy: ClosePolicy,
  createdAt: Schema.DateTimeUtc,
  /** The branch the main checkout follows, when it does. */
  follow: Schema.NullOr(FollowInfo)
}) {}

/** `Add`: registers the repository at `path` (a directory inside it is enough). */
export class AddWorkspace extends Schema.Class<AddWorkspace>("AddWorkspace")({
  /** An absolute path on the server. */
  path: PathText,
  /** Default: the repository directory's name. */
  name: Schema.optional(Schema.String),
  /** Default: the branch checked out in the repository. */
  defaultBranch: Schema.optional(Schema.String),
  /** Default: `<repository>.worktrees`, beside the repository. */
  worktreesDir: Schema.optional(PathText),
  closePolicy: Schema.optionalWith(ClosePolicy, { default: () => "keep" as const })
}) {}

/** `Remove`: unregisters a workspace and removes the worktrees vibes made in it. */
export class RemoveWorkspace extends Schema.Class<RemoveWorkspace>("RemoveWorkspace")({
  workspace: Schema.String,
  /** Removes worktrees with uncommitted changes too (those changes are lost). */
  force: Schema.optionalWith(Schema.Boolean, { default: () => false })
}) {}

/** Where a worktree is in its life: in use by its session or job, kept after it, or removed. */
export const WorktreeState = Schema.Literal("active", "kept", "removed")
export type WorktreeState = typeof WorktreeState.Type

/** A worktree vibes made for a session or a job. */
export class WorktreeInfo extends Schema.Class<WorktreeInfo>("WorktreeInfo")({
  id: Schema.String,
  workspace: Schema.String,
  branch: Schema.String,
  path: Schema.String,
  sessionId: Schema.NullOr(Schema.String),
  jobId: Schema.NullOr(Schema.String),
  state: WorktreeState,
  createdAt: Schema.DateTimeUtc,
  closedAt: Schema.NullOr(Schema.DateTimeUtc)
}) {}

/** `RemoveWorktree`: removes the worktree vibes made for `branch` (the branch stays). */
export class RemoveWorktree extends Schema.Class<RemoveWorktree>("RemoveWorktree")({
  workspace: Schema.String,
  branch: Schema.String,
  /** Removes it even in use or with uncommitted changes (those changes are lost). */
  force: Schema.optionalWith(Schema.Boolean, { default: () => false })
}) {}

/** The slug of a branch: its worktree's directory name under the workspace's worktrees dir. */
export const branchSlug = (branch: string): string =>
  branch.replace(/[^A-Za-z0-9._-]+/g, "-").replace(/^[.-]+/, "") || "branch"

/** `Follow`: the main checkout of `workspace` follows `branch` from now on. */
export class FollowBranch extends Schema.Class<FollowBranch>("FollowBranch")({
  workspace: Schema.String,
  branch: Schema.String
}) {}

// Errors ------------------------------------------------------------------------------------

/** No workspace of that name. */
export class WorkspaceNotFound extends Schema.TaggedError<WorkspaceNotFound>()("WorkspaceNotFound", {
  workspace: Schema.String,
  message: Schema.String
}) {}

/** A workspace of that name exists already. */
export class WorkspaceExists extends Schema.TaggedError<WorkspaceExists>()("WorkspaceExists", {
  workspace: Schema.String,
  message: Schema.String
}) {}

/** The path is not inside a git repository with a working tree. */
export class NotARepository extends Schema.TaggedError<NotARepository>()("NotARepository", {
  path: Schema.String,
  message: Schema.String
}) {}

/** git refuses the name as a branch name (`git check-ref-format --branch`). */
export class InvalidBranchName extends Schema.TaggedError<InvalidBranchName>()("InvalidBranchName", {
  branch: Schema.String,
  message: Schema.String
}) {}

/** The path is taken: by another workspace, another worktree, or a file that is there. */
export class PathInUse extends Schema.TaggedError<PathInUse>()("PathInUse", {
  path: Schema.String,
  message: Schema.String
}) {}

/** A worktree holds uncommitted changes; nothing was removed (force it to lose them). */
export class WorktreeDirty extends Schema.TaggedError<WorktreeDirty>()("WorktreeDirty", {
  path: Schema.String,
  message: Schema.String
}) {}

/** A request field is malformed; nothing was changed. */
export class InvalidWorkspaceRequest extends Schema.TaggedError<InvalidWorkspaceRequest>()(
  "InvalidWorkspaceRequest",
  { field: Schema.String, message: Schema.String }
) {}

/** git refused an operation for another reason (its message says which). */
export class GitRefused extends Schema.TaggedError<GitRefused>()("GitRefused", {
  message: Schema.String
}) {}

/** Paths are in conflict (unmerged, or a merge git cannot make); nothing was changed. */
export class GitConflict extends Schema.TaggedError<GitConflict>()("GitConflict", {
  paths: Schema.Array(Schema.String),
  message: Schema.String
}) {}

/** A commit was asked for with nothing staged (and nothing to stage with `all`). */
export class NothingToCommit extends Schema.TaggedError<NothingToCommit>()("NothingToCommit", {
  path: Schema.String,
  message: Schema.String
}) {}

/** The workspace store could not be reached; nothing was changed. Retry later. */
export class WorkspacesUnavailable extends Schema.TaggedError<WorkspacesUnavailable>()(
  "WorkspacesUnavailable",
  { message: Schema.String }
) {}

/** Every error a workspace call can fail with. */
export const WorkspaceError = Schema.Union(
  WorkspaceNotFound,
  WorkspaceExists,
  NotARepository,
  InvalidBranchName,
  PathInUse,
  WorktreeDirty,
  InvalidWorkspaceRequest,
  GitRefused,
  GitConflict,
  NothingToCommit,
  WorkspacesUnavailable
)
export type WorkspaceError = typeof WorkspaceError.Type

/** The tags of `WorkspaceError`. */
export const workspaceErrorTags: ReadonlySet<string> = new Set([
  "WorkspaceNotFound",
  "WorkspaceExists",
  "NotARepository",
  "InvalidBranchName",
  "PathInUse",
  "WorktreeDirty",
  "InvalidWorkspaceRequest",
  "GitRefused",
  "GitConflict",
  "NothingToCommit",
  "WorkspacesUnavailable"
])

// RPCs --------------------------------------------------------------------------------------

/** The `Workspaces` RPC group, at `/rpc`. */
export class WorkspacesRpcs extends RpcGroup.make(
  Rpc.make("Add", { payload: AddWorkspace, success: WorkspaceInfo, error: WorkspaceError }),
  Rpc.make("List", { success: Schema.Array(WorkspaceInfo), error: WorkspaceError }),
  Rpc.make("Get", { payload: { workspace: Schema.String }, success: WorkspaceInfo, error: WorkspaceError }),
  Rpc.make("Remove", { payload: RemoveWorkspace, success: WorkspaceInfo, error: WorkspaceError }),
  /** The worktrees vibes made in a workspace, newest first (removed ones included). */
  Rpc.make("Worktrees", {
    payload: { workspace: Schema.String },
    success: Schema.Array(WorktreeInfo),
    error: WorkspaceError
  }),
  Rpc.make("RemoveWorktree", { payload: RemoveWorktree, success: WorktreeInfo, error: WorkspaceError }),
  /**
   * Keeps the main checkout following a branch: checked out (detached) at once, then at each of
   * its new commits. Refused with uncommitted changes or unmerged paths in the main checkout.
   */
  Rpc.make("Follow", { payload: FollowBranch, success: WorkspaceInfo, error: WorkspaceError }),
  /** Stops following; the main checkout goes back to its branch when it is clean and unmoved. */
  Rpc.make("Unfollow", {
    payload: { workspace: Schema.String },
    success: WorkspaceInfo,
    error: WorkspaceError
  })
)
  .prefix("Workspaces.")
  .middleware(AuthMiddleware) {}
