/**
 * Conversation recording's cost on the proxy: one vibes node (in this process, fresh database)
 * with two providers on the same local upstream (`upstream.ts`, a child process): `rec`
 * (recorded, the default) and `norec` (`"record": false`). Both go through the same code but for
 * the capture and the recorder, so their difference is what recording adds; they are measured
 * in the same run, in alternating blocks, so that drift hits both alike.
 *
 * 1. **Latency**: `BENCH_LATENCY_REQUESTS` (1,000) sequential Chat Completions requests to each
 *    after 100 of warm-up, one keep-alive connection, in blocks of 100; p50 and p99.
 * 2. **TTFB** of a stream: `BENCH_TTFB_REQUESTS` (100) sequential streams each (20 events 5 ms
 *    apart), in blocks of 10, to the first body byte; each stream is read to its end.
 * 3. **Throughput**: `BENCH_CONCURRENCY` (32) concurrent request loops for `BENCH_SECONDS` (5) s,
 *    `BENCH_ROUNDS` (2) rounds each, alternating; the median round.
 *
 * The load generator shares the node's process (and so its event loop): absolute numbers are
 * pessimistic; the ratio between the two providers is the measure. At the end it waits until
 * every recorded turn is stored and reports how many were recorded and dropped.
 *
 * Run: `node --import tsx bench/proxy/recording.ts` (`DATABASE_URL` for an external Postgres).
 */
import * as childProcess from "node:child_process"
import * as crypto from "node:crypto"
import * as http from "node:http"
import * as path from "node:path"
import * as readline from "node:readline"
import { fileURLToPath } from "node:url"
import { Effect, Layer, Logger, LogLevel } from "effect"
import * as Harness from "../events/harness.js"
import * as TestServer from "../../test/support/TestServer.js"
import * as FakeProvider from "../../test/support/FakeProvider.js"
import * as Config from "../../src/config/Config.js"

const here = path.dirname(fileURLToPath(import.meta.url))
const latencyRequests = Harness.envInt("BENCH_LATENCY_REQUESTS", 1000)
const ttfbRequests = Harness.envInt("BENCH_TTFB_REQUESTS", 100)
const concurrency = Harness.envInt("BENCH_CONCURRENCY", 32)
const seconds = Harness.envInt("BENCH_SECONDS", 5)
const rounds = Harness.envInt("BENCH_ROUNDS", 2)
const upstreamKey = `sk-bench-${crypto.randomBytes(16).toString("hex")}`
const keyVariable = "BENCH_RECORDING_UPSTREAM_KEY"
const systems = ["norec", "rec"] as const

const body = (stream: boolean) =>
  Buffer.from(
    JSON.stringify({
      model: "bench-model",
      max_tokens: 16,
      messages: [{ role: "user", content: "Say hello." }],
      ...(stream ? { stream: true, stream_options: { include_usage: true } } : {})
    })
  )
const plain = body(false)
const streamed = body(true)

/** Starts the upstream child; resolves with its port. */
const upstream = Effect.acquireRelease(
  Effect.async<{ readonly port: number; readonly child: childProcess.ChildProcess }, Harness.BenchError>(
    (resume) => {
      const child = childProcess.spawn(
        process.execPath,
        ["--import", "tsx", path.join(here, "upstream.ts"), "--events", "20", "--interval", "5"],
        { stdio: ["ignore", "pipe", "inherit"], env: { ...process.env, BENCH_UPSTREAM_KEY: upstreamKey } }
      )
      child.once("exit", (code) =>
        resume(Effect.fail(new Harness.BenchError({ message: `the upstream exited (${code})` })))
      )
      if (child.stdout === null) return
      readline.createInterface({ input: child.stdout }).once("line", (line) => {
        const value = JSON.parse(line) as { port: number }
        resume(Effect.succeed({ port: value.port, child }))
      })
    }
  ),
  ({ child }) => Effect.sync(() => child.kill("SIGTERM"))
)

const agent = new http.Agent({ keepAlive: true, maxSockets: 256 })

/** One request; resolves with [ms to first byte, ms to the end]. */
const request = (url: string, token: string, payload: Buffer): Promise<readonly [number, number]> =>
  new Promise((resolve, reject) => {
    const started = performance.now()
    let first = 0
    const req = http.request(
      url,
      {
        method: "POST",
        agent,
        headers: {
          authorization: `Bearer ${token}`,
          "content-type": "application/json",
          "content-length": payload.length
        }
      },
      (res) => {
        res.on("data", () => {
          if (first === 0) first = performance.now() - started
        })
        res.on("end", () =>
          res.statusCode === 200
            ? resolve([first, performance.now() - started])
            : reject(new Error(`status ${res.statusCode}`))
        )
      }
    )
    req.on("error", reject)
    req.end(payload)
  })

