/**
 * Gauges of the event log, read before each scrape: its head, and where each named consumer
 * stands (its committed offset and how far behind the head it is).
 */
import { Effect, Metric } from "effect"
import { tagged } from "../telemetry/MetricTags.js"
import { EventLog, type EventLogError } from "./EventLog.js"

const head = Metric.gauge("vibes_event_log_head", { description: "Offset of the newest event in the log" })
const consumerOffset = Metric.gauge("vibes_event_consumer_offset", {
  description: "Last offset a named consumer committed"
})
const consumerLag = Metric.gauge("vibes_event_consumer_lag", {
  description: "Events between a named consumer's committed offset and the head"
})

/** Most consumers reported: the label set stays bounded however many are created. */
const maxConsumers = 200

/** Sets the event-log gauges (the slowest consumers first when there are too many to report). */
export const sample: Effect.Effect<void, EventLogError, EventLog> = Effect.gen(function* () {
  const log = yield* EventLog
  const newest = yield* log.head
  const consumers = yield* log.consumers
  yield* Metric.set(head, newest)
  const reported = [...consumers].sort((a, b) => a.offset - b.offset).slice(0, maxConsumers)
  yield* Effect.forEach(
    reported,
    (consumer) =>
      Effect.zipRight(
        Metric.set(tagged(consumerOffset, { consumer: consumer.name }), consumer.offset),
        Metric.set(tagged(consumerLag, { consumer: consumer.name }), Math.max(0, newest - consumer.offset))
      ),
    { discard: true }
  )
})
