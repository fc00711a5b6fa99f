/**
 * Handlers of the `Files` RPC group, on the file service.
 */
import { Effect } from "effect"
import { FilesRpcs } from "../../rpc/Files.js"
import { Files } from "../../actors/workspace/Files.js"

/** The handlers. */
export const layer = FilesRpcs.toLayer(
  Effect.gen(function* () {
    const files = yield* Files
    return {
      "Files.List": (request) => files.list(request, request.path, request.offset, request.limit),
      "Files.Stat": (request) => files.stat(request, request.path),
      "Files.Read": (request) => files.read(request, request.path, request.offset, request.length),
      "Files.Mkdir": (request) => files.mkdir(request, request.path, request.parents),
      "Files.Rename": (request) => files.rename(request, request.from, request.to, request.overwrite),
      "Files.Delete": (request) => files.remove(request, request.path, request.recursive)
    }
  })
)
