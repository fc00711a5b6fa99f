/**
 * The Postgres client of a node: an `@effect/sql-pg` client over a `pg` pool whose size,
 * connect timeout and per-statement timeout come from configuration.
 */
import pg from "pg"
import { Context, Duration, Effect, Layer, Metric, Redacted, Schedule, Schema, Stream } from "effect"
import * as PgClient from "@effect/sql-pg/PgClient"
import type { SqlClient } from "@effect/sql/SqlClient"
import { SqlError } from "@effect/sql/SqlError"

/** The database cannot be reached. */
export class DatabaseUnavailable extends Schema.TaggedError<DatabaseUnavailable>()("DatabaseUnavailable", {
  message: Schema.String
}) {}

/** The SQLSTATE of a database error (`23505`, `08006`, …), looked for along its causes. */
export const sqlState = (error: unknown): string | undefined => {
  let current: unknown = error
  for (let depth = 0; depth < 5 && typeof current === "object" && current !== null; depth++) {
    if ("code" in current && typeof current.code === "string" && /^[0-9A-Z]{5}$/.test(current.code)) {
      return current.code
    }
    current = "cause" in current ? current.cause : undefined
  }
  return undefined
}

/**
 * SQLSTATE classes of errors that the same statement will meet again: feature not supported (0A),
 * cardinality (21), data exception (22: a NUL, bad encoding, a value out of range), integrity
 * constraints (23), invalid transaction state or authorization (25, 26, 28), invalid catalog or
 * schema (3D, 3F), syntax or access rules (42), with-check-option (44), program limits (54).
 */
const permanentClasses = new Set(["0A", "21", "22", "23", "25", "26", "28", "3D", "3F", "42", "44", "54"])

/**
 * Whether retrying cannot help: the database refused the statement itself. Everything else (a
 * lost connection, a timeout, a serialization failure, a server shutting down, an error without a
 * SQLSTATE) may pass on a later try.
 */
export const isPermanentSqlError = (error: unknown): boolean => {
  const state = sqlState(error)
  return state !== undefined && permanentClasses.has(state.slice(0, 2))
}

/** How to reach the database. */
export interface Options {
  readonly url: Redacted.Redacted<string>
  readonly poolSize: number
  readonly connectTimeout: Duration.DurationInput
  readonly queryTimeout: Duration.DurationInput
  readonly applicationName?: string
}

/** `host:port/database` of a URL, without credentials, for messages. */
export const describe = (url: Redacted.Redacted<string>): string => {
  try {
    const parsed = new URL(Redacted.value(url))
    return `${parsed.hostname}:${parsed.port || "5432"}${parsed.pathname}`
  } catch {
    return "(unparsable URL)"
  }
}

const openPool = (options: Options) =>
  Effect.acquireRelease(
    Effect.tryPromise({
      try: async () => {
        const pool = new pg.Pool({
          connectionString: Redacted.value(options.url),
          max: options.poolSize,
          connectionTimeoutMillis: Duration.toMillis(options.connectTimeout),
          statement_timeout: Duration.toMillis(options.queryTimeout),
          idleTimeoutMillis: 30_000,
          application_name: options.applicationName ?? "vibes"
        })
        // Errors of idle clients (a restarted server) surface on the next query instead.
        pool.on("error", () => undefined)
        try {
          await pool.query("SELECT 1")
        } catch (error) {
          await pool.end().catch(() => undefined)
          throw error
        }
        return pool
      },
      catch: (cause) =>
        new DatabaseUnavailable({
          message: `cannot connect to Postgres at ${describe(options.url)}: ${cause instanceof Error ? cause.message : String(cause)}`
        })
    }),
    (pool) => Effect.promise(() => pool.end().catch(() => undefined))
  )

/**
 * LISTEN on a dedicated connection. Unlike `PgClient.listen`, whose shared connection dies silently
 * when its backend is terminated, the stream fails when its connection breaks, so a caller that
 * repeats it listens again.
 */
