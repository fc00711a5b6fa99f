/**
 * What an unauthenticated attacker can do to a node (issue 18), measured against the same node
 * when nobody attacks it, in one run:
 *
 * - **garbage**: an attacker process sends `BENCH_ATTACK_BYTES` (100 MiB) of random bytes as fast
 *   as it can — on bare TCP, behind a WebSocket upgrade of `/rpc` without credentials, and as the
 *   chunked body of a POST without credentials. Meanwhile this process asks `/healthz` every
 *   10 ms and types into a session (one key every 10 ms, over the typed client, timed until the
 *   echo arrives). Reported: `/healthz` and echo latency quiet and under attack, and the CPU
 *   the attacker and the server spent per MiB.
 * - **failed logins**: `BENCH_LOGINS` (10,000) wrong tokens from one address, one after another:
 *   how long until the address is locked out, how many were checked, and the server's CPU.
 *
 * Targets: `/healthz` p99 ≤ 50 ms under attack; echo p99 under attack within 2x of quiet.
 * Env: BENCH_ATTACK_BYTES, BENCH_ATTACK_CONNECTIONS (8), BENCH_LOGINS, BENCH_QUIET_SECONDS (5),
 * DATABASE_URL.
 */
import * as childProcess from "node:child_process"
import * as http from "node:http"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { Deferred, Effect, Fiber, Schema } from "effect"
import { CreateSession } from "../../rpc/Sessions.js"
import * as Harness from "../events/harness.js"
import * as Sessions from "../sessions/harness.js"

const attackBytes = Harness.envInt("BENCH_ATTACK_BYTES", 100 * 1024 * 1024)
const logins = Harness.envInt("BENCH_LOGINS", 10_000)
const quietSeconds = Harness.envInt("BENCH_QUIET_SECONDS", 5)
const here = path.dirname(fileURLToPath(import.meta.url))
const command = { file: "/bin/sh", args: ["-c", "stty raw -echo; printf R; exec cat"] }

const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })

/** One GET, timed; the status and milliseconds. */
const get = (url: string, headers: Record<string, string> = {}, localAddress?: string) =>
  Effect.async<{ readonly status: number; readonly ms: number }>((resume) => {
    const started = Harness.now()
    const request = http.get(
      url,
      { headers, ...(localAddress === undefined ? { agent } : { agent: false, localAddress }) },
      (response) => {
        response.resume()
        response.on("end", () =>
          resume(Effect.succeed({ status: response.statusCode ?? 0, ms: Harness.now() - started }))
        )
      }
    )
    request.on("error", () => resume(Effect.succeed({ status: 0, ms: Harness.now() - started })))
  })

const AttackReport = Schema.parseJson(
  Schema.Struct({
    mode: Schema.String,
    bytes: Schema.Number,
    connections: Schema.Number,
    seconds: Schema.Number,
    cpuMillis: Schema.Number
  })
)

/** Runs the attacker process to its end. */
const attack = (mode: string, url: string) =>
  Effect.async<typeof AttackReport.Type, Harness.BenchError>((resume) => {
    const child = childProcess.spawn(
      process.execPath,
      ["--import", "tsx", path.join(here, "attacker.ts"), mode, url],
      {
        env: { ...process.env, BENCH_ATTACK_BYTES: String(attackBytes) },
        stdio: ["ignore", "pipe", "inherit"]
      }
    )
    let out = ""
    child.stdout.on("data", (chunk: Buffer) => (out += chunk.toString("utf8")))
    child.once("close", () => {
      const line = out.trim().split("\n").pop() ?? ""
      try {
        resume(Effect.succeed(Schema.decodeUnknownSync(AttackReport)(line)))
      } catch {
        resume(Effect.fail(new Harness.BenchError({ message: `the attacker printed no report: ${out}` })))
      }
    })
    return Effect.sync(() => child.kill("SIGKILL"))
  })

