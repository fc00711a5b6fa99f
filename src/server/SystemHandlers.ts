/**
 * Handlers of the `System` RPC group.
 */
import { Clock, DateTime, Effect } from "effect"
import { SystemInfo, SystemRpcs } from "../../rpc/System.js"
import { Membership } from "./Membership.js"
import { Emitter } from "../../infra/eventlog/Emitter.js"
import { NodeInfo } from "./NodeInfo.js"

/**
 * `System.Info`: version, node id, start time, uptime and database kind. `System.Cluster`: the
 * nodes, their health, shards and entities.
 */
export const layer = SystemRpcs.toLayer(
  Effect.gen(function* () {
    const node = yield* NodeInfo
    const emitter = yield* Emitter
    const membership = yield* Membership
    return {
      // The cluster's tables are read by every node; a database that cannot answer is a defect here.
      "System.Cluster": () => Effect.orDie(membership.describe),
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
