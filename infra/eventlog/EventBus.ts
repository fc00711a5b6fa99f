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
  type Scope,
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
    /**
     * Like `subscribe`, but the fan-out hands each event to `sink` synchronously: no fiber and no
     * queue per subscriber. Detached when the scope closes.
     */
    readonly attach: (
      from: From,
      filter: EventFilter,
      sink: Sink,
      options?: { readonly bufferSize?: number }
    ) => Effect.Effect<void, EventLogError | InvalidGlob, Scope.Scope>
    readonly stats: Effect.Effect<Stats>
    /**
     * Ends every subscription once the events up to `upTo` have been handed to it (waiting at
     * most `timeout` for the tailer to reach it), then waits (at most `timeout` again) until their
     * streams have ended; later subscriptions get history only. For shutdown: clients receive
     * everything up to the node's last event, then a clean end.
     */
    readonly close: (upTo: number, timeout?: Duration.DurationInput) => Effect.Effect<void>
  }
>() {}

/** Receives an attached subscription's events, synchronously, from the fan-out. */
export interface Sink {
  /** Takes the next event. */
  readonly offer: (event: StoredEvent) => void
  /** Events it has taken but not yet passed on; at the buffer size it is cut off as lagged. */
  readonly backlog: () => number
  /** The subscription ended: cut off, closed by the node, or failed reading history. */
  readonly end: (reason: SinkEnd) => void
}

/** Why an attached subscription ended. */
export type SinkEnd =
  | { readonly _tag: "Lagged"; readonly error: SubscriberLagged }
  | { readonly _tag: "Closed" }
  | { readonly _tag: "Failed"; readonly error: EventLogError | InvalidGlob }

const lagged: unique symbol = Symbol("lagged")
const end: unique symbol = Symbol("end")
type Item = StoredEvent | typeof lagged | typeof end

interface QueueSubscriber {
  readonly _tag: "Queue"
  readonly matches: (event: StoredEvent) => boolean
  readonly queue: Queue.Queue<Item>
  readonly bufferSize: number
}

interface SinkSubscriber {
  readonly _tag: "Sink"
  readonly matches: (event: StoredEvent) => boolean
  readonly sink: Sink
  readonly start: number
  readonly bufferSize: number
  /** Live events held back while history is read; undefined once live. */
  pending: Array<StoredEvent> | undefined
  last: number
}

