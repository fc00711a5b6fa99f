/**
 * The workspaces' REST answers: the HTTP status of each workspace error.
 */
import type { WorkspaceError } from "../../rpc/Workspaces.js"

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
      return 409
    case "GitRefused":
      return 422
    case "WorkspacesUnavailable":
      return 503
  }
}
