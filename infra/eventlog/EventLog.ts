/**
 * The durable, ordered history of everything that happened. Backends (`PgEventLog`,
 * `MemoryEventLog`) sit beside this module; callers see only `EventLog`.
 */
import * as crypto from "node:crypto"
import { Context, DateTime, Deferred, Effect, type Option, Schedule, Schema, type Stream } from "effect"
import {
  type EventFilter,
  EventLogError,
  EventRejected,
  EventTooLarge,
  InvalidConsumer,
  InvalidGlob,
  type LogStats,
  NewEvent,
  type Offset,
  type StoredEvent,
  TypeStats,
  newEvent
} from "../../rpc/Events.js"
import { toStorable, truncate } from "../../rpc/Text.js"
import { consumerPattern } from "../../rpc/EventsRpcs.js"

/** Checks a consumer name. */
export const checkConsumer = (name: string) =>
  consumerPattern.test(name)
    ? Effect.void
    : Effect.fail(
        new InvalidConsumer({
          consumer: name.slice(0, 120),
          message: `invalid consumer name '${name.slice(0, 120)}': use 1 to 100 letters, digits, '.', '_', ':' or '-'`
        })
      )

/** Checks a commit: a valid name and an offset between 0 and the head. */
export const checkCommit = (consumer: string, offset: number, head: number) =>
  Effect.zipRight(
    checkConsumer(consumer),
    !Number.isSafeInteger(offset) || offset < 0 || offset > head
      ? Effect.fail(
          new InvalidConsumer({
            consumer,
            message: `cannot commit offset ${offset} for '${consumer}': it must be between 0 and the head (${head})`
          })
        )
      : Effect.void
  )

/**
 * A retention policy. Events whose type matches one of `types` are deleted once older than
 * `maxAgeMillis`, once the matching events hold more than `maxBytes` of payload (oldest first),
 * or, with `snapshotType`, once a later event of that type covers their session. Events a named
 * consumer has not passed are kept unless `ignoreConsumers`.
 */
export class RetentionPolicy extends Schema.Class<RetentionPolicy>("RetentionPolicy")({
  types: Schema.NonEmptyArray(Schema.String),
  maxAgeMillis: Schema.optional(Schema.Int.pipe(Schema.positive())),
  maxBytes: Schema.optional(Schema.Int.pipe(Schema.positive())),
  snapshotType: Schema.optional(Schema.String),
  ignoreConsumers: Schema.optionalWith(Schema.Boolean, { default: () => false })
}) {}

/** A named consumer and the last offset it committed. */
export interface ConsumerOffset {
  readonly name: string
  readonly offset: number
}

/** What one retention pass deleted. */
export interface RetentionReport {
  readonly deleted: number
  /** Highest offset retention may delete up to (the slowest named consumer), if any consumer exists. */
  readonly safeOffset: number | null
}

/** Where a subscription starts: an offset (inclusive), the next event, or a point in time. */
export type From =
  | { readonly _tag: "Offset"; readonly offset: number }
  | { readonly _tag: "Latest" }
  | { readonly _tag: "Time"; readonly epochMillis: number }

