/**
 * Following the event log from a typed client, resuming by itself when the server cuts the
 * subscription off for lagging.
 */
import { Stream } from "effect"
import type { RpcClientError } from "@effect/rpc/RpcClientError"
import type { Unauthorized } from "./Auth.js"
import type { Client } from "./Client.js"
import type { EventFilter, EventLogError, InvalidConsumer, InvalidGlob, StoredEvent } from "./Events.js"
import type { Start } from "./EventsRpcs.js"

/** Why following ended. */
export type FollowError = InvalidGlob | EventLogError | InvalidConsumer | Unauthorized | RpcClientError

/**
 * Everything matching `filter` from `from` on, then live. When the client falls behind and the
 * server cuts it off, it subscribes again just after the last event it received, so the stream
 * has no gap and no duplicate; other errors end it.
 */
export const follow = (
  client: Client,
  from: Start,
  filter: EventFilter
): Stream.Stream<StoredEvent, FollowError> => {
  const subscribe = (start: Start): Stream.Stream<StoredEvent, FollowError> =>
    client.Events.Subscribe({ from: start, filter }).pipe(
      Stream.catchTag("SubscriberLagged", (lagged) =>
        subscribe({ _tag: "Offset", offset: lagged.lastOffset + 1 })
      )
    )
  return subscribe(from)
}
