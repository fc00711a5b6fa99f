import * as http from "node:http"
import { describe, expect, it } from "@effect/vitest"
import { Deferred, Effect, Layer, Option } from "effect"
import * as NodeSocket from "@effect/platform-node/NodeSocket"
import * as Client from "../../rpc/Client.js"
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
})
