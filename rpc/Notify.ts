/**
 * Notifications: outbound webhook endpoints (signed deliveries of the events that matter, driven
 * by the event log), the delivery log, and inbound hooks (`POST /hooks/<name>`) that turn signed
 * requests from GitHub, Slack or anyone holding a hook's secret into jobs, input or sessions.
 */
import { Schema } from "effect"
import * as Rpc from "@effect/rpc/Rpc"
import * as RpcGroup from "@effect/rpc/RpcGroup"
import { AuthMiddleware } from "./Auth.js"
import { Severity } from "./Events.js"
import { JobSpec } from "./Jobs.js"
import { SessionId } from "./Sessions.js"

/** An endpoint's or hook's name: safe in URLs, metric labels and logs. */
export const NotifyName = Schema.String.pipe(
  Schema.pattern(/^[a-z0-9][a-z0-9_-]{0,62}$/, {
    message: () => "a name is 1 to 63 lower-case letters, digits, '_' or '-', starting with a letter or digit"
  })
)

/** An http(s) URL of at most 2,048 characters. */
export const WebhookUrl = Schema.String.pipe(
  Schema.maxLength(2048),
  Schema.filter((text) => {
    try {
      const url = new URL(text)
      return url.protocol === "http:" || url.protocol === "https:" || "must be an http or https URL"
    } catch {
      return "is not a URL"
    }
  })
)

/**
 * A secret as given or shown: Standard Webhooks' `whsec_<base64 key>`, or (for hooks whose provider
 * makes the secret, like Slack's signing secret) any text of 8 to 256 characters.
 */
export const Secret = Schema.Redacted(Schema.String.pipe(Schema.minLength(8), Schema.maxLength(256)))

/** How a delivery's body is written: vibes' own JSON, or a Slack or Discord incoming-webhook message. */
export const EndpointFormat = Schema.Literal("vibes", "slack", "discord")
export type EndpointFormat = typeof EndpointFormat.Type

/**
 * The event types an endpoint gets when it names none: a session waiting for input (idle after
 * output, or a bell), a session lost, a job that ended, the AI proxy's circuit opening.
 */
export const defaultTypes: ReadonlyArray<string> = [
  "session.idle",
  "session.bell",
  "session.lost",
  "job.done",
  "proxy.circuit_opened"
]

/** A glob list of at most 50 type globs (checked by the server). */
const TypeGlobs = Schema.Array(Schema.String.pipe(Schema.maxLength(100))).pipe(Schema.maxItems(50))

/** What `Notify.AddEndpoint` takes. */
export class AddEndpoint extends Schema.Class<AddEndpoint>("AddEndpoint")({
  name: NotifyName,
  url: WebhookUrl,
  format: Schema.optionalWith(EndpointFormat, { default: () => "vibes" as const }),
  /** The signing secret (`whsec_…`); one is made when omitted, and shown once. */
  secret: Schema.optional(Secret),
  /** Event type globs; the default rules (`defaultTypes`) when empty. */
  types: Schema.optionalWith(TypeGlobs, { default: () => [] }),
  sessionId: Schema.optional(Schema.String.pipe(Schema.maxLength(200))),
  jobId: Schema.optional(Schema.String.pipe(Schema.maxLength(200))),
  /** Events less severe than this are not sent. */
  minSeverity: Schema.optionalWith(Severity, { default: () => "info" as const }),
  /** Attempts of one delivery before it is dead-lettered. */
  maxAttempts: Schema.optionalWith(Schema.Int.pipe(Schema.between(1, 50)), { default: () => 12 }),
  /** Deliveries a minute at most (a token bucket that holds a tenth of it). */
  ratePerMinute: Schema.optionalWith(Schema.Int.pipe(Schema.between(1, 60_000)), { default: () => 120 }),
  /**
   * Sessions going idle or ringing within this window go out as one delivery; 0 turns coalescing
   * off (each event its own delivery, sent as soon as it is read).
   */
  coalesceMillis: Schema.optionalWith(Schema.Int.pipe(Schema.between(0, 60_000)), { default: () => 1000 }),
  /** How long one attempt may take. */
  timeoutMillis: Schema.optionalWith(Schema.Int.pipe(Schema.between(100, 60_000)), { default: () => 10_000 })
}) {}

