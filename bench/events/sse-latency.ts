/**
 * Publish-to-client latency of `GET /api/events` with many concurrent SSE clients, as a ratio
 * against a minimal plain-Node SSE broadcast server measured in the same run.
 *
 * A real `vibes serve` runs as a child process on a fresh database. This process holds the
 * clients (raw `http.get` SSE connections, `?types=bench.latency`) and the producer, which appends
 * `bench.latency` events with `data: { sentAt, seq }` to the Postgres event log of the same
 * database, one event an append, as another node would: the server learns of them through
 * `pg_notify` and its event bus fans them out. Latency of a delivery is its arrival at a client
 * minus `sentAt`; every (event, client) pair is recorded, so missing deliveries are counted, and a
 * delivery still missing when the wait ends counts as slower than any in the percentiles.
 *
 * The baseline (`sse-baseline-server.ts`, a child process) receives the same events as JSON lines
 * over a local TCP socket and writes each as one frame to all its clients: same clients, same N,
 * same rate. It has no durable write: the vibes latency includes the Postgres commit, the
 * LISTEN/NOTIFY hop and the read of the new rows; the baseline's does not.
 *
 * Before each measurement both servers are left to go idle, so one system's backlog does not
 * slow the other's measurement.
 *
 * Env: BENCH_SSE_CLIENTS (1,100,1000,10000), BENCH_SSE_EVENTS (measured events a level, one
 * number or one per level; 100,100,50,20), BENCH_SSE_RATE (events a second, one number or one
 * per level; 20,20,20,2), BENCH_SSE_WARMUP (unmeasured events first, 10), BENCH_SSE_BATCH (connections
 * opened at once, 500), BENCH_SSE_DRAIN_SECONDS (wait for stragglers after the last event, 30),
 * BENCH_SSE_SYSTEMS (vibes,baseline), BENCH_SSE_CPU_PROF (a directory: the vibes server writes a
 * `--cpu-prof` profile there when it stops), BENCH_SSE_SERVER_ROOT (run `src/main.ts` of another
 * checkout, e.g. a copy with a change to measure; this one by default), DATABASE_URL.
 */
import * as childProcess from "node:child_process"
import * as fs from "node:fs"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import { performance } from "node:perf_hooks"
import * as readline from "node:readline"
import { fileURLToPath } from "node:url"
import { Context, Deferred, Duration, Effect, Fiber, Layer, Option, Redacted, type Scope } from "effect"
import * as Db from "../../infra/db/Db.js"
import * as Migrations from "../../infra/db/Migrations.js"
import { EventLog } from "../../infra/eventlog/EventLog.js"
import * as PgEventLog from "../../infra/eventlog/PgEventLog.js"
import { NewEvent } from "../../rpc/Events.js"
import * as Harness from "./harness.js"
import * as SseClients from "./sse-clients.js"
import * as SseVibes from "./sse-vibes.js"
import * as Proc from "../../infra/proc/Proc.js"

const here = path.dirname(fileURLToPath(import.meta.url))
const eventType = "bench.latency"
const source = { nodeId: "bench", component: "sse-latency" }

// Options -----------------------------------------------------------------------------------

const levels = Harness.envInts("BENCH_SSE_CLIENTS", [1, 100, 1000, 10_000])
const eventCounts = Harness.envInts("BENCH_SSE_EVENTS", [100, 100, 50, 20])
// At 10,000 clients 20 events/s would be 200,000 deliveries a second, more than even the baseline
// manages on two cores; 2/s keeps the deliveries a second of the 1,000-client level.
const rates = Harness.envInts("BENCH_SSE_RATE", [20, 20, 20, 2])
const warmup = Harness.envInt("BENCH_SSE_WARMUP", 10)
const batch = Harness.envInt("BENCH_SSE_BATCH", 500)
const drainSeconds = Harness.envInt("BENCH_SSE_DRAIN_SECONDS", 30)
const systems = Harness.envList("BENCH_SSE_SYSTEMS", ["vibes", "baseline"])
const cpuProfDir = process.env["BENCH_SSE_CPU_PROF"]
const serverRoot = process.env["BENCH_SSE_SERVER_ROOT"]
// Large enough that no client is cut off for lagging: a slow server shows as latency instead.
const subscriberBuffer = 100_000

