/**
 * Attach latency against the size of a session's output history.
 *
 * A `vibes serve` child process (compiled build, fresh database) runs one session per history
 * size (`BENCH_ATTACH_HISTORY_MB`, default 0,1,100,1000), each `/bin/sh -c 'base64 -w 76
 * /dev/urandom | head -c <size>; exec cat'` in 80x24, one after another. Each is left to print
 * everything and go idle (the server records every byte to Postgres on the way); then the server
 * is left to settle. The 0 MB session prints nothing: it is the baseline.
 *
 * Then `BENCH_ATTACH_COUNT` (50) attaches to each session, the sizes taken in turn: open a new
 * client connection (WebSocket up, one `System.Info` answered), time `Sessions.Attach({ sessionId,
 * cols: 80, rows: 24 })` from the call to the first element (`Attached`, with the screen and 1000
 * lines of scrollback), close the connection, pause 100 ms. For reference, one `Sessions.Get`
 * round trip is timed on each connection too.
 *
 * A history that is not recorded within `BENCH_ATTACH_MAX_SECONDS` (1800) of starting is reported
 * as such, and its session measured at whatever it had reached. Env: those, BENCH_CPU_PROF,
 * DATABASE_URL.
 */
import { Deferred, Effect, Option } from "effect"
import { CreateSession, type SessionInfo } from "../../rpc/Sessions.js"
import * as Harness from "../events/harness.js"
import * as Sessions from "./harness.js"

const historiesMB = (process.env["BENCH_ATTACH_HISTORY_MB"] ?? "0,1,100,1000")
  .split(",")
  .map((part) => Number(part.trim()))
const count = Harness.envInt("BENCH_ATTACH_COUNT", 50)
const maxSeconds = Harness.envInt("BENCH_ATTACH_MAX_SECONDS", 1800)
const cpuProfDir = process.env["BENCH_CPU_PROF"]
const size = { cols: 80, rows: 24 }
const lineBytes = 77

/** Bytes the terminal shows for `bytes` of `base64 -w 76` output: each newline becomes CR LF. */
const terminalBytes = (bytes: number) => bytes + Math.floor(bytes / lineBytes)

interface History {
  readonly megabytes: number
  readonly session: SessionInfo
  readonly expected: number
  /** Bytes the session had written when measured, and whether it was all and idle by then. */
  readonly reached: number
  readonly complete: boolean
  readonly seconds: number
  readonly events: number
  readonly storedMB: number
}

interface Sample {
  readonly attachMs: number
  readonly getMs: number
  readonly screenBytes: number
}

const generate = (server: Sessions.Server, megabytes: number) =>
  Effect.scoped(
    Effect.gen(function* () {
      if (!Number.isFinite(megabytes) || megabytes < 0) {
        return yield* new Harness.BenchError({ message: `bad history size '${megabytes}' MB` })
      }
      const client = yield* Sessions.connect(server)
      const bytes = Math.round(megabytes * 1_000_000)
      const script = bytes === 0 ? "exec cat" : `base64 -w 76 /dev/urandom | head -c ${bytes}; exec cat`
      const session = yield* Sessions.orBench(
        client.Sessions.Create(CreateSession.make({ command: "/bin/sh", args: ["-c", script], ...size }))
      )
      const expected = terminalBytes(bytes)
      yield* Harness.progress(
        `${megabytes} MB: session ${session.id} prints ${Harness.count(expected)} bytes`
      )
      const start = Harness.now()
      // `outputBytes` is brought up to date when the session goes idle.
      const done = yield* Sessions.waitForInfo(
        client,
        session.id,
        (info) => info.outputBytes >= expected,
        `${megabytes} MB of history`,
        maxSeconds
      ).pipe(Effect.option)
      const waited = (Harness.now() - start) / 1000
      const info = Option.isSome(done)
        ? done.value
        : yield* Sessions.orBench(client.Sessions.Get({ sessionId: session.id }))
      // From the start to the last output, without the quiet time it takes to count as idle.
      const seconds = (info.lastActivityAt.epochMillis - info.createdAt.epochMillis) / 1000
      yield* Harness.progress(
        `${megabytes} MB: ${Option.isSome(done) ? "recorded and idle" : "NOT complete"} after ${waited.toFixed(0)} s`
      )
      return { session, expected, reached: info.outputBytes, complete: Option.isSome(done), seconds }
    })
  )

const attachOnce = (server: Sessions.Server, sessionId: string) =>
  Effect.scoped(
    Effect.gen(function* () {
      const client = yield* Sessions.connect(server)
      const [, getMs] = yield* Harness.timed(Sessions.orBench(client.Sessions.Get({ sessionId })))
      const first = yield* Deferred.make<{ readonly at: number; readonly screenBytes: number }>()
      const start = Harness.now()
      const failed = yield* Sessions.follow(client.Sessions.Attach({ sessionId, ...size }), (event) => {
        if (event._tag === "Attached") {
          Deferred.unsafeDone(
            first,
            Effect.succeed({ at: Harness.now(), screenBytes: event.screen?.vt.length ?? 0 })
          )
        }
      })
      const got = yield* Deferred.await(first).pipe(
        Effect.raceFirst(Deferred.await(failed)),
        Effect.timeoutFail({
          duration: "60 seconds",
          onTimeout: () => new Harness.BenchError({ message: "no Attached within 60 s" })
        })
      )
      return { attachMs: got.at - start, getMs, screenBytes: got.screenBytes } satisfies Sample
    })
  )

