/**
 * What the session benchmarks share: a `vibes serve` child process from the compiled build
 * (`bin/vibes.js`) on a fresh database, stopped together with its PTY host at the end; typed
 * clients of it; raw node-pty terminals for the baselines; text files to print; and process
 * measurements from /proc. The rest (database, machine, percentiles, Markdown) is
 * `../events/harness.ts`.
 */
import * as childProcess from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import * as readline from "node:readline"
import { fileURLToPath } from "node:url"
import * as NodePty from "node-pty"
import { Context, Deferred, Effect, Layer, Option, Redacted, type Scope, Stream } from "effect"
import * as NodeSocket from "@effect/platform-node/NodeSocket"
import { PtyHost, type PtyOutput, PtySpec } from "../../infra/pty/PtyHost.js"
import * as PtyHostClient from "../../infra/pty/PtyHostClient.js"
import { socketPath } from "../../infra/pty/PtyHostRpcs.js"
import * as AttachClient from "../../rpc/AttachClient.js"
import * as Client from "../../rpc/Client.js"
import type { AttachEvent, SessionInfo } from "../../rpc/Sessions.js"
import { readableTempDir, tempDir } from "../../test/support/TempDir.js"
import * as Harness from "../events/harness.js"
import * as Proc from "../../infra/proc/Proc.js"

const projectRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..")
// `BENCH_UNBUNDLED=1` runs the server from tsc's output (dist/src) rather than the bundle, so a
// CPU profile names the functions and files it spends its time in.
const cli =
  process.env["BENCH_UNBUNDLED"] === "1"
    ? path.join(projectRoot, "dist", "src", "main.js")
    : path.join(projectRoot, "bin", "vibes.js")

// Processes ---------------------------------------------------------------------------------

