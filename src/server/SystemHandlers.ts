/**
 * Handlers of the `System` RPC group.
 */
import { Clock, DateTime, Effect } from "effect"
import { SystemInfo, SystemRpcs } from "../../rpc/System.js"
import { Emitter } from "./Emitter.js"
import { NodeInfo } from "./NodeInfo.js"

/** `System.Info`: version, node id, start time, uptime and database kind. */
export const layer = SystemRpcs.toLayer(
  Effect.gen(function* () {
    const node = yield* NodeInfo
    const emitter = yield* Emitter
    return {
      "System.Info": (_, { clientId }) =>
        Effect.map(Clock.currentTimeMillis, (now) =>
          SystemInfo.make({
            version: node.version,
            nodeId: node.nodeId,
            startedAt: node.startedAt,
            uptimeMillis: Math.max(0, now - DateTime.toEpochMillis(node.startedAt)),
            database: node.database
          })
        ).pipe(
          Effect.tap(() =>
            emitter.emit(
              "client.called",
              { rpc: "System.Info", clientId: String(clientId) },
              { component: "rpc" }
            )
          )
        )
    }
  })
)