/** The durable, ordered history of everything that happened. */
export class EventLog extends Context.Tag("vibes/EventLog")<
  EventLog,
  {
    /**
     * Appends a batch; resolves once it is durable, with the offsets it got (in batch order). A
     * batch is stored whole or not at all. `EventTooLarge` and `EventRejected` are permanent
     * (see `isPermanent`): the same batch will never be accepted.
     */
    readonly append: (events: ReadonlyArray<NewEvent>) => Effect.Effect<ReadonlyArray<Offset>, AppendError>
    /** Up to `limit` matching events with offset >= `from`, in offset order. */
    readonly read: (
      from: number,
      filter: EventFilter,
      limit: number
    ) => Effect.Effect<ReadonlyArray<StoredEvent>, EventLogError | InvalidGlob>
    /** Up to `limit` matching events with offset <= `upTo`, newest first. */
    readonly readBackward: (
      upTo: number,
      filter: EventFilter,
      limit: number
    ) => Effect.Effect<ReadonlyArray<StoredEvent>, EventLogError | InvalidGlob>
    /** Everything matching from `from` on, then live, with no gap and no duplicate. */
    readonly subscribe: (
      from: From,
      filter: EventFilter
    ) => Stream.Stream<StoredEvent, EventLogError | InvalidGlob>
    /** Offset of the newest event (0 when the log is empty). */
    readonly head: Effect.Effect<number, EventLogError>
    /** The first offset a subscription from `from` would deliver. */
    readonly resolve: (from: From) => Effect.Effect<number, EventLogError>
    /** Records that `consumer` has processed everything up to `offset` (inclusive). */
    readonly commit: (
      consumer: string,
      offset: number
    ) => Effect.Effect<void, EventLogError | InvalidConsumer>
    /** The last offset `consumer` committed, if it ever did. */
    readonly committed: (
      consumer: string
    ) => Effect.Effect<Option.Option<number>, EventLogError | InvalidConsumer>
    /** Every named consumer and the last offset it committed, by name. */
    readonly consumers: Effect.Effect<ReadonlyArray<ConsumerOffset>, EventLogError>
    /** What the log holds, by type, and what its store takes (reads every event: not for hot paths). */
    readonly stats: Effect.Effect<LogStats, EventLogError>
    /** Applies retention policies once; `now` is the reference time for ages. */
    readonly applyRetention: (
      policies: ReadonlyArray<RetentionPolicy>,
      now: number
    ) => Effect.Effect<RetentionReport, EventLogError | InvalidGlob>
  }
>() {}

/** The retention policies this node applies (reported by `Events.Stats`). */
export class Retention extends Context.Tag("vibes/Retention")<Retention, ReadonlyArray<RetentionPolicy>>() {}

/** An event's payload size: the JSON text of its `data` and its raw `bytes` (what `maxBytes` counts). */
export const payloadBytes = (event: StoredEvent): number =>
  Buffer.byteLength(JSON.stringify(event.data), "utf8") + (event.bytes?.length ?? 0)

/** Per-type statistics of events seen one at a time (for backends that scan in process). */
export const tally = () => {
  const byType = new Map<string, { events: number; bytes: number; oldest: number; newest: number }>()
  return {
    add: (event: StoredEvent) => {
      const ts = DateTime.toEpochMillis(event.ts)
      const entry = byType.get(event.type) ?? { events: 0, bytes: 0, oldest: ts, newest: ts }
      entry.events++
      entry.bytes += payloadBytes(event)
      entry.oldest = Math.min(entry.oldest, ts)
      entry.newest = Math.max(entry.newest, ts)
      byType.set(event.type, entry)
    },
    types: (): ReadonlyArray<TypeStats> =>
      bySize(
        [...byType].map(([type, entry]) =>
          TypeStats.make({
            type,
            events: entry.events,
            bytes: entry.bytes,
            oldest: DateTime.unsafeMake(entry.oldest),
            newest: DateTime.unsafeMake(entry.newest)
          })
        )
      )
  }
}

/** Largest first, then by type. */
export const bySize = (types: ReadonlyArray<TypeStats>): ReadonlyArray<TypeStats> =>
  [...types].sort((a, b) => b.bytes - a.bytes || (a.type < b.type ? -1 : 1))

/** A log whose writer can have the last word, and that last word. */
export interface Closable {
  readonly log: EventLog["Type"]
  /**
   * Appends `event` once every append already under way has finished, as the last event this log
   * writes: later appends fail with `EventLogError` (and so do ones made while it waits).
   */
  readonly close: (event: NewEvent) => Effect.Effect<Offset, AppendError>
}