const clockTicks = (() => {
  try {
    return Number(childProcess.execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100
  } catch {
    return 100
  }
})()

/** Resident memory of `pid` in KiB (VmRSS), NaN when unknown. */
export const rssKiB = (pid: number | undefined): number =>
  pid === undefined ? Number.NaN : Proc.kib(pid, "status", "VmRSS")

/**
 * Proportional set size of `pid` in KiB (`Pss` of smaps_rollup): its private pages plus its share
 * of pages mapped by several processes, so the figures of processes add up. NaN when unknown.
 */
export const pssKiB = (pid: number | undefined): number =>
  pid === undefined ? Number.NaN : Proc.kib(pid, "smaps_rollup", "Pss")

/** User plus system CPU time of `pid` so far, in milliseconds; NaN when unknown. */
export const cpuMillis = (pid: number | undefined): number =>
  pid === undefined
    ? Number.NaN
    : Option.match(Proc.stat(pid), {
        onNone: () => Number.NaN,
        onSome: (stat) => ((stat.utime + stat.stime) * 1000) / clockTicks
      })

/**
 * Waits (at most `maxSeconds`) until every process in `pids` uses less than a tenth of a core
 * over a second; false if one never did.
 */
export const settle = (pids: ReadonlyArray<number | undefined>, maxSeconds: number) =>
  Effect.gen(function* () {
    const deadline = Harness.now() + maxSeconds * 1000
    for (;;) {
      const before = pids.map(cpuMillis)
      yield* Effect.sleep("1 second")
      const busy = pids.some((pid, k) => (cpuMillis(pid) - (before[k] ?? 0)) / 1000 > 0.1)
      if (!busy) return true
      if (Harness.now() > deadline) return false
    }
  })

/**
 * Pids of the Postgres processes that work for `database`: its backends, and the shared
 * background processes (WAL writer, checkpointer, …), not other databases' backends.
 */
export const postgresPids = (database: string): Array<number> =>
  Proc.pids().filter((pid) => {
    if (Option.getOrUndefined(Proc.comm(pid)) !== "postgres") return false
    return Option.exists(Proc.cmdline(pid), (title) => {
      const isBackend = /\d+\.\d+\.\d+\.\d+\(\d+\)|\[local\]/.test(title)
      return !isBackend || title.includes(` ${database} `)
    })
  })

/** CPU milliseconds of the Postgres processes of `database` now (backends come and go: sample around a run). */
export const postgresCpuMillis = (database: string): number =>
  postgresPids(database).reduce((sum, pid) => sum + (Number.isNaN(cpuMillis(pid)) ? 0 : cpuMillis(pid)), 0)

/** CPU time of this process so far, in milliseconds. */
export const ownCpuMillis = (): number => {
  const usage = process.cpuUsage()
  return (usage.user + usage.system) / 1000
}

/** The monotonic clock in microseconds, as V8's CPU profiles count time (to cut a profile to a window). */
export const monotonicMicros = (): number => Number(process.hrtime.bigint() / 1000n)

/** CPU milliseconds used so far by each party of a run. */
export interface CpuSample {
  readonly server: number
  readonly ptyHost: number
  readonly postgres: number
  readonly client: number
}

/** The CPU time of the server, its PTY host, Postgres and this process, now. */
export const cpuSample = (server: Server): CpuSample => ({
  server: cpuMillis(server.pid),
  ptyHost: cpuMillis(server.ptyHostPid()),
  postgres: postgresCpuMillis(server.database),
  client: ownCpuMillis()
})

/** CPU seconds each party used between two samples. */
export const cpuSpent = (before: CpuSample, after: CpuSample): CpuSample => ({
  server: (after.server - before.server) / 1000,
  ptyHost: (after.ptyHost - before.ptyHost) / 1000,
  postgres: (after.postgres - before.postgres) / 1000,
  client: (after.client - before.client) / 1000
})

/** CPU seconds as `server / PTY host / Postgres / client`. */
export const cpuText = (spent: CpuSample): string =>
  [spent.server, spent.ptyHost, spent.postgres, spent.client]
    .map((s) => (Number.isNaN(s) ? "–" : s.toFixed(1)))
    .join(" / ")

const isAlive = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

/** SIGTERM to `pid`, then SIGKILL if it still runs after `seconds`. */
const terminate = (pid: number, seconds: number) =>
  Effect.gen(function* () {
    if (!isAlive(pid)) return
    process.kill(pid, "SIGTERM")
    const deadline = Harness.now() + seconds * 1000
    while (isAlive(pid) && Harness.now() < deadline) yield* Effect.sleep("50 millis")
    if (isAlive(pid)) process.kill(pid, "SIGKILL")
  })

// The server --------------------------------------------------------------------------------

/** A listening `vibes serve`. */
export interface Server {
  readonly url: string
  readonly token: string
  readonly dataDir: string
  readonly pid: number
  /** The PTY host's pid, from `<dataDir>/pty-host.json`, once it runs. */
  readonly ptyHostPid: () => number | undefined
  /** Name of its database. */
  readonly database: string
}

/** What to start. */
export interface ServeOptions {
  /** Extra environment of the server (e.g. `VIBES_SESSION_IDLE_AFTER`). */
  readonly env?: Record<string, string>
  /** A directory: the server (and its PTY host) write a `--cpu-prof` profile there when they stop. */
  readonly cpuProfDir?: string | undefined
}

const isListening = (entry: unknown): entry is { annotations: { url: string } } =>
  typeof entry === "object" &&
  entry !== null &&
  "message" in entry &&
  entry.message === "vibes is listening" &&
  "annotations" in entry &&
  typeof entry.annotations === "object" &&
  entry.annotations !== null &&
  "url" in entry.annotations &&
  typeof entry.annotations.url === "string"

const ptyHostPidIn = (dataDir: string): number | undefined => {
  try {
    const parsed: unknown = JSON.parse(fs.readFileSync(path.join(dataDir, "pty-host.json"), "utf8"))
    return typeof parsed === "object" && parsed !== null && "pid" in parsed && typeof parsed.pid === "number"
      ? parsed.pid
      : undefined
  } catch {
    return undefined
  }
}

/**
 * Starts `node bin/vibes.js serve --port 0` on `db` with JSON logs, in a data dir of its own, and
 * waits for its "vibes is listening" line. When the scope closes, the server gets SIGTERM (SIGKILL
 * after 20 s) and then its PTY host, which `serve` leaves running on purpose, gets the same.
 */
export const serve = (
  db: Harness.BenchDatabase,
  options: ServeOptions = {}
): Effect.Effect<Server, Harness.BenchError, Scope.Scope> =>
  Effect.gen(function* () {
    if (!fs.existsSync(path.join(projectRoot, "dist", "src", "main.js"))) {
      return yield* new Harness.BenchError({ message: "no build in dist/: run `npm run build` first" })
    }
    const dataDir = yield* tempDir("vibes-bench-sessions-")
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      DATABASE_URL: Redacted.value(db.url),
      VIBES_LOG_FORMAT: "json",
      ...options.env
    }
    for (const key of ["VIBES_URL", "VIBES_TOKEN", "VIBES_PORT", "VIBES_HOST", "VIBES_ADMIN_TOKEN"]) {
      delete env[key]
    }
    const nodeArgs =
      options.cpuProfDir === undefined ? [] : ["--cpu-prof", `--cpu-prof-dir=${options.cpuProfDir}`]
    const listening = yield* Deferred.make<string, Harness.BenchError>()
    const exited = yield* Deferred.make<void>()
    let stderr = ""
    const child = yield* Effect.acquireRelease(
      Effect.sync(() =>
        childProcess.spawn(
          process.execPath,
          [...nodeArgs, cli, "serve", "--port", "0", "--data-dir", dataDir],
          {
            cwd: projectRoot,
            env,
            stdio: ["ignore", "pipe", "pipe"]
          }
        )
      ),
      (child) =>
        Effect.gen(function* () {
          if (child.pid !== undefined) yield* terminate(child.pid, 20)
          yield* Deferred.await(exited).pipe(Effect.timeout("5 seconds"), Effect.ignore)
          const host = ptyHostPidIn(dataDir)
          if (host !== undefined) yield* terminate(host, 15)
        })
    )
    child.stderr.on("data", (chunk: Buffer) => {
      stderr = (stderr + chunk.toString("utf8")).slice(-20_000)
    })
    // Stdout must be drained, or the server blocks on its logs.
    readline.createInterface({ input: child.stdout }).on("line", (line) => {
      if (!line.includes("vibes is listening")) return
      try {
        const parsed: unknown = JSON.parse(line)
        if (isListening(parsed)) Deferred.unsafeDone(listening, Effect.succeed(parsed.annotations.url))
      } catch {
        // not a log line
      }
    })
    child.once("exit", (code, signal) => {
      Deferred.unsafeDone(exited, Effect.void)
      Deferred.unsafeDone(
        listening,
        Effect.fail(new Harness.BenchError({ message: `vibes serve exited (${code ?? signal}):\n${stderr}` }))
      )
    })
    const url = yield* Deferred.await(listening)
    const token = fs.readFileSync(path.join(dataDir, "admin-token"), "utf8").trim()
    const pid = child.pid ?? 0
    const database = new URL(Redacted.value(db.url)).pathname.slice(1)
    return { url, token, dataDir, pid, ptyHostPid: () => ptyHostPidIn(dataDir), database }
  })

