/**
 * `vibes doctor`: checks what a node needs on this machine, before (or while) it runs, and says
 * how to fix what is wrong. Each check ends OK, WARN (works, but look at it) or FAIL (a node
 * cannot run, or cannot run well, until it is fixed). Loaded on demand by the CLI.
 */
import * as childProcess from "node:child_process"
import * as fs from "node:fs"
import * as http from "node:http"
import * as net from "node:net"
import * as path from "node:path"
import pg from "pg"
import { Effect, Option, Redacted } from "effect"
import * as NatsSupervisor from "../../actors/supervisors/NatsSupervisor.js"
import * as PgSupervisor from "../../actors/supervisors/PgSupervisor.js"
import * as Db from "../../infra/db/Db.js"
import { runningHostPid, socketPath } from "../../infra/pty/PtyHostRpcs.js"
import type { ServerConfig } from "../config/Config.js"

/** How a check ended. */
export type Status = "OK" | "WARN" | "FAIL"

/** One check's result, with what to do when it is not OK. */
export interface Check {
  readonly name: string
  readonly status: Status
  readonly detail: string
  readonly fix?: string
}

const ok = (name: string, detail: string): Check => ({ name, status: "OK", detail })
const warn = (name: string, detail: string, fix: string): Check => ({ name, status: "WARN", detail, fix })
const fail = (name: string, detail: string, fix: string): Check => ({ name, status: "FAIL", detail, fix })

const messageOf = (cause: unknown): string => (cause instanceof Error ? cause.message : String(cause))

/** The oldest Node.js major version vibes runs on. */
const minimumNode = 20

const nodeVersion = Effect.sync(() => {
  const major = Number(process.versions.node.split(".")[0])
  return major >= minimumNode
    ? ok("node", `Node.js ${process.versions.node}`)
    : fail(
        "node",
        `Node.js ${process.versions.node} is older than ${minimumNode}`,
        `install Node.js ${minimumNode} or newer`
      )
})

const terminalModule = Effect.tryPromise(() => import("node-pty")).pipe(
  Effect.map((module) =>
    typeof module.spawn === "function"
      ? ok("node-pty", "the native terminal module loads")
      : fail("node-pty", "node-pty loads but has no spawn", "reinstall vibes (npm install)")
  ),
  Effect.catchAll((error) =>
    Effect.succeed(
      fail(
        "node-pty",
        `the native terminal module does not load: ${messageOf(error.error)}`,
        "install python3, make and g++, then `npm rebuild node-pty` where vibes is installed"
      )
    )
  )
)

/** Runs a program briefly; its output, or why it did not run. */
const runProgram = (command: string, args: ReadonlyArray<string>) =>
  Effect.sync(() => childProcess.spawnSync(command, args, { encoding: "utf8", timeout: 10_000 }))

const externalDatabase = (url: Redacted.Redacted<string>, timeoutSeconds: number) =>
  Effect.tryPromise(async () => {
    const client = new pg.Client({
      connectionString: Redacted.value(url),
      connectionTimeoutMillis: timeoutSeconds * 1000,
      application_name: "vibes doctor"
    })
    client.on("error", () => undefined)
    try {
      await client.connect()
      const result = await client.query<{ server_version: string }>("SHOW server_version")
      return result.rows[0]?.server_version ?? "unknown"
    } finally {
      await client.end().catch(() => undefined)
    }
  }).pipe(
    Effect.map((version) => ok("database", `Postgres ${version} at ${Db.describe(url)} (DATABASE_URL)`)),
    Effect.catchAll((error) =>
      Effect.succeed(
        fail(
          "database",
          `cannot connect to Postgres at ${Db.describe(url)}: ${messageOf(error.error)}`,
          "start that Postgres or correct DATABASE_URL (unset it to use the embedded Postgres)"
        )
      )
    )
  )

const embeddedDatabase = (dataDir: string) =>
  Effect.gen(function* () {
    const binaries = yield* Effect.either(PgSupervisor.binaries)
    if (binaries._tag === "Left") {
      return fail(
        "database",
        binaries.left.message,
        "reinstall vibes on a supported platform (Linux or macOS, x64 or arm64), or set DATABASE_URL"
      )
    }
    const version = yield* runProgram(binaries.right.postgres, ["--version"])
    if (version.status !== 0) {
      return fail(
        "database",
        `the embedded Postgres does not run: ${(version.stderr || messageOf(version.error)).trim()}`,
        "set DATABASE_URL to an external Postgres"
      )
    }
    if (process.getuid?.() === 0) {
      // As root the embedded Postgres runs in a user namespace.
      const namespace = yield* runProgram("unshare", [
        "--user",
        "--map-user=65534",
        "--map-group=65534",
        "--",
        "true"
      ])
      if (namespace.status !== 0) {
        return fail(
          "database",
          "Postgres refuses to run as root, and this machine cannot create a user namespace",
          "run vibes as a normal user, or set DATABASE_URL to an external Postgres"
        )
      }
    }
    const pgVersionFile = path.join(dataDir, "postgres", "PG_VERSION")
    const cluster = fs.existsSync(pgVersionFile)
      ? `, its data (version ${fs.readFileSync(pgVersionFile, "utf8").trim()}) in ${path.dirname(pgVersionFile)}`
      : ", created at the first start"
    return ok("database", `embedded ${version.stdout.trim()}${cluster}`)
  })

