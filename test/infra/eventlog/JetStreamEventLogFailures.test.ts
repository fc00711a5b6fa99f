/**
 * The JetStream event log when NATS fails under it: the server killed (SIGKILL) while producers
 * append and a subscriber follows, then restarted by its supervisor on the same store; and the
 * connection cut just as the server's ack is on its way back, so the writer cannot know whether
 * its publish was stored. Nothing acknowledged may be lost or stored twice, offsets stay gapless,
 * the subscriber resumes without gap or duplicate, and appends carry on by themselves.
 */
import * as net from "node:net"
import { jetstreamManager } from "@nats-io/jetstream"
import { connect } from "@nats-io/transport-node"
import { describe, expect, it } from "@effect/vitest"
import {
  Context,
  type Duration,
  Effect,
  Fiber,
  Layer,
  Option,
  Redacted,
  Ref,
  Schedule,
  Schema,
  type Scope,
  Stream
} from "effect"
import * as NatsSupervisor from "../../../actors/supervisors/NatsSupervisor.js"
import { EventLog } from "../../../infra/eventlog/EventLog.js"
import * as FreePort from "../../../infra/net/FreePort.js"
import { EventFilter, NewEvent, type StoredEvent } from "../../../rpc/Events.js"
import { tempDir } from "../../support/TempDir.js"
import { logOn, server, uniqueName } from "../../support/TestNats.js"

type Log = EventLog["Type"]

const source = { nodeId: "test", component: "failures" }
const all = EventFilter.make({})
const Payload = Schema.Struct({ producer: Schema.Int, n: Schema.Int })

const event = (producer: number, n: number) =>
  NewEvent.make({ type: "job.log", source, jobId: `p${producer}`, data: { producer, n } })

const keyOf = (data: unknown): string => {
  const { producer, n } = Schema.decodeUnknownSync(Payload)(data)
  return `${producer}:${n}`
}

/** Waits until `check` holds, polling; fails after `within`. */
const until = (what: string, check: Effect.Effect<boolean>, within: Duration.DurationInput = "20 seconds") =>
  check.pipe(
    Effect.flatMap((ok) => (ok ? Effect.void : Effect.fail(what))),
    Effect.retry(Schedule.spaced("20 millis").pipe(Schedule.upTo(within))),
    Effect.orDieWith((failed) => new Error(`timed out waiting until ${failed}`))
  )

/** Everything in the log, read page by page. */
const readAll = (log: Log) =>
  Effect.gen(function* () {
    const out: Array<StoredEvent> = []
    for (;;) {
      const last = out[out.length - 1]
      const page = yield* log.read(last === undefined ? 1 : last.offset + 1, all, 10_000)
      if (page.length === 0) return out
      out.push(...page)
    }
  })

interface Acked {
  readonly offsets: Map<string, number>
  failures: number
  inFlight: number
}

/** `producers` fibers (numbered from `first`) appending batches of 5 until `stop`, recording what was acknowledged. */
const produce = (log: Log, first: number, producers: number, stop: Ref.Ref<boolean>, acked: Acked) =>
  Effect.forEach(
    Array.from({ length: producers }, (_, p) => first + p),
    (p) =>
      Effect.gen(function* () {
        let n = 0
        while (!(yield* Ref.get(stop))) {
          const batch = Array.from({ length: 5 }, (_, i) => event(p, n + i))
          n += batch.length
          acked.inFlight++
          const result = yield* Effect.either(log.append(batch))
          acked.inFlight--
          if (result._tag === "Left") acked.failures++
          else
            result.right.forEach((offset, i) => {
              const one = batch[i]
              if (one !== undefined) acked.offsets.set(keyOf(one.data), offset)
            })
        }
      }),
    { concurrency: "unbounded", discard: true }
  )

/** Checks the log against what producers were told: each acknowledged event once, at its offset; no duplicate; gapless. */
const checkLog = (log: Log, acked: Acked) =>
  Effect.gen(function* () {
    const stored = yield* readAll(log)
    const head = yield* log.head
    expect(stored.map((e) => e.offset)).toEqual(Array.from({ length: head }, (_, i) => i + 1))
    const seen = new Map<string, number>()
    for (const e of stored) {
      const key = keyOf(e.data)
      expect(seen.has(key), `event ${key} is stored twice`).toBe(false)
      seen.set(key, e.offset)
    }
    for (const [key, offset] of acked.offsets) expect(seen.get(key), `acknowledged event ${key}`).toBe(offset)
    return stored
  })

