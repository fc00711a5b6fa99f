/**
 * The AI-provider proxy against local fake providers (Anthropic Messages and OpenAI Chat, JSON
 * and SSE with usage): pass-through, key injection, retries, limits, disconnects, and the
 * `proxy.request` events.
 */
import { expect, layer } from "@effect/vitest"
import Anthropic from "@anthropic-ai/sdk"
import OpenAI from "openai"
import * as fs from "node:fs"
import * as http from "node:http"
import * as path from "node:path"
import { Context, Effect, Layer, Option, Redacted, Schedule, Stream } from "effect"
import * as Client from "../../rpc/Client.js"
import { EventFilter, type StoredEvent } from "../../rpc/Events.js"
import type { ProviderConfig } from "../../rpc/Proxy.js"
import * as ProxyTokens from "../../actors/proxy/ProxyTokens.js"
import * as FreePort from "../../infra/net/FreePort.js"
import { clientLayer, eventually } from "../support/Attach.js"
import * as FakeProvider from "../support/FakeProvider.js"
import { tempDir, writableTempDir } from "../support/TempDir.js"
import * as TestServer from "../support/TestServer.js"

const anthropicKey = "sk-ant-fake-provider-key-0123456789"
const openaiKey = "sk-openai-fake-provider-key-9876543210"
const keyVariable = "VIBES_TEST_PROXY_OPENAI_KEY"

interface Env {
  readonly server: TestServer.Running
  readonly rpc: Client.Client
  readonly anthropic: FakeProvider.FakeProvider
  readonly openai: FakeProvider.FakeProvider
  readonly flaky: FakeProvider.FakeProvider
  readonly fragile: FakeProvider.FakeProvider
  readonly slow: FakeProvider.FakeProvider
  /** A fresh client token (its own rate-limit bucket), attributed to `sessionId`. */
  readonly token: (sessionId: string) => string
}
class ProxyEnv extends Context.Tag("test/ProxyEnv")<ProxyEnv, Env>() {}

const quick = { maxAttempts: 1, initialDelayMs: 10, maxDelayMs: 50, maxRetryAfterMs: 2_000 }
const provider = (name: string, url: string, extra: Partial<ProviderConfig> = {}) =>
  FakeProvider.providerConfig(name, url, {
    retry: { ...quick, maxAttempts: 3 },
    circuit: { failures: 100, openMs: 60_000 },
    ...extra
  })

const EnvLive = Layer.scoped(
  ProxyEnv,
  Effect.gen(function* () {
    const anthropic = yield* FakeProvider.make({ apiKey: anthropicKey })
    const openai = yield* FakeProvider.make({ apiKey: openaiKey })
    const flaky = yield* FakeProvider.make({ apiKey: openaiKey })
    const fragile = yield* FakeProvider.make({ apiKey: openaiKey })
    const slow = yield* FakeProvider.make({ apiKey: openaiKey })
    const keys = yield* tempDir("vibes-proxy-keys-")
    const keyFile = path.join(keys, "anthropic.key")
    fs.writeFileSync(keyFile, `${anthropicKey}\n`, { mode: 0o600 })
    process.env[keyVariable] = openaiKey
    yield* Effect.addFinalizer(() => Effect.sync(() => delete process.env[keyVariable]))
    const closedPort = yield* FreePort.find()
    const server = yield* TestServer.startWith({
      proxyMaxBody: 64 * 1024,
      proxyRate: 2,
      proxyBurst: 10,
      proxyProviders: [
        provider("anthropic", anthropic.url, { format: "anthropic", auth: "x-api-key", keyFile }),
        provider("openai", `${openai.url}/`, { keyEnv: keyVariable }),
        provider("flaky", flaky.url, { keyEnv: keyVariable }),
        provider("fragile", fragile.url, {
          keyEnv: keyVariable,
          retry: quick,
          circuit: { failures: 2, openMs: 60_000 }
        }),
        provider("slow", slow.url, { keyEnv: keyVariable, retry: quick, firstByteTimeoutMs: 300 }),
        provider("down", `http://127.0.0.1:${closedPort}`, {
          format: "anthropic",
          auth: "x-api-key",
          keyEnv: keyVariable,
          retry: { ...quick, maxAttempts: 2 }
        })
      ]
    })
    const rpc = yield* Effect.map(
      Layer.build(clientLayer(server.url, server.token)),
      Context.get(Client.VibesClient)
    )
    const tokens = ProxyTokens.make({ token: Redacted.make(server.token), verify: (t) => t === server.token })
    return {
      server,
      rpc,
      anthropic,
      openai,
      flaky,
      fragile,
      slow,
      token: (sessionId: string) => tokens.mint({ kind: "session", id: sessionId })
    }
  })
)

