/**
 * The Postgres client of a node: an `@effect/sql-pg` client over a `pg` pool whose size,
 * connect timeout and per-statement timeout come from configuration.
 */
import pg from "pg"
import { Duration, Effect, Layer, Redacted, Schedule, Schema } from "effect"
import * as PgClient from "@effect/sql-pg/PgClient"
import type { SqlClient } from "@effect/sql/SqlClient"
import { SqlError } from "@effect/sql/SqlError"

/** The database cannot be reached. */
export class DatabaseUnavailable extends Schema.TaggedError<DatabaseUnavailable>()("DatabaseUnavailable", {
  message: Schema.String
}) {}

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

/** The SQL client, connected (checked with `SELECT 1`, a few retries) before the layer is built. */
export const layer = (options: Options): Layer.Layer<PgClient.PgClient | SqlClient, DatabaseUnavailable> =>
  PgClient.layerFromPool({
    acquire: openPool(options).pipe(
      Effect.retry({ times: 3, schedule: Schedule.exponential("200 millis") }),
      Effect.mapError((error) => new SqlError({ cause: error, message: error.message }))
    ),
    applicationName: options.applicationName ?? "vibes"
  }).pipe(Layer.mapError((error) => new DatabaseUnavailable({ message: error.message })))