// Clients -----------------------------------------------------------------------------------

/** A typed client on a WebSocket of its own, open (one `System.Info` answered), closed with the scope. */
export const connect = (server: Server): Effect.Effect<Client.Client, Harness.BenchError, Scope.Scope> =>
  Effect.gen(function* () {
    const context = yield* Layer.build(
      Client.layer({ url: server.url, token: Option.some(Redacted.make(server.token)) }).pipe(
        Layer.provide(NodeSocket.layerWebSocketConstructor)
      )
    )
    const client = Context.get(context, Client.VibesClient)
    yield* client.System.Info().pipe(
      Effect.mapError(
        (error) => new Harness.BenchError({ message: `cannot reach the server: ${error.message}` })
      )
    )
    return client
  })

/** The typed attach client on `sessionId` over the attach socket, at `size`, closed with the scope. */
export const attachSocket = (
  server: Server,
  sessionId: string,
  size: { readonly cols: number; readonly rows: number }
) =>
  AttachClient.attach({
    url: server.url,
    token: Option.some(Redacted.make(server.token)),
    sessionId,
    size: () => size
  }).pipe(Effect.provide(NodeSocket.layerWebSocketConstructor))

/** Any failure of a client call, as a benchmark error. */
export const orBench = <A, R>(
  effect: Effect.Effect<A, { readonly _tag: string; readonly message?: string }, R>
): Effect.Effect<A, Harness.BenchError, R> =>
  Effect.mapError(
    effect,
    (error) => new Harness.BenchError({ message: `${error._tag}: ${error.message ?? "no message"}` })
  )

