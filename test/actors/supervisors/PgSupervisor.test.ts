import * as fs from "node:fs"
import * as path from "node:path"
import pg from "pg"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Option, Redacted, Scope, Stream } from "effect"
import * as PgSupervisor from "../../../actors/supervisors/PgSupervisor.js"
import * as DataDir from "../../../infra/datadir/DataDir.js"
import { tempDir } from "../../support/TempDir.js"

const selectOne = (url: Redacted.Redacted<string>) =>
  Effect.promise(async () => {
    const client = new pg.Client({ connectionString: Redacted.value(url) })
    await client.connect()
    try {
      const result = await client.query<{ answer: number }>("SELECT 41 + 1 AS answer")
      return result.rows[0]?.answer
    } finally {
      await client.end()
    }
  })

const pidOf = (supervisor: PgSupervisor.PgSupervisor["Type"]) =>
  supervisor.pid.pipe(Effect.map(Option.getOrThrowWith(() => new Error("no postgres is running"))))

describe("embedded Postgres supervisor", () => {
  it.live(
    "starts a queryable server, restarts it after kill -9, and leaves no process after stop",
    () =>
      Effect.gen(function* () {
        const dir = yield* tempDir("vibes-sup-")
        const scope = yield* Scope.make()
        yield* Effect.acquireRelease(
          Effect.sync(() => {
            const saved = { key: process.env["ANTHROPIC_API_KEY"], token: process.env["VIBES_TOKEN"] }
            process.env["ANTHROPIC_API_KEY"] = "sk-ant-test-secret-not-for-postgres"
            process.env["VIBES_TOKEN"] = "a-vibes-token-not-for-postgres"
            return saved
          }),
          (saved) =>
            Effect.sync(() => {
              for (const [name, value] of [
                ["ANTHROPIC_API_KEY", saved.key],
                ["VIBES_TOKEN", saved.token]
              ] as const) {
                if (value === undefined) delete process.env[name]
                else process.env[name] = value
              }
            })
        )
        const supervisor = yield* PgSupervisor.make({ dataDir: dir, maxRestarts: 5 }).pipe(
          Scope.extend(scope)
        )

        expect(yield* supervisor.status.get).toBe("running")
        expect(yield* selectOne(supervisor.url)).toBe(42)
        expect(fs.existsSync(path.join(dir, "postgres", "PG_VERSION"))).toBe(true)
        expect(fs.statSync(path.join(dir, "postgres.password")).mode & 0o777).toBe(0o600)

        const first = yield* pidOf(supervisor)
        // Like any child of the server, Postgres gets none of its secrets.
        const environ = fs.readFileSync(`/proc/${first}/environ`, "latin1").split("\0")
        expect(
          environ.filter((entry) => /^(ANTHROPIC_API_KEY|VIBES_TOKEN|DATABASE_URL)=/.test(entry))
        ).toEqual([])
        expect(environ.some((entry) => entry.startsWith("PATH="))).toBe(true)
        const restartedWithNewPid = supervisor.status.changes.pipe(
          Stream.filter((status) => status === "running"),
          Stream.mapEffect(() => supervisor.pid),
          Stream.filter((pid) => Option.isSome(pid) && pid.value !== first),
          Stream.runHead
        )
        const waiter = yield* Effect.fork(restartedWithNewPid)
        process.kill(first, "SIGKILL")
        yield* waiter.await
        expect(yield* supervisor.restarts).toBe(1)
        expect(yield* selectOne(supervisor.url)).toBe(42)

        const second = yield* pidOf(supervisor)
        yield* Scope.close(scope, Exit.void)
        expect(yield* supervisor.status.get).toBe("stopped")
        expect(DataDir.isAlive(second)).toBe(false)
      }).pipe(Effect.scoped),
    120_000
  )

  it.live(
    "keeps the data across a stop and a start on the same directory",
    () =>
      Effect.gen(function* () {
        const dir = yield* tempDir("vibes-sup-")
        const write = Effect.scoped(
          Effect.gen(function* () {
            const supervisor = yield* PgSupervisor.make({ dataDir: dir, maxRestarts: 1 })
            yield* Effect.promise(async () => {
              const client = new pg.Client({ connectionString: Redacted.value(supervisor.url) })
              await client.connect()
              await client.query("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('still here')")
              await client.end()
            })
          })
        )
        yield* write
        const value = yield* Effect.scoped(
          Effect.gen(function* () {
            const supervisor = yield* PgSupervisor.make({ dataDir: dir, maxRestarts: 1 })
            return yield* Effect.promise(async () => {
              const client = new pg.Client({ connectionString: Redacted.value(supervisor.url) })
              await client.connect()
              const result = await client.query<{ v: string }>("SELECT v FROM kept")
              await client.end()
              return result.rows[0]?.v
            })
          })
        )
        expect(value).toBe("still here")
      }).pipe(Effect.scoped),
    120_000
  )
})
