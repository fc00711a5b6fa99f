/**
 * The proxy's guards, per node: a token bucket per client (the admin, or each session) and a
 * circuit breaker per provider. Both are plain synchronous state on the request path.
 */
import type { CircuitState, ProviderCircuit } from "../../rpc/Proxy.js"

/** Token buckets keyed by client: `rate` requests a second, bursts up to `burst`. */
export class RateLimiter {
  private readonly buckets = new Map<string, { tokens: number; at: number }>()
  private takes = 0

  /** `rate` 0 means no limit. */
  constructor(
    private readonly rate: number,
    private readonly burst: number
  ) {}

  /** Takes a token for `client`: 0 when the request may go, else the seconds until one is free. */
  take(client: string, now: number = performance.now()): number {
    if (this.rate <= 0) return 0
    if (++this.takes % 10_000 === 0) this.sweep(now)
    const bucket = this.buckets.get(client) ?? { tokens: this.burst, at: now }
    bucket.tokens = Math.min(this.burst, bucket.tokens + ((now - bucket.at) / 1000) * this.rate)
    bucket.at = now
    this.buckets.set(client, bucket)
    if (bucket.tokens >= 1) {
      bucket.tokens -= 1
      return 0
    }
    return (1 - bucket.tokens) / this.rate
  }

  /** Forgets buckets that have filled up again (they are the same as new ones). */
  private sweep(now: number): void {
    for (const [client, bucket] of this.buckets) {
      if (bucket.tokens + ((now - bucket.at) / 1000) * this.rate >= this.burst) this.buckets.delete(client)
    }
  }
}

/**
 * Opens after `failures` failed requests in a row; while open, requests are refused without
 * reaching the provider. After `openMs` one trial request goes through (half-open): its success
 * closes the circuit, its failure opens it again.
 */
export class CircuitBreaker {
  private consecutive = 0
  private openedAt: number | null = null
  private trial = false

  constructor(private readonly settings: ProviderCircuit) {}

  get failures(): number {
    return this.consecutive
  }

  state(now: number = performance.now()): CircuitState {
    if (this.openedAt === null) return "closed"
    return now - this.openedAt >= this.settings.openMs ? "half-open" : "open"
  }

  /** Whether a request may go now; in half-open, only the first (the trial) may. */
  admit(
    now: number = performance.now()
  ): { readonly ok: true } | { readonly ok: false; readonly retryAfterMs: number } {
    const state = this.state(now)
    if (state === "closed") return { ok: true }
    if (state === "half-open" && !this.trial) {
      this.trial = true
      return { ok: true }
    }
    const retryAfterMs =
      this.openedAt === null ? 0 : Math.max(0, this.settings.openMs - (now - this.openedAt))
    return { ok: false, retryAfterMs: Math.max(retryAfterMs, 1000) }
  }

  succeeded(): void {
    this.consecutive = 0
    this.openedAt = null
    this.trial = false
  }

  /** Records a failure; true when it opened the circuit (from closed, or a failed trial). */
  failed(now: number = performance.now()): boolean {
    this.consecutive += 1
    const wasOpen = this.openedAt !== null && !this.trial
    const opens = this.trial || this.consecutive >= this.settings.failures
    if (opens) this.openedAt = now
    this.trial = false
    return opens && !wasOpen
  }

  /** A request admitted as the trial ended without telling (the client went away): let another try. */
  released(): void {
    this.trial = false
  }
}