/** The `index`-th level's value of a per-level option: its own, else the last one given. */
const perLevel = (values: ReadonlyArray<number>, index: number): number =>
  values[Math.min(index, values.length - 1)] ?? Number.NaN

// Processes ---------------------------------------------------------------------------------

const clockTicks = (() => {
  try {
    return Number(childProcess.execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100
  } catch {
    return 100
  }
})()

/** Resident memory of `pid` in MiB (VmRSS), NaN when unknown. */
const rssMiB = (pid: number | undefined): number =>
  pid === undefined ? Number.NaN : Proc.kib(pid, "status", "VmRSS") / 1024

/** User plus system CPU time of `pid` so far, in milliseconds; NaN when unknown. */
const cpuMillis = (pid: number | undefined): number =>
  pid === undefined
    ? Number.NaN
    : Option.match(Proc.stat(pid), {
        onNone: () => Number.NaN,
        onSome: (stat) => ((stat.utime + stat.stime) * 1000) / clockTicks
      })

/** CPU time of this process so far, in milliseconds. */
const ownCpuMillis = (): number => {
  const usage = process.cpuUsage()
  return (usage.user + usage.system) / 1000
}

/**
 * Waits (at most `maxSeconds`) until every process in `pids` uses less than a tenth of a core over
 * half a second; false if one never did.
 */
const settle = (pids: ReadonlyArray<number | undefined>, maxSeconds: number) =>
  Effect.gen(function* () {
    const deadline = Harness.now() + maxSeconds * 1000
    for (;;) {
      const before = pids.map(cpuMillis)
      yield* Effect.sleep("500 millis")
      const busy = pids.some((pid, k) => (cpuMillis(pid) - (before[k] ?? 0)) / 500 > 0.1)
      if (!busy) return true
      if (Harness.now() > deadline) return false
    }
  })

/** The baseline server, running. */
interface Baseline {
  readonly url: string
  readonly ingestPort: number
  readonly pid: number
}

const isBaselineAnnouncement = (value: unknown): value is { http: number; ingest: number; pid: number } =>
  typeof value === "object" &&
  value !== null &&
  "http" in value &&
  typeof value.http === "number" &&
  "ingest" in value &&
  typeof value.ingest === "number" &&
  "pid" in value &&
  typeof value.pid === "number"

/** Starts `sse-baseline-server.ts`; it is stopped (TERM, then KILL) with the scope. */
const baselineServer: Effect.Effect<Baseline, Harness.BenchError, Scope.Scope> = Effect.gen(function* () {
  const exited = yield* Deferred.make<void>()
  const child = yield* Effect.acquireRelease(
    Effect.sync(() =>
      childProcess.spawn(process.execPath, ["--import", "tsx", path.join(here, "sse-baseline-server.ts")], {
        stdio: ["ignore", "pipe", "inherit"]
      })
    ),
    (child) =>
      Effect.gen(function* () {
        if (child.exitCode !== null || child.signalCode !== null) return
        child.kill("SIGTERM")
        const done = yield* Deferred.await(exited).pipe(Effect.timeout("5 seconds"), Effect.option)
        if (done._tag === "None") child.kill("SIGKILL")
      })
  )
  child.once("exit", () => Deferred.unsafeDone(exited, Effect.void))
  return yield* Effect.async<Baseline, Harness.BenchError>((resume) => {
    const lines = readline.createInterface({ input: child.stdout })
    lines.once("line", (line) => {
      const value: unknown = JSON.parse(line)
      if (isBaselineAnnouncement(value)) {
        resume(
          Effect.succeed({ url: `http://127.0.0.1:${value.http}`, ingestPort: value.ingest, pid: value.pid })
        )
      } else {
        resume(Effect.fail(new Harness.BenchError({ message: `baseline server said: ${line}` })))
      }
    })
    child.once("exit", (code) =>
      resume(Effect.fail(new Harness.BenchError({ message: `baseline server exited (${code})` })))
    )
  })
})

/** A TCP connection to the baseline's ingest port, closed with the scope. */
const ingestSocket = (port: number) =>
  Effect.acquireRelease(
    Effect.async<net.Socket, Harness.BenchError>((resume) => {
      const socket = net.connect({ host: "127.0.0.1", port }, () => resume(Effect.succeed(socket)))
      socket.setNoDelay(true)
      socket.once("error", (error) =>
        resume(Effect.fail(new Harness.BenchError({ message: `baseline ingest: ${error.message}` })))
      )
    }),
    (socket) => Effect.sync(() => socket.destroy())
  )

/** Subscribers of the vibes node's event bus, from `/metrics`; NaN when not reported. */
const busSubscribers = (url: string, token: string): Effect.Effect<number> =>
  Effect.promise(async () => {
    try {
      const response = await fetch(`${url}/metrics`, {
        headers: { authorization: `Bearer ${token}` },
        signal: AbortSignal.timeout(5000)
      })
      const match = /^vibes_event_subscribers(?:\{[^}]*\})? (\S+)$/m.exec(await response.text())
      return match?.[1] !== undefined ? Number(match[1]) : Number.NaN
    } catch {
      return Number.NaN
    }
  })

