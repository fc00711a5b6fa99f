import { describe, expect, it, layer } from "@effect/vitest"
import { Context, Deferred, Duration, Effect, Layer, Stream } from "effect"
import * as Client from "../../rpc/Client.js"
import { exitCodeOf, parseDuration } from "../../src/cli/JobCommands.js"
import { clientLayer } from "../support/Attach.js"
import * as TestServer from "../support/TestServer.js"
import * as Vibes from "../support/VibesProcess.js"

class Node extends Context.Tag("test/Node")<Node, TestServer.Running>() {}

const NodeLive = Layer.scoped(Node, TestServer.startWith({ jobKillGrace: Duration.seconds(1) }))

const envOf = (server: TestServer.Running) =>
  Vibes.childEnv({ VIBES_URL: server.url, VIBES_TOKEN: server.token })

/** `vibes <args>` against the test node, to completion. */
const vibes = (args: ReadonlyArray<string>) =>
  Effect.flatMap(Node, (server) => Vibes.run(args, envOf(server)))

const rpc = Effect.flatMap(Node, (server) =>
  Effect.map(Layer.build(clientLayer(server.url, server.token)), Context.get(Client.VibesClient))
)

/** Follows a job's output until its stdout has printed `text`: the job is running by then. */
const untilPrinted = (client: Client.Client, jobId: string, text: string) =>
  client.Jobs.Logs({ jobId, follow: true }).pipe(
    Stream.scan("", (stdout, o) =>
      o._tag === "JobLog" && o.stream === "stdout" ? stdout + o.chunk : stdout
    ),
    Stream.takeUntil((stdout) => stdout.includes(text)),
    Stream.runDrain,
    Effect.timeoutFail({
      duration: "20 seconds",
      onTimeout: () => new Error(`job ${jobId} never printed ${text}`)
    })
  )

const jobIdIn = (stderr: string) => /^job ([0-9a-f-]{36}) queued$/m.exec(stderr)?.[1] ?? ""

describe("job exit codes", () => {
  it("follow the job's end: its code, 128 + a signal, 130 when canceled, 1 otherwise", () => {
    expect(exitCodeOf({ status: "succeeded", exitCode: 0, signal: null })).toBe(0)
    expect(exitCodeOf({ status: "failed", exitCode: 7, signal: null })).toBe(7)
    expect(exitCodeOf({ status: "failed", exitCode: null, signal: "SIGKILL" })).toBe(137)
    expect(exitCodeOf({ status: "failed", exitCode: null, signal: null })).toBe(1)
    expect(exitCodeOf({ status: "timed_out", exitCode: null, signal: "SIGTERM" })).toBe(1)
    expect(exitCodeOf({ status: "dead", exitCode: 3, signal: null })).toBe(1)
    expect(exitCodeOf({ status: "canceled", exitCode: null, signal: "SIGTERM" })).toBe(130)
  })

  it("durations read as 90s, 10m, 1h30m, 500ms or bare seconds", () => {
    expect(parseDuration("90s")).toBe(90_000)
    expect(parseDuration("10m")).toBe(600_000)
    expect(parseDuration("1h30m")).toBe(5_400_000)
    expect(parseDuration("500ms")).toBe(500)
    expect(parseDuration("30")).toBe(30_000)
    expect(parseDuration("soon")).toBeUndefined()
  })
})

