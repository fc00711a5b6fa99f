/**
 * Logs, traces and metrics of a node: JSON log lines when stdout is not a terminal (readable
 * ones when it is), OTLP traces when an endpoint is configured, and Effect metrics rendered in
 * the Prometheus text format for `/metrics`.
 */
import { PrometheusExporter, PrometheusSerializer } from "@opentelemetry/exporter-prometheus"
import {
  Context,
  Effect,
  FiberRef,
  FiberRefs,
  Inspectable,
  Layer,
  Logger,
  type LogLevel,
  Option,
  Tracer
} from "effect"
import * as FetchHttpClient from "@effect/platform/FetchHttpClient"
import * as Metrics from "@effect/opentelemetry/Metrics"
import * as OtlpSerialization from "@effect/opentelemetry/OtlpSerialization"
import * as OtlpTracer from "@effect/opentelemetry/OtlpTracer"
import * as Resource from "@effect/opentelemetry/Resource"

/** A log message part as JSON has it: errors by their message. */
const plain = (part: unknown): unknown => (part instanceof Error ? `${part.name}: ${part.message}` : part)

/**
 * JSON lines like `Logger.json`, with the `traceId` and `spanId` of the span the line was logged
 * in (when there is one), so a log line leads to its trace.
 */
export const tracedJsonLogger = Logger.make((options) => {
  const log = Logger.structuredLogger.log(options)
  const message = Array.isArray(log.message) ? log.message.map(plain) : plain(log.message)
  const span = Context.getOption(
    FiberRefs.getOrDefault(options.context, FiberRef.currentContext),
    Tracer.ParentSpan
  )
  return Inspectable.stringifyCircular(
    Option.match(span, {
      onNone: () => ({ ...log, message }),
      onSome: (parent) => ({ ...log, message, traceId: parent.traceId, spanId: parent.spanId })
    })
  )
})

/** Replaces the default logger: JSON lines, or the pretty logger on a terminal. */
export const layerLogger = (options: {
  readonly format: "auto" | "json" | "pretty"
  readonly level: LogLevel.LogLevel
  readonly isTTY: boolean
}): Layer.Layer<never> => {
  const pretty = options.format === "pretty" || (options.format === "auto" && options.isTTY)
  return Layer.merge(
    pretty ? Logger.pretty : Logger.replace(Logger.defaultLogger, Logger.withConsoleLog(tracedJsonLogger)),
    Logger.minimumLogLevel(options.level)
  )
}

/** Identity of this process in traces and metrics. */
export interface ServiceIdentity {
  readonly serviceVersion: string
  readonly nodeId: string
}

/** OTLP/HTTP (JSON) trace export to `<endpoint>/v1/traces`, or nothing without an endpoint. */
export const layerTracing = (
  endpoint: Option.Option<string>,
  identity: ServiceIdentity
): Layer.Layer<never> =>
  Option.match(endpoint, {
    onNone: () => Layer.empty,
    onSome: (base) =>
      OtlpTracer.layer({
        url: `${base.replace(/\/+$/, "")}/v1/traces`,
        resource: {
          serviceName: "vibes",
          serviceVersion: identity.serviceVersion,
          attributes: { "vibes.node_id": identity.nodeId }
        }
      }).pipe(Layer.provide(OtlpSerialization.layerJson), Layer.provide(FetchHttpClient.layer))
  })

/** Renders every Effect metric of the process in the Prometheus text format. */
export class PrometheusMetrics extends Context.Tag("vibes/PrometheusMetrics")<
  PrometheusMetrics,
  { readonly render: Effect.Effect<string> }
>() {}

/** How long the samplers of one scrape may take before the scrape goes on without them. */
const sampleTimeout = "2 seconds"

/**
 * Bridges Effect metrics to an OpenTelemetry reader that is scraped on demand (no own port).
 * The `samplers` run before each scrape, side by side, and set the gauges that are read rather
 * than counted (process, pool, event log, disk); one that fails or is slow is left out of that
 * scrape (and logged at debug level), the others are not.
 */
export const layerPrometheus = (
  identity: ServiceIdentity,
  samplers: ReadonlyArray<Effect.Effect<void, unknown>> = []
): Layer.Layer<PrometheusMetrics> =>
  Layer.scoped(
    PrometheusMetrics,
    Effect.gen(function* () {
      const exporter = new PrometheusExporter({ preventServerStart: true })
      const producer = yield* Metrics.makeProducer
      yield* Metrics.registerProducer(producer, () => exporter)
      const serializer = new PrometheusSerializer()
      return {
        render: Effect.forEach(
          samplers,
          (sampler) =>
            sampler.pipe(
              Effect.timeout(sampleTimeout),
              Effect.catchAllCause((cause) => Effect.logDebug("a metrics sampler failed", cause))
            ),
          { concurrency: "unbounded", discard: true }
        ).pipe(
          Effect.zipRight(Effect.promise(() => exporter.collect())),
          Effect.map(({ resourceMetrics }) => serializer.serialize(resourceMetrics))
        )
      }
    })
  ).pipe(
    Layer.provide(
      Resource.layer({
        serviceName: "vibes",
        serviceVersion: identity.serviceVersion,
        attributes: { "vibes.node_id": identity.nodeId }
      })
    )
  )
