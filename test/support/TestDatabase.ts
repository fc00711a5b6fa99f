/**
 * A database of its own for each test suite: a fresh database on `DATABASE_URL` when it is set
 * (dropped afterwards), else on the run's shared embedded Postgres (`SharedPostgres.ts`), else —
 * outside vitest — a fresh embedded Postgres in a temporary directory.
 */
import * as crypto from "node:crypto"
import pg from "pg"
import { Effect, Layer, Redacted } from "effect"
import * as PgSupervisor from "../../actors/supervisors/PgSupervisor.js"
import * as Db from "../../infra/db/Db.js"
import { tempDir } from "./TempDir.js"

const adminQuery = (url: string, text: string) =>
  Effect.promise(async () => {
    const client = new pg.Client({ connectionString: url })
    await client.connect()
    try {
      await client.query(text)
    } finally {
      await client.end()
    }
  })

/**
 * The server suites share: `DATABASE_URL`, else the run's embedded Postgres, else none. vitest is
 * imported lazily: importing it outside a vitest worker (a benchmark) throws.
 */
const sharedServer = Effect.gen(function* () {
  const external = process.env["DATABASE_URL"]
  if (external !== undefined && external !== "") return external
  const shared = yield* Effect.tryPromise(() => import("vitest")).pipe(
    Effect.flatMap(({ inject }) => Effect.try(() => inject("sharedPostgresUrl"))),
    Effect.orElseSucceed(() => "")
  )
  return shared === "" ? undefined : shared
})

/**
 * URL of a fresh database named `<prefix>_<random>` on the shared server (dropped with the
 * scope), or of a new embedded Postgres in a temporary directory when there is none.
 */
export const freshDatabase = (prefix: string) =>
  Effect.gen(function* () {
    const external = yield* sharedServer
    if (external !== undefined && external !== "") {
      const name = `${prefix}_${crypto.randomBytes(6).toString("hex")}`
      yield* Effect.acquireRelease(adminQuery(external, `CREATE DATABASE ${name}`), () =>
        adminQuery(external, `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`).pipe(Effect.orDie)
      )
      const url = new URL(external)
      url.pathname = `/${name}`
      return { url: Redacted.make(url.toString()), kind: "external" as const }
    }
    const dir = yield* tempDir(`${prefix}-pg-`)
    const supervisor = yield* PgSupervisor.make({ dataDir: dir, maxRestarts: 3 })
    return { url: supervisor.url, kind: "embedded" as const }
  })

/** URL of a database no other suite uses, for the life of the scope. */
export const databaseUrl = freshDatabase("vibes_test")

/** The SQL client on a suite-private database. */
export const layerSql = Layer.unwrapScoped(
  Effect.map(databaseUrl, ({ url }) =>
    Db.layer({ url, poolSize: 5, connectTimeout: "10 seconds", queryTimeout: "30 seconds" })
  )
)
