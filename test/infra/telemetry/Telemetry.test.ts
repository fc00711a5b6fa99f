import { describe, expect, it } from "@effect/vitest"
import { Effect, Logger } from "effect"
import { tracedJsonLogger } from "../../../infra/telemetry/Telemetry.js"

/** Runs `effect` with the traced JSON logger writing into an array; returns the lines parsed. */
const captured = <A, E>(effect: Effect.Effect<A, E>) =>
  Effect.gen(function* () {
    const lines: Array<string> = []
    const logger = Logger.map(tracedJsonLogger, (line) => {
      lines.push(line)
    })
    const result = yield* effect.pipe(Effect.provide(Logger.replace(Logger.defaultLogger, logger)))
    return { result, lines: lines.map((line) => JSON.parse(line) as Record<string, unknown>) }
  })

describe("JSON log lines", () => {
  it.effect("carry the trace and span ids of the span they were logged in, and none outside a span", () =>
    Effect.gen(function* () {
      const { result: span, lines } = yield* captured(
        Effect.gen(function* () {
          yield* Effect.logInfo("outside")
          return yield* Effect.gen(function* () {
            yield* Effect.logWarning("inside", new Error("boom"))
            return yield* Effect.currentSpan
          }).pipe(Effect.withSpan("work"))
        })
      )
      const [outside, inside] = lines
      expect(outside).toMatchObject({ message: "outside", logLevel: "INFO" })
      expect(outside).not.toHaveProperty("traceId")
      expect(inside).toMatchObject({
        message: ["inside", "Error: boom"],
        logLevel: "WARN",
        traceId: span.traceId,
        spanId: span.spanId
      })
    })
  )
})
