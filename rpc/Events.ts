/**
 * Events: the envelope every state change is written in, the typed payloads of the event types
 * vibes knows, and the filters readers select with.
 */
import { Either, Schema } from "effect"
import { ProxyErrorKind } from "./Proxy.js"
import { StorableText } from "./Text.js"

/** Position of an event in the log: assigned by the log, strictly increasing, without gaps. */
export const Offset = Schema.Int.pipe(Schema.nonNegative(), Schema.brand("Offset"))
export type Offset = typeof Offset.Type

/** A dotted `area.verb` event type, e.g. `session.created`. */
export const EventType = Schema.String.pipe(
  Schema.pattern(/^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$/, {
    message: () => "an event type is dotted lower-case words, like 'session.created'"
  }),
  Schema.maxLength(100)
)

/** How much an event matters. */
export const Severity = Schema.Literal("info", "warn", "error", "critical")
export type Severity = typeof Severity.Type

/** Which node and component wrote an event. */
export const EventSource = Schema.Struct({
  nodeId: Schema.String,
  component: Schema.String
})

const Id = StorableText.pipe(Schema.minLength(1), Schema.maxLength(200))

/** The largest `data` payload accepted, in bytes of its JSON. */
export const maxDataBytes = 256 * 1024

/**
 * The largest raw `bytes` payload accepted: with the largest `data`, an event still fits in a
 * NATS message of the default 1 MiB limit.
 */
export const maxEventBytes = 512 * 1024

/**
 * An event's raw binary payload (a session's output bytes): stored as bytes, never as text, and
 * base64 only where an event is written as JSON (SSE, the CLI's `--json`).
 */
export const EventBytes = Schema.Uint8ArrayFromBase64

/** An event as a writer hands it to the log. */
export class NewEvent extends Schema.Class<NewEvent>("NewEvent")({
  type: EventType,
  source: EventSource,
  sessionId: Schema.optional(Id),
  jobId: Schema.optional(Id),
  tenantId: Schema.optionalWith(Id, { default: () => "default" }),
  severity: Schema.optionalWith(Severity, { default: () => "info" as const }),
  correlationId: Schema.optional(Id),
  data: Schema.Unknown,
  bytes: Schema.optional(EventBytes)
}) {}

/** An event as the log stored it. */
export class StoredEvent extends Schema.Class<StoredEvent>("StoredEvent")({
  offset: Offset,
  id: Schema.UUID,
  type: EventType,
  ts: Schema.DateTimeUtc,
  source: EventSource,
  sessionId: Schema.optional(Id),
  jobId: Schema.optional(Id),
  tenantId: Id,
  severity: Severity,
  correlationId: Schema.optional(Id),
  data: Schema.Unknown,
  bytes: Schema.optional(EventBytes)
}) {}

// Typed payloads ---------------------------------------------------------------------------

