import * as fs from "node:fs"
import * as net from "node:net"
import * as path from "node:path"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Redacted, Schema } from "effect"
import * as FreePort from "../../infra/net/FreePort.js"
import * as TestDatabase from "../support/TestDatabase.js"
import * as TestServer from "../support/TestServer.js"
import { tempDir } from "../support/TempDir.js"
import * as Vibes from "../support/VibesProcess.js"

const Report = Schema.parseJson(
  Schema.Struct({
    ok: Schema.Boolean,
    checks: Schema.Array(
      Schema.Struct({
        name: Schema.String,
        status: Schema.Literal("OK", "WARN", "FAIL"),
        detail: Schema.String,
        fix: Schema.optional(Schema.String)
      })
    )
  })
)

/** `vibes doctor --json` with `args`, against `databaseUrl` (or the embedded Postgres). */
const doctor = (args: ReadonlyArray<string>, databaseUrl: string | undefined) =>
  Effect.gen(function* () {
    const result = yield* Vibes.run(
      ["doctor", "--json", ...args],
      Vibes.childEnv({ DATABASE_URL: databaseUrl })
    )
    const report = yield* Schema.decodeUnknown(Report)(result.stdout)
    const byName = new Map(report.checks.map((check) => [check.name, check]))
    return { result, report, check: (name: string) => byName.get(name) }
  })

/** A private data directory, as `vibes serve` makes it. */
const privateDir = Effect.tap(tempDir("vibes-doctor-"), (dir) => Effect.sync(() => fs.chmodSync(dir, 0o700)))

describe("vibes doctor", () => {
  it.scopedLive(
    "on a machine that can run a node, every check passes or warns and it exits 0",
    () =>
      Effect.gen(function* () {
        const { url } = yield* TestDatabase.databaseUrl
        const dataDir = yield* privateDir
        const port = yield* FreePort.find()
        const { result, report, check } = yield* doctor(
          ["--data-dir", dataDir, "--port", String(port)],
          Redacted.value(url)
        )
        expect(result.code, result.stderr).toBe(0)
        expect(report.ok).toBe(true)
        expect(report.checks.map((c) => c.name)).toEqual([
          "node",
          "node-pty",
          "database",
          "data-dir",
          "disk",
          "port",
          "pty-host",
          "nats-server",
          "chromium"
        ])
        expect(report.checks.filter((c) => c.status === "FAIL")).toEqual([])
        expect(check("node")?.detail).toContain(process.versions.node)
        expect(check("node-pty")?.status).toBe("OK")
        expect(check("database")?.detail).toMatch(/^Postgres \d+/)
        expect(check("data-dir")).toMatchObject({ status: "OK", detail: `${dataDir} (mode 700)` })
        expect(check("port")).toMatchObject({ status: "OK", detail: `127.0.0.1:${port} is free` })
        expect(check("pty-host")?.detail).toContain("not running")
      }),
    60_000
  )

  it.scopedLive(
    "prints each check with its status, and a fix under each problem",
    () =>
      Effect.gen(function* () {
        const dataDir = yield* tempDir("vibes-doctor-")
        fs.chmodSync(dataDir, 0o755)
        const port = yield* FreePort.find()
        const result = yield* Vibes.run(
          ["doctor", "--data-dir", dataDir, "--port", String(port)],
          Vibes.childEnv({ DATABASE_URL: `postgres://postgres@127.0.0.1:${port}/nothing` })
        )
        expect(result.code).toBe(1)
        expect(result.stderr.trim()).toBe("vibes: 1 of 9 checks failed: database")
        const lines = result.stdout.split("\n")
        expect(lines[0]).toContain(`doctor (data dir ${dataDir})`)
        const database = lines.findIndex((line) => line.startsWith("FAIL  database"))
        expect(lines[database]).toContain(`cannot connect to Postgres at 127.0.0.1:${port}/nothing`)
        expect(lines[database + 1]?.trim()).toMatch(/^fix: start that Postgres or correct DATABASE_URL/)
        const dir = lines.findIndex((line) => line.startsWith("WARN  data-dir"))
        expect(lines[dir]).toContain("open to other users (mode 755)")
        expect(lines[dir + 1]?.trim()).toBe(`fix: chmod 700 ${dataDir}`)
        expect(lines.some((line) => line.startsWith("OK    node "))).toBe(true)
      }),
    60_000
  )

  it.scopedLive(
    "a port held by a running vibes is fine; one held by another program fails",
    () =>
      Effect.gen(function* () {
        const { url } = yield* TestDatabase.databaseUrl
        const server = yield* TestServer.start
        const dataDir = yield* privateDir
        const held = yield* doctor(
          ["--data-dir", dataDir, "--port", new URL(server.url).port],
          Redacted.value(url)
        )
        expect(held.check("port")).toMatchObject({
          status: "OK",
          detail: `${new URL(server.url).host} is held by a running vibes`
        })
        const other = net.createServer()
        const port = yield* Effect.async<number>((resume) => {
          other.listen(0, "127.0.0.1", () => {
            const address = other.address()
            resume(Effect.succeed(typeof address === "object" && address !== null ? address.port : 0))
          })
        })
        yield* Effect.addFinalizer(() => Effect.sync(() => other.close()))
        // It accepts and says nothing, as a program that is not vibes would.
        other.on("connection", (socket) => socket.end())
        const taken = yield* doctor(["--data-dir", dataDir, "--port", String(port)], Redacted.value(url))
        expect(taken.result.code).toBe(1)
        expect(taken.report.ok).toBe(false)
        expect(taken.check("port")).toMatchObject({
          status: "FAIL",
          detail: `127.0.0.1:${port} is held by another program`,
          fix: "stop that program, or run vibes on another --port / VIBES_PORT"
        })
      }),
    90_000
  )

  it.scopedLive(
    "sees a running PTY host, and fails a data dir too long for its socket",
    () =>
      Effect.gen(function* () {
        const { url } = yield* TestDatabase.databaseUrl
        const server = yield* TestServer.start
        const running = yield* doctor(["--data-dir", server.dataDir, "--port", "0"], Redacted.value(url))
        expect(running.check("pty-host")?.detail).toMatch(/^running \(pid \d+, socket /)
        const base = yield* privateDir
        const deep = path.join(base, "d".repeat(60), "e".repeat(60))
        fs.mkdirSync(deep, { recursive: true, mode: 0o700 })
        const long = yield* doctor(["--data-dir", deep, "--port", "0"], Redacted.value(url))
        expect(long.result.code).toBe(1)
        expect(long.check("pty-host")).toMatchObject({
          status: "FAIL",
          fix: "choose a shorter --data-dir / VIBES_DATA_DIR"
        })
      }),
    90_000
  )

  it.live(
    "--help describes it; a bad --port or configuration exits 2",
    () =>
      Effect.gen(function* () {
        const help = yield* Vibes.run(["doctor", "--help"])
        expect(help.code).toBe(0)
        expect(help.stdout).toContain("print a fix for each problem")
        expect(help.stdout).toContain("--json")
        expect((yield* Vibes.run(["doctor", "--port", "70000"])).code).toBe(2)
        const badEnv = yield* Vibes.run(["doctor"], Vibes.childEnv({ VIBES_PORT: "many" }))
        expect(badEnv.code).toBe(2)
        expect(badEnv.stderr).toContain("VIBES_PORT")
      }),
    60_000
  )
})
