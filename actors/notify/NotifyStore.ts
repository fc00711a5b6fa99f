/**
 * Where notifications are kept: webhook endpoints with their secrets, the delivery log (one row a
 * message with its body, one row an attempt), inbound hooks, and the delivery ids hooks have seen.
 * Secrets are read only by the code that signs or verifies; nothing here logs a row.
 */
import { Context, DateTime, Effect, Layer, Option, Redacted, Schema } from "effect"
import { SqlClient } from "@effect/sql/SqlClient"
import type { SqlError } from "@effect/sql/SqlError"
import { Severity } from "../../rpc/Events.js"
import {
  type AddEndpoint,
  type AddHook,
  DeliveryInfo,
  type DeliveryStatus,
  EndpointFormat,
  EndpointInfo,
  HookAction,
  HookInfo,
  HookVerification,
  InvalidNotifyRequest,
  NotifyNotFound,
  NotifyUnavailable
} from "../../rpc/Notify.js"
import { uuidv7 } from "../../infra/eventlog/EventLog.js"

/** The tenant of every endpoint and hook until principals carry one. */
export const defaultTenant = "default"

/** An endpoint as the deliverer needs it: with its URL and secret. */
export interface Endpoint {
  readonly info: EndpointInfo
  readonly url: string
  readonly secret: Redacted.Redacted<string>
}

/** A hook as the inbound route needs it: with its secret. */
export interface Hook {
  readonly info: HookInfo
  readonly secret: Redacted.Redacted<string>
}

/** A message about to be attempted. */
export interface NewMessage {
  readonly endpointId: string
  readonly webhookId: string
  readonly types: ReadonlyArray<string>
  readonly firstOffset: number | null
  readonly lastOffset: number | null
  readonly body: string
}

/** A logged message: what the log shows, and its body. */
export interface Message {
  readonly info: DeliveryInfo
  readonly endpointId: string
  readonly body: string
}

/** How one attempt went. */
export interface Attempt {
  readonly status: number | null
  readonly latencyMillis: number
  readonly error: string | null
}

const EndpointRow = Schema.Struct({
  id: Schema.String,
  name: Schema.String,
  url: Schema.String,
  format: EndpointFormat,
  secret: Schema.String,
  types: Schema.Array(Schema.String),
  session_id: Schema.NullOr(Schema.String),
  job_id: Schema.NullOr(Schema.String),
  min_severity: Severity,
  max_attempts: Schema.Number,
  rate_per_minute: Schema.Number,
  coalesce_millis: Schema.Number,
  timeout_millis: Schema.Number,
  created_at: Schema.DateFromSelf
})

const DeliveryRow = Schema.Struct({
  id: Schema.String,
  endpoint_id: Schema.String,
  endpoint: Schema.String,
  webhook_id: Schema.String,
  types: Schema.Array(Schema.String),
  first_offset: Schema.NullOr(Schema.Union(Schema.NumberFromString, Schema.Number)),
  last_offset: Schema.NullOr(Schema.Union(Schema.NumberFromString, Schema.Number)),
  body: Schema.String,
  status: Schema.Literal("pending", "delivered", "dead"),
  attempts: Schema.Number,
  last_status: Schema.NullOr(Schema.Number),
  last_latency_millis: Schema.NullOr(Schema.Number),
  last_error: Schema.NullOr(Schema.String),
  created_at: Schema.DateFromSelf,
  updated_at: Schema.DateFromSelf
})

const HookRow = Schema.Struct({
  id: Schema.String,
  name: Schema.String,
  verify: HookVerification,
  secret: Schema.String,
  action: Schema.Unknown,
  rate_per_minute: Schema.Number,
  max_body_bytes: Schema.Number,
  created_at: Schema.DateFromSelf
})

/** Scheme and host of a URL: what may be shown of it. */
export const targetOf = (url: string): string => {
  try {
    const parsed = new URL(url)
    return `${parsed.protocol}//${parsed.host}`
  } catch {
    return "?"
  }
}

const toEndpoint = (row: typeof EndpointRow.Type, committed: number | null): Endpoint => ({
  url: row.url,
  secret: Redacted.make(row.secret),
  info: EndpointInfo.make({
    id: row.id,
    name: row.name,
    target: targetOf(row.url),
    format: row.format,
    types: row.types,
    sessionId: row.session_id,
    jobId: row.job_id,
    minSeverity: row.min_severity,
    maxAttempts: row.max_attempts,
    ratePerMinute: row.rate_per_minute,
    coalesceMillis: row.coalesce_millis,
    timeoutMillis: row.timeout_millis,
    committed,
    createdAt: DateTime.unsafeFromDate(row.created_at)
  })
})

