import { jetstreamManager } from "@nats-io/jetstream"
import { connect } from "@nats-io/transport-node"
import { describe, expect, it } from "@effect/vitest"
import { Context, Effect, Either, Fiber, Layer, Redacted, Schedule, Stream } from "effect"
import { EventLog } from "../../../infra/eventlog/EventLog.js"
import * as JetStreamEventLog from "../../../infra/eventlog/JetStreamEventLog.js"
import { toRow } from "../../../infra/eventlog/PgEventLog.js"
import { EventFilter, NewEvent } from "../../../rpc/Events.js"
import { freshLog, logOn, server, uniqueName } from "../../support/TestNats.js"
import { eventLogContract } from "./contract.js"

eventLogContract("JetStream event log", freshLog(), freshLog)

const source = { nodeId: "test", component: "test" }

const rowOf = (event: NewEvent) => Either.getOrThrow(toRow(event, Date.UTC(2026, 0, 1)))

describe("JetStream subjects and messages", () => {
  it("a publish's answer is the sequence it got, or JetStream's refusal with its error code", () => {
    const { parseAck } = JetStreamEventLog
    const bytes = (text: string) => new TextEncoder().encode(text)
    expect(parseAck(bytes('{"stream":"VIBES","seq":42}'))).toEqual({ _tag: "Stored", seq: 42 })
    expect(parseAck(bytes('{"stream":"VIBES","seq":42,"duplicate":true}'))).toEqual({
      _tag: "Stored",
      seq: 42
    })
    expect(
      parseAck(
        bytes('{"error":{"code":400,"err_code":10054,"description":"message size exceeds maximum allowed"}}')
      )
    ).toEqual({ _tag: "Refused", code: 10054, description: "message size exceeds maximum allowed" })
    expect(parseAck(bytes("not json"))._tag).toBe("Refused")
    expect(parseAck(bytes('{"stream":"VIBES"}'))._tag).toBe("Refused")
  })

  it("ids become subject tokens that cannot split, widen or collide", () => {
    const { subjectToken } = JetStreamEventLog
    expect(subjectToken("acme")).toBe("acme")
    expect(subjectToken("s-1_x")).toBe("s-1_x")
    expect(subjectToken(undefined)).toBe("~")
    const tricky = ["a.b", "a*", ">", "a b", "~", "~7E", "é", "a~2Eb"]
    const tokens = tricky.map(subjectToken)
    for (const token of tokens) expect(token).toMatch(/^[A-Za-z0-9_~-]+$/)
    expect(new Set(tokens).size).toBe(tricky.length)
    expect(tokens).not.toContain("~")
    // Ids up to 200 characters fit a subject however they escape; distinct long ones stay distinct.
    const long = [`${"é".repeat(199)}a`, `${"é".repeat(199)}b`, "x".repeat(200)].map(subjectToken)
    for (const token of long) expect(token).toMatch(/^~~[0-9a-f]{32}$/)
    expect(new Set(long).size).toBe(3)
  })

  it("an event's subject is prefix, tenant, type, session and job", () => {
    const row = rowOf(
      NewEvent.make({ type: "session.output", source, sessionId: "s.1", tenantId: "acme", data: {} })
    )
    expect(JetStreamEventLog.subjectOf("vibes", row)).toBe("vibes.acme.session.output.s~2E1.~")
  })

  it("type globs map exactly onto subject wildcards; what a subject cannot say stays open", () => {
    const { filterSubject } = JetStreamEventLog
    expect(filterSubject("v", { types: [] })).toBe("v.*.>")
    expect(filterSubject("v", { types: ["session.*"], tenantId: "acme" })).toBe("v.acme.session.*.*.*")
    expect(filterSubject("v", { types: ["*.exited"], sessionId: "s1" })).toBe("v.*.*.exited.s1.*")
    expect(filterSubject("v", { types: ["job.log"], jobId: "j1" })).toBe("v.*.job.log.*.j1")
    expect(filterSubject("v", { types: ["job.**"], jobId: "j1" })).toBe("v.*.job.>")
    expect(filterSubject("v", { types: ["**"] })).toBe("v.*.>")
    expect(filterSubject("v", { types: ["job.*", "session.*"], tenantId: "t" })).toBe("v.t.>")
  })

  it("a message is the event's envelope, then its raw bytes, and only vibes envelopes decode", () => {
    const row = rowOf(
      NewEvent.make({
        type: "job.log",
        source,
        jobId: "j1",
        correlationId: "c",
        severity: "warn",
        data: { n: 1 }
      })
    )
    const body = JetStreamEventLog.encode(row)
    // Format 1 ignores what follows the envelope; format 2 carries it as the event's raw bytes.
    const trailing = new Uint8Array([...body, 0, 255, 10])
    const raw = JetStreamEventLog.encode({ ...row, bytes: new Uint8Array([0, 255, 10]) })
    expect(Array.from(Either.getOrThrow(JetStreamEventLog.decode(7, raw)).bytes ?? [])).toEqual([0, 255, 10])
    expect(Either.getOrThrow(JetStreamEventLog.decode(7, trailing)).bytes).toBeUndefined()
    for (const message of [body, trailing, raw]) {
      const event = Either.getOrThrow(JetStreamEventLog.decode(7, message))
      expect(event.offset).toBe(7)
      expect(event.id).toBe(row.id)
      expect(event.jobId).toBe("j1")
      expect(event.sessionId).toBeUndefined()
      expect(event.severity).toBe("warn")
      expect(event.correlationId).toBe("c")
      expect(event.data).toEqual({ n: 1 })
    }
    for (const garbage of [
      new Uint8Array([]),
      new TextEncoder().encode('{"hello":1}'),
      body.subarray(0, body.length - 1)
    ]) {
      const decoded = JetStreamEventLog.decode(3, garbage)
      expect(Either.isLeft(decoded)).toBe(true)
      if (Either.isLeft(decoded)) expect(decoded.left.message).toContain("message 3")
    }
  })

  it.live("outside consumers can follow a tenant's events on plain NATS subjects", () =>
    Effect.gen(function* () {
      const at = yield* server
      const prefix = `t${uniqueName()}`
      const log = yield* Effect.map(
        Layer.build(logOn(at, { stream: `T_${prefix}`, prefix })),
        Context.get(EventLog)
      )
      const nc = yield* Effect.acquireRelease(
        Effect.promise(() =>
          connect({ servers: at.url, ...(at.token !== undefined ? { token: Redacted.value(at.token) } : {}) })
        ),
        (connection) => Effect.promise(() => connection.close())
      )
      const received: Array<string> = []
      const sub = nc.subscribe(`${prefix}.acme.session.>`, {
        callback: (_, message) => {
          received.push(message.subject)
        }
      })
      yield* Effect.promise(() => nc.flush())
      yield* log.append([
        NewEvent.make({ type: "session.output", source, sessionId: "s1", tenantId: "acme", data: {} }),
        NewEvent.make({ type: "session.output", source, sessionId: "s1", tenantId: "other", data: {} }),
        NewEvent.make({ type: "job.log", source, jobId: "j1", tenantId: "acme", data: {} })
      ])
      yield* Effect.promise(() => nc.flush())
      sub.unsubscribe()
      expect(received).toEqual([`${prefix}.acme.session.output.s1.~`])
    }).pipe(Effect.scoped)
  )

  it.live(
    "the newest match comes from the subject's last message, and from a scan where the subject says less than the filter",
    () =>
      Effect.gen(function* () {
        const at = yield* server
        const log = yield* Effect.map(Layer.build(logOn(at)), Context.get(EventLog))
        const job = (jobId: string, n: number, type = "job.log") =>
          NewEvent.make({ type, source, jobId, data: { n } })
        yield* log.append([job("j1", 1), job("j2", 2), job("j1", 3), job("j1", 4, "job.done"), job("j2", 5)])
        const newest = (filter: EventFilter) =>
          Effect.map(log.readBackward(Number.MAX_SAFE_INTEGER, filter, 1), (events) =>
            events.map((e) => e.data)
          )
        expect(yield* newest(EventFilter.make({ jobId: "j1", types: ["job.log"] }))).toEqual([{ n: 3 }])
        expect(yield* newest(EventFilter.make({ jobId: "j1" }))).toEqual([{ n: 4 }])
        expect(yield* newest(EventFilter.make({ jobId: "j3", types: ["job.log"] }))).toEqual([])
        // Two globs cannot be one subject: the subject is wider, the filter is applied in process.
        expect(yield* newest(EventFilter.make({ jobId: "j1", types: ["job.log", "session.*"] }))).toEqual([
          { n: 3 }
        ])
        expect(yield* newest(EventFilter.make({ types: ["job.log"], tenantId: "nobody" }))).toEqual([])
      }).pipe(Effect.scoped)
  )

  it.live("reads and subscriptions leave no consumer behind on the server", () =>
    Effect.gen(function* () {
      const at = yield* server
      const prefix = `t${uniqueName()}`
      const stream = `T_${prefix}`
      const log = yield* Effect.map(Layer.build(logOn(at, { stream, prefix })), Context.get(EventLog))
      const nc = yield* Effect.acquireRelease(
        Effect.promise(() =>
          connect({ servers: at.url, ...(at.token !== undefined ? { token: Redacted.value(at.token) } : {}) })
        ),
        (connection) => Effect.promise(() => connection.close())
      )
      const jsm = yield* Effect.promise(() => jetstreamManager(nc))
      const consumers = Effect.promise(async () => (await jsm.consumers.list(stream).next()).length)
      const all = EventFilter.make({})
      yield* log.append(
        Array.from({ length: 10 }, (_, n) => NewEvent.make({ type: "job.log", source, data: { n } }))
      )
      yield* log.read(1, all, 5)
      yield* log.readBackward(10, all, 3)
      yield* log.resolve({ _tag: "Time", epochMillis: Date.now() - 60_000 })
      yield* log.subscribe({ _tag: "Offset", offset: 3 }, all).pipe(Stream.take(2), Stream.runDrain)
      const waiting = yield* Effect.fork(Stream.runDrain(log.subscribe({ _tag: "Latest" }, all)))
      yield* consumers.pipe(
        Effect.filterOrFail((n) => n > 0),
        Effect.retry(Schedule.spaced("20 millis").pipe(Schedule.upTo("10 seconds")))
      )
      yield* Fiber.interrupt(waiting)
      const left = yield* consumers.pipe(
        Effect.filterOrFail((n) => n === 0),
        Effect.retry(Schedule.spaced("20 millis").pipe(Schedule.upTo("10 seconds"))),
        Effect.orElse(() => consumers)
      )
      expect(left).toBe(0)
    }).pipe(Effect.scoped)
  )

  it.live("events with the longest ids and any characters in them are stored and found by their ids", () =>
    Effect.gen(function* () {
      const log = yield* Effect.map(Layer.build(freshLog()), Context.get(EventLog))
      const ids = ["€".repeat(200), "a.b *>~ c", "x".repeat(200)]
      yield* log.append(
        ids.map((id) =>
          NewEvent.make({ type: "session.output", source, sessionId: id, tenantId: id, jobId: id, data: {} })
        )
      )
      for (const id of ids) {
        const found = yield* log.readBackward(
          Number.MAX_SAFE_INTEGER,
          EventFilter.make({ types: ["session.output"], sessionId: id, tenantId: id, jobId: id }),
          10
        )
        expect(found.map((e) => e.sessionId)).toEqual([id])
      }
    }).pipe(Effect.scoped)
  )
})
