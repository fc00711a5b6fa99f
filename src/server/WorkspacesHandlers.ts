/**
 * Handlers of the `Workspaces` RPC group, on the workspaces service.
 */
import { Effect } from "effect"
import { WorkspacesRpcs } from "../../rpc/Workspaces.js"
import { Workspaces } from "../../actors/workspace/Workspaces.js"
import { Follower } from "../../actors/workspace/Follow.js"

/** The handlers. */
export const layer = WorkspacesRpcs.toLayer(
  Effect.gen(function* () {
    const workspaces = yield* Workspaces
    const follower = yield* Follower
    return {
      "Workspaces.Add": (request) => workspaces.add(request),
      "Workspaces.List": () => workspaces.list,
      "Workspaces.Get": ({ workspace }) => workspaces.get(workspace),
      "Workspaces.Remove": ({ workspace, force }) => workspaces.remove(workspace, force),
      "Workspaces.Worktrees": ({ workspace }) => workspaces.worktrees(workspace),
      "Workspaces.RemoveWorktree": ({ workspace, branch, force }) =>
        workspaces.removeWorktree(workspace, branch, force),
      "Workspaces.Follow": ({ workspace, branch }) => follower.follow(workspace, branch),
      "Workspaces.Unfollow": ({ workspace }) => follower.unfollow(workspace)
    }
  })
)