/** Waits (at most `seconds`) until the node's bus has `count` subscribers; returns what it has. */
const awaitSubscribers = (url: string, token: string, count: number, seconds: number) =>
  Effect.gen(function* () {
    const deadline = Harness.now() + seconds * 1000
    for (;;) {
      const n = yield* busSubscribers(url, token)
      if (n === count || Harness.now() > deadline) return n
      yield* Effect.sleep("200 millis")
    }
  })

// Measuring ---------------------------------------------------------------------------------

/** One system at one level. */
interface Level {
  readonly system: string
  /** Index into BENCH_SSE_CLIENTS. */
  readonly index: number
  readonly clients: number
  readonly events: number
  readonly rate: number
  readonly connectSeconds: number
  readonly expected: number
  readonly received: number
  readonly duplicates: number
  readonly dropped: number
  readonly publishFailures: number
  /** Percentiles over every expected delivery; a missing one is Infinity. */
  readonly p50: number
  readonly p95: number
  readonly p99: number
  readonly max: number
  readonly rssIdle: number
  readonly rssConnected: number
  readonly rssAfter: number
  /** CPU milliseconds of the server from the first measured event to the last delivery. */
  readonly serverCpu: number
  /** CPU milliseconds of this process (the clients, the producer) over the same window. */
  readonly clientCpu: number
  /** Event-loop utilisation of this process over the same window. */
  readonly clientElu: number
  /** Whether both servers were idle before the measurement began. */
  readonly settled: boolean
}

/** How one system takes an event. */
interface Target {
  readonly name: string
  readonly url: string
  readonly pid: number | undefined
  readonly publish: (seq: number) => Effect.Effect<void, unknown>
  /** Resolves once the server has registered `clients` subscribers (or knows no better). */
  readonly ready: (clients: number) => Effect.Effect<void>
}

