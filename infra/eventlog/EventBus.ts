/**
 * The local fan-out of committed events. One tailer per node follows the log; every subscriber
 * gets matching events through a bounded buffer of its own. A subscriber that lets its buffer
 * fill is cut off with `SubscriberLagged` (after the events already buffered), so a slow client
 * never slows the log or the other subscribers; it resumes from its last offset.
 *
 * A subscription from a past offset reads history from the log up to the point where it joined
 * the bus, then continues with the bus: offsets decide, so there is no gap and no duplicate.
 */
import {
  Chunk,
  Context,
  type Duration,
  Effect,
  Either,
  Layer,
  Metric,
  Option,
  Queue,
  Schedule,
  Stream
} from "effect"
import {
  compileFilter,
  EventFilter,
  type EventLogError,
  type InvalidGlob,
  type StoredEvent,
  SubscriberLagged
} from "../../rpc/Events.js"
import { EventLog, type From } from "./EventLog.js"

/** Tuning of the bus. */
export interface Options {
  /** Events a subscriber may have waiting before it is cut off. */
  readonly bufferSize?: number
  /** Page size of history reads. */
  readonly pageSize?: number
}

/** What the bus is doing, for metrics and tests. */
export interface Stats {
  readonly subscribers: number
  /** Subscribers cut off for lagging, since start. */
  readonly lagged: number
  /** The newest offset fanned out. */
  readonly position: number
}

/** The local fan-out of committed events. */
export class EventBus extends Context.Tag("vibes/EventBus")<
  EventBus,
  {
    /** History from `from`, then live; fails with `SubscriberLagged` if it falls behind. */
    readonly subscribe: (
      from: From,
      filter: EventFilter,
      options?: { readonly bufferSize?: number }
    ) => Stream.Stream<StoredEvent, EventLogError | InvalidGlob | SubscriberLagged>
    readonly stats: Effect.Effect<Stats>
    /**
     * Ends every subscription once the events up to `upTo` have been handed to it (waiting at
     * most `timeout` for the tailer to reach it); later subscriptions get history only. For
     * shutdown: clients receive everything up to the node's last event, then a clean end.
     */
    readonly close: (upTo: number, timeout?: Duration.DurationInput) => Effect.Effect<void>
  }
>() {}

const lagged: unique symbol = Symbol("lagged")
const end: unique symbol = Symbol("end")
type Item = StoredEvent | typeof lagged | typeof end

interface Subscriber {
  readonly matches: (event: StoredEvent) => boolean
  readonly queue: Queue.Queue<Item>
  readonly bufferSize: number
}

const subscribersGauge = Metric.gauge("vibes_event_subscribers", {
  description: "Live subscribers of this node's event bus"
})
const laggedCounter = Metric.counter("vibes_event_subscribers_lagged_total", {
  description: "Subscribers cut off because they fell too far behind",
  incremental: true
})

