/**
 * Server memory per idle session: the resident memory (VmRSS) of a `vibes serve` child process
 * (compiled build, fresh database) with `BENCH_MEMORY_SESSIONS` (200) idle sessions running `cat`,
 * against the same server with none.
 *
 * The baseline is taken after one session was created, attached to, typed into and closed (so
 * the code paths are loaded and compiled) and the server has settled; then the sessions are
 * created one after another, each attached once and typed into once (so its screen model and
 * reader have run), and left idle. The shells live in the PTY host, not in the server; the PTY
 * host's RSS is reported beside. RSS is read twice, `BENCH_MEMORY_SETTLE_SECONDS` (10) apart
 * after the processes went quiet, and the later reading counts; a separate process cannot be
 * made to collect its garbage, so the figure includes whatever garbage it still holds.
 * Env: those, BENCH_CPU_PROF, DATABASE_URL.
 */
import { Deferred, Effect } from "effect"
import type * as Client from "../../rpc/Client.js"
import { CreateSession } from "../../rpc/Sessions.js"
import * as Harness from "../events/harness.js"
import * as Sessions from "./harness.js"

const sessions = Harness.envInt("BENCH_MEMORY_SESSIONS", 200)
const settleSeconds = Harness.envInt("BENCH_MEMORY_SETTLE_SECONDS", 10)
const cpuProfDir = process.env["BENCH_CPU_PROF"]
const size = { cols: 80, rows: 24 }

/** Creates a `cat` session, attaches once, types a line and waits for its echo, detaches; returns its id. */
const idleSession = (client: Client.Client) =>
  Effect.scoped(
    Effect.gen(function* () {
      const session = yield* Sessions.orBench(
        client.Sessions.Create(CreateSession.make({ command: "/bin/sh", args: ["-c", "exec cat"], ...size }))
      )
      const echoed = yield* Deferred.make<void>()
      let text = ""
      const failed = yield* Sessions.follow(
        client.Sessions.Attach({ sessionId: session.id, ...size }),
        (event) => {
          if (event._tag === "Attached") text += event.screen?.text ?? ""
          if (event._tag === "Output") text += Buffer.from(event.data).toString("latin1")
          if (text.includes("hello")) Deferred.unsafeDone(echoed, Effect.void)
        }
      )
      yield* Sessions.orBench(
        client.Sessions.Input({ sessionId: session.id, data: new TextEncoder().encode("hello\r") })
      )
      yield* Deferred.await(echoed).pipe(
        Effect.raceFirst(Deferred.await(failed)),
        Effect.timeoutFail({
          duration: "30 seconds",
          onTimeout: () => new Harness.BenchError({ message: `session ${session.id}: no echo within 30 s` })
        })
      )
      return session.id
    })
  )

/** RSS in KiB of the server and its PTY host once both are quiet: the later of two readings. */
const quietRss = (server: Sessions.Server) =>
  Effect.gen(function* () {
    yield* Sessions.settle([server.pid, server.ptyHostPid()], 120)
    const first = { server: Sessions.rssKiB(server.pid), host: Sessions.rssKiB(server.ptyHostPid()) }
    yield* Effect.sleep(`${settleSeconds} seconds`)
    const second = { server: Sessions.rssKiB(server.pid), host: Sessions.rssKiB(server.ptyHostPid()) }
    yield* Harness.progress(
      `RSS server ${(first.server / 1024).toFixed(1)} then ${(second.server / 1024).toFixed(1)} MiB, ` +
        `PTY host ${(first.host / 1024).toFixed(1)} then ${(second.host / 1024).toFixed(1)} MiB`
    )
    return second
  })

const mib = (kib: number) => (kib / 1024).toFixed(1)

const main = Effect.gen(function* () {
  const loadAtStart = Sessions.runLines()
  const db = yield* Harness.database
  const machine = yield* Harness.machine(db)
  const server = yield* Sessions.serve(db, { cpuProfDir })
  yield* Harness.progress(`vibes serve (pid ${server.pid}) listens on ${server.url}`)
  const client = yield* Sessions.connect(server)
  const fresh = yield* quietRss(server)

  const warm = yield* idleSession(client)
  yield* Sessions.orBench(client.Sessions.Close({ sessionId: warm }))
  const baseline = yield* quietRss(server)

  const start = Harness.now()
  for (let i = 0; i < sessions; i++) {
    yield* idleSession(client)
    if ((i + 1) % 50 === 0) yield* Harness.progress(`${i + 1} sessions`)
  }
  const createSeconds = (Harness.now() - start) / 1000
  const loaded = yield* quietRss(server)
  const running = (yield* Sessions.orBench(client.Sessions.List({ state: "running" }))).length

  const perSession = (loaded.server - baseline.server) / sessions
  const hostPerSession = (loaded.host - baseline.host) / sessions
  yield* Harness.print(`### Server memory per idle session (${sessions} sessions running \`cat\`)\n`)
  yield* Harness.print(Harness.machineMarkdown(machine))
  yield* Harness.print(loadAtStart)
  yield* Harness.print(
    `- ${running} sessions running when measured; creating, attaching and typing into them took ${createSeconds.toFixed(0)} s`
  )
  yield* Harness.print("")
  yield* Harness.print(
    Harness.header([
      "process",
      "RSS fresh MiB",
      "RSS baseline (0 sessions, warmed) MiB",
      `RSS with ${sessions} sessions MiB`,
      "vs baseline",
      "per session KiB",
      "per session ≤ 2 MB"
    ])
  )
  yield* Harness.print(
    Harness.row([
      "vibes serve",
      mib(fresh.server),
      mib(baseline.server),
      mib(loaded.server),
      Harness.ratio(loaded.server, baseline.server),
      Harness.count(perSession),
      perSession * 1024 <= 2_000_000 ? "yes" : "no"
    ])
  )
  yield* Harness.print(
    Harness.row([
      "PTY host (for reference)",
      mib(fresh.host),
      mib(baseline.host),
      mib(loaded.host),
      Harness.ratio(loaded.host, baseline.host),
      Harness.count(hostPerSession),
      ""
    ])
  )
  yield* Harness.print("")
})

Harness.run(main)