/**
 * A TCP proxy in front of NATS that can cut every connection through it, either now or at the
 * next ack (a `"seq":` on its way back to the client, held back rather than delivered).
 */
const proxy = (
  target: number
): Effect.Effect<
  { readonly port: number; readonly cutAtNextAck: Effect.Effect<void>; readonly cuts: Effect.Effect<number> },
  Error,
  Scope.Scope
> =>
  Effect.gen(function* () {
    const sockets = new Set<net.Socket>()
    let armed = false
    let cuts = 0
    const cutAll = () => {
      cuts++
      for (const socket of sockets) socket.destroy()
      sockets.clear()
    }
    const server = net.createServer((client) => {
      const upstream = net.connect(target, "127.0.0.1")
      sockets.add(client).add(upstream)
      client.on("data", (chunk) => upstream.write(chunk))
      upstream.on("data", (chunk) => {
        if (armed && chunk.includes('"seq":')) {
          armed = false
          cutAll()
          return
        }
        client.write(chunk)
      })
      for (const [a, b] of [
        [client, upstream],
        [upstream, client]
      ] as const) {
        a.on("error", () => b.destroy())
        a.on("close", () => b.destroy())
      }
    })
    const port = yield* FreePort.find()
    yield* Effect.acquireRelease(
      Effect.async<void, Error>((resume) => {
        server.once("error", (error) => resume(Effect.fail(error)))
        server.listen(port, "127.0.0.1", () => resume(Effect.void))
      }),
      () =>
        Effect.async<void>((resume) => {
          for (const socket of sockets) socket.destroy()
          server.close(() => resume(Effect.void))
        })
    )
    return {
      port,
      cutAtNextAck: Effect.sync(() => {
        armed = true
      }),
      cuts: Effect.sync(() => cuts)
    }
  })

