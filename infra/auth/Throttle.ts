/**
 * Failed credentials per client address, with exponential lockout: a few mistakes are free; after
 * that each further failure locks the address out for twice as long as the last (1 s, 2 s, 4 s, …
 * up to a cap). While locked out, credentials from that address are not even checked, so guessing
 * costs the guesser time and the server almost nothing. Synchronous, so the plain-Node proxy path
 * and the Effect routes share one instance.
 */

/** How the throttle behaves. */
export interface Options {
  /** Failures allowed before the first lockout. */
  readonly freeFailures: number
  /** Length of the first lockout, in milliseconds; each later one doubles. */
  readonly baseLockoutMillis: number
  /** Longest lockout, in milliseconds. */
  readonly maxLockoutMillis: number
  /** An address with no failure for this long starts afresh. */
  readonly forgetAfterMillis: number
  /** Addresses remembered at most (the oldest are forgotten first). */
  readonly maxEntries: number
}

/** The defaults: 5 free failures, then 1 s doubling up to 15 min; forgotten after an hour. */
export const defaults: Options = {
  freeFailures: 5,
  baseLockoutMillis: 1000,
  maxLockoutMillis: 15 * 60 * 1000,
  forgetAfterMillis: 60 * 60 * 1000,
  maxEntries: 100_000
}

/** What a failure did to its address. */
export interface FailureOutcome {
  /** Failures counted for the address so far. */
  readonly failures: number
  /** The lockout this failure started, in milliseconds (0: none). */
  readonly lockedForMillis: number
  /** Attempts refused unchecked during the lockout that just ended. */
  readonly refusedWhileLocked: number
}

interface Entry {
  failures: number
  lastFailure: number
  lockedUntil: number
  refused: number
}

/** A failed-credential counter. */
export interface Throttle {
  /** Milliseconds the address must still wait (0: it may try now). Counts a refused attempt. */
  readonly lockedFor: (key: string, now: number) => number
  /** Records a failed credential. */
  readonly failure: (key: string, now: number) => FailureOutcome
  /** Records a success: the address starts afresh. */
  readonly success: (key: string) => void
  /** Addresses remembered now. */
  readonly size: () => number
}

/** A throttle with `options` (the defaults unless given). */
export const make = (options: Options = defaults): Throttle => {
  const entries = new Map<string, Entry>()

  const current = (key: string, now: number): Entry | undefined => {
    const entry = entries.get(key)
    if (
      entry !== undefined &&
      now - entry.lastFailure > options.forgetAfterMillis &&
      now >= entry.lockedUntil
    ) {
      entries.delete(key)
      return undefined
    }
    return entry
  }

  const prune = (now: number) => {
    for (const [key, entry] of entries) {
      if (entries.size <= options.maxEntries) return
      if (now - entry.lastFailure > options.forgetAfterMillis || entries.size > options.maxEntries) {
        entries.delete(key)
      }
    }
  }

  return {
    lockedFor: (key, now) => {
      const entry = current(key, now)
      if (entry === undefined || now >= entry.lockedUntil) return 0
      entry.refused++
      return entry.lockedUntil - now
    },
    failure: (key, now) => {
      const entry = current(key, now) ?? { failures: 0, lastFailure: now, lockedUntil: 0, refused: 0 }
      entry.failures++
      entry.lastFailure = now
      const refusedWhileLocked = entry.refused
      entry.refused = 0
      const over = entry.failures - options.freeFailures
      const lockedForMillis =
        over > 0
          ? Math.min(options.maxLockoutMillis, options.baseLockoutMillis * 2 ** Math.min(over - 1, 30))
          : 0
      entry.lockedUntil = lockedForMillis > 0 ? now + lockedForMillis : 0
      // Re-inserted, so iteration order is least recently failed first.
      entries.delete(key)
      entries.set(key, entry)
      if (entries.size > options.maxEntries) prune(now)
      return { failures: entry.failures, lockedForMillis, refusedWhileLocked }
    },
    success: (key) => {
      entries.delete(key)
    },
    size: () => entries.size
  }
}