/**
 * Reads `stream` in a fiber of the scope, handing each element to `onEvent` as it arrives;
 * `failed` completes if the stream fails or ends.
 */
export const follow = <E>(
  stream: Stream.Stream<AttachEvent, E>,
  onEvent: (event: AttachEvent) => void
): Effect.Effect<Deferred.Deferred<never, Harness.BenchError>, never, Scope.Scope> =>
  Effect.gen(function* () {
    const failed = yield* Deferred.make<never, Harness.BenchError>()
    yield* stream.pipe(
      Stream.runForEach((event) => Effect.sync(() => onEvent(event))),
      Effect.matchCauseEffect({
        onFailure: (cause) =>
          Deferred.fail(failed, new Harness.BenchError({ message: `the attach stream failed: ${cause}` })),
        onSuccess: () => Deferred.fail(failed, new Harness.BenchError({ message: "the attach stream ended" }))
      }),
      Effect.forkScoped
    )
    return failed
  })

/** Polls `Sessions.Get` until `done` holds (at most `maxSeconds`). */
export const waitForInfo = (
  client: Client.Client,
  sessionId: string,
  done: (info: SessionInfo) => boolean,
  what: string,
  maxSeconds: number
): Effect.Effect<SessionInfo, Harness.BenchError> =>
  Effect.gen(function* () {
    const deadline = Harness.now() + maxSeconds * 1000
    for (;;) {
      const info = yield* orBench(client.Sessions.Get({ sessionId }))
      if (done(info)) return info
      if (Harness.now() > deadline) {
        return yield* new Harness.BenchError({
          message: `timed out after ${maxSeconds} s waiting for ${what}`
        })
      }
      yield* Effect.sleep("200 millis")
    }
  })

// Baselines ---------------------------------------------------------------------------------

/** This process' environment with the TERM sessions get. */
const terminalEnv = (): Record<string, string> => {
  const env: Record<string, string> = {}
  for (const [key, value] of Object.entries(process.env)) if (value !== undefined) env[key] = value
  env["TERM"] = "xterm-256color"
  return env
}

/** A terminal spawned with node-pty in this process (Buffers, not strings), killed with the scope. */
export const rawPty = (
  file: string,
  args: ReadonlyArray<string>,
  size: { readonly cols: number; readonly rows: number }
): Effect.Effect<NodePty.IPty, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.sync(() =>
      NodePty.spawn(file, [...args], {
        name: "xterm-256color",
        cols: size.cols,
        rows: size.rows,
        cwd: process.cwd(),
        env: terminalEnv(),
        encoding: null
      })
    ),
    (terminal) =>
      Effect.sync(() => {
        try {
          terminal.kill("SIGKILL")
        } catch {
          // already gone
        }
      })
  )

/**
 * A PTY of the server's own PTY host, driven over the host's socket by this process as the
 * server would (without the server): the middle step between raw node-pty and a vibes session.
 * Released with the scope.
 */
export const hostPty = (
  server: Server,
  file: string,
  args: ReadonlyArray<string>,
  size: { readonly cols: number; readonly rows: number }
): Effect.Effect<
  {
    readonly output: Stream.Stream<PtyOutput, Harness.BenchError>
    readonly write: (data: Uint8Array) => Effect.Effect<void, Harness.BenchError>
  },
  Harness.BenchError,
  Scope.Scope
> =>
  Effect.gen(function* () {
    const context = yield* Layer.build(PtyHostClient.layer({ socketPath: socketPath(server.dataDir) }))
    const host = Context.get(context, PtyHost)
    const id = `bench-${crypto.randomUUID()}`
    yield* Effect.acquireRelease(
      orBench(
        host.spawn(
          PtySpec.make({
            id,
            file,
            args,
            cwd: process.cwd(),
            env: terminalEnv(),
            ...size
          })
        )
      ),
      () => Effect.ignore(host.release(id))
    )
    return {
      output: Stream.mapError(host.output(id, 0), (e) => new Harness.BenchError({ message: e.message })),
      write: (data) => orBench(host.write(id, data))
    }
  })

/** node-pty hands out Buffers with `encoding: null`, though its typings say string. */
export const onBytes = (terminal: NodePty.IPty, listener: (data: Buffer) => void): NodePty.IDisposable =>
  (terminal.onData as unknown as NodePty.IEvent<Buffer>)(listener)