const program = Effect.gen(function* () {
  const up = yield* upstream
  process.env[keyVariable] = upstreamKey
  const server = yield* TestServer.startWith({
    proxyRate: 0,
    proxyProviders: [
      FakeProvider.providerConfig("rec", `http://127.0.0.1:${up.port}`, { keyEnv: keyVariable }),
      FakeProvider.providerConfig("norec", `http://127.0.0.1:${up.port}`, {
        keyEnv: keyVariable,
        record: false
      })
    ],
    proxyConversations: {
      ...Config.proxyConversationsDefaults,
      prices: [{ model: "bench-*", input: 1, output: 2, cacheRead: 0, cacheWrite: 0 }]
    }
  })
  const url = (system: string) => `${server.url}/proxy/${system}/v1/chat/completions`
  const run = (system: string, payload: Buffer) =>
    Effect.promise(() => request(url(system), server.token, payload))
  const sent = { rec: 0, norec: 0 }

  // Warm-up.
  for (const system of systems) for (let i = 0; i < 100; i++) yield* run(system, plain)
  sent.rec += 100
  sent.norec += 100

  const latency: Record<string, Array<number>> = { rec: [], norec: [] }
  for (let block = 0; block < latencyRequests / 100; block++) {
    for (const system of block % 2 === 0 ? systems : [...systems].reverse()) {
      for (let i = 0; i < 100; i++) latency[system]?.push((yield* run(system, plain))[1])
      sent[system] += 100
    }
  }
  const ttfb: Record<string, Array<number>> = { rec: [], norec: [] }
  for (let block = 0; block < ttfbRequests / 10; block++) {
    for (const system of block % 2 === 0 ? systems : [...systems].reverse()) {
      for (let i = 0; i < 10; i++) ttfb[system]?.push((yield* run(system, streamed))[0])
      sent[system] += 10
    }
  }
  const throughput: Record<string, Array<number>> = { rec: [], norec: [] }
  for (let round = 0; round < rounds; round++) {
    for (const system of round % 2 === 0 ? systems : [...systems].reverse()) {
      const until = performance.now() + seconds * 1000
      let done = 0
      yield* Effect.promise(() =>
        Promise.all(
          Array.from({ length: concurrency }, async () => {
            while (performance.now() < until) {
              await request(url(system), server.token, plain)
              done += 1
            }
          })
        )
      )
      sent[system] += done
      throughput[system]?.push(done / seconds)
    }
  }
  // Every recorded turn stored, then counted.
  const db = { url: server.databaseUrl, kind: "external" as const, where: "" }
  const client = yield* Harness.rawClient(db)
  const deadline = Date.now() + 120_000
  let stored = 0
  while (Date.now() < deadline) {
    const rows = yield* Harness.rawQuery<{ n: string }>(client, "SELECT count(*) AS n FROM vibes_proxy_turns")
    stored = Number(rows.rows[0]?.n ?? 0)
    if (stored >= sent.rec) break
    yield* Effect.sleep("200 millis")
  }
  const norecRows = yield* Harness.rawQuery<{ n: string }>(
    client,
    "SELECT count(*) AS n FROM vibes_proxy_turns WHERE provider = 'norec'"
  )

  const p = (values: ReadonlyArray<number>, q: number) => Harness.percentile(values, q).toFixed(3)
  const med = (values: ReadonlyArray<number>) => Harness.median(values)
  const lines = [
    `Proxy with conversation recording on (rec) vs off (norec), same node, same run (${new Date().toISOString()}):`,
    "",
    Harness.row(["", "latency p50 ms", "latency p99 ms", "TTFB p50 ms", "TTFB p99 ms", "throughput req/s"]),
    Harness.row(["---", "---", "---", "---", "---", "---"]),
    ...systems.map((system) =>
      Harness.row([
        system === "rec" ? "recording on" : "recording off",
        p(latency[system] ?? [], 50),
        p(latency[system] ?? [], 99),
        p(ttfb[system] ?? [], 50),
        p(ttfb[system] ?? [], 99),
        med(throughput[system] ?? []).toFixed(0)
      ])
    ),
    "",
    `p50 latency difference: ${(Harness.percentile(latency["rec"] ?? [], 50) - Harness.percentile(latency["norec"] ?? [], 50)).toFixed(3)} ms; ` +
      `TTFB p50 difference: ${(Harness.percentile(ttfb["rec"] ?? [], 50) - Harness.percentile(ttfb["norec"] ?? [], 50)).toFixed(3)} ms; ` +
      `throughput ratio: ${(med(throughput["rec"] ?? []) / med(throughput["norec"] ?? [])).toFixed(3)}x`,
    `turns recorded: ${stored} of ${sent.rec} recorded requests; norec turns stored: ${norecRows.rows[0]?.n ?? "?"}`
  ]
  process.stdout.write(`${lines.join("\n")}\n`)
})

Effect.runPromise(
  program.pipe(
    Effect.scoped,
    Effect.provide(Logger.minimumLogLevel(LogLevel.Warning)),
    Effect.provide(Layer.empty)
  )
).then(
  () => process.exit(0),
  (error: unknown) => {
    process.stderr.write(`${String(error)}\n`)
    process.exit(1)
  }
)
