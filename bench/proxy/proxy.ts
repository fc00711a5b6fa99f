/**
 * The AI-provider proxy (`/proxy/<provider>/…`) against a direct call and nginx, in the same run,
 * against the same local upstream.
 *
 * - **upstream** (`upstream.ts`, a child process): `POST /v1/chat/completions`, a fixed ~300-byte
 *   JSON completion with usage, or with `"stream":true` a Server-Sent Events stream: the first
 *   event at once, then `BENCH_STREAM_EVENTS` (20) more `BENCH_STREAM_INTERVAL_MS` (5) ms apart,
 *   then `data: [DONE]`. It checks the provider key (`authorization: Bearer …`).
 * - **direct**: the upstream itself, the client sending the provider key.
 * - **nginx, 1 worker** and **nginx, auto workers** (the Debian package, children of this
 *   process with a generated config in a temporary directory): a plain reverse proxy,
 *   `location /proxy/bench/ { proxy_pass http://upstream/; }` with `keepalive 64` to the
 *   upstream, HTTP/1.1, `proxy_buffering off` (so that SSE streams), `access_log off`; the
 *   client sends the provider key, which nginx passes on.
 * - **plain Node proxy** (`node-proxy.ts`, a child process): the least a Node reverse proxy does,
 *   `node:http` only (body read whole, keep-alive agent, response piped back): the floor for a
 *   proxy in one Node process, to tell Node's own cost from vibes'.
 * - **vibes**: `vibes serve` from the build (fresh database, 127.0.0.1) with
 *   `VIBES_PROXY_PROVIDERS` naming the upstream as provider `bench` (`auth: bearer`, key from
 *   `BENCH_UPSTREAM_KEY`) and `VIBES_PROXY_RATE=0`; the client sends the admin token, vibes swaps
 *   in the provider key, and every request becomes a `proxy.request` event in Postgres (counted
 *   at the end).
 *
 * Measured:
 *
 * 1. **Latency**: `BENCH_LATENCY_REQUESTS` (2,000) sequential non-streaming requests to each system
 *    after `BENCH_LATENCY_WARMUP` (200), one keep-alive connection each (`node:http` in this
 *    process), in blocks of 100 with the systems in turn (rotated) so that drift hits all alike;
 *    from the call to the end of the response. Target: vibes adds ≤ 1 ms at p50 over direct.
 * 2. **Time to first byte** of a streaming response: `BENCH_TTFB_REQUESTS` (200) sequential
 *    streams to each system after 20, in blocks of 20, from the call to the first body byte (each
 *    stream read to its end). Target: vibes adds ≤ 2 ms over direct (judged at p50).
 * 3. **Throughput**: `wrk -t BENCH_WRK_THREADS (1) -c <each of BENCH_WRK_CONNECTIONS (32)>
 *    -d BENCH_WRK_SECONDS (10)s --latency` with a POST body from a Lua script, after a
 *    `BENCH_WRK_WARMUP_SECONDS` (3) run, `BENCH_ROUNDS` (3) rounds with the systems in turn; the
 *    median round is reported with wrk's errors (non-2xx, socket errors) summed over all rounds.
 *    After a vibes round the benchmark waits until every `proxy.request` event is written, and
 *    then until the processes are idle, before the next run. Target: vibes ≥ 0.7x nginx.
 *    As a reference, wrk also runs `GET /healthz` on the same vibes server (its HTTP stack with the
 *    access log and no proxy; `BENCH_HEALTHZ=0` leaves it out).
 *
 * `BENCH_SYSTEMS` (direct,nginx,nginx-auto,node,vibes), `BENCH_CPU_PROF=<dir>` (the vibes server writes
 * a `--cpu-prof` profile there when it stops; the monotonic-clock window of each vibes wrk run
 * is printed to stderr), `DATABASE_URL`, `NGINX` (the nginx binary, default /usr/sbin/nginx),
 * `WRK` (default `wrk` on the PATH).
 */
import * as childProcess from "node:child_process"
import * as crypto from "node:crypto"
import * as fs from "node:fs"
import * as http from "node:http"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import * as readline from "node:readline"
import { fileURLToPath } from "node:url"
import { Deferred, Effect, type Scope } from "effect"
import * as Harness from "../events/harness.js"
import * as Sessions from "../sessions/harness.js"
import * as Proc from "../../infra/proc/Proc.js"

const here = path.dirname(fileURLToPath(import.meta.url))

const latencyRequests = Harness.envInt("BENCH_LATENCY_REQUESTS", 2000)
const latencyWarmup = Harness.envInt("BENCH_LATENCY_WARMUP", 200)
const ttfbRequests = Harness.envInt("BENCH_TTFB_REQUESTS", 200)
const ttfbWarmup = 20
const streamEvents = Harness.envInt("BENCH_STREAM_EVENTS", 20)
const streamIntervalMs = Harness.envInt("BENCH_STREAM_INTERVAL_MS", 5)
const wrkThreads = Harness.envInt("BENCH_WRK_THREADS", 1)
const wrkConnections = Harness.envInts("BENCH_WRK_CONNECTIONS", [32])
const wrkSeconds = Harness.envInt("BENCH_WRK_SECONDS", 10)
const wrkWarmupSeconds = Harness.envInt("BENCH_WRK_WARMUP_SECONDS", 3)
const rounds = Harness.envInt("BENCH_ROUNDS", 3)
const systems = Harness.envList("BENCH_SYSTEMS", ["direct", "nginx", "nginx-auto", "node", "vibes"])
const cpuProfDir = process.env["BENCH_CPU_PROF"]
const healthz = process.env["BENCH_HEALTHZ"] !== "0"
const nginxBinary = process.env["NGINX"] ?? "/usr/sbin/nginx"
const wrkBinary = process.env["WRK"] ?? "wrk"

