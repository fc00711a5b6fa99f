/**
 * Session recordings: a session's output history exported as an asciicast v2 file
 * (asciinema's format) into the node's storage, and downloaded from there.
 */
import { Schema } from "effect"
import * as Rpc from "@effect/rpc/Rpc"
import * as RpcGroup from "@effect/rpc/RpcGroup"
import { StorageUnavailable } from "./Artifacts.js"
import { AuthMiddleware } from "./Auth.js"
import { SessionId, SessionNotFound, SessionUnavailable } from "./Sessions.js"

/** A recording's name: `<UTC time>-<random>.cast`, as `Export` makes it. */
export const RecordingName = Schema.String.pipe(
  Schema.pattern(/^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}\.cast$/, {
    message: () => "a recording name looks like 20261207T175501Z-0a1b2c3d.cast"
  })
)

/** One stored recording. */
export class RecordingInfo extends Schema.Class<RecordingInfo>("RecordingInfo")({
  sessionId: Schema.String,
  name: Schema.String,
  size: Schema.Number,
  /** Hex SHA-256 of the file, computed as it was stored. */
  sha256: Schema.String,
  createdAt: Schema.DateTimeUtc
}) {}

/** The session has no recording of that name. */
export class RecordingNotFound extends Schema.TaggedError<RecordingNotFound>()("RecordingNotFound", {
  sessionId: Schema.String,
  name: Schema.String,
  message: Schema.String
}) {}

/** A request the server cannot act on as asked (a time range that ends before it starts). */
export class InvalidRecordingRequest extends Schema.TaggedError<InvalidRecordingRequest>()(
  "InvalidRecordingRequest",
  { field: Schema.String, message: Schema.String }
) {}

/** One recording of a session, as a listing shows it. */
export class RecordingEntry extends Schema.Class<RecordingEntry>("RecordingEntry")({
  name: Schema.String,
  size: Schema.Number,
  createdAt: Schema.DateTimeUtc
}) {}

export const RecordingError = Schema.Union(
  SessionNotFound,
  SessionUnavailable,
  RecordingNotFound,
  StorageUnavailable,
  InvalidRecordingRequest
)
export type RecordingError = typeof RecordingError.Type

/** Everything a client can ask of recordings. */
export class RecordingsRpcs extends RpcGroup.make(
  /**
   * Writes the session's history as it stands now to storage, or the part of it between `from`
   * and `to` (either may be left out); the new recording.
   */
  Rpc.make("Export", {
    payload: {
      sessionId: SessionId,
      from: Schema.optional(Schema.DateTimeUtc),
      to: Schema.optional(Schema.DateTimeUtc)
    },
    success: RecordingInfo,
    error: RecordingError
  }),
  /** The session's recordings, oldest first. */
  Rpc.make("List", {
    payload: { sessionId: SessionId },
    success: Schema.Array(RecordingEntry),
    error: RecordingError
  }),
  Rpc.make("Download", {
    payload: { sessionId: SessionId, name: RecordingName },
    success: Schema.Uint8ArrayFromSelf,
    error: RecordingError,
    stream: true
  })
)
  .prefix("Recordings.")
  .middleware(AuthMiddleware) {}
