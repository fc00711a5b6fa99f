import { expect, layer } from "@effect/vitest"
import { Context, Effect, Layer, Option, Schedule } from "effect"
import * as NodeSocket from "@effect/platform-node/NodeSocket"
import * as Client from "../../rpc/Client.js"
import { runningHostPid } from "../../infra/pty/PtyHostRpcs.js"
import * as TestServer from "../support/TestServer.js"

class TestServerTag extends Context.Tag("test/TestServer")<TestServerTag, TestServer.Running>() {}

const fetchText = (url: string, token?: string) =>
  Effect.promise(async () => {
    const response = await fetch(
      url,
      token === undefined ? {} : { headers: { authorization: `Bearer ${token}` } }
    )
    return { status: response.status, body: await response.text() }
  })

const scrape = Effect.flatMap(TestServerTag, (server) => fetchText(`${server.url}/metrics`, server.token))

const withClient = <A, E>(effect: (client: Client.Client) => Effect.Effect<A, E>) =>
  Effect.flatMap(TestServerTag, (server) =>
    Effect.flatMap(Client.VibesClient, effect).pipe(
      Effect.provide(
        Client.layer({ url: server.url, token: TestServer.redacted(server) }).pipe(
          Layer.provide(NodeSocket.layerWebSocketConstructor)
        )
      )
    )
  )

/** The value of the sample `name{labels}` in a Prometheus text body, if there is one. */
const sampleValue = (body: string, name: string, labels: Record<string, string> = {}): number | undefined => {
  for (const line of body.split("\n")) {
    if (line.startsWith("#") || !line.startsWith(name)) continue
    const rest = line.slice(name.length)
    if (rest[0] !== "{" && rest[0] !== " ") continue
    const matches = Object.entries(labels).every(([key, value]) => rest.includes(`${key}="${value}"`))
    if (matches) return Number(line.slice(line.lastIndexOf(" ") + 1))
  }
  return undefined
}

layer(Layer.scoped(TestServerTag, TestServer.start), { timeout: 120_000, excludeTestServices: true })(
  "/metrics",
  (it) => {
    it.effect("counts HTTP requests by method, route template and status class, not by raw path", () =>
      Effect.gen(function* () {
        const server = yield* TestServerTag
        expect((yield* fetchText(`${server.url}/readyz`, server.token)).status).toBe(200)
        const missing = "01890000-0000-7000-8000-000000000000"
        expect((yield* fetchText(`${server.url}/api/jobs/${missing}`, server.token)).status).toBe(404)
        const { body } = yield* scrape
        expect(
          sampleValue(body, "vibes_http_requests_total", { method: "GET", route: "/readyz", status: "2xx" })
        ).toBeGreaterThanOrEqual(1)
        expect(
          sampleValue(body, "vibes_http_requests_total", {
            method: "GET",
            route: "/api/jobs/:id",
            status: "4xx"
          })
        ).toBeGreaterThanOrEqual(1)
        expect(body).not.toContain(missing)
        expect(
          sampleValue(body, "vibes_http_request_duration_seconds_count", { method: "GET", route: "/readyz" })
        ).toBeGreaterThanOrEqual(1)
      })
    )

    it.effect("counts RPCs by method and outcome, with their duration", () =>
      Effect.gen(function* () {
        yield* withClient((client) => client.System.Info())
        const failed = yield* withClient((client) =>
          Effect.flip(client.Jobs.Get({ jobId: "01890000-0000-7000-8000-000000000001" }))
        )
        expect(failed._tag).toBe("JobNotFound")
        const { body } = yield* scrape
        expect(
          sampleValue(body, "vibes_rpc_requests_total", { method: "System.Info", outcome: "ok" })
        ).toBeGreaterThanOrEqual(1)
        expect(
          sampleValue(body, "vibes_rpc_requests_total", { method: "Jobs.Get", outcome: "JobNotFound" })
        ).toBeGreaterThanOrEqual(1)
        expect(
          sampleValue(body, "vibes_rpc_duration_seconds_count", { method: "System.Info", kind: "unary" })
        ).toBeGreaterThanOrEqual(1)
      })
    )

    it.effect("reports the process: CPU, memory, heap, event-loop delay, GC pauses and open handles", () =>
      Effect.gen(function* () {
        const { body } = yield* scrape
        expect(sampleValue(body, "process_cpu_seconds_total")).toBeGreaterThan(0)
        expect(sampleValue(body, "process_resident_memory_bytes")).toBeGreaterThan(10 * 1024 * 1024)
        expect(sampleValue(body, "nodejs_heap_size_used_bytes")).toBeGreaterThan(0)
        expect(sampleValue(body, "nodejs_eventloop_delay_seconds", { statistic: "p99" })).toBeGreaterThan(0)
        expect(sampleValue(body, "nodejs_active_resources")).toBeGreaterThan(0)
        expect(body).toContain("nodejs_gc_duration_seconds")
      })
    )

    it.effect("reports the database pool and the data directory's disk", () =>
      Effect.gen(function* () {
        const { body } = yield* scrape
        expect(sampleValue(body, "vibes_db_pool_max")).toBe(4)
        expect(sampleValue(body, "vibes_db_pool_connections", { state: "idle" })).toBeGreaterThanOrEqual(0)
        expect(sampleValue(body, "vibes_db_pool_connections", { state: "in_use" })).toBeGreaterThanOrEqual(0)
        expect(sampleValue(body, "vibes_db_pool_waiting")).toBe(0)
        expect(sampleValue(body, "vibes_data_dir_filesystem_available_bytes")).toBeGreaterThan(0)
        expect(sampleValue(body, "vibes_data_dir_filesystem_size_bytes")).toBeGreaterThan(0)
      })
    )

    it.effect("reports the event log's head and each named consumer's lag", () =>
      Effect.gen(function* () {
        const head = yield* withClient((client) => client.Events.Head())
        expect(head.head).toBeGreaterThan(0)
        yield* withClient((client) => client.Events.Commit({ consumer: "metrics-test", offset: 1 }))
        const { body } = yield* scrape
        const reported = sampleValue(body, "vibes_event_log_head") ?? 0
        expect(reported).toBeGreaterThanOrEqual(head.head)
        expect(sampleValue(body, "vibes_event_consumer_offset", { consumer: "metrics-test" })).toBe(1)
        expect(sampleValue(body, "vibes_event_consumer_lag", { consumer: "metrics-test" })).toBe(reported - 1)
      })
    )

    it.effect("counts a restart of the PTY host after it is killed", () =>
      Effect.gen(function* () {
        const server = yield* TestServerTag
        const pid = runningHostPid(server.dataDir)
        expect(Option.isSome(pid)).toBe(true)
        process.kill(Option.getOrThrow(pid), "SIGKILL")
        const restarts = yield* scrape.pipe(
          Effect.map(({ body }) =>
            sampleValue(body, "vibes_supervised_restarts_total", { child: "pty-host" })
          ),
          // The series is there from the start (at 0): wait for the restart to count.
          Effect.filterOrFail((value): value is number => value !== undefined && value >= 1),
          Effect.retry(Schedule.spaced("200 millis").pipe(Schedule.upTo("60 seconds")))
        )
        expect(restarts).toBe(1)
      })
    )
  }
)
