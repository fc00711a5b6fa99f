/**
 * Keystroke echo latency over the attach socket and over the typed RPC, against node-pty in this process.
 *
 * The program is `/bin/sh -c 'stty raw -echo; printf R; exec cat'`: once it prints `R` the
 * terminal is raw and does not echo, so every byte typed comes back exactly once, from `cat`.
 *
 * - **vibes, attach socket**: the same session kind, attached with the typed attach client over the
 *   attach socket (`/api/sessions/<id>/attach`): one binary frame per keystroke, one per echo.
 * - **vibes, typed RPC**: a session of a `vibes serve` child process (compiled build, fresh database); the
 *   client attaches with `Sessions.Attach`, sends one byte with `Sessions.Input` and times until
 *   the byte arrives on the attach stream (the Input's own reply is awaited too, untimed, before
 *   the next keystroke, so at most one is in flight).
 * - **raw node-pty**: the same command spawned with node-pty in this process, one byte written,
 *   timed until `onData` delivers it.
 * - **PTY host** (for diagnosis): the same command in a PTY of the server's PTY host, driven by
 *   this process over the host's socket as the server drives it (`Write`, `Output`), without the
 *   server.
 *
 * `BENCH_ECHO_WARMUP` (200) unmeasured keystrokes first, then `BENCH_ECHO_KEYS` (2000) measured
 * ones, one after another. Env: those, BENCH_CPU_PROF (a directory for the server's CPU profile),
 * DATABASE_URL.
 */
import { Deferred, Effect, Fiber, FiberId, Stream } from "effect"
import WebSocket from "ws"
import { CreateSession } from "../../rpc/Sessions.js"
import * as Harness from "../events/harness.js"
import * as Sessions from "./harness.js"

const keys = Harness.envInt("BENCH_ECHO_KEYS", 2000)
const warmup = Harness.envInt("BENCH_ECHO_WARMUP", 200)
const cpuProfDir = process.env["BENCH_CPU_PROF"]
const command = { file: "/bin/sh", args: ["-c", "stty raw -echo; printf R; exec cat"] }
const size = { cols: 80, rows: 24 }
const alphabet = "abcdefghijklmnopqrstuvwxyz"

/** The byte of keystroke `i`. */
const keyOf = (i: number) => alphabet.charCodeAt(i % alphabet.length)

/**
 * Output arrivals: `expect(n)` resolves once `n` bytes have arrived after the ready `R`, with the
 * time the last of them came.
 */
const arrivals = () => {
  let ready = false
  let received = 0
  let waiter: { readonly count: number; readonly done: Deferred.Deferred<number> } | undefined
  const readyDone = Deferred.unsafeMake<void>(FiberId.none)
  const markReady = () => {
    ready = true
    Deferred.unsafeDone(readyDone, Effect.void)
  }
  const onBytes = (data: Uint8Array) => {
    const at = Harness.now()
    let bytes = data
    if (!ready) {
      const r = data.indexOf(82)
      if (r < 0) return
      markReady()
      bytes = data.subarray(r + 1)
    }
    received += bytes.length
    if (waiter !== undefined && received >= waiter.count) {
      Deferred.unsafeDone(waiter.done, Effect.succeed(at))
      waiter = undefined
    }
  }
  const expect = (count: number) =>
    Effect.flatMap(Deferred.make<number>(), (done) => {
      if (received >= count) return Effect.succeed(Harness.now())
      waiter = { count, done }
      return Deferred.await(done)
    })
  return { onBytes, markReady, expect, ready: Deferred.await(readyDone) }
}

const timeout =
  (what: string) =>
  <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E | Harness.BenchError, R> =>
    Effect.timeoutFail(effect, {
      duration: "10 seconds",
      onTimeout: () => new Harness.BenchError({ message: `${what}: no echo within 10 s` })
    })

const raw = Effect.scoped(
  Effect.gen(function* () {
    const terminal = yield* Sessions.rawPty(command.file, command.args, size)
    const output = arrivals()
    Sessions.onBytes(terminal, output.onBytes)
    yield* output.ready.pipe(timeout("raw node-pty: the ready mark"))
    const latencies: Array<number> = []
    for (let i = 0; i < warmup + keys; i++) {
      const start = Harness.now()
      terminal.write(String.fromCharCode(keyOf(i)))
      const end = yield* output.expect(i + 1).pipe(timeout("raw node-pty"))
      if (i >= warmup) latencies.push(end - start)
    }
    return latencies
  })
)

