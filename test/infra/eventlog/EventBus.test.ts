import { expect, layer } from "@effect/vitest"
import { Chunk, Context, Deferred, Effect, Either, Fiber, Layer, Schedule, Stream } from "effect"
import { EventFilter, NewEvent, type StoredEvent } from "../../../rpc/Events.js"
import { EventBus } from "../../../infra/eventlog/EventBus.js"
import * as EventBusModule from "../../../infra/eventlog/EventBus.js"
import { EventLog } from "../../../infra/eventlog/EventLog.js"
import * as MemoryEventLog from "../../../infra/eventlog/MemoryEventLog.js"

const source = { nodeId: "test", component: "test" }
const event = (producer: number, n: number, type = "job.log") =>
  NewEvent.make({ type, source, jobId: `p${producer}`, data: { producer, n } })
const all = EventFilter.make({})
const range = (from: number, count: number) => Array.from({ length: count }, (_, i) => from + i)
const offsets = (events: Chunk.Chunk<StoredEvent> | ReadonlyArray<StoredEvent>) =>
  Array.from(events, (e) => Number(e.offset))

/** Waits until the bus has `n` subscribers (they register when their stream starts). */
const waitForSubscribers = (n: number) =>
  Effect.flatMap(EventBus, (bus) =>
    bus.stats.pipe(
      Effect.repeat({ until: (stats) => stats.subscribers >= n, schedule: Schedule.spaced("1 millis") })
    )
  )

