import { expect, layer } from "@effect/vitest"
import { Chunk, Context, Duration, Effect, Exit, Layer, Option, Scope, Stream } from "effect"
import * as NodeSocket from "@effect/platform-node/NodeSocket"
import * as Client from "../../rpc/Client.js"
import { EventFilter, NewEvent } from "../../rpc/Events.js"
import * as Db from "../../infra/db/Db.js"
import { EventLog } from "../../infra/eventlog/EventLog.js"
import * as PgEventLog from "../../infra/eventlog/PgEventLog.js"
import * as SseClient from "../support/SseClient.js"
import * as TestDatabase from "../support/TestDatabase.js"
import * as TestServer from "../support/TestServer.js"

class Node extends Context.Tag("test/Node")<Node, TestServer.Running>() {}

const source = { nodeId: "writer", component: "test" }

/** Another writer on the node's database, as a second node would be. */
const writer = (server: TestServer.Running) =>
  Effect.map(
    Layer.build(
      PgEventLog.layer().pipe(
        Layer.provide(
          Db.layer({
            url: server.databaseUrl,
            poolSize: 2,
            connectTimeout: "10 seconds",
            queryTimeout: "30 seconds"
          })
        )
      )
    ),
    Context.get(EventLog)
  )

const append = (log: EventLog["Type"], type: string, count: number, bytes = 10) =>
  Effect.map(
    log.append(
      Array.from({ length: count }, (_, n) =>
        NewEvent.make({ type, source, data: { n, pad: "x".repeat(bytes) } })
      )
    ),
    (offsets) => offsets.map(Number)
  )

const sse = (server: TestServer.Running, query: string, headers: Record<string, string> = {}) =>
  SseClient.connect(`${server.url}/api/events${query}`, {
    authorization: `Bearer ${server.token}`,
    ...headers
  })

const rpc = (server: TestServer.Running) =>
  Client.layer({ url: server.url, token: TestServer.redacted(server) }).pipe(
    Layer.provide(NodeSocket.layerWebSocketConstructor)
  )

const laggedCount = (server: TestServer.Running) =>
  Effect.promise(async () => {
    const response = await fetch(`${server.url}/metrics`, {
      headers: { authorization: `Bearer ${server.token}` }
    })
    const line = (await response.text())
      .split("\n")
      .find((l) => l.startsWith("vibes_event_subscribers_lagged_total"))
    return line === undefined ? 0 : Number(line.split(" ").pop())
  })

const NodeLive = Layer.scoped(
  Node,
  TestServer.startWith({ eventsSubscriberBuffer: 128, sseHeartbeat: Duration.millis(200) })
)