/** Probes `/healthz` every 10 ms and types a key every 10 ms until `until` completes. */
const probe = (
  server: Sessions.Server,
  type: () => Effect.Effect<number, Harness.BenchError>,
  until: Effect.Effect<void, Harness.BenchError>
) =>
  Effect.gen(function* () {
    const health: Array<number> = []
    const echo: Array<number> = []
    const healthFiber = yield* Effect.fork(
      Effect.forever(
        Effect.zipRight(
          Effect.map(get(`${server.url}/healthz`), (result) =>
            health.push(result.status === 200 ? result.ms : Number.POSITIVE_INFINITY)
          ),
          Effect.sleep("10 millis")
        )
      )
    )
    const echoFiber = yield* Effect.fork(
      Effect.forever(
        Effect.zipRight(
          Effect.map(type(), (ms) => echo.push(ms)),
          Effect.sleep("10 millis")
        )
      )
    )
    yield* until
    yield* Fiber.interrupt(healthFiber)
    yield* Fiber.interrupt(echoFiber)
    return { health, echo }
  })

const main = Effect.gen(function* () {
  const db = yield* Harness.database
  const machine = yield* Harness.machine(db)
  const server = yield* Sessions.serve(db)
  yield* Harness.progress(`vibes serve (pid ${server.pid}) listens on ${server.url}`)
  const client = yield* Sessions.connect(server)
  const session = yield* Sessions.orBench(
    client.Sessions.Create(
      CreateSession.make({ command: command.file, args: command.args, cols: 80, rows: 24 })
    )
  )
  let received = 0
  let ready = false
  let waiter: { readonly count: number; readonly done: Deferred.Deferred<number> } | undefined
  const readyDone = yield* Deferred.make<void>()
  const attached = yield* Deferred.make<string>()
  const failed = yield* Sessions.follow(
    client.Sessions.Attach({ sessionId: session.id, cols: 80, rows: 24 }),
    (event) => {
      if (event._tag === "Attached") {
        if (event.screen?.text.includes("R") === true) {
          ready = true
          Deferred.unsafeDone(readyDone, Effect.void)
        }
        Deferred.unsafeDone(attached, Effect.succeed(event.attachmentId))
      } else if (event._tag === "Output") {
        let bytes = event.data
        if (!ready) {
          const r = bytes.indexOf(82)
          if (r < 0) return
          ready = true
          Deferred.unsafeDone(readyDone, Effect.void)
          bytes = bytes.subarray(r + 1)
        }
        received += bytes.length
        if (waiter !== undefined && received >= waiter.count) {
          Deferred.unsafeDone(waiter.done, Effect.succeed(Harness.now()))
          waiter = undefined
        }
      }
    }
  )
  const attachmentId = yield* Deferred.await(attached).pipe(Effect.raceFirst(Deferred.await(failed)))
  yield* Deferred.await(readyDone).pipe(Effect.raceFirst(Deferred.await(failed)))
  let typed = 0
  const type = () =>
    Effect.gen(function* () {
      typed++
      const done = yield* Deferred.make<number>()
      waiter = { count: typed, done }
      const start = Harness.now()
      yield* Sessions.orBench(
        client.Sessions.Input({
          sessionId: session.id,
          data: new Uint8Array([97 + (typed % 26)]),
          attachmentId
        })
      )
      const end = yield* Deferred.await(done).pipe(
        Effect.raceFirst(Deferred.await(failed)),
        Effect.timeoutFail({
          duration: "10 seconds",
          onTimeout: () => new Harness.BenchError({ message: "no echo within 10 s" })
        })
      )
      return end - start
    })

  yield* Sessions.settle([server.pid, server.ptyHostPid()], 30)
  yield* Harness.progress(`quiet: ${quietSeconds} s`)
  const quiet = yield* probe(server, type, Effect.sleep(`${quietSeconds} seconds`))

  const rows: Array<string> = []
  const row = (
    name: string,
    measured: { health: ReadonlyArray<number>; echo: ReadonlyArray<number> },
    extra: ReadonlyArray<string>
  ) =>
    Harness.row([
      name,
      Harness.millis(Harness.percentile(measured.health, 50)),
      Harness.millis(Harness.percentile(measured.health, 99)),
      Harness.millis(Harness.percentile(measured.echo, 50)),
      Harness.millis(Harness.percentile(measured.echo, 99)),
      Harness.ratio(Harness.percentile(measured.echo, 99), Harness.percentile(quiet.echo, 99)),
      ...extra
    ])
  rows.push(row("nobody attacks", quiet, ["–", "–", "–", "–"]))

  for (const mode of ["tcp", "upgrade", "body"]) {
    yield* Sessions.settle([server.pid, server.ptyHostPid()], 30)
    yield* Harness.progress(`attack: ${mode}`)
    const before = Sessions.cpuSample(server)
    const report = yield* Deferred.make<typeof AttackReport.Type, Harness.BenchError>()
    const attacker = yield* Effect.fork(
      Effect.exit(attack(mode, server.url)).pipe(Effect.flatMap((exit) => Deferred.done(report, exit)))
    )
    const measured = yield* probe(server, type, Effect.asVoid(Deferred.await(report)))
    yield* Fiber.join(attacker)
    const result = yield* Deferred.await(report)
    const spent = Sessions.cpuSpent(before, Sessions.cpuSample(server))
    const mib = result.bytes / (1024 * 1024)
    rows.push(
      row(`garbage: ${mode}`, measured, [
        `${Harness.count(mib)} MiB in ${result.seconds.toFixed(1)} s, ${Harness.count(result.connections)} connections`,
        ((result.cpuMillis / mib) * 1).toFixed(1),
        ((spent.server * 1000) / mib).toFixed(1),
        Harness.ratio(spent.server * 1000, result.cpuMillis)
      ])
    )
  }

  yield* Sessions.settle([server.pid, server.ptyHostPid()], 30)
  yield* Harness.progress(`failed logins: ${logins}`)
  const before = Sessions.cpuSample(server)
  const started = Harness.now()
  let lockedAfter = Number.NaN
  let checked = 0
  let refused = 0
  for (let i = 0; i < logins; i++) {
    const answer = yield* get(`${server.url}/login?token=wrong-token-${i}`, {}, "127.0.0.77")
    if (answer.status === 401) checked++
    else if (answer.status === 429) {
      refused++
      if (Number.isNaN(lockedAfter)) lockedAfter = Harness.now() - started
    }
  }
  const loginSeconds = (Harness.now() - started) / 1000
  const loginCpu = Sessions.cpuSpent(before, Sessions.cpuSample(server))
  yield* Sessions.orBench(client.Sessions.Close({ sessionId: session.id }))

  yield* Harness.print(`### Unauthenticated attacks (issue 18)\n`)
  yield* Harness.print(Harness.machineMarkdown(machine))
  yield* Harness.print("")
  yield* Harness.print(
    Harness.header([
      "while",
      "/healthz p50 ms",
      "/healthz p99 ms",
      "echo p50 ms",
      "echo p99 ms",
      "echo p99 vs quiet",
      "garbage sent",
      "attacker CPU ms/MiB",
      "server CPU ms/MiB",
      "server/attacker CPU"
    ])
  )
  for (const line of rows) yield* Harness.print(line)
  yield* Harness.print("")
  yield* Harness.print(
    Harness.header([
      "failed logins from one address",
      "checked (401)",
      "refused unchecked (429)",
      "locked out after",
      "in all",
      "server CPU s",
      "Postgres CPU s"
    ])
  )
  yield* Harness.print(
    Harness.row([
      Harness.count(logins),
      Harness.count(checked),
      Harness.count(refused),
      `${Harness.millis(lockedAfter)} ms`,
      `${loginSeconds.toFixed(1)} s`,
      loginCpu.server.toFixed(2),
      loginCpu.postgres.toFixed(2)
    ])
  )
})

Harness.run(main)
