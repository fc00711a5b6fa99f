/**
 * `vibes serve`: wires the data directory, the database (external or embedded), migrations,
 * authentication, telemetry and the HTTP routes into one running node.
 *
 * Start order: lock the data dir → admin token → database (embedded Postgres first when
 * `DATABASE_URL` is unset) → migrations → node registry → HTTP. Shutdown runs it backwards:
 * stop accepting, give in-flight requests `shutdownTimeout`, close the pool, stop Postgres.
 */
import * as http from "node:http"
import * as os from "node:os"
import type * as net from "node:net"
import {
  Context,
  DateTime,
  Deferred,
  Duration,
  Effect,
  Layer,
  ExecutionStrategy,
  Exit,
  Option,
  Either,
  Redacted,
  Schedule,
  Schema,
  Scope
} from "effect"
import * as HttpLayerRouter from "@effect/platform/HttpLayerRouter"
import * as HttpServer from "@effect/platform/HttpServer"
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import { SqlClient } from "@effect/sql/SqlClient"
import * as NodeContext from "@effect/platform-node/NodeContext"
import * as Artifacts from "../../actors/job/Artifacts.js"
import * as JobEntity from "../../actors/job/JobEntity.js"
import * as Proxy from "../../actors/proxy/Proxy.js"
import * as ConversationStore from "../../actors/proxy/ConversationStore.js"
import * as TurnRecorder from "../../actors/proxy/Recorder.js"
import * as JobLogs from "../../actors/job/JobLogs.js"
import * as Jobs from "../../actors/job/Jobs.js"
import * as JobSettings from "../../actors/job/JobSettings.js"
import * as JobStore from "../../actors/job/JobStore.js"
import * as Scheduler from "../../actors/job/Scheduler.js"
import * as LocalSessions from "../../actors/session/LocalSessions.js"
import * as ScreenWorkers from "../../infra/terminal/ScreenWorkers.js"
import * as Recorder from "../../actors/session/Recorder.js"
import * as Recordings from "../../actors/session/Recordings.js"
import * as SessionEntity from "../../actors/session/SessionEntity.js"
import * as SessionRegistry from "../../actors/session/SessionRegistry.js"
import * as SessionSettings from "../../actors/session/SessionSettings.js"
import * as Workspaces from "../../actors/workspace/Workspaces.js"
import * as GitService from "../../actors/workspace/GitService.js"
import * as GitWatcher from "../../actors/workspace/GitWatcher.js"
import * as Follow from "../../actors/workspace/Follow.js"
import * as Files from "../../actors/workspace/Files.js"
import * as InboundHooks from "../../actors/notify/Hooks.js"
import * as Notifier from "../../actors/notify/Notifier.js"
import * as NotifyStore from "../../actors/notify/NotifyStore.js"
import * as Git from "../../infra/git/Git.js"
import * as PgSupervisor from "../../actors/supervisors/PgSupervisor.js"
import * as PtyHostSupervisor from "../../actors/supervisors/PtyHostSupervisor.js"
import * as AdminToken from "../../infra/auth/AdminToken.js"
import * as Credentials from "../../infra/auth/Credentials.js"
import * as Logins from "../../infra/auth/Logins.js"
import * as AllowedHosts from "../../infra/net/AllowedHosts.js"
import * as ClientAddress from "../../infra/net/ClientAddress.js"
import * as StreamSlots from "../../infra/net/StreamSlots.js"
import * as Cluster from "../../infra/cluster/Cluster.js"
import * as DataDir from "../../infra/datadir/DataDir.js"
import * as Db from "../../infra/db/Db.js"
import * as Migrations from "../../infra/db/Migrations.js"
import * as EventBus from "../../infra/eventlog/EventBus.js"
import * as EventLog from "../../infra/eventlog/EventLog.js"
import * as PgEventLog from "../../infra/eventlog/PgEventLog.js"
import * as MemoryEventLog from "../../infra/eventlog/MemoryEventLog.js"
import * as JetStreamEventLog from "../../infra/eventlog/JetStreamEventLog.js"
import * as NatsSupervisor from "../../actors/supervisors/NatsSupervisor.js"
import * as StorageBackend from "../../infra/storage/StorageBackend.js"
import * as Telemetry from "../../infra/telemetry/Telemetry.js"
import * as DiskMetrics from "../../infra/telemetry/DiskMetrics.js"
import * as ProcessMetrics from "../../infra/telemetry/ProcessMetrics.js"
import * as EventLogMetrics from "../../infra/eventlog/EventLogMetrics.js"
import * as ChildEnv from "../../infra/sandbox/ChildEnv.js"
import * as Sandbox from "../../infra/sandbox/Sandbox.js"
import type * as ProxyTokens from "../../actors/proxy/ProxyTokens.js"
import type { ServerConfig } from "../config/Config.js"
import { version } from "../Version.js"
import { PtyHost } from "../../infra/pty/PtyHost.js"
import * as PtyExitRecords from "../../infra/pty/PtyExitRecords.js"
import { newEvent } from "../../rpc/Events.js"
import * as Emitter from "../../infra/eventlog/Emitter.js"
import * as Http from "./Http.js"
import * as SessionsHandlers from "./SessionsHandlers.js"
import * as Alerts from "./Alerts.js"
import * as Membership from "./Membership.js"
import * as WebUi from "./WebUi.js"
import { NodeInfo, resolveNodeId } from "./NodeInfo.js"