/** A token no other test uses, of a session that runs until the test ends (tokens end with it). */
const freshClient = Effect.gen(function* () {
  const env = yield* ProxyEnv
  const session = yield* env.rpc.Sessions.Create({ command: "sleep", args: ["600"] })
  yield* Effect.addFinalizer(() => Effect.ignore(env.rpc.Sessions.Close({ sessionId: session.id })))
  return { sessionId: session.id, token: env.token(session.id) }
})

const call = (url: string, init: RequestInit = {}) => Effect.promise(() => fetch(url, init))
const body = (response: Response) => Effect.promise(() => response.text())

const anthropicRequest = (stream: boolean) =>
  JSON.stringify({
    model: "claude-test-1",
    max_tokens: 64,
    stream,
    messages: [{ role: "user", content: "Hello" }]
  })
const openaiRequest = (stream: boolean) =>
  JSON.stringify({
    model: "gpt-test-1",
    stream,
    ...(stream ? { stream_options: { include_usage: true } } : {}),
    messages: [{ role: "user", content: "Hello" }]
  })

/** The first `proxy.request` event from `sessionId` that `matches` (the ones seen, if none does). */
const proxyEvent = (sessionId: string, matches: (event: StoredEvent) => boolean = () => true) =>
  Effect.flatMap(ProxyEnv, ({ rpc }) => {
    const filter = new EventFilter({ types: ["proxy.request"], sessionId })
    return rpc.Events.Subscribe({ from: { _tag: "Offset", offset: 0 }, filter }).pipe(
      Stream.filter(matches),
      Stream.runHead,
      Effect.map(Option.getOrThrow),
      Effect.timeout("20 seconds"),
      Effect.catchAll(() =>
        Effect.flatMap(rpc.Events.Read({ from: 0, filter, limit: 100 }), (seen) =>
          Effect.dieMessage(
            `no matching proxy.request event; seen: ${JSON.stringify(seen.map((e) => e.data))}`
          )
        )
      ),
      Effect.orDie
    )
  })

const dataOf = (event: StoredEvent) => event.data as Record<string, unknown>

