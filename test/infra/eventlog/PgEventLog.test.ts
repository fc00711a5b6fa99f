import { expect, layer } from "@effect/vitest"
import { Chunk, Effect, Either, Fiber, Layer, Stream } from "effect"
import { compileGlob, EventFilter, NewEvent } from "../../../rpc/Events.js"
import { EventLog } from "../../../infra/eventlog/EventLog.js"
import * as PgEventLog from "../../../infra/eventlog/PgEventLog.js"
import * as Migrations from "../../../infra/db/Migrations.js"
import * as TestDatabase from "../../support/TestDatabase.js"

const source = { nodeId: "test", component: "test" }
const event = (producer: number, n: number, extra: Partial<ConstructorParameters<typeof NewEvent>[0]> = {}) =>
  NewEvent.make({ type: "job.log", source, jobId: `p${producer}`, data: { producer, n }, ...extra })

const all = EventFilter.make({})

const LogLive = PgEventLog.layer().pipe(
  Layer.provideMerge(Layer.effectDiscard(Migrations.run)),
  Layer.provide(TestDatabase.layerSql)
)

layer(LogLive, { timeout: 120_000, excludeTestServices: true })("Postgres event log", (it) => {
  it.effect(
    "gives gapless, strictly increasing offsets to concurrent producers, in each producer's order",
    () =>
      Effect.gen(function* () {
        const log = yield* EventLog
        const start = yield* log.head
        const producers = 16
        const perProducer = 60
        const results = yield* Effect.forEach(
          Array.from({ length: producers }, (_, p) => p),
          (p) =>
            Effect.forEach(
              Array.from({ length: perProducer }, (_, n) => n),
              (n) => log.append(n % 3 === 0 ? [event(p, n), event(p, n + 0.5)] : [event(p, n)]),
              { concurrency: 1 }
            ),
          { concurrency: "unbounded" }
        )
        const offsets = results.flat(2).map(Number)
        const total = producers * perProducer + producers * (perProducer / 3)
        expect(offsets).toHaveLength(total)
        expect(new Set(offsets).size).toBe(total)
        expect(Math.min(...offsets)).toBe(start + 1)
        expect(Math.max(...offsets)).toBe(start + total)
        for (const perP of results) {
          const flat = perP.flat().map(Number)
          expect(flat).toEqual([...flat].sort((a, b) => a - b))
        }
        const stored = yield* log.read(start + 1, all, 10_000)
        expect(stored.map((e) => Number(e.offset))).toEqual(
          Array.from({ length: total }, (_, i) => start + 1 + i)
        )
        for (let p = 0; p < producers; p++) {
          const mine = stored.filter((e) => e.jobId === `p${p}`).map((e) => (e.data as { n: number }).n)
          expect(mine).toEqual([...mine].sort((a, b) => a - b))
        }
      })
  )

  it.effect("a subscriber that starts mid-stream receives exactly the sequence from its offset", () =>
    Effect.gen(function* () {
      const log = yield* EventLog
      const base = yield* log.head
      const first = yield* log.append(Array.from({ length: 50 }, (_, n) => event(100, n)))
      const from = Number(first[25])
      const producers = 4
      const perProducer = 100
      const expected = 50 - 25 + producers * perProducer
      const subscriber = yield* log
        .subscribe({ _tag: "Offset", offset: from }, all)
        .pipe(Stream.take(expected), Stream.runCollect, Effect.fork)
      yield* Effect.forEach(
        Array.from({ length: producers }, (_, p) => p),
        (p) =>
          Effect.forEach(
            Array.from({ length: perProducer }, (_, n) => n),
            (n) => log.append([event(200 + p, n)])
          ),
        { concurrency: "unbounded" }
      )
      const received = Chunk.toReadonlyArray(yield* Fiber.join(subscriber)).map((e) => Number(e.offset))
      expect(received).toEqual(Array.from({ length: expected }, (_, i) => from + i))
      expect(yield* log.head).toBe(base + 50 + producers * perProducer)
    })
  )

  it.effect("filters by type glob, session and job, in the log and in subscriptions", () =>
    Effect.gen(function* () {
      const log = yield* EventLog
      const start = (yield* log.head) + 1
      yield* log.append([
        NewEvent.make({ type: "session.created", source, sessionId: "s1", data: {} }),
        NewEvent.make({ type: "session.exited", source, sessionId: "s1", data: {} }),
        NewEvent.make({ type: "job.done", source, jobId: "j1", data: {} }),
        NewEvent.make({ type: "session.exited", source, sessionId: "s2", data: {} })
      ])
      const types = (filter: EventFilter) =>
        Effect.map(log.read(start, filter, 100), (events) =>
          events.map((e) => `${e.type}:${e.sessionId ?? e.jobId}`)
        )
      expect(yield* types(EventFilter.make({ types: ["session.*"] }))).toEqual([
        "session.created:s1",
        "session.exited:s1",
        "session.exited:s2"
      ])
      expect(yield* types(EventFilter.make({ types: ["*.exited"] }))).toEqual([
        "session.exited:s1",
        "session.exited:s2"
      ])
      expect(yield* types(EventFilter.make({ sessionId: "s1" }))).toEqual([
        "session.created:s1",
        "session.exited:s1"
      ])
      expect(yield* types(EventFilter.make({ jobId: "j1" }))).toEqual(["job.done:j1"])
      const live = yield* log
        .subscribe(
          { _tag: "Offset", offset: start },
          EventFilter.make({ types: ["*.exited"], sessionId: "s2" })
        )
        .pipe(Stream.take(1), Stream.runCollect)
      expect(Chunk.toReadonlyArray(live).map((e) => e.sessionId)).toEqual(["s2"])
    })
  )

  it.effect("refuses a malformed glob and an oversize payload, and stores nothing", () =>
    Effect.gen(function* () {
      const log = yield* EventLog
      const before = yield* log.head
      const bad = yield* Effect.flip(log.read(1, EventFilter.make({ types: ["session.[a-z]"] }), 10))
      expect(bad._tag).toBe("InvalidGlob")
      expect(Either.isLeft(compileGlob("**.x"))).toBe(true)
      const tooLarge = yield* Effect.flip(
        log.append([event(1, 1, { data: { blob: "x".repeat(300 * 1024) } })])
      )
      expect(tooLarge._tag).toBe("EventTooLarge")
      expect(yield* log.head).toBe(before)
    })
  )
})
