/**
 * Handlers of the `Events` RPC group: reads go to the log, subscriptions to the node's bus.
 */
import { Effect, Option, Stream } from "effect"
import { EventsRpcs, type Start } from "../../rpc/EventsRpcs.js"
import { EventBus } from "../../infra/eventlog/EventBus.js"
import { EventLog, type From, Retention } from "../../infra/eventlog/EventLog.js"
import { ConsumerStats, EventLogStats, RetentionStats } from "../../rpc/Events.js"

/** Turns a client's start into the log's, reading a consumer's committed offset. */
export const resolveStart = (log: EventLog["Type"], start: Start) =>
  start._tag === "Consumer"
    ? Effect.map(log.committed(start.name), (committed): From => ({
        _tag: "Offset",
        offset: Option.getOrElse(committed, () => 0) + 1
      }))
    : Effect.succeed<From>(start)

/** The `Events.*` handlers. */
export const layer = EventsRpcs.toLayer(
  Effect.gen(function* () {
    const log = yield* EventLog
    const bus = yield* EventBus
    const policies = yield* Retention
    const retention = policies.map((policy) =>
      RetentionStats.make({
        types: policy.types,
        maxAgeMillis: policy.maxAgeMillis ?? null,
        maxBytes: policy.maxBytes ?? null,
        snapshotType: policy.snapshotType ?? null
      })
    )
    return {
      "Events.Read": ({ filter, from, limit }) => log.read(from, filter, limit),
      "Events.Subscribe": ({ filter, from }) =>
        Stream.unwrap(Effect.map(resolveStart(log, from), (start) => bus.subscribe(start, filter))),
      "Events.Head": () => Effect.map(log.head, (head) => ({ head })),
      "Events.Stats": () =>
        Effect.gen(function* () {
          const stats = yield* log.stats
          const consumers = yield* log.consumers
          return EventLogStats.make({
            ...stats,
            consumers: consumers.map(({ name, offset }) =>
              ConsumerStats.make({ name, offset, lag: Math.max(0, stats.head - offset) })
            ),
            retention
          })
        }),
      "Events.Commit": ({ consumer, offset }) => log.commit(consumer, offset),
      "Events.Committed": ({ consumer }) =>
        Effect.map(log.committed(consumer), (offset) => ({ offset: Option.getOrNull(offset) }))
    }
  })
)