const viaHost = (server: Sessions.Server) =>
  Effect.scoped(
    Effect.gen(function* () {
      const pty = yield* Sessions.hostPty(server, command.file, command.args, size)
      const output = arrivals()
      const failed = yield* Deferred.make<never, Harness.BenchError>()
      yield* pty.output.pipe(
        Stream.runForEach((element) =>
          Effect.sync(() => {
            if (element._tag === "Data") output.onBytes(element.data)
          })
        ),
        Effect.catchAll((error) => Deferred.fail(failed, error)),
        Effect.forkScoped
      )
      yield* output.ready.pipe(Effect.raceFirst(Deferred.await(failed)), timeout("PTY host: the ready mark"))
      const latencies: Array<number> = []
      for (let i = 0; i < warmup + keys; i++) {
        const start = Harness.now()
        const sent = yield* Effect.fork(pty.write(new Uint8Array([keyOf(i)])))
        const end = yield* output
          .expect(i + 1)
          .pipe(Effect.raceFirst(Deferred.await(failed)), timeout(`PTY host keystroke ${i}`))
        yield* Fiber.join(sent)
        if (i >= warmup) latencies.push(end - start)
      }
      return latencies
    })
  )

const vibes = (server: Sessions.Server) =>
  Effect.scoped(
    Effect.gen(function* () {
      const client = yield* Sessions.connect(server)
      const session = yield* Sessions.orBench(
        client.Sessions.Create(CreateSession.make({ command: command.file, args: command.args, ...size }))
      )
      const output = arrivals()
      const attached = yield* Deferred.make<string>()
      const failed = yield* Sessions.follow(
        client.Sessions.Attach({ sessionId: session.id, ...size }),
        (event) => {
          if (event._tag === "Attached") {
            // The program may have printed its ready mark before the client attached.
            if (event.screen?.text.includes("R") === true) output.markReady()
            Deferred.unsafeDone(attached, Effect.succeed(event.attachmentId))
          } else if (event._tag === "Output") output.onBytes(event.data)
        }
      )
      const attachmentId = yield* Deferred.await(attached).pipe(Effect.raceFirst(Deferred.await(failed)))
      yield* output.ready.pipe(Effect.raceFirst(Deferred.await(failed)), timeout("vibes: the ready mark"))
      const latencies: Array<number> = []
      const window = Sessions.monotonicMicros()
      for (let i = 0; i < warmup + keys; i++) {
        if (i === warmup) yield* Harness.progress("vibes: warm-up done")
        const start = Harness.now()
        const sent = yield* Effect.fork(
          Sessions.orBench(
            client.Sessions.Input({ sessionId: session.id, data: new Uint8Array([keyOf(i)]), attachmentId })
          )
        )
        const end = yield* output
          .expect(i + 1)
          .pipe(Effect.raceFirst(Deferred.await(failed)), timeout(`vibes keystroke ${i}`))
        yield* Fiber.join(sent)
        if (i >= warmup) latencies.push(end - start)
      }
      yield* Harness.progress(
        `vibes measured in the monotonic µs window ${window}–${Sessions.monotonicMicros()}`
      )
      yield* Sessions.orBench(client.Sessions.Close({ sessionId: session.id }))
      return latencies
    })
  )

/** The same through the attach socket with the typed attach client: a binary frame each way. */
const viaSocket = (server: Sessions.Server) =>
  Effect.scoped(
    Effect.gen(function* () {
      const client = yield* Sessions.connect(server)
      const session = yield* Sessions.orBench(
        client.Sessions.Create(CreateSession.make({ command: command.file, args: command.args, ...size }))
      )
      const output = arrivals()
      const attachment = yield* Sessions.attachSocket(server, session.id, size)
      const failed = yield* Deferred.make<never, Harness.BenchError>()
      yield* attachment.events.pipe(
        Stream.runForEach((event) =>
          Effect.sync(() => {
            if (event._tag === "Attached") {
              if (event.screen?.text.includes("R") === true) output.markReady()
            } else if (event._tag === "Output") output.onBytes(event.data)
          })
        ),
        Effect.catchAll((error) => Deferred.fail(failed, new Harness.BenchError({ message: error.message }))),
        Effect.forkScoped
      )
      yield* output.ready.pipe(
        Effect.raceFirst(Deferred.await(failed)),
        timeout("attach socket: the ready mark")
      )
      const latencies: Array<number> = []
      for (let i = 0; i < warmup + keys; i++) {
        const start = Harness.now()
        yield* attachment.input(new Uint8Array([keyOf(i)]))
        const end = yield* output
          .expect(i + 1)
          .pipe(Effect.raceFirst(Deferred.await(failed)), timeout(`attach socket keystroke ${i}`))
        if (i >= warmup) latencies.push(end - start)
      }
      yield* Sessions.orBench(client.Sessions.Close({ sessionId: session.id }))
      return latencies
    })
  )

