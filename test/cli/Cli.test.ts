import * as fs from "node:fs"
import * as path from "node:path"
import { describe, expect, it } from "@effect/vitest"
import { Deferred, Effect, Option } from "effect"
import * as DataDir from "../../infra/datadir/DataDir.js"
import * as FreePort from "../../infra/net/FreePort.js"
import { isRunning } from "../../infra/pty/PtyHostRpcs.js"
import { eventually } from "../support/Attach.js"
import { tempDir } from "../support/TempDir.js"
import * as Vibes from "../support/VibesProcess.js"

/** The last lines of `file`, for a failure to show. */
const logTail = (file: string) => {
  try {
    return fs.readFileSync(file, "utf8").trim().split("\n").slice(-20).join("\n")
  } catch {
    return "(no log)"
  }
}

// These run the real executable against a real `vibes serve` with its embedded Postgres.
const embedded = () => Vibes.childEnv({ DATABASE_URL: undefined })

describe("vibes CLI", () => {
  it.live(
    "status finds the local server and its token by itself, and reports it",
    () =>
      Effect.gen(function* () {
        const dataDir = yield* tempDir("vibes-cli-")
        const server = yield* Vibes.serve(dataDir, embedded())
        const result = yield* Vibes.run(["status", "--data-dir", dataDir])
        expect(result.stderr).toBe("")
        expect(result.code).toBe(0)
        expect(result.stdout).toContain(`at ${server.url}`)
        expect(result.stdout).toMatch(/database\s+embedded/)

        const json = yield* Vibes.run(["status", "--json", "--url", server.url], {
          ...embedded(),
          VIBES_TOKEN: fs.readFileSync(path.join(dataDir, "admin-token"), "utf8").trim()
        })
        expect(json.code).toBe(0)
        expect(JSON.parse(json.stdout)).toMatchObject({ url: server.url, database: "embedded" })

        const wrong = yield* Vibes.run(["status", "--url", server.url, "--token", "wrong-token-wrong-token"])
        expect(wrong.code).toBe(3)
        expect(wrong.stderr.trim().split("\n")).toHaveLength(1)
        expect(wrong.stderr).toContain("refused the token")
      }).pipe(Effect.scoped),
    120_000
  )

  it.live(
    "status against no server exits 1 with a one-line reason",
    () =>
      Effect.gen(function* () {
        const dataDir = yield* tempDir("vibes-cli-")
        // A port nothing listens on: one the kernel just reported free.
        const port = yield* FreePort.find()
        const url = `http://127.0.0.1:${port}`
        const result = yield* Vibes.run(["status", "--data-dir", dataDir, "--url", url, "--timeout", "5"])
        expect(result.code).toBe(1)
        expect(result.stdout).toBe("")
        expect(result.stderr.trim().split("\n")).toHaveLength(1)
        expect(result.stderr).toContain(`cannot reach vibes at ${url}: connect ECONNREFUSED`)
      }).pipe(Effect.scoped),
    60_000
  )

  it.live(
    "bad usage exits 2",
    () =>
      Effect.gen(function* () {
        const result = yield* Vibes.run(["status", "--timeout", "soon"])
        expect(result.code).toBe(2)
      }),
    60_000
  )

  it.live(
    "--version prints the package's version, from bin/vibes.js without loading the CLI and from the CLI itself",
    () =>
      Effect.gen(function* () {
        const { version } = Vibes.packageJson()
        const bin = yield* Vibes.runScript(path.join("bin", "vibes.js"), ["--version"])
        expect(bin).toMatchObject({ code: 0, stdout: `${version}\n` })
        const cli = yield* Vibes.run(["--version"])
        expect(cli.code).toBe(0)
        expect(cli.stdout.trim()).toBe(version)
      }),
    60_000
  )

  it.live(
    "a second serve on the same data dir is refused with a clear message",
    () =>
      Effect.gen(function* () {
        const dataDir = yield* tempDir("vibes-cli-")
        const first = yield* Vibes.serve(dataDir, embedded())
        const second = yield* Vibes.run(["serve", "--port", "0", "--data-dir", dataDir], embedded())
        expect(second.code).toBe(1)
        expect(second.stderr).toContain(`another vibes serve (pid ${first.child.pid}) is using ${dataDir}`)
      }).pipe(Effect.scoped),
    120_000
  )

  it.live(
    "SIGTERM stops the server with exit 0 and takes the embedded Postgres with it",
    () =>
      Effect.gen(function* () {
        const dataDir = yield* tempDir("vibes-cli-")
        const server = yield* Vibes.serve(dataDir, embedded())
        const postgres = Vibes.postmasterPid(dataDir)
        expect(postgres).toBeDefined()
        expect(DataDir.isAlive(postgres ?? -1)).toBe(true)

        server.child.kill("SIGTERM")
        const exit = yield* Deferred.await(server.exited).pipe(Effect.timeout("15 seconds"))
        expect(exit).toEqual({ code: 0, signal: null })
        expect(DataDir.isAlive(postgres ?? -1)).toBe(false)
        expect(fs.existsSync(path.join(dataDir, "vibes.lock"))).toBe(false)
        expect(fs.existsSync(path.join(dataDir, "server.json"))).toBe(false)
      }).pipe(Effect.scoped),
    120_000
  )

  it.live(
    "kill -9 of the server does not leave the embedded Postgres running",
    () =>
      Effect.gen(function* () {
        const dataDir = yield* tempDir("vibes-cli-")
        const server = yield* Vibes.serve(dataDir, embedded())
        const postgres = Vibes.postmasterPid(dataDir) ?? -1
        expect(postgres).toBeGreaterThan(0)
        expect(isRunning(postgres)).toBe(true)

        server.child.kill("SIGKILL")
        yield* Deferred.await(server.exited)
        // `isRunning` counts a zombie as stopped: in some sandboxes nothing reaps an orphan.
        yield* eventually(
          Effect.sync(() => (isRunning(postgres) ? Option.none() : Option.some(true))),
          "the embedded Postgres to stop",
          60_000
        ).pipe(
          Effect.mapError(
            (error) =>
              new Error(
                `${error.message}; postgres.log ends with:\n${logTail(path.join(dataDir, "postgres.log"))}`
              )
          )
        )
      }).pipe(Effect.scoped),
    120_000
  )

  it.live(
    "events --follow shows server start, status calls and stop live; --from resumes with nothing missed",
    () =>
      Effect.gen(function* () {
        const dataDir = yield* tempDir("vibes-cli-")
        const offsetOf = (line: string) => Number(/^#(\d+) /.exec(line)?.[1])
        const first = yield* Vibes.serve(dataDir, embedded())
        const follower = yield* Vibes.start(["events", "--follow", "--data-dir", dataDir])
        yield* follower.untilLine((line) => line.includes(" system.started "))
        expect((yield* Vibes.run(["status", "--data-dir", dataDir])).code).toBe(0)
        yield* follower.untilLine((line) => line.includes(' client.called {"rpc":"System.Info"'))
        follower.child.kill("SIGINT")
        expect(yield* Deferred.await(follower.exited)).toBe(0)
        const resume = /resume with --from (\d+)/.exec(follower.stderr())
        expect(resume).not.toBeNull()
        const from = Number(resume?.[1])
        const seen = follower.stdout.map(offsetOf)
        expect(from).toBe((seen[seen.length - 1] ?? 0) + 1)

        // While nobody follows: two status calls, a stop and a start.
        expect((yield* Vibes.run(["status", "--data-dir", dataDir])).code).toBe(0)
        expect((yield* Vibes.run(["status", "--data-dir", dataDir])).code).toBe(0)
        first.child.kill("SIGTERM")
        expect((yield* Deferred.await(first.exited)).code).toBe(0)
        yield* Vibes.serve(dataDir, embedded())

        const caughtUp = yield* Vibes.run(["events", "--from", String(from), "--data-dir", dataDir])
        expect(caughtUp.code).toBe(0)
        const lines = caughtUp.stdout.trim().split("\n")
        expect(lines.map(offsetOf)).toEqual(lines.map((_, i) => from + i))
        expect(lines.map((line) => line.split(" ")[2])).toEqual([
          "client.called",
          "client.called",
          "system.stopped",
          "system.started"
        ])

        const json = yield* Vibes.run([
          "events",
          "--from",
          "1",
          "--type",
          "system.*",
          "--json",
          "--data-dir",
          dataDir
        ])
        expect(json.code).toBe(0)
        const parsed = json.stdout
          .trim()
          .split("\n")
          .map((line) => JSON.parse(line) as { type: string; source: { component: string } })
        expect(parsed.map((e) => e.type)).toEqual(["system.started", "system.stopped", "system.started"])

        // The last match is older than the head: without --follow the command still ends there.
        expect((yield* Vibes.run(["status", "--data-dir", dataDir])).code).toBe(0)
        const older = yield* Vibes.run([
          "events",
          "--from",
          "1",
          "--type",
          "system.*",
          "--data-dir",
          dataDir
        ]).pipe(
          Effect.timeoutFail({
            duration: "30 seconds",
            onTimeout: () => new Error("vibes events --type did not end at the head")
          })
        )
        expect(older.code).toBe(0)
        expect(
          older.stdout
            .trim()
            .split("\n")
            .map((line) => line.split(" ")[2])
        ).toEqual(["system.started", "system.stopped", "system.started"])

        const bad = yield* Vibes.run(["events", "--type", "session..x", "--data-dir", dataDir])
        expect(bad.code).toBe(2)
        expect(bad.stderr).toContain("invalid type glob 'session..x'")

        // What takes the space, and what bounds it by default.
        const stats = yield* Vibes.run(["events", "stats", "--data-dir", dataDir])
        expect(stats.code).toBe(0)
        expect(stats.stdout).toMatch(/^postgres event log: head #\d+, \d+ events, /)
        expect(stats.stdout).toMatch(/^system\.started\s+2\s/m)
        expect(stats.stdout).toContain("session.output: once covered by session.snapshot, beyond 2.0 GiB")
        expect(stats.stdout).toContain("job.log: after 30 days, beyond 2.0 GiB")
        const statsJson = yield* Vibes.run(["events", "stats", "--json", "--data-dir", dataDir])
        expect(statsJson.code).toBe(0)
        const parsedStats = JSON.parse(statsJson.stdout) as {
          backend: string
          head: number
          events: number
          types: Array<{ type: string; events: number; bytes: number }>
        }
        expect(parsedStats.backend).toBe("postgres")
        expect(parsedStats.events).toBe(parsedStats.types.reduce((sum, t) => sum + t.events, 0))
        expect(parsedStats.types.find((t) => t.type === "system.stopped")?.events).toBe(1)
        expect((yield* Vibes.run(["events", "stats", "--bogus", "--data-dir", dataDir])).code).toBe(2)
      }).pipe(Effect.scoped),
    180_000
  )
})
