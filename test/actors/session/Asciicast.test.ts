import { expect, layer } from "@effect/vitest"
import { Chunk, Effect, Stream } from "effect"
import { NewEvent } from "../../../rpc/Events.js"
import { EventLog } from "../../../infra/eventlog/EventLog.js"
import * as MemoryEventLog from "../../../infra/eventlog/MemoryEventLog.js"
import * as Asciicast from "../../../actors/session/Asciicast.js"

const source = { nodeId: "test", component: "test" }
const sessionId = "m_0193d9b4-7c1e-7a2b-9c3d-4e5f60718293"
const encoder = new TextEncoder()

const recording = (id: string) =>
  Asciicast.cast(id, { cols: 1, rows: 1, createdAt: new Date(0) }).pipe(
    Stream.runCollect,
    Effect.map((chunks) =>
      Buffer.concat(Chunk.toReadonlyArray(chunks))
        .toString("utf8")
        .trimEnd()
        .split("\n")
        .map((line) => JSON.parse(line) as unknown)
    )
  )

layer(MemoryEventLog.layer, { excludeTestServices: true })("asciicast", (it) => {
  it.effect("output split inside a character is joined; pruned output starts from its snapshot", () =>
    Effect.gen(function* () {
      const log = yield* EventLog
      const check = encoder.encode("✓")
      yield* log.append([
        NewEvent.make({
          type: "session.created",
          source,
          sessionId,
          data: { command: "sh", args: ["-l"], cwd: "/", cols: 80, rows: 24 }
        }),
        // Retention dropped seq 0-9 (`old screen` stands in for them); "gone-" is seq 5-9.
        NewEvent.make({
          type: "session.snapshot",
          source,
          sessionId,
          data: { seq: 10, cols: 80, rows: 24, screen: "old screen" }
        }),
        NewEvent.make({
          type: "session.output",
          source,
          sessionId,
          data: { seq: 5 },
          bytes: encoder.encode("gone-new:")
        }),
        NewEvent.make({
          type: "session.output",
          source,
          sessionId,
          data: { seq: 17 },
          bytes: check.subarray(0, 1)
        }),
        NewEvent.make({ type: "session.resized", source, sessionId, data: { cols: 90, rows: 20 } }),
        NewEvent.make({
          type: "session.output",
          source,
          sessionId,
          data: { seq: 18 },
          bytes: check.subarray(1)
        })
      ])
      const [header, ...events] = yield* recording(sessionId)
      expect(header).toMatchObject({ version: 2, width: 80, height: 24, title: "sh -l" })
      expect(events.map((event) => (event as Array<unknown>).slice(1))).toEqual([
        ["o", "\u001b[H\u001b[2Jold screen"],
        ["o", "new:"],
        ["r", "90x20"],
        ["o", "✓"]
      ])
    })
  )

  it.effect("a session with no history left still has a header, from what the registry knows", () =>
    Effect.gen(function* () {
      const lines = yield* recording("m_0193d9b4-7c1e-7a2b-9c3d-000000000000")
      expect(lines).toEqual([
        {
          version: 2,
          width: 1,
          height: 1,
          timestamp: 0,
          title: "vibes session m_0193d9b4-7c1e-7a2b-9c3d-000000000000",
          env: { TERM: "xterm-256color" }
        }
      ])
    })
  )
})