/** Payload schemas of the event types vibes writes. Unknown types stay generic. */
export const payloads = {
  "system.started": Schema.Struct({ version: Schema.String, database: Schema.String }),
  "system.stopped": Schema.Struct({ reason: Schema.String }),
  "system.alert": Schema.Struct({
    component: Schema.String,
    message: Schema.String,
    /** What is wrong, for alerts that watch a condition: `disk_low`, `consumer_lag`, `restarts`. */
    condition: Schema.optional(Schema.String),
    /** The condition no longer holds (the alert that raised it is over). */
    resolved: Schema.optional(Schema.Boolean)
  }),
  /** A browser logged in; `login` is a non-secret reference to the login (not its cookie). */
  "auth.login": Schema.Struct({
    clientAddress: Schema.String,
    login: Schema.String,
    userAgent: Schema.NullOr(Schema.String)
  }),
  /**
   * Credentials were refused. `lockedForMillis`: the lockout this failure started (0: none);
   * `refusedWhileLocked`: attempts refused unchecked during the lockout before it.
   */
  "auth.login_failed": Schema.Struct({
    clientAddress: Schema.String,
    via: Schema.String,
    failures: Schema.Int,
    lockedForMillis: Schema.Int,
    refusedWhileLocked: Schema.Int
  }),
  /** A browser logged out; every id of the login is revoked. */
  "auth.logout": Schema.Struct({ clientAddress: Schema.String, login: Schema.String }),
  /**
   * An event could not be recorded for good (too large, or contents the log refuses): this marker
   * stands in its place, with the envelope ids of the event it replaces.
   */
  "event.dropped": Schema.Struct({
    type: Schema.String,
    reason: Schema.Literal("EventTooLarge", "EventRejected"),
    message: Schema.String
  }),
  "client.connected": Schema.Struct({ clientId: Schema.String, via: Schema.String }),
  "client.disconnected": Schema.Struct({ clientId: Schema.String }),
  "client.called": Schema.Struct({ rpc: Schema.String, clientId: Schema.optional(Schema.String) }),
  "session.created": Schema.Struct({
    command: Schema.String,
    args: Schema.Array(Schema.String),
    cwd: Schema.String,
    cols: Schema.Int,
    rows: Schema.Int,
    name: Schema.optional(Schema.String)
  }),
  /** Output starting at session sequence number `seq`; the bytes are the event's `bytes`. */
  "session.output": Schema.Struct({ seq: Schema.Int }),
  "session.snapshot": Schema.Struct({
    seq: Schema.Int,
    cols: Schema.Int,
    rows: Schema.Int,
    screen: Schema.String
  }),
  "session.resized": Schema.Struct({ cols: Schema.Int, rows: Schema.Int }),
  "session.exited": Schema.Struct({
    exitCode: Schema.NullOr(Schema.Int),
    signal: Schema.NullOr(Schema.String),
    /** Why the program could not be started again (a restart that failed). */
    error: Schema.optional(Schema.String)
  }),
  "session.started": Schema.Struct({ pid: Schema.Int, ptyId: Schema.String, restarts: Schema.Int }),
  "session.attached": Schema.Struct({ attachmentId: Schema.String, readOnly: Schema.Boolean }),
  "session.detached": Schema.Struct({ attachmentId: Schema.String }),
  "session.idle": Schema.Struct({ seq: Schema.Int }),
  "session.active": Schema.Struct({}),
  "session.bell": Schema.Struct({}),
  "session.closed": Schema.Struct({}),
  "session.lost": Schema.Struct({
    exitCode: Schema.NullOr(Schema.Int),
    signal: Schema.NullOr(Schema.String),
    /** Why, when it was not the program's own end (its node was lost). */
    reason: Schema.optional(Schema.String)
  }),
  "session.gap": Schema.Struct({ from: Schema.Int, to: Schema.Int, bytes: Schema.Int }),
  /** The session's machine was lost; it was started again as `replacedBy` on `machine`. */
  "session.replaced": Schema.Struct({ replacedBy: Schema.String, machine: Schema.String }),
  "job.submitted": Schema.Struct({
    jobId: Schema.String,
    command: Schema.String,
    strategy: Schema.String,
    priority: Schema.Int
  }),
  "job.started": Schema.Struct({ jobId: Schema.String, attempt: Schema.Int, pid: Schema.NullOr(Schema.Int) }),
  "job.log": Schema.Struct({
    jobId: Schema.String,
    seq: Schema.Int,
    stream: Schema.Literal("stdout", "stderr", "system"),
    chunk: Schema.String,
    ts: Schema.String
  }),
  "job.progress": Schema.Struct({ jobId: Schema.String, percent: Schema.Number }),
  "job.retrying": Schema.Struct({
    jobId: Schema.String,
    attempt: Schema.Int,
    delayMillis: Schema.Number,
    reason: Schema.String
  }),
  /** A file the job left was kept as an artifact (`name`: its path under the job's directory). */
  "job.artifact": Schema.Struct({
    jobId: Schema.String,
    name: Schema.String,
    size: Schema.Number,
    sha256: Schema.String
  }),
  "job.done": Schema.Struct({
    jobId: Schema.String,
    status: Schema.String,
    exitCode: Schema.NullOr(Schema.Int),
    signal: Schema.NullOr(Schema.String),
    attempts: Schema.Int
  }),
  "workspace.added": Schema.Struct({
    workspace: Schema.String,
    path: Schema.String,
    defaultBranch: Schema.String
  }),
  "workspace.removed": Schema.Struct({ workspace: Schema.String, path: Schema.String }),
  /**
   * A commit appeared on a branch of a workspace's repository, whoever made it (one event a commit,
   * oldest first, at most 100 an update). The envelope names the session or job whose worktree has
   * the branch, when vibes made it.
   */
  "git.commit": Schema.Struct({
    workspace: Schema.String,
    branch: Schema.String,
    commit: Schema.String,
    parents: Schema.Array(Schema.String),
    author: Schema.String,
    email: Schema.String,
    subject: Schema.String
  }),
  "git.branch_created": Schema.Struct({
    workspace: Schema.String,
    branch: Schema.String,
    commit: Schema.String
  }),
  "git.branch_deleted": Schema.Struct({
    workspace: Schema.String,
    branch: Schema.String,
    commit: Schema.String
  }),
  /** A branch moved to a commit that does not descend from where it was (a reset, a rebase). */
  "git.branch_moved": Schema.Struct({
    workspace: Schema.String,
    branch: Schema.String,
    from: Schema.String,
    to: Schema.String
  }),
  /** A worktree (or the main checkout) switched branches; null is a detached HEAD. */
  "git.branch_switched": Schema.Struct({
    workspace: Schema.String,
    path: Schema.String,
    from: Schema.NullOr(Schema.String),
    to: Schema.NullOr(Schema.String)
  }),
  "git.worktree_added": Schema.Struct({
    workspace: Schema.String,
    path: Schema.String,
    branch: Schema.NullOr(Schema.String)
  }),
  "git.worktree_removed": Schema.Struct({
    workspace: Schema.String,
    path: Schema.String,
    branch: Schema.NullOr(Schema.String)
  }),
  /** vibes made a worktree for a session or job (the envelope names it). */
  "workspace.worktree_created": Schema.Struct({
    workspace: Schema.String,
    branch: Schema.String,
    path: Schema.String,
    newBranch: Schema.Boolean
  }),
  /**
   * A session's or job's worktree was closed by its workspace's policy (or by hand): `kept` or
   * `removed`; `stashed` when its uncommitted changes were saved with `git stash` first.
   */
  "workspace.worktree_closed": Schema.Struct({
    workspace: Schema.String,
    branch: Schema.String,
    path: Schema.String,
    state: Schema.Literal("kept", "removed"),
    stashed: Schema.Boolean
  }),
  /** A provider of the AI proxy failed `failures` times in a row: its requests are refused for `openMillis`. */
  "proxy.circuit_opened": Schema.Struct({
    provider: Schema.String,
    failures: Schema.Int,
    openMillis: Schema.Int
  }),
  /** A webhook endpoint was added (its URL only as far as its host: the path may hold a token). */
  "notify.endpoint_added": Schema.Struct({
    endpoint: Schema.String,
    target: Schema.String,
    format: Schema.String
  }),
  "notify.endpoint_removed": Schema.Struct({ endpoint: Schema.String }),
  /** A delivery failed every attempt and was set aside; `vibes notify redeliver` sends it again. */
  "notify.dead_lettered": Schema.Struct({
    endpoint: Schema.String,
    deliveryId: Schema.String,
    webhookId: Schema.String,
    attempts: Schema.Int,
    lastStatus: Schema.NullOr(Schema.Int),
    error: Schema.String
  }),
  "hook.added": Schema.Struct({ hook: Schema.String, verify: Schema.String, action: Schema.String }),
  "hook.removed": Schema.Struct({ hook: Schema.String }),
  /**
   * A request to `POST /hooks/<hook>`, whatever became of it: `accepted` (verified, its action
   * taken: the envelope names the job or session), `refused` (no such hook, or a bad, missing or
   * stale signature: answered alike), `replayed` (a delivery id seen before), `rate_limited`,
   * `too_large`, `invalid` (verified, but the body does not fit the action) or `failed` (the action
   * failed).
   */
  "hook.received": Schema.Struct({
    hook: Schema.String,
    outcome: Schema.Literal(
      "accepted",
      "refused",
      "replayed",
      "rate_limited",
      "too_large",
      "invalid",
      "failed"
    ),
    reason: Schema.NullOr(Schema.String),
    deliveryId: Schema.NullOr(Schema.String),
    clientAddress: Schema.String
  }),
  /** A workspace's main checkout follows `branch` from now on (see `Workspaces.Follow`). */
  "workspace.follow_started": Schema.Struct({
    workspace: Schema.String,
    branch: Schema.String,
    /** The branch the main checkout was on, which unfollowing switches back to. */
    restore: Schema.NullOr(Schema.String)
  }),
  /** The main checkout was moved to the followed branch's new commit (a detached HEAD). */
  "workspace.follow_synced": Schema.Struct({
    workspace: Schema.String,
    branch: Schema.String,
    from: Schema.NullOr(Schema.String),
    to: Schema.String
  }),
  /**
   * The main checkout could not follow the branch and was left as it is: `dirty` (uncommitted
   * changes to tracked files), `conflict` (unmerged paths, or git refused the switch),
   * `diverged` (it was moved off what vibes put there), `switched` (someone checked out a branch
   * in it), `gone` (the followed branch no longer exists). Once per change of reason or commit.
   */
  "workspace.follow_blocked": Schema.Struct({
    workspace: Schema.String,
    branch: Schema.String,
    reason: Schema.Literal("dirty", "conflict", "diverged", "switched", "gone"),
    message: Schema.String,
    commit: Schema.NullOr(Schema.String)
  }),
  "workspace.follow_stopped": Schema.Struct({
    workspace: Schema.String,
    branch: Schema.String,
    /** The branch the main checkout was switched back to, or null when it was left where it was. */
    restored: Schema.NullOr(Schema.String)
  }),
  /** One request through the AI-provider proxy; the envelope's sessionId names the session it came from. */
  "proxy.request": Schema.Struct({
    provider: Schema.String,
    model: Schema.NullOr(Schema.String),
    method: Schema.String,
    path: Schema.String,
    /** The status the client got (0 when it went away before any). */
    status: Schema.Int,
    latencyMillis: Schema.Number,
    /** Until the upstream's response headers (the first byte the client could get). */
    ttfbMillis: Schema.NullOr(Schema.Number),
    inputTokens: Schema.NullOr(Schema.Int),
    outputTokens: Schema.NullOr(Schema.Int),
    attempts: Schema.Int,
    streamed: Schema.Boolean,
    /** `admin` (the admin token) or `session` (a session's proxy token). */
    client: Schema.String,
    errorKind: Schema.NullOr(ProxyErrorKind),
    bytes: Schema.Int
  }),
  /**
   * A proxied request was recorded as a turn of a conversation (its bodies are in the conversation
   * store, never here); `forked` when it left its conversation at an earlier turn.
   */
  "proxy.turn": Schema.Struct({
    conversationId: Schema.String,
    turnId: Schema.String,
    seq: Schema.Int,
    parentTurnId: Schema.NullOr(Schema.String),
    forked: Schema.Boolean,
    provider: Schema.String,
    api: Schema.String,
    model: Schema.NullOr(Schema.String),
    status: Schema.Int,
    stopReason: Schema.NullOr(Schema.String),
    toolCalls: Schema.Int,
    inputTokens: Schema.NullOr(Schema.Int),
    outputTokens: Schema.NullOr(Schema.Int),
    cacheReadTokens: Schema.NullOr(Schema.Int),
    cacheWriteTokens: Schema.NullOr(Schema.Int),
    costUsd: Schema.NullOr(Schema.Number),
    latencyMillis: Schema.Number
  }),
  /** A session's (or the node's daily) proxy budget is spent: its requests are refused until it is raised. */
  "proxy.budget_exceeded": Schema.Struct({
    scope: Schema.Literal("session", "job", "daily"),
    budgetUsd: Schema.Number,
    spentUsd: Schema.Number
  })
} as const

