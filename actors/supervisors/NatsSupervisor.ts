/**
 * Supervises a bundled `nats-server -js`, used by the JetStream event log when no NATS URL is
 * given: writes a config file into `<dataDir>/nats` (JetStream store, a client port on the
 * loopback interface, a random client token so other local users cannot read the log), starts
 * the server, waits until a client with the token connects and JetStream answers, restarts it on
 * the same port with exponential backoff when it dies, and stops it (SIGTERM, then SIGKILL after
 * `stopTimeout`) when the scope closes. There is no monitoring port: its HTTP endpoints answer
 * anyone on the machine (connections, subjects, streams), so health is checked as a client.
 *
 * Like the embedded Postgres, the server runs in a process group of its own, with the server's
 * secrets stripped from its environment, under `setpriv --pdeathsig SIGTERM` where util-linux has
 * it, and writes a pid file: a server left running by a vibes killed with SIGKILL is stopped at
 * the next start on the same data dir before a new one takes its store.
 */
import * as childProcess from "node:child_process"
import * as crypto from "node:crypto"
import * as fs from "node:fs"
import { jetstreamManager } from "@nats-io/jetstream"
import { connect } from "@nats-io/transport-node"
import * as path from "node:path"
import {
  Context,
  Duration,
  Effect,
  Layer,
  Option,
  Redacted,
  Schedule,
  Schema,
  type Scope,
  SubscriptionRef
} from "effect"
import * as DataDir from "../../infra/datadir/DataDir.js"
import * as ChildSupervisor from "./ChildSupervisor.js"
import * as ChildEnv from "../../infra/sandbox/ChildEnv.js"
import * as FreePort from "../../infra/net/FreePort.js"
import * as Proc from "../../infra/proc/Proc.js"

/** The bundled nats-server could not be found, started or kept running. */
export class NatsServerError extends Schema.TaggedError<NatsServerError>()("NatsServerError", {
  message: Schema.String
}) {}

/** Where the supervised server is in its life. */
export type Status = ChildSupervisor.Status

/** The supervised nats-server. */
export class NatsSupervisor extends Context.Tag("vibes/NatsSupervisor")<
  NatsSupervisor,
  {
    /** Client URL: `nats://127.0.0.1:<port>`. */
    readonly url: string
    /** The token clients must present. */
    readonly token: Redacted.Redacted<string>
    readonly port: number
    /** The JetStream store directory. */
    readonly storeDir: string
    /** Pid of the running server, if one runs. */
    readonly pid: Effect.Effect<Option.Option<number>>
    /** The status, with its changes. */
    readonly status: SubscriptionRef.SubscriptionRef<Status>
    /** How many times the server was restarted after dying. */
    readonly restarts: Effect.Effect<number>
    /** Fails once the supervisor has given up on restarting. */
    readonly failed: Effect.Effect<never, NatsServerError>
  }
>() {}

/** Options of the supervisor. */
export interface Options {
  /** The vibes data directory; the server keeps its config, log and store in its `nats/` folder. */
  readonly dataDir: string
  /** The server's folder instead of `<dataDir>/nats` (`VIBES_NATS_DATA_DIR`). */
  readonly natsDir?: string
  /** Restart attempts after an unexpected exit before giving up. */
  readonly maxRestarts: number
  /** A fixed client port (default: a free one). */
  readonly port?: number
  /** The nats-server binary (default: found on PATH, /usr/sbin, /usr/local/bin). */
  readonly binary?: string
  /** First backoff delay between restart attempts (doubles each time). */
  readonly restartBackoff?: Duration.DurationInput
  /** How long start-up may take before it counts as failed. */
  readonly startTimeout?: Duration.DurationInput
  /** How long a graceful stop may take before the server is killed. */
  readonly stopTimeout?: Duration.DurationInput
}

const fail = (message: string) => new NatsServerError({ message })
const messageOf = (cause: unknown): string => (cause instanceof Error ? cause.message : String(cause))

/** What a person runs to get the server. */
export const installHint =
  "install it (Debian/Ubuntu: `apt-get install -y nats-server`; elsewhere see https://docs.nats.io/running-a-nats-service/introduction/installation) or set VIBES_NATS_URL to an existing NATS server with JetStream"

/** Finds the nats-server binary. */
export const findBinary = (explicit?: string): Effect.Effect<string, NatsServerError> =>
  Effect.suspend(() => {
    const isExecutable = (file: string) => {
      try {
        fs.accessSync(file, fs.constants.X_OK)
        return fs.statSync(file).isFile()
      } catch {
        return false
      }
    }
    if (explicit !== undefined) {
      return isExecutable(explicit)
        ? Effect.succeed(explicit)
        : Effect.fail(fail(`nats-server was not found at ${explicit}: ${installHint}`))
    }
    const dirs = [
      ...(process.env["PATH"] ?? "").split(path.delimiter),
      "/usr/sbin",
      "/usr/local/bin",
      "/usr/bin"
    ]
    const found = dirs.filter((dir) => dir !== "").find((dir) => isExecutable(path.join(dir, "nats-server")))
    return found !== undefined
      ? Effect.succeed(path.join(found, "nats-server"))
      : Effect.fail(fail(`nats-server was not found on this machine: ${installHint}`))
  })

/** The environment of the server: the server's without its own variables and secrets. */
const serverEnv = () => ChildEnv.childEnv(ChildEnv.secrets({ values: [] }))