describe("JetStream event log under failures", () => {
  it.live(
    "the server killed mid-publish and restarted: every acknowledged event is stored once, and a subscriber sees each offset once",
    () =>
      Effect.gen(function* () {
        const dir = yield* tempDir("vibes-js-fail-")
        const supervisor = yield* NatsSupervisor.make({
          dataDir: dir,
          maxRestarts: 5,
          restartBackoff: "50 millis"
        })
        const log = yield* Layer.build(logOn(supervisor, { ackTimeoutMillis: 1000 })).pipe(
          Effect.map(Context.get(EventLog))
        )
        const stop = yield* Ref.make(false)
        const acked: Acked = { offsets: new Map(), failures: 0, inFlight: 0 }
        const received: Array<number> = []
        const subscriber = yield* log.subscribe({ _tag: "Offset", offset: 1 }, all).pipe(
          Stream.runForEach((e) => Effect.sync(() => received.push(e.offset))),
          Effect.fork
        )
        const producers = yield* Effect.fork(produce(log, 1, 4, stop, acked))

        yield* until(
          "some events are acknowledged and an append is in flight",
          Effect.sync(() => acked.offsets.size >= 200 && acked.inFlight > 0)
        )
        const first = Option.getOrThrow(yield* supervisor.pid)
        const before = acked.offsets.size
        process.kill(first, "SIGKILL")
        yield* until(
          "the server is back",
          Effect.map(supervisor.pid, (pid) => Option.isSome(pid) && pid.value !== first)
        )
        yield* until(
          "appends carry on after the restart",
          Effect.sync(() => acked.offsets.size >= before + 400),
          "30 seconds"
        )
        yield* Ref.set(stop, true)
        yield* Fiber.join(producers)

        const stored = yield* checkLog(log, acked)
        expect(yield* supervisor.restarts).toBe(1)
        yield* until(
          "the subscriber has caught up",
          Effect.sync(() => received.length >= stored.length),
          "30 seconds"
        )
        yield* Fiber.interrupt(subscriber)
        expect(received).toEqual(stored.map((e) => e.offset))
      }).pipe(Effect.scoped),
    60_000
  )

  it.live(
    "a connection cut before the ack arrives: the retried publish is not stored twice, and appends carry on",
    () =>
      Effect.gen(function* () {
        const dir = yield* tempDir("vibes-js-fail-")
        const supervisor = yield* NatsSupervisor.make({ dataDir: dir, maxRestarts: 1 })
        const through = yield* proxy(supervisor.port)
        const log = yield* Layer.build(
          logOn(
            { url: `nats://127.0.0.1:${through.port}`, token: supervisor.token },
            { ackTimeoutMillis: 500 }
          )
        ).pipe(Effect.map(Context.get(EventLog)))

        yield* log.append([event(0, 0)])
        yield* through.cutAtNextAck
        const offsets = yield* log.append([event(0, 1), event(0, 2)])
        expect(yield* through.cuts).toBe(1)
        expect(offsets).toEqual([2, 3])

        const stop = yield* Ref.make(false)
        const acked: Acked = { offsets: new Map(), failures: 0, inFlight: 0 }
        const producers = yield* Effect.fork(produce(log, 1, 2, stop, acked))
        yield* until(
          "appends are under way",
          Effect.sync(() => acked.offsets.size >= 100)
        )
        yield* through.cutAtNextAck
        const before = acked.offsets.size
        yield* until(
          "appends carry on after the cut",
          Effect.sync(() => acked.offsets.size >= before + 100)
        )
        yield* Ref.set(stop, true)
        yield* Fiber.join(producers)
        expect(yield* through.cuts).toBe(2)
        expect(acked.failures).toBe(0)
        const stored = yield* checkLog(log, acked)
        expect(stored.slice(0, 3).map((e) => keyOf(e.data))).toEqual(["0:0", "0:1", "0:2"])
      }).pipe(Effect.scoped),
    60_000
  )

  it.live(
    "a write the server refuses for good is not retried, fails only its own caller, and raises a durable system.alert",
    () =>
      Effect.gen(function* () {
        const at = yield* server
        const prefix = `t${uniqueName()}`
        const stream = `T_${prefix}`
        // A stream made beforehand with a small message limit, which the log then opens as it is.
        yield* Effect.acquireRelease(
          Effect.promise(() =>
            connect({
              servers: at.url,
              ...(at.token !== undefined ? { token: Redacted.value(at.token) } : {})
            })
          ),
          (nc) => Effect.promise(() => nc.close())
        ).pipe(
          Effect.flatMap((nc) => Effect.promise(() => jetstreamManager(nc))),
          Effect.flatMap((jsm) =>
            Effect.promise(() =>
              jsm.streams.add({ name: stream, subjects: [`${prefix}.>`], max_msg_size: 4096 })
            )
          )
        )
        const log = yield* Effect.map(
          Layer.build(logOn(at, { stream, prefix, nodeId: "test-node", writeTimeout: "60 seconds" })),
          Context.get(EventLog)
        )
        const make = (type: string, n: number, size = 0) =>
          NewEvent.make({ type, source, data: { n, pad: "x".repeat(size) } })
        const [refused, ...innocent] = yield* Effect.all(
          [
            Effect.either(log.append([make("test.big", 0, 8192)])),
            ...Array.from({ length: 5 }, (_, n) => Effect.either(log.append([make("test.fine", n)])))
          ],
          { concurrency: "unbounded" }
        )
        expect(refused?._tag).toBe("Left")
        if (refused?._tag === "Left") {
          expect(refused.left._tag).toBe("EventRejected")
          expect(refused.left.message).toContain("test.big")
        }
        expect(innocent.every((result) => result._tag === "Right")).toBe(true)
        yield* log.append([make("test.fine", 99)])
        const stored = yield* readAll(log)
        expect(stored.filter((e) => e.type === "test.big")).toEqual([])
        expect(stored.filter((e) => e.type === "test.fine")).toHaveLength(6)
        const alerts = stored.filter((e) => e.type === "system.alert")
        expect(alerts).toHaveLength(1)
        expect(alerts[0]?.severity).toBe("critical")
        expect(alerts[0]?.source).toEqual({ nodeId: "test-node", component: "eventlog" })
        expect(stored.map((e) => e.offset)).toEqual(stored.map((_, i) => i + 1))
      }).pipe(Effect.scoped),
    30_000
  )
})