/** An event type vibes knows the payload of. */
export type KnownType = keyof typeof payloads

/** The payload of known event type `T`. */
export type PayloadOf<T extends KnownType> = (typeof payloads)[T]["Type"]

/** The envelope of a new event: all but its type and payload. */
export type Envelope = Omit<ConstructorParameters<typeof NewEvent>[0], "type" | "data">

/**
 * A new event of known type `T`: the payload must match the type's schema, or this does not
 * compile. Every writer builds its events with this, so none drifts from `payloads`. (Built from
 * typed values: not validated again at run time.)
 */
export const newEvent = <T extends KnownType>(type: T, data: PayloadOf<T>, envelope: Envelope): NewEvent =>
  NewEvent.make({ ...envelope, type, data }, true)

/** A decoded payload: typed for a known type, the raw JSON value otherwise. */
export type Payload =
  | {
      readonly [K in KnownType]: { readonly _tag: K; readonly data: (typeof payloads)[K]["Type"] }
    }[KnownType]
  | { readonly _tag: "Generic"; readonly type: string; readonly data: unknown }

const isKnown = (type: string): type is KnownType => Object.prototype.hasOwnProperty.call(payloads, type)

/**
 * Decodes an event's payload by its type. An unknown type, or a payload that does not match its
 * schema (written by a newer version), becomes `Generic` rather than failing the reader.
 */
