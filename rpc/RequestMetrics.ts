/**
 * Rate, errors and duration of every RPC, measured where the server runs it. Clients need nothing:
 * the middleware is server-side only.
 */
import * as RpcMiddleware from "@effect/rpc/RpcMiddleware"

/** Wraps each RPC on the server to count it and time it, by method and outcome. */
export class RequestMetrics extends RpcMiddleware.Tag<RequestMetrics>()("vibes/RequestMetrics", {
  wrap: true
}) {}