export class Notifications extends Context.Tag("vibes/db/Notifications")<
  Notifications,
  { readonly listen: (channel: string) => Stream.Stream<string, SqlError> }
>() {}

const makeNotifications = (options: Options) =>
  Notifications.of({
    listen: (channel) =>
      Stream.asyncScoped<string, SqlError>((emit) =>
        Effect.acquireRelease(
          Effect.tryPromise({
            try: async () => {
              const client = new pg.Client({
                connectionString: Redacted.value(options.url),
                connectionTimeoutMillis: Duration.toMillis(options.connectTimeout),
                application_name: options.applicationName ?? "vibes",
                keepAlive: true
              })
              const broken = (cause: unknown) =>
                void emit.fail(new SqlError({ cause, message: `the LISTEN connection for ${channel} broke` }))
              client.on("error", broken)
              client.on("end", () => broken(new Error("connection ended")))
              client.on("notification", (message) => {
                if (message.channel === channel && message.payload !== undefined)
                  void emit.single(message.payload)
              })
              try {
                await client.connect()
                await client.query(`LISTEN ${pg.escapeIdentifier(channel)}`)
              } catch (error) {
                client.removeAllListeners()
                await client.end().catch(() => undefined)
                throw error
              }
              return client
            },
            catch: (cause) => new SqlError({ cause, message: `cannot LISTEN on ${channel}` })
          }),
          (client) =>
            Effect.promise(() => {
              client.removeAllListeners()
              client.on("error", () => undefined)
              return client.end().catch(() => undefined)
            }).pipe(Effect.interruptible, Effect.timeoutOption("1 second"))
        )
      )
  })

/** The node's connection pool, as gauges see it. */
export class Pool extends Context.Tag("vibes/db/Pool")<
  Pool,
  {
    /** Connections open, idle, and queries waiting for one; `max` is the configured size. */
    readonly stats: () => {
      readonly total: number
      readonly idle: number
      readonly waiting: number
      readonly max: number
    }
  }
>() {}

const poolConnections = Metric.gauge("vibes_db_pool_connections", {
  description: "Connections of the database pool, by state (in_use, idle)"
})
const poolWaiting = Metric.gauge("vibes_db_pool_waiting", {
  description: "Queries waiting for a connection of the pool"
})
const poolMax = Metric.gauge("vibes_db_pool_max", { description: "Size of the database pool" })
const inUse = Metric.tagged(poolConnections, "state", "in_use")
const idle = Metric.tagged(poolConnections, "state", "idle")

/** Sets the pool gauges (before a scrape). */
export const samplePool: Effect.Effect<void, never, Pool> = Effect.flatMap(Pool, (pool) => {
  const stats = pool.stats()
  return Effect.all(
    [
      Metric.set(inUse, stats.total - stats.idle),
      Metric.set(idle, stats.idle),
      Metric.set(poolWaiting, stats.waiting),
      Metric.set(poolMax, stats.max)
    ],
    { discard: true }
  )
})

/** The SQL client, connected (checked with `SELECT 1`, a few retries) before the layer is built. */
export const layer = (
  options: Options
): Layer.Layer<PgClient.PgClient | SqlClient | Notifications | Pool, DatabaseUnavailable> =>
  Layer.unwrapScoped(
    Effect.map(
      openPool(options).pipe(Effect.retry({ times: 3, schedule: Schedule.exponential("200 millis") })),
      (pool) =>
        PgClient.layerFromPool({
          // The pool is this layer's: it ends after the client is released.
          acquire: Effect.succeed(pool),
          applicationName: options.applicationName ?? "vibes"
        }).pipe(
          Layer.mapError((error) => new DatabaseUnavailable({ message: error.message })),
          Layer.merge(Layer.succeed(Notifications, makeNotifications(options))),
          Layer.merge(
            Layer.succeed(Pool, {
              stats: () => ({
                total: pool.totalCount,
                idle: pool.idleCount,
                waiting: pool.waitingCount,
                max: options.poolSize
              })
            })
          )
        )
    )
  )