export const decodePayload = (event: { readonly type: string; readonly data: unknown }): Payload => {
  if (isKnown(event.type)) {
    const schema: Schema.Schema<unknown> = payloads[event.type] as Schema.Schema<unknown>
    const decoded = Schema.decodeUnknownEither(schema)(event.data)
    if (Either.isRight(decoded)) return { _tag: event.type, data: decoded.right } as Payload
  }
  return { _tag: "Generic", type: event.type, data: event.data }
}

// Errors ------------------------------------------------------------------------------------

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

/**
 * The log refused an event's contents for good (text Postgres cannot hold, such as a NUL, or a
 * database constraint); nothing was stored, and writing it again cannot succeed.
 */
export class EventRejected extends Schema.TaggedError<EventRejected>()("EventRejected", {
  type: Schema.String,
  message: Schema.String
}) {}

/** A consumer name or offset that the log refuses. */
export class InvalidConsumer extends Schema.TaggedError<InvalidConsumer>()("InvalidConsumer", {
  consumer: Schema.String,
  message: Schema.String
}) {}

/**
 * A subscriber fell too far behind and was cut off, so it could not slow the log or anyone
 * else. It resumes by subscribing again after `lastOffset` (the last event it received; 0 if none).
 */
export class SubscriberLagged extends Schema.TaggedError<SubscriberLagged>()("SubscriberLagged", {
  lastOffset: Schema.Int,
  message: Schema.String
}) {}