/** Stored `session.output` events of a session and their size in the table, in MB. */
const stored = (db: Harness.BenchDatabase, sessionId: string) =>
  Effect.scoped(
    Effect.gen(function* () {
      const client = yield* Harness.rawClient(db)
      const result = yield* Harness.rawQuery<{ events: string; bytes: string }>(
        client,
        `SELECT count(*) AS events, coalesce(sum(pg_column_size(e.*)), 0) AS bytes
           FROM vibes_events e WHERE session_id = $1 AND type = 'session.output'`,
        [sessionId]
      )
      const row = result.rows[0]
      return { events: Number(row?.events ?? 0), storedMB: Number(row?.bytes ?? 0) / 1e6 }
    })
  )

const main = Effect.gen(function* () {
  const loadAtStart = Sessions.runLines()
  const db = yield* Harness.database
  const machine = yield* Harness.machine(db)
  const server = yield* Sessions.serve(db, { cpuProfDir })
  yield* Harness.progress(`vibes serve (pid ${server.pid}) listens on ${server.url}`)

  const histories: Array<History> = []
  for (const megabytes of historiesMB) {
    const generated = yield* generate(server, megabytes)
    const { events, storedMB } = yield* stored(db, generated.session.id)
    histories.push({ megabytes, ...generated, events, storedMB })
  }
  yield* Harness.progress("letting the server settle")
  yield* Sessions.settle([server.pid, server.ptyHostPid()], 300)
  const rssAfterHistory = Sessions.rssKiB(server.pid)

  // One unmeasured attach each, then the measured ones, sizes in turn.
  for (const history of histories) yield* attachOnce(server, history.session.id)
  const samples = new Map<number, Array<Sample>>(histories.map((h) => [h.megabytes, []]))
  const window = Sessions.monotonicMicros()
  for (let i = 0; i < count; i++) {
    for (const history of histories) {
      samples.get(history.megabytes)?.push(yield* attachOnce(server, history.session.id))
      yield* Effect.sleep("100 millis")
    }
  }
  yield* Harness.progress(
    `attaches measured in the monotonic µs window ${window}–${Sessions.monotonicMicros()}`
  )

  yield* Harness.print(`### Attach latency against history size (${count} attaches each)\n`)
  yield* Harness.print(Harness.machineMarkdown(machine))
  yield* Harness.print(loadAtStart)
  yield* Harness.print(
    `- Server RSS once every history was recorded: ${(rssAfterHistory / 1024).toFixed(0)} MiB`
  )
  yield* Harness.print("")
  yield* Harness.print(
    Harness.header([
      "history",
      "output bytes",
      "recorded",
      "time to record s",
      "MB/s recorded",
      "session.output events",
      "stored MB",
      "Attached bytes (screen)",
      "attach p50 ms",
      "attach p99 ms",
      "attach max ms",
      "p99 vs smallest",
      "Get p50 / p99 ms",
      "p99 ≤ 50 ms"
    ])
  )
  const smallest = histories[0]
  const p99Of = (megabytes: number) =>
    Harness.percentile(
      (samples.get(megabytes) ?? []).map((s) => s.attachMs),
      99
    )
  for (const history of histories) {
    const measured = samples.get(history.megabytes) ?? []
    const attach = measured.map((s) => s.attachMs)
    const get = measured.map((s) => s.getMs)
    yield* Harness.print(
      Harness.row([
        `${history.megabytes} MB`,
        Harness.count(history.reached),
        history.complete
          ? "all, idle"
          : `**only ${Harness.count(history.reached)} of ${Harness.count(history.expected)}**`,
        history.megabytes === 0 ? "" : history.seconds.toFixed(0),
        history.megabytes === 0 ? "" : Sessions.mbPerSecond(history.reached, history.seconds * 1000),
        Harness.count(history.events),
        history.storedMB.toFixed(0),
        Harness.count(Harness.median(measured.map((s) => s.screenBytes))),
        Harness.millis(Harness.percentile(attach, 50)),
        Harness.millis(Harness.percentile(attach, 99)),
        Harness.millis(Math.max(...attach)),
        smallest === undefined ? "n/a" : Harness.ratio(p99Of(history.megabytes), p99Of(smallest.megabytes)),
        `${Harness.millis(Harness.percentile(get, 50))} / ${Harness.millis(Harness.percentile(get, 99))}`,
        Harness.percentile(attach, 99) <= 50 ? "yes" : "no"
      ])
    )
  }
  yield* Harness.print("")
})

Harness.run(main)