/** How the server reports where it listens. */
export interface Announcement {
  readonly url: string
  readonly loginUrl: string
  readonly nodeId: string
}

/** What the caller learns while the node runs. */
export interface Hooks {
  /** Called once the HTTP server listens. */
  readonly onListening: (announcement: Announcement) => Effect.Effect<void, never, Scope.Scope>
  /** Called when the node cannot go on (the embedded Postgres could not be restarted). */
  readonly onFatal: (error: PgSupervisor.EmbeddedPgError) => Effect.Effect<void>
}

/** The node's front door is configured so that it cannot start (e.g. no allowed hosts). */
export class EdgeConfigError extends Schema.TaggedError<EdgeConfigError>()("EdgeConfigError", {
  message: Schema.String
}) {}

/** Deletes expired browser logins now and then. */
const pruneLogins = Effect.gen(function* () {
  const logins = yield* Logins.Logins
  const deleted = yield* logins.prune(new Date())
  if (deleted > 0) yield* Effect.logInfo(`deleted ${deleted} expired logins`)
}).pipe(
  Effect.catchAll((error) => Effect.logWarning(error.message)),
  Effect.repeat(Schedule.spaced("1 hour"))
)

/** Deletes recorded proxy turns past their retention, every hour. */
const pruneConversations = (retention: Duration.Duration) =>
  Effect.gen(function* () {
    const store = yield* ConversationStore.ConversationStore
    const deleted = yield* store.prune(new Date(Date.now() - Duration.toMillis(retention)))
    if (deleted > 0) yield* Effect.logInfo(`deleted ${deleted} recorded proxy turns past their retention`)
  }).pipe(
    Effect.catchAll((error) => Effect.logWarning(`could not prune recorded proxy turns: ${error.message}`)),
    Effect.repeat(Schedule.spaced("1 hour"))
  )

/** The database layer: external from `DATABASE_URL`, or a supervised embedded Postgres. */
const database = (config: ServerConfig) =>
  Option.match(config.databaseUrl, {
    onSome: (url) =>
      Effect.succeed({
        kind: "external" as const,
        layer: Db.layer(dbOptions(config, url)),
        readiness: Effect.succeed(Option.none<string>())
      }),
    onNone: () =>
      Effect.map(
        PgSupervisor.make({ dataDir: config.dataDir, maxRestarts: config.embeddedPgMaxRestarts }),
        (supervisor) => ({
          kind: "embedded" as const,
          layer: Db.layer(dbOptions(config, supervisor.url)),
          readiness: Effect.map(supervisor.status.get, (status) =>
            status === "running" ? Option.none<string>() : Option.some(`embedded Postgres is ${status}`)
          ),
          supervisor
        })
      )
  })

const dbOptions = (config: ServerConfig, url: Redacted.Redacted<string>): Db.Options => ({
  url,
  poolSize: config.dbPoolSize,
  connectTimeout: config.dbConnectTimeout,
  queryTimeout: config.dbQueryTimeout
})

