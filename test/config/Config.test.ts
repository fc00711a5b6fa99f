import { describe, expect, it } from "@effect/vitest"
import { ConfigProvider, Duration, Effect, LogLevel, Option, Redacted } from "effect"
import * as Config from "../../src/config/Config.js"

const load = (env: Record<string, string>) =>
  Config.serverConfig.pipe(Effect.withConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(env)))))

const failureOf = (env: Record<string, string>) =>
  load(env).pipe(
    Effect.flip,
    Effect.map((error) => String(error))
  )

describe("server configuration", () => {
  it.effect("has defaults for everything", () =>
    Effect.gen(function* () {
      const config = yield* load({})
      expect(config.host).toBe("127.0.0.1")
      expect(config.port).toBe(7432)
      expect(config.dataDir).toBe(Config.defaultDataDir())
      expect(Option.isNone(config.databaseUrl)).toBe(true)
      expect(config.dbPoolSize).toBe(10)
      expect(Duration.toMillis(config.dbConnectTimeout)).toBe(10_000)
      expect(Duration.toMillis(config.dbQueryTimeout)).toBe(30_000)
      expect(config.logFormat).toBe("auto")
      expect(config.logLevel).toEqual(LogLevel.Info)
      expect(Duration.toMillis(config.shutdownTimeout)).toBe(10_000)
      expect(config.embeddedPgMaxRestarts).toBe(5)
      expect(Option.isNone(config.otlpEndpoint)).toBe(true)
    })
  )

  it.effect("reads every variable", () =>
    Effect.gen(function* () {
      const config = yield* load({
        VIBES_HOST: "0.0.0.0",
        VIBES_PORT: "0",
        VIBES_DATA_DIR: "/var/lib/vibes",
        DATABASE_URL: "postgres://u:p@db:5432/vibes",
        VIBES_DB_POOL_SIZE: "25",
        VIBES_DB_CONNECT_TIMEOUT: "3 seconds",
        VIBES_DB_QUERY_TIMEOUT: "1 minute",
        VIBES_NODE_ID: "node-a",
        VIBES_ADMIN_TOKEN: "0123456789abcdef0123",
        VIBES_LOG_FORMAT: "json",
        VIBES_LOG_LEVEL: "Debug",
        VIBES_SHUTDOWN_TIMEOUT: "2 seconds",
        VIBES_PG_MAX_RESTARTS: "0",
        OTEL_EXPORTER_OTLP_ENDPOINT: "http://collector:4318"
      })
      expect(config.host).toBe("0.0.0.0")
      expect(config.port).toBe(0)
      expect(config.dataDir).toBe("/var/lib/vibes")
      expect(Option.map(config.databaseUrl, Redacted.value)).toEqual(
        Option.some("postgres://u:p@db:5432/vibes")
      )
      expect(config.dbPoolSize).toBe(25)
      expect(Duration.toMillis(config.dbConnectTimeout)).toBe(3_000)
      expect(Duration.toMillis(config.dbQueryTimeout)).toBe(60_000)
      expect(config.nodeId).toEqual(Option.some("node-a"))
      expect(Option.map(config.adminToken, Redacted.value)).toEqual(Option.some("0123456789abcdef0123"))
      expect(config.logFormat).toBe("json")
      expect(config.logLevel).toEqual(LogLevel.Debug)
      expect(Duration.toMillis(config.shutdownTimeout)).toBe(2_000)
      expect(config.embeddedPgMaxRestarts).toBe(0)
      expect(config.otlpEndpoint).toEqual(Option.some("http://collector:4318"))
    })
  )

  it.effect("reads event retention policies, with terminal output compaction as the default", () =>
    Effect.gen(function* () {
      expect((yield* load({})).eventsRetention).toEqual(Config.defaultRetention)
      const config = yield* load({
        VIBES_EVENTS_RETENTION:
          '[{"types":["job.log"],"maxAge":"30 days"},{"types":["proxy.*"],"maxBytes":1000,"ignoreConsumers":true}]',
        VIBES_EVENTS_RETENTION_INTERVAL: "5 minutes",
        VIBES_EVENTS_SUBSCRIBER_BUFFER: "100",
        VIBES_SSE_HEARTBEAT: "5 seconds"
      })
      expect(config.eventsRetention.map((p) => ({ ...p }))).toEqual([
        { types: ["job.log"], maxAgeMillis: 30 * 86_400_000, ignoreConsumers: false },
        { types: ["proxy.*"], maxBytes: 1000, ignoreConsumers: true }
      ])
      expect(Duration.toMillis(config.eventsRetentionInterval)).toBe(300_000)
      expect(config.eventsSubscriberBuffer).toBe(100)
      expect(Duration.toMillis(config.sseHeartbeat)).toBe(5_000)
    })
  )

  it.effect("uses XDG_DATA_HOME for the default data directory", () =>
    Effect.sync(() => {
      expect(Config.defaultDataDir({ XDG_DATA_HOME: "/xdg" })).toBe("/xdg/vibes")
      expect(Config.defaultDataDir({})).toMatch(/\.local\/share\/vibes$/)
    })
  )

  const bad: ReadonlyArray<readonly [string, string]> = [
    ["VIBES_PORT", "seventy"],
    ["VIBES_PORT", "70000"],
    ["VIBES_PORT", "-1"],
    ["VIBES_HOST", " "],
    ["VIBES_DATA_DIR", "relative/dir"],
    ["DATABASE_URL", "mysql://localhost/db"],
    ["DATABASE_URL", "not a url"],
    ["VIBES_DB_POOL_SIZE", "0"],
    ["VIBES_DB_CONNECT_TIMEOUT", "soon"],
    ["VIBES_DB_QUERY_TIMEOUT", "0 seconds"],
    ["VIBES_ADMIN_TOKEN", "short"],
    ["VIBES_LOG_FORMAT", "xml"],
    ["VIBES_LOG_LEVEL", "loud"],
    ["VIBES_PG_MAX_RESTARTS", "-3"],
    ["OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"],
    ["VIBES_EVENTS_SUBSCRIBER_BUFFER", "0"],
    ["VIBES_SSE_HEARTBEAT", "never"],
    ["VIBES_EVENTS_RETENTION", "{not json"],
    ["VIBES_EVENTS_RETENTION", '[{"types":["job..log"],"maxAge":"1 day"}]'],
    ["VIBES_EVENTS_RETENTION", '[{"types":["job.log"],"maxAge":"a while"}]'],
    ["VIBES_EVENTS_RETENTION", '[{"types":["job.log"]}]'],
    ["VIBES_EVENTS_RETENTION_INTERVAL", "0 seconds"]
  ]
  for (const [name, value] of bad) {
    it.effect(`rejects ${name}=${JSON.stringify(value)} with a message naming ${name}`, () =>
      Effect.gen(function* () {
        const message = yield* failureOf({ [name]: value })
        expect(message).toContain(name)
      })
    )
  }

  it.effect("client settings read VIBES_URL and VIBES_TOKEN, and reject a non-http URL", () =>
    Effect.gen(function* () {
      const provider = (env: Record<string, string>) => ConfigProvider.fromMap(new Map(Object.entries(env)))
      const ok = yield* Config.clientConfig.pipe(
        Effect.withConfigProvider(provider({ VIBES_URL: "http://h:1", VIBES_TOKEN: "t" }))
      )
      expect(ok.url).toEqual(Option.some("http://h:1"))
      expect(Option.map(ok.token, Redacted.value)).toEqual(Option.some("t"))
      const error = yield* Config.clientConfig.pipe(
        Effect.withConfigProvider(provider({ VIBES_URL: "ftp://h" })),
        Effect.flip
      )
      expect(String(error)).toContain("VIBES_URL")
      // The nodes of a cluster, as a list: every entry must be an http(s) URL.
      const nodes = yield* Config.clientConfig.pipe(
        Effect.withConfigProvider(provider({ VIBES_URL: "http://n1:7432, https://n2" }))
      )
      expect(Option.map(nodes.url, Config.splitUrls)).toEqual(Option.some(["http://n1:7432", "https://n2"]))
      const badEntry = yield* Config.clientConfig.pipe(
        Effect.withConfigProvider(provider({ VIBES_URL: "http://n1:7432,n2" })),
        Effect.flip
      )
      expect(String(badEntry)).toContain("VIBES_URL")
    })
  )
})

