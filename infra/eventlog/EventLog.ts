/**
 * The durable, ordered history of everything that happened. Backends (`PgEventLog`,
 * `MemoryEventLog`) sit beside this module; callers see only `EventLog`.
 */
import * as crypto from "node:crypto"
import { Context, Schema, type Effect, type Stream } from "effect"
import {
  type EventFilter,
  InvalidGlob,
  type NewEvent,
  type Offset,
  type StoredEvent
} from "../../rpc/Events.js"

/** Writing to or reading from the log failed (after retries, for writes). */
export class EventLogError extends Schema.TaggedError<EventLogError>()("EventLogError", {
  message: Schema.String
}) {}

/** An event's payload is larger than the log accepts; nothing was stored. */
export class EventTooLarge extends Schema.TaggedError<EventTooLarge>()("EventTooLarge", {
  type: Schema.String,
  bytes: Schema.Int,
  limit: Schema.Int,
  message: Schema.String
}) {}

/** Where a subscription starts: an offset (inclusive), the next event, or a point in time. */
export type From =
  | { readonly _tag: "Offset"; readonly offset: number }
  | { readonly _tag: "Latest" }
  | { readonly _tag: "Time"; readonly epochMillis: number }

/** The durable, ordered history of everything that happened. */
export class EventLog extends Context.Tag("vibes/EventLog")<
  EventLog,
  {
    /** Appends a batch; resolves once it is durable, with the offsets it got (in batch order). */
    readonly append: (
      events: ReadonlyArray<NewEvent>
    ) => Effect.Effect<ReadonlyArray<Offset>, EventLogError | EventTooLarge>
    /** Up to `limit` matching events with offset >= `from`, in offset order. */
    readonly read: (
      from: number,
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
  }
>() {}

/** A time-ordered UUID (version 7). */
export const uuidv7 = (now: number = Date.now()): string => {
  const bytes = crypto.randomBytes(16)
  bytes.writeUIntBE(now, 0, 6)
  bytes[6] = ((bytes[6] ?? 0) & 0x0f) | 0x70
  bytes[8] = ((bytes[8] ?? 0) & 0x3f) | 0x80
  const hex = bytes.toString("hex")
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`
}

export { InvalidGlob }