/** Records this node in `vibes_nodes` for as long as it runs. */
const registerNode = (nodeId: string, startedAt: DateTime.Utc, config: ServerConfig) =>
  Effect.gen(function* () {
    const sql = yield* SqlClient
    const started = DateTime.toDate(startedAt)
    const machine = Cluster.machineOf(nodeId)
    const runner = Option.getOrNull(Cluster.runnerAddress(config.cluster))
    yield* sql`
      INSERT INTO vibes_nodes (node_id, version, host, pid, started_at, last_seen_at, machine, runner_address)
      VALUES (${nodeId}, ${version}, ${os.hostname()}, ${process.pid}, ${started}, now(), ${machine}, ${runner})
      ON CONFLICT (node_id) DO UPDATE SET version = EXCLUDED.version, host = EXCLUDED.host, pid = EXCLUDED.pid,
        started_at = EXCLUDED.started_at, last_seen_at = EXCLUDED.last_seen_at, stopped_at = NULL,
        machine = EXCLUDED.machine, runner_address = EXCLUDED.runner_address, url = NULL, shards = 0, entities = 0
    `
    yield* Effect.addFinalizer(() =>
      sql`UPDATE vibes_nodes SET stopped_at = now(), last_seen_at = now() WHERE node_id = ${nodeId}`.pipe(
        Effect.timeout("2 seconds"),
        Effect.ignore
      )
    )
  })

/**
 * Closes connections still open `timeout` after shutdown began, so a stuck client cannot hold
 * the process; in-flight requests get until then.
 */
const trackConnections = (server: http.Server, timeout: ServerConfig["shutdownTimeout"]) =>
  Effect.gen(function* () {
    const sockets = new Set<net.Socket>()
    server.on("connection", (socket) => {
      sockets.add(socket)
      socket.once("close", () => sockets.delete(socket))
    })
    yield* Effect.addFinalizer(() =>
      Effect.sync(() => {
        server.closeIdleConnections()
        setTimeout(() => {
          for (const socket of sockets) socket.destroy()
        }, Duration.toMillis(timeout)).unref()
      })
    )
  })

const announce = (
  config: ServerConfig,
  nodeId: string,
  token: Redacted.Redacted<string>,
  onListening: Hooks["onListening"]
) =>
  Effect.gen(function* () {
    const server = yield* HttpServer.HttpServer
    const port = server.address._tag === "TcpAddress" ? server.address.port : config.port
    const host = config.host === "0.0.0.0" || config.host === "::" ? "127.0.0.1" : config.host
    const base = `http://${host.includes(":") ? `[${host}]` : host}:${port}`
    const loginUrl = `${base}/login?token=${encodeURIComponent(Redacted.value(token))}`
    yield* onListening({ url: base, loginUrl, nodeId })
  })

/**
 * On shutdown: stops the work first (`stopWork`: running jobs are stopped and handed back, sessions
 * stop recording), then records the stop as the node's last event and ends every event stream once
 * it has been delivered. Appends after it fail: nothing this node writes follows `system.stopped`.
 */
const announceStop = (nodeId: string, stopWork: Effect.Effect<void>, log: EventLog.Closable) =>
  Effect.gen(function* () {
    const bus = yield* EventBus.EventBus
    yield* Effect.addFinalizer(() =>
      Effect.gen(function* () {
        yield* stopWork
        const offset = yield* log
          .close(
            newEvent("system.stopped", { reason: "shutdown" }, { source: { nodeId, component: "server" } })
          )
          .pipe(
            Effect.catchAll((error) =>
              Effect.as(Effect.logWarning(`could not record system.stopped: ${error.message}`), 0)
            )
          )
        yield* bus.close(offset)
      })
    )
  })

/** Applies the retention policies now and then on every interval; failures are logged and retried. */
const retention = (config: ServerConfig) =>
  Effect.gen(function* () {
    const log = yield* EventLog.EventLog
    const policies = yield* EventLog.Retention
    const report = yield* log.applyRetention(policies, Date.now())
    if (report.deleted > 0) {
      yield* Effect.logInfo(`event retention deleted ${report.deleted} events`).pipe(
        Effect.annotateLogs({ safeOffset: report.safeOffset ?? "none" })
      )
    }
  }).pipe(
    Effect.catchAll((error) => Effect.logWarning(`event retention failed: ${error.message}`)),
    Effect.repeat(Schedule.spaced(config.eventsRetentionInterval))
  )

/** The argv that starts this program as `vibes pty-host` for `dataDir`. */
const ptyHostCommand = (config: ServerConfig): ReadonlyArray<string> =>
  Option.getOrElse(config.ptyHostCommand, () => [
    process.execPath,
    ...process.execArgv,
    process.argv[1] ?? "vibes",
    "pty-host",
    "--data-dir",
    config.dataDir
  ])