/** `log`, closable with a last event (a node's `system.stopped`). */
export const closable = (log: EventLog["Type"]): Effect.Effect<Closable> =>
  Effect.map(Deferred.make<void>(), (drained) => {
    let closing = false
    let inFlight = 0
    const closed = (count: number) =>
      new EventLogError({
        message: `the log of this node is closed: it stopped, and ${count === 1 ? "this event was" : `these ${count} events were`} not recorded`
      })
    const append: EventLog["Type"]["append"] = (events) =>
      Effect.suspend(() => {
        if (closing) return Effect.fail(closed(events.length))
        inFlight++
        return log.append(events).pipe(
          Effect.ensuring(
            Effect.suspend(() => {
              inFlight--
              return closing && inFlight === 0 ? Deferred.succeed(drained, undefined) : Effect.void
            })
          )
        )
      })
    const close = (event: NewEvent) =>
      Effect.suspend(() => {
        closing = true
        return inFlight === 0 ? Effect.void : Deferred.await(drained)
      }).pipe(
        Effect.zipRight(log.append([event])),
        Effect.flatMap((offsets) =>
          offsets[0] === undefined ? Effect.fail(closed(1)) : Effect.succeed(offsets[0])
        )
      )
    return { log: { ...log, append }, close }
  })

/** Why an append failed. */
export type AppendError = EventLogError | EventTooLarge | EventRejected

/** Whether an append failed for good (too large, contents refused): retrying the same batch cannot help. */
export const isPermanent = (error: AppendError): error is EventTooLarge | EventRejected =>
  error._tag === "EventTooLarge" || error._tag === "EventRejected"

/** The marker recorded in place of an event the log refused for good, with the refused event's ids. */
export const droppedMarker = (event: NewEvent, error: EventTooLarge | EventRejected): NewEvent =>
  newEvent(
    "event.dropped",
    { type: event.type, reason: error._tag, message: truncate(toStorable(error.message), 1000) },
    {
      source: event.source,
      ...(event.sessionId !== undefined ? { sessionId: event.sessionId } : {}),
      ...(event.jobId !== undefined ? { jobId: event.jobId } : {}),
      tenantId: event.tenantId,
      ...(event.correlationId !== undefined ? { correlationId: event.correlationId } : {}),
      severity: "error"
    }
  )

/**
 * Appends `events`, retrying transient failures on `retry`; never retries a permanent one. When
 * the batch is refused for good, each event is appended on its own, and each one that is refused
 * is replaced by an `event.dropped` marker (severity error) saying which and why, and logged once;
 * so everything recordable is recorded, in order. Fails only when a transient failure outlasts
 * `retry`.
 */
export const appendOrMark = (
  log: EventLog["Type"],
  events: ReadonlyArray<NewEvent>,
  retry: Schedule.Schedule<unknown, AppendError>
): Effect.Effect<void, EventLogError> => {
  const attempt = (batch: ReadonlyArray<NewEvent>) =>
    log.append(batch).pipe(Effect.retry({ schedule: retry, while: (error) => !isPermanent(error) }))
  const go = (batch: ReadonlyArray<NewEvent>): Effect.Effect<void, EventLogError> =>
    attempt(batch).pipe(
      Effect.asVoid,
      Effect.catchIf(isPermanent, (error) => {
        const [only] = batch
        if (batch.length > 1 || only === undefined)
          return Effect.forEach(batch, (event) => go([event]), { discard: true })
        return Effect.logError(
          `dropped a ${only.type} event that the log refuses for good: ${error.message}`
        ).pipe(
          Effect.annotateLogs({
            type: only.type,
            ...(only.sessionId !== undefined ? { sessionId: only.sessionId } : {}),
            ...(only.jobId !== undefined ? { jobId: only.jobId } : {})
          }),
          Effect.zipRight(attempt([droppedMarker(only, error)])),
          Effect.catchIf(isPermanent, (marker) =>
            Effect.logError(`could not record the event.dropped marker either: ${marker.message}`)
          ),
          Effect.asVoid
        )
      }),
      Effect.mapError((error) =>
        error._tag === "EventLogError" ? error : new EventLogError({ message: error.message })
      )
    )
  return go(events)
}

/** A time-ordered UUID (version 7): 48 bits of milliseconds, then random bits (from a cached pool). */
export const uuidv7 = (now: number = Date.now()): string => {
  const time = Math.max(0, Math.floor(now)).toString(16).padStart(12, "0").slice(-12)
  // randomUUID is a v4: "xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx"; keep its variant and random tail.
  return `${time.slice(0, 8)}-${time.slice(8, 12)}-7${crypto.randomUUID().slice(15)}`
}

export { EventLogError, EventRejected, EventTooLarge, InvalidConsumer, InvalidGlob }
