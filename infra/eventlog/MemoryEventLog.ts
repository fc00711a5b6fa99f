/**
 * The in-memory event log, for tests that want the log's behaviour without a database. Chosen
 * explicitly; nothing survives the process. Same contract as the Postgres backend: gapless
 * offsets, oversize payloads refused, history then live with no gap and no duplicate.
 */
import { DateTime, Effect, Either, Layer, Option, Ref, Stream, SubscriptionRef } from "effect"
import {
  compileFilter,
  compileGlob,
  type EventFilter,
  LogStats,
  type NewEvent,
  Offset,
  StoredEvent
} from "../../rpc/Events.js"
import {
  checkCommit,
  checkConsumer,
  EventLog,
  type From,
  payloadBytes,
  type RetentionPolicy,
  tally
} from "./EventLog.js"
import { type Row, toRow } from "./PgEventLog.js"

/** Builds an empty log. */
export const make = Effect.gen(function* () {
  // Events by offset; retention leaves holes, so the array is kept sorted rather than indexed.
  let events: Array<StoredEvent> = []
  const consumers_ = yield* Ref.make(new Map<string, number>())
  const head = yield* SubscriptionRef.make(0)

  const append = (batch: ReadonlyArray<NewEvent>) =>
    Effect.gen(function* () {
      const now = Date.now()
      const rows: Array<Row> = []
      for (const event of batch) {
        const row = toRow(event, now)
        if (Either.isLeft(row)) return yield* row.left
        rows.push(row.right)
      }
      return yield* SubscriptionRef.modify(head, (current) => {
        const offsets = rows.map((row, i) => {
          const offset = Offset.make(current + 1 + i)
          events.push(
            StoredEvent.make({
              offset,
              id: row.id,
              type: row.type,
              ts: DateTime.unsafeFromDate(row.ts),
              source: { nodeId: row.sourceNode, component: row.sourceComponent },
              ...(row.sessionId !== null ? { sessionId: row.sessionId } : {}),
              ...(row.jobId !== null ? { jobId: row.jobId } : {}),
              tenantId: row.tenantId,
              severity: row.severity as StoredEvent["severity"],
              ...(row.correlationId !== null ? { correlationId: row.correlationId } : {}),
              data: JSON.parse(row.data) as unknown,
              // A copy: the caller may reuse its buffer.
              ...(row.bytes !== null ? { bytes: new Uint8Array(row.bytes) } : {})
            })
          )
          return offset
        })
        return [offsets, current + rows.length] as const
      })
    })

  /** Index of the first stored event with offset >= `from`. */
  const indexOf = (from: number) => {
    let lo = 0
    let hi = events.length
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      if ((events[mid]?.offset ?? 0) < from) lo = mid + 1
      else hi = mid
    }
    return lo
  }

  const compile = (filter: EventFilter) =>
    Either.match(compileFilter(filter), { onLeft: Effect.fail, onRight: Effect.succeed })

  const read = (from: number, filter: EventFilter, limit: number) =>
    Effect.map(compile(filter), (compiled) => {
      const out: Array<StoredEvent> = []
      const max = Math.max(0, Math.min(limit, 10_000))
      for (let i = indexOf(Math.max(1, from)); i < events.length && out.length < max; i++) {
        const event = events[i]
        if (event !== undefined && compiled.matches(event)) out.push(event)
      }
      return out
    })

  const readBackward = (upTo: number, filter: EventFilter, limit: number) =>
    Effect.map(compile(filter), (compiled) => {
      const out: Array<StoredEvent> = []
      const max = Math.max(0, Math.min(limit, 10_000))
      for (let i = indexOf(upTo + 1) - 1; i >= 0 && out.length < max; i--) {
        const event = events[i]
        if (event !== undefined && compiled.matches(event)) out.push(event)
      }
      return out
    })

  const resolve = (from: From) =>
    Effect.map(SubscriptionRef.get(head), (current) => {
      switch (from._tag) {
        case "Offset":
          return Math.max(1, from.offset)
        case "Latest":
          return current + 1
        case "Time": {
          const found = events.find((event) => DateTime.toEpochMillis(event.ts) >= from.epochMillis)
          return found?.offset ?? current + 1
        }
      }
    })

  const subscribe = (from: From, filter: EventFilter) =>
    Stream.unwrap(
      Effect.gen(function* () {
        const compiled = yield* compile(filter)
        let next = yield* resolve(from)
        return head.changes.pipe(
          Stream.filter((current) => current >= next),
          Stream.map((current) => {
            const out: Array<StoredEvent> = []
            for (let i = indexOf(next); i < events.length; i++) {
              const event = events[i]
              if (event === undefined || event.offset > current) break
              if (compiled.matches(event)) out.push(event)
            }
            next = current + 1
            return out
          }),
          Stream.flattenIterables
        )
      })
    )

  const commit = (consumer: string, offset: number) =>
    Effect.gen(function* () {
      yield* checkCommit(consumer, offset, yield* SubscriptionRef.get(head))
      yield* Ref.update(consumers_, (map) => new Map(map).set(consumer, offset))
    })

  const committed = (consumer: string) =>
    Effect.zipRight(
      checkConsumer(consumer),
      Effect.map(Ref.get(consumers_), (map) => Option.fromNullable(map.get(consumer)))
    )

  const consumers = Effect.map(Ref.get(consumers_), (map) =>
    [...map].map(([name, offset]) => ({ name, offset })).sort((a, b) => (a.name < b.name ? -1 : 1))
  )

  const applyRetention = (policies: ReadonlyArray<RetentionPolicy>, now: number) =>
    Effect.gen(function* () {
      const map = yield* Ref.get(consumers_)
      const safeOffset = map.size > 0 ? Math.min(...map.values()) : null
      let deleted = 0
      for (const policy of policies) {
        const globs = yield* Effect.forEach(policy.types, (glob) =>
          Either.match(compileGlob(glob), { onLeft: Effect.fail, onRight: Effect.succeed })
        )
        const snapshot =
          policy.snapshotType !== undefined
            ? yield* Either.match(compileGlob(policy.snapshotType), {
                onLeft: Effect.fail,
                onRight: Effect.succeed
              })
            : undefined
        const deletable = (event: StoredEvent) =>
          globs.some((glob) => glob.test(event.type)) &&
          (policy.ignoreConsumers || safeOffset === null || event.offset <= safeOffset)
        const doomed = new Set<number>()
        if (policy.maxAgeMillis !== undefined) {
          const cutoff = now - policy.maxAgeMillis
          for (const event of events) {
            if (deletable(event) && DateTime.toEpochMillis(event.ts) < cutoff) doomed.add(event.offset)
          }
        }
        if (policy.maxBytes !== undefined) {
          let kept = 0
          for (let i = events.length - 1; i >= 0; i--) {
            const event = events[i]
            if (event === undefined || !globs.some((glob) => glob.test(event.type))) continue
            kept += payloadBytes(event)
            if (kept > policy.maxBytes && deletable(event)) doomed.add(event.offset)
          }
        }
        if (snapshot !== undefined) {
          const covered = new Map<string, number>()
          for (const event of events) {
            if (event.sessionId !== undefined && snapshot.test(event.type))
              covered.set(event.sessionId, event.offset)
          }
          for (const event of events) {
            const upTo = event.sessionId !== undefined ? covered.get(event.sessionId) : undefined
            if (upTo !== undefined && event.offset < upTo && deletable(event)) doomed.add(event.offset)
          }
        }
        events = events.filter((event) => !doomed.has(event.offset))
        deleted += doomed.size
      }
      return { deleted, safeOffset }
    })

  const stats = Effect.gen(function* () {
    const counted = tally()
    for (const event of events) counted.add(event)
    const types = counted.types()
    return LogStats.make({
      backend: "memory",
      head: yield* SubscriptionRef.get(head),
      events: events.length,
      bytes: types.reduce((sum, t) => sum + t.bytes, 0),
      storedBytes: null,
      types
    })
  })

  return EventLog.of({
    append,
    read,
    readBackward,
    subscribe,
    head: SubscriptionRef.get(head),
    resolve,
    commit,
    committed,
    consumers,
    stats,
    applyRetention
  })
})

/** The in-memory log as a layer (a fresh, empty log each time it is built). */
export const layer: Layer.Layer<EventLog> = Layer.effect(EventLog, make)
