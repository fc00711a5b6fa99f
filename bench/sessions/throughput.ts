/**
 * Output throughput to a client attached over the public WebSocket RPC, as a ratio against
 * node-pty read directly in this process.
 *
 * A file of printable text lines (`BENCH_THROUGHPUT_MB`, default 50 MB, its last line a marker)
 * is printed by `/bin/sh -c 'read go; head -c <size> <file>; exec cat'` in an 80x24 terminal.
 *
 * - **vibes**: a session of a `vibes serve` child process (compiled build, fresh database);
 *   the client attaches with `Sessions.Attach`, sends `go\r` with `Sessions.Input` and counts
 *   `Output` bytes until the marker arrives. On the way the server records every byte to Postgres
 *   (coalesced `session.output` events), feeds its screen model and takes snapshots.
 * - **raw node-pty**: the same command spawned with node-pty in this process (`encoding: null`),
 *   `go\r` written to it, bytes counted until the marker.
 * - **vibes, attach socket**: the same, attached with the typed attach client over the attach socket
 *   (`/api/sessions/<id>/attach`, binary frames without acknowledgements).
 * - **PTY host** (for diagnosis): the same command in a PTY of the server's PTY host, read by
 *   this process over the host's socket as the server reads it, without the server.
 *
 * Time runs from sending `go` to the marker. The systems alternate, `BENCH_ROUNDS` (3) times
 * each; the median is reported. Env: BENCH_THROUGHPUT_MB, BENCH_ROUNDS, BENCH_CPU_PROF (a
 * directory: the server writes a CPU profile there when it stops), DATABASE_URL.
 */
import * as path from "node:path"
import { Deferred, Effect, Stream } from "effect"
import { CreateSession } from "../../rpc/Sessions.js"
import * as Harness from "../events/harness.js"
import * as Sessions from "./harness.js"

const megabytes = Harness.envInt("BENCH_THROUGHPUT_MB", 50)
const rounds = Harness.envInt("BENCH_ROUNDS", 3)
const cpuProfDir = process.env["BENCH_CPU_PROF"]
const marker = "VIBES-BENCH-THROUGHPUT-END-OF-OUTPUT"
const size = { cols: 80, rows: 24 }
const maxSeconds = 600

interface Measurement {
  readonly bytes: number
  readonly ms: number
  /** CPU seconds each party used meanwhile. */
  readonly cpu: Sessions.CpuSample
}

const script = (file: string, bytes: number) => `read go; head -c ${bytes} '${file}'; exec cat`

const timeout =
  (what: string) =>
  <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E | Harness.BenchError, R> =>
    Effect.timeoutFail(effect, {
      duration: `${maxSeconds} seconds`,
      onTimeout: () => new Harness.BenchError({ message: `${what} did not finish within ${maxSeconds} s` })
    })

const raw = (file: string, bytes: number) =>
  Effect.scoped(
    Effect.gen(function* () {
      const terminal = yield* Sessions.rawPty("/bin/sh", ["-c", script(file, bytes)], size)
      const seen = Sessions.markerWatch(marker)
      const done = yield* Deferred.make<number>()
      let received = 0
      Sessions.onBytes(terminal, (data) => {
        received += data.length
        if (seen(data)) Deferred.unsafeDone(done, Effect.succeed(Harness.now()))
      })
      const client = Sessions.ownCpuMillis()
      const start = Harness.now()
      terminal.write("go\r")
      const end = yield* Deferred.await(done).pipe(timeout("raw node-pty"))
      const cpu = { server: Number.NaN, ptyHost: Number.NaN, postgres: Number.NaN, client: 0 }
      return {
        bytes: received,
        ms: end - start,
        cpu: { ...cpu, client: (Sessions.ownCpuMillis() - client) / 1000 }
      }
    })
  )

