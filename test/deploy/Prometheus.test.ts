/**
 * Debian's Prometheus against a real node: it scrapes `/metrics` with the node's token, the
 * node's metrics arrive, and the committed alerting rules load (in `promtool` and in Prometheus).
 */
import * as childProcess from "node:child_process"
import * as fs from "node:fs"
import * as net from "node:net"
import * as path from "node:path"
import { expect, it } from "@effect/vitest"
import { Duration, Effect, Schedule, Schema } from "effect"
import * as Processes from "../support/Processes.js"
import * as TestServer from "../support/TestServer.js"
import { tempDir } from "../support/TempDir.js"

const rules = path.resolve("deploy/prometheus/rules.yml")

const run = (command: string, args: ReadonlyArray<string>) =>
  Effect.sync(() => childProcess.spawnSync(command, args, { encoding: "utf8", timeout: 30_000 }))

/** A port nothing listens on now (Prometheus takes it a moment later). */
const freePort = Effect.async<number>((resume) => {
  const server = net.createServer()
  server.listen(0, "127.0.0.1", () => {
    const address = server.address()
    const port = typeof address === "object" && address !== null ? address.port : 0
    server.close(() => resume(Effect.succeed(port)))
  })
})

const QueryAnswer = Schema.Struct({
  status: Schema.Literal("success"),
  data: Schema.Struct({
    result: Schema.Array(
      Schema.Struct({
        metric: Schema.Record({ key: Schema.String, value: Schema.String }),
        value: Schema.Tuple(Schema.Number, Schema.String)
      })
    )
  })
})

const RulesAnswer = Schema.Struct({
  status: Schema.Literal("success"),
  data: Schema.Struct({
    groups: Schema.Array(
      Schema.Struct({ name: Schema.String, rules: Schema.Array(Schema.Struct({ name: Schema.String })) })
    )
  })
})

const getJson = <A, I>(schema: Schema.Schema<A, I>, url: string) =>
  Effect.tryPromise(async () => {
    const response = await fetch(url)
    return response.json()
  }).pipe(Effect.flatMap(Schema.decodeUnknown(schema)))

/** Asks until `check` passes on the answer (Prometheus scrapes every second), for up to a minute. */
const until = <A, E>(ask: Effect.Effect<A, E>, check: (answer: A) => boolean) =>
  ask.pipe(
    Effect.filterOrFail(check, () => new Error("not yet")),
    Effect.retry(Schedule.spaced("250 millis").pipe(Schedule.upTo(Duration.minutes(1))))
  )

it.effect("the alerting rules pass promtool check and promtool's unit tests", () =>
  Effect.gen(function* () {
    const check = yield* run("promtool", ["check", "rules", rules])
    expect(check.stderr + check.stdout).toContain("SUCCESS")
    expect(check.status).toBe(0)
    const unit = yield* run("promtool", ["test", "rules", path.resolve("deploy/prometheus/rules.test.yml")])
    expect(unit.stdout + unit.stderr).toContain("SUCCESS")
    expect(unit.status).toBe(0)
  })
)

/** Every metric name the code declares (`Metric.counter("name"`, …). */
const declaredMetrics = (): Set<string> => {
  const names = new Set<string>()
  const walk = (dir: string) => {
    for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
      const file = path.join(dir, entry.name)
      if (entry.isDirectory()) walk(file)
      else if (entry.name.endsWith(".ts")) {
        for (const match of fs
          .readFileSync(file, "utf8")
          .matchAll(/Metric\.(?:counter|gauge|histogram)\(\s*"([a-z_]+)"/g)) {
          if (match[1] !== undefined) names.add(match[1])
        }
      }
    }
  }
  for (const dir of ["actors", "infra", "src"]) walk(path.resolve(dir))
  return names
}

/** The metric names a PromQL expression uses (a histogram's series by their base name). */
const metricsOf = (expr: string): Array<string> =>
  [...expr.matchAll(/\b((?:vibes|process|nodejs)_[a-z_]+)/g)].map((match) =>
    (match[1] ?? "").replace(/_(bucket|count|sum)$/, "")
  )

const Dashboard = Schema.Struct({
  title: Schema.String,
  panels: Schema.Array(
    Schema.Struct({
      type: Schema.String,
      title: Schema.String,
      targets: Schema.optional(Schema.Array(Schema.Struct({ expr: Schema.String })))
    })
  )
})