const upstreamKey = `sk-bench-${crypto.randomBytes(16).toString("hex")}`
const chatPath = "/v1/chat/completions"
const plainBody = Buffer.from(
  JSON.stringify({
    model: "bench-model",
    messages: [{ role: "user", content: "Say hello." }],
    max_tokens: 16
  })
)
const streamBody = Buffer.from(
  JSON.stringify({
    model: "bench-model",
    messages: [{ role: "user", content: "Say hello." }],
    max_tokens: 16,
    stream: true,
    stream_options: { include_usage: true }
  })
)

const names: Record<string, string> = {
  direct: "direct (upstream)",
  nginx: "nginx, 1 worker",
  "nginx-auto": `nginx, auto workers (${os.cpus().length})`,
  node: "plain Node proxy (`node-proxy.ts`)",
  vibes: "vibes `/proxy/bench`",
  "vibes-healthz": "vibes `GET /healthz` (reference: no proxy, with the access log)"
}

const fail = (message: string) => new Harness.BenchError({ message })
const messageOf = (cause: unknown): string => (cause instanceof Error ? cause.message : String(cause))

// Processes -----------------------------------------------------------------------------------

const isAlive = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

/** Pids of the direct children of `pid` (nginx workers). */
const childrenOf = Proc.childrenOf

/** CPU milliseconds of `pids` so far (processes that are gone count 0). */
const cpuOf = (pids: ReadonlyArray<number>): number =>
  pids.reduce((sum, pid) => {
    const ms = Sessions.cpuMillis(pid)
    return sum + (Number.isNaN(ms) ? 0 : ms)
  }, 0)

/** A child process, sent `signal` when the scope closes and SIGKILLed (with `also`) if it lingers. */
const spawnScoped = (
  file: string,
  args: ReadonlyArray<string>,
  options: childProcess.SpawnOptions,
  what: string,
  signal: NodeJS.Signals = "SIGTERM",
  also: (pid: number) => ReadonlyArray<number> = () => []
): Effect.Effect<
  { readonly child: childProcess.ChildProcess; readonly exited: Deferred.Deferred<string> },
  never,
  Scope.Scope
> =>
  Effect.gen(function* () {
    const exited = yield* Deferred.make<string>()
    const child = yield* Effect.acquireRelease(
      Effect.sync(() => {
        const child = childProcess.spawn(file, [...args], options)
        child.once("error", (error) => Deferred.unsafeDone(exited, Effect.succeed(error.message)))
        child.once("exit", (code, sig) =>
          Deferred.unsafeDone(exited, Effect.succeed(`${what} exited (${code ?? sig})`))
        )
        return child
      }),
      (child) =>
        Effect.gen(function* () {
          const pid = child.pid
          if (pid === undefined || child.exitCode !== null || child.signalCode !== null) return
          const stragglers = also(pid)
          child.kill(signal)
          const done = yield* Deferred.await(exited).pipe(Effect.timeout("10 seconds"), Effect.option)
          if (done._tag === "None") child.kill("SIGKILL")
          for (const other of stragglers) if (isAlive(other)) process.kill(other, "SIGKILL")
        })
    )
    return { child, exited }
  })

/** A free TCP port on 127.0.0.1 (free when asked; nothing else here races for ports). */
const freePort: Effect.Effect<number, Harness.BenchError> = Effect.async((resume) => {
  const server = net.createServer()
  server.once("error", (error) => resume(Effect.fail(fail(`no free port: ${error.message}`))))
  server.listen({ host: "127.0.0.1", port: 0 }, () => {
    const address = server.address()
    const port = typeof address === "object" && address !== null ? address.port : 0
    server.close(() => resume(Effect.succeed(port)))
  })
})

/** Resolves once something accepts connections on `port` (at most `seconds`). */
const waitForPort = (port: number, seconds: number, exited: Deferred.Deferred<string>, what: string) =>
  Effect.gen(function* () {
    const deadline = Harness.now() + seconds * 1000
    for (;;) {
      const gone = yield* Deferred.poll(exited)
      if (gone._tag === "Some") return yield* Effect.fail(fail(`${what}: ${yield* gone.value}`))
      const open = yield* Effect.async<boolean>((resume) => {
        const socket = net.connect({ host: "127.0.0.1", port })
        socket.once("connect", () => {
          socket.destroy()
          resume(Effect.succeed(true))
        })
        socket.once("error", () => resume(Effect.succeed(false)))
      })
      if (open) return
      if (Harness.now() > deadline)
        return yield* Effect.fail(fail(`${what} did not listen within ${seconds} s`))
      yield* Effect.sleep("50 millis")
    }
  })

const versionOf = (file: string, args: ReadonlyArray<string>): string => {
  const result = childProcess.spawnSync(file, [...args], { encoding: "utf8" })
  if (result.error !== undefined) return "not installed"
  return `${result.stdout}${result.stderr}`.split("\n")[0]?.trim() ?? "?"
}