/** How this node starts session and job programs, and what it keeps from them. */
interface Children {
  readonly sandbox: Sandbox.Sandbox
  readonly secrets: ChildEnv.Secrets
  /** The proxy variables of a session or job, with its token (valid until `proxyEnded`). */
  readonly proxyEnv: (holder: ProxyTokens.Holder) => Effect.Effect<Record<string, string>>
  readonly proxyEnded: (holder: ProxyTokens.Holder) => Effect.Effect<void>
}

/** Settings of `vibes pty-host` that pass to it through the environment. */
const ptyHostSettings = /^VIBES_(PTY_|LOG_)/

/** The PTY host's environment: the programs' (no secrets), and its own settings. */
const ptyHostEnv = (secrets: ChildEnv.Secrets): Record<string, string> => ({
  ...ChildEnv.childEnv(secrets),
  ...Object.fromEntries(
    Object.entries(process.env).flatMap(([name, value]) =>
      value !== undefined && ptyHostSettings.test(name) ? [[name, value]] : []
    )
  )
})

/** The secret values of this node but its provider keys: tokens, the cluster secret, the database URL. */
const nodeSecretValues = (config: ServerConfig, adminToken: Redacted.Redacted<string>): Array<string> =>
  [
    Redacted.value(adminToken),
    ...Option.toArray(Option.map(config.adminToken, Redacted.value)),
    ...Option.toArray(Option.map(config.cluster, (cluster) => Redacted.value(cluster.secret))),
    ...Option.toArray(Option.map(config.databaseUrl, Redacted.value)),
    process.env["VIBES_TOKEN"],
    ...Object.entries(process.env).flatMap(([name, value]): Array<string | undefined> =>
      name.startsWith("VIBES_SECRET_") ? [value] : []
    )
  ].filter((value): value is string => value !== undefined)

/** The secrets of this node: what no session or job may see, in its environment or its output. */
const nodeSecrets = (
  config: ServerConfig,
  adminToken: Redacted.Redacted<string>,
  proxy: Proxy.Proxy["Type"]
): ChildEnv.Secrets =>
  ChildEnv.secrets({
    variables: proxy.keyVariables,
    values: [...nodeSecretValues(config, adminToken), ...proxy.keys.map(Redacted.value)]
  })

/**
 * Sessions and jobs: the machine's PTY host (started when none runs), the session registry, and
 * the cluster runner with the session and job entities (a single runner, or a member of the
 * cluster; see `Cluster.runnerLayer`), and this node's membership on top.
 */
const sessions = (config: ServerConfig, nodeId: string, children: Children) =>
  Membership.layer({
    nodeId,
    cluster: config.cluster,
    heartbeat: config.heartbeat,
    nodeLostAfter: config.nodeLostAfter
  }).pipe(
    Layer.provideMerge(
      Layer.mergeAll(
        SessionEntity.layer,
        Jobs.layer({ retention: config.jobRetention, pruneEvery: config.eventsRetentionInterval }).pipe(
          Layer.provideMerge(JobEntity.layer),
          Layer.provide(NodeContext.layer)
        )
      ).pipe(
        Layer.provideMerge(
          Cluster.runnerLayer({
            nodeId,
            cluster: config.cluster,
            // How long a stopping entity lets its requests run before it interrupts them. A job's
            // `Submit` runs until the job ends, so this is how soon running jobs begin to stop (then
            // SIGTERM, a grace of at most 2 s, SIGKILL) and are handed back; short calls finish.
            entityTerminationTimeout: Duration.seconds(1)
          })
        ),
        Layer.provideMerge(Membership.lifetimeLayer),
        // Below the runner, so they outlive the entities that use them while it stops.
        Layer.provideMerge(jobServices(config, nodeId, children)),
        Layer.provideMerge(Recordings.layer),
        Layer.provideMerge(SessionRegistry.layer),
        Layer.provideMerge(workspaces(children)),
        Layer.provideMerge(LocalSessions.layer),
        Layer.provideMerge(Recorder.layer()),
        Layer.provideMerge(ScreenWorkers.layer),
        Layer.provideMerge(
          SessionSettings.layer(nodeId, {
            scrollback: config.sessionScrollback,
            idleAfter: config.sessionIdleAfter,
            // Provider keys stay on the server: sessions get their proxy token in those variables.
            env: {
              ...SessionSettings.sessionEnv(children.secrets),
              ...Sandbox.identityEnv(children.sandbox)
            },
            ...(children.sandbox._tag === "RunAs"
              ? { home: children.sandbox.user.home, shell: children.sandbox.user.shell }
              : {}),
            wrapper: Sandbox.wrapper(children.sandbox),
            proxyEnv: (sessionId) => children.proxyEnv({ kind: "session", id: sessionId }),
            proxyEnded: (sessionId) => children.proxyEnded({ kind: "session", id: sessionId })
          })
        ),
        Layer.provideMerge(
          PtyHostSupervisor.layer({
            dataDir: config.dataDir,
            command: ptyHostCommand(config),
            stopHostOnRelease: config.stopPtyHostOnExit,
            env: ptyHostEnv(children.secrets)
          })
        ),
        Layer.provideMerge(PtyExitRecords.layer({ dataDir: config.dataDir })),
        // Artifacts and recordings share it.
        Layer.provideMerge(StorageBackend.layer(config.storage, config.dataDir))
      )
    )
  )

