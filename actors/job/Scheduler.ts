/**
 * Worker slots: at most `slots` job attempts run at once on this node. Waiting attempts get a
 * freed slot in priority order (higher first), then in the order they asked.
 */
import { Context, Deferred, Effect, Layer, Metric, type Scope } from "effect"

/** What the scheduler is doing. */
export interface Stats {
  readonly slots: number
  readonly running: number
  readonly waiting: number
}

/** The node's worker slots. */
export class Scheduler extends Context.Tag("vibes/JobScheduler")<
  Scheduler,
  {
    /** Waits (interruptibly) for a slot, held until the scope closes. */
    readonly slot: (priority: number) => Effect.Effect<void, never, Scope.Scope>
    readonly stats: Effect.Effect<Stats>
  }
>() {}

interface Waiter {
  readonly priority: number
  readonly order: number
  readonly granted: Deferred.Deferred<void>
  done: boolean
}

const runningGauge = Metric.gauge("vibes_jobs_running", { description: "Job attempts holding a worker slot" })
const waitingGauge = Metric.gauge("vibes_jobs_waiting", {
  description: "Job attempts waiting for a worker slot"
})

/** A scheduler with `slots` worker slots. */
export const make = (slots: number): Effect.Effect<Context.Tag.Service<Scheduler>> =>
  Effect.sync(() => {
    let free = slots
    let order = 0
    // Sorted: best first (highest priority, then oldest).
    const waiters: Array<Waiter> = []

    const report = Effect.zipRight(
      Metric.set(runningGauge, slots - free),
      Metric.set(waitingGauge, waiters.length)
    )

    const insert = (waiter: Waiter) => {
      let i = waiters.length
      while (i > 0) {
        const before = waiters[i - 1]
        if (before === undefined || before.priority >= waiter.priority) break
        i--
      }
      waiters.splice(i, 0, waiter)
    }

    const release = () => {
      const next = waiters.shift()
      if (next === undefined) {
        free++
      } else {
        next.done = true
        Deferred.unsafeDone(next.granted, Effect.void)
      }
    }

    const slot = (priority: number) =>
      Effect.uninterruptibleMask((restore) =>
        Effect.gen(function* () {
          if (free > 0 && waiters.length === 0) {
            free--
          } else {
            const waiter: Waiter = {
              priority,
              order: order++,
              granted: yield* Deferred.make<void>(),
              done: false
            }
            insert(waiter)
            yield* report
            yield* restore(Deferred.await(waiter.granted)).pipe(
              Effect.onInterrupt(() =>
                Effect.sync(() => {
                  if (waiter.done) {
                    release()
                  } else {
                    const at = waiters.indexOf(waiter)
                    if (at >= 0) waiters.splice(at, 1)
                  }
                }).pipe(Effect.zipRight(report))
              )
            )
          }
          yield* report
          yield* Effect.addFinalizer(() => Effect.zipRight(Effect.sync(release), report))
        })
      )

    return Scheduler.of({
      slot,
      stats: Effect.sync(() => ({ slots, running: slots - free, waiting: waiters.length }))
    })
  })

/** The node's scheduler. */
export const layer = (slots: number) => Layer.effect(Scheduler, make(slots))
