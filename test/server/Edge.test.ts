import { expect, layer } from "@effect/vitest"
import * as http from "node:http"
import { Context, Effect, Exit, Fiber, Layer, Option, Stream } from "effect"
import * as NodeSocket from "@effect/platform-node/NodeSocket"
import * as Client from "../../rpc/Client.js"
import { EventFilter } from "../../rpc/Events.js"
import { eventually } from "../support/Attach.js"
import * as HttpClient from "../support/HttpClient.js"
import * as RawRpc from "../support/RawRpc.js"
import * as TestServer from "../support/TestServer.js"

class Node extends Context.Tag("test/Node")<Node, TestServer.Running>() {}

const limits = { maxFrameBytes: 64 * 1024, maxMessagesPerFrame: 16, maxInFlight: 4 }

const NodeLive = Layer.scoped(Node, TestServer.startWith({ rpcLimits: limits, maxStreamsPerClient: 6 }))

const client = (server: TestServer.Running) =>
  Client.layer({ url: server.url, token: TestServer.redacted(server) }).pipe(
    Layer.provide(NodeSocket.layerWebSocketConstructor)
  )

/** The node answers: `/healthz` and an RPC on a fresh connection. */
const stillServes = (server: TestServer.Running) =>
  Effect.gen(function* () {
    const health = yield* Effect.promise(() => fetch(`${server.url}/healthz`))
    expect(health.status).toBe(200)
    const info = yield* Effect.flatMap(Client.VibesClient, (c) => c.System.Info()).pipe(
      Effect.provide(client(server))
    )
    expect(info.nodeId).toBe("test-node")
  })

const upgradeRequest = (host: string, extra = "") =>
  `GET /rpc HTTP/1.1\r\nHost: ${host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n` +
  `Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n` +
  `Sec-WebSocket-Protocol: vibes.rpc.v1\r\n${extra}\r\n`

/** A masked binary WebSocket frame carrying `payload` (< 64 KiB), as a client sends it. */
const frame = (payload: Buffer): Buffer => {
  const mask = Buffer.from([1, 2, 3, 4])
  const header =
    payload.length < 126
      ? Buffer.from([0x82, 0x80 | payload.length])
      : Buffer.from([0x82, 0x80 | 126, payload.length >> 8, payload.length & 0xff])
  const body = Buffer.from(payload.map((byte, i) => byte ^ (mask[i % 4] ?? 0)))
  return Buffer.concat([header, mask, body])
}

/** Sends `payload` on a fresh authenticated socket and waits for the server to close it. */
const sendAndWait = (server: TestServer.Running, payload: Buffer | string) =>
  Effect.gen(function* () {
    const socket = yield* RawRpc.open(server.url, server.token)
    const closed = yield* RawRpc.watchClose(socket)
    socket.send(payload, { binary: typeof payload !== "string" })
    return yield* closed
  }).pipe(Effect.scoped)

