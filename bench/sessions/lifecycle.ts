/**
 * Session start and stop: create → first output, and closing many sessions at once, against
 * node-pty in this process and the reference server (`reference-server.ts`) in the same run.
 *
 * - **create → first output**: the program is `/bin/sh -c 'printf R; exec cat'`; time runs from
 *   the request until the client has the `R`.
 *   - raw node-pty: `spawn`, until `onData` delivers it;
 *   - reference server: a new WebSocket (which spawns the PTY), until its first frame;
 *   - vibes: `Sessions.Create` on an open RPC connection, then the typed attach client over the
 *     attach socket, until the `R` is on the attached screen or in an `Output` frame.
 *   `BENCH_LIFECYCLE_CREATES` (50) one after another, after 5 unmeasured.
 * - **closing at once**: `BENCH_LIFECYCLE_CLOSES` (50) sessions of `cat`, then every one closed
 *   at the same moment; time until the last close has answered (vibes: `Sessions.Close`, which
 *   answers once the program is gone and the end is recorded) or the last program has exited (raw:
 *   SIGHUP to each). The reference server has no close to wait for and is left out.
 *
 * Env: those, BENCH_CPU_PROF, DATABASE_URL.
 */
import { Deferred, Effect, FiberId, Stream } from "effect"
import WebSocket from "ws"
import type * as Client from "../../rpc/Client.js"
import { CreateSession } from "../../rpc/Sessions.js"
import * as Harness from "../events/harness.js"
import * as Sessions from "./harness.js"

const creates = Harness.envInt("BENCH_LIFECYCLE_CREATES", 50)
const closes = Harness.envInt("BENCH_LIFECYCLE_CLOSES", 50)
const warmup = 5
const cpuProfDir = process.env["BENCH_CPU_PROF"]
const size = { cols: 80, rows: 24 }
const ready = { file: "/bin/sh", args: ["-c", "printf R; exec cat"] }

const timeout =
  (what: string) =>
  <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E | Harness.BenchError, R> =>
    Effect.timeoutFail(effect, {
      duration: "30 seconds",
      onTimeout: () => new Harness.BenchError({ message: `${what} did not finish within 30 s` })
    })

/** Runs `measure` `warmup + creates` times, one after another; the measured milliseconds. */
const repeat = <E>(measure: Effect.Effect<number, E>) =>
  Effect.gen(function* () {
    const times: Array<number> = []
    for (let i = 0; i < warmup + creates; i++) {
      const ms = yield* measure
      if (i >= warmup) times.push(ms)
    }
    return times
  })

const rawCreate = Effect.scoped(
  Effect.gen(function* () {
    const done = yield* Deferred.make<number>()
    const start = Harness.now()
    const terminal = yield* Sessions.rawPty(ready.file, ready.args, size)
    Sessions.onBytes(terminal, () => Deferred.unsafeDone(done, Effect.succeed(Harness.now())))
    return (yield* Deferred.await(done).pipe(timeout("raw node-pty: first output"))) - start
  })
)

const referenceCreate = (port: number) =>
  Effect.scoped(
    Effect.gen(function* () {
      const done = yield* Deferred.make<number>()
      const start = Harness.now()
      yield* Effect.acquireRelease(
        Effect.sync(() => {
          const socket = new WebSocket(
            `ws://127.0.0.1:${port}/?cols=${size.cols}&rows=${size.rows}&cmd=${encodeURIComponent(JSON.stringify([ready.file, ...ready.args]))}`
          )
          socket.once("message", () => Deferred.unsafeDone(done, Effect.succeed(Harness.now())))
          return socket
        }),
        (socket) => Effect.sync(() => socket.terminate())
      )
      return (yield* Deferred.await(done).pipe(timeout("reference server: first output"))) - start
    })
  )

/** How long each `Sessions.Create` took to answer, of the vibes measurements (warm-up included). */
const createdIn: Array<number> = []

const vibesCreate = (server: Sessions.Server, client: Client.Client) =>
  Effect.scoped(
    Effect.gen(function* () {
      const done = yield* Deferred.make<number, Harness.BenchError>()
      const start = Harness.now()
      const session = yield* Sessions.orBench(
        client.Sessions.Create(CreateSession.make({ command: ready.file, args: ready.args, ...size }))
      )
      createdIn.push(Harness.now() - start)
      yield* Effect.addFinalizer(() => Effect.ignore(client.Sessions.Close({ sessionId: session.id })))
      const attachment = yield* Sessions.attachSocket(server, session.id, size)
      yield* attachment.events.pipe(
        Stream.runForEach((event) =>
          Effect.sync(() => {
            const seen =
              (event._tag === "Attached" && event.screen?.text.includes("R") === true) ||
              (event._tag === "Output" && event.data.includes(82))
            if (seen) Deferred.unsafeDone(done, Effect.succeed(Harness.now()))
          })
        ),
        Effect.catchAll((error) => Deferred.fail(done, new Harness.BenchError({ message: error.message }))),
        Effect.forkScoped
      )
      return (yield* Deferred.await(done).pipe(timeout("vibes: first output"))) - start
    })
  )