it.effect(
  "the dashboard and the rules only use metrics the code declares, and the compose config checks",
  () =>
    Effect.gen(function* () {
      const declared = declaredMetrics()
      expect(declared.has("vibes_http_requests_total")).toBe(true)
      const dashboard = yield* Schema.decodeUnknown(Schema.parseJson(Dashboard))(
        fs.readFileSync(path.resolve("deploy/grafana/vibes.json"), "utf8")
      )
      const rows = dashboard.panels.filter((panel) => panel.type === "row").map((panel) => panel.title)
      expect(rows).toEqual(["Sessions", "Jobs", "Events", "AI-provider proxy", "HTTP and RPC", "Process"])
      const used = [
        ...dashboard.panels.flatMap((panel) =>
          (panel.targets ?? []).flatMap((target) => metricsOf(target.expr))
        ),
        ...metricsOf(fs.readFileSync(rules, "utf8"))
      ]
      expect(used.length).toBeGreaterThan(30)
      expect(used.filter((name) => !declared.has(name))).toEqual([])
      // The compose file's Prometheus config, with its container paths pointed here.
      const dir = yield* tempDir("vibes-prometheus-config-")
      fs.writeFileSync(path.join(dir, "token"), "t")
      const config = path.join(dir, "prometheus.yml")
      fs.writeFileSync(
        config,
        fs
          .readFileSync(path.resolve("deploy/prometheus/prometheus.yml"), "utf8")
          .replaceAll("/etc/prometheus/rules.yml", rules)
          .replaceAll("/tmp/vibes-token", path.join(dir, "token"))
      )
      const checked = yield* run("promtool", ["check", "config", config])
      expect(checked.status, checked.stdout + checked.stderr).toBe(0)
    }).pipe(Effect.scoped)
)

it.scopedLive(
  "a real Prometheus scrapes a node with its token, and the node's metrics and the rules arrive",
  () =>
    Effect.gen(function* () {
      const server = yield* TestServer.start
      const dir = yield* tempDir("vibes-prometheus-")
      const tokenFile = path.join(dir, "token")
      fs.writeFileSync(tokenFile, server.token, { mode: 0o600 })
      const target = new URL(server.url).host
      const config = path.join(dir, "prometheus.yml")
      fs.writeFileSync(
        config,
        [
          "global: { scrape_interval: 1s, evaluation_interval: 1s }",
          `rule_files: [${JSON.stringify(rules)}]`,
          "scrape_configs:",
          "  - job_name: vibes",
          "    metrics_path: /metrics",
          `    authorization: { type: Bearer, credentials_file: ${JSON.stringify(tokenFile)} }`,
          `    static_configs: [{ targets: [${JSON.stringify(target)}] }]`,
          ""
        ].join("\n")
      )
      const checked = yield* run("promtool", ["check", "config", config])
      expect(checked.status, checked.stdout + checked.stderr).toBe(0)
      const port = yield* freePort
      const log = fs.openSync(path.join(dir, "prometheus.log"), "w")
      yield* Processes.scopedChild(
        () =>
          childProcess.spawn(
            "prometheus",
            [
              `--config.file=${config}`,
              `--storage.tsdb.path=${path.join(dir, "data")}`,
              `--web.listen-address=127.0.0.1:${port}`
            ],
            { stdio: ["ignore", log, log] }
          ),
        "5 seconds"
      )
      const api = `http://127.0.0.1:${port}/api/v1`
      const query = (expr: string) =>
        getJson(QueryAnswer, `${api}/query?query=${encodeURIComponent(expr)}`).pipe(
          Effect.map((answer) => answer.data.result)
        )
      // `up` is 1 only once a scrape passed the token check (a 401 makes it 0).
      const up = yield* until(query('up{job="vibes"}'), (result) => result[0]?.value[1] === "1")
      expect(up[0]?.metric["instance"]).toBe(target)
      for (const expr of [
        'vibes_http_requests_total{route="/metrics",status="2xx"}',
        "process_resident_memory_bytes",
        'nodejs_eventloop_delay_seconds{statistic="p99"}',
        'vibes_db_pool_connections{state="idle"}',
        "vibes_event_log_head",
        "vibes_data_dir_filesystem_available_bytes"
      ]) {
        const result = yield* until(query(expr), (result) => result.length > 0)
        expect(Number(result[0]?.value[1])).toBeGreaterThanOrEqual(0)
      }
      const loaded = yield* until(
        getJson(RulesAnswer, `${api}/rules`),
        (answer) => answer.data.groups.length > 0
      )
      const names = loaded.data.groups.flatMap((group) => group.rules.map((rule) => rule.name))
      expect(names).toEqual(
        expect.arrayContaining([
          "VibesConsumerLagging",
          "VibesSupervisedChildRestarting",
          "VibesHttpErrorRate",
          "VibesDiskNearlyFull"
        ])
      )
    }),
  { timeout: 120_000 }
)
