/**
 * What every benchmark needs: a database of its own, a description of the machine it ran on,
 * options from the environment, timing helpers, and results printed as Markdown table rows.
 *
 * The database is a fresh one on the server of `DATABASE_URL` when that is set (dropped at the
 * end), else a fresh embedded Postgres in a temporary directory (removed at the end).
 */
import * as fs from "node:fs"
import * as os from "node:os"
import pg from "pg"
import { Effect, Layer, Logger, Redacted, Schema, type Scope } from "effect"
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import * as Db from "../../infra/db/Db.js"
import * as Migrations from "../../infra/db/Migrations.js"
import * as TestDatabase from "../../test/support/TestDatabase.js"

/** Preparing or measuring a benchmark failed. */
export class BenchError extends Schema.TaggedError<BenchError>()("BenchError", {
  message: Schema.String
}) {}

const messageOf = (cause: unknown): string => (cause instanceof Error ? cause.message : String(cause))

// Options -----------------------------------------------------------------------------------

/** A positive integer from the environment, or `fallback` when unset. */
export const envInt = (name: string, fallback: number): number => {
  const raw = process.env[name]
  if (raw === undefined || raw === "") return fallback
  const value = Number(raw.replaceAll("_", ""))
  if (!Number.isSafeInteger(value) || value <= 0) {
    throw new Error(`${name} must be a positive integer, got '${raw}'`)
  }
  return value
}

/** A comma-separated list of positive integers from the environment, or `fallback` when unset. */
export const envInts = (name: string, fallback: ReadonlyArray<number>): ReadonlyArray<number> => {
  const raw = process.env[name]
  if (raw === undefined || raw === "") return fallback
  return raw.split(",").map((part) => {
    const value = Number(part.trim())
    if (!Number.isSafeInteger(value) || value <= 0) {
      throw new Error(`${name} must be positive integers separated by commas, got '${raw}'`)
    }
    return value
  })
}

/** A comma-separated list of words from the environment, or `fallback` when unset. */
export const envList = (name: string, fallback: ReadonlyArray<string>): ReadonlyArray<string> => {
  const raw = process.env[name]
  if (raw === undefined || raw === "") return fallback
  return raw
    .split(",")
    .map((part) => part.trim())
    .filter((part) => part !== "")
}

// Database ----------------------------------------------------------------------------------

/** A database that lives as long as the benchmark's scope. */
export interface BenchDatabase {
  readonly url: Redacted.Redacted<string>
  readonly kind: "external" | "embedded"
  /** `host:port/database`, without credentials. */
  readonly where: string
}

/** A fresh database: on `DATABASE_URL`'s server when set, else in a new embedded Postgres. */
export const database: Effect.Effect<BenchDatabase, BenchError, Scope.Scope> = TestDatabase.freshDatabase(
  "vibes_bench"
).pipe(
  Effect.map(({ kind, url }) => ({ url, kind, where: Db.describe(url) })),
  Effect.mapError((error) => new BenchError({ message: messageOf(error) }))
)

/** The vibes SQL client on `db`, with the vibes schema migrated, as the server would build it. */
export const sqlLayer = (db: BenchDatabase, poolSize = 10) =>
  Layer.effectDiscard(Migrations.run).pipe(
    Layer.provideMerge(
      Db.layer({ url: db.url, poolSize, connectTimeout: "10 seconds", queryTimeout: "120 seconds" })
    ),
    Layer.mapError((error) => new BenchError({ message: error.message }))
  )

/** A plain `pg` connection for baselines, closed with the scope. */
export const rawClient = (db: BenchDatabase): Effect.Effect<pg.Client, BenchError, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.tryPromise({
      try: async () => {
        const client = new pg.Client({ connectionString: Redacted.value(db.url) })
        client.on("error", () => undefined)
        await client.connect()
        return client
      },
      catch: (cause) => new BenchError({ message: `cannot connect: ${messageOf(cause)}` })
    }),
    (client) => Effect.promise(() => client.end().catch(() => undefined))
  )

/** One query on a plain connection. */
export const rawQuery = <R extends pg.QueryResultRow = pg.QueryResultRow>(
  client: pg.Client,
  text: string,
  values?: ReadonlyArray<unknown>
): Effect.Effect<pg.QueryResult<R>, BenchError> =>
  Effect.tryPromise({
    try: () => client.query<R>(text, values === undefined ? undefined : [...values]),
    catch: (cause) => new BenchError({ message: `${text.trim().slice(0, 60)}…: ${messageOf(cause)}` })
  })

// Machine -----------------------------------------------------------------------------------

/** Where a benchmark ran. */
export interface Machine {
  readonly cpu: string
  readonly cores: number
  readonly memoryGiB: number
  readonly os: string
  readonly node: string
  readonly postgres: string
  readonly database: string
  readonly settings: string
}