const rawCloseAll = Effect.scoped(
  Effect.gen(function* () {
    const terminals = yield* Effect.forEach(Array.from({ length: closes }), () =>
      Sessions.rawPty("cat", [], size)
    )
    const exits = terminals.map((terminal) => {
      const exited = Deferred.unsafeMake<number>(FiberId.none)
      terminal.onExit(() => Deferred.unsafeDone(exited, Effect.succeed(Harness.now())))
      return exited
    })
    const start = Harness.now()
    for (const terminal of terminals) terminal.kill("SIGHUP")
    const ends = yield* Effect.forEach(exits, (exited) => Deferred.await(exited)).pipe(timeout("raw close"))
    return Math.max(...ends) - start
  })
)

const vibesCloseAll = (client: Client.Client) =>
  Effect.gen(function* () {
    const ids = yield* Effect.forEach(
      Array.from({ length: closes }),
      () => Sessions.orBench(client.Sessions.Create(CreateSession.make({ command: "cat", ...size }))),
      { concurrency: 4 }
    )
    yield* Sessions.orBench(client.Sessions.List({}))
    const start = Harness.now()
    yield* Effect.forEach(ids, (info) => Sessions.orBench(client.Sessions.Close({ sessionId: info.id })), {
      concurrency: "unbounded",
      discard: true
    }).pipe(timeout("vibes close"))
    return Harness.now() - start
  })

const main = Effect.gen(function* () {
  const loadAtStart = Sessions.runLines()
  const db = yield* Harness.database
  const machine = yield* Harness.machine(db)
  const server = yield* Sessions.serve(db, { cpuProfDir })
  yield* Harness.progress(`vibes serve (pid ${server.pid}) listens on ${server.url}`)
  const client = yield* Sessions.connect(server)
  const port = yield* Sessions.referenceServer

  const raw = yield* repeat(rawCreate)
  yield* Harness.progress(`raw node-pty: create → first output p50 ${Harness.millis(Harness.median(raw))} ms`)
  const reference = yield* repeat(referenceCreate(port))
  yield* Harness.progress(
    `reference: create → first output p50 ${Harness.millis(Harness.median(reference))} ms`
  )
  yield* Sessions.settle([server.pid, server.ptyHostPid()], 60)
  const vibes = yield* repeat(vibesCreate(server, client))
  yield* Harness.progress(`vibes: create → first output p50 ${Harness.millis(Harness.median(vibes))} ms`)

  const rawClose = yield* rawCloseAll
  yield* Sessions.settle([server.pid, server.ptyHostPid()], 60)
  const before = Sessions.cpuSample(server)
  const vibesClose = yield* vibesCloseAll(client)
  const closeCpu = Sessions.cpuSpent(before, Sessions.cpuSample(server))

  yield* Harness.print(
    `### Create → first output (${creates} sessions after ${warmup}), and ${closes} closed at once\n`
  )
  yield* Harness.print(Harness.machineMarkdown(machine))
  yield* Harness.print(loadAtStart)
  yield* Harness.print("")
  yield* Harness.print(
    Harness.header(["system", "creates", "p50 ms", "p90 ms", "p99 ms", "max ms", "p50 ≤ 6 ms, p99 ≤ 15 ms"])
  )
  const line = (name: string, times: ReadonlyArray<number>) =>
    Harness.row([
      name,
      Harness.count(times.length),
      Harness.millis(Harness.percentile(times, 50)),
      Harness.millis(Harness.percentile(times, 90)),
      Harness.millis(Harness.percentile(times, 99)),
      Harness.millis(Math.max(...times)),
      name.startsWith("vibes (")
        ? Harness.percentile(times, 50) <= 6 && Harness.percentile(times, 99) <= 15
          ? "yes"
          : "no"
        : ""
    ])
  yield* Harness.print(line("raw node-pty, in process", raw))
  yield* Harness.print(line("reference server (node-pty + ws)", reference))
  yield* Harness.print(line("vibes (Sessions.Create, then the attach socket)", vibes))
  yield* Harness.print(line("vibes: of which Sessions.Create answering", createdIn.slice(warmup)))
  yield* Harness.print("")
  yield* Harness.print(Harness.header(["system", "sessions", "all closed, ms", "≤ 200 ms"]))
  yield* Harness.print(
    Harness.row(["raw node-pty (SIGHUP, until every exit)", closes, Harness.millis(rawClose), ""])
  )
  yield* Harness.print(
    Harness.row([
      "vibes (Sessions.Close, all at once)",
      closes,
      Harness.millis(vibesClose),
      vibesClose <= 200 ? "yes" : "no"
    ])
  )
  yield* Harness.print("")
  yield* Harness.print(
    `CPU seconds over the close (server / PTY host / Postgres / client): ${Sessions.cpuText(closeCpu)}\n`
  )
})

Harness.run(main)
