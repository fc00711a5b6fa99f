/**
 * The `System` RPC group: questions about the node a client is talking to.
 */
import { Schema } from "effect"
import * as Rpc from "@effect/rpc/Rpc"
import * as RpcGroup from "@effect/rpc/RpcGroup"
import { AuthMiddleware } from "./Auth.js"

/** Where the node's database lives. */
export const DatabaseKind = Schema.Literal("embedded", "external")
export type DatabaseKind = typeof DatabaseKind.Type

/** What `System.Info` answers. */
export class SystemInfo extends Schema.Class<SystemInfo>("SystemInfo")({
  version: Schema.String,
  nodeId: Schema.String,
  startedAt: Schema.DateTimeUtc,
  uptimeMillis: Schema.NonNegativeInt,
  database: DatabaseKind
}) {}

/**
 * How a node is doing, as the cluster sees it: `up` (heartbeat recent), `unresponsive` (heartbeat
 * late), `lost` (silent past the lost-after time without a clean stop: its sessions were taken
 * over) or `stopped` (shut down cleanly).
 */
export const NodeState = Schema.Literal("up", "unresponsive", "lost", "stopped")
export type NodeState = typeof NodeState.Type

/** One node of the cluster. */
export class ClusterNode extends Schema.Class<ClusterNode>("ClusterNode")({
  nodeId: Schema.String,
  /** The machine whose sessions it holds; session ids start with it. */
  machine: Schema.NullOr(Schema.String),
  version: Schema.String,
  host: Schema.String,
  pid: Schema.Int,
  /** Where clients reach it (HTTP, RPC, SSE). */
  url: Schema.NullOr(Schema.String),
  /** Where other nodes reach its runner; null for a single node. */
  runnerAddress: Schema.NullOr(Schema.String),
  state: NodeState,
  startedAt: Schema.DateTimeUtc,
  lastSeenAt: Schema.DateTimeUtc,
  /** Shards it held and entities it had active at its last heartbeat. */
  shards: Schema.Int,
  entities: Schema.Int,
  /** Sessions running on its machine. */
  sessions: Schema.Int,
  /** Jobs it is running now. */
  jobs: Schema.Int
}) {}

/** What `System.Cluster` answers. */
export class ClusterInfo extends Schema.Class<ClusterInfo>("ClusterInfo")({
  mode: Schema.Literal("single", "cluster"),
  /** The node that answered. */
  nodeId: Schema.String,
  shardsPerGroup: Schema.Int,
  /** Shard groups: `default` (jobs, any node) and `m-<machine>` (that machine's sessions). */
  groups: Schema.Array(
    Schema.Struct({ name: Schema.String, shards: Schema.Int, owners: Schema.Array(Schema.String) })
  ),
  /** Entity types every node runs. */
  entityTypes: Schema.Array(Schema.String),
  nodes: Schema.Array(ClusterNode)
}) {}

/** RPCs about the node itself and its cluster. */
export class SystemRpcs extends RpcGroup.make(
  Rpc.make("Info", { success: SystemInfo }),
  Rpc.make("Cluster", { success: ClusterInfo })
)
  .prefix("System.")
  .middleware(AuthMiddleware) {}
