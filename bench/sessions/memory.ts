/**
 * Server memory per idle session: the proportional set size (PSS, the measure: shared
 * pages are split between the processes that map them, so the figures add up) and the resident
 * memory (VmRSS) of a `vibes serve` child process (compiled build, fresh database) and of its PTY
 * host, with `BENCH_MEMORY_SESSIONS` (200) idle sessions running `cat`, against the same server
 * with none.
 *
 * The baseline is taken after one session was created, attached to, typed into and closed (so
 * the code paths are loaded and compiled) and the server has settled; then the sessions are
 * created one after another, each attached once and typed into once (so its screen model and
 * reader have run), and left idle. The shells live in the PTY host, not in the server. Memory is
 * read twice, `BENCH_MEMORY_SETTLE_SECONDS` (10) apart after the processes went quiet, and the
 * later reading counts; a separate process cannot be made to collect its garbage, so the figure
 * includes whatever garbage it still holds.
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

interface Reading {
  readonly rss: number
  readonly pss: number
}

const read = (pid: number | undefined): Reading => ({ rss: Sessions.rssKiB(pid), pss: Sessions.pssKiB(pid) })

/** Memory in KiB of the server and its PTY host once both are quiet: the later of two readings. */
const quietMemory = (server: Sessions.Server) =>
  Effect.gen(function* () {
    yield* Sessions.settle([server.pid, server.ptyHostPid()], 120)
    const first = { server: read(server.pid), host: read(server.ptyHostPid()) }
    yield* Effect.sleep(`${settleSeconds} seconds`)
    const second = { server: read(server.pid), host: read(server.ptyHostPid()) }
    yield* Harness.progress(
      `RSS server ${mib(first.server.rss)} then ${mib(second.server.rss)} MiB, ` +
        `PTY host ${mib(first.host.rss)} then ${mib(second.host.rss)} MiB; ` +
        `PSS ${mib(second.server.pss)} + ${mib(second.host.pss)} MiB`
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
  const fresh = yield* quietMemory(server)

  const warm = yield* idleSession(client)
  yield* Sessions.orBench(client.Sessions.Close({ sessionId: warm }))
  const baseline = yield* quietMemory(server)

  const start = Harness.now()
  for (let i = 0; i < sessions; i++) {
    yield* idleSession(client)
    if ((i + 1) % 50 === 0) yield* Harness.progress(`${i + 1} sessions`)
  }
  const createSeconds = (Harness.now() - start) / 1000
  const loaded = yield* quietMemory(server)
  const running = (yield* Sessions.orBench(client.Sessions.List({ state: "running" }))).length

  const perSession = (field: keyof Reading, process: "server" | "host") =>
    (loaded[process][field] - baseline[process][field]) / sessions
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
      "PSS baseline MiB",
      `PSS with ${sessions} sessions MiB`,
      "per session, RSS KiB",
      "per session, PSS KiB"
    ])
  )
  for (const [name, process] of [
    ["vibes serve", "server"],
    ["PTY host", "host"]
  ] as const) {
    yield* Harness.print(
      Harness.row([
        name,
        mib(fresh[process].rss),
        mib(baseline[process].rss),
        mib(loaded[process].rss),
        mib(baseline[process].pss),
        mib(loaded[process].pss),
        Harness.count(perSession("rss", process)),
        Harness.count(perSession("pss", process))
      ])
    )
  }
  const pssPerSession = perSession("pss", "server") + perSession("pss", "host")
  const freshRss = fresh.server.rss + fresh.host.rss
  yield* Harness.print(
    Harness.row([
      "serve + PTY host",
      mib(freshRss),
      mib(baseline.server.rss + baseline.host.rss),
      mib(loaded.server.rss + loaded.host.rss),
      mib(baseline.server.pss + baseline.host.pss),
      mib(loaded.server.pss + loaded.host.pss),
      Harness.count(perSession("rss", "server") + perSession("rss", "host")),
      Harness.count(pssPerSession)
    ])
  )
  yield* Harness.print("")
  yield* Harness.print(
    `- per idle session, serve + PTY host PSS: ${Harness.count(pssPerSession)} KiB (target ≤ 256 KiB: ${pssPerSession <= 256 ? "met" : "missed"})`
  )
  yield* Harness.print(
    `- serve + PTY host RSS with no session: ${mib(freshRss)} MiB (target ≤ 150 MiB: ${freshRss <= 150 * 1024 ? "met" : "missed"})`
  )
  yield* Harness.print("")
})

Harness.run(main)
