import * as childProcess from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"
import { connect } from "@nats-io/transport-node"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Option, Redacted, Schedule, Scope, Stream } from "effect"
import * as NatsSupervisor from "../../../actors/supervisors/NatsSupervisor.js"
import * as DataDir from "../../../infra/datadir/DataDir.js"
import * as FreePort from "../../../infra/net/FreePort.js"
import { tempDir } from "../../support/TempDir.js"

/** Round-trips a request through the server with the client `token`. */
const echo = (url: string, token: string | undefined) =>
  Effect.promise(async () => {
    const nc = await connect({
      servers: url,
      ...(token !== undefined ? { token } : {}),
      maxReconnectAttempts: 0
    })
    try {
      const sub = nc.subscribe("echo")
      void (async () => {
        for await (const message of sub) message.respond(message.data)
      })()
      const reply = await nc.request("echo", "hello", { timeout: 2000 })
      return reply.string()
    } finally {
      await nc.close()
    }
  })

const refused = (url: string) =>
  Effect.promise(() =>
    connect({ servers: url, maxReconnectAttempts: 0 }).then(
      async (nc) => {
        await nc.close()
        return false
      },
      () => true
    )
  )

const pidOf = (supervisor: NatsSupervisor.NatsSupervisor["Type"]) =>
  supervisor.pid.pipe(Effect.map(Option.getOrThrowWith(() => new Error("no nats-server is running"))))

const gone = (pid: number) =>
  Effect.suspend(() => (DataDir.isAlive(pid) ? Effect.fail("alive") : Effect.succeed(true))).pipe(
    Effect.retry(Schedule.spaced("50 millis").pipe(Schedule.upTo("10 seconds"))),
    Effect.orElseSucceed(() => false)
  )

describe("nats-server supervisor", () => {
  it.live(
    "starts a server that answers with its token only, restarts it after kill -9, and leaves no process after stop",
    () =>
      Effect.gen(function* () {
        const dir = yield* tempDir("vibes-nats-sup-")
        const scope = yield* Scope.make()
        yield* Effect.acquireRelease(
          Effect.sync(() => {
            const saved = process.env["VIBES_TOKEN"]
            process.env["VIBES_TOKEN"] = "a-vibes-token-not-for-nats"
            return saved
          }),
          (saved) =>
            Effect.sync(() => {
              if (saved === undefined) delete process.env["VIBES_TOKEN"]
              else process.env["VIBES_TOKEN"] = saved
            })
        )
        const supervisor = yield* NatsSupervisor.make({ dataDir: dir, maxRestarts: 3 }).pipe(
          Scope.extend(scope)
        )
        const token = Redacted.value(supervisor.token)

        expect(yield* supervisor.status.get).toBe("running")
        expect(yield* echo(supervisor.url, token)).toBe("hello")
        expect(yield* refused(supervisor.url)).toBe(true)
        expect(fs.statSync(path.join(dir, "nats", "token")).mode & 0o777).toBe(0o600)

        const first = yield* pidOf(supervisor)
        const environ = fs.readFileSync(`/proc/${first}/environ`, "latin1").split("\0")
        expect(environ.filter((entry) => entry.startsWith("VIBES_"))).toEqual([])
        expect(fs.readFileSync(`/proc/${first}/cmdline`, "latin1")).not.toContain(token)

        const restarted = yield* supervisor.status.changes.pipe(
          Stream.filter((status) => status === "running"),
          Stream.mapEffect(() => supervisor.pid),
          Stream.filter((pid) => Option.isSome(pid) && pid.value !== first),
          Stream.runHead,
          Effect.fork
        )
        process.kill(first, "SIGKILL")
        yield* restarted.await
        expect(yield* supervisor.restarts).toBe(1)
        expect(yield* echo(supervisor.url, token)).toBe("hello")

        const second = yield* pidOf(supervisor)
        yield* Scope.close(scope, Exit.void)
        expect(yield* supervisor.status.get).toBe("stopped")
        expect(DataDir.isAlive(second)).toBe(false)
      }).pipe(Effect.scoped),
    60_000
  )

  it.live("stops a server an earlier run left behind on the same data dir before it starts its own", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir("vibes-nats-sup-")
      const binary = yield* NatsSupervisor.findBinary()
      const home = path.join(dir, "nats")
      fs.mkdirSync(home, { recursive: true })
      const port = yield* FreePort.find()
      // What a vibes killed with SIGKILL leaves: a server with its pid file, nobody to stop it.
      const orphan = childProcess.spawn(
        binary,
        [
          "-js",
          "-a",
          "127.0.0.1",
          "-p",
          String(port),
          "-sd",
          path.join(home, "store"),
          "-P",
          path.join(home, "nats-server.pid")
        ],
        { stdio: "ignore", detached: true }
      )
      yield* Effect.addFinalizer(() => Effect.sync(() => orphan.kill("SIGKILL")))
      const orphanPid = orphan.pid ?? 0
      yield* Effect.suspend(() =>
        fs.existsSync(path.join(home, "nats-server.pid")) ? Effect.void : Effect.fail("no pid file yet")
      ).pipe(Effect.retry(Schedule.spaced("25 millis").pipe(Schedule.upTo("10 seconds"))))

      const supervisor = yield* NatsSupervisor.make({ dataDir: dir, maxRestarts: 1 })
      expect(yield* gone(orphanPid)).toBe(true)
      expect(yield* echo(supervisor.url, Redacted.value(supervisor.token))).toBe("hello")
    }).pipe(Effect.scoped)
  )

  it.live("says how to install nats-server when it is missing", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir("vibes-nats-sup-")
      const error = yield* Effect.flip(
        NatsSupervisor.make({ dataDir: dir, maxRestarts: 0, binary: path.join(dir, "no-such-nats-server") })
      )
      expect(error._tag).toBe("NatsServerError")
      expect(error.message).toContain("apt-get install -y nats-server")
    }).pipe(Effect.scoped)
  )
})
