import { describe, expect, it } from "@effect/vitest"
import * as Throttle from "../../../infra/auth/Throttle.js"

describe("the failed-credential throttle", () => {
  it("lets five failures through, then locks the address out for 1 s, 2 s, 4 s … up to the cap", () => {
    const throttle = Throttle.make()
    let now = 1_000_000
    for (let i = 1; i <= 5; i++) {
      expect(throttle.lockedFor("a", now)).toBe(0)
      expect(throttle.failure("a", now).lockedForMillis).toBe(0)
    }
    const lockouts: Array<number> = []
    for (let i = 0; i < 14; i++) {
      const outcome = throttle.failure("a", now)
      lockouts.push(outcome.lockedForMillis)
      expect(throttle.lockedFor("a", now)).toBe(outcome.lockedForMillis)
      now += outcome.lockedForMillis
      expect(throttle.lockedFor("a", now)).toBe(0)
    }
    expect(lockouts.slice(0, 6)).toEqual([1000, 2000, 4000, 8000, 16000, 32000])
    expect(Math.max(...lockouts)).toBe(Throttle.defaults.maxLockoutMillis)
  })

  it("counts attempts refused during a lockout and reports them with the next failure", () => {
    const throttle = Throttle.make({ ...Throttle.defaults, freeFailures: 0 })
    expect(throttle.failure("a", 0).lockedForMillis).toBe(1000)
    for (let i = 0; i < 7; i++) expect(throttle.lockedFor("a", 500)).toBe(500)
    expect(throttle.failure("a", 1000)).toEqual({ failures: 2, lockedForMillis: 2000, refusedWhileLocked: 7 })
  })

  it("keeps addresses apart, forgets one after a success or an hour without failures", () => {
    const throttle = Throttle.make({ ...Throttle.defaults, freeFailures: 0 })
    throttle.failure("a", 0)
    expect(throttle.lockedFor("b", 0)).toBe(0)
    throttle.success("a")
    expect(throttle.lockedFor("a", 0)).toBe(0)
    throttle.failure("c", 0)
    const later = Throttle.defaults.forgetAfterMillis + 1
    expect(throttle.failure("c", later).failures).toBe(1)
  })

  it("remembers a bounded number of addresses", () => {
    const throttle = Throttle.make({ ...Throttle.defaults, maxEntries: 100 })
    for (let i = 0; i < 1000; i++) throttle.failure(`10.0.${Math.floor(i / 256)}.${i % 256}`, i)
    expect(throttle.size()).toBeLessThanOrEqual(100)
  })
})
