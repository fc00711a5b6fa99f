import * as http from "node:http"
import { describe, expect, it } from "@effect/vitest"
import { Chunk, Deferred, Effect, Layer, Option, Stream } from "effect"
import * as NodeSocket from "@effect/platform-node/NodeSocket"
import * as Client from "../../rpc/Client.js"
import { isFinal, JobSpec } from "../../rpc/Jobs.js"
import { eventually } from "../support/Attach.js"
import * as TestServer from "../support/TestServer.js"

/** A stand-in OTLP/HTTP collector on a free port that hands over the first trace export. */
const collector = Effect.gen(function* () {
  const received = yield* Deferred.make<{ path: string; body: string }>()
  const server = yield* Effect.acquireRelease(
    Effect.async<http.Server>((resume) => {
      const server = http.createServer((request, response) => {
        let body = ""
        request.on("data", (chunk: Buffer) => (body += chunk.toString("utf8")))
        request.on("end", () => {
          response.writeHead(200, { "content-type": "application/json" }).end("{}")
          if (body.includes("System.Info"))
            Deferred.unsafeDone(received, Effect.succeed({ path: request.url ?? "", body }))
        })
      })
      server.listen(0, "127.0.0.1", () => resume(Effect.succeed(server)))
    }),
    (server) =>
      Effect.async<void>((resume) => {
        server.close(() => resume(Effect.void))
      })
  )
  const address = server.address()
  const port = typeof address === "object" && address !== null ? address.port : 0
  return { endpoint: `http://127.0.0.1:${port}`, received: Deferred.await(received) }
})

describe("tracing", () => {
  it.live(
    "exports spans of RPC calls over OTLP/HTTP when an endpoint is configured",
    () =>
      Effect.gen(function* () {
        const otlp = yield* collector
        const server = yield* TestServer.startWith({ otlpEndpoint: Option.some(otlp.endpoint) })
        yield* Effect.flatMap(Client.VibesClient, (client) => client.System.Info()).pipe(
          Effect.provide(
            Client.layer({ url: server.url, token: TestServer.redacted(server) }).pipe(
              Layer.provide(NodeSocket.layerWebSocketConstructor)
            )
          )
        )
        const exported = yield* otlp.received.pipe(Effect.timeout("30 seconds"))
        expect(exported.path).toBe("/v1/traces")
        const body: unknown = JSON.parse(exported.body)
        expect(JSON.stringify(body)).toContain('"service.name"')
        expect(exported.body).toContain("vibes")
      }).pipe(Effect.scoped),
    60_000
  )

  it.live(
    "a job's program gets the trace of the call that submitted it (TRACEPARENT)",
    () =>
      Effect.gen(function* () {
        const server = yield* TestServer.start
        const { output, traceId } = yield* Effect.gen(function* () {
          const span = yield* Effect.currentSpan
          const client = yield* Client.VibesClient
          const job = yield* client.Jobs.Submit(
            JobSpec.make({ command: "echo tp=$TRACEPARENT", shell: true })
          )
          yield* eventually(
            Effect.map(client.Jobs.Get({ jobId: job.id }), (info) =>
              isFinal(info.status) ? Option.some(info) : Option.none()
            ),
            `job ${job.id} to finish`
          )
          const logs = yield* client.Jobs.Logs({ jobId: job.id, follow: false }).pipe(Stream.runCollect)
          const output = Chunk.toArray(logs)
            .flatMap((o) => (o._tag === "JobLog" ? [o.chunk] : []))
            .join("")
          return { output, traceId: span.traceId }
        }).pipe(
          Effect.provide(
            Client.layer({ url: server.url, token: TestServer.redacted(server) }).pipe(
              Layer.provide(NodeSocket.layerWebSocketConstructor)
            )
          ),
          Effect.withSpan("test.submit")
        )
        // 00-<32 hex trace id>-<16 hex span id>-<flags>, in the trace of the call that submitted it.
        const traceparent = /tp=00-([0-9a-f]{32})-([0-9a-f]{16})-0[01]/.exec(output)
        expect(traceparent?.[1]).toBe(traceId)
      }).pipe(Effect.scoped),
    60_000
  )
})