layer(NodeLive, { timeout: 180_000, excludeTestServices: true })("event streams", (it) => {
  it.scoped("SSE requires credentials and answers bad input with 400 and a message", () =>
    Effect.gen(function* () {
      const server = yield* Node
      const unauthenticated = yield* Effect.promise(() => fetch(`${server.url}/api/events`))
      expect(unauthenticated.status).toBe(401)
      const cases: ReadonlyArray<readonly [string, Record<string, string>, string]> = [
        ["?types=session.[x]", {}, "invalid type glob"],
        ["", { "last-event-id": "abc" }, "Last-Event-ID must be an event offset"],
        ["?limit=-1", {}, "'limit' must be a positive integer"],
        ["?limit=ten", {}, "'limit' must be a positive integer"],
        ["?from=yesterday", {}, "'from' must be an offset"],
        ["?colour=blue", {}, "unknown parameter 'colour'"],
        ["?consumer=a&from=1", {}, "either 'from' or 'consumer'"],
        ["?consumer=../x", {}, "'consumer' must be"],
        // Postgres cannot even compare a NUL: it must not reach a query.
        ["?from=1&session=a%00b", {}, "'session' must be"],
        ["?from=1&job=%1B%5D52%3Bc%3Bx%07", {}, "'job' must be"],
        ["?from=1&tenant=a%0Ab", {}, "'tenant' must be"]
      ]
      for (const [query, headers, message] of cases) {
        const response = yield* Effect.promise(() =>
          fetch(`${server.url}/api/events${query}`, {
            headers: { authorization: `Bearer ${server.token}`, ...headers }
          })
        )
        expect(response.status, query).toBe(400)
        const body = (yield* Effect.promise(() => response.json())) as { error: string; message: string }
        expect(body.error).toBe("BadRequest")
        expect(body.message).toContain(message)
      }
    })
  )

  it.scoped("SSE replays history, then live events with their offsets as ids, with heartbeats", () =>
    Effect.gen(function* () {
      const server = yield* Node
      const client = yield* sse(server, "?from=1&types=system.*,client.*")
      expect(client.status).toBe(200)
      expect(client.headers["content-type"]).toContain("text/event-stream")
      expect(client.headers["cache-control"]).toContain("no-cache")
      expect(client.headers["x-accel-buffering"]).toBe("no")
      yield* client.until((c) => c.frames.some((f) => f.data.includes('"system.started"')))
      // A status call becomes a client.called event, which arrives live.
      yield* Effect.flatMap(Client.VibesClient, (c) => c.System.Info()).pipe(Effect.provide(rpc(server)))
      yield* client.until((c) => c.frames.some((f) => f.data.includes('"client.called"')))
      yield* client.until((c) => c.comments.includes("heartbeat"))
      const called = client.frames.find((f) => f.data.includes('"client.called"'))
      const parsed = JSON.parse(called?.data ?? "{}") as { offset: number; data: { rpc: string } }
      expect(parsed.data.rpc).toBe("System.Info")
      expect(String(parsed.offset)).toBe(called?.id)
      const ids = client.ids()
      expect(ids).toEqual([...ids].sort((a, b) => a - b))
    })
  )

  it.scoped("SSE reconnect with Last-Event-ID receives exactly the missed events", () =>
    Effect.gen(function* () {
      const server = yield* Node
      const log = yield* writer(server)
      const start = (yield* log.head) + 1
      const first = yield* Effect.scoped(
        Effect.gen(function* () {
          const client = yield* sse(server, `?types=test.reconnect&from=${start}`)
          yield* append(log, "test.reconnect", 10)
          yield* client.until((c) => c.ids().length === 10)
          return client.ids()
        })
      )
      // Missed while disconnected, with other events in between.
      const missed = [
        ...(yield* append(log, "test.reconnect", 7)),
        ...(yield* append(log, "test.other", 3)),
        ...(yield* append(log, "test.reconnect", 8))
      ]
      const client = yield* sse(server, "?types=test.reconnect", { "last-event-id": String(first[9]) })
      yield* client.until((c) => c.ids().length === 15)
      const expected = (yield* log.read(start, EventFilter.make({ types: ["test.reconnect"] }), 100)).map(
        (e) => Number(e.offset)
      )
      expect([...first, ...client.ids()]).toEqual(expected)
      expect(client.ids()).toEqual(
        missed.filter((offset) => offset > (first[9] ?? 0) && expected.includes(offset))
      )
    })
  )

  it.scoped(
    "a slow SSE client is cut off with 'lagged' and resumes, while a fast one receives everything",
    () =>
      Effect.gen(function* () {
        const server = yield* Node
        const log = yield* writer(server)
        const start = (yield* log.head) + 1
        const query = `?types=test.flood&from=${start}`
        const fast = yield* sse(server, query)
        const slow = yield* sse(server, query)
        yield* slow.until((c) => c.comments.includes("connected"))
        yield* slow.pause
        const before = yield* laggedCount(server)
        const appended: Array<number> = []
        // 16 KiB events until the slow client's socket and buffer are full and it is cut off.
        while ((yield* laggedCount(server)) === before) {
          expect(appended.length).toBeLessThan(20_000)
          appended.push(...(yield* append(log, "test.flood", 50, 16 * 1024)))
          yield* fast.until((c) => c.ids().length === appended.length)
        }
        yield* append(log, "test.flood", 50, 16 * 1024).pipe(Effect.map((o) => appended.push(...o)))
        yield* fast.until((c) => c.ids().length === appended.length)
        expect(fast.ids()).toEqual(appended)

        yield* slow.resume
        yield* slow.ended
        const last = slow.frames[slow.frames.length - 1]
        expect(last?.event).toBe("lagged")
        const { lastOffset } = JSON.parse(last?.data ?? "{}") as { lastOffset: number }
        const received = slow.ids()
        expect(received).toEqual(appended.slice(0, received.length))
        expect(lastOffset).toBe(received[received.length - 1])
        const resumed = yield* sse(server, "?types=test.flood", { "last-event-id": String(lastOffset) })
        yield* resumed.until((c) => c.ids().length === appended.length - received.length)
        expect([...received, ...resumed.ids()]).toEqual(appended)
      })
  )

  it.scoped("RPC reads, follows and keeps consumer offsets; bad input gets typed errors", () =>
    Effect.gen(function* () {
      const server = yield* Node
      const log = yield* writer(server)
      const client = yield* Effect.map(Layer.build(rpc(server)), Context.get(Client.VibesClient))
      const start = (yield* log.head) + 1
      const offsets = yield* append(log, "test.rpc", 5)
      const read = yield* client.Events.Read({
        from: start,
        filter: EventFilter.make({ types: ["test.rpc"] }),
        limit: 10
      })
      expect(read.map((e) => Number(e.offset))).toEqual(offsets)
      const followed = yield* client.Events.Subscribe({
        from: { _tag: "Offset", offset: start },
        filter: EventFilter.make({ types: ["test.rpc"] })
      }).pipe(Stream.take(8), Stream.runCollect, Effect.fork)
      const more = yield* append(log, "test.rpc", 3)
      expect(Chunk.toReadonlyArray(yield* followed).map((e) => Number(e.offset))).toEqual([
        ...offsets,
        ...more
      ])
      expect((yield* client.Events.Head()).head).toBeGreaterThanOrEqual(more[2] ?? 0)

      yield* client.Events.Commit({ consumer: "rpc-test", offset: offsets[2] ?? 0 })
      expect(yield* client.Events.Committed({ consumer: "rpc-test" })).toEqual({ offset: offsets[2] })
      const resumed = yield* client.Events.Subscribe({
        from: { _tag: "Consumer", name: "rpc-test" },
        filter: EventFilter.make({ types: ["test.rpc"] })
      }).pipe(Stream.take(1), Stream.runCollect)
      expect(Chunk.toReadonlyArray(resumed).map((e) => Number(e.offset))).toEqual([offsets[3]])

      const beyond = yield* Effect.flip(client.Events.Commit({ consumer: "rpc-test", offset: 10_000_000 }))
      expect(beyond._tag).toBe("InvalidConsumer")
      const glob = yield* Effect.flip(
        client.Events.Read({ from: 1, filter: EventFilter.make({ types: ["a..b"] }), limit: 1 })
      )
      expect(glob._tag).toBe("InvalidGlob")
    })
  )
})

