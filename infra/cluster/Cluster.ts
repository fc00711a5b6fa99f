/**
 * The node as an `@effect/cluster` runner, and where entities live.
 *
 * Every node is a runner. A single node (the default) is its own runner and needs no network
 * address; in cluster mode (`VIBES_RUNNER_PORT`) nodes talk over sockets, keep runners and shard
 * locks in the shared Postgres (`cluster_runners`, `cluster_locks`) and persisted messages in
 * `cluster_messages`, so a shard whose node died is taken over, and its messages replayed, once
 * its lock expires. Runners reach each other over TLS keyed by the cluster secret (`RunnerTls`).
 *
 * Shard groups place entities:
 * - `default` holds jobs: every node serves it, so any node may run a job;
 * - `m-<machine>` holds the sessions of one machine: only the node on that machine serves it,
 *   because the PTYs live there. A session id starts with its machine (`<machine>_<uuid>`).
 */
import * as crypto from "node:crypto"
import { Duration, Effect, Layer, Option, type Redacted, type Scope } from "effect"
import type * as MessageStorage from "@effect/cluster/MessageStorage"
import * as RunnerAddress from "@effect/cluster/RunnerAddress"
import * as RunnerHealth from "@effect/cluster/RunnerHealth"
import * as Runners from "@effect/cluster/Runners"
import * as RunnerStorage from "@effect/cluster/RunnerStorage"
import * as ShardId from "@effect/cluster/ShardId"
import * as Sharding from "@effect/cluster/Sharding"
import * as ShardingConfig from "@effect/cluster/ShardingConfig"
import * as SocketRunner from "@effect/cluster/SocketRunner"
import * as SqlMessageStorage from "@effect/cluster/SqlMessageStorage"
import * as SqlRunnerStorage from "@effect/cluster/SqlRunnerStorage"
import * as RpcSerialization from "@effect/rpc/RpcSerialization"
import { SqlClient } from "@effect/sql/SqlClient"
import type { SqlError } from "@effect/sql/SqlError"
import { uuidv7 } from "../eventlog/EventLog.js"
import * as RunnerTls from "./RunnerTls.js"

/** The group every node serves: jobs. */

/** How a node takes part in a cluster of nodes on one Postgres. */
export interface ClusterConfig {
  /** The address other nodes reach this node's runner at. */
  readonly runnerHost: string
  readonly runnerPort: number
  /** Where the runner listens; by default the runner host. */
  readonly runnerListenHost: string
  /** A shard lock not refreshed for this long may be taken by another node (the failover time). */
  readonly shardLockExpiration: Duration.Duration
  readonly shardLockRefresh: Duration.Duration
  /** How often a node looks for shards to take or give back. */
  readonly shardRefresh: Duration.Duration
  /**
   * What runners prove to each other (TLS with a key derived from it): `VIBES_CLUSTER_SECRET`,
   * else the admin token. Every node of a cluster has the same one.
   */
  readonly secret: Redacted.Redacted<string>
}

export const sharedGroup = "default"

/** Shards per group; every node of a cluster must agree on it. */
export const shardsPerGroup = 300

const machinePattern = /^[a-z0-9-]{1,40}$/

/**
 * The machine name of node `nodeId`: the id itself when it is short and plain, else a digest of
 * it. It prefixes the ids of the sessions the node's machine holds.
 */
export const machineOf = (nodeId: string): string =>
  machinePattern.test(nodeId)
    ? nodeId
    : `n${crypto.createHash("sha256").update(nodeId).digest("hex").slice(0, 16)}`

/** The shard group of machine `machine`'s sessions (`group:shard` fits the 50 characters of a lock). */
export const machineGroup = (machine: string): string => `m-${machine}`

/** The machine a session id names, if it names one. */
export const machineOfSession = (sessionId: string): Option.Option<string> => {
  const at = sessionId.indexOf("_")
  return at > 0 ? Option.some(sessionId.slice(0, at)) : Option.none()
}

/** The shard group of session `sessionId`; sessions made before clusters stay in the shared one. */
export const sessionGroup = (sessionId: string): string =>
  Option.match(machineOfSession(sessionId), { onNone: () => sharedGroup, onSome: machineGroup })

/** A new session id on machine `machine`. */
export const newSessionId = (machine: string): string => `${machine}_${uuidv7()}`

/** The groups node `nodeId` serves: the shared one and its machine's. */
export const groupsOf = (nodeId: string): ReadonlyArray<string> => [
  sharedGroup,
  machineGroup(machineOf(nodeId))
]