/** The nearest directory of `dir` that exists (itself, or a parent). */
const nearestExisting = (dir: string): string => {
  let current = dir
  while (!fs.existsSync(current) && path.dirname(current) !== current) current = path.dirname(current)
  return current
}

const dataDirectory = (dataDir: string) =>
  Effect.sync(() => {
    if (!fs.existsSync(dataDir)) {
      const parent = nearestExisting(dataDir)
      try {
        fs.accessSync(parent, fs.constants.W_OK | fs.constants.X_OK)
        return ok("data-dir", `${dataDir} does not exist yet; vibes serve creates it (mode 0700)`)
      } catch {
        return fail(
          "data-dir",
          `${dataDir} does not exist and ${parent} is not writable`,
          `create it for this user (mkdir -p -m 0700 ${dataDir}) or choose another with --data-dir / VIBES_DATA_DIR`
        )
      }
    }
    const stat = fs.statSync(dataDir)
    if (!stat.isDirectory()) {
      return fail(
        "data-dir",
        `${dataDir} is not a directory`,
        "choose another with --data-dir / VIBES_DATA_DIR"
      )
    }
    try {
      fs.accessSync(dataDir, fs.constants.R_OK | fs.constants.W_OK | fs.constants.X_OK)
    } catch {
      return fail(
        "data-dir",
        `${dataDir} is not readable and writable by this user (uid ${process.getuid?.() ?? "?"})`,
        `chown it to the user that runs vibes, or choose another with --data-dir`
      )
    }
    if ((stat.mode & 0o077) !== 0) {
      return warn(
        "data-dir",
        `${dataDir} is open to other users (mode ${(stat.mode & 0o777).toString(8)}); it holds the admin token and the database`,
        `chmod 700 ${dataDir}`
      )
    }
    return ok("data-dir", `${dataDir} (mode ${(stat.mode & 0o777).toString(8)})`)
  })

const gib = (bytes: number) => `${(bytes / 1024 ** 3).toFixed(1)} GiB`

/** Below these the disk check fails, or warns. */
const diskFailBytes = 512 * 1024 ** 2
const diskWarnBytes = 2 * 1024 ** 3

const freeDisk = (dataDir: string) =>
  Effect.tryPromise(() => fs.promises.statfs(nearestExisting(dataDir))).pipe(
    Effect.map((stats) => {
      const available = stats.bavail * stats.bsize
      const size = stats.blocks * stats.bsize
      const share = size > 0 ? available / size : 0
      const detail = `${gib(available)} free of ${gib(size)} (${Math.round(share * 100)}%) where ${dataDir} is`
      const fix = "free space on that filesystem, set VIBES_EVENTS_RETENTION, or move the data dir"
      if (available < diskFailBytes || share < 0.03) return fail("disk", detail, fix)
      if (available < diskWarnBytes || share < 0.1) return warn("disk", detail, fix)
      return ok("disk", detail)
    }),
    Effect.catchAll((error) =>
      Effect.succeed(
        warn("disk", `cannot read the free space: ${messageOf(error.error)}`, "check the data dir")
      )
    )
  )

/** Whether `host:port` can be listened on now: `free`, `in-use`, or the error. */
const tryListen = (host: string, port: number) =>
  Effect.async<"free" | "in-use" | string>((resume) => {
    const server = net.createServer()
    server.once("error", (error: NodeJS.ErrnoException) =>
      resume(Effect.succeed(error.code === "EADDRINUSE" ? "in-use" : `${error.code ?? ""} ${error.message}`))
    )
    server.listen(port, host, () => server.close(() => resume(Effect.succeed("free"))))
  })