layer(NodeLive, { timeout: 120_000, excludeTestServices: true })("job commands", (it) => {
  it.scoped("vibes run streams stdout and stderr apart and exits with the job's exit code", () =>
    Effect.gen(function* () {
      const result = yield* vibes(["run", "--", "sh", "-c", "echo out; echo err >&2; exit 7"])
      expect(result.stdout).toBe("out\n")
      expect(result.stderr).toMatch(/^job [0-9a-f-]{36} queued$/m)
      expect(result.stderr).toMatch(/^err$/m)
      expect(result.stderr).toContain("[vibes] failed: exit code 7")
      expect(result.code).toBe(7)
    })
  )

  it.scoped("a detached job is listed as running; cancel stops it and its logs tell of the cancel", () =>
    Effect.gen(function* () {
      const client = yield* rpc
      const submitted = yield* vibes(["run", "--detach", "--", "sh", "-c", "echo started; exec sleep 30"])
      expect(submitted.code).toBe(0)
      const id = submitted.stdout.trim()
      expect(id).toMatch(/^[0-9a-f-]{36}$/)
      yield* untilPrinted(client, id, "started")

      const listed = yield* vibes(["jobs"])
      expect(listed.code).toBe(0)
      expect(listed.stdout.split("\n")[0]).toMatch(
        /^ID\s+STATUS\s+EXIT\s+STRATEGY\s+STARTED\s+DURATION\s+COMMAND$/
      )
      const row = listed.stdout.split("\n").find((line) => line.startsWith(id))
      expect(row).toMatch(/^\S+\s+running\s+-\s+stream\s+.*sh -c "echo started; exec sleep 30"$/)

      const canceled = yield* vibes(["cancel", id])
      expect(canceled.stdout).toBe(`job ${id} canceled\n`)
      expect(canceled.code).toBe(0)

      const logs = yield* vibes(["logs", id])
      expect(logs.code).toBe(0)
      expect(logs.stdout).toBe("started\n")
      expect(logs.stderr).toContain("[vibes] cancel requested: sending SIGTERM to the process group\n")
      expect(logs.stderr).toContain("[vibes] canceled (SIGTERM)\n")
    })
  )

  it.scoped("Ctrl-C during vibes run cancels the job, waits for it to stop and exits 130", () =>
    Effect.gen(function* () {
      const server = yield* Node
      const client = yield* rpc
      const running = yield* Vibes.start(
        ["run", "--", "sh", "-c", "echo ready; exec sleep 30"],
        envOf(server)
      )
      yield* running.untilLine((line) => line === "ready")
      running.child.kill("SIGINT")
      expect(yield* Deferred.await(running.exited)).toBe(130)
      expect(running.stderr()).toContain("[vibes] canceled (SIGTERM)")
      const job = yield* client.Jobs.Get({ jobId: jobIdIn(running.stderr()) })
      expect(job.status).toBe("canceled")
    })
  )

  it.scoped("an unknown job exits 1; a bad limit or SSH target exits 2 before asking the server", () =>
    Effect.gen(function* () {
      const [unknown, limit, ssh] = yield* Effect.all(
        [
          vibes(["logs", "0193d9b4-7c1e-7a2b-9c3d-4e5f60718293"]),
          vibes(["jobs", "--limit", "0"]),
          vibes(["run", "--ssh", "not a target", "--", "true"])
        ],
        { concurrency: "unbounded" }
      )
      expect(unknown.code).toBe(1)
      expect(unknown.stderr).toContain("no job has the id 0193d9b4-7c1e-7a2b-9c3d-4e5f60718293")
      expect(limit.code).toBe(2)
      expect(limit.stderr).toContain("--limit must be between 1 and 1000")
      expect(ssh.code).toBe(2)
      expect(ssh.stderr).toContain("--ssh takes user@host[:port]")
    })
  )

  it.scoped("vibes --help lists the job commands; vibes run --help explains run with examples", () =>
    Effect.gen(function* () {
      const [root, run] = yield* Effect.all([vibes(["--help"]), vibes(["run", "--help"])], {
        concurrency: "unbounded"
      })
      expect(root.code).toBe(0)
      for (const command of ["run", "jobs", "logs", "cancel"]) {
        expect(root.stdout).toMatch(new RegExp(`^  - ${command} \\[`, "m"))
      }
      expect(run.code).toBe(0)
      expect(run.stdout).toContain("Ctrl-C cancels the job")
      expect(run.stdout).toContain("Examples: `vibes run -- make test`")
    })
  )
})
