/**
 * Handlers of the `Artifacts` RPC group, on the job artifacts service.
 */
import { Effect } from "effect"
import { ArtifactsRpcs } from "../../rpc/Artifacts.js"
import * as Artifacts from "../../actors/job/Artifacts.js"

/** The handlers. */
export const layer = ArtifactsRpcs.toLayer(
  Effect.gen(function* () {
    const artifacts = yield* Artifacts.Artifacts
    return {
      "Artifacts.List": (request) => artifacts.list(request.jobId),
      "Artifacts.Get": (request) => artifacts.get(request.jobId, request.name),
      "Artifacts.Download": (request) =>
        Artifacts.stream(artifacts, request.jobId, request.name, request.offset)
    }
  })
)
