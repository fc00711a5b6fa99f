import { describe, expect, it } from "@effect/vitest"
import { Effect, FastCheck as fc } from "effect"
import * as ScreenModel from "../../../infra/terminal/ScreenModel.js"
import { int, step } from "../../support/RandomOutput.js"
import * as Terminals from "../../support/Terminals.js"

const encoder = new TextEncoder()

interface Case {
  readonly cols: number
  readonly rows: number
  readonly steps: ReadonlyArray<string>
  /** Fraction of the bytes written before the snapshot (the rest after it, to both terminals). */
  readonly cut: number
}

const cases: fc.Arbitrary<Case> = fc.record({
  cols: int(10, 40),
  rows: int(3, 14),
  steps: fc.array(step, { minLength: 1, maxLength: 120 }),
  cut: fc.double({ min: 0.3, max: 1, noNaN: true })
})

/** Feeds the first part to a model and a reference, restores a third from the model's snapshot, feeds the rest to both. */
const check = (input: Case) =>
  Effect.scoped(
    Effect.gen(function* () {
      const bytes = encoder.encode(input.steps.join(""))
      // Anywhere but inside a UTF-8 character (the redraw is text, which cannot hold half of one)
      // or before a combining mark (which joins whatever the redraw printed last).
      let at = Math.floor(bytes.length * input.cut)
      const combining = (at: number) =>
        bytes[at] === 0xcc || (bytes[at] === 0xcd && (bytes[at + 1] ?? 0) < 0xb0)
      while (at < bytes.length && (((bytes[at] ?? 0) & 0xc0) === 0x80 || combining(at))) at++
      const model = yield* ScreenModel.make({ cols: input.cols, rows: input.rows, scrollback: 1000 })
      const raw = yield* Terminals.reference(input.cols, input.rows)
      // Chunks as a PTY would deliver them: split anywhere, also inside sequences and characters.
      for (let from = 0; from < at; from += 7) {
        const chunk = bytes.subarray(from, Math.min(at, from + 7))
        yield* model.write(chunk)
        yield* Terminals.feed(raw, chunk)
      }
      const snapshot = yield* model.snapshot()
      const restored = yield* Terminals.reference(input.cols, input.rows)
      yield* Terminals.feed(restored, snapshot.vt)
      const rest = bytes.subarray(at)
      yield* Terminals.feed(raw, rest)
      yield* Terminals.feed(restored, rest)
      return { raw: Terminals.dump(raw), restored: Terminals.dump(restored) }
    })
  )

describe("ScreenModel snapshots of random programs", () => {
  it.live(
    "a terminal fed the snapshot, then the rest of the output, equals one fed every byte: cells, attributes and modes",
    () =>
      Effect.promise(() =>
        fc.assert(
          fc.asyncProperty(cases, async (input) => {
            const { raw, restored } = await Effect.runPromise(check(input))
            expect(restored).toEqual(raw)
          }),
          { seed: 29, numRuns: 200 }
        )
      ),
    240_000
  )
})
