import { describe, expect, it } from "@effect/vitest"
import { Deferred, Effect, FastCheck as fc, Layer } from "effect"
import * as ScreenModel from "../../../infra/terminal/ScreenModel.js"
import { ScreenWorkers, layer } from "../../../infra/terminal/ScreenWorkers.js"
import { step } from "../../support/RandomOutput.js"

const encode = (text: string) => new TextEncoder().encode(text)

describe("screen models in the screen worker", () => {
  it.scopedLive("parse what they are fed exactly as a model in this thread does", () =>
    Effect.gen(function* () {
      const workers = yield* ScreenWorkers
      for (let sample = 0; sample < 4; sample++) {
        const [steps] = fc.sample(fc.array(step, { minLength: 300, maxLength: 300 }), {
          seed: 1000 + sample,
          numRuns: 1
        })
        const bytes = encode((steps ?? []).join(""))
        const here = yield* ScreenModel.make({ cols: 60, rows: 20, scrollback: 200 })
        const there = yield* workers.make({ cols: 60, rows: 20, scrollback: 200 })
        // Fed in uneven pieces, with a resize in the middle, as a session's output comes.
        for (let at = 0, piece = 1; at < bytes.length; at += piece, piece = ((piece * 7) % 997) + 1) {
          const part = bytes.subarray(at, at + piece)
          here.feed(part)
          there.feed(part)
          if (at > bytes.length / 2 && at - piece <= bytes.length / 2) {
            yield* here.resize(50, 18)
            yield* there.resize(50, 18)
          }
        }
        yield* here.write(new Uint8Array(0))
        yield* there.write(new Uint8Array(0))
        expect(yield* there.snapshot({ scrollbackLines: 100 })).toEqual(
          yield* here.snapshot({ scrollbackLines: 100 })
        )
      }
    }).pipe(Effect.provide(layer))
  )

  it.scopedLive("answer queries, ring bells and set titles through the hooks", () =>
    Effect.gen(function* () {
      const workers = yield* ScreenWorkers
      const reply = yield* Deferred.make<string>()
      const bell = yield* Deferred.make<void>()
      const title = yield* Deferred.make<string>()
      const model = yield* workers.make({
        cols: 80,
        rows: 24,
        scrollback: 10,
        onReply: (text) => Deferred.unsafeDone(reply, Effect.succeed(text)),
        onBell: () => Deferred.unsafeDone(bell, Effect.void),
        onTitle: (text) => Deferred.unsafeDone(title, Effect.succeed(text))
      })
      model.feed(encode("\x1b[3;5H\x1b[6n\x07\x1b]2;built\x07"))
      expect(yield* Deferred.await(reply).pipe(Effect.timeout("5 seconds"))).toBe("\x1b[3;5R")
      yield* Deferred.await(bell).pipe(Effect.timeout("5 seconds"))
      expect(yield* Deferred.await(title).pipe(Effect.timeout("5 seconds"))).toBe("built")
      expect((yield* model.snapshot()).cursor).toEqual({ x: 4, y: 2 })
    }).pipe(Effect.provide(layer))
  )

  it.scopedLive("many models share one worker and stay apart", () =>
    Effect.gen(function* () {
      const workers = yield* ScreenWorkers
      const models = yield* Effect.forEach([1, 2, 3, 4, 5], (n) =>
        Effect.map(workers.make({ cols: 20, rows: 3, scrollback: 0 }), (model) => ({ n, model }))
      )
      for (const { model, n } of models) model.feed(encode(`model ${n}`))
      for (const { model, n } of models)
        expect((yield* model.snapshot()).text.split("\n")[0]).toBe(`model ${n}`)
    }).pipe(Effect.provide(Layer.fresh(layer)))
  )
})