const toMessage = (row: typeof DeliveryRow.Type): Message => ({
  endpointId: row.endpoint_id,
  body: row.body,
  info: DeliveryInfo.make({
    id: row.id,
    endpoint: row.endpoint,
    webhookId: row.webhook_id,
    types: row.types,
    firstOffset: row.first_offset,
    lastOffset: row.last_offset,
    status: row.status,
    attempts: row.attempts,
    lastStatus: row.last_status,
    lastLatencyMillis: row.last_latency_millis,
    lastError: row.last_error,
    createdAt: DateTime.unsafeFromDate(row.created_at),
    updatedAt: DateTime.unsafeFromDate(row.updated_at)
  })
})

const decodeAction = Schema.decodeUnknown(HookAction)
const encodeAction = Schema.encodeSync(HookAction)

const toHook = (row: typeof HookRow.Type) =>
  Effect.map(decodeAction(row.action), (action) => ({
    secret: Redacted.make(row.secret),
    info: HookInfo.make({
      id: row.id,
      name: row.name,
      verify: row.verify,
      action,
      ratePerMinute: row.rate_per_minute,
      maxBodyBytes: row.max_body_bytes,
      path: `/hooks/${row.name}`,
      createdAt: DateTime.unsafeFromDate(row.created_at)
    })
  }))

const unavailable = (error: SqlError | { readonly message: string }) =>
  new NotifyUnavailable({ message: `the notification store is unavailable: ${error.message}` })

const isUniqueViolation = (error: SqlError): boolean => {
  const cause: unknown = error.cause
  return typeof cause === "object" && cause !== null && "code" in cause && cause.code === "23505"
}

/** The store of notifications. */
export class NotifyStore extends Context.Tag("vibes/NotifyStore")<
  NotifyStore,
  {
    /** Adds an endpoint with `secret`; refuses a name in use. */
    readonly addEndpoint: (
      request: AddEndpoint,
      secret: string
    ) => Effect.Effect<Endpoint, InvalidNotifyRequest | NotifyUnavailable>
    /** Every endpoint, by name (`committed` left null: the log knows it). */
    readonly endpoints: Effect.Effect<ReadonlyArray<Endpoint>, NotifyUnavailable>
    readonly endpoint: (name: string) => Effect.Effect<Endpoint, NotifyNotFound | NotifyUnavailable>
    readonly removeEndpoint: (name: string) => Effect.Effect<Endpoint, NotifyNotFound | NotifyUnavailable>
    /** The logged message of `endpointId` with `webhookId`, made now if there is none yet. */
    readonly message: (message: NewMessage) => Effect.Effect<Message, NotifyUnavailable>
    readonly messageById: (id: string) => Effect.Effect<Message, NotifyNotFound | NotifyUnavailable>
    /** Records an attempt, and where the message stands after it. */
    readonly recordAttempt: (
      messageId: string,
      attempt: Attempt,
      status: DeliveryStatus
    ) => Effect.Effect<Message, NotifyUnavailable>
    readonly deliveries: (filter: {
      readonly endpoint?: string | undefined
      readonly status?: DeliveryStatus | undefined
      readonly limit: number
    }) => Effect.Effect<ReadonlyArray<DeliveryInfo>, NotifyUnavailable>
    readonly addHook: (
      request: AddHook,
      secret: string
    ) => Effect.Effect<Hook, InvalidNotifyRequest | NotifyUnavailable>
    readonly hooks: Effect.Effect<ReadonlyArray<Hook>, NotifyUnavailable>
    readonly hook: (name: string) => Effect.Effect<Option.Option<Hook>, NotifyUnavailable>
    readonly removeHook: (name: string) => Effect.Effect<Hook, NotifyNotFound | NotifyUnavailable>
    /** Records that `hookId` saw `deliveryId`: false when it had seen it already (a replay). */
    readonly firstSighting: (hookId: string, deliveryId: string) => Effect.Effect<boolean, NotifyUnavailable>
    /** Forgets delivery ids seen before `before` (replays that old are refused by their timestamp). */
    readonly pruneSeen: (before: Date) => Effect.Effect<number, NotifyUnavailable>
  }
>() {}