/** Runs a program so that the kernel sends it SIGTERM when this process dies (util-linux `setpriv`). */
const onParentDeath = (bin: string, args: ReadonlyArray<string>): [string, Array<string>] =>
  childProcess.spawnSync("setpriv", ["--version"], { stdio: "ignore" }).status === 0
    ? ["setpriv", ["--pdeathsig", "TERM", "--", bin, ...args]]
    : [bin, [...args]]

const isNatsServer = (pid: number): boolean =>
  Option.exists(Proc.cmdline(pid), (line) => line.includes("nats-server"))

const waitGone = (pid: number, within: Duration.DurationInput) =>
  Effect.suspend(() => (DataDir.isAlive(pid) ? Effect.fail("alive") : Effect.void)).pipe(
    Effect.retry(Schedule.spaced("50 millis").pipe(Schedule.upTo(within))),
    Effect.as(true),
    Effect.orElseSucceed(() => false)
  )

/** Stops a server left running on this data dir by a vibes that died without stopping it. */
const stopOrphan = (pidFile: string) =>
  Effect.gen(function* () {
    const text = fs.existsSync(pidFile) ? fs.readFileSync(pidFile, "utf8").trim() : ""
    const pid = Number.parseInt(text, 10)
    if (!Number.isInteger(pid) || pid <= 0 || !DataDir.isAlive(pid) || !isNatsServer(pid)) return
    yield* Effect.logWarning(`stopping an orphaned nats-server (pid ${pid}) left by an earlier run`)
    process.kill(pid, "SIGTERM")
    if (!(yield* waitGone(pid, "10 seconds"))) {
      process.kill(pid, "SIGKILL")
      yield* waitGone(pid, "5 seconds")
    }
  })

/** Passes when a client with the token connects and JetStream answers it. */
const healthy = (url: string, token: string) =>
  Effect.tryPromise({
    try: async () => {
      const nc = await connect({ servers: url, token, timeout: 2000, reconnect: false })
      try {
        await (await jetstreamManager(nc)).getAccountInfo()
      } finally {
        await nc.close()
      }
    },
    catch: (cause) => fail(`nats-server does not answer yet: ${messageOf(cause)}`)
  })

/** The server's config file (NATS config syntax; strings JSON-quoted). */
const configText = (options: {
  readonly port: number
  readonly storeDir: string
  readonly pidFile: string
  readonly token: string
}) =>
  [
    `listen: "127.0.0.1:${options.port}"`,
    `pid_file: ${JSON.stringify(options.pidFile)}`,
    `authorization { token: ${JSON.stringify(options.token)} }`,
    `jetstream { store_dir: ${JSON.stringify(options.storeDir)} }`,
    ""
  ].join("\n")

/** Builds the supervisor; the layer's scope owns the server. */
export const make = (options: Options): Effect.Effect<NatsSupervisor["Type"], NatsServerError, Scope.Scope> =>
  Effect.gen(function* () {
    const binary = yield* findBinary(options.binary)
    const home = options.natsDir ?? path.join(options.dataDir, "nats")
    const storeDir = path.join(home, "store")
    const pidFile = path.join(home, "nats-server.pid")
    const configFile = path.join(home, "nats-server.conf")
    const logFile = path.join(home, "nats-server.log")
    const tokenFile = path.join(home, "token")
    yield* DataDir.ensure(home).pipe(Effect.mapError((e) => fail(e.message)))
    yield* stopOrphan(pidFile)

    const freePort = FreePort.find().pipe(Effect.mapError((e) => fail(`no free port: ${e.message}`)))
    const port = options.port ?? (yield* freePort)
    const token = yield* Effect.try({
      try: () => {
        if (!fs.existsSync(tokenFile)) {
          fs.writeFileSync(tokenFile, crypto.randomBytes(24).toString("base64url") + "\n", { mode: 0o600 })
        }
        const value = fs.readFileSync(tokenFile, "utf8").trim()
        fs.writeFileSync(configFile, configText({ port, storeDir, pidFile, token: value }), {
          mode: 0o600
        })
        return value
      },
      catch: (cause) => fail(`cannot write the nats-server config in ${home}: ${messageOf(cause)}`)
    })

    const supervised = yield* ChildSupervisor.supervise({
      name: "nats-server",
      metricLabel: "nats",
      spawn: Effect.try({
        try: () => {
          const [cmd, args] = onParentDeath(binary, ["-c", configFile, "-l", logFile])
          return childProcess.spawn(cmd, args, { stdio: "ignore", detached: true, env: serverEnv() })
        },
        catch: (cause) => fail(`cannot start nats-server: ${messageOf(cause)}`)
      }),
      probe: healthy(`nats://127.0.0.1:${port}`, token),
      probeEvery: "25 millis",
      fail,
      logFile,
      beforeRestart: stopOrphan(pidFile),
      stopSignal: "SIGTERM",
      startTimeout: options.startTimeout ?? "30 seconds",
      stopTimeout: options.stopTimeout ?? "10 seconds",
      restartBackoff: options.restartBackoff ?? "200 millis",
      maxRestarts: options.maxRestarts
    })

    return {
      url: `nats://127.0.0.1:${port}`,
      token: Redacted.make(token),
      port,
      storeDir,
      ...supervised
    }
  })

/** The supervisor as a layer. */
export const layer = (options: Options): Layer.Layer<NatsSupervisor, NatsServerError> =>
  Layer.scoped(NatsSupervisor, make(options))