// The systems ---------------------------------------------------------------------------------

interface Upstream {
  readonly port: number
  readonly pid: number
}

const isAnnouncement = (value: unknown): value is Upstream =>
  typeof value === "object" &&
  value !== null &&
  "port" in value &&
  typeof value.port === "number" &&
  "pid" in value &&
  typeof value.pid === "number"

/** Starts `node --import tsx <script> <args>` and waits for its `{"port","pid"}` line. */
const nodeChild = (
  script: string,
  args: ReadonlyArray<string>,
  what: string
): Effect.Effect<Upstream, Harness.BenchError, Scope.Scope> =>
  Effect.gen(function* () {
    const { child, exited } = yield* spawnScoped(
      process.execPath,
      ["--import", "tsx", path.join(here, script), ...args],
      { stdio: ["ignore", "pipe", "inherit"], env: { ...process.env, BENCH_UPSTREAM_KEY: upstreamKey } },
      what
    )
    const stdout = child.stdout
    if (stdout === null) return yield* Effect.fail(fail(`${what} has no stdout`))
    const announced = yield* Deferred.make<Upstream, Harness.BenchError>()
    readline.createInterface({ input: stdout }).once("line", (line) => {
      try {
        const value: unknown = JSON.parse(line)
        if (isAnnouncement(value)) Deferred.unsafeDone(announced, Effect.succeed(value))
        else Deferred.unsafeDone(announced, Effect.fail(fail(`${what} said: ${line}`)))
      } catch {
        Deferred.unsafeDone(announced, Effect.fail(fail(`${what} said: ${line}`)))
      }
    })
    return yield* Deferred.await(announced).pipe(
      Effect.raceFirst(Effect.flatMap(Deferred.await(exited), (why) => Effect.fail(fail(why)))),
      Effect.timeoutFail({ duration: "30 seconds", onTimeout: () => fail(`${what} did not start`) })
    )
  })

/** Starts `upstream.ts` in a child process. */
const upstream = nodeChild(
  "upstream.ts",
  ["--events", String(streamEvents), "--interval", String(streamIntervalMs)],
  "the upstream"
)

interface Nginx {
  readonly port: number
  readonly pid: number
  /** The master and its workers. */
  readonly pids: () => Array<number>
}

/** The nginx configuration: a plain reverse proxy of `/proxy/bench/` to the upstream. */
const nginxConfig = (dir: string, workers: string, port: number, upstreamPort: number): string =>
  `# Generated by bench/proxy/proxy.ts
worker_processes ${workers};
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;

events {
    worker_connections 4096;
}

http {
    access_log off;
    client_body_temp_path ${dir}/client_body;
    proxy_temp_path ${dir}/proxy;
    fastcgi_temp_path ${dir}/fastcgi;
    uwsgi_temp_path ${dir}/uwsgi;
    scgi_temp_path ${dir}/scgi;
    keepalive_timeout 65s;
    keepalive_requests 1000000;

    upstream bench {
        server 127.0.0.1:${upstreamPort};
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 60s;
    }

    server {
        listen 127.0.0.1:${port} backlog=4096;

        location /proxy/bench/ {
            proxy_pass http://bench/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
}
`

/** nginx (`worker_processes <workers>`) as a child process, stopped with the scope. */
const nginx = (
  workers: string,
  upstreamPort: number
): Effect.Effect<Nginx, Harness.BenchError, Scope.Scope> =>
  Effect.gen(function* () {
    if (!fs.existsSync(nginxBinary)) {
      return yield* Effect.fail(fail(`no ${nginxBinary}: install it with \`apt-get install -y nginx\``))
    }
    const dir = yield* Sessions.scratch("vibes-bench-nginx-")
    // Workers run as `nobody` when this runs as root: let them into the directory.
    fs.chmodSync(dir, 0o755)
    const port = yield* freePort
    const config = path.join(dir, "nginx.conf")
    fs.writeFileSync(config, nginxConfig(dir, workers, port, upstreamPort))
    const { child, exited } = yield* spawnScoped(
      nginxBinary,
      ["-p", dir, "-c", config, "-e", path.join(dir, "error.log"), "-g", "daemon off;"],
      { stdio: ["ignore", "ignore", "pipe"] },
      `nginx (${workers})`,
      "SIGQUIT",
      childrenOf
    )
    let stderr = ""
    child.stderr?.on("data", (chunk: Buffer) => (stderr += chunk.toString("utf8")))
    yield* waitForPort(port, 20, exited, `nginx (${workers})`).pipe(
      Effect.mapError((error) => fail(`${error.message}\n${stderr}`))
    )
    const pid = child.pid ?? 0
    return { port, pid, pids: () => [pid, ...childrenOf(pid)] }
  })

/** One system under test, as a client reaches it. */
interface Target {
  readonly system: string
  readonly port: number
  /** The path of the chat completions endpoint. */
  readonly path: string
  readonly authorization: string
  /** A keep-alive agent with one socket: sequential requests reuse one connection. */
  readonly agent: http.Agent
  /** The proxy's processes (none for direct). */
  readonly proxyPids: () => ReadonlyArray<number>
  /** wrk sends `GET path` without a body (the `/healthz` reference), not the chat POST. */
  readonly get?: boolean
}

// Requests ------------------------------------------------------------------------------------

interface Timing {
  readonly status: number
  /** ms from the call to the first body byte. */
  readonly firstByte: number
  /** ms from the call to the end of the body. */
  readonly total: number
  readonly body: Buffer
}