/** An endpoint as clients see it: never its secret, and its URL only as far as its host. */
export class EndpointInfo extends Schema.Class<EndpointInfo>("EndpointInfo")({
  id: Schema.String,
  name: Schema.String,
  /** Scheme and host of the URL (its path may hold a token, as Slack's and Discord's do). */
  target: Schema.String,
  format: EndpointFormat,
  types: Schema.Array(Schema.String),
  sessionId: Schema.NullOr(Schema.String),
  jobId: Schema.NullOr(Schema.String),
  minSeverity: Severity,
  maxAttempts: Schema.Int,
  ratePerMinute: Schema.Int,
  coalesceMillis: Schema.Int,
  timeoutMillis: Schema.Int,
  /** The last event offset it has passed (delivered or dead-lettered). */
  committed: Schema.NullOr(Schema.Int),
  createdAt: Schema.DateTimeUtc
}) {}

/** What `Notify.AddEndpoint` answers: the endpoint, and its secret (shown this once). */
export class AddedEndpoint extends Schema.Class<AddedEndpoint>("AddedEndpoint")({
  endpoint: EndpointInfo,
  secret: Schema.Redacted(Schema.String)
}) {}

/** Where a delivery stands: being attempted, delivered, or given up on (dead-lettered). */
export const DeliveryStatus = Schema.Literal("pending", "delivered", "dead")
export type DeliveryStatus = typeof DeliveryStatus.Type

/** One message to one endpoint, as the delivery log keeps it. */
export class DeliveryInfo extends Schema.Class<DeliveryInfo>("DeliveryInfo")({
  id: Schema.String,
  endpoint: Schema.String,
  /** The `webhook-id` header: the same on every attempt, for the receiver's de-duplication. */
  webhookId: Schema.String,
  /** The event types it carries (several when coalesced). */
  types: Schema.Array(Schema.String),
  /** The offsets of its first and last events; null for a test message. */
  firstOffset: Schema.NullOr(Schema.Int),
  lastOffset: Schema.NullOr(Schema.Int),
  status: DeliveryStatus,
  attempts: Schema.Int,
  /** The HTTP status of the last attempt (null: no answer). */
  lastStatus: Schema.NullOr(Schema.Int),
  lastLatencyMillis: Schema.NullOr(Schema.Number),
  lastError: Schema.NullOr(Schema.String),
  createdAt: Schema.DateTimeUtc,
  updatedAt: Schema.DateTimeUtc
}) {}

/** How an inbound hook proves a request is from its sender. */
export const HookVerification = Schema.Literal("github", "slack", "hmac")
export type HookVerification = typeof HookVerification.Type

/**
 * What a verified inbound request does: run a job from a template (the request's event, delivery
 * id and body reach it as `VIBES_HOOK_*` variables), send the request's `text` to a session, or
 * create a session.
 */
export const HookAction = Schema.Union(
  Schema.TaggedStruct("RunJob", { spec: JobSpec }),
  Schema.TaggedStruct("SendText", { sessionId: SessionId }),
  /**
   * A Slack slash command: `/vibes run <shell line>` runs it as a job and answers in the channel
   * through the command's `response_url` when the job ends; `/vibes ls` lists the latest jobs. The
   * response URL must start with `responseUrlPrefix` (Slack's own host unless told otherwise).
   */
  Schema.TaggedStruct("SlackCommand", {
    responseUrlPrefix: Schema.optionalWith(WebhookUrl, { default: () => "https://hooks.slack.com/" }),
    cwd: Schema.optional(Schema.String),
    workspace: Schema.optional(Schema.String)
  }),
  Schema.TaggedStruct("CreateSession", {
    command: Schema.optional(Schema.String),
    args: Schema.optionalWith(Schema.Array(Schema.String), { default: () => [] }),
    name: Schema.optional(Schema.String),
    workspace: Schema.optional(Schema.String)
  })
)
export type HookAction = typeof HookAction.Type