// Files -------------------------------------------------------------------------------------

/**
 * The reference terminal server (`reference-server.ts`) as a child process for the scope; its port.
 */
export const referenceServer: Effect.Effect<number, Harness.BenchError, Scope.Scope> = Effect.gen(
  function* () {
    const child = yield* Effect.acquireRelease(
      Effect.sync(() =>
        childProcess.spawn(
          process.execPath,
          ["--import", "tsx", path.join(projectRoot, "bench", "sessions", "reference-server.ts")],
          { cwd: projectRoot, stdio: ["pipe", "pipe", "inherit"] }
        )
      ),
      (child) => Effect.sync(() => child.kill("SIGKILL"))
    )
    return yield* Effect.async<number, Harness.BenchError>((resume) => {
      readline.createInterface({ input: child.stdout }).on("line", (line) => {
        const match = /^listening (\d+)$/.exec(line)
        if (match !== null) resume(Effect.succeed(Number(match[1])))
      })
      child.once("exit", (code) =>
        resume(Effect.fail(new Harness.BenchError({ message: `the reference server exited (${code})` })))
      )
    }).pipe(
      Effect.timeoutFail({
        duration: "30 seconds",
        onTimeout: () =>
          new Harness.BenchError({ message: "the reference server did not listen within 30 s" })
      })
    )
  }
)

/** A temporary directory of the scope, readable by the sandbox's user that sessions run as. */
export const scratch = (prefix: string) => readableTempDir(prefix)

/**
 * Writes `bytes` bytes of printable ASCII lines (72 characters and a newline, varied so nothing
 * compresses or repeats) ending with `marker` and a newline, into `file`.
 */
export const writeTextFile = (file: string, bytes: number, marker: string): void => {
  const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:-_+=()[]{}"
  const fd = fs.openSync(file, "w")
  try {
    const block = Buffer.alloc(1024 * 1024)
    let state = 12345
    let written = 0
    const body = bytes - marker.length - 1
    while (written < body) {
      const size = Math.min(block.length, body - written)
      for (let i = 0; i < size; i++) {
        const at = written + i
        if (at % 73 === 72) {
          block[i] = 10
        } else {
          state = (state * 1103515245 + 12345) & 0x7fffffff
          block[i] = alphabet.charCodeAt(state % alphabet.length)
        }
      }
      fs.writeSync(fd, block, 0, size)
      written += size
    }
    fs.writeSync(fd, `${marker}\n`)
  } finally {
    fs.closeSync(fd)
  }
}

/** Watches a byte stream for `marker`, which may be split across chunks. */
export const markerWatch = (marker: string) => {
  const needle = Buffer.from(marker)
  let tail = Buffer.alloc(0)
  return (chunk: Uint8Array): boolean => {
    const bytes = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.length)
    // Only the seam needs a copy: the tail of the previous chunk and the head of this one.
    const seam = Buffer.concat([tail, bytes.subarray(0, needle.length - 1)])
    const found = seam.includes(needle) || bytes.includes(needle)
    const keep = needle.length - 1
    tail =
      bytes.length >= keep
        ? Buffer.from(bytes.subarray(bytes.length - keep))
        : Buffer.concat([tail, bytes]).subarray(-keep)
    return found
  }
}

/** Megabytes (10^6 bytes) a second, with one decimal. */
export const mbPerSecond = (bytes: number, ms: number): string =>
  Number.isFinite(ms) && ms > 0 ? (bytes / 1000 / ms).toFixed(1) : "n/a"

/**
 * Lines of the results about the run: the commit (and whether the working tree had changes) and
 * the load average when it started, since other work on the machine skews every number.
 */
export const runLines = (): string => {
  const git = (args: ReadonlyArray<string>) => {
    try {
      return childProcess.execFileSync("git", [...args], { cwd: projectRoot, encoding: "utf8" }).trim()
    } catch {
      return "?"
    }
  }
  const dirty = git(["status", "--porcelain", "--untracked-files=no"]) !== ""
  const load = os
    .loadavg()
    .map((n) => n.toFixed(2))
    .join(" / ")
  return [
    `- Commit: ${git(["rev-parse", "--short", "HEAD"])}${dirty ? " (with uncommitted changes)" : ""}`,
    `- Load average (1 / 5 / 15 min) at the start: ${load}`
  ].join("\n")
}
