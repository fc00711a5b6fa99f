/**
 * Terminal sessions: the models, errors and the `Sessions` RPC group every client uses.
 *
 * A session is a program in a pseudo-terminal on a server. Clients attach to it (several at
 * once, some read-only), send input, resize it, and can rebuild its screen at any past point.
 * Output bytes carry sequence numbers (the count of bytes the program wrote before them), so a
 * client that reconnects resumes exactly where it stopped.
 */
import { Effect, Option, Schema } from "effect"
import * as Rpc from "@effect/rpc/Rpc"
import * as RpcGroup from "@effect/rpc/RpcGroup"
import { AuthMiddleware } from "./Auth.js"
import { BoundedText, check, checkExec, ExecString, PathText } from "./Text.js"
import { WorkspaceError } from "./Workspaces.js"

/**
 * A session's id: the machine that holds its PTY, `_`, and a UUIDv7, like
 * `build-1_0193d9b4-7c1e-7a2b-9c3d-4e5f60718293`. (A bare UUID is a session made before clusters.)
 */
export const SessionId = Schema.String.pipe(
  Schema.pattern(/^(?:[a-z0-9-]{1,40}_)?[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/, {
    message: () =>
      "a session id is a machine name, '_' and a UUID, like build-1_0193d9b4-7c1e-7a2b-9c3d-4e5f60718293"
  })
)
export type SessionId = typeof SessionId.Type

/** The largest terminal accepted, in columns and in rows. */
export const maxDimension = 1000

/** The largest `Input` payload accepted, in bytes (it fits the 1 MiB frame limit of `/rpc` with room to spare). */
export const maxInputBytes = 512 * 1024

/** What happens when the program ends or its machine is lost. */
export const RestartPolicy = Schema.Literal("never", "on-failure", "always")
export type RestartPolicy = typeof RestartPolicy.Type

/**
 * Where a session is in its life. `running`: the program runs; `exited`: it ended by itself or by a
 * signal; `closed`: a client closed it; `lost`: its PTY host died with the program.
 */
export const SessionState = Schema.Literal("running", "exited", "closed", "lost")
export type SessionState = typeof SessionState.Type

/** Signals a client may send. */
export const SessionSignal = Schema.Literal("INT", "TERM", "HUP", "KILL")
export type SessionSignal = typeof SessionSignal.Type

/** The longest session name accepted, in characters. */
export const maxNameLength = 200

/**
 * A new session. Every field has a default: the user's login shell in their home, 80x24. The
 * schema gives the shape; what the text may contain and how large it may be is checked by the
 * server (`checkCreateSession`), so that a refusal is an `InvalidSessionRequest` naming the field.
 */
export class CreateSession extends Schema.Class<CreateSession>("CreateSession")({
  /** The program; the user's shell when omitted. */
  command: Schema.optional(Schema.String),
  args: Schema.optionalWith(Schema.Array(Schema.String), { default: () => [] }),
  /** Working directory; the user's home when omitted. */
  cwd: Schema.optional(Schema.String),
  /** Added to (and overriding) the server's environment. */
  env: Schema.optionalWith(Schema.Record({ key: Schema.String, value: Schema.String }), {
    default: () => ({})
  }),
  /** The client's terminal size: the PTY starts at this size. */
  cols: Schema.optionalWith(Schema.Int, { default: () => 80 }),
  rows: Schema.optionalWith(Schema.Int, { default: () => 24 }),
  name: Schema.optional(Schema.String),
  restartPolicy: Schema.optionalWith(RestartPolicy, { default: () => "never" as const }),
  /** In a cluster: the node whose machine runs it. Omitted: the node with the fewest sessions. */
  node: Schema.optional(Schema.String),
  /**
   * A workspace: the session runs in a worktree of its own on `branch` (`cwd` is then refused),
   * made by the node that answers the call, whose machine runs the session.
   */
  workspace: Schema.optional(Schema.String),
  /** With `workspace`: the branch; made from `from` (default: the workspace's default branch) when new. */
  branch: Schema.optional(Schema.String),
  /** With `workspace`: what a new branch starts from (a branch, tag or commit). */
  from: Schema.optional(Schema.String)
}) {}

/** A session as the registry knows it. */
export class SessionInfo extends Schema.Class<SessionInfo>("SessionInfo")({
  id: SessionId,
  name: Schema.NullOr(Schema.String),
  command: Schema.String,
  args: Schema.Array(Schema.String),
  cwd: Schema.String,
  cols: Schema.Int,
  rows: Schema.Int,
  state: SessionState,
  restartPolicy: RestartPolicy,
  pid: Schema.NullOr(Schema.Int),
  nodeId: Schema.String,
  createdAt: Schema.DateTimeUtc,
  exitedAt: Schema.NullOr(Schema.DateTimeUtc),
  exitCode: Schema.NullOr(Schema.Int),
  exitSignal: Schema.NullOr(Schema.String),
  attachedClients: Schema.Int,
  lastActivityAt: Schema.DateTimeUtc,
  /** Bytes the program has written so far (`List`: as of the session's last idle point). */
  outputBytes: Schema.Int,
  restarts: Schema.Int,
  /** Set when the session's machine was lost and the session was started again as this one. */
  replacedBy: Schema.optionalWith(Schema.NullOr(Schema.String), { default: () => null })
}) {}

/** A screen: plain text and the VT sequence that redraws it (colours, cursor, modes, scrollback). */
export class Screen extends Schema.Class<Screen>("Screen")({
  cols: Schema.Int,
  rows: Schema.Int,
  /** The visible screen as text, one line per row, trailing blanks trimmed. */
  text: Schema.String,
  /** Write this to a terminal of `cols`x`rows` to get the same screen. */
  vt: Schema.String,
  cursor: Schema.Struct({ x: Schema.Int, y: Schema.Int }),
  altScreen: Schema.Boolean,
  /** Sequence number of the first byte the screen does not include yet. */
  seq: Schema.Int
}) {}

/** The first element of an attach stream: who the client is, and the screen to start from. */
export class Attached extends Schema.TaggedClass<Attached>()("Attached", {
  attachmentId: Schema.String,
  readOnly: Schema.Boolean,
  info: SessionInfo,
  /** Absent when the client resumed from a `from` the session still had. */
  screen: Schema.NullOr(Screen),
  /** Sequence number of the next `Output` byte. */
  seq: Schema.Int
}) {}

/** Bytes of output; `seq` is the sequence number of `data[0]`. */
export class Output extends Schema.TaggedClass<Output>()("Output", {
  seq: Schema.Int,
  data: Schema.Uint8ArrayFromSelf
}) {}

/** The terminal changed size. */
export class Resized extends Schema.TaggedClass<Resized>()("Resized", {
  cols: Schema.Int,
  rows: Schema.Int
}) {}

/**
 * Output was lost before the server could record it (the PTY host's ring overflowed while no
 * server read it); the screen that follows replaces the client's.
 */
export class Reset extends Schema.TaggedClass<Reset>()("Reset", { screen: Screen }) {}

/** The program ended; the last element of an attach stream. */
export class Ended extends Schema.TaggedClass<Ended>()("Ended", {
  state: SessionState,
  exitCode: Schema.NullOr(Schema.Int),
  exitSignal: Schema.NullOr(Schema.String)
}) {}

/** An element of an attach stream. */
export const AttachEvent = Schema.Union(Attached, Output, Resized, Reset, Ended)
export type AttachEvent = typeof AttachEvent.Type

/**
 * A compact live view of a running session, for lists and thumbnails: its visible screen as text,
 * and whether it is waiting (quiet since its last output).
 */
export class SessionPreview extends Schema.Class<SessionPreview>("SessionPreview")({
  sessionId: Schema.String,
  /** Sequence number of the first output byte the preview does not include yet. */
  seq: Schema.Int,
  cols: Schema.Int,
  rows: Schema.Int,
  /** The visible screen, one line per row, trailing blanks trimmed. */
  lines: Schema.Array(Schema.String),
  cursor: Schema.Struct({ x: Schema.Int, y: Schema.Int }),
  /** Quiet for the idle time since its last output: most likely waiting for input. */
  idle: Schema.Boolean
}) {}

/** How often a previews stream may send a session's preview (in milliseconds, 250 to 60,000). */
export const PreviewInterval = Schema.Int.pipe(
  Schema.between(250, 60_000, {
    message: () => "everyMs: must be a whole number of milliseconds from 250 to 60000"
  })
)

/** What a previews stream is asked for. */
export class PreviewsRequest extends Schema.Class<PreviewsRequest>("PreviewsRequest")({
  everyMs: Schema.optionalWith(PreviewInterval, { default: () => 1000 })
}) {}

/** A point in a session's history: an event offset or a time. */
export const HistoryPoint = Schema.Union(
  Schema.TaggedStruct("Offset", { offset: Schema.Int }),
  Schema.TaggedStruct("Time", { at: Schema.DateTimeUtc })
)
export type HistoryPoint = typeof HistoryPoint.Type

// Errors ------------------------------------------------------------------------------------

/** No session with that id. */
export class SessionNotFound extends Schema.TaggedError<SessionNotFound>()("SessionNotFound", {
  sessionId: Schema.String,
  message: Schema.String
}) {}

/** A request field is out of range or malformed; nothing was changed. */
export class InvalidSessionRequest extends Schema.TaggedError<InvalidSessionRequest>()(
  "InvalidSessionRequest",
  { field: Schema.String, message: Schema.String }
) {}

/** The program could not be started (missing cwd, command not found, …); nothing was left behind. */
export class SpawnFailed extends Schema.TaggedError<SpawnFailed>()("SpawnFailed", {
  reason: Schema.Literal("cwd", "command", "limit", "other"),
  message: Schema.String
}) {}

/** The session's program is not running (it exited, was closed or lost). */
export class SessionNotRunning extends Schema.TaggedError<SessionNotRunning>()("SessionNotRunning", {
  sessionId: Schema.String,
  state: SessionState,
  message: Schema.String
}) {}

/** The attachment is read-only: it may watch, not type or resize. */
export class ReadOnlyAttachment extends Schema.TaggedError<ReadOnlyAttachment>()("ReadOnlyAttachment", {
  attachmentId: Schema.String,
  message: Schema.String
}) {}

/** The session's terminal is unreachable right now (its PTY host is restarting); retry. */
export class SessionUnavailable extends Schema.TaggedError<SessionUnavailable>()("SessionUnavailable", {
  sessionId: Schema.String,
  message: Schema.String
}) {}

const CreateSessionRules = Schema.Struct({
  command: Schema.optional(ExecString),
  args: Schema.Array(ExecString),
  cwd: Schema.optional(PathText),
  env: Schema.Record({ key: Schema.String, value: ExecString }),
  name: Schema.optional(BoundedText(maxNameLength)),
  node: Schema.optional(
    BoundedText(200).pipe(Schema.filter((node) => node !== "" || "must not be empty when given"))
  ),
  workspace: Schema.optional(BoundedText(200)),
  branch: Schema.optional(BoundedText(250)),
  from: Schema.optional(BoundedText(250))
})

/**
 * Checks what a `Create` request's schema cannot: every string is storable and short enough for
 * exec, and command, arguments, environment and cwd together stay within `Text.maxExecBytes`
 * (so the program can start and its `session.created` event fits the log).
 */
export const checkCreateSession = (request: CreateSession): Effect.Effect<void, InvalidSessionRequest> => {
  const issue = Option.orElse(check(CreateSessionRules, request), () => checkExec(request))
  return Option.isSome(issue) ? Effect.fail(new InvalidSessionRequest(issue.value)) : Effect.void
}

/** Every error a session RPC can fail with. */
export const SessionError = Schema.Union(
  SessionNotFound,
  InvalidSessionRequest,
  SpawnFailed,
  SessionNotRunning,
  ReadOnlyAttachment,
  SessionUnavailable
)
export type SessionError = typeof SessionError.Type

// RPCs --------------------------------------------------------------------------------------

const ById = { sessionId: Schema.String }

/** How a client attaches. */
export class AttachSession extends Schema.Class<AttachSession>("AttachSession")({
  sessionId: Schema.String,
  /** The client's size; the PTY follows the size of the client that wrote most recently. */
  cols: Schema.optional(Schema.Int),
  rows: Schema.optional(Schema.Int),
  readOnly: Schema.optionalWith(Schema.Boolean, { default: () => false }),
  /** Resume from this byte sequence number instead of starting from a screen. */
  from: Schema.optional(Schema.Int),
  /** Scrollback lines in the starting screen (default 1000). */
  scrollback: Schema.optional(Schema.Int)
}) {}

/** The `Sessions` RPC group, at `/rpc`. */
export class SessionsRpcs extends RpcGroup.make(
  Rpc.make("Create", {
    payload: CreateSession,
    success: SessionInfo,
    error: Schema.Union(SessionError, WorkspaceError)
  }),
  Rpc.make("Input", {
    payload: { ...ById, data: Schema.Uint8ArrayFromSelf, attachmentId: Schema.optional(Schema.String) },
    error: SessionError
  }),
  Rpc.make("Resize", {
    payload: {
      ...ById,
      cols: Schema.Int,
      rows: Schema.Int,
      attachmentId: Schema.optional(Schema.String)
    },
    error: SessionError
  }),
  Rpc.make("Signal", { payload: { ...ById, signal: SessionSignal }, error: SessionError }),
  Rpc.make("Close", { payload: ById, success: SessionInfo, error: SessionError }),
  Rpc.make("Attach", { payload: AttachSession, success: AttachEvent, error: SessionError, stream: true }),
  Rpc.make("Snapshot", { payload: ById, success: Screen, error: SessionError }),
  /**
   * Previews of every running session: each one's screen when it changes (at most one per session
   * every `everyMs`, default 1000), and when it goes quiet or busy.
   */
  Rpc.make("Previews", {
    payload: PreviewsRequest,
    success: SessionPreview,
    error: SessionError,
    stream: true
  }),
  Rpc.make("ScreenAt", { payload: { ...ById, at: HistoryPoint }, success: Screen, error: SessionError }),
  Rpc.make("List", {
    payload: { state: Schema.optional(SessionState) },
    success: Schema.Array(SessionInfo),
    error: SessionError
  }),
  Rpc.make("Get", { payload: ById, success: SessionInfo, error: SessionError })
)
  .prefix("Sessions.")
  .middleware(AuthMiddleware) {}