// Filters -----------------------------------------------------------------------------------

// Statistics -------------------------------------------------------------------------------

/** How much of the log one event type takes. */
export class TypeStats extends Schema.Class<TypeStats>("TypeStats")({
  type: Schema.String,
  events: Schema.NonNegativeInt,
  /** Payload bytes (JSON text of `data` plus raw `bytes`): the measure retention's `maxBytes` caps. */
  bytes: Schema.NonNegativeInt,
  oldest: Schema.NullOr(Schema.DateTimeUtc),
  newest: Schema.NullOr(Schema.DateTimeUtc)
}) {}

/** A named consumer, where it is, and how far behind the head. */
export class ConsumerStats extends Schema.Class<ConsumerStats>("ConsumerStats")({
  name: Schema.String,
  offset: Schema.NonNegativeInt,
  lag: Schema.NonNegativeInt
}) {}

/** A retention policy as the server applies it. */
export class RetentionStats extends Schema.Class<RetentionStats>("RetentionStats")({
  types: Schema.Array(Schema.String),
  maxAgeMillis: Schema.NullOr(Schema.NonNegativeInt),
  maxBytes: Schema.NullOr(Schema.NonNegativeInt),
  snapshotType: Schema.NullOr(Schema.String)
}) {}

/** What the log holds, by type: what a backend's `stats` answers. */
export class LogStats extends Schema.Class<LogStats>("LogStats")({
  backend: Schema.Literal("postgres", "jetstream", "memory"),
  head: Schema.NonNegativeInt,
  events: Schema.NonNegativeInt,
  /** Payload bytes of every event (see `TypeStats.bytes`). */
  bytes: Schema.NonNegativeInt,
  /** What the store takes on disk (table and indexes, or the stream), when it can tell. */
  storedBytes: Schema.NullOr(Schema.NonNegativeInt),
  /** Largest first. */
  types: Schema.Array(TypeStats)
}) {}