const measure = (
  target: Target,
  options: {
    readonly index: number
    readonly clients: number
    readonly events: number
    readonly rate: number
    readonly token: string
    readonly settled: boolean
  }
) =>
  Effect.scoped(
    Effect.gen(function* () {
      const { clients, events, rate } = options
      const rssIdle = rssMiB(target.pid)
      yield* Harness.progress(`${target.name}: connecting ${Harness.count(clients)} clients`)
      const [pool, connectMillis] = yield* Harness.timed(
        SseClients.connect({
          url: `${target.url}/api/events?types=${eventType}`,
          headers: { authorization: `Bearer ${options.token}` },
          clients,
          batch,
          batchTimeoutMillis: 120_000,
          onBatch: (connected) =>
            connected % 2000 === 0 && connected < clients
              ? Harness.progress(`${target.name}: ${Harness.count(connected)} connected`)
              : Effect.void
        })
      )
      yield* target.ready(clients)
      const rssConnected = rssMiB(target.pid)
      yield* Harness.progress(
        `${target.name}: ${Harness.count(clients)} connected in ${(connectMillis / 1000).toFixed(1)} s; ` +
          `publishing ${warmup} + ${events} events at ${rate}/s`
      )
      pool.record(events)
      let publishFailures = 0
      let serverCpuStart = Number.NaN
      let clientCpuStart = Number.NaN
      let eluStart = performance.eventLoopUtilization()
      const interval = 1000 / rate
      const started = Harness.now()
      const publishers: Array<Fiber.RuntimeFiber<void>> = []
      // Open loop: each event goes out on its own schedule, however long the earlier ones take.
      for (let k = 0; k < warmup + events; k++) {
        const wait = started + k * interval - Harness.now()
        if (wait > 0) yield* Effect.sleep(Duration.millis(wait))
        const seq = k - warmup
        if (seq === 0) {
          serverCpuStart = cpuMillis(target.pid)
          clientCpuStart = ownCpuMillis()
          eluStart = performance.eventLoopUtilization()
        }
        publishers.push(
          yield* Effect.fork(
            target.publish(seq).pipe(
              Effect.catchAll(() =>
                Effect.sync(() => {
                  publishFailures++
                })
              )
            )
          )
        )
      }
      yield* Fiber.joinAll(publishers)
      const recording = yield* pool.finish(drainSeconds * 1000)
      const serverCpu = cpuMillis(target.pid) - serverCpuStart
      const clientCpu = ownCpuMillis() - clientCpuStart
      const clientElu = performance.eventLoopUtilization(eluStart).utilization
      const rssAfter = rssMiB(target.pid)
      const values = Array.from(recording.latencies, (v) => (Number.isNaN(v) ? Infinity : v))
      return {
        system: target.name,
        index: options.index,
        clients,
        events,
        rate,
        connectSeconds: connectMillis / 1000,
        expected: events * clients,
        received: recording.received,
        duplicates: recording.duplicates,
        dropped: pool.dropped(),
        publishFailures,
        p50: Harness.percentile(values, 50),
        p95: Harness.percentile(values, 95),
        p99: Harness.percentile(values, 99),
        max: Harness.percentile(values, 100),
        rssIdle,
        rssConnected,
        rssAfter,
        serverCpu,
        clientCpu,
        clientElu,
        settled: options.settled
      } satisfies Level
    })
  )

// Printing ----------------------------------------------------------------------------------

/** Milliseconds, or "> n s" for a delivery that never came within the wait. */
const latency = (ms: number): string => (ms === Infinity ? `> ${drainSeconds} s` : Harness.millis(ms))

const deliveries = (level: Level | undefined): string => {
  if (level === undefined) return "–"
  const problems = [
    level.received < level.expected ? `${Harness.count(level.expected - level.received)} missing` : "",
    level.duplicates > 0 ? `${Harness.count(level.duplicates)} duplicated` : "",
    level.dropped > 0 ? `${Harness.count(level.dropped)} clients dropped` : "",
    level.publishFailures > 0 ? `${level.publishFailures} publishes failed` : "",
    level.settled ? "" : "servers not idle at start"
  ].filter((p) => p !== "")
  return `${Harness.count(level.received)}${problems.length > 0 ? ` (${problems.join(", ")})` : ""}`
}

const latencyCells = (level: Level | undefined): ReadonlyArray<string> =>
  level === undefined
    ? ["–", "–", "–", "–", "–"]
    : [deliveries(level), ...[level.p50, level.p95, level.p99, level.max].map(latency)]

const mib = (n: number): string => (Number.isFinite(n) ? n.toFixed(0) : "n/a")

/** CPU microseconds per delivery made. */
const perDelivery = (level: Level | undefined, cpu: (level: Level) => number): string =>
  level === undefined || level.received === 0 || !Number.isFinite(cpu(level))
    ? "–"
    : ((cpu(level) * 1000) / level.received).toFixed(1)

const progressLine = (level: Level): string => {
  const ms = (value: number) => (value === Infinity ? latency(value) : `${latency(value)} ms`)
  return (
    `${level.system} @ ${Harness.count(level.clients)}: p50 ${ms(level.p50)}, p95 ${ms(level.p95)}, ` +
    `p99 ${ms(level.p99)}, max ${ms(level.max)}; ${deliveries(level)} of ${Harness.count(level.expected)}`
  )
}