describe("cluster configuration", () => {
  it.effect(
    "a single node by default; cluster mode with VIBES_RUNNER_PORT, and HOST/PORT never reach the runner",
    () =>
      Effect.gen(function* () {
        expect(Option.isNone((yield* load({ HOST: "10.0.0.9", PORT: "9999" })).cluster)).toBe(true)
        const config = yield* load({
          DATABASE_URL: "postgres://u:p@db:5432/vibes",
          VIBES_RUNNER_PORT: "34431",
          VIBES_RUNNER_HOST: "build-1.internal",
          VIBES_ADMIN_TOKEN: "the admin token, 16+ characters",
          HOST: "10.0.0.9",
          PORT: "9999"
        })
        const cluster = Option.getOrThrow(config.cluster)
        expect(cluster.runnerHost).toBe("build-1.internal")
        expect(cluster.runnerPort).toBe(34431)
        expect(cluster.runnerListenHost).toBe("build-1.internal")
        expect(Duration.toMillis(cluster.shardLockExpiration)).toBe(3000)
        expect(Duration.toMillis(cluster.shardLockRefresh)).toBe(1000)
        expect(Duration.toMillis(cluster.shardRefresh)).toBe(500)
        expect(Duration.toMillis(config.nodeLostAfter)).toBe(30_000)
        // Runners authenticate each other with the admin token unless a cluster secret is given.
        expect(Redacted.value(cluster.secret)).toBe("the admin token, 16+ characters")
        const listening = yield* load({
          DATABASE_URL: "postgres://u:p@db:5432/vibes",
          VIBES_RUNNER_PORT: "34431",
          VIBES_ADMIN_TOKEN: "the admin token, 16+ characters",
          VIBES_CLUSTER_SECRET: "the runners' own secret",
          VIBES_RUNNER_LISTEN_HOST: "0.0.0.0",
          VIBES_SHARD_LOCK_EXPIRATION: "2 seconds",
          VIBES_SHARD_LOCK_REFRESH: "500 millis"
        })
        expect(Option.getOrThrow(listening.cluster).runnerHost).toBe("127.0.0.1")
        expect(Option.getOrThrow(listening.cluster).runnerListenHost).toBe("0.0.0.0")
        expect(Redacted.value(Option.getOrThrow(listening.cluster).secret)).toBe("the runners' own secret")
      })
  )

  it.effect("bad cluster settings are refused with a message that names the variable", () =>
    Effect.gen(function* () {
      const db = {
        DATABASE_URL: "postgres://u:p@db:5432/vibes",
        VIBES_ADMIN_TOKEN: "the admin token, 16+ characters"
      }
      expect(yield* failureOf({ ...db, VIBES_RUNNER_PORT: "0" })).toContain("VIBES_RUNNER_PORT")
      expect(yield* failureOf({ ...db, VIBES_RUNNER_PORT: "http" })).toContain("VIBES_RUNNER_PORT")
      expect(yield* failureOf({ ...db, VIBES_RUNNER_PORT: "1", VIBES_RUNNER_HOST: "a b" })).toContain(
        "VIBES_RUNNER_HOST"
      )
      expect(yield* failureOf({ VIBES_RUNNER_PORT: "34431" })).toContain("needs DATABASE_URL")
      expect(
        yield* failureOf({
          ...db,
          VIBES_RUNNER_PORT: "34431",
          VIBES_SHARD_LOCK_EXPIRATION: "1 second",
          VIBES_SHARD_LOCK_REFRESH: "1 second"
        })
      ).toContain("VIBES_SHARD_LOCK_EXPIRATION must be longer than VIBES_SHARD_LOCK_REFRESH")
      expect(yield* failureOf({ VIBES_NODE_LOST_AFTER: "soon" })).toContain("VIBES_NODE_LOST_AFTER")
      // Without a shared secret, anyone who reaches a runner port could drive its entities.
      expect(
        yield* failureOf({ DATABASE_URL: "postgres://u:p@db:5432/vibes", VIBES_RUNNER_PORT: "34431" })
      ).toContain("set VIBES_CLUSTER_SECRET (or VIBES_ADMIN_TOKEN) on every node")
      expect(
        yield* failureOf({ ...db, VIBES_RUNNER_PORT: "34431", VIBES_CLUSTER_SECRET: "short" })
      ).toContain("VIBES_CLUSTER_SECRET")
    })
  )
})

