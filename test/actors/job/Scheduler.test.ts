import { describe, expect, it } from "@effect/vitest"
import { Deferred, Effect, Exit, Fiber, Scope } from "effect"
import * as Scheduler from "../../../actors/job/Scheduler.js"

describe("Scheduler", () => {
  it.scoped("runs at most `slots` at once and hands freed slots out by priority, then arrival", () =>
    Effect.gen(function* () {
      const scheduler = yield* Scheduler.make(2)
      const order: Array<string> = []
      const waitingIs = (n: number) =>
        Effect.repeat(Effect.zipRight(Effect.yieldNow(), scheduler.stats), { until: (s) => s.waiting === n })
      /** Asks for a slot; `got` resolves once it holds one, `done` gives it back. */
      const take = (name: string, priority: number) =>
        Effect.gen(function* () {
          const got = yield* Deferred.make<void>()
          const done = yield* Deferred.make<void>()
          const fiber = yield* Effect.fork(
            Effect.scoped(
              Effect.gen(function* () {
                yield* scheduler.slot(priority)
                order.push(name)
                yield* Deferred.succeed(got, undefined)
                yield* Deferred.await(done)
              })
            )
          )
          return { fiber, got: Deferred.await(got), release: Deferred.succeed(done, undefined) }
        })

      const a = yield* take("a", 0)
      const b = yield* take("b", 0)
      yield* a.got
      yield* b.got
      const low = yield* take("low", -5)
      yield* waitingIs(1)
      const mid1 = yield* take("mid-1", 1)
      yield* waitingIs(2)
      const mid2 = yield* take("mid-2", 1)
      yield* waitingIs(3)
      const high = yield* take("high", 10)
      yield* waitingIs(4)
      expect(yield* scheduler.stats).toEqual({ slots: 2, running: 2, waiting: 4 })

      yield* a.release
      yield* high.got
      yield* b.release
      yield* mid1.got
      // A waiter that gives up leaves the line without taking a slot.
      yield* Fiber.interrupt(mid2.fiber)
      yield* high.release
      yield* low.got
      expect(order).toEqual(["a", "b", "high", "mid-1", "low"])
      expect(yield* scheduler.stats).toEqual({ slots: 2, running: 2, waiting: 0 })
      yield* mid1.release
      yield* low.release
    })
  )

  it.effect("a slot is returned when its holder's scope closes", () =>
    Effect.gen(function* () {
      const scheduler = yield* Scheduler.make(1)
      const scope = yield* Scope.make()
      yield* scheduler.slot(0).pipe(Scope.extend(scope))
      expect((yield* scheduler.stats).running).toBe(1)
      yield* Scope.close(scope, Exit.void)
      expect((yield* scheduler.stats).running).toBe(0)
    })
  )
})