/** How this node runs its entities. */
export interface RunnerOptions {
  readonly nodeId: string
  readonly cluster: Option.Option<ClusterConfig>
  /** How long entities get to stop when the node shuts down. */
  readonly entityTerminationTimeout: Duration.DurationInput
}

/** The runner address of a single node: never listened on, only a name in its message storage. */
const singleAddress = RunnerAddress.make("127.0.0.1", 34431)

/** The address other nodes reach this one at (`host:port`), or none for a single node. */
export const runnerAddress = (cluster: Option.Option<ClusterConfig>): Option.Option<string> =>
  Option.map(cluster, (c) => `${c.runnerHost}:${c.runnerPort}`)

/**
 * Held while a node creates and migrates tables at start-up (its own and the cluster's), so that
 * nodes starting together take turns instead of racing on `CREATE TABLE`. A session-level
 * advisory lock on a connection of its own, released with the scope.
 */
export const startupLock: Effect.Effect<void, SqlError, SqlClient | Scope.Scope> = Effect.gen(function* () {
  const sql = yield* SqlClient
  const connection = yield* sql.reserve
  yield* connection.executeRaw("SELECT pg_advisory_lock(743200001)", [])
  yield* Effect.addFinalizer(() =>
    connection.executeRaw("SELECT pg_advisory_unlock(743200001)", []).pipe(Effect.ignore)
  )
})

/**
 * Sharding for this node: a single runner, or a socket runner of the cluster. The configuration
 * is built here from vibes' own settings, never from the generic `HOST`/`PORT` variables.
 */
export const runnerLayer = (
  options: RunnerOptions
): Layer.Layer<Sharding.Sharding | Runners.Runners | MessageStorage.MessageStorage, never, SqlClient> => {
  const groups = groupsOf(options.nodeId)
  const messageStorage = SqlMessageStorage.layer
  return Option.match(options.cluster, {
    onNone: () =>
      Sharding.layer.pipe(
        Layer.provideMerge(Runners.layerNoop),
        Layer.provideMerge(messageStorage),
        Layer.provide([RunnerStorage.layerMemory, RunnerHealth.layerNoop]),
        Layer.provide(
          ShardingConfig.layer({
            runnerAddress: Option.some(singleAddress),
            availableShardGroups: groups,
            assignedShardGroups: groups,
            shardsPerGroup,
            entityTerminationTimeout: options.entityTerminationTimeout
          })
        )
      ),
    onSome: (cluster) => {
      const key = RunnerTls.runnerKey(cluster.secret)
      const clientProtocol = RunnerTls.clientProtocolLayer(key)
      return SocketRunner.layer.pipe(
        Layer.provide([
          RunnerTls.serverLayer(RunnerAddress.make(cluster.runnerListenHost, cluster.runnerPort), key),
          clientProtocol
        ]),
        Layer.provide(
          RunnerHealth.layerPing.pipe(Layer.provide(Runners.layerRpc), Layer.provide(clientProtocol))
        ),
        Layer.provideMerge(messageStorage),
        Layer.provide(Layer.orDie(SqlRunnerStorage.layer)),
        Layer.provide(
          ShardingConfig.layer({
            runnerAddress: Option.some(RunnerAddress.make(cluster.runnerHost, cluster.runnerPort)),
            runnerListenAddress: Option.some(
              RunnerAddress.make(cluster.runnerListenHost, cluster.runnerPort)
            ),
            availableShardGroups: groups,
            assignedShardGroups: groups,
            shardsPerGroup,
            // Lock numbers of advisory locks depend on each node's own groups; rows do not.
            shardLockDisableAdvisory: true,
            shardLockExpiration: cluster.shardLockExpiration,
            shardLockRefreshInterval: cluster.shardLockRefresh,
            refreshAssignmentsInterval: cluster.shardRefresh,
            entityTerminationTimeout: options.entityTerminationTimeout
          })
        ),
        Layer.provide(RpcSerialization.layerMsgPack),
        // A port in use, say: the node cannot be a runner, so it cannot start.
        Layer.orDie
      )
    }
  })
}

/** Shards of `groups` this node holds now. */
export const ownedShards = (sharding: Sharding.Sharding["Type"], groups: ReadonlyArray<string>): number => {
  let owned = 0
  for (const group of groups) {
    for (let id = 1; id <= shardsPerGroup; id++) {
      if (sharding.hasShardId(ShardId.make(group, id))) owned++
    }
  }
  return owned
}

/** For tests and docs: the worst-case failover time of a configuration. */
export const failoverBound = (cluster: ClusterConfig): Duration.Duration =>
  Duration.sum(cluster.shardLockExpiration, Duration.times(cluster.shardRefresh, 2))