/** True when `/healthz` on `host:port` answers as vibes does. */
const answersAsVibes = (host: string, port: number) =>
  Effect.async<boolean>((resume) => {
    const request = http.get(
      {
        host: net.isIPv6(host) ? host : host === "0.0.0.0" ? "127.0.0.1" : host,
        port,
        path: "/healthz",
        timeout: 3000
      },
      (response) => {
        let body = ""
        response.setEncoding("utf8")
        response.on("data", (chunk: string) => {
          body += chunk.slice(0, 100)
        })
        response.on("end", () =>
          resume(Effect.succeed(response.statusCode === 200 && body === '{"status":"ok"}'))
        )
      }
    )
    request.once("timeout", () => request.destroy())
    request.once("error", () => resume(Effect.succeed(false)))
  })

const listenPort = (host: string, port: number) =>
  Effect.gen(function* () {
    const where = `${host}:${port}`
    if (port === 0) return ok("port", `${host}, a free port picked at start (port 0)`)
    const state = yield* tryListen(host, port)
    if (state === "free") return ok("port", `${where} is free`)
    if (state !== "in-use") {
      return fail(
        "port",
        `cannot listen on ${where}: ${state.trim()}`,
        "choose another --port / VIBES_PORT or --host"
      )
    }
    return (yield* answersAsVibes(host, port))
      ? ok("port", `${where} is held by a running vibes`)
      : fail(
          "port",
          `${where} is held by another program`,
          "stop that program, or run vibes on another --port / VIBES_PORT"
        )
  })

/** The longest Unix socket path Linux takes (sun_path holds 108 bytes with the NUL). */
const maxSocketPath = 107

const ptyHost = (dataDir: string) =>
  Effect.sync(() => {
    const socket = socketPath(dataDir)
    if (Buffer.byteLength(socket) > maxSocketPath) {
      return fail(
        "pty-host",
        `its socket path ${socket} is longer than ${maxSocketPath} bytes`,
        "choose a shorter --data-dir / VIBES_DATA_DIR"
      )
    }
    return Option.match(runningHostPid(dataDir), {
      onNone: () => ok("pty-host", "not running; vibes serve starts it (it holds the terminals)"),
      onSome: (pid) => ok("pty-host", `running (pid ${pid}, socket ${socket})`)
    })
  })

const natsServer = (config: ServerConfig) =>
  Effect.gen(function* () {
    const backend = config.eventBackend
    const needed = backend._tag === "JetStream" && Option.isNone(backend.url)
    const found = yield* Effect.either(NatsSupervisor.findBinary())
    if (found._tag === "Right") {
      const version = yield* runProgram(found.right, ["--version"])
      return ok(
        "nats-server",
        `${version.stdout.trim() || found.right}${needed ? " (bundled event log)" : " (optional, unused)"}`
      )
    }
    return needed
      ? fail(
          "nats-server",
          "VIBES_EVENT_BACKEND=jetstream without VIBES_NATS_URL needs nats-server on this machine",
          NatsSupervisor.installHint
        )
      : warn(
          "nats-server",
          "not installed (optional: only for VIBES_EVENT_BACKEND=jetstream without VIBES_NATS_URL)",
          "apt-get install -y nats-server, when you want the bundled JetStream event log"
        )
  })

const chromiumPaths = ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"]

const chromium = Effect.sync(() => {
  const explicit = process.env["VIBES_TEST_CHROMIUM"]
  const found = [...(explicit !== undefined && explicit !== "" ? [explicit] : []), ...chromiumPaths].find(
    (file) => {
      try {
        fs.accessSync(file, fs.constants.X_OK)
        return true
      } catch {
        return false
      }
    }
  )
  return found !== undefined
    ? ok("chromium", `${found} (optional: the web UI's browser tests)`)
    : warn(
        "chromium",
        "not installed (optional: only the web UI's browser tests use it)",
        "apt-get install -y chromium, or set VIBES_TEST_CHROMIUM, to run the browser tests"
      )
})

/** Every check, in the order they are printed. */
export const run = (config: ServerConfig, timeoutSeconds: number): Effect.Effect<ReadonlyArray<Check>> =>
  Effect.all(
    [
      nodeVersion,
      terminalModule,
      Option.match(config.databaseUrl, {
        onNone: () => embeddedDatabase(config.dataDir),
        onSome: (url) => externalDatabase(url, timeoutSeconds)
      }),
      dataDirectory(config.dataDir),
      freeDisk(config.dataDir),
      listenPort(config.host, config.port),
      ptyHost(config.dataDir),
      natsServer(config),
      chromium
    ],
    { concurrency: "unbounded" }
  )

/** The checks as lines a person reads. */
export const format = (checks: ReadonlyArray<Check>): string =>
  checks
    .flatMap((check) => [
      `${check.status.padEnd(5)} ${check.name.padEnd(12)} ${check.detail}`,
      ...(check.fix !== undefined ? [`${"".padEnd(18)} fix: ${check.fix}`] : [])
    ])
    .join("\n")