/** One POST of `body` on the target's agent. */
const call = (target: Target, body: Buffer): Promise<Timing> =>
  new Promise((resolve, reject) => {
    const start = performance.now()
    const request = http.request(
      {
        agent: target.agent,
        host: "127.0.0.1",
        port: target.port,
        method: "POST",
        path: target.path,
        headers: {
          "content-type": "application/json",
          "content-length": body.length,
          authorization: target.authorization
        }
      },
      (response) => {
        const chunks: Array<Buffer> = []
        let firstByte = Number.NaN
        response.on("data", (chunk: Buffer) => {
          if (Number.isNaN(firstByte)) firstByte = performance.now() - start
          chunks.push(chunk)
        })
        response.once("end", () =>
          resolve({
            status: response.statusCode ?? 0,
            firstByte,
            total: performance.now() - start,
            body: Buffer.concat(chunks)
          })
        )
        response.once("error", reject)
      }
    )
    request.setTimeout(30_000, () => request.destroy(new Error("no answer within 30 s")))
    request.once("error", reject)
    request.end(body)
  })

/** Checks an answer: 200 and the whole completion, or a whole stream ending with `[DONE]`. */
const checked = (target: Target, timing: Timing, streaming: boolean, expectedLength: number): Timing => {
  const text = timing.body.toString("utf8")
  const whole = streaming
    ? text.endsWith("data: [DONE]\n\n") && text.startsWith("data: ")
    : expectedLength < 0 || timing.body.length === expectedLength
  if (timing.status !== 200 || !whole) {
    throw new Error(`${target.system} answered ${timing.status}: ${text.slice(0, 300)}`)
  }
  return timing
}

/**
 * `perSystem` sequential requests to each target (after `warmup`), in blocks of `block` with the
 * targets in turn, the order rotated each block; the timings per system.
 */
const sequential = (
  targets: ReadonlyArray<Target>,
  body: Buffer,
  streaming: boolean,
  expectedLength: number,
  warmup: number,
  perSystem: number,
  block: number,
  what: string
): Effect.Effect<Map<string, Array<Timing>>, Harness.BenchError> =>
  Effect.tryPromise({
    try: async () => {
      const once = async (target: Target) =>
        checked(target, await call(target, body), streaming, expectedLength)
      for (const target of targets) for (let i = 0; i < warmup; i++) await once(target)
      const results = new Map<string, Array<Timing>>(targets.map((t) => [t.system, []]))
      let done = 0
      let turn = 0
      let reported = Harness.now()
      while (done < perSystem) {
        const size = Math.min(block, perSystem - done)
        for (let k = 0; k < targets.length; k++) {
          const target = targets[(k + turn) % targets.length]
          if (target === undefined) continue
          const list = results.get(target.system) ?? []
          for (let i = 0; i < size; i++) list.push(await once(target))
        }
        done += size
        turn += 1
        if (Harness.now() - reported > 5000) {
          reported = Harness.now()
          console.error(`… ${what}: ${done} / ${perSystem} of each`)
        }
      }
      return results
    },
    catch: (cause) => fail(`${what}: ${messageOf(cause)}`)
  })

// wrk -------------------------------------------------------------------------------------------

/** What wrk's `done` hook reports. */
interface WrkSummary {
  readonly requests: number
  readonly durationUs: number
  readonly connect: number
  readonly read: number
  readonly write: number
  /** Responses with a status ≥ 400 (wrk's "Non-2xx or 3xx responses"). */
  readonly status: number
  readonly timeout: number
  readonly p50Us: number
  readonly p99Us: number
  readonly maxUs: number
}

const isWrkSummary = (value: unknown): value is WrkSummary =>
  typeof value === "object" &&
  value !== null &&
  [
    "requests",
    "durationUs",
    "connect",
    "read",
    "write",
    "status",
    "timeout",
    "p50Us",
    "p99Us",
    "maxUs"
  ].every((key) => key in value && typeof (value as Record<string, unknown>)[key] === "number")

const luaString = (text: string): string => JSON.stringify(text)

/** The Lua script of `target`: the POST and a `done` hook printing a JSON summary. */
const wrkScript = (target: Target): string =>
  `-- Generated by bench/proxy/proxy.ts
${
  target.get === true
    ? `wrk.method = "GET"`
    : `wrk.method = "POST"
wrk.body = ${luaString(plainBody.toString("utf8"))}
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = ${luaString(target.authorization)}`
}

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"durationUs":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"p50Us":%d,"p99Us":%d,"maxUs":%d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
`

interface WrkRun {
  readonly summary: WrkSummary
  readonly requestsPerSecond: number
  /** CPU seconds over the run: the proxy's processes, the upstream, Postgres (all of the database's). */
  readonly proxyCpu: number
  readonly upstreamCpu: number
  readonly postgresCpu: number
}