type Subscriber = QueueSubscriber | SinkSubscriber

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
    /** Subscription streams not yet ended (their scopes still open). */
    let open = 0

    const lag = (subscriber: SinkSubscriber) => {
      const lastOffset = Math.max(0, subscriber.last)
      subscriber.sink.end({
        _tag: "Lagged",
        error: new SubscriberLagged({
          lastOffset,
          message: `the subscriber fell more than ${subscriber.bufferSize} events behind; resume after offset ${lastOffset}`
        })
      })
    }

    // False when the subscriber is cut off.
    const toSink = (subscriber: SinkSubscriber, event: StoredEvent): boolean => {
      if (event.offset < subscriber.start) return true
      if (subscriber.pending !== undefined) {
        if (subscriber.pending.length >= subscriber.bufferSize) {
          lag(subscriber)
          return false
        }
        subscriber.pending.push(event)
        return true
      }
      if (subscriber.sink.backlog() >= subscriber.bufferSize) {
        lag(subscriber)
        return false
      }
      subscriber.last = event.offset
      subscriber.sink.offer(event)
      return true
    }

    // Runs between fiber steps, so a subscriber joining sees a consistent `position`.
    const fanOut = (events: Chunk.Chunk<StoredEvent>) =>
      Effect.suspend(() => {
        let cutOff = 0
        for (const event of events) {
          if (event.offset <= position) continue
          position = event.offset
          for (const subscriber of subscribers) {
            if (!subscriber.matches(event)) continue
            if (subscriber._tag === "Sink") {
              if (!toSink(subscriber, event)) {
                subscribers.delete(subscriber)
                cutOff++
              }
              continue
            }
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
          const subscriber: Subscriber = { _tag: "Queue", matches: compiled.matches, queue, bufferSize }
          const joinedAt = yield* Effect.sync(() => {
            open++
            if (closed) queue.unsafeOffer(end)
            else subscribers.add(subscriber)
            return position
          })
          yield* Metric.set(subscribersGauge, subscribers.size)
          yield* Effect.addFinalizer(() =>
            Effect.suspend(() => {
              open--
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

    const attach = (
      from: From,
      filter: EventFilter,
      sink: Sink,
      attachOptions?: { readonly bufferSize?: number }
    ) =>
      Effect.gen(function* () {
        const compiled = yield* Either.match(compileFilter(filter), {
          onLeft: Effect.fail,
          onRight: Effect.succeed
        })
        const start = yield* log.resolve(from)
        const subscriber: SinkSubscriber = {
          _tag: "Sink",
          matches: compiled.matches,
          sink,
          start,
          bufferSize: Math.max(1, attachOptions?.bufferSize ?? defaultBuffer),
          pending: undefined,
          last: start - 1
        }
        const joinedAt = yield* Effect.sync(() => {
          if (closed) {
            sink.end({ _tag: "Closed" })
            return undefined
          }
          if (start <= position) subscriber.pending = []
          subscribers.add(subscriber)
          return position
        })
        if (joinedAt === undefined) return
        yield* Metric.set(subscribersGauge, subscribers.size)
        yield* Effect.addFinalizer(() =>
          Effect.suspend(() => {
            subscribers.delete(subscriber)
            return Metric.set(subscribersGauge, subscribers.size)
          })
        )
        if (subscriber.pending === undefined) return
        let cut = false
        // History up to where it joined, then what the fan-out held back, then live.
        yield* Effect.forkScoped(
          history(start, joinedAt, filter).pipe(
            Stream.runForEachWhile((event) =>
              Effect.sync(() => {
                if (sink.backlog() < subscriber.bufferSize) {
                  subscriber.last = event.offset
                  sink.offer(event)
                  return true
                }
                subscribers.delete(subscriber)
                lag(subscriber)
                cut = true
                return false
              })
            ),
            Effect.matchEffect({
              onFailure: (error) =>
                Effect.sync(() => {
                  subscribers.delete(subscriber)
                  sink.end({ _tag: "Failed", error })
                }),
              onSuccess: () =>
                Effect.suspend(() => {
                  if (cut) {
                    laggedTotal++
                    return Metric.increment(laggedCounter)
                  }
                  const held = subscriber.pending ?? []
                  subscriber.pending = undefined
                  for (const event of held) {
                    if (!toSink(subscriber, event)) {
                      subscribers.delete(subscriber)
                      laggedTotal++
                      return Metric.increment(laggedCounter)
                    }
                  }
                  return Effect.void
                })
            })
          )
        )
      })

    const close = (upTo: number, timeout: Duration.DurationInput = "2 seconds") =>
      Effect.sync(() => position).pipe(
        Effect.repeat({ until: (at) => at >= upTo, schedule: Schedule.spaced("5 millis") }),
        Effect.timeout(timeout),
        Effect.ignore,
        Effect.zipRight(
          Effect.sync(() => {
            closed = true
            for (const subscriber of subscribers) {
              if (subscriber._tag === "Sink") subscriber.sink.end({ _tag: "Closed" })
              else subscriber.queue.unsafeOffer(end)
            }
            subscribers.clear()
          })
        ),
        Effect.zipRight(Metric.set(subscribersGauge, 0)),
        // Until each stream has ended, its transport may still be delivering the last events; a
        // server torn down before then would cut the stream (an interruption, not an end).
        Effect.zipRight(
          Effect.sync(() => open).pipe(
            Effect.repeat({ until: (count) => count === 0, schedule: Schedule.spaced("5 millis") }),
            Effect.timeout(timeout),
            Effect.ignore
          )
        )
      )

    return EventBus.of({
      subscribe,
      attach,
      stats: Effect.sync(() => ({ subscribers: subscribers.size, lagged: laggedTotal, position })),
      close
    })
  })

/** The bus as a layer on the current log. */
export const layer = (options?: Options): Layer.Layer<EventBus, never, EventLog> =>
  Layer.scoped(EventBus, make(options).pipe(Effect.orDie))
