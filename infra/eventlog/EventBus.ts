/**
 * The local fan-out of committed events. One tailer per node follows the log; every subscriber
 * gets matching events through a bounded buffer of its own. A subscriber that lets its buffer
 * fill is cut off with `SubscriberLagged` (after the events already buffered), so a slow client
 * never slows the log or the other subscribers; it resumes from its last offset.
 *
 * A subscription from a past offset reads history from the log up to the point where it joined
 * the bus, then continues with the bus: offsets decide, so there is no gap and no duplicate.
 *
 * `fanOut: "direct"` (`makeDirect`, what a node on JetStream runs) has no tailer: each
 * subscription reads the log itself with its own filter, which JetStream turns into subjects, so
 * the node receives only what its clients follow. Same contract: a buffer per subscriber, the
 * same cut-off, the same shutdown.
 */
import {
  Chunk,
  Context,
  type Duration,
  Effect,
  Either,
  Fiber,
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
  EventLogError,
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
  /**
   * `tail` (the default): one tailer follows the whole log and fans out to every subscriber.
   * `direct`: no tailer; each subscription reads the log itself with its own filter, so a backend
   * that filters at the source (JetStream's subjects) sends this node only what its clients
   * asked for. The contract is the same.
   */
  readonly fanOut?: "tail" | "direct"
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

/**
 * Waits (at most `timeout`) until no subscription stream is open: until then its transport may
 * still be delivering the last events, and a server torn down before would cut the stream (an
 * interruption, not an end).
 */
const untilEnded = (open: () => number, timeout: Duration.DurationInput) =>
  Effect.sync(open).pipe(
    Effect.repeat({ until: (count) => count === 0, schedule: Schedule.spaced("5 millis") }),
    Effect.timeout(timeout),
    Effect.ignore
  )

/** Why a subscriber was cut off, and where it resumes. */
const laggedError = (lastOffset: number, bufferSize: number) =>
  new SubscriberLagged({
    lastOffset,
    message: `the subscriber fell more than ${bufferSize} events behind; resume after offset ${lastOffset}`
  })

/** The log's matching events from `start` up to `upTo`, read page by page. */
const historyOf =
  (log: EventLog["Type"], pageSize: number) => (start: number, upTo: number, filter: EventFilter) =>
    Stream.paginateChunkEffect(start, (next) =>
      Effect.map(log.read(next, filter, pageSize), (rows) => {
        const page = rows.filter((event) => event.offset <= upTo)
        const last = rows[rows.length - 1]
        const more = rows.length === pageSize && last !== undefined && last.offset < upTo
        return [Chunk.unsafeFromArray(page), more && last ? Option.some(last.offset + 1) : Option.none()]
      })
    )

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
        error: laggedError(lastOffset, subscriber.bufferSize)
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

    const history = historyOf(log, pageSize)

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
            return Stream.fail(laggedError(lastOffset, bufferSize))
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
        Effect.zipRight(untilEnded(() => open, timeout))
      )

    return EventBus.of({
      subscribe,
      attach,
      stats: Effect.sync(() => ({ subscribers: subscribers.size, lagged: laggedTotal, position })),
      close
    })
  })

/** A subscription of the direct bus: stops reading live, delivers the rest up to `upTo`, ends. */
interface Feed {
  readonly finish: (upTo: number) => Effect.Effect<void>
}

/** A failure of a direct subscription's reader, queued behind the events it read. */
interface Failed {
  readonly _tag: "Failed"
  readonly error: EventLogError
}

const isFailed = (item: unknown): item is Failed =>
  typeof item === "object" && item !== null && "_tag" in item && item._tag === "Failed"

/**
 * The bus with no tailer (`fanOut: "direct"`): each subscription runs its own `log.subscribe` with
 * its filter, into a buffer of `bufferSize` events; a subscriber that lets it fill is cut off
 * with `SubscriberLagged`, as on the tailing bus. `close(upTo)` stops every reader, delivers the
 * matching events up to `upTo` from the log, then ends each subscription.
 */