/**
 * The workspaces and their git, run as the user programs run as, so that what git writes in a
 * repository belongs to the programs working in it.
 */
const workspaces = (children: Children) => {
  const programs =
    children.sandbox._tag === "RunAs"
      ? { uid: children.sandbox.user.uid, gid: children.sandbox.user.gid, home: children.sandbox.user.home }
      : {}
  return Layer.mergeAll(
    Workspaces.closerLayer,
    Files.layer(programs),
    Follow.layer({ pollInterval: Duration.seconds(5) })
  ).pipe(
    Layer.provideMerge(GitService.layer),
    Layer.provideMerge(Workspaces.layer),
    Layer.provideMerge(GitWatcher.layer({ pollInterval: Duration.seconds(5) })),
    Layer.provideMerge(Workspaces.repoLockLayer),
    Layer.provideMerge(Git.layer(programs))
  )
}

/**
 * What job entities use: worker slots, the output writer, the job table and settings. (The
 * entity's persisted messages live in the cluster's SQL message storage.)
 */
const jobServices = (config: ServerConfig, nodeId: string, children: Children) =>
  JobLogs.layer(nodeId).pipe(
    Layer.provideMerge(JobStore.layer),
    Layer.provideMerge(Artifacts.layer),
    Layer.provideMerge(Scheduler.layer(config.jobSlots)),
    Layer.provideMerge(
      JobSettings.layer({
        nodeId,
        dataDir: config.dataDir,
        killGrace: config.jobKillGrace,
        // Three heartbeats, and no less than the cluster lets a node's shard locks go unrefreshed.
        liveWithin: Duration.max(
          Duration.times(config.heartbeat, 3),
          Option.match(config.cluster, { onNone: () => Duration.zero, onSome: (c) => c.shardLockExpiration })
        ),
        sshKnownHosts: config.sshKnownHosts,
        sshKeepalive: config.sshKeepalive,
        env: { ...ChildEnv.childEnv(children.secrets), ...Sandbox.identityEnv(children.sandbox) },
        ...(children.sandbox._tag === "RunAs" ? { home: children.sandbox.user.home } : {}),
        wrapper: Sandbox.wrapper(children.sandbox),
        proxyEnv: (jobId) => children.proxyEnv({ kind: "job", id: jobId }),
        proxyEnded: (jobId) => children.proxyEnded({ kind: "job", id: jobId }),
        secrets: children.secrets
      })
    ),
    Layer.provide(NodeContext.layer)
  )

/**
 * Wakes the entities of the sessions that were running here, so they record what was missed
 * (and how the programs that ended without a server ended), then drops the exit records a
 * previous PTY host left for sessions that are not running any more.
 */