// Main --------------------------------------------------------------------------------------

const main = Effect.gen(function* () {
  const db = yield* Harness.database
  const machine = yield* Harness.machine(db)
  // Built first, so the schema is migrated before the server starts.
  const producer = yield* Layer.build(
    PgEventLog.layer({ nodeId: source.nodeId }).pipe(
      Layer.provideMerge(Layer.effectDiscard(Migrations.run)),
      Layer.provideMerge(
        Db.layer({ url: db.url, poolSize: 4, connectTimeout: "10 seconds", queryTimeout: "60 seconds" })
      ),
      Layer.mapError((error) => new Harness.BenchError({ message: error.message }))
    )
  )
  const log = Context.get(producer, EventLog)

  const dataDir = yield* Effect.acquireRelease(
    Effect.sync(() => fs.mkdtempSync(path.join(os.tmpdir(), "vibes-bench-sse-"))),
    (dir) => Effect.sync(() => fs.rmSync(dir, { recursive: true, force: true }))
  )
  if (cpuProfDir !== undefined) fs.mkdirSync(cpuProfDir, { recursive: true })
  yield* Harness.progress(`starting vibes serve${serverRoot !== undefined ? ` from ${serverRoot}` : ""}`)
  const vibes = yield* SseVibes.serve({
    dataDir,
    env: {
      DATABASE_URL: Redacted.value(db.url),
      VIBES_EVENTS_SUBSCRIBER_BUFFER: String(subscriberBuffer)
    },
    nodeArgs: cpuProfDir === undefined ? [] : ["--cpu-prof", `--cpu-prof-dir=${path.resolve(cpuProfDir)}`],
    ...(serverRoot === undefined || serverRoot === "" ? {} : { root: path.resolve(serverRoot) })
  })
  const token = fs.readFileSync(path.join(dataDir, "admin-token"), "utf8").trim()
  const baseline = yield* baselineServer
  const ingest = yield* ingestSocket(baseline.ingestPort)

  const all: ReadonlyArray<Target> = [
    {
      name: "vibes",
      url: vibes.url,
      pid: vibes.pid,
      publish: (seq) =>
        Effect.suspend(() =>
          log.append([
            NewEvent.make({
              type: eventType,
              source,
              data: { sentAt: SseClients.wallClock(), seq }
            })
          ])
        ),
      ready: (clients) =>
        Effect.flatMap(awaitSubscribers(vibes.url, token, clients, 60), (n) =>
          n === clients
            ? Effect.void
            : Harness.progress(`vibes reports ${n} bus subscribers, expected ${clients}; measuring anyway`)
        )
    },
    {
      name: "baseline",
      url: baseline.url,
      pid: baseline.pid,
      // Shaped and sized like the JSON of a vibes frame.
      publish: (seq) =>
        Effect.sync(() => {
          const line = JSON.stringify({
            offset: seq + warmup + 1,
            id: crypto.randomUUID(),
            type: eventType,
            ts: new Date().toISOString(),
            source,
            tenantId: "default",
            severity: "info",
            data: { sentAt: SseClients.wallClock(), seq }
          })
          ingest.write(`${line}\n`)
        }),
      ready: () => Effect.void
    }
  ]
  const targets = all.filter((target) => systems.includes(target.name))

  const results: Array<Level> = []
  for (const [index, clients] of levels.entries()) {
    for (const target of targets) {
      const settled = yield* settle([vibes.pid, baseline.pid], 180)
      if (!settled) yield* Harness.progress("a server is still busy after 180 s; measuring anyway")
      const level = yield* measure(target, {
        index,
        clients,
        events: perLevel(eventCounts, index),
        rate: perLevel(rates, index),
        token,
        settled
      })
      results.push(level)
      yield* Harness.progress(progressLine(level))
    }
  }

  const find = (system: string, index: number) =>
    results.find((level) => level.system === system && level.index === index)

  yield* Harness.print(`\n## SSE publish-to-client latency (${warmup} warm-up events before each level)\n`)
  yield* Harness.print(
    Harness.header([
      "clients",
      "events",
      "events/s",
      "vibes deliveries",
      "vibes p50 ms",
      "vibes p95 ms",
      "vibes p99 ms",
      "vibes max ms",
      "baseline deliveries",
      "baseline p50 ms",
      "baseline p95 ms",
      "baseline p99 ms",
      "baseline max ms",
      "p95 vibes / baseline"
    ])
  )
  for (const [index, clients] of levels.entries()) {
    const v = find("vibes", index)
    const b = find("baseline", index)
    yield* Harness.print(
      Harness.row([
        Harness.count(clients),
        Harness.count(perLevel(eventCounts, index)),
        perLevel(rates, index),
        ...latencyCells(v),
        ...latencyCells(b),
        v !== undefined && b !== undefined ? Harness.ratio(v.p95, b.p95) : "–"
      ])
    )
  }

  yield* Harness.print(
    "\nResources: server RSS (/proc VmRSS) idle before the clients connect, with them connected, and " +
      "after the events; CPU per delivery over the measured window (first measured event to last " +
      "delivery), of the server and of this process (clients and producer); ELU is this process' " +
      "event-loop utilisation over that window.\n"
  )
  yield* Harness.print(
    Harness.header([
      "clients",
      "vibes connect s",
      "vibes RSS idle / connected / after MiB",
      "vibes KiB per connection",
      "vibes server CPU µs/delivery",
      "baseline connect s",
      "baseline RSS connected MiB",
      "baseline server CPU µs/delivery",
      "client CPU µs/delivery vibes / baseline",
      "client ELU vibes / baseline"
    ])
  )
  for (const [index, clients] of levels.entries()) {
    const v = find("vibes", index)
    const b = find("baseline", index)
    yield* Harness.print(
      Harness.row([
        Harness.count(clients),
        v === undefined ? "–" : v.connectSeconds.toFixed(1),
        v === undefined ? "–" : `${mib(v.rssIdle)} / ${mib(v.rssConnected)} / ${mib(v.rssAfter)}`,
        v === undefined ? "–" : (((v.rssConnected - v.rssIdle) * 1024) / clients).toFixed(1),
        perDelivery(v, (l) => l.serverCpu),
        b === undefined ? "–" : b.connectSeconds.toFixed(1),
        b === undefined ? "–" : mib(b.rssConnected),
        perDelivery(b, (l) => l.serverCpu),
        `${perDelivery(v, (l) => l.clientCpu)} / ${perDelivery(b, (l) => l.clientCpu)}`,
        `${v === undefined ? "–" : v.clientElu.toFixed(2)} / ${b === undefined ? "–" : b.clientElu.toFixed(2)}`
      ])
    )
  }

  const topVibes = find("vibes", levels.length - 1)
  if (topVibes !== undefined) {
    yield* Harness.print(
      `\nTarget p95 < 100 ms at ${Harness.count(topVibes.clients)} clients: ` +
        `${topVibes.p95 < 100 ? "met" : "missed"} (p95 ${latency(topVibes.p95)}${topVibes.p95 === Infinity ? "" : " ms"}).`
    )
  }
  yield* Harness.print(
    [
      "",
      "Latency of a delivery: arrival of the chunk at a client in this process minus the event's `sentAt`,",
      "taken just before the append (vibes) or the socket write (baseline); clients and producer share",
      "this process and its clock. vibes: a `vibes serve` child process; this process appends the events",
      "to the Postgres event log (one event an append), so the latency includes the commit, the",
      "`pg_notify` → LISTEN hop, the server's read of the new rows, the event bus fan-out, the per-client",
      "stream and the socket write. Baseline: a plain `node:http` child process that gets the events as",
      "JSON lines over a local TCP socket and writes one frame to every client; it has no durable write,",
      "no database hop, no filtering, no authentication and no per-client buffer or fiber. Both: the same",
      "clients, N, rate and frame size. The clients share the machine with the servers and Postgres: a",
      "client ELU near 1.0 means the clients themselves add delay.",
      "",
      Harness.machineMarkdown(machine)
    ].join("\n")
  )
})

Harness.run(main)