describe("storage configuration", () => {
  it.effect("is local under the data dir unless VIBES_STORAGE says s3", () =>
    Effect.gen(function* () {
      expect((yield* load({})).storage).toEqual({ _tag: "Local", dir: Option.none() })
      expect((yield* load({ VIBES_STORAGE_DIR: "/srv/blobs" })).storage).toEqual({
        _tag: "Local",
        dir: Option.some("/srv/blobs")
      })
    })
  )

  it.effect("reads the S3 settings, with the credentials redacted", () =>
    Effect.gen(function* () {
      const { storage } = yield* load({
        VIBES_STORAGE: "s3",
        VIBES_S3_ENDPOINT: "http://127.0.0.1:9000",
        VIBES_S3_REGION: "eu-west-1",
        VIBES_S3_BUCKET: "builds",
        VIBES_S3_FORCE_PATH_STYLE: "true",
        VIBES_S3_ACCESS_KEY_ID: "AKIAEXAMPLE",
        VIBES_S3_SECRET_ACCESS_KEY: "very-secret"
      })
      if (storage._tag !== "S3") throw new Error("expected the S3 backend")
      expect(storage).toMatchObject({
        endpoint: Option.some("http://127.0.0.1:9000"),
        region: "eu-west-1",
        bucket: "builds",
        forcePathStyle: true
      })
      expect(Option.map(storage.secretAccessKey, Redacted.value)).toEqual(Option.some("very-secret"))
      expect(String(storage.secretAccessKey)).not.toContain("very-secret")
    })
  )

  it.effect("refuses a bad backend, a missing bucket, and half a credential, naming the variable", () =>
    Effect.gen(function* () {
      expect(yield* failureOf({ VIBES_STORAGE: "ftp" })).toContain("VIBES_STORAGE must be local or s3")
      expect(yield* failureOf({ VIBES_STORAGE: "s3" })).toContain("VIBES_S3_BUCKET must be set")
      expect(yield* failureOf({ VIBES_STORAGE: "s3", VIBES_S3_BUCKET: "Bad_Bucket" })).toContain(
        "VIBES_S3_BUCKET must be a bucket name"
      )
      expect(
        yield* failureOf({ VIBES_STORAGE: "s3", VIBES_S3_BUCKET: "builds", VIBES_S3_ACCESS_KEY_ID: "AKIA" })
      ).toContain("must be set together")
      expect(yield* failureOf({ VIBES_STORAGE_DIR: "relative/dir" })).toContain(
        "VIBES_STORAGE_DIR must be an absolute path"
      )
    })
  )
})