const resumeSessions = (nodeId: string) =>
  Effect.gen(function* () {
    const registry = yield* SessionRegistry.SessionRegistry
    const makeClient = yield* SessionEntity.Session.client
    const running = yield* registry.running(nodeId)
    const ids = running.map((session) => session.id)
    yield* Effect.forEach(
      ids,
      (id) =>
        makeClient(id)
          .Wake()
          .pipe(
            Effect.catchAll((error) => Effect.logWarning(`could not resume session ${id}: ${String(error)}`))
          ),
      { concurrency: 4, discard: true }
    )
    if (ids.length > 0) yield* Effect.logInfo(`resumed ${ids.length} sessions`)
    const dropped = yield* PtyExitRecords.PtyExitRecords.pipe(
      Effect.flatMap((records) => records.retain(new Set(running.map((session) => session.ptyId)))),
      Effect.catchAll((error) => Effect.as(Effect.logWarning(error.message), 0))
    )
    if (dropped > 0)
      yield* Effect.logInfo(`dropped ${dropped} PTY exit records of sessions no longer running`)
    // Sessions the cluster gave up on while this node was gone (marked lost, maybe restarted on
    // another machine) must not go on running here.
    const host = yield* PtyHost
    const lost = new Set((yield* registry.list(Option.some("lost"))).map((row) => row.ptyId))
    const stale = (yield* host.list).filter((pty) => lost.has(pty.id))
    yield* Effect.forEach(
      stale,
      (pty) => Effect.zipRight(host.signal(pty.id, "SIGKILL").pipe(Effect.ignore), host.release(pty.id)),
      { discard: true }
    )
    if (stale.length > 0)
      yield* Effect.logWarning(`stopped ${stale.length} sessions the cluster had marked lost`)
  }).pipe(Effect.catchAll((error) => Effect.logWarning(`could not resume sessions: ${error.message}`)))

/**
 * The event log of `config.eventBackend`: Postgres on the node's database; JetStream on
 * `VIBES_NATS_URL`, or on a bundled `nats-server` this node supervises; memory only when named.
 */
const eventLogLayer = (
  config: ServerConfig,
  nodeId: string,
  sqlContext: Context.Context<SqlClient | Db.Notifications>
): Layer.Layer<EventLog.EventLog, EventLog.EventLogError | NatsSupervisor.NatsServerError> => {
  const backend = config.eventBackend
  switch (backend._tag) {
    case "Postgres":
      return PgEventLog.layer({ nodeId }).pipe(Layer.provide(Layer.succeedContext(sqlContext)))
    case "Memory":
      return MemoryEventLog.layer
    case "JetStream": {
      const options = { stream: backend.stream, prefix: backend.prefix, nodeId }
      if (Option.isSome(backend.url)) {
        return JetStreamEventLog.layer({
          ...options,
          url: backend.url.value,
          ...(Option.isSome(backend.token) ? { token: backend.token.value } : {})
        })
      }
      return Layer.unwrapScoped(
        Effect.map(
          NatsSupervisor.make({
            dataDir: config.dataDir,
            maxRestarts: 5,
            ...(Option.isSome(backend.dataDir) ? { natsDir: backend.dataDir.value } : {})
          }),
          (nats) => JetStreamEventLog.layer({ ...options, url: nats.url, token: nats.token })
        )
      )
    }
  }
}

