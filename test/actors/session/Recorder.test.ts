/**
 * A session's history writer against the Postgres log: an event the log refuses for good (too
 * large, text it cannot store) is replaced by an `event.dropped` marker and logged once, and the
 * session's recording goes on; it never retries such an event forever. The node's one writer keeps
 * each session's history whole and in order.
 */
import { expect, layer } from "@effect/vitest"
import { Effect, Exit, Layer, Logger, Scope } from "effect"
import { EventFilter } from "../../../rpc/Events.js"
import * as Recorder from "../../../actors/session/Recorder.js"
import { EventLog } from "../../../infra/eventlog/EventLog.js"
import * as PgEventLog from "../../../infra/eventlog/PgEventLog.js"
import * as Migrations from "../../../infra/db/Migrations.js"
import * as TestDatabase from "../../support/TestDatabase.js"

const Live = PgEventLog.layer({ nodeId: "test-node" }).pipe(
  Layer.provideMerge(Layer.effectDiscard(Migrations.run)),
  Layer.provideMerge(TestDatabase.layerSql)
)

const encode = (text: string) => new TextEncoder().encode(text)

layer(Live, { timeout: 60_000, excludeTestServices: true })("session recorder", (it) => {
  it.scoped(
    "an event the log refuses for good is recorded as a marker, logged once, and recording goes on",
    () => {
      const lines: Array<string> = []
      const capture = Logger.make(({ message }) => {
        lines.push(Array.isArray(message) ? message.map(String).join(" ") : String(message))
      })
      return Effect.gen(function* () {
        const log = yield* EventLog
        const sessionId = "recorder-test_0193d9b4-7c1e-7a2b-9c3d-4e5f60718293"
        // The node's writer logs with the logger of the scope it starts in: this test's.
        const recorders = yield* Recorder.makeRecorders()
        const recorder = yield* recorders.make({ sessionId, nodeId: "test-node", startSeq: 0 })
        recorder.output(0, encode("hello"))
        recorder.event("session.created", {
          command: "sh",
          args: ["x".repeat(300 * 1024)],
          cwd: "/",
          cols: 80,
          rows: 24
        })
        recorder.output(5, encode(" world"))
        recorder.event("session.replaced", { replacedBy: "half a pair \uD800", machine: "elsewhere" })
        recorder.output(11, encode("!"))
        recorder.event("session.bell", {})
        // Before, this waited forever: the recorder retried the refused event without end.
        yield* recorder.flush.pipe(Effect.timeout("30 seconds"))
        expect(recorder.recordedSeq()).toBe(12)
        const events = yield* log.read(1, EventFilter.make({ sessionId }), 100)
        expect(events.map((e) => [e.type, e.severity])).toEqual([
          ["session.output", "info"],
          ["event.dropped", "error"],
          ["session.output", "info"],
          ["event.dropped", "error"],
          ["session.output", "info"],
          ["session.bell", "info"]
        ])
        expect(events[1]?.data).toMatchObject({ type: "session.created", reason: "EventTooLarge" })
        expect(events[3]?.data).toMatchObject({ type: "session.replaced", reason: "EventRejected" })
        const output = events
          .filter((e) => e.type === "session.output")
          .map((e) => Buffer.from(e.bytes ?? []).toString())
        expect(output.join("")).toBe("hello world!")
        expect(lines.filter((line) => line.includes("dropped a session.created event"))).toHaveLength(1)
        expect(lines.filter((line) => line.includes("dropped a session.replaced event"))).toHaveLength(1)
      }).pipe(Effect.provide(Logger.replace(Logger.defaultLogger, capture)))
    }
  )

  it.scoped(
    "the node's one writer keeps each of many sessions' history whole and in order, and a closed recorder writes what it had",
    () =>
      Effect.gen(function* () {
        const log = yield* EventLog
        const recorders = yield* Recorder.makeRecorders({ maxChunkBytes: 1000 })
        const ids = Array.from({ length: 20 }, (_, i) => `recorder-many-${i}_${Date.now()}`)
        const scopes = yield* Effect.forEach(ids, () => Scope.make())
        const sessions = yield* Effect.forEach(ids, (sessionId, i) =>
          recorders
            .make({ sessionId, nodeId: "test-node", startSeq: 0 })
            .pipe(Scope.extend(scopes[i] as Scope.CloseableScope))
        )
        // Interleaved: every session gets a piece in turn, with an event in the middle.
        const expected = ids.map(() => "")
        for (let round = 0; round < 50; round++) {
          sessions.forEach((recorder, i) => {
            const text = `${i}:${round}|`.repeat(round % 7 === 0 ? 200 : 1)
            recorder.output(Buffer.byteLength(expected[i] ?? ""), encode(text))
            expected[i] += text
            if (round === 25) recorder.event("session.bell", {})
          })
        }
        // Half are flushed, the other half closed: both write everything they were given.
        yield* Effect.forEach(sessions.slice(0, 10), (recorder) => recorder.flush)
        yield* Effect.forEach(scopes.slice(10), (scope) => Scope.close(scope, Exit.void))
        for (const [i, sessionId] of ids.entries()) {
          const events = yield* log.read(1, EventFilter.make({ sessionId }), 1000)
          const outputs = events.filter((e) => e.type === "session.output")
          expect(Buffer.concat(outputs.map((e) => e.bytes ?? new Uint8Array())).toString()).toBe(expected[i])
          let seq = 0
          for (const event of outputs) {
            expect(event.data).toEqual({ seq })
            expect(event.bytes?.length ?? 0).toBeLessThanOrEqual(1000)
            seq += event.bytes?.length ?? 0
          }
          expect(events.filter((e) => e.type === "session.bell")).toHaveLength(1)
          if (i < 10) expect(sessions[i]?.recordedSeq()).toBe(Buffer.byteLength(expected[i] ?? ""))
        }
      })
  )
})