export const makeDirect = (options: Options = {}) =>
  Effect.gen(function* () {
    const log = yield* EventLog
    const defaultBuffer = options.bufferSize ?? 4096
    const pageSize = options.pageSize ?? 1000
    const feeds = new Set<Feed>()
    let laggedTotal = 0
    /** Set by `close`: the offset up to which later subscriptions get history, and nothing live. */
    let closedAt: number | undefined
    let open = 0

    const history = historyOf(log, pageSize)

    const compile = (filter: EventFilter) =>
      Either.match(compileFilter(filter), { onLeft: Effect.fail, onRight: Effect.succeed })

    /**
     * Reads the log from `start` into `take` (which returns false to stop), in a fiber of the
     * scope; the returned feed stops it and hands over what is left up to an offset.
     */
    const feed = (
      start: number,
      filter: EventFilter,
      take: (event: StoredEvent) => boolean,
      failed: (error: EventLogError) => void,
      ended: () => void
    ) =>
      Effect.gen(function* () {
        let fed = start - 1
        let stopped = false
        const offer = (event: StoredEvent) => {
          if (stopped || event.offset <= fed) return !stopped
          fed = event.offset
          if (!take(event)) stopped = true
          return !stopped
        }
        const reader = yield* log.subscribe({ _tag: "Offset", offset: start }, filter).pipe(
          Stream.runForEachWhile((event) => Effect.sync(() => offer(event))),
          Effect.catchAll((error) =>
            Effect.sync(() => {
              if (stopped) return
              stopped = true
              failed(error._tag === "InvalidGlob" ? new EventLogError({ message: error.message }) : error)
            })
          ),
          Effect.forkScoped
        )
        const self: Feed = {
          finish: (upTo) =>
            Effect.gen(function* () {
              yield* Fiber.interrupt(reader)
              if (stopped) return
              yield* history(fed + 1, upTo, filter).pipe(
                Stream.runForEachWhile((event) => Effect.sync(() => offer(event))),
                Effect.catchAll((error) =>
                  Effect.sync(() => {
                    stopped = true
                    failed(
                      error._tag === "InvalidGlob" ? new EventLogError({ message: error.message }) : error
                    )
                  })
                )
              )
              if (stopped) return
              stopped = true
              ended()
            })
        }
        feeds.add(self)
        yield* Metric.set(subscribersGauge, feeds.size)
        yield* Effect.addFinalizer(() =>
          Effect.suspend(() => {
            feeds.delete(self)
            return Metric.set(subscribersGauge, feeds.size)
          })
        )
      })

    const subscribe = (
      from: From,
      filter: EventFilter,
      subscribeOptions?: { readonly bufferSize?: number }
    ) =>
      Stream.unwrapScoped(
        Effect.gen(function* () {
          yield* compile(filter)
          const start = yield* log.resolve(from)
          const bufferSize = Math.max(1, subscribeOptions?.bufferSize ?? defaultBuffer)
          open++
          yield* Effect.addFinalizer(() =>
            Effect.sync(() => {
              open--
            })
          )
          if (closedAt !== undefined) {
            const past: Stream.Stream<StoredEvent, EventLogError | InvalidGlob | SubscriberLagged> = history(
              start,
              closedAt,
              filter
            )
            return past
          }
          // Room for the buffer and the one marker that ends it.
          const queue = yield* Queue.bounded<StoredEvent | Failed | typeof lagged | typeof end>(
            bufferSize + 2
          )
          yield* Effect.addFinalizer(() => Queue.shutdown(queue))
          yield* feed(
            start,
            filter,
            (event) => {
              if (Option.getOrElse(queue.unsafeSize(), () => 0) >= bufferSize) {
                queue.unsafeOffer(lagged)
                laggedTotal++
                return false
              }
              queue.unsafeOffer(event)
              return true
            },
            (error) => queue.unsafeOffer({ _tag: "Failed", error }),
            () => queue.unsafeOffer(end)
          )
          let last = start - 1
          let stop: "lagged" | "end" | undefined
          return Stream.fromQueue(queue).pipe(
            Stream.mapEffect((item) => (isFailed(item) ? Effect.fail(item.error) : Effect.succeed(item))),
            Stream.takeWhile((item): item is StoredEvent => {
              if (item === lagged || item === end) {
                stop = item === lagged ? "lagged" : "end"
                return false
              }
              return true
            }),
            Stream.tap((event) =>
              Effect.sync(() => {
                last = event.offset
              })
            ),
            Stream.concat(
              Stream.suspend(() =>
                stop === "lagged" ? Stream.fail(laggedError(Math.max(0, last), bufferSize)) : Stream.empty
              )
            )
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
        yield* compile(filter)
        const start = yield* log.resolve(from)
        if (closedAt !== undefined) {
          sink.end({ _tag: "Closed" })
          return
        }
        const bufferSize = Math.max(1, attachOptions?.bufferSize ?? defaultBuffer)
        let last = start - 1
        yield* feed(
          start,
          filter,
          (event) => {
            if (sink.backlog() >= bufferSize) {
              laggedTotal++
              sink.end({ _tag: "Lagged", error: laggedError(Math.max(0, last), bufferSize) })
              return false
            }
            last = event.offset
            sink.offer(event)
            return true
          },
          (error) => sink.end({ _tag: "Failed", error }),
          () => sink.end({ _tag: "Closed" })
        )
      })

    const close = (upTo: number, timeout: Duration.DurationInput = "2 seconds") =>
      Effect.suspend(() => {
        closedAt = upTo
        const all = [...feeds]
        feeds.clear()
        return Effect.forEach(all, (each) => each.finish(upTo), { concurrency: "unbounded", discard: true })
      }).pipe(
        Effect.timeout(timeout),
        Effect.ignore,
        Effect.zipRight(Metric.set(subscribersGauge, 0)),
        Effect.zipRight(untilEnded(() => open, timeout))
      )

    return EventBus.of({
      subscribe,
      attach,
      stats: Effect.map(
        Effect.orElseSucceed(log.head, () => 0),
        (position) => ({
          subscribers: feeds.size,
          lagged: laggedTotal,
          position
        })
      ),
      close
    })
  })

/** The bus as a layer on the current log: tailing (the default) or direct (`fanOut`). */
export const layer = (options?: Options): Layer.Layer<EventBus, never, EventLog> =>
  Layer.scoped(
    EventBus,
    (options?.fanOut === "direct" ? makeDirect(options) : make(options)).pipe(Effect.orDie)
  )