const runWrk = (
  target: Target,
  script: string,
  connections: number,
  seconds: number,
  upstreamPid: number,
  database: string
): Effect.Effect<WrkRun, Harness.BenchError> =>
  Effect.gen(function* () {
    const url = `http://127.0.0.1:${target.port}${target.path}`
    const before = {
      proxy: cpuOf(target.proxyPids()),
      upstream: cpuOf([upstreamPid]),
      postgres: Sessions.postgresCpuMillis(database)
    }
    const startMicros = Sessions.monotonicMicros()
    const output = yield* Effect.async<string, Harness.BenchError>((resume) => {
      const child = childProcess.spawn(
        wrkBinary,
        [
          "-t",
          String(wrkThreads),
          "-c",
          String(connections),
          "-d",
          `${seconds}s`,
          "--latency",
          "-s",
          script,
          url
        ],
        { stdio: ["ignore", "pipe", "pipe"] }
      )
      let text = ""
      child.stdout.on("data", (chunk: Buffer) => (text += chunk.toString("utf8")))
      child.stderr.on("data", (chunk: Buffer) => (text += chunk.toString("utf8")))
      child.once("error", (error) =>
        resume(Effect.fail(fail(`cannot run ${wrkBinary} (apt-get install -y wrk): ${error.message}`)))
      )
      child.once("close", (code) =>
        code === 0 ? resume(Effect.succeed(text)) : resume(Effect.fail(fail(`wrk exited ${code}:\n${text}`)))
      )
      return Effect.sync(() => child.kill("SIGKILL"))
    })
    const after = {
      proxy: cpuOf(target.proxyPids()),
      upstream: cpuOf([upstreamPid]),
      postgres: Sessions.postgresCpuMillis(database)
    }
    if (target.system === "vibes") {
      yield* Harness.progress(
        `vibes wrk run: monotonic µs ${startMicros} to ${Sessions.monotonicMicros()} (-c ${connections}, ${seconds} s)`
      )
    }
    const line = output.split("\n").find((l) => l.startsWith("BENCH "))
    const parsed: unknown = line === undefined ? undefined : JSON.parse(line.slice(6))
    if (!isWrkSummary(parsed)) return yield* Effect.fail(fail(`no summary from wrk:\n${output}`))
    return {
      summary: parsed,
      requestsPerSecond: parsed.requests / (parsed.durationUs / 1e6),
      proxyCpu: (after.proxy - before.proxy) / 1000,
      upstreamCpu: (after.upstream - before.upstream) / 1000,
      postgresCpu: (after.postgres - before.postgres) / 1000
    }
  })

// Results -------------------------------------------------------------------------------------

interface Spread {
  readonly p50: number
  readonly p99: number
  readonly max: number
}

const spreadOf = (values: ReadonlyArray<number>): Spread => ({
  p50: Harness.percentile(values, 50),
  p99: Harness.percentile(values, 99),
  max: values.reduce((a, b) => Math.max(a, b), Number.NEGATIVE_INFINITY)
})

const plus = (ms: number): string => (Number.isFinite(ms) ? `${ms >= 0 ? "+" : ""}${ms.toFixed(3)}` : "n/a")
const verdict = (ok: boolean): string => (ok ? "met" : "**not met**")