/** The whole node as a layer; building it starts the node, releasing it stops the node. */
export const layer = (config: ServerConfig, hooks: Hooks) =>
  Layer.unwrapScoped(
    Effect.gen(function* () {
      const allowedHosts = AllowedHosts.resolve(
        config.host,
        config.allowedHosts.length > 0 ? config.allowedHosts : undefined
      )
      if (Either.isLeft(allowedHosts)) return yield* new EdgeConfigError({ message: allowedHosts.left })
      yield* DataDir.lock(config.dataDir)
      const sandbox = yield* Sandbox.make({
        mode: config.sandbox,
        runAs: config.runAs,
        dataDir: config.dataDir,
        // Provider keys kept in files: no program of a session or job reads them.
        hidden: config.proxyProviders.flatMap((provider) =>
          provider.keyFile === undefined ? [] : [provider.keyFile]
        )
      })
      const nodeId = yield* resolveNodeId(config.nodeId, config.dataDir)
      const adminToken = yield* Layer.build(
        AdminToken.layer({ dataDir: config.dataDir, override: config.adminToken })
      )
      const db = yield* database(config)
      const sqlContext = yield* Layer.build(db.layer)
      // Nodes starting together take turns creating tables, until this one's runner is up.
      const startup = yield* Scope.fork(yield* Effect.scope, ExecutionStrategy.sequential)
      yield* Cluster.startupLock.pipe(Effect.provide(sqlContext), Scope.extend(startup), Effect.orDie)
      const applied = yield* Migrations.run.pipe(Effect.provide(sqlContext))
      if (applied.length > 0) {
        yield* Effect.logInfo(
          `applied migrations: ${applied.map(([id, name]) => `${id}_${name}`).join(", ")}`
        )
      }
      const startedAt = yield* DateTime.now
      yield* registerNode(nodeId, startedAt, config).pipe(Effect.provide(sqlContext))
      yield* Effect.logInfo("vibes node started").pipe(
        Effect.annotateLogs({ nodeId, version, database: db.kind, dataDir: config.dataDir })
      )
      const nodeInfo = Layer.succeed(NodeInfo, { nodeId, version, startedAt, database: db.kind })
      // Every event this node writes goes through `closing`, so `system.stopped` can be its last.
      const backendLog = yield* Layer.build(eventLogLayer(config, nodeId, sqlContext))
      const closing = yield* EventLog.closable(Context.get(backendLog, EventLog.EventLog))
      const events = yield* Layer.build(
        Emitter.layer(nodeId).pipe(
          // On JetStream each subscription asks for its own subjects; on Postgres one tailer
          // reads for the node.
          Layer.provideMerge(
            EventBus.layer({
              bufferSize: config.eventsSubscriberBuffer,
              fanOut: config.eventBackend._tag === "JetStream" ? "direct" : "tail"
            })
          ),
          Layer.provideMerge(Layer.succeed(EventLog.EventLog, closing.log)),
          // Job output (`job.log` events) is kept as long as its jobs unless a policy says otherwise.
          Layer.provideMerge(
            Layer.succeed(
              EventLog.Retention,
              JobLogs.withRetention(config.eventsRetention, config.jobRetention)
            )
          )
        )
      )
      yield* Effect.flatMap(Emitter.Emitter, (emitter) =>
        emitter.emit("system.started", { version, database: db.kind })
      ).pipe(Effect.provide(events))
      yield* Effect.forkScoped(retention(config).pipe(Effect.provide(events)))
      yield* Effect.forkScoped(
        Alerts.run({ dataDir: config.dataDir, ...config.alerts }).pipe(Effect.provide(events))
      )
      const authContext = yield* Layer.build(
        Credentials.layer({ nodeId }).pipe(
          Layer.provideMerge(Logins.layer({ ...Logins.defaults, ttl: config.loginTtl })),
          Layer.provide(Layer.succeedContext(adminToken)),
          Layer.provide(Layer.succeedContext(events)),
          Layer.provide(Layer.succeedContext(sqlContext))
        )
      )
      yield* Effect.forkScoped(pruneLogins.pipe(Effect.provide(authContext)))
      const authenticator = Context.get(authContext, Credentials.Authenticator)
      const conversationsContext = yield* Layer.build(
        ConversationStore.layer.pipe(Layer.provide(Layer.succeedContext(sqlContext)))
      )
      const conversations = config.proxyConversations
      yield* Effect.forkScoped(
        pruneConversations(conversations.retention).pipe(Effect.provide(conversationsContext))
      )
      const proxyContext = yield* Layer.build(
        Proxy.layer({
          nodeId,
          providers: config.proxyProviders,
          maxBodyBytes: config.proxyMaxBody,
          rate: config.proxyRate,
          burst: config.proxyBurst,
          guard: {
            address: (request) =>
              ClientAddress.resolve(config.trustedProxies, request.socket.remoteAddress, request.headers)
                .address,
            lockedFor: authenticator.lockedFor,
            refused: authenticator.refused,
            accepted: authenticator.accepted
          },
          recording: {
            enabled: conversations.record,
            maxResponseBytes: conversations.maxResponseBytes,
            maxQueued: 10_000,
            maxQueuedBytes: conversations.queueBytes,
            maxParseBytes: 64 * 1024 * 1024,
            // The provider keys are added by the proxy, which holds them.
            secrets: nodeSecretValues(config, Context.get(adminToken, AdminToken.AdminToken).token),
            patterns: [TurnRecorder.tokenPattern, ...conversations.redactPatterns]
          },
          prices: conversations.prices,
          budget: { session: conversations.budgetSession, daily: conversations.budgetDaily }
        }).pipe(
          Layer.provide(Layer.succeedContext(adminToken)),
          Layer.provide(Layer.succeedContext(events)),
          Layer.provide(Layer.succeedContext(conversationsContext))
        )
      )
      const proxy = Context.get(proxyContext, Proxy.Proxy)
      // Where sessions reach this node's proxy: known once the server listens.
      const serverUrl = yield* Deferred.make<string>()
      const admin = Context.get(adminToken, AdminToken.AdminToken)
      const children: Children = {
        sandbox,
        secrets: nodeSecrets(config, admin.token, proxy),
        proxyEnv: (holder) => Effect.map(Deferred.await(serverUrl), (url) => proxy.clientEnv(holder, url)),
        proxyEnded: (holder) => Effect.sync(() => proxy.ended(holder))
      }
      // Sessions and jobs live in a scope of their own, closed at the start of the shutdown (before
      // system.stopped), not after the HTTP server has drained its connections.
      const work = yield* Scope.fork(yield* Effect.scope, ExecutionStrategy.sequential)
      const sessionsContext = yield* Layer.buildWithScope(
        sessions(config, nodeId, children).pipe(
          Layer.provide(Layer.succeedContext(events)),
          Layer.provide(Layer.succeedContext(sqlContext))
        ),
        work
      )
      // Webhooks: the deliverers run as a cluster singleton, stopped with the work.
      const notifyContext = yield* Layer.buildWithScope(
        Layer.merge(Notifier.layer(config.notify), InboundHooks.layer).pipe(
          Layer.provideMerge(NotifyStore.layer),
          Layer.provide(Layer.succeedContext(sessionsContext)),
          Layer.provide(Layer.succeedContext(events)),
          Layer.provide(Layer.succeedContext(sqlContext))
        ),
        work
      )
      yield* Scope.close(startup, Exit.void)
      yield* Effect.forkScoped(resumeSessions(nodeId).pipe(Effect.provide(sessionsContext)))
      // One budget of long-lived connections per client address: RPC sockets, event and log
      // streams, and proxy requests (which may stream for minutes).
      const streams = StreamSlots.make(config.maxStreamsPerClient)
      const server = Http.createServer({
        proxy,
        allowedHosts: allowedHosts.right,
        trustedProxies: config.trustedProxies,
        streams
      })
      const edge = Layer.succeed(Http.Edge, {
        allowedHosts: allowedHosts.right,
        trustedProxies: config.trustedProxies,
        streams
      })
      const identity = { serviceVersion: version, nodeId }
      const metricSamplers = [
        yield* ProcessMetrics.make,
        DiskMetrics.sample(config.dataDir),
        Effect.provide(Db.samplePool, sqlContext),
        Effect.provide(EventLogMetrics.sample, events)
      ]

      const routes = HttpLayerRouter.serve(
        Http.routes({
          readiness: db.readiness,
          sseHeartbeat: config.sseHeartbeat,
          web: WebUi.read(Option.getOrElse(config.webDir, WebUi.defaultDir))
        }),
        { disableListenLog: true }
      ).pipe(Layer.provide(SessionsHandlers.apiLayer))
      // Built after the routes, so released before them: followers see the stop event, then a
      // clean end of their streams, while the server still serves.
      const app = Layer.scopedDiscard(announceStop(nodeId, Scope.close(work, Exit.void), closing)).pipe(
        Layer.provide(routes),
        Layer.provide(Http.rpcEndpoint(server, config.rpcLimits)),
        Layer.merge(Layer.scopedDiscard(trackConnections(server, config.shutdownTimeout))),
        Layer.merge(
          Layer.scopedDiscard(
            Effect.flatMap(AdminToken.AdminToken, (admin) =>
              announce(config, nodeId, admin.token, (announcement) =>
                Effect.zipRight(
                  Effect.zipRight(
                    Deferred.succeed(serverUrl, announcement.url),
                    Context.get(sessionsContext, Membership.Membership).announce(announcement.url)
                  ),
                  hooks.onListening(announcement)
                )
              )
            )
          )
        ),
        Layer.provide(nodeInfo),
        Layer.provide(edge),
        Layer.provide(Layer.succeedContext(authContext)),
        Layer.provide(Telemetry.layerPrometheus(identity, metricSamplers)),
        Layer.provide(Layer.succeedContext(adminToken)),
        Layer.provide(Layer.succeedContext(sessionsContext)),
        Layer.provide(Layer.succeedContext(notifyContext)),
        Layer.provide(Layer.succeedContext(proxyContext)),
        Layer.provide(Layer.succeedContext(conversationsContext)),
        Layer.provide(Layer.succeedContext(events)),
        Layer.provide(Layer.succeedContext(sqlContext)),
        Layer.provide(NodeHttpServer.layer(() => server, { port: config.port, host: config.host })),
        Layer.provide(Telemetry.layerTracing(config.otlpEndpoint, identity))
      )
      // With an embedded Postgres, a supervisor that gave up ends the node with its error.
      if ("supervisor" in db) {
        yield* Effect.forkScoped(Effect.catchAll(db.supervisor.failed, hooks.onFatal))
      }
      return app
    })
  )
