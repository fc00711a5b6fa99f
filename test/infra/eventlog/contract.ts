/**
 * The behaviour every event log backend must have; each backend's test file runs it.
 */
import { expect, layer } from "@effect/vitest"
import { Chunk, DateTime, Effect, Either, Fiber, type Layer, Option, Stream } from "effect"
import { compileGlob, EventFilter, maxEventBytes, NewEvent } from "../../../rpc/Events.js"
import { EventLog, RetentionPolicy } from "../../../infra/eventlog/EventLog.js"

const source = { nodeId: "test", component: "test" }
const event = (producer: number, n: number, extra: Partial<ConstructorParameters<typeof NewEvent>[0]> = {}) =>
  NewEvent.make({ type: "job.log", source, jobId: `p${producer}`, data: { producer, n }, ...extra })

const all = EventFilter.make({})

/**
 * Runs the contract against `shared` (one log for the ordering tests) and `fresh` (a new, empty
 * log per test, for consumer offsets and retention, which see the whole log).
 */
export const eventLogContract = <E>(
  name: string,
  shared: Layer.Layer<EventLog, E>,
  fresh: () => Layer.Layer<EventLog, E>
) =>
  layer(shared, { timeout: 120_000, excludeTestServices: true })(name, (it) => {
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

    it.effect("reads backwards from an offset, newest first, with the same filters", () =>
      Effect.gen(function* () {
        const log = yield* EventLog
        const session = `back-${Date.now()}`
        const offsets = yield* log.append(
          [1, 2, 3, 4].map((n) =>
            NewEvent.make({
              type: n % 2 === 0 ? "session.snapshot" : "session.output",
              source,
              sessionId: session,
              data: { n }
            })
          )
        )
        const snapshots = EventFilter.make({ sessionId: session, types: ["session.snapshot"] })
        const newest = yield* log.readBackward(Number.MAX_SAFE_INTEGER, snapshots, 1)
        expect(newest.map((e) => e.data)).toEqual([{ n: 4 }])
        const before = yield* log.readBackward(Number(offsets[2]), snapshots, 10)
        expect(before.map((e) => e.data)).toEqual([{ n: 2 }])
        const everything = yield* log.readBackward(
          Number(offsets[3]),
          EventFilter.make({ sessionId: session }),
          10
        )
        expect(everything.map((e) => Number(e.offset))).toEqual([...offsets].map(Number).reverse())
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

    it.effect("stores raw byte payloads exactly, beside events without one, and refuses oversize ones", () =>
      Effect.gen(function* () {
        const log = yield* EventLog
        const before = yield* log.head
        // Every byte value, invalid UTF-8 and NUL included, and payloads of very different sizes.
        const every = Uint8Array.from({ length: 256 }, (_, i) => i)
        const large = Uint8Array.from({ length: 200_000 }, (_, i) => (i * 7919) % 251)
        const sessionId = `bytes-${before}`
        const outputs = [
          NewEvent.make({ type: "session.output", source, sessionId, data: { seq: 0 }, bytes: every }),
          NewEvent.make({ type: "session.resized", source, sessionId, data: { cols: 80, rows: 24 } }),
          NewEvent.make({ type: "session.output", source, sessionId, data: { seq: 256 }, bytes: large }),
          NewEvent.make({
            type: "session.output",
            source,
            sessionId,
            data: { seq: 200_256 },
            bytes: new Uint8Array(0)
          })
        ]
        const offsets = yield* log.append(outputs)
        const stored = yield* log.read(Number(offsets[0]), EventFilter.make({ sessionId }), 10)
        expect(stored.map((e) => e.type)).toEqual([
          "session.output",
          "session.resized",
          "session.output",
          "session.output"
        ])
        expect(Buffer.from(stored[0]?.bytes ?? []).equals(Buffer.from(every))).toBe(true)
        expect(stored[1]?.bytes).toBeUndefined()
        expect(Buffer.from(stored[2]?.bytes ?? []).equals(Buffer.from(large))).toBe(true)
        expect(stored[3]?.bytes?.length).toBe(0)
        expect(stored[2]?.data).toEqual({ seq: 256 })
        const backward = yield* log.readBackward(Number(offsets[3]), EventFilter.make({ sessionId }), 2)
        expect(backward[1]?.bytes?.length).toBe(large.length)

        const head = yield* log.head
        const tooLarge = yield* Effect.flip(
          log.append([
            NewEvent.make({
              type: "session.output",
              source,
              sessionId,
              data: { seq: 0 },
              bytes: new Uint8Array(maxEventBytes + 1)
            })
          ])
        )
        expect(tooLarge._tag).toBe("EventTooLarge")
        expect(yield* log.head).toBe(head)
      })
    )

    it.effect("resolves a start by offset, latest and time", () =>
      Effect.gen(function* () {
        const log = yield* EventLog
        const [offset] = yield* log.append([event(300, 1)])
        const head = yield* log.head
        expect(yield* log.resolve({ _tag: "Offset", offset: 0 })).toBe(1)
        expect(yield* log.resolve({ _tag: "Latest" })).toBe(head + 1)
        const [stored] = yield* log.read(Number(offset), all, 1)
        const at = stored ? DateTime.toEpochMillis(stored.ts) : 0
        expect(yield* log.resolve({ _tag: "Time", epochMillis: at + 60_000 })).toBe(head + 1)
        expect(yield* log.resolve({ _tag: "Time", epochMillis: at })).toBeLessThanOrEqual(Number(offset))
      })
    )

    it.effect("named consumers commit offsets and read them back; bad names and offsets are refused", () =>
      Effect.gen(function* () {
        const log = yield* EventLog
        expect(yield* log.committed("indexer")).toEqual(Option.none())
        yield* log.append(Array.from({ length: 5 }, (_, n) => event(1, n)))
        yield* log.commit("indexer", 3)
        expect(yield* log.committed("indexer")).toEqual(Option.some(3))
        yield* log.commit("indexer", 5)
        expect(yield* log.committed("indexer")).toEqual(Option.some(5))
        const beyond = yield* Effect.flip(log.commit("indexer", 6))
        expect(beyond._tag).toBe("InvalidConsumer")
        expect(beyond.message).toContain("head (5)")
        const negative = yield* Effect.flip(log.commit("indexer", -1))
        expect(negative._tag).toBe("InvalidConsumer")
        const badName = yield* Effect.flip(log.commit("../etc", 1))
        expect(badName._tag).toBe("InvalidConsumer")
        expect(yield* log.committed("indexer")).toEqual(Option.some(5))
      }).pipe(Effect.provide(fresh()))
    )

    it.effect("lists every named consumer with its offset, by name", () =>
      Effect.gen(function* () {
        const log = yield* EventLog
        expect(yield* log.consumers).toEqual([])
        yield* log.append(Array.from({ length: 4 }, (_, n) => event(1, n)))
        yield* log.commit("search.indexer", 4)
        yield* log.commit("audit:export", 2)
        yield* log.commit("search.indexer", 3)
        expect(yield* log.consumers).toEqual([
          { name: "audit:export", offset: 2 },
          { name: "search.indexer", offset: 3 }
        ])
      }).pipe(Effect.provide(fresh()))
    )

    it.effect("counts events and payload bytes by type, largest first, with their oldest and newest", () =>
      Effect.gen(function* () {
        const log = yield* EventLog
        const empty = yield* log.stats
        expect(empty).toMatchObject({ head: 0, events: 0, bytes: 0, types: [] })
        const data = { text: "y".repeat(300) }
        yield* log.append(Array.from({ length: 3 }, () => NewEvent.make({ type: "job.log", source, data })))
        yield* log.append([
          NewEvent.make({
            type: "session.output",
            source,
            sessionId: "s1",
            data: {},
            bytes: new Uint8Array(2000)
          })
        ])
        yield* log.append([NewEvent.make({ type: "test.small", source, data: { n: 1 } })])
        const stats = yield* log.stats
        expect(stats.head).toBe(5)
        expect(stats.events).toBe(5)
        expect(stats.types.map((t) => [t.type, t.events])).toEqual([
          ["session.output", 1],
          ["job.log", 3],
          ["test.small", 1]
        ])
        const [output, logs] = stats.types
        // Raw bytes count as they are; JSON payloads by their text (a backend may space it).
        expect(output?.bytes).toBeGreaterThanOrEqual(2000)
        expect(output?.bytes).toBeLessThan(2010)
        expect(logs?.bytes).toBeGreaterThanOrEqual(3 * JSON.stringify(data).length)
        expect(logs?.bytes).toBeLessThan(3 * (JSON.stringify(data).length + 10))
        expect(stats.bytes).toBe(stats.types.reduce((sum, t) => sum + t.bytes, 0))
        for (const { oldest, newest } of stats.types) {
          if (oldest === null || newest === null) return expect.unreachable()
          expect(DateTime.lessThanOrEqualTo(oldest, newest)).toBe(true)
        }
      }).pipe(Effect.provide(fresh()))
    )

    it.effect("retention deletes by age, size and snapshot, but never what a consumer has not passed", () =>
      Effect.gen(function* () {
        const log = yield* EventLog
        const output = (sessionId: string, n: number) =>
          NewEvent.make({
            type: "session.output",
            source,
            sessionId,
            data: { seq: n, bytes: "x".repeat(100) }
          })
        // 1..10 output of s1, 11 a snapshot of s1, 12..21 output of s2, 22..31 job logs.
        yield* log.append(Array.from({ length: 10 }, (_, n) => output("s1", n)))
        yield* log.append([NewEvent.make({ type: "session.snapshot", source, sessionId: "s1", data: {} })])
        yield* log.append(Array.from({ length: 10 }, (_, n) => output("s2", n)))
        yield* log.append(Array.from({ length: 10 }, (_, n) => event(2, n)))
        const offsets = (filter: EventFilter) =>
          Effect.map(log.read(1, filter, 1000), (events) => events.map((e) => Number(e.offset)))
        const range = (a: number, b: number) => Array.from({ length: b - a + 1 }, (_, i) => a + i)

        // A consumer at 4 holds everything after it.
        yield* log.commit("archiver", 4)
        const snapshot = RetentionPolicy.make({ types: ["session.output"], snapshotType: "session.snapshot" })
        const first = yield* log.applyRetention([snapshot], Date.now())
        expect(first).toEqual({ deleted: 4, safeOffset: 4 })
        expect(yield* offsets(all)).toEqual(range(5, 31))

        // Once the consumer passed them, the rest of s1's covered output goes; s2 has no snapshot.
        yield* log.commit("archiver", 31)
        expect((yield* log.applyRetention([snapshot], Date.now())).deleted).toBe(6)
        expect(yield* offsets(all)).toEqual(range(11, 31))

        // Size: keep at most about three outputs' worth of session.output, oldest go first.
        const bytes = JSON.stringify({ seq: 0, bytes: "x".repeat(100) }).length
        const size = RetentionPolicy.make({ types: ["session.output"], maxBytes: bytes * 3 + 10 })
        expect((yield* log.applyRetention([size], Date.now())).deleted).toBe(7)
        expect(yield* offsets(EventFilter.make({ types: ["session.*"] }))).toEqual([11, 19, 20, 21])

        // Age: everything older than a minute, seen from an hour later; a consumer behind holds it
        // unless the policy says to ignore consumers.
        yield* log.commit("laggard", 25)
        const age = RetentionPolicy.make({ types: ["job.*"], maxAgeMillis: 60_000 })
        expect((yield* log.applyRetention([age], Date.now() + 3_600_000)).deleted).toBe(4)
        expect(yield* offsets(EventFilter.make({ types: ["job.*"] }))).toEqual(range(26, 31))
        const forced = RetentionPolicy.make({ types: ["job.*"], maxAgeMillis: 60_000, ignoreConsumers: true })
        expect((yield* log.applyRetention([forced], Date.now() + 3_600_000)).deleted).toBe(6)
        expect(yield* offsets(EventFilter.make({ types: ["job.*"] }))).toEqual([])

        // Nothing younger than the limit goes, and the offsets of new events carry on.
        expect((yield* log.applyRetention([age], Date.now())).deleted).toBe(0)
        expect(yield* log.append([event(3, 0)])).toEqual([32])
        const badGlob = yield* Effect.flip(
          log.applyRetention([RetentionPolicy.make({ types: ["job.[x]"], maxAgeMillis: 1 })], Date.now())
        )
        expect(badGlob._tag).toBe("InvalidGlob")
      }).pipe(Effect.provide(fresh()))
    )
  })