const main = Effect.gen(function* () {
  const runLines = Sessions.runLines()
  const db = yield* Harness.database
  const machine = yield* Harness.machine(db)
  const admin = yield* Harness.rawClient(db)
  const nginxVersion = versionOf(nginxBinary, ["-v"])
  const wrkVersion = versionOf(wrkBinary, ["--version"])

  const up = yield* upstream
  yield* Harness.progress(`upstream (pid ${up.pid}) listens on 127.0.0.1:${up.port}`)

  const targets: Array<Target> = []
  /** The targets, and for wrk also vibes' `GET /healthz`. */
  const extraWrk: Array<Target> = []
  const agent = () => new http.Agent({ keepAlive: true, maxSockets: 1 })
  const viaKey = `Bearer ${upstreamKey}`
  if (systems.includes("direct")) {
    targets.push({
      system: "direct",
      port: up.port,
      path: chatPath,
      authorization: viaKey,
      agent: agent(),
      proxyPids: () => []
    })
  }
  for (const [system, workers] of [
    ["nginx", "1"],
    ["nginx-auto", "auto"]
  ] as const) {
    if (!systems.includes(system)) continue
    const server = yield* nginx(workers, up.port)
    yield* Harness.progress(`${names[system]} (pid ${server.pid}) listens on 127.0.0.1:${server.port}`)
    targets.push({
      system,
      port: server.port,
      path: `/proxy/bench${chatPath}`,
      authorization: viaKey,
      agent: agent(),
      proxyPids: server.pids
    })
  }
  if (systems.includes("node")) {
    const proxy = yield* nodeChild("node-proxy.ts", ["--upstream", String(up.port)], "the plain-Node proxy")
    yield* Harness.progress(`${names["node"]} (pid ${proxy.pid}) listens on 127.0.0.1:${proxy.port}`)
    targets.push({
      system: "node",
      port: proxy.port,
      path: `/proxy/bench${chatPath}`,
      authorization: viaKey,
      agent: agent(),
      proxyPids: () => [proxy.pid]
    })
  }
  if (systems.includes("vibes")) {
    const server = yield* Sessions.serve(db, {
      env: {
        VIBES_HOST: "127.0.0.1",
        VIBES_PROXY_PROVIDERS: JSON.stringify([
          {
            name: "bench",
            baseUrl: `http://127.0.0.1:${up.port}`,
            format: "openai",
            auth: "bearer",
            keyEnv: "BENCH_UPSTREAM_KEY"
          }
        ]),
        VIBES_PROXY_RATE: "0",
        BENCH_UPSTREAM_KEY: upstreamKey
      },
      cpuProfDir
    })
    const url = new URL(server.url)
    yield* Harness.progress(`vibes serve (pid ${server.pid}) listens on ${server.url}`)
    targets.push({
      system: "vibes",
      port: Number(url.port),
      path: `/proxy/bench${chatPath}`,
      authorization: `Bearer ${server.token}`,
      agent: agent(),
      proxyPids: () => [server.pid]
    })
    if (healthz) {
      extraWrk.push({
        system: "vibes-healthz",
        port: Number(url.port),
        path: "/healthz",
        authorization: "",
        agent: agent(),
        proxyPids: () => [server.pid],
        get: true
      })
    }
  }
  if (targets.length === 0)
    return yield* Effect.fail(fail(`BENCH_SYSTEMS names no system: ${systems.join(",")}`))
  const wrkTargets = [...targets, ...extraWrk]
  yield* Effect.addFinalizer(() => Effect.sync(() => wrkTargets.forEach((t) => t.agent.destroy())))
  const databaseName = db.where.slice(db.where.lastIndexOf("/") + 1)

  const proxyEvents = () =>
    Harness.rawQuery<{ n: number }>(
      admin,
      `SELECT count(*)::int AS n FROM vibes_events WHERE type = 'proxy.request'`
    ).pipe(Effect.map((result) => result.rows[0]?.n ?? 0))
  let vibesRequests = 0

  // Every system answers, the same bytes.
  const probe = yield* Effect.tryPromise({
    try: async () => {
      const lengths = new Map<string, number>()
      for (const target of targets) {
        const plain = checked(target, await call(target, plainBody), false, -1)
        checked(target, await call(target, streamBody), true, -1)
        lengths.set(target.system, plain.body.length)
      }
      return lengths
    },
    catch: (cause) => fail(`a first request failed: ${messageOf(cause)}`)
  })
  const completionLength = [...probe.values()][0] ?? -1
  for (const [system, length] of probe) {
    if (length !== completionLength) {
      return yield* Effect.fail(fail(`${system} answered ${length} bytes, not ${completionLength}`))
    }
  }
  if (systems.includes("vibes")) vibesRequests += 2
  yield* Harness.progress(`every system answers (a ${completionLength}-byte completion, and a stream)`)

  const settleAll = Effect.gen(function* () {
    const pids = [up.pid, ...targets.flatMap((t) => t.proxyPids()), ...Sessions.postgresPids(databaseName)]
    const quiet = yield* Sessions.settle(pids, 30)
    if (!quiet) yield* Harness.progress("warning: the processes were still busy after 30 s")
  })

  // 1. Latency
  yield* Harness.progress(
    `latency: ${latencyWarmup} warm-up then ${latencyRequests} sequential requests to each of ${targets.length}`
  )
  const latency = yield* sequential(
    targets,
    plainBody,
    false,
    completionLength,
    latencyWarmup,
    latencyRequests,
    100,
    "latency"
  )
  if (systems.includes("vibes")) vibesRequests += latencyWarmup + latencyRequests

  // 2. TTFB of a stream
  yield* Harness.progress(`time to first byte: ${ttfbWarmup} warm-up then ${ttfbRequests} streams to each`)
  const ttfb = yield* sequential(targets, streamBody, true, -1, ttfbWarmup, ttfbRequests, 20, "ttfb")
  if (systems.includes("vibes")) vibesRequests += ttfbWarmup + ttfbRequests

  /** Waits until the `proxy.request` events stop growing; the seconds it took. */
  const drain = Effect.gen(function* () {
    if (!systems.includes("vibes")) return 0
    const start = Harness.now()
    let last = yield* proxyEvents()
    let lastChange = Harness.now()
    while (Harness.now() - lastChange < 1000 && Harness.now() - start < 300_000) {
      yield* Effect.sleep("200 millis")
      const n = yield* proxyEvents()
      if (n !== last) {
        last = n
        lastChange = Harness.now()
      }
    }
    return (lastChange - start) / 1000
  })
  yield* drain
  yield* settleAll

  // 3. Throughput
  const scripts = yield* Sessions.scratch("vibes-bench-wrk-")
  const scriptOf = new Map<string, string>()
  for (const target of wrkTargets) {
    const file = path.join(scripts, `${target.system}.lua`)
    fs.writeFileSync(file, wrkScript(target))
    scriptOf.set(target.system, file)
  }
  const throughput = new Map<string, Array<WrkRun>>()
  const drains: Array<number> = []
  for (const connections of wrkConnections) {
    yield* Harness.progress(`throughput: wrk -c ${connections}, ${wrkWarmupSeconds} s warm-up of each`)
    for (const target of wrkTargets) {
      const run = yield* runWrk(
        target,
        scriptOf.get(target.system) ?? "",
        connections,
        wrkWarmupSeconds,
        up.pid,
        databaseName
      )
      if (target.system === "vibes") {
        vibesRequests += run.summary.requests
        yield* drain
      }
      yield* settleAll
    }
    for (let round = 0; round < rounds; round++) {
      for (let k = 0; k < wrkTargets.length; k++) {
        const target = wrkTargets[(k + round) % wrkTargets.length]
        if (target === undefined) continue
        yield* Harness.progress(
          `round ${round + 1}/${rounds}: wrk -c ${connections} -d ${wrkSeconds}s on ${target.system}`
        )
        const run = yield* runWrk(
          target,
          scriptOf.get(target.system) ?? "",
          connections,
          wrkSeconds,
          up.pid,
          databaseName
        )
        yield* Harness.progress(
          `  ${Harness.count(run.requestsPerSecond)} requests/s, p50 ${(run.summary.p50Us / 1000).toFixed(2)} ms`
        )
        const key = `${target.system}\0${connections}`
        throughput.set(key, [...(throughput.get(key) ?? []), run])
        if (target.system === "vibes") {
          vibesRequests += run.summary.requests
          drains.push(yield* drain)
        }
        yield* settleAll
      }
    }
  }
  const events = systems.includes("vibes") ? yield* proxyEvents() : 0

  // Report --------------------------------------------------------------------------------------
  const direct = latency.get("direct")
  const directSpread = direct === undefined ? undefined : spreadOf(direct.map((t) => t.total))
  const directTtfb = ttfb.get("direct")
  const directTtfbSpread = directTtfb === undefined ? undefined : spreadOf(directTtfb.map((t) => t.firstByte))
  const medianRun = (runs: ReadonlyArray<WrkRun>): WrkRun | undefined =>
    [...runs].sort((a, b) => a.requestsPerSecond - b.requestsPerSecond)[Math.floor((runs.length - 1) / 2)]

  yield* Harness.print(`### AI-provider proxy: added latency, throughput, time to first byte\n`)
  yield* Harness.print(Harness.machineMarkdown(machine))
  yield* Harness.print(`- Kernel: ${os.release()}; ${nginxVersion} (Debian package); wrk: ${wrkVersion}`)
  yield* Harness.print(runLines)
  yield* Harness.print(
    `- Command: \`bench/proxy/proxy.ts\` with BENCH_LATENCY_REQUESTS=${latencyRequests} BENCH_LATENCY_WARMUP=${latencyWarmup} ` +
      `BENCH_TTFB_REQUESTS=${ttfbRequests} BENCH_STREAM_EVENTS=${streamEvents} BENCH_STREAM_INTERVAL_MS=${streamIntervalMs} ` +
      `BENCH_WRK_THREADS=${wrkThreads} BENCH_WRK_CONNECTIONS=${wrkConnections.join(",")} BENCH_WRK_SECONDS=${wrkSeconds} ` +
      `BENCH_WRK_WARMUP_SECONDS=${wrkWarmupSeconds} BENCH_ROUNDS=${rounds}`
  )
  yield* Harness.print(
    `- Upstream: \`node:http\` in a child process; a ${completionLength}-byte JSON completion, or a stream of ` +
      `${streamEvents + 1} events ${streamIntervalMs} ms apart and \`[DONE]\`. nginx: \`worker_processes 1\` ` +
      `(as one Node process) and \`auto\`, \`keepalive 64\` to the upstream, \`proxy_buffering off\`, \`access_log off\`. ` +
      `Every process (wrk, the upstream, the proxies, Postgres) shares the ${machine.cores} cores.`
  )
  if (systems.includes("vibes")) {
    yield* Harness.print(
      `- \`proxy.request\` events in Postgres at the end: ${Harness.count(events)} for ${Harness.count(vibesRequests)} requests that wrk and this process saw completed through vibes ` +
        (events >= vibesRequests
          ? `(all recorded; the ${Harness.count(events - vibesRequests)} more are requests wrk left in flight at its deadlines, which vibes still answered)`
          : `(**${Harness.count(vibesRequests - events)} missing**)`) +
        (drains.length > 0
          ? `; after a measured wrk run the last event was written ${Math.max(...drains).toFixed(1)} s later at most (median ${Harness.median(drains).toFixed(1)} s)`
          : "")
    )
  }
  yield* Harness.print("")

  // Summary
  const vibesLatency = latency.get("vibes")
  const vibesTtfb = ttfb.get("vibes")
  if (
    vibesLatency !== undefined &&
    directSpread !== undefined &&
    vibesTtfb !== undefined &&
    directTtfbSpread !== undefined
  ) {
    const v = spreadOf(vibesLatency.map((t) => t.total))
    const f = spreadOf(vibesTtfb.map((t) => t.firstByte))
    yield* Harness.print(Harness.header(["target", "result", "verdict"]))
    yield* Harness.print(
      Harness.row([
        "added latency p50 ≤ 1 ms over direct",
        `${plus(v.p50 - directSpread.p50)} ms (p99 ${plus(v.p99 - directSpread.p99)} ms)`,
        verdict(v.p50 - directSpread.p50 <= 1)
      ])
    )
    for (const connections of wrkConnections) {
      const vibes = medianRun(throughput.get(`vibes\0${connections}`) ?? [])
      for (const other of ["nginx", "nginx-auto"]) {
        const reference = medianRun(throughput.get(`${other}\0${connections}`) ?? [])
        if (vibes === undefined || reference === undefined) continue
        const r = vibes.requestsPerSecond / reference.requestsPerSecond
        yield* Harness.print(
          Harness.row([
            `throughput ≥ 0.7x ${names[other]} (wrk -c ${connections})`,
            `${Harness.count(vibes.requestsPerSecond)} / ${Harness.count(reference.requestsPerSecond)} requests/s = ${r.toFixed(2)}x`,
            verdict(r >= 0.7)
          ])
        )
      }
    }
    yield* Harness.print(
      Harness.row([
        "streaming TTFB overhead ≤ 2 ms over direct",
        `${plus(f.p50 - directTtfbSpread.p50)} ms at p50 (p99 ${plus(f.p99 - directTtfbSpread.p99)} ms)`,
        verdict(f.p50 - directTtfbSpread.p50 <= 2)
      ])
    )
    yield* Harness.print("")
  }

  yield* Harness.print(
    `Latency, non-streaming (${Harness.count(latencyRequests)} sequential requests each, one keep-alive connection, call to end of response):\n`
  )
  yield* Harness.print(
    Harness.header([
      "system",
      "p50 ms",
      "p99 ms",
      "max ms",
      "added p50 ms",
      "added p99 ms",
      "added p50 ≤ 1 ms"
    ])
  )
  for (const target of targets) {
    const s = spreadOf((latency.get(target.system) ?? []).map((t) => t.total))
    const isDirect = target.system === "direct" || directSpread === undefined
    yield* Harness.print(
      Harness.row([
        names[target.system] ?? target.system,
        s.p50.toFixed(3),
        s.p99.toFixed(3),
        Harness.millis(s.max),
        isDirect ? "" : plus(s.p50 - directSpread.p50),
        isDirect ? "" : plus(s.p99 - directSpread.p99),
        target.system === "vibes" && !isDirect ? verdict(s.p50 - directSpread.p50 <= 1) : ""
      ])
    )
  }
  yield* Harness.print("")

  yield* Harness.print(
    `Time to first byte of a streaming response (${Harness.count(ttfbRequests)} sequential streams each, call to first body byte):\n`
  )
  yield* Harness.print(
    Harness.header([
      "system",
      "TTFB p50 ms",
      "p99 ms",
      "max ms",
      "overhead p50 ms",
      "overhead p99 ms",
      "whole stream p50 ms",
      "overhead p50 ≤ 2 ms"
    ])
  )
  for (const target of targets) {
    const timings = ttfb.get(target.system) ?? []
    const s = spreadOf(timings.map((t) => t.firstByte))
    const whole = Harness.percentile(
      timings.map((t) => t.total),
      50
    )
    const isDirect = target.system === "direct" || directTtfbSpread === undefined
    yield* Harness.print(
      Harness.row([
        names[target.system] ?? target.system,
        s.p50.toFixed(3),
        s.p99.toFixed(3),
        Harness.millis(s.max),
        isDirect ? "" : plus(s.p50 - directTtfbSpread.p50),
        isDirect ? "" : plus(s.p99 - directTtfbSpread.p99),
        Harness.millis(whole),
        target.system === "vibes" && !isDirect ? verdict(s.p50 - directTtfbSpread.p50 <= 2) : ""
      ])
    )
  }
  yield* Harness.print("")

  yield* Harness.print(
    `Throughput (wrk, ${wrkThreads} thread, ${wrkSeconds} s runs, median of ${rounds} rounds; CPU per request from /proc over the median run):\n`
  )
  yield* Harness.print(
    Harness.header([
      "system",
      "connections",
      "requests/s",
      "all rounds",
      "vs nginx 1 worker",
      "vs nginx auto",
      "vs plain Node",
      "wrk p50 / p99 ms",
      "errors (non-2xx, socket)",
      "proxy CPU µs/request",
      "upstream / Postgres CPU µs/request",
      "≥ 0.7x nginx"
    ])
  )
  for (const connections of wrkConnections) {
    const nginx1 = medianRun(throughput.get(`nginx\0${connections}`) ?? [])
    const nginxAuto = medianRun(throughput.get(`nginx-auto\0${connections}`) ?? [])
    const plainNode = medianRun(throughput.get(`node\0${connections}`) ?? [])
    for (const target of wrkTargets) {
      const runs = throughput.get(`${target.system}\0${connections}`) ?? []
      const run = medianRun(runs)
      if (run === undefined) continue
      const nonOk = runs.reduce((n, r) => n + r.summary.status, 0)
      const socket = runs.reduce(
        (n, r) => n + r.summary.connect + r.summary.read + r.summary.write + r.summary.timeout,
        0
      )
      const perRequest = (cpu: number) => ((cpu * 1e6) / run.summary.requests).toFixed(1)
      yield* Harness.print(
        Harness.row([
          names[target.system] ?? target.system,
          connections,
          Harness.count(run.requestsPerSecond),
          runs.map((r) => Harness.count(r.requestsPerSecond)).join(", "),
          nginx1 === undefined ? "" : Harness.ratio(run.requestsPerSecond, nginx1.requestsPerSecond),
          nginxAuto === undefined ? "" : Harness.ratio(run.requestsPerSecond, nginxAuto.requestsPerSecond),
          plainNode === undefined ? "" : Harness.ratio(run.requestsPerSecond, plainNode.requestsPerSecond),
          `${(run.summary.p50Us / 1000).toFixed(2)} / ${(run.summary.p99Us / 1000).toFixed(2)}`,
          `${nonOk}, ${socket}`,
          target.system === "direct" ? "" : perRequest(run.proxyCpu),
          `${perRequest(run.upstreamCpu)} / ${target.system === "vibes" ? perRequest(run.postgresCpu) : "–"}`,
          target.system === "vibes" && nginx1 !== undefined
            ? verdict(run.requestsPerSecond >= 0.7 * nginx1.requestsPerSecond)
            : ""
        ])
      )
    }
  }
  yield* Harness.print("")
})

Harness.run(main)