/** Builds the bus on the current log; the scope owns its tailer. */
export const make = (options: Options = {}) =>
  Effect.gen(function* () {
    const log = yield* EventLog
    const defaultBuffer = options.bufferSize ?? 4096
    const pageSize = options.pageSize ?? 1000
    const subscribers = new Set<Subscriber>()
    let position = yield* log.head
    let laggedTotal = 0
    let closed = false

    // Runs between fiber steps, so a subscriber joining sees a consistent `position`.
    const fanOut = (events: Chunk.Chunk<StoredEvent>) =>
      Effect.suspend(() => {
        let cutOff = 0
        for (const event of events) {
          if (event.offset <= position) continue
          position = event.offset
          for (const subscriber of subscribers) {
            if (!subscriber.matches(event)) continue
            const size = Option.getOrElse(subscriber.queue.unsafeSize(), () => 0)
            if (size >= subscriber.bufferSize) {
              // The queue holds bufferSize + 2, so the markers always fit.
              subscriber.queue.unsafeOffer(lagged)
              subscribers.delete(subscriber)
              cutOff++
            } else {
              subscriber.queue.unsafeOffer(event)
            }
          }
        }
        if (cutOff === 0) return Effect.void
        laggedTotal += cutOff
        return Effect.zipRight(
          Metric.incrementBy(laggedCounter, cutOff),
          Metric.set(subscribersGauge, subscribers.size)
        )
      })

    const all = EventFilter.make({})
    yield* Effect.forkScoped(
      Stream.suspend(() => log.subscribe({ _tag: "Offset", offset: position + 1 }, all)).pipe(
        Stream.runForEachChunk(fanOut),
        Effect.tapError((error) => Effect.logWarning(`event bus tailer failed, resuming: ${error.message}`)),
        Effect.retry(Schedule.exponential("100 millis").pipe(Schedule.union(Schedule.spaced("2 seconds")))),
        Effect.forever
      )
    )

    const history = (start: number, upTo: number, filter: EventFilter) =>
      Stream.paginateChunkEffect(start, (next) =>
        Effect.map(log.read(next, filter, pageSize), (rows) => {
          const page = rows.filter((event) => event.offset <= upTo)
          const last = rows[rows.length - 1]
          const more = rows.length === pageSize && last !== undefined && last.offset < upTo
          return [Chunk.unsafeFromArray(page), more && last ? Option.some(last.offset + 1) : Option.none()]
        })
      )

    const subscribe = (
      from: From,
      filter: EventFilter,
      subscribeOptions?: { readonly bufferSize?: number }
    ) =>
      Stream.unwrapScoped(
        Effect.gen(function* () {
          const compiled = yield* Either.match(compileFilter(filter), {
            onLeft: Effect.fail,
            onRight: Effect.succeed
          })
          const start = yield* log.resolve(from)
          const bufferSize = Math.max(1, subscribeOptions?.bufferSize ?? defaultBuffer)
          const queue = yield* Queue.bounded<Item>(bufferSize + 2)
          const subscriber: Subscriber = { matches: compiled.matches, queue, bufferSize }
          const joinedAt = yield* Effect.sync(() => {
            if (closed) queue.unsafeOffer(end)
            else subscribers.add(subscriber)
            return position
          })
          yield* Metric.set(subscribersGauge, subscribers.size)
          yield* Effect.addFinalizer(() =>
            Effect.suspend(() => {
              subscribers.delete(subscriber)
              return Effect.zipRight(Metric.set(subscribersGauge, subscribers.size), Queue.shutdown(queue))
            })
          )
          let last = start - 1
          let stop: "lagged" | "end" | undefined
          const live = Stream.fromQueue(queue).pipe(
            Stream.takeWhile((item): item is StoredEvent => {
              if (item === lagged || item === end) {
                stop = item === lagged ? "lagged" : "end"
                return false
              }
              return true
            }),
            Stream.filter((event) => event.offset >= start)
          )
          const cut = Stream.suspend(() => {
            if (stop !== "lagged") return Stream.empty
            const lastOffset = Math.max(0, last)
            return Stream.fail(
              new SubscriberLagged({
                lastOffset,
                message: `the subscriber fell more than ${bufferSize} events behind; resume after offset ${lastOffset}`
              })
            )
          })
          const past = start <= joinedAt ? history(start, joinedAt, filter) : Stream.empty
          return Stream.concat(past, live).pipe(
            Stream.tap((event) =>
              Effect.sync(() => {
                last = event.offset
              })
            ),
            Stream.concat(cut)
          )
        })
      )

    const close = (upTo: number, timeout: Duration.DurationInput = "2 seconds") =>
      Effect.sync(() => position).pipe(
        Effect.repeat({ until: (at) => at >= upTo, schedule: Schedule.spaced("5 millis") }),
        Effect.timeout(timeout),
        Effect.ignore,
        Effect.zipRight(
          Effect.sync(() => {
            closed = true
            for (const subscriber of subscribers) subscriber.queue.unsafeOffer(end)
            subscribers.clear()
          })
        ),
        Effect.zipRight(Metric.set(subscribersGauge, 0))
      )

    return EventBus.of({
      subscribe,
      stats: Effect.sync(() => ({ subscribers: subscribers.size, lagged: laggedTotal, position })),
      close
    })
  })

/** The bus as a layer on the current log. */
export const layer = (options?: Options): Layer.Layer<EventBus, never, EventLog> =>
  Layer.scoped(EventBus, make(options).pipe(Effect.orDie))