/** The store on the node's database. */
export const layer = Layer.effect(
  NotifyStore,
  Effect.gen(function* () {
    const sql = yield* SqlClient
    const decodeEndpoints = Schema.decodeUnknown(Schema.Array(EndpointRow))
    const decodeDeliveries = Schema.decodeUnknown(Schema.Array(DeliveryRow))
    const decodeHooks = Schema.decodeUnknown(Schema.Array(HookRow))

    const notFound = (what: string, name: string) =>
      new NotifyNotFound({ message: `no ${what} named '${name}' (see vibes notify ${what} ls)` })

    const endpointRows = (rows: ReadonlyArray<unknown>) =>
      Effect.map(decodeEndpoints(rows), (decoded) => decoded.map((row) => toEndpoint(row, null)))

    const deliverySelect = sql`
      SELECT d.id, d.endpoint_id, e.name AS endpoint, d.webhook_id, d.types, d.first_offset, d.last_offset,
             d.body, d.status, d.attempts, d.last_status, d.last_latency_millis, d.last_error,
             d.created_at, d.updated_at
      FROM vibes_notify_deliveries d JOIN vibes_notify_endpoints e ON e.id = d.endpoint_id
    `

    const oneMessage = (rows: ReadonlyArray<unknown>, id: string) =>
      Effect.flatMap(decodeDeliveries(rows), (decoded) => {
        const [row] = decoded
        return row === undefined
          ? Effect.fail(new NotifyNotFound({ message: `no delivery with id ${id}` }))
          : Effect.succeed(toMessage(row))
      })

    const messageById = (id: string) =>
      Effect.flatMap(sql`${deliverySelect} WHERE d.id = ${id}`, (rows) => oneMessage(rows, id)).pipe(
        Effect.catchTags({
          SqlError: (e) => Effect.fail(unavailable(e)),
          ParseError: (e) => Effect.fail(unavailable(e))
        })
      )

    return NotifyStore.of({
      addEndpoint: (request, secret) =>
        Effect.gen(function* () {
          const rows = yield* sql`
            INSERT INTO vibes_notify_endpoints (id, tenant_id, name, url, format, secret, types, session_id, job_id,
              min_severity, max_attempts, rate_per_minute, coalesce_millis, timeout_millis)
            VALUES (${uuidv7()}, ${defaultTenant}, ${request.name}, ${request.url}, ${request.format}, ${secret},
              ${[...request.types]}::text[], ${request.sessionId ?? null}, ${request.jobId ?? null},
              ${request.minSeverity}, ${request.maxAttempts}, ${request.ratePerMinute}, ${request.coalesceMillis},
              ${request.timeoutMillis})
            RETURNING *
          `
          const [endpoint] = yield* endpointRows(rows)
          if (endpoint === undefined)
            return yield* Effect.fail(unavailable({ message: "the insert returned nothing" }))
          return endpoint
        }).pipe(
          Effect.catchTags({
            SqlError: (error) =>
              isUniqueViolation(error)
                ? Effect.fail(
                    new InvalidNotifyRequest({
                      message: `an endpoint named '${request.name}' exists already`
                    })
                  )
                : Effect.fail(unavailable(error)),
            ParseError: (error) => Effect.fail(unavailable(error))
          })
        ),
      endpoints:
        sql`SELECT * FROM vibes_notify_endpoints WHERE tenant_id = ${defaultTenant} ORDER BY name`.pipe(
          Effect.flatMap(endpointRows),
          Effect.mapError(unavailable)
        ),
      endpoint: (name) =>
        sql`SELECT * FROM vibes_notify_endpoints WHERE tenant_id = ${defaultTenant} AND name = ${name}`.pipe(
          Effect.flatMap(endpointRows),
          Effect.mapError(unavailable),
          Effect.flatMap((found) =>
            found[0] === undefined ? Effect.fail(notFound("endpoint", name)) : Effect.succeed(found[0])
          )
        ),
      removeEndpoint: (name) =>
        sql`DELETE FROM vibes_notify_endpoints WHERE tenant_id = ${defaultTenant} AND name = ${name} RETURNING *`.pipe(
          Effect.flatMap(endpointRows),
          Effect.mapError(unavailable),
          Effect.flatMap((found) =>
            found[0] === undefined ? Effect.fail(notFound("endpoint", name)) : Effect.succeed(found[0])
          )
        ),
      message: (message) =>
        Effect.gen(function* () {
          const rows = yield* sql`
            WITH inserted AS (
              INSERT INTO vibes_notify_deliveries (id, tenant_id, endpoint_id, webhook_id, types, first_offset,
                last_offset, body, status)
              VALUES (${uuidv7()}, ${defaultTenant}, ${message.endpointId}, ${message.webhookId},
                ${[...message.types]}::text[], ${message.firstOffset}, ${message.lastOffset}, ${message.body},
                'pending')
              ON CONFLICT (endpoint_id, webhook_id) DO NOTHING
              RETURNING id
            )
            SELECT id FROM inserted
            UNION ALL
            SELECT id FROM vibes_notify_deliveries WHERE endpoint_id = ${message.endpointId}
              AND webhook_id = ${message.webhookId}
          `
          const id = rows[0]?.["id"]
          if (typeof id !== "string")
            return yield* Effect.fail(unavailable({ message: "the message was not stored" }))
          return yield* messageById(id)
        }).pipe(
          Effect.catchTags({
            SqlError: (e) => Effect.fail(unavailable(e)),
            NotifyNotFound: (e) => Effect.fail(unavailable(e))
          })
        ),
      messageById,
      recordAttempt: (messageId, attempt, status) =>
        Effect.gen(function* () {
          yield* sql.withTransaction(
            Effect.gen(function* () {
              const rows = yield* sql`
                UPDATE vibes_notify_deliveries SET attempts = attempts + 1, status = ${status},
                  last_status = ${attempt.status}, last_latency_millis = ${attempt.latencyMillis},
                  last_error = ${attempt.error}, updated_at = now()
                WHERE id = ${messageId} RETURNING attempts
              `
              const attempts = Number(rows[0]?.["attempts"] ?? 0)
              yield* sql`
                INSERT INTO vibes_notify_attempts (delivery_id, attempt, status, latency_millis, error)
                VALUES (${messageId}, ${attempts}, ${attempt.status}, ${attempt.latencyMillis}, ${attempt.error})
                ON CONFLICT DO NOTHING
              `
            })
          )
          return yield* messageById(messageId)
        }).pipe(
          Effect.catchTags({
            SqlError: (e) => Effect.fail(unavailable(e)),
            NotifyNotFound: (e) => Effect.fail(unavailable(e))
          })
        ),
      deliveries: (filter) =>
        sql`${deliverySelect} WHERE d.tenant_id = ${defaultTenant}
          ${filter.endpoint !== undefined ? sql`AND e.name = ${filter.endpoint}` : sql``}
          ${filter.status !== undefined ? sql`AND d.status = ${filter.status}` : sql``}
          ORDER BY d.created_at DESC, d.id DESC LIMIT ${filter.limit}`.pipe(
          Effect.flatMap(decodeDeliveries),
          Effect.map((rows) => rows.map((row) => toMessage(row).info)),
          Effect.mapError(unavailable)
        ),
      addHook: (request, secret) =>
        Effect.gen(function* () {
          const rows = yield* sql`
            INSERT INTO vibes_hooks (id, tenant_id, name, verify, secret, action, rate_per_minute, max_body_bytes)
            VALUES (${uuidv7()}, ${defaultTenant}, ${request.name}, ${request.verify}, ${secret},
              ${JSON.stringify(encodeAction(request.action))}::jsonb, ${request.ratePerMinute}, ${request.maxBodyBytes})
            RETURNING *
          `
          const [row] = yield* decodeHooks(rows)
          if (row === undefined)
            return yield* Effect.fail(unavailable({ message: "the insert returned nothing" }))
          return yield* toHook(row)
        }).pipe(
          Effect.catchTags({
            SqlError: (error) =>
              isUniqueViolation(error)
                ? Effect.fail(
                    new InvalidNotifyRequest({ message: `a hook named '${request.name}' exists already` })
                  )
                : Effect.fail(unavailable(error)),
            ParseError: (error) => Effect.fail(unavailable(error))
          })
        ),
      hooks: sql`SELECT * FROM vibes_hooks WHERE tenant_id = ${defaultTenant} ORDER BY name`.pipe(
        Effect.flatMap(decodeHooks),
        Effect.flatMap((rows) => Effect.forEach(rows, toHook)),
        Effect.mapError(unavailable)
      ),
      hook: (name) =>
        sql`SELECT * FROM vibes_hooks WHERE tenant_id = ${defaultTenant} AND name = ${name}`.pipe(
          Effect.flatMap(decodeHooks),
          Effect.flatMap((rows) =>
            rows[0] === undefined ? Effect.succeedNone : Effect.asSome(toHook(rows[0]))
          ),
          Effect.mapError(unavailable)
        ),
      removeHook: (name) =>
        sql`DELETE FROM vibes_hooks WHERE tenant_id = ${defaultTenant} AND name = ${name} RETURNING *`.pipe(
          Effect.flatMap(decodeHooks),
          Effect.mapError(unavailable),
          Effect.flatMap((rows) =>
            rows[0] === undefined
              ? Effect.fail<NotifyNotFound | NotifyUnavailable>(notFound("hook", name))
              : Effect.mapError(toHook(rows[0]), unavailable)
          )
        ),
      firstSighting: (hookId, deliveryId) =>
        sql`INSERT INTO vibes_hook_seen (hook_id, delivery_id) VALUES (${hookId}, ${deliveryId})
            ON CONFLICT DO NOTHING RETURNING delivery_id`.pipe(
          Effect.map((rows) => rows.length > 0),
          Effect.mapError(unavailable)
        ),
      pruneSeen: (before) =>
        sql`DELETE FROM vibes_hook_seen WHERE seen_at < ${before} RETURNING 1`.pipe(
          Effect.map((rows) => rows.length),
          Effect.mapError(unavailable)
        )
    })
  })
)
