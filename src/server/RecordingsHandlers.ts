/**
 * Handlers of the `Recordings` RPC group, on the session recordings service.
 */
import { DateTime, Effect, Stream } from "effect"
import { RecordingsRpcs } from "../../rpc/Recordings.js"
import { Recordings } from "../../actors/session/Recordings.js"

/** The handlers. */
export const layer = RecordingsRpcs.toLayer(
  Effect.gen(function* () {
    const recordings = yield* Recordings
    return {
      "Recordings.Export": (request) =>
        recordings.export(request.sessionId, {
          ...(request.from !== undefined ? { from: DateTime.toEpochMillis(request.from) } : {}),
          ...(request.to !== undefined ? { to: DateTime.toEpochMillis(request.to) } : {})
        }),
      "Recordings.List": (request) => recordings.list(request.sessionId),
      "Recordings.Download": (request) =>
        Stream.unwrap(
          Effect.map(recordings.download(request.sessionId, request.name), (download) => download.body)
        )
    }
  })
)