/** What the event log holds, what takes its space, who reads it and what retention keeps. */
export class EventLogStats extends Schema.Class<EventLogStats>("EventLogStats")({
  ...LogStats.fields,
  consumers: Schema.Array(ConsumerStats),
  retention: Schema.Array(RetentionStats)
}) {}

/** Selects events by type globs (one must match) and by each id given. Empty selects everything. */
export class EventFilter extends Schema.Class<EventFilter>("EventFilter")({
  types: Schema.optionalWith(Schema.Array(Schema.String), { default: () => [] }),
  sessionId: Schema.optional(Id),
  jobId: Schema.optional(Id),
  tenantId: Schema.optional(Id)
}) {}

/** A malformed type glob. */
export class InvalidGlob extends Schema.TaggedError<InvalidGlob>()("InvalidGlob", {
  glob: Schema.String,
  message: Schema.String
}) {}

const globSegment = /^([a-z0-9_]+|\*)$/

/**
 * Compiles a type glob: dotted segments, each a word or `*` (one segment); a trailing `**`
 * matches the rest. `session.*`, `*.exited`, `job.**`.
 */
export const compileGlob = (glob: string): Either.Either<RegExp, InvalidGlob> => {
  const segments = glob.split(".")
  const invalid = (why: string) =>
    Either.left(new InvalidGlob({ glob, message: `invalid type glob '${glob}': ${why}` }))
  if (glob === "" || glob.length > 100) return invalid("it must be 1 to 100 characters")
  let source = ""
  for (let i = 0; i < segments.length; i++) {
    const segment = segments[i] ?? ""
    const last = i === segments.length - 1
    if (segment === "**") {
      if (!last) return invalid("'**' may only end a glob")
      source += i === 0 ? "[a-z0-9_.]+" : "(\\.[a-z0-9_]+)+"
      continue
    }
    if (!globSegment.test(segment)) return invalid(`segment '${segment}' must be a lower-case word or '*'`)
    source += (i === 0 ? "" : "\\.") + (segment === "*" ? "[a-z0-9_]+" : segment)
  }
  return Either.right(new RegExp(`^${source}$`))
}

/** A filter ready to test events. */
export interface CompiledFilter {
  readonly filter: EventFilter
  readonly matches: (event: {
    readonly type: string
    readonly sessionId?: string | undefined
    readonly jobId?: string | undefined
    readonly tenantId: string
  }) => boolean
}

/** Compiles a filter, failing on the first malformed glob. */
export const compileFilter = (filter: EventFilter): Either.Either<CompiledFilter, InvalidGlob> =>
  Either.map(Either.all(filter.types.map(compileGlob)), (globs) => ({
    filter,
    matches: (event) =>
      (globs.length === 0 || globs.some((glob) => glob.test(event.type))) &&
      (filter.sessionId === undefined || filter.sessionId === event.sessionId) &&
      (filter.jobId === undefined || filter.jobId === event.jobId) &&
      (filter.tenantId === undefined || filter.tenantId === event.tenantId)
  }))
