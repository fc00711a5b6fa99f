/**
 * The `Events` RPC group: read the log, follow it live, and keep a named consumer's place.
 */
import { Schema } from "effect"
import * as Rpc from "@effect/rpc/Rpc"
import * as RpcGroup from "@effect/rpc/RpcGroup"
import { AuthMiddleware } from "./Auth.js"
import {
  EventFilter,
  EventLogError,
  EventLogStats,
  InvalidConsumer,
  InvalidGlob,
  StoredEvent,
  SubscriberLagged
} from "./Events.js"

/** Consumer names: 1 to 100 letters, digits, `.`, `_`, `:` or `-`, safe in URLs and logs. */
export const consumerPattern = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$/

/** A consumer name. */
export const ConsumerName = Schema.String.pipe(
  Schema.pattern(consumerPattern, {
    message: () => "a consumer name is 1 to 100 letters, digits, '.', '_', ':' or '-'"
  })
)

/** An offset: a whole number the log (a Postgres bigint) and JavaScript both hold exactly. */
const OffsetInput = Schema.NonNegativeInt.pipe(Schema.lessThanOrEqualTo(Number.MAX_SAFE_INTEGER))

/**
 * Where a subscription starts: an offset (inclusive), the next event, the first event at or
 * after a time, or just after a named consumer's committed offset (from the start if it has none).
 */
export const Start = Schema.Union(
  Schema.TaggedStruct("Offset", { offset: OffsetInput }),
  Schema.TaggedStruct("Latest", {}),
  // The latest time a JavaScript Date holds.
  Schema.TaggedStruct("Time", { epochMillis: Schema.NonNegativeInt.pipe(Schema.lessThanOrEqualTo(8.64e15)) }),
  Schema.TaggedStruct("Consumer", { name: ConsumerName })
)
export type Start = typeof Start.Type

/** The largest page `Events.Read` returns. */
export const maxReadLimit = 10_000

/** RPCs over the event log. */
export class EventsRpcs extends RpcGroup.make(
  Rpc.make("Read", {
    payload: {
      from: OffsetInput,
      filter: EventFilter,
      limit: Schema.Int.pipe(Schema.between(1, maxReadLimit))
    },
    success: Schema.Array(StoredEvent),
    error: Schema.Union(InvalidGlob, EventLogError)
  }),
  Rpc.make("Subscribe", {
    payload: { from: Start, filter: EventFilter },
    success: StoredEvent,
    error: Schema.Union(InvalidGlob, EventLogError, InvalidConsumer, SubscriberLagged),
    stream: true
  }),
  Rpc.make("Head", { success: Schema.Struct({ head: Schema.NonNegativeInt }), error: EventLogError }),
  Rpc.make("Commit", {
    payload: { consumer: ConsumerName, offset: OffsetInput },
    error: Schema.Union(InvalidConsumer, EventLogError)
  }),
  Rpc.make("Stats", { success: EventLogStats, error: EventLogError }),
  Rpc.make("Committed", {
    payload: { consumer: ConsumerName },
    success: Schema.Struct({ offset: Schema.NullOr(Schema.NonNegativeInt) }),
    error: Schema.Union(InvalidConsumer, EventLogError)
  })
)
  .prefix("Events.")
  .middleware(AuthMiddleware) {}
