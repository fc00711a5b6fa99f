/**
 * Gauges of the Node process itself: CPU time, resident and heap memory, event-loop delay,
 * garbage-collection pauses and open handles, under the names Prometheus' Node clients use.
 */
import { monitorEventLoopDelay, PerformanceObserver, type PerformanceEntry } from "node:perf_hooks"
import { Effect, Metric, MetricBoundaries, type Scope } from "effect"
import { tagged } from "./MetricTags.js"

const cpuSeconds = Metric.counter("process_cpu_seconds_total", {
  description: "CPU time the process used, user and system",
  incremental: true
})
const residentBytes = Metric.gauge("process_resident_memory_bytes", { description: "Resident memory" })
const startTime = Metric.gauge("process_start_time_seconds", {
  description: "When the process started, in seconds since the epoch"
})
const heapUsed = Metric.gauge("nodejs_heap_size_used_bytes", { description: "V8 heap in use" })
const heapTotal = Metric.gauge("nodejs_heap_size_total_bytes", { description: "V8 heap reserved" })
const externalBytes = Metric.gauge("nodejs_external_memory_bytes", {
  description: "Memory of C++ objects bound to JavaScript (buffers among them)"
})
const loopDelay = Metric.gauge("nodejs_eventloop_delay_seconds", {
  description: "Event-loop delay since the previous scrape, by statistic (p50, p99, max, mean)"
})
const gcDuration = Metric.histogram(
  "nodejs_gc_duration_seconds",
  MetricBoundaries.fromIterable([0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1]),
  "Garbage-collection pauses, by kind"
)
const activeResources = Metric.gauge("nodejs_active_resources", {
  description: "Handles and requests keeping the event loop alive (sockets, timers, files, processes)"
})

const gcKinds: Record<number, string> = { 1: "minor", 2: "major", 4: "incremental", 8: "weakcb" }

const kindOf = (entry: PerformanceEntry): string => {
  const detail: unknown = "detail" in entry ? entry.detail : undefined
  const kind =
    typeof detail === "object" && detail !== null && "kind" in detail && typeof detail.kind === "number"
      ? detail.kind
      : 0
  return gcKinds[kind] ?? "other"
}

/**
 * Starts watching the event loop and the garbage collector for the life of the scope, and returns
 * the sampler that sets the process gauges (run before each scrape).
 */
export const make: Effect.Effect<Effect.Effect<void>, never, Scope.Scope> = Effect.gen(function* () {
  const delay = yield* Effect.acquireRelease(
    Effect.sync(() => {
      const histogram = monitorEventLoopDelay({ resolution: 20 })
      histogram.enable()
      return histogram
    }),
    (histogram) => Effect.sync(() => histogram.disable())
  )
  yield* Effect.acquireRelease(
    Effect.sync(() => {
      const observer = new PerformanceObserver((list) => {
        for (const entry of list.getEntries()) {
          tagged(gcDuration, { kind: kindOf(entry) }).unsafeUpdate(entry.duration / 1000, [])
        }
      })
      observer.observe({ entryTypes: ["gc"] })
      return observer
    }),
    (observer) => Effect.sync(() => observer.disconnect())
  )
  yield* Metric.set(startTime, Math.round((Date.now() - process.uptime() * 1000) / 1000))
  // The counter starts with what the process used before the first scrape.
  let cpu: NodeJS.CpuUsage = { user: 0, system: 0 }
  return Effect.suspend(() => {
    const memory = process.memoryUsage()
    const nextCpu = process.cpuUsage()
    const usedMicros = nextCpu.user - cpu.user + (nextCpu.system - cpu.system)
    cpu = nextCpu
    // A window without a sample (two scrapes within the resolution) keeps the previous values.
    const stats =
      delay.count === 0
        ? {}
        : { p50: delay.percentile(50), p99: delay.percentile(99), max: delay.max, mean: delay.mean }
    if (delay.count > 0) delay.reset()
    return Effect.all(
      [
        Metric.incrementBy(cpuSeconds, usedMicros / 1e6),
        Metric.set(residentBytes, memory.rss),
        Metric.set(heapUsed, memory.heapUsed),
        Metric.set(heapTotal, memory.heapTotal),
        Metric.set(externalBytes, memory.external),
        Metric.set(activeResources, process.getActiveResourcesInfo().length),
        ...Object.entries(stats).map(([statistic, nanos]) =>
          Metric.set(tagged(loopDelay, { statistic }), Number.isFinite(nanos) ? nanos / 1e9 : 0)
        )
      ],
      { discard: true }
    )
  })
})