/** What `Notify.AddHook` takes. */
export class AddHook extends Schema.Class<AddHook>("AddHook")({
  name: NotifyName,
  verify: HookVerification,
  /** GitHub's webhook secret, Slack's signing secret, or a `whsec_…` key; made when omitted (not for Slack). */
  secret: Schema.optional(Secret),
  action: HookAction,
  /** Requests a minute from one address at most. */
  ratePerMinute: Schema.optionalWith(Schema.Int.pipe(Schema.between(1, 60_000)), { default: () => 60 }),
  /** The largest body accepted, in bytes. */
  maxBodyBytes: Schema.optionalWith(Schema.Int.pipe(Schema.between(1024, 5 * 1024 * 1024)), {
    default: () => 1024 * 1024
  })
}) {}

/** A hook as clients see it (never its secret). */
export class HookInfo extends Schema.Class<HookInfo>("HookInfo")({
  id: Schema.String,
  name: Schema.String,
  verify: HookVerification,
  action: HookAction,
  ratePerMinute: Schema.Int,
  maxBodyBytes: Schema.Int,
  /** Where senders post. */
  path: Schema.String,
  createdAt: Schema.DateTimeUtc
}) {}

/** What `Notify.AddHook` answers: the hook, and its secret (shown this once). */
export class AddedHook extends Schema.Class<AddedHook>("AddedHook")({
  hook: HookInfo,
  secret: Schema.Redacted(Schema.String)
}) {}

// Errors ------------------------------------------------------------------------------------

/** The request names no such endpoint, hook or delivery. */
export class NotifyNotFound extends Schema.TaggedError<NotifyNotFound>()("NotifyNotFound", {
  message: Schema.String
}) {}

/** The request is refused as it stands (a bad glob, a name in use, a secret Slack needs): see message. */
export class InvalidNotifyRequest extends Schema.TaggedError<InvalidNotifyRequest>()("InvalidNotifyRequest", {
  message: Schema.String
}) {}

/** The notification store could not be reached; retry. */
export class NotifyUnavailable extends Schema.TaggedError<NotifyUnavailable>()("NotifyUnavailable", {
  message: Schema.String
}) {}

export const NotifyError = Schema.Union(NotifyNotFound, InvalidNotifyRequest, NotifyUnavailable)
export type NotifyError = typeof NotifyError.Type

const ByName = { name: NotifyName }

/** The largest page of the delivery log. */
export const maxDeliveries = 1000

/** Which deliveries `Notify.Deliveries` lists, newest first. */
export class DeliveriesRequest extends Schema.Class<DeliveriesRequest>("DeliveriesRequest")({
  endpoint: Schema.optional(NotifyName),
  status: Schema.optional(DeliveryStatus),
  limit: Schema.optionalWith(Schema.Int.pipe(Schema.between(1, maxDeliveries)), { default: () => 50 })
}) {}

/** RPCs of notifications. */
export class NotifyRpcs extends RpcGroup.make(
  Rpc.make("AddEndpoint", { payload: AddEndpoint, success: AddedEndpoint, error: NotifyError }),
  Rpc.make("ListEndpoints", { success: Schema.Array(EndpointInfo), error: NotifyError }),
  Rpc.make("RemoveEndpoint", { payload: ByName, error: NotifyError }),
  /** Sends a `notify.test` message to the endpoint now (one attempt) and answers how it went. */
  Rpc.make("TestEndpoint", { payload: ByName, success: DeliveryInfo, error: NotifyError }),
  Rpc.make("Deliveries", {
    payload: DeliveriesRequest,
    success: Schema.Array(DeliveryInfo),
    error: NotifyError
  }),
  /** Sends a logged delivery (a dead letter, usually) again now, with its webhook id. */
  Rpc.make("Redeliver", { payload: { id: Schema.UUID }, success: DeliveryInfo, error: NotifyError }),
  Rpc.make("AddHook", { payload: AddHook, success: AddedHook, error: NotifyError }),
  Rpc.make("ListHooks", { success: Schema.Array(HookInfo), error: NotifyError }),
  Rpc.make("RemoveHook", { payload: ByName, error: NotifyError })
)
  .prefix("Notify.")
  .middleware(AuthMiddleware) {}
