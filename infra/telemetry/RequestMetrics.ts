/**
 * Rate, errors and duration of the node's requests: every HTTP route (by method, route template
 * and status class) and every RPC (by method and outcome). Labels come from the route table and
 * the RPC contracts, never from what a client sends, so their number stays bounded.
 */
import { Cause, Effect, Exit, Layer, Metric, MetricBoundaries, Option } from "effect"
import * as HttpLayerRouter from "@effect/platform/HttpLayerRouter"
import * as HttpServerError from "@effect/platform/HttpServerError"
import type * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import type * as Rpc from "@effect/rpc/Rpc"
import * as RpcSchema from "@effect/rpc/RpcSchema"
import { RequestMetrics } from "../../rpc/RequestMetrics.js"
import { tagged } from "./MetricTags.js"

const boundaries = MetricBoundaries.fromIterable([
  0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30
])

const httpRequests = Metric.counter("vibes_http_requests_total", {
  description: "HTTP requests answered by the router, by method, route template and status class",
  incremental: true
})
const httpDuration = Metric.histogram(
  "vibes_http_request_duration_seconds",
  boundaries,
  "Time to produce an HTTP response (headers; a stream's body may flow on), by method and route template"
)
const rpcRequests = Metric.counter("vibes_rpc_requests_total", {
  description: "RPCs run, by method and outcome (ok, the error's tag, defect or interrupted)",
  incremental: true
})
const rpcDuration = Metric.histogram(
  "vibes_rpc_duration_seconds",
  boundaries,
  "Time an RPC ran (for a stream: until it ended), by method and kind"
)

/** `2xx`, `4xx`, … of a status. */
const statusClass = (status: number): string => `${Math.floor(status / 100)}xx`

const seconds = (startedAt: bigint) => Number(process.hrtime.bigint() - startedAt) / 1e9

/** The status the server will answer with, for a handler that ended with `exit`. */
const statusOf = (exit: Exit.Exit<HttpServerResponse.HttpServerResponse, unknown>): number =>
  Exit.isSuccess(exit) ? exit.value.status : HttpServerError.causeResponseStripped(exit.cause)[0].status

/**
 * Route middleware that counts and times each request under its route template (`/api/jobs/:id`,
 * not the path asked for). Provide `httpMiddleware.layer` to the routes it should measure.
 */
export const httpMiddleware = HttpLayerRouter.middleware(
  Effect.succeed(<E, R>(handler: Effect.Effect<HttpServerResponse.HttpServerResponse, E, R>) =>
    Effect.flatMap(HttpLayerRouter.RouteContext, (context) => {
      const startedAt = process.hrtime.bigint()
      const method = context.route.method
      const route = context.route.path
      return Effect.onExit(handler, (exit) =>
        Effect.sync(() => {
          if (Exit.isInterrupted(exit)) return
          const status = statusClass(statusOf(exit))
          tagged(httpRequests, { method, route, status }).unsafeUpdate(1, [])
          tagged(httpDuration, { method, route }).unsafeUpdate(seconds(startedAt), [])
        })
      )
    })
  )
)

/** What an RPC ended with: `ok`, the tag of its typed error, `defect` or `interrupted`. */
const outcomeOf = (exit: Exit.Exit<unknown, unknown>): string => {
  if (Exit.isSuccess(exit)) return "ok"
  const failure = Cause.failureOption(exit.cause)
  if (Option.isSome(failure)) {
    const error = failure.value
    return typeof error === "object" && error !== null && "_tag" in error && typeof error._tag === "string"
      ? error._tag
      : "error"
  }
  return Cause.isInterruptedOnly(exit.cause) ? "interrupted" : "defect"
}

const kindOf = (rpc: Rpc.AnyWithProps): string =>
  RpcSchema.isStreamSchema(rpc.successSchema) ? "stream" : "unary"

/** The server side of `RequestMetrics`: counts and times every RPC by its method. */
export const layerRpc: Layer.Layer<RequestMetrics> = Layer.succeed(
  RequestMetrics,
  RequestMetrics.of(({ next, rpc }) => {
    const startedAt = process.hrtime.bigint()
    const method = rpc._tag
    return Effect.onExit(next, (exit) =>
      Effect.sync(() => {
        tagged(rpcRequests, { method, outcome: outcomeOf(exit) }).unsafeUpdate(1, [])
        tagged(rpcDuration, { method, kind: kindOf(rpc) }).unsafeUpdate(seconds(startedAt), [])
      })
    )
  })
)
