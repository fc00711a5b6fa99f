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

/** RPCs about the node itself. */
export class SystemRpcs extends RpcGroup.make(Rpc.make("Info", { success: SystemInfo }))
  .prefix("System.")
  .middleware(AuthMiddleware) {}