layer(Layer.empty, { timeout: 180_000, excludeTestServices: true })("event streams across restarts", (it) => {
  it.scoped("consumer offsets survive a restart; followers see system.stopped and a clean end", () =>
    Effect.gen(function* () {
      const database = yield* TestDatabase.databaseUrl
      const overrides = { databaseUrl: Option.some(database.url), sseHeartbeat: Duration.seconds(15) }
      const firstScope = yield* Scope.make()
      const first = yield* TestServer.startWith(overrides).pipe(Scope.extend(firstScope))
      const follower = yield* sse(first, "?types=system.*&from=1")
      yield* follower.until((c) => c.frames.some((f) => f.data.includes('"system.started"')))
      const committedAt = yield* Effect.flatMap(Client.VibesClient, (client) =>
        Effect.gen(function* () {
          const { head } = yield* client.Events.Head()
          yield* client.Events.Commit({ consumer: "survivor", offset: head })
          return head
        })
      ).pipe(Effect.provide(rpc(first)), Effect.scoped)
      yield* Scope.close(firstScope, Exit.void)
      yield* follower.ended
      const lastFrame = follower.frames[follower.frames.length - 1]
      expect(lastFrame?.event).toBe("message")
      expect(lastFrame?.data).toContain('"system.stopped"')

      const second = yield* TestServer.startWith(overrides)
      const client = yield* Effect.map(Layer.build(rpc(second)), Context.get(Client.VibesClient))
      expect(yield* client.Events.Committed({ consumer: "survivor" })).toEqual({ offset: committedAt })
      // Following as the consumer resumes right after it: the stop of the first node, then the start of the second.
      const resumed = yield* sse(second, "?consumer=survivor&types=system.*")
      yield* resumed.until((c) => c.ids().length >= 2)
      const types = resumed.frames.map((f) => (JSON.parse(f.data) as { type: string }).type)
      expect(types.slice(0, 2)).toEqual(["system.stopped", "system.started"])
      expect(resumed.ids()[0]).toBe(committedAt + 1)
    })
  )
})