const viaHost = (server: Sessions.Server, file: string, bytes: number) =>
  Effect.scoped(
    Effect.gen(function* () {
      const pty = yield* Sessions.hostPty(server, "/bin/sh", ["-c", script(file, bytes)], size)
      const seen = Sessions.markerWatch(marker)
      const done = yield* Deferred.make<number, Harness.BenchError>()
      let received = 0
      yield* pty.output.pipe(
        Stream.runForEach((element) =>
          Effect.sync(() => {
            if (element._tag !== "Data") return
            received += element.data.length
            if (seen(element.data)) Deferred.unsafeDone(done, Effect.succeed(Harness.now()))
          })
        ),
        Effect.catchAll((error) => Deferred.fail(done, error)),
        Effect.forkScoped
      )
      const before = Sessions.cpuSample(server)
      const window = Sessions.monotonicMicros()
      const start = Harness.now()
      yield* pty.write(new TextEncoder().encode("go\r"))
      const end = yield* Deferred.await(done).pipe(timeout("PTY host"))
      const cpu = Sessions.cpuSpent(before, Sessions.cpuSample(server))
      yield* Harness.progress(
        `PTY host measured in the monotonic µs window ${window}–${Sessions.monotonicMicros()}`
      )
      return { bytes: received, ms: end - start, cpu: { ...cpu, server: Number.NaN } }
    })
  )

const vibes = (server: Sessions.Server, file: string, bytes: number) =>
  Effect.scoped(
    Effect.gen(function* () {
      const client = yield* Sessions.connect(server)
      const session = yield* Sessions.orBench(
        client.Sessions.Create(
          CreateSession.make({ command: "/bin/sh", args: ["-c", script(file, bytes)], ...size })
        )
      )
      const seen = Sessions.markerWatch(marker)
      const attached = yield* Deferred.make<void>()
      const done = yield* Deferred.make<number>()
      let received = 0
      const failed = yield* Sessions.follow(
        client.Sessions.Attach({ sessionId: session.id, ...size }),
        (event) => {
          if (event._tag === "Attached") Deferred.unsafeDone(attached, Effect.void)
          else if (event._tag === "Output") {
            received += event.data.length
            if (seen(event.data)) Deferred.unsafeDone(done, Effect.succeed(Harness.now()))
          }
        }
      )
      yield* Deferred.await(attached).pipe(Effect.raceFirst(Deferred.await(failed)))
      const before = Sessions.cpuSample(server)
      const window = Sessions.monotonicMicros()
      const start = Harness.now()
      yield* Sessions.orBench(
        client.Sessions.Input({ sessionId: session.id, data: new TextEncoder().encode("go\r") })
      )
      const end = yield* Deferred.await(done).pipe(Effect.raceFirst(Deferred.await(failed)), timeout("vibes"))
      const cpu = Sessions.cpuSpent(before, Sessions.cpuSample(server))
      yield* Harness.progress(
        `vibes measured in the monotonic µs window ${window}–${Sessions.monotonicMicros()}`
      )
      yield* Sessions.orBench(client.Sessions.Close({ sessionId: session.id }))
      return { bytes: received, ms: end - start, cpu }
    })
  )

/** The same with the typed attach client over the attach socket (binary frames, no acknowledgements). */
const viaSocket = (server: Sessions.Server, file: string, bytes: number) =>
  Effect.scoped(
    Effect.gen(function* () {
      const client = yield* Sessions.connect(server)
      const session = yield* Sessions.orBench(
        client.Sessions.Create(
          CreateSession.make({ command: "/bin/sh", args: ["-c", script(file, bytes)], ...size })
        )
      )
      const attachment = yield* Sessions.attachSocket(server, session.id, size)
      const seen = Sessions.markerWatch(marker)
      const attached = yield* Deferred.make<void, Harness.BenchError>()
      const done = yield* Deferred.make<number, Harness.BenchError>()
      let received = 0
      yield* attachment.events.pipe(
        Stream.runForEach((event) =>
          Effect.sync(() => {
            if (event._tag === "Attached") Deferred.unsafeDone(attached, Effect.void)
            else if (event._tag === "Output") {
              received += event.data.length
              if (seen(event.data)) Deferred.unsafeDone(done, Effect.succeed(Harness.now()))
            }
          })
        ),
        Effect.catchAll((error) => {
          const failure = new Harness.BenchError({ message: error.message })
          return Effect.zipRight(Deferred.fail(attached, failure), Deferred.fail(done, failure))
        }),
        Effect.forkScoped
      )
      yield* Deferred.await(attached).pipe(timeout("attach socket: attaching"))
      const before = Sessions.cpuSample(server)
      const window = Sessions.monotonicMicros()
      const start = Harness.now()
      yield* attachment.input(new TextEncoder().encode("go\r"))
      const end = yield* Deferred.await(done).pipe(timeout("attach socket"))
      const cpu = Sessions.cpuSpent(before, Sessions.cpuSample(server))
      yield* Harness.progress(
        `attach socket measured in the monotonic µs window ${window}–${Sessions.monotonicMicros()}`
      )
      yield* Sessions.orBench(client.Sessions.Close({ sessionId: session.id }))
      return { bytes: received, ms: end - start, cpu }
    })
  )

