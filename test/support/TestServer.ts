/**
 * A real vibes node in this process, on a free port, with its own data dir and database.
 */
import { Deferred, Duration, Effect, Layer, LogLevel, Option, Redacted } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { type ServerConfig } from "../../src/config/Config.js"
import * as Config from "../../src/config/Config.js"
import * as ClientAddress from "../../infra/net/ClientAddress.js"
import * as RpcSocketServer from "../../infra/rpc/RpcSocketServer.js"
import * as Server from "../../src/server/Server.js"
import { entry } from "./CliEntry.js"
import * as TestDatabase from "./TestDatabase.js"
import { tempDir } from "./TempDir.js"
import * as StorageBackend from "../../infra/storage/StorageBackend.js"

/** A running node: where it listens and its admin token. */
export interface Running {
  readonly url: string
  readonly token: string
  readonly dataDir: string
  readonly announcement: Server.Announcement
  /** The node's database. */
  readonly databaseUrl: Redacted.Redacted<string>
}

/** The argv that starts a PTY host (as `vibes pty-host`), from the run's bundle of the sources. */
export const ptyHostCommand = (dataDir: string): ReadonlyArray<string> => [
  process.execPath,
  entry,
  "pty-host",
  "--data-dir",
  dataDir
]

/** Starts a node for the life of the scope; `overrides` change its configuration. */
export const startWith = (overrides: Partial<ServerConfig>) =>
  Effect.gen(function* () {
    const dataDir = overrides.dataDir ?? (yield* tempDir("vibes-server-"))
    const databaseUrl = Option.isSome(overrides.databaseUrl ?? Option.none())
      ? (overrides.databaseUrl ?? Option.none())
      : Option.some((yield* TestDatabase.databaseUrl).url)
    const config: ServerConfig = {
      host: "127.0.0.1",
      port: 0,
      dataDir,
      databaseUrl,
      dbPoolSize: 4,
      dbConnectTimeout: Duration.seconds(10),
      dbQueryTimeout: Duration.seconds(30),
      nodeId: Option.some("test-node"),
      adminToken: Option.none(),
      logFormat: "json",
      logLevel: LogLevel.Warning,
      shutdownTimeout: Duration.seconds(5),
      embeddedPgMaxRestarts: 1,
      otlpEndpoint: Option.none(),
      eventsSubscriberBuffer: 4096,
      eventBackend: { _tag: "Postgres" },
      storage: StorageBackend.local,
      sseHeartbeat: Duration.seconds(15),
      eventsRetention: [],
      eventsRetentionInterval: Duration.hours(1),
      sessionScrollback: 10_000,
      sessionIdleAfter: Duration.seconds(5),
      ptyHostCommand: Option.some(ptyHostCommand(dataDir)),
      stopPtyHostOnExit: true,
      jobSlots: 32,
      jobKillGrace: Duration.seconds(2),
      jobRetention: Duration.days(30),
      sshKnownHosts: `${dataDir}/known_hosts`,
      sshKeepalive: Duration.seconds(15),
      webDir: Option.none(),
      proxyProviders: [],
      proxyMaxBody: 32 * 1024 * 1024,
      proxyRate: 20,
      proxyBurst: 40,
      proxyConversations: Config.proxyConversationsDefaults,
      sandbox: "auto",
      runAs: "vibes",
      cluster: Option.none(),
      heartbeat: Duration.seconds(2),
      nodeLostAfter: Duration.seconds(30),
      allowedHosts: [],
      trustedProxies: ClientAddress.none,
      rpcLimits: RpcSocketServer.defaultLimits,
      maxStreamsPerClient: 128,
      loginTtl: Duration.days(7),
      alerts: {
        every: Duration.seconds(30),
        diskFreePercent: 5,
        consumerLag: 100_000,
        restarts: 3,
        restartsWithin: Duration.minutes(10)
      },
      notify: {
        retryBase: Duration.seconds(1),
        retryMax: Duration.minutes(5),
        refreshEvery: Duration.seconds(5)
      },
      ...overrides
    }
    const listening = yield* Deferred.make<Server.Announcement>()
    yield* Layer.launch(
      Server.layer(config, {
        onListening: (announcement) => Deferred.succeed(listening, announcement),
        onFatal: (error) => Effect.die(error)
      })
    ).pipe(Effect.forkScoped)
    const announcement = yield* Deferred.await(listening)
    const token = fs.readFileSync(path.join(dataDir, "admin-token"), "utf8").trim()
    return {
      url: announcement.url,
      token,
      dataDir,
      announcement,
      databaseUrl: Option.getOrThrow(databaseUrl)
    } satisfies Running
  })

/** Starts a node with the test defaults. */
export const start = startWith({})

/** The token as the client wants it. */
export const redacted = (running: Running) => Option.some(Redacted.make(running.token))