layer(NodeLive, { timeout: 120_000, excludeTestServices: true })("the node's front door", (it) => {
  it.effect("an upgrade without credentials gets 401, and the frames sent behind it are never read", () =>
    Effect.gen(function* () {
      const server = yield* Node
      const host = new URL(server.url).host
      const garbage = frame(Buffer.alloc(1000, 0x01))
      const answer = yield* RawRpc.rawHttp(
        server.url,
        Buffer.concat([Buffer.from(upgradeRequest(host)), garbage])
      )
      expect(answer.startsWith("HTTP/1.1 401")).toBe(true)
      expect(answer).not.toContain("101 Switching Protocols")
      const wrong = yield* RawRpc.rawHttp(
        server.url,
        Buffer.concat([
          Buffer.from(upgradeRequest(host, "Authorization: Bearer nope-nope-nope\r\n")),
          garbage
        ])
      )
      expect(wrong.startsWith("HTTP/1.1 401")).toBe(true)
      yield* stillServes(server)
    })
  )

  it.effect(
    "a Host header that does not name the node is refused (DNS rebinding); /healthz answers any",
    () =>
      Effect.gen(function* () {
        const server = yield* Node
        const api = yield* RawRpc.rawHttp(
          server.url,
          `GET /readyz HTTP/1.1\r\nHost: rebound.evil.example\r\nAuthorization: Bearer ${server.token}\r\nConnection: close\r\n\r\n`
        )
        expect(api.startsWith("HTTP/1.1 421")).toBe(true)
        expect(api).not.toContain(server.token)
        const upgrade = yield* RawRpc.rawHttp(
          server.url,
          upgradeRequest("rebound.evil.example:80", `Authorization: Bearer ${server.token}\r\n`)
        )
        expect(upgrade.startsWith("HTTP/1.1 421")).toBe(true)
        const proxy = yield* RawRpc.rawHttp(
          server.url,
          `POST /proxy/openai/v1/chat/completions HTTP/1.1\r\nHost: rebound.evil.example\r\nAuthorization: Bearer ${server.token}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}`
        )
        expect(proxy.startsWith("HTTP/1.1 421")).toBe(true)
        const health = yield* RawRpc.rawHttp(
          server.url,
          "GET /healthz HTTP/1.1\r\nHost: 10.9.8.7:7432\r\nConnection: close\r\n\r\n"
        )
        expect(health.startsWith("HTTP/1.1 200")).toBe(true)
      })
  )

  it.effect("a frame over the size limit closes the connection with 1009", () =>
    Effect.gen(function* () {
      const server = yield* Node
      const closed = yield* sendAndWait(server, Buffer.alloc(limits.maxFrameBytes + 1, 0xc0))
      expect(closed.code).toBe(1009)
      yield* stillServes(server)
    })
  )

  it.effect("more messages in one frame than allowed close the connection with 1008, none answered", () =>
    Effect.gen(function* () {
      const server = yield* Node
      const packr = RawRpc.packr()
      const pings = Buffer.concat(Array.from({ length: 17 }, () => packr.pack({ _tag: "Ping" })))
      const closed = yield* sendAndWait(server, pings)
      expect(closed).toMatchObject({ code: 1008, messages: 0 })
      expect(closed.reason).toContain("16 messages")
    })
  )

  it.effect(
    "a frame of one-byte values, garbage, a text frame or a bad request id closes the connection",
    () =>
      Effect.gen(function* () {
        const server = yield* Node
        const packr = RawRpc.packr()
        expect(yield* sendAndWait(server, Buffer.alloc(60_000, 0x01))).toMatchObject({
          code: 1002,
          messages: 0
        })
        expect(yield* sendAndWait(server, Buffer.from([0xc1, 0xc1, 0xc1]))).toMatchObject({ code: 1002 })
        expect(yield* sendAndWait(server, Buffer.from([0xdd, 0xff, 0xff, 0xff, 0xff]))).toMatchObject({
          code: 1002
        })
        expect(yield* sendAndWait(server, "hello")).toMatchObject({ code: 1003 })
        const badId = packr.pack({
          _tag: "Request",
          id: "not-a-number",
          tag: "System.Info",
          payload: {},
          headers: []
        })
        expect(yield* sendAndWait(server, badId)).toMatchObject({ code: 1002 })
        const noTag = packr.pack({ id: "1", tag: "System.Info" })
        expect(yield* sendAndWait(server, noTag)).toMatchObject({ code: 1002 })
        yield* stillServes(server)
      })
  )

  it.effect("a well-formed request is answered on the raw socket", () =>
    Effect.gen(function* () {
      const server = yield* Node
      const socket = yield* RawRpc.open(server.url, server.token)
      const packr = RawRpc.packr()
      const answer = RawRpc.nextMessage(socket, RawRpc.packr())
      socket.send(packr.pack({ _tag: "Request", id: "1", tag: "System.Info", payload: {}, headers: [] }))
      const message = yield* answer
      expect(message).toMatchObject({ _tag: "Exit", requestId: "1" })
    }).pipe(Effect.scoped)
  )

  it.effect("more requests in flight than allowed close that connection only", () =>
    Effect.gen(function* () {
      const server = yield* Node
      const subscribe = Effect.flatMap(Client.VibesClient, (c) =>
        Stream.runDrain(
          c.Events.Subscribe({
            from: { _tag: "Latest" },
            filter: EventFilter.make({ types: ["never.happens"] })
          })
        )
      )
      const outcome = yield* Effect.gen(function* () {
        const fibers = yield* Effect.forEach(Array.from({ length: limits.maxInFlight + 1 }), () =>
          Effect.fork(subscribe)
        )
        return yield* Effect.forEach(fibers, Fiber.await)
      }).pipe(Effect.provide(client(server)))
      expect(outcome.every(Exit.isFailure)).toBe(true)
      yield* stillServes(server)
    })
  )

  it.effect("an address holds a bounded number of connections; more get 429", () =>
    Effect.gen(function* () {
      const server = yield* Node
      // From an address of its own, so no other test's connections count.
      const results = yield* Effect.forEach(Array.from({ length: 7 }), () =>
        RawRpc.upgrade(server.url, {
          headers: { authorization: `Bearer ${server.token}` },
          localAddress: "127.0.0.3"
        })
      )
      const refused = results.filter((result) => result._tag === "Refused")
      expect(refused).toHaveLength(1)
      expect(refused[0]).toMatchObject({ status: 429 })
      const other = yield* RawRpc.upgrade(server.url, {
        headers: { authorization: `Bearer ${server.token}` },
        localAddress: "127.0.0.4"
      })
      expect(other._tag).toBe("Open")
    }).pipe(Effect.scoped)
  )

  it.effect("event streams and proxy requests take the same slots as connections; more get 429", () =>
    Effect.gen(function* () {
      const server = yield* Node
      // From an address of its own, so no other test's connections count.
      const localAddress = "127.0.0.6"
      const authorization = `Bearer ${server.token}`
      /** An event stream, held open until `close` or the end of the scope. */
      const openStream = Effect.acquireRelease(
        Effect.async<{ readonly status: number; readonly close: () => void }, Error>((resume) => {
          const target = new URL(`${server.url}/api/events?from=1`)
          const outgoing = http.get(
            {
              host: target.hostname,
              port: Number(target.port),
              path: `${target.pathname}${target.search}`,
              headers: { authorization },
              agent: false,
              localAddress
            },
            (response) => {
              response.resume()
              resume(Effect.succeed({ status: response.statusCode ?? 0, close: () => outgoing.destroy() }))
            }
          )
          outgoing.on("error", (error) => resume(Effect.fail(error)))
        }),
        (stream) => Effect.sync(stream.close)
      )
      const streams = yield* Effect.forEach(Array.from({ length: 6 }), () => openStream)
      expect(streams.map((stream) => stream.status)).toEqual([200, 200, 200, 200, 200, 200])

      const seventh = yield* HttpClient.request(`${server.url}/api/events?from=1`, {
        headers: { authorization },
        localAddress,
        headersOnly: true
      })
      expect(seventh.status).toBe(429)
      const proxied = yield* HttpClient.request(`${server.url}/proxy/openai/v1/models`, {
        headers: { authorization },
        localAddress
      })
      expect(proxied.status).toBe(429)
      expect(proxied.headers["retry-after"]).toBe("5")
      expect(JSON.parse(proxied.body)).toMatchObject({ error: "TooManyStreams" })

      // A stream that closes gives its slot back: a proxy request gets through again.
      streams[0]?.close()
      const after = yield* eventually(
        Effect.map(
          HttpClient.request(`${server.url}/proxy/openai/v1/models`, {
            headers: { authorization },
            localAddress
          }),
          (answer) => (answer.status === 429 ? Option.none() : Option.some(answer))
        ),
        "a slot to be free again"
      )
      expect(after.status).not.toBe(429)
    }).pipe(Effect.scoped)
  )

  it.effect("the token may travel in a subprotocol; the server answers with the RPC protocol only", () =>
    Effect.gen(function* () {
      const server = yield* Node
      const result = yield* RawRpc.upgrade(server.url, {
        protocols: ["vibes.rpc.v1", `vibes.token.${Buffer.from(server.token).toString("base64url")}`]
      })
      expect(result._tag).toBe("Open")
      if (result._tag === "Open") expect(result.socket.protocol).toBe("vibes.rpc.v1")
    }).pipe(Effect.scoped)
  )
})