const cpuModel = (): string => {
  try {
    const line = fs
      .readFileSync("/proc/cpuinfo", "utf8")
      .split("\n")
      .find((l) => l.startsWith("model name"))
    if (line !== undefined) return line.slice(line.indexOf(":") + 1).trim()
  } catch {
    // Not Linux: fall back to what Node reports.
  }
  return os.cpus()[0]?.model ?? "unknown"
}

/** Describes this machine and the Postgres server behind `db`. */
export const machine = (db: BenchDatabase): Effect.Effect<Machine, BenchError, Scope.Scope> =>
  Effect.gen(function* () {
    const client = yield* rawClient(db)
    const setting = (name: string) =>
      rawQuery<{ value: string }>(client, `SELECT current_setting('${name}') AS value`).pipe(
        Effect.map((result) => result.rows[0]?.value ?? "?")
      )
    const version = yield* setting("server_version")
    const settings = yield* Effect.forEach(
      ["synchronous_commit", "fsync", "shared_buffers", "wal_level"],
      (name) => Effect.map(setting(name), (value) => `${name}=${value}`)
    )
    return {
      cpu: cpuModel(),
      cores: os.cpus().length,
      memoryGiB: Math.round(os.totalmem() / 2 ** 30),
      os: `${os.type()} ${os.release()}`,
      node: process.version,
      postgres: version,
      database: `${db.kind === "external" ? "DATABASE_URL" : "embedded Postgres"} (${db.where})`,
      settings: settings.join(", ")
    }
  })

/** The machine as Markdown bullet lines. */
export const machineMarkdown = (m: Machine): string =>
  [
    `- CPU: ${m.cpu}, ${m.cores} cores; memory ${m.memoryGiB} GiB; ${m.os}`,
    `- Node ${m.node}; Postgres ${m.postgres} on ${m.database}`,
    `- Postgres settings: ${m.settings}`,
    `- Date: ${new Date().toISOString()}`
  ].join("\n")

// Measuring ---------------------------------------------------------------------------------

/** Milliseconds since an arbitrary origin, sub-millisecond precise. */
export const now = (): number => performance.now()

/** The `p`-th percentile (0–100, nearest rank) of `values`; NaN when empty. */
export const percentile = (values: ReadonlyArray<number>, p: number): number => {
  if (values.length === 0) return Number.NaN
  const sorted = [...values].sort((a, b) => a - b)
  const rank = Math.min(sorted.length, Math.max(1, Math.ceil((p / 100) * sorted.length)))
  return sorted[rank - 1] ?? Number.NaN
}

/** The median of `values`. */
export const median = (values: ReadonlyArray<number>): number => percentile(values, 50)

/** Times `effect`, returning its value and the elapsed milliseconds. */
export const timed = <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<[A, number], E, R> =>
  Effect.suspend(() => {
    const start = now()
    return Effect.map(effect, (a): [A, number] => [a, now() - start])
  })

// Printing ----------------------------------------------------------------------------------

/** A whole number with thousands separators: 52,340. */
export const count = (n: number): string =>
  Number.isFinite(n) ? Math.round(n).toLocaleString("en-US") : "n/a"

/** A ratio with two decimals: 0.83x. */
export const ratio = (a: number, b: number): string =>
  Number.isFinite(a) && Number.isFinite(b) && b > 0 ? `${(a / b).toFixed(2)}x` : "n/a"

/** Milliseconds with up to two decimals. */
export const millis = (ms: number): string =>
  Number.isFinite(ms) ? (ms >= 100 ? ms.toFixed(0) : ms.toFixed(2)) : "n/a"

/** One Markdown table row. */
export const row = (cells: ReadonlyArray<string | number>): string => `| ${cells.join(" | ")} |`

/** A Markdown table header: the names, then the separator row. */
export const header = (names: ReadonlyArray<string>): string =>
  [row(names), row(names.map(() => "---"))].join("\n")

/** Prints a line to stdout (the results); progress goes to stderr. */
export const print = (line: string): Effect.Effect<void> => Effect.sync(() => console.log(line))

/** Prints progress to stderr, so stdout holds only the results. */
export const progress = (line: string): Effect.Effect<void> => Effect.sync(() => console.error(`… ${line}`))

/** Runs a benchmark's main effect, with its resources released on exit or Ctrl-C; logs go to stderr. */
export const run = <A, E>(main: Effect.Effect<A, E, Scope.Scope>): void =>
  NodeRuntime.runMain(
    Effect.scoped(main).pipe(
      Effect.provide(Logger.replace(Logger.defaultLogger, Logger.withConsoleError(Logger.logfmtLogger)))
    ),
    { disablePrettyLogger: true }
  )