layer(EnvLive, { timeout: 120_000, excludeTestServices: true })("AI-provider proxy", (it) => {
  it.scoped("streams SSE byte for byte, each chunk before the upstream has finished", () =>
    Effect.gen(function* () {
      const { server, anthropic } = yield* ProxyEnv
      const client = yield* freshClient
      const headers = {
        "x-api-key": client.token,
        "content-type": "application/json",
        "anthropic-version": "2023-06-01"
      }

      // Byte for byte, odd bytes and all.
      const exact = `event: message_start\ndata: {"type":"message_start","message":{"model":"claude-exact","usage":{"input_tokens":3,"output_tokens":1}}}\n\nevent: ping\ndata: {"type": "ping", "text":"héllo ✓ \\u0000"}\r\n\r\n: comment\n\nevent: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":7}}\n\n`
      yield* anthropic.enqueue(
        FakeProvider.Behaviour.Status({
          status: 200,
          body: exact,
          headers: { "content-type": "text/event-stream" }
        })
      )
      const response = yield* call(`${server.url}/proxy/anthropic/v1/messages`, {
        method: "POST",
        headers,
        body: anthropicRequest(true)
      })
      expect(response.status).toBe(200)
      expect(response.headers.get("content-type")).toBe("text/event-stream")
      expect(Buffer.from(yield* Effect.promise(() => response.arrayBuffer()))).toEqual(Buffer.from(exact))
      const exactEvent = yield* proxyEvent(client.sessionId)
      expect(dataOf(exactEvent)).toMatchObject({
        model: "claude-exact",
        inputTokens: 3,
        outputTokens: 7,
        streamed: true
      })

      // The first event arrives while the upstream holds the rest back.
      const gate = yield* anthropic.enqueueGated
      const live = yield* call(`${server.url}/proxy/anthropic/v1/messages`, {
        method: "POST",
        headers,
        body: anthropicRequest(true)
      })
      const reader = (live.body ?? new ReadableStream<Uint8Array>()).getReader()
      const first = yield* Effect.promise(() => reader.read())
      expect(new TextDecoder().decode(first.value)).toContain("event: message_start")
      const request = anthropic.requests[anthropic.requests.length - 1]
      expect(request?.aborted).toBe(false)
      yield* gate.release
      let rest = ""
      for (;;) {
        const next = yield* Effect.promise(() => reader.read())
        if (next.done) break
        rest += new TextDecoder().decode(next.value)
      }
      expect(rest).toContain("event: message_stop")
    })
  )

  it.scoped("injects the provider key, removes the client's, and never returns the key", () =>
    Effect.gen(function* () {
      const { server, anthropic, openai } = yield* ProxyEnv
      const client = yield* freshClient

      const viaAnthropic = yield* call(`${server.url}/proxy/anthropic/v1/messages?beta=true`, {
        method: "POST",
        headers: {
          "x-api-key": client.token,
          "content-type": "application/json",
          cookie: "a=b",
          "x-custom": "kept"
        },
        body: anthropicRequest(false)
      })
      const anthropicText = yield* body(viaAnthropic)
      expect(viaAnthropic.status).toBe(200)
      const seen = yield* anthropic.request(anthropic.requests.length - 1)
      expect(seen.path).toBe("/v1/messages")
      expect(seen.query).toBe("beta=true")
      expect(seen.headers["x-api-key"]).toBe(anthropicKey)
      expect(seen.headers["authorization"]).toBeUndefined()
      expect(seen.headers["cookie"]).toBeUndefined()
      expect(seen.headers["x-custom"]).toBe("kept")
      expect(JSON.stringify(seen.headers)).not.toContain(client.token)
      expect(seen.body.toString()).toBe(anthropicRequest(false))
      expect(anthropicText).not.toContain(anthropicKey)
      expect(JSON.stringify([...viaAnthropic.headers])).not.toContain(anthropicKey)

      const viaOpenai = yield* call(`${server.url}/proxy/openai/v1/chat/completions`, {
        method: "POST",
        headers: { authorization: `Bearer ${client.token}`, "content-type": "application/json" },
        body: openaiRequest(false)
      })
      const openaiText = yield* body(viaOpenai)
      expect(viaOpenai.status).toBe(200)
      const seenOpenai = yield* openai.request(openai.requests.length - 1)
      expect(seenOpenai.path).toBe("/v1/chat/completions")
      expect(seenOpenai.headers["authorization"]).toBe(`Bearer ${openaiKey}`)
      expect(seenOpenai.headers["x-api-key"]).toBeUndefined()
      expect(openaiText).not.toContain(openaiKey)
      expect(JSON.parse(openaiText)).toMatchObject({
        object: "chat.completion",
        usage: { prompt_tokens: 12 }
      })
    })
  )

  it.scoped(
    "upstream cookies never reach the client, and every proxied answer carries vibes' security headers",
    () =>
      Effect.gen(function* () {
        const { server, openai } = yield* ProxyEnv
        const client = yield* freshClient
        const headers = { authorization: `Bearer ${client.token}`, "content-type": "application/json" }
        const page = "<html><body><script>document.title = 'from the provider'</script></body></html>"
        yield* openai.enqueue(
          FakeProvider.Behaviour.Status({
            status: 200,
            body: page,
            headers: {
              "content-type": "text/html; charset=utf-8",
              "set-cookie": "tracker=1; Path=/; HttpOnly",
              "content-security-policy": "default-src *",
              "x-frame-options": "ALLOWALL",
              "x-provider": "kept"
            }
          })
        )
        const html = yield* call(`${server.url}/proxy/openai/v1/page`, { headers })
        expect(html.status).toBe(200)
        expect(yield* body(html)).toBe(page)
        expect(html.headers.get("set-cookie")).toBeNull()
        expect(html.headers.get("x-provider")).toBe("kept")
        expect(html.headers.get("content-type")).toBe("text/html; charset=utf-8")
        expect(html.headers.get("content-security-policy")).toContain("default-src 'self'")
        expect(html.headers.get("x-frame-options")).toBe("DENY")
        expect(html.headers.get("x-content-type-options")).toBe("nosniff")
        expect(html.headers.get("referrer-policy")).toBe("same-origin")

        // A stream keeps streaming, with the headers of vibes' own streams.
        yield* openai.enqueue(
          FakeProvider.Behaviour.Status({
            status: 200,
            body: "data: {}\n\n",
            headers: { "content-type": "text/event-stream", "set-cookie": "tracker=2" }
          })
        )
        const stream = yield* call(`${server.url}/proxy/openai/v1/chat/completions`, {
          method: "POST",
          headers,
          body: openaiRequest(true)
        })
        expect(yield* body(stream)).toBe("data: {}\n\n")
        expect(stream.headers.get("set-cookie")).toBeNull()
        expect(stream.headers.get("x-accel-buffering")).toBe("no")
        expect(stream.headers.get("content-security-policy")).toContain("default-src 'self'")

        // The proxy's own refusals too.
        const refused = yield* call(`${server.url}/proxy/nowhere/v1/x`, { headers })
        expect(refused.status).toBe(404)
        expect(refused.headers.get("x-frame-options")).toBe("DENY")
        expect(refused.headers.get("content-security-policy")).toContain("default-src 'self'")
      })
  )

  it.scoped("a model name the log cannot store does not cost the request its proxy.request event", () =>
    Effect.gen(function* () {
      const { server } = yield* ProxyEnv
      const client = yield* freshClient
      const response = yield* call(`${server.url}/proxy/openai/v1/chat/completions`, {
        method: "POST",
        headers: { authorization: `Bearer ${client.token}`, "content-type": "application/json" },
        body: JSON.stringify({ model: "gpt\u0000evil\ud800", messages: [{ role: "user", content: "Hi" }] })
      })
      expect(response.status).toBe(200)
      yield* body(response)
      const event = yield* proxyEvent(client.sessionId)
      expect(String(dataOf(event)["model"])).toMatch(/^gpt\uFFFDevil/)
    })
  )

  it.scoped("retries a 503 before the first byte, never after it; a 429 waits its Retry-After", () =>
    Effect.gen(function* () {
      const { server, flaky } = yield* ProxyEnv
      const client = yield* freshClient
      const post = () =>
        call(`${server.url}/proxy/flaky/v1/chat/completions`, {
          method: "POST",
          headers: { authorization: `Bearer ${client.token}`, "content-type": "application/json" },
          body: openaiRequest(false)
        })

      const before = flaky.requests.length
      yield* flaky.enqueue(
        FakeProvider.Behaviour.Status({ status: 503 }),
        FakeProvider.Behaviour.Status({ status: 502 })
      )
      const retried = yield* post()
      expect(retried.status).toBe(200)
      expect(JSON.parse(yield* body(retried))).toMatchObject({ object: "chat.completion" })
      expect(flaky.requests.length - before).toBe(3)
      const event = yield* proxyEvent(client.sessionId, (e) => dataOf(e)["attempts"] === 3)
      expect(dataOf(event)).toMatchObject({ status: 200, errorKind: null, inputTokens: 12, outputTokens: 5 })

      // The response broke after its first byte reached the client: no second request.
      const broken = flaky.requests.length
      yield* flaky.enqueue(FakeProvider.Behaviour.Destroy({ afterFirstChunk: true }))
      const cut = yield* post()
      expect(cut.status).toBe(200)
      const read = yield* Effect.either(Effect.tryPromise(() => cut.text()))
      expect(read._tag).toBe("Left")
      expect(flaky.requests.length - broken).toBe(1)
      yield* proxyEvent(client.sessionId, (e) => dataOf(e)["errorKind"] === "upstream_reset")

      // 429 with Retry-After: 1 → the proxy waits at least a second, then succeeds.
      yield* flaky.enqueue(FakeProvider.Behaviour.Status({ status: 429, headers: { "retry-after": "1" } }))
      const started = performance.now()
      const waited = yield* post()
      expect(waited.status).toBe(200)
      expect(performance.now() - started).toBeGreaterThanOrEqual(1000)

      // A Retry-After longer than the provider's maxRetryAfterMs goes back to the client as it is.
      yield* flaky.enqueue(FakeProvider.Behaviour.Status({ status: 429, headers: { "retry-after": "120" } }))
      const refused = yield* post()
      expect(refused.status).toBe(429)
      expect(refused.headers.get("retry-after")).toBe("120")
      expect(JSON.parse(yield* body(refused))).toHaveProperty("error")
    })
  )

  it.scoped("rate limits per client with 429 and Retry-After, and refuses oversize bodies with 413", () =>
    Effect.gen(function* () {
      const { server, openai } = yield* ProxyEnv
      const client = yield* freshClient
      const other = yield* freshClient
      const models = (token: string) =>
        call(`${server.url}/proxy/openai/v1/models`, { headers: { authorization: `Bearer ${token}` } })

      const statuses: Array<number> = []
      let limited: Response | undefined
      for (let i = 0; i < 15 && limited === undefined; i++) {
        const response = yield* models(client.token)
        statuses.push(response.status)
        if (response.status === 429) limited = response
        else yield* body(response)
      }
      expect(statuses.filter((s) => s === 200).length).toBeGreaterThanOrEqual(10)
      expect(limited?.status).toBe(429)
      expect(Number(limited?.headers.get("retry-after"))).toBeGreaterThanOrEqual(1)
      if (limited === undefined) return
      expect(JSON.parse(yield* body(limited))).toMatchObject({ error: { code: "rate_limit_exceeded" } })
      // Another client has its own bucket.
      expect((yield* models(other.token)).status).toBe(200)

      // 64 KiB is this server's limit: a larger body never reaches the provider.
      const before = openai.requests.length
      const big = JSON.stringify({
        model: "gpt-test-1",
        messages: [{ role: "user", content: "x".repeat(70_000) }]
      })
      const tooLarge = yield* call(`${server.url}/proxy/openai/v1/chat/completions`, {
        method: "POST",
        headers: { authorization: `Bearer ${other.token}`, "content-type": "application/json" },
        body: big
      })
      expect(tooLarge.status).toBe(413)
      expect(JSON.parse(yield* body(tooLarge))).toMatchObject({ error: { code: "request_too_large" } })
      // Without a content-length (chunked), the limit holds as the body arrives.
      const chunked = yield* call(`${server.url}/proxy/openai/v1/chat/completions`, {
        method: "POST",
        headers: { authorization: `Bearer ${other.token}`, "content-type": "application/json" },
        body: new Blob([big]).stream(),
        duplex: "half"
      } as RequestInit)
      expect(chunked.status).toBe(413)
      expect(openai.requests.length).toBe(before)
    })
  )

  it.scoped("a client that disconnects aborts the upstream request, before and during the response", () =>
    Effect.gen(function* () {
      const { server, slow, anthropic } = yield* ProxyEnv
      const client = yield* freshClient

      // Waiting for the response headers (the 300 ms first-byte timeout is not reached first:
      // the client goes as soon as the request is upstream).
      yield* slow.enqueue(FakeProvider.Behaviour.Hang())
      const index = slow.requests.length
      const controller = new AbortController()
      const pending = Effect.runPromise(
        Effect.either(
          call(`${server.url}/proxy/slow/v1/chat/completions`, {
            method: "POST",
            headers: { authorization: `Bearer ${client.token}`, "content-type": "application/json" },
            body: openaiRequest(false),
            signal: controller.signal
          })
        )
      ).catch(() => undefined)
      yield* slow.request(index)
      controller.abort()
      yield* slow.untilAborted(index)
      yield* Effect.promise(() => pending)

      // Mid-stream.
      yield* anthropic.enqueueGated
      const streamIndex = anthropic.requests.length
      const streamController = new AbortController()
      const live = yield* call(`${server.url}/proxy/anthropic/v1/messages`, {
        method: "POST",
        headers: { "x-api-key": client.token, "content-type": "application/json" },
        body: anthropicRequest(true),
        signal: streamController.signal
      })
      const reader = (live.body ?? new ReadableStream<Uint8Array>()).getReader()
      yield* Effect.promise(() => reader.read())
      streamController.abort()
      yield* anthropic.untilAborted(streamIndex)
      yield* proxyEvent(client.sessionId, (e) => dataOf(e)["errorKind"] === "client_closed")
    })
  )

  it.scoped("a first-byte timeout is a 504; an unreachable provider a 502 in its own error format", () =>
    Effect.gen(function* () {
      const { server, slow } = yield* ProxyEnv
      const client = yield* freshClient
      yield* slow.enqueue(FakeProvider.Behaviour.Hang())
      const timedOut = yield* call(`${server.url}/proxy/slow/v1/chat/completions`, {
        method: "POST",
        headers: { authorization: `Bearer ${client.token}`, "content-type": "application/json" },
        body: openaiRequest(false)
      })
      expect(timedOut.status).toBe(504)
      expect(JSON.parse(yield* body(timedOut))).toMatchObject({ error: { code: "upstream_timeout" } })

      const unreachable = yield* call(`${server.url}/proxy/down/v1/messages`, {
        method: "POST",
        headers: { "x-api-key": client.token, "content-type": "application/json" },
        body: anthropicRequest(false)
      })
      expect(unreachable.status).toBe(502)
      const error = JSON.parse(yield* body(unreachable))
      expect(error).toMatchObject({ type: "error", error: { type: "api_error" } })
      expect(error.error.message).toContain("cannot reach provider 'down'")
      const event = yield* proxyEvent(client.sessionId, (e) => dataOf(e)["provider"] === "down")
      expect(dataOf(event)).toMatchObject({ status: 502, errorKind: "connect", attempts: 2 })
    })
  )

  it.scoped("the circuit opens after repeated failures and refuses without calling the provider", () =>
    Effect.gen(function* () {
      const { server, fragile } = yield* ProxyEnv
      const client = yield* freshClient
      const post = () =>
        call(`${server.url}/proxy/fragile/v1/chat/completions`, {
          method: "POST",
          headers: { authorization: `Bearer ${client.token}`, "content-type": "application/json" },
          body: openaiRequest(false)
        })
      yield* fragile.enqueue(
        FakeProvider.Behaviour.Status({ status: 500 }),
        FakeProvider.Behaviour.Status({ status: 500 })
      )
      expect((yield* post()).status).toBe(500)
      expect((yield* post()).status).toBe(500)
      const before = fragile.requests.length
      const open = yield* post()
      expect(open.status).toBe(503)
      expect(Number(open.headers.get("retry-after"))).toBeGreaterThan(0)
      expect(fragile.requests.length).toBe(before)
      const { rpc } = yield* ProxyEnv
      const providers = yield* rpc.Proxy.Providers()
      expect(providers.find((p) => p.name === "fragile")).toMatchObject({
        circuit: "open",
        consecutiveFailures: 2
      })
      // The opening is an event (what notifications send), once: the refusals after it are not.
      const opened = yield* eventually(
        Effect.map(
          rpc.Events.Read({
            from: 1,
            filter: EventFilter.make({ types: ["proxy.circuit_opened"] }),
            limit: 10
          }),
          (events) => (events.length > 0 ? Option.some(events) : Option.none())
        ),
        "proxy.circuit_opened"
      )
      expect(opened.map((event) => event.data)).toEqual([
        { provider: "fragile", failures: 2, openMillis: 60_000 }
      ])
      expect(opened[0]?.severity).toBe("error")
    })
  )

  it.scoped(
    "bad input: unknown provider 404, missing or wrong credentials 401, another origin 403, malformed JSON passed through",
    () =>
      Effect.gen(function* () {
        const { server, openai } = yield* ProxyEnv
        const client = yield* freshClient
        const unknown = yield* call(`${server.url}/proxy/nope/v1/models`, {
          headers: { authorization: `Bearer ${client.token}` }
        })
        expect(unknown.status).toBe(404)
        expect(yield* body(unknown)).toContain("unknown provider 'nope'")

        const before = openai.requests.length
        const missing = yield* call(`${server.url}/proxy/openai/v1/models`)
        expect(missing.status).toBe(401)
        expect(JSON.parse(yield* body(missing))).toMatchObject({ error: { code: "invalid_api_key" } })
        const wrong = yield* call(`${server.url}/proxy/openai/v1/models`, {
          headers: { authorization: "Bearer vibes-session.01000000-0000-7000-8000-000000000001.forged" }
        })
        expect(wrong.status).toBe(401)
        const admin = yield* call(`${server.url}/proxy/anthropic/v1/messages`, {
          method: "POST",
          headers: { "x-api-key": "not-the-token" },
          body: anthropicRequest(false)
        })
        expect(admin.status).toBe(401)
        expect(JSON.parse(yield* body(admin))).toMatchObject({
          type: "error",
          error: { type: "authentication_error" }
        })
        // fetch would resolve the dots itself: a raw request keeps them.
        const climbing = yield* Effect.async<number>((resume) => {
          const { hostname, port } = new URL(server.url)
          const request = http.get(
            {
              hostname,
              port,
              path: "/proxy/openai/v1/%2e%2e/%2e%2e/admin",
              headers: { authorization: `Bearer ${client.token}` }
            },
            (response) => {
              response.resume()
              resume(Effect.succeed(response.statusCode ?? 0))
            }
          )
          request.on("error", (error) => resume(Effect.die(error)))
        })
        expect(climbing).toBe(400)
        // Another origin's page, even with a valid token: refused like every other route.
        const foreign = yield* call(`${server.url}/proxy/openai/v1/models`, {
          headers: { authorization: `Bearer ${client.token}`, origin: "https://elsewhere.example" }
        })
        expect(foreign.status).toBe(403)
        expect(yield* body(foreign)).toContain("https://elsewhere.example")
        expect(openai.requests.length).toBe(before)

        const malformed = '{"model": "gpt-test-1", "messages": [ oops'
        const passed = yield* call(`${server.url}/proxy/openai/v1/chat/completions`, {
          method: "POST",
          headers: { authorization: `Bearer ${client.token}`, "content-type": "application/json" },
          body: malformed
        })
        expect(passed.status).toBe(400)
        expect(yield* body(passed)).toContain("JSON")
        expect(openai.requests[openai.requests.length - 1]?.body.toString()).toBe(malformed)
      })
  )

  it.scoped("a session's agents reach the proxy with their own token; usage lands in its events", () =>
    Effect.gen(function* () {
      const { server, rpc } = yield* ProxyEnv
      // Written by the session's program, which may run as the sandbox's user.
      const dir = yield* writableTempDir("vibes-proxy-session-")
      const envFile = path.join(dir, "env")
      // The session runs on after writing its environment: its token works only while it runs.
      const session = yield* rpc.Sessions.Create({
        command: "/bin/sh",
        args: ["-c", `env > ${envFile}.part && mv ${envFile}.part ${envFile} && exec sleep 600`],
        cwd: dir
      })
      yield* Effect.addFinalizer(() => Effect.ignore(rpc.Sessions.Close({ sessionId: session.id })))
      yield* Effect.sync(() => fs.existsSync(envFile)).pipe(
        Effect.repeat({ until: (exists) => exists, schedule: Schedule.spaced("50 millis") }),
        Effect.timeout("20 seconds"),
        Effect.orDie
      )
      const env = fs.readFileSync(envFile, "utf8")
      const vars = Object.fromEntries(
        env
          .split("\n")
          .filter((line) => line.includes("="))
          .map((line) => [line.slice(0, line.indexOf("=")), line.slice(line.indexOf("=") + 1)])
      )
      expect(vars["ANTHROPIC_BASE_URL"]).toBe(`${server.url}/proxy/anthropic`)
      expect(vars["OPENAI_BASE_URL"]).toBe(`${server.url}/proxy/openai/v1`)
      const token = vars["VIBES_PROXY_TOKEN"] ?? ""
      expect(token).toMatch(new RegExp(`^vibes-session\\.${session.id}\\.`))
      // The provider key variable holds the session's token, not the key.
      expect(vars[keyVariable]).toBe(token)
      expect(env).not.toContain(openaiKey)

      // As an SDK would call it: base URL + path, its key variable as the credential.
      const streamed = yield* call(`${vars["OPENAI_BASE_URL"]}/chat/completions`, {
        method: "POST",
        headers: { authorization: `Bearer ${vars[keyVariable]}`, "content-type": "application/json" },
        body: openaiRequest(true)
      })
      expect(yield* body(streamed)).toContain("data: [DONE]")
      const streamedEvent = yield* proxyEvent(session.id, (e) => dataOf(e)["streamed"] === true)
      expect(streamedEvent.sessionId).toBe(session.id)
      expect(dataOf(streamedEvent)).toMatchObject({
        provider: "openai",
        model: "gpt-test-1",
        status: 200,
        inputTokens: 12,
        outputTokens: 5,
        client: "session",
        errorKind: null
      })
      expect(dataOf(streamedEvent)["ttfbMillis"]).toBeGreaterThanOrEqual(0)

      const plain = yield* call(`${vars["ANTHROPIC_BASE_URL"]}/v1/messages`, {
        method: "POST",
        headers: { "x-api-key": token, "content-type": "application/json" },
        body: anthropicRequest(false)
      })
      expect(plain.status).toBe(200)
      yield* body(plain)
      const plainEvent = yield* proxyEvent(session.id, (e) => dataOf(e)["provider"] === "anthropic")
      expect(dataOf(plainEvent)).toMatchObject({
        model: "claude-test-1",
        inputTokens: 12,
        outputTokens: 5,
        streamed: false
      })

      // Statistics and metrics count them.
      const stats = yield* rpc.Proxy.Stats()
      expect(
        stats.rows.find((row) => row.provider === "openai" && row.model === "gpt-test-1")?.inputTokens
      ).toBeGreaterThanOrEqual(12)
      const metrics = yield* body(
        yield* call(`${server.url}/metrics`, { headers: { authorization: `Bearer ${server.token}` } })
      )
      expect(metrics).toMatch(/vibes_proxy_requests_total\{[^}]*provider="anthropic"/)
      expect(metrics).toMatch(/vibes_proxy_tokens_total\{[^}]*direction="output"/)

      // Once the session has ended, its token is refused.
      yield* rpc.Sessions.Close({ sessionId: session.id })
      const after = yield* call(`${vars["ANTHROPIC_BASE_URL"]}/v1/messages`, {
        method: "POST",
        headers: { "x-api-key": token, "content-type": "application/json" },
        body: anthropicRequest(false)
      })
      expect(after.status).toBe(401)
      yield* body(after)
    })
  )

  it.scoped("the official OpenAI and Anthropic SDKs work through it with a vibes token", () =>
    Effect.gen(function* () {
      const { server } = yield* ProxyEnv
      const client = yield* freshClient
      const openai = new OpenAI({
        baseURL: `${server.url}/proxy/openai/v1`,
        apiKey: client.token,
        maxRetries: 0
      })
      const anthropic = new Anthropic({
        baseURL: `${server.url}/proxy/anthropic`,
        apiKey: client.token,
        maxRetries: 0
      })

      const completion = yield* Effect.promise(() =>
        openai.chat.completions.create({ model: "gpt-sdk", messages: [{ role: "user", content: "hi" }] })
      )
      expect(completion.choices[0]?.message.content).toBe("Hello world!")
      const streamed = yield* Effect.promise(async () => {
        let text = ""
        const stream = await openai.chat.completions.create({
          model: "gpt-sdk",
          stream: true,
          stream_options: { include_usage: true },
          messages: [{ role: "user", content: "hi" }]
        })
        for await (const chunk of stream) text += chunk.choices[0]?.delta.content ?? ""
        return text
      })
      expect(streamed).toBe("Hello world!")

      const message = yield* Effect.promise(() =>
        anthropic.messages.create({
          model: "claude-sdk",
          max_tokens: 32,
          messages: [{ role: "user", content: "hi" }]
        })
      )
      expect(message.usage).toMatchObject({ input_tokens: 12, output_tokens: 5 })
      const final = yield* Effect.promise(() =>
        anthropic.messages
          .stream({ model: "claude-sdk", max_tokens: 32, messages: [{ role: "user", content: "hi" }] })
          .finalMessage()
      )
      expect(final.content[0]).toMatchObject({ type: "text", text: "Hello world!" })

      // A wrong token is the SDK's own authentication error.
      const refused = yield* Effect.promise(() =>
        new OpenAI({ baseURL: `${server.url}/proxy/openai/v1`, apiKey: "wrong", maxRetries: 0 }).models
          .list()
          .then(
            () => undefined,
            (error: unknown) => error
          )
      )
      expect(refused).toBeInstanceOf(OpenAI.AuthenticationError)
      const events = yield* proxyEvent(
        client.sessionId,
        (e) => dataOf(e)["model"] === "claude-sdk" && dataOf(e)["streamed"] === true
      )
      expect(dataOf(events)).toMatchObject({ inputTokens: 12, outputTokens: 5, status: 200 })
    })
  )
})