const throughput = (m: Measurement) => (m.bytes / 1e6 / m.ms) * 1000

const main = Effect.gen(function* () {
  const loadAtStart = Sessions.runLines()
  const db = yield* Harness.database
  const machine = yield* Harness.machine(db)
  const dir = yield* Sessions.scratch("vibes-bench-throughput-")
  const file = path.join(dir, "output.txt")
  const bytes = megabytes * 1_000_000
  yield* Harness.progress(`writing ${megabytes} MB of text lines to ${file}`)
  Sessions.writeTextFile(file, bytes, marker)
  const server = yield* Sessions.serve(db, { cpuProfDir })
  yield* Harness.progress(`vibes serve (pid ${server.pid}) listens on ${server.url}`)
  // One small warm-up of each, so neither pays for first-time work (JIT, the PTY host's start).
  const warmFile = path.join(dir, "warm.txt")
  Sessions.writeTextFile(warmFile, 2_000_000, marker)
  yield* raw(warmFile, 2_000_000)
  yield* viaHost(server, warmFile, 2_000_000)
  yield* vibes(server, warmFile, 2_000_000)
  yield* viaSocket(server, warmFile, 2_000_000)

  const results = {
    raw: [] as Array<Measurement>,
    host: [] as Array<Measurement>,
    vibes: [] as Array<Measurement>,
    socket: [] as Array<Measurement>
  }
  for (let round = 1; round <= rounds; round++) {
    const r = yield* raw(file, bytes)
    results.raw.push(r)
    yield* Harness.progress(`round ${round}: raw node-pty ${Sessions.mbPerSecond(r.bytes, r.ms)} MB/s`)
    yield* Sessions.settle([server.pid, server.ptyHostPid()], 60)
    const h = yield* viaHost(server, file, bytes)
    results.host.push(h)
    yield* Harness.progress(`round ${round}: PTY host ${Sessions.mbPerSecond(h.bytes, h.ms)} MB/s`)
    yield* Sessions.settle([server.pid, server.ptyHostPid()], 60)
    const v = yield* vibes(server, file, bytes)
    results.vibes.push(v)
    yield* Harness.progress(`round ${round}: vibes ${Sessions.mbPerSecond(v.bytes, v.ms)} MB/s`)
    yield* Sessions.settle([server.pid, server.ptyHostPid()], 60)
    const w = yield* viaSocket(server, file, bytes)
    results.socket.push(w)
    yield* Harness.progress(`round ${round}: attach socket ${Sessions.mbPerSecond(w.bytes, w.ms)} MB/s`)
    yield* Sessions.settle([server.pid, server.ptyHostPid()], 60)
  }

  const medianOf = (ms: ReadonlyArray<Measurement>) => Harness.median(ms.map(throughput))
  const rawMedian = medianOf(results.raw)
  yield* Harness.print(`### Output throughput to an attached client (${megabytes} MB)\n`)
  yield* Harness.print(Harness.machineMarkdown(machine))
  yield* Harness.print(loadAtStart)
  yield* Harness.print("")
  yield* Harness.print(
    Harness.header([
      "system",
      "bytes received",
      "median MB/s",
      "all rounds MB/s",
      "vs raw node-pty",
      "≥ 0.8x",
      "CPU s server / PTY host / Postgres / client, each round"
    ])
  )
  const line = (name: string, ms: ReadonlyArray<Measurement>, median: number) =>
    Harness.row([
      name,
      Harness.count(ms[0]?.bytes ?? Number.NaN),
      median.toFixed(1),
      ms.map((m) => throughput(m).toFixed(1)).join(", "),
      Harness.ratio(median, rawMedian),
      name.startsWith("vibes") ? (median / rawMedian >= 0.8 ? "yes" : "no") : "",
      ms.map((m) => Sessions.cpuText(m.cpu)).join("; ")
    ])
  yield* Harness.print(line("raw node-pty, in process", results.raw, rawMedian))
  yield* Harness.print(line("PTY host over its socket, no server", results.host, medianOf(results.host)))
  yield* Harness.print(line("vibes, typed RPC (Sessions.Attach)", results.vibes, medianOf(results.vibes)))
  yield* Harness.print(
    line("vibes, attach socket (typed attach client)", results.socket, medianOf(results.socket))
  )
  yield* Harness.print("")
})

Harness.run(main)
