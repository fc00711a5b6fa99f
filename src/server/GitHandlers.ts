/**
 * Handlers of the `Git` RPC group, on the git service.
 */
import { Effect } from "effect"
import { GitRpcs } from "../../rpc/Git.js"
import { GitService } from "../../actors/workspace/GitService.js"

/** The handlers. */
export const layer = GitRpcs.toLayer(
  Effect.gen(function* () {
    const git = yield* GitService
    return {
      "Git.Status": (request) => git.status(request, request.offset, request.limit),
      "Git.Branches": (request) => git.branches(request, request.offset, request.limit),
      "Git.Log": (request) => git.log(request, request.ref, request.offset, request.limit),
      "Git.Diff": (request) => git.diff(request),
      "Git.Commit": (request) => git.commit(request),
      "Git.Checkout": (request) => git.checkout(request)
    }
  })
)