// The same behaviour from both fan-outs: one tailer for the node, or a reader per subscription.
for (const fanOut of ["tail", "direct"] as const) {
  const BusLive = EventBusModule.layer({ bufferSize: 64, pageSize: 50, fanOut }).pipe(
    Layer.provideMerge(MemoryEventLog.layer)
  )

  layer(BusLive, { timeout: 60_000, excludeTestServices: true })(`event bus (${fanOut})`, (it) => {
    it.effect("hands over from history to live with no gap and no duplicate while producers run", () =>
      Effect.gen(function* () {
        const log = yield* EventLog
        const bus = yield* EventBus
        const first = yield* log.append(Array.from({ length: 120 }, (_, n) => event(0, n)))
        const from = Number(first[30])
        const total = 90 + 4 * 100
        const subscriber = yield* bus
          .subscribe({ _tag: "Offset", offset: from }, all, { bufferSize: 10_000 })
          .pipe(Stream.take(total), Stream.runCollect, Effect.fork)
        yield* Effect.forEach(
          range(1, 4),
          (p) => Effect.forEach(range(0, 100), (n) => log.append([event(p, n)])),
          { concurrency: "unbounded" }
        )
        expect(offsets(yield* Fiber.join(subscriber))).toEqual(range(from, total))
      })
    )

    it.scoped(
      "an attached sink gets history then live with no gap, and is cut off when its backlog fills",
      () =>
        Effect.gen(function* () {
          const log = yield* EventLog
          const bus = yield* EventBus
          const first = yield* log.append(Array.from({ length: 120 }, (_, n) => event(0, n)))
          const from = Number(first[30])
          const total = 90 + 4 * 100
          const received: Array<number> = []
          const done = yield* Deferred.make<void>()
          yield* bus.attach({ _tag: "Offset", offset: from }, all, {
            offer: (e) => {
              received.push(Number(e.offset))
              if (received.length === total) Deferred.unsafeDone(done, Effect.void)
            },
            backlog: () => 0,
            end: () => undefined
          })
          yield* Effect.forEach(
            range(1, 4),
            (p) => Effect.forEach(range(0, 100), (n) => log.append([event(p, n)])),
            { concurrency: "unbounded" }
          )
          yield* Deferred.await(done)
          expect(received).toEqual(range(from, total))

          // A sink that never passes anything on: cut off once its backlog reaches the buffer.
          let backlog = 0
          const ended = yield* Deferred.make<string>()
          const start = (yield* log.head) + 1
          yield* bus.attach(
            { _tag: "Latest" },
            all,
            {
              offer: () => {
                backlog++
              },
              backlog: () => backlog,
              end: (reason) =>
                Deferred.unsafeDone(
                  ended,
                  Effect.succeed(
                    reason._tag === "Lagged" ? `lagged after ${reason.error.lastOffset}` : reason._tag
                  )
                )
            },
            { bufferSize: 5 }
          )
          yield* log.append(Array.from({ length: 10 }, (_, n) => event(8, n)))
          expect(yield* Deferred.await(ended)).toBe(`lagged after ${start + 4}`)
          expect(backlog).toBe(5)
        })
    )

    it.effect("cuts off a slow subscriber with its last offset while a fast one keeps receiving", () =>
      Effect.gen(function* () {
        const log = yield* EventLog
        const bus = yield* EventBus
        const start = (yield* log.head) + 1
        const count = 300
        const gotFirst = yield* Deferred.make<void>()
        const release = yield* Deferred.make<void>()
        const slowReceived: Array<number> = []
        // Takes one event, then stops reading until released.
        const slow = yield* bus.subscribe({ _tag: "Latest" }, all).pipe(
          Stream.runForEach((e) =>
            Effect.gen(function* () {
              slowReceived.push(Number(e.offset))
              if (slowReceived.length === 1) {
                yield* Deferred.succeed(gotFirst, undefined)
                yield* Deferred.await(release)
              }
            })
          ),
          Effect.either,
          Effect.fork
        )
        const fast = yield* bus
          .subscribe({ _tag: "Latest" }, all, { bufferSize: 1000 })
          .pipe(Stream.take(count), Stream.runCollect, Effect.fork)
        yield* waitForSubscribers(2)
        yield* log.append([event(9, 0)])
        yield* Deferred.await(gotFirst)
        const laggedBefore = (yield* bus.stats).lagged
        for (const n of range(1, count - 1)) yield* log.append([event(9, n)])
        expect(offsets(yield* Fiber.join(fast))).toEqual(range(start, count))
        expect((yield* bus.stats).lagged).toBe(laggedBefore + 1)

        yield* Deferred.succeed(release, undefined)
        const outcome = yield* Fiber.join(slow)
        const error = Either.isLeft(outcome) ? outcome.left : undefined
        expect(error?._tag).toBe("SubscriberLagged")
        const lastOffset = error?._tag === "SubscriberLagged" ? error.lastOffset : -1
        // It received a gapless prefix (what it had taken, then its full buffer), ending at lastOffset.
        expect(slowReceived.length).toBeGreaterThanOrEqual(65)
        expect(slowReceived).toEqual(range(start, slowReceived.length))
        expect(lastOffset).toBe(slowReceived[slowReceived.length - 1])
        // Resuming after lastOffset delivers exactly the rest.
        const rest = yield* bus
          .subscribe({ _tag: "Offset", offset: lastOffset + 1 }, all, { bufferSize: 1000 })
          .pipe(Stream.take(count - slowReceived.length), Stream.runCollect)
        expect([...slowReceived, ...offsets(rest)]).toEqual(range(start, count))
      })
    )

    it.effect("filters by glob and id, and waits when asked to start beyond the head", () =>
      Effect.gen(function* () {
        const log = yield* EventLog
        const bus = yield* EventBus
        const head = yield* log.head
        const exited = yield* bus
          .subscribe({ _tag: "Offset", offset: head + 3 }, EventFilter.make({ types: ["*.exited"] }))
          .pipe(Stream.take(2), Stream.runCollect, Effect.fork)
        const jobOnly = yield* bus
          .subscribe({ _tag: "Offset", offset: head + 1 }, EventFilter.make({ jobId: "p7" }))
          .pipe(Stream.take(1), Stream.runCollect, Effect.fork)
        yield* log.append([event(1, 0, "session.exited"), event(1, 1, "session.created")])
        yield* log.append([event(7, 2, "job.log"), event(1, 3, "session.exited"), event(1, 4, "job.exited")])
        expect(offsets(yield* Fiber.join(exited))).toEqual([head + 4, head + 5])
        expect(offsets(yield* Fiber.join(jobOnly))).toEqual([head + 3])
      })
    )

    it.scoped(
      "close delivers each subscription's events up to its offset, then ends it; later ones get history",
      () =>
        Effect.gen(function* () {
          // A bus and log of its own: this one ends closed.
          const context = yield* Layer.build(
            EventBusModule.layer({ bufferSize: 64, fanOut }).pipe(Layer.provideMerge(MemoryEventLog.layer))
          )
          const log = Context.get(context, EventLog)
          const bus = Context.get(context, EventBus)
          const start = (yield* log.head) + 1
          const filter = EventFilter.make({ jobId: "p3" })
          const followed = yield* bus
            .subscribe({ _tag: "Offset", offset: start }, filter, { bufferSize: 1000 })
            .pipe(Stream.runCollect, Effect.fork)
          const sunk: Array<number> = []
          const sinkEnd = yield* Deferred.make<string>()
          yield* bus.attach({ _tag: "Offset", offset: start }, filter, {
            offer: (e) => {
              sunk.push(Number(e.offset))
            },
            backlog: () => 0,
            end: (reason) => Deferred.unsafeDone(sinkEnd, Effect.succeed(reason._tag))
          })
          yield* bus.stats.pipe(
            Effect.repeat({ until: (stats) => stats.subscribers >= 2, schedule: Schedule.spaced("1 millis") })
          )
          const written = yield* log.append(
            Array.from({ length: 40 }, (_, n) => event(n % 2 === 0 ? 3 : 4, n))
          )
          const upTo = Number(written[written.length - 1])
          const mine = offsets(yield* log.read(start, filter, 1000))
          yield* bus.close(upTo, "10 seconds")
          // Everything matching up to the last offset, then a clean end, for both kinds.
          expect(offsets(yield* Fiber.join(followed))).toEqual(mine)
          expect(yield* Deferred.await(sinkEnd)).toBe("Closed")
          expect(sunk).toEqual(mine)
          // After the close, a subscription gets the history and ends.
          const late = yield* bus.subscribe({ _tag: "Offset", offset: start }, filter).pipe(Stream.runCollect)
          expect(offsets(late)).toEqual(mine)
        })
    )

    it.effect("refuses a malformed glob", () =>
      Effect.gen(function* () {
        const bus = yield* EventBus
        const error = yield* Effect.flip(
          bus.subscribe({ _tag: "Latest" }, EventFilter.make({ types: ["session..x"] })).pipe(Stream.runDrain)
        )
        expect(error._tag).toBe("InvalidGlob")
        expect((yield* bus.stats).subscribers).toBe(0)
      })
    )
  })
}