/** The same against the reference server the bench ships (node-pty + ws, binary frames, ~60 lines). */
const viaReference = Effect.scoped(
  Effect.gen(function* () {
    const port = yield* Sessions.referenceServer
    const output = arrivals()
    const socket = yield* Effect.acquireRelease(
      Effect.sync(
        () =>
          new WebSocket(
            `ws://127.0.0.1:${port}/?cols=${size.cols}&rows=${size.rows}&cmd=${encodeURIComponent(JSON.stringify([command.file, ...command.args]))}`
          )
      ),
      (socket) => Effect.sync(() => socket.terminate())
    )
    socket.on("message", (data: Buffer) => output.onBytes(data))
    yield* output.ready.pipe(timeout("reference server: the ready mark"))
    const latencies: Array<number> = []
    for (let i = 0; i < warmup + keys; i++) {
      const start = Harness.now()
      socket.send(Buffer.from([keyOf(i)]))
      const end = yield* output.expect(i + 1).pipe(timeout(`reference server keystroke ${i}`))
      if (i >= warmup) latencies.push(end - start)
    }
    return latencies
  })
)

const main = Effect.gen(function* () {
  const loadAtStart = Sessions.runLines()
  const db = yield* Harness.database
  const machine = yield* Harness.machine(db)
  const server = yield* Sessions.serve(db, { cpuProfDir })
  yield* Harness.progress(`vibes serve (pid ${server.pid}) listens on ${server.url}`)
  const rawLatencies = yield* raw
  const referenceLatencies = yield* viaReference
  yield* Harness.progress(
    `reference server: p50 ${Harness.millis(Harness.percentile(referenceLatencies, 50))} ms`
  )
  yield* Harness.progress(`raw node-pty: p50 ${Harness.millis(Harness.percentile(rawLatencies, 50))} ms`)
  const hostLatencies = yield* viaHost(server)
  yield* Harness.progress(`PTY host: p50 ${Harness.millis(Harness.percentile(hostLatencies, 50))} ms`)
  yield* Sessions.settle([server.pid, server.ptyHostPid()], 60)
  const before = Sessions.cpuSample(server)
  const vibesLatencies = yield* vibes(server)
  const cpu = Sessions.cpuSpent(before, Sessions.cpuSample(server))
  yield* Harness.progress(`vibes: p50 ${Harness.millis(Harness.percentile(vibesLatencies, 50))} ms`)
  yield* Sessions.settle([server.pid, server.ptyHostPid()], 60)
  const socketBefore = Sessions.cpuSample(server)
  const socketLatencies = yield* viaSocket(server)
  const socketCpu = Sessions.cpuSpent(socketBefore, Sessions.cpuSample(server))
  yield* Harness.progress(`attach socket: p50 ${Harness.millis(Harness.percentile(socketLatencies, 50))} ms`)

  yield* Harness.print(`### Keystroke echo latency (${keys} keystrokes after ${warmup} unmeasured)\n`)
  yield* Harness.print(Harness.machineMarkdown(machine))
  yield* Harness.print(loadAtStart)
  yield* Harness.print("")
  yield* Harness.print(
    Harness.header([
      "system",
      "keystrokes",
      "p50 ms",
      "p90 ms",
      "p99 ms",
      "max ms",
      "p99 vs raw",
      "p99 ≤ 2 ms"
    ])
  )
  const rawP99 = Harness.percentile(rawLatencies, 99)
  const line = (name: string, latencies: ReadonlyArray<number>) =>
    Harness.row([
      name,
      Harness.count(latencies.length),
      Harness.millis(Harness.percentile(latencies, 50)),
      Harness.millis(Harness.percentile(latencies, 90)),
      Harness.millis(Harness.percentile(latencies, 99)),
      Harness.millis(Math.max(...latencies)),
      Harness.ratio(Harness.percentile(latencies, 99), rawP99),
      Harness.percentile(latencies, 99) <= 2 ? "yes" : "no"
    ])
  yield* Harness.print(line("raw node-pty, in process", rawLatencies))
  yield* Harness.print(line("PTY host over its socket, no server", hostLatencies))
  yield* Harness.print(
    line("reference server (node-pty + ws, bench/sessions/reference-server.ts)", referenceLatencies)
  )
  yield* Harness.print(line("vibes, typed RPC (Sessions.Input + Attach stream)", vibesLatencies))
  yield* Harness.print(line("vibes, attach socket (typed attach client)", socketLatencies))
  yield* Harness.print("")
  yield* Harness.print(
    `CPU seconds over the RPC measurement (server / PTY host / Postgres / client): ${Sessions.cpuText(cpu)}`
  )
  yield* Harness.print(
    `CPU seconds over the attach socket measurement (server / PTY host / Postgres / client): ${Sessions.cpuText(socketCpu)}\n`
  )
})

Harness.run(main)
