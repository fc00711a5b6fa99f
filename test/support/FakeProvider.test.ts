import { describe, expect, it } from "@effect/vitest"
import { Effect, Fiber, Option } from "effect"
import * as FakeProvider from "./FakeProvider.js"

const post = (url: string, headers: Record<string, string>, body: string, signal?: AbortSignal) =>
  Effect.promise(() =>
    fetch(url, {
      method: "POST",
      headers: { "content-type": "application/json", ...headers },
      body,
      ...(signal === undefined ? {} : { signal })
    })
  )

const text = (response: Response) => Effect.promise(() => response.text())

/** The `event:` names and parsed `data:` of an SSE body. */
const events = (body: string) =>
  body
    .split("\n\n")
    .filter((frame) => frame !== "")
    .map((frame) => {
      const lines = frame.split("\n")
      const name = lines.find((line) => line.startsWith("event: "))?.slice(7) ?? "message"
      const data = lines.find((line) => line.startsWith("data: "))?.slice(6) ?? ""
      return { name, data: data === "[DONE]" ? data : (JSON.parse(data) as Record<string, unknown>) }
    })

describe("FakeProvider", () => {
  it.scoped("answers Anthropic messages as JSON and records the request", () =>
    Effect.gen(function* () {
      const fake = yield* FakeProvider.make({ apiKey: "k1" })
      const body = JSON.stringify({ model: "claude-x", max_tokens: 10, messages: [] })
      const response = yield* post(`${fake.url}/v1/messages?beta=true`, { "x-api-key": "k1" }, body)
      expect(response.status).toBe(200)
      expect(JSON.parse(yield* text(response))).toMatchObject({
        type: "message",
        model: "claude-x",
        content: [{ type: "text", text: "Hello world!" }],
        stop_reason: "end_turn",
        usage: { input_tokens: 12, output_tokens: 5 }
      })
      const recorded = yield* fake.request(0)
      yield* recorded.finished
      expect(recorded).toMatchObject({
        method: "POST",
        path: "/v1/messages",
        query: "beta=true",
        aborted: false
      })
      expect(recorded.headers["x-api-key"]).toBe("k1")
      expect(recorded.body.toString()).toBe(body)
    })
  )

  it.scoped("streams Anthropic events with usage in message_start and message_delta", () =>
    Effect.gen(function* () {
      const fake = yield* FakeProvider.make({ apiKey: "k1", inputTokens: 7, chunks: ["a", "b"] })
      const response = yield* post(`${fake.url}/v1/messages`, { "x-api-key": "k1" }, '{"stream":true}')
      expect(response.headers.get("content-type")).toBe("text/event-stream")
      const received = events(yield* text(response))
      expect(received.map((e) => e.name)).toEqual([
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop"
      ])
      expect(received[0]?.data).toMatchObject({ message: { usage: { input_tokens: 7, output_tokens: 1 } } })
      expect(received[3]?.data).toMatchObject({ delta: { type: "text_delta", text: "b" } })
      expect(received[5]?.data).toMatchObject({ usage: { output_tokens: 2 } })
    })
  )

  it.scoped("answers OpenAI chat completions as JSON", () =>
    Effect.gen(function* () {
      const fake = yield* FakeProvider.make({ apiKey: "k2", outputTokens: 9 })
      const response = yield* post(`${fake.url}/v1/chat/completions`, { authorization: "Bearer k2" }, "{}")
      expect(JSON.parse(yield* text(response))).toMatchObject({
        object: "chat.completion",
        choices: [{ message: { role: "assistant", content: "Hello world!" }, finish_reason: "stop" }],
        usage: { prompt_tokens: 12, completion_tokens: 9, total_tokens: 21 }
      })
    })
  )

  it.scoped("streams OpenAI chunks, then the usage chunk when asked, then [DONE]", () =>
    Effect.gen(function* () {
      const fake = yield* FakeProvider.make({ apiKey: "k2", chunks: ["x", "y"] })
      const body = JSON.stringify({ stream: true, stream_options: { include_usage: true } })
      const response = yield* post(`${fake.url}/v1/chat/completions`, { authorization: "Bearer k2" }, body)
      const received = events(yield* text(response)).map((e) => e.data)
      expect(received).toHaveLength(5)
      expect(received[0]).toMatchObject({ choices: [{ delta: { role: "assistant", content: "x" } }] })
      expect(received[1]).toMatchObject({ choices: [{ delta: { content: "y" }, finish_reason: null }] })
      expect(received[2]).toMatchObject({ choices: [{ delta: {}, finish_reason: "stop" }] })
      expect(received[3]).toMatchObject({
        choices: [],
        usage: { prompt_tokens: 12, completion_tokens: 2, total_tokens: 14 }
      })
      expect(received[4]).toBe("[DONE]")
    })
  )

  it.scoped("rejects a wrong key in each API's error format", () =>
    Effect.gen(function* () {
      const fake = yield* FakeProvider.make({ apiKey: "right" })
      const anthropic = yield* post(`${fake.url}/v1/messages`, { "x-api-key": "wrong" }, "{}")
      expect(anthropic.status).toBe(401)
      expect(JSON.parse(yield* text(anthropic))).toEqual({
        type: "error",
        error: { type: "authentication_error", message: "invalid x-api-key" }
      })
      const openai = yield* post(`${fake.url}/v1/chat/completions`, {}, "{}")
      expect(openai.status).toBe(401)
      expect(JSON.parse(yield* text(openai))).toMatchObject({ error: { code: "invalid_api_key" } })
    })
  )

  it.scoped("answers bad JSON with 400, unknown paths with 404, and the Responses API and models", () =>
    Effect.gen(function* () {
      const fake = yield* FakeProvider.make()
      const auth = { authorization: `Bearer ${fake.apiKey}` }
      const bad = yield* post(`${fake.url}/v1/messages`, { "x-api-key": fake.apiKey }, "{nope")
      expect(bad.status).toBe(400)
      expect(yield* text(bad)).toContain("JSON")
      expect((yield* post(`${fake.url}/v2/nothing`, auth, "{}")).status).toBe(404)
      const responses = yield* post(`${fake.url}/v1/responses`, auth, '{"model":"gpt-x"}')
      expect(JSON.parse(yield* text(responses))).toMatchObject({
        object: "response",
        model: "gpt-x",
        usage: { input_tokens: 12, output_tokens: 5, total_tokens: 17 }
      })
      const streamed = yield* post(`${fake.url}/v1/responses`, auth, '{"stream":true}')
      const received = events(yield* text(streamed))
      expect(received.at(-1)).toMatchObject({
        name: "response.completed",
        data: { response: { usage: { input_tokens: 12, output_tokens: 5 } } }
      })
      const models = yield* Effect.promise(() => fetch(`${fake.url}/v1/models`, { headers: auth }))
      expect(JSON.parse(yield* text(models))).toMatchObject({ object: "list", data: [{ id: "fake-model" }] })
    })
  )

  it.scoped("answers scripted statuses in order, then normally", () =>
    Effect.gen(function* () {
      const fake = yield* FakeProvider.make({ apiKey: "k" })
      yield* fake.enqueue(
        FakeProvider.Behaviour.Status({ status: 429, headers: { "retry-after": "2" } }),
        FakeProvider.Behaviour.Status({ status: 503, body: "down" })
      )
      const call = post(`${fake.url}/v1/messages`, { "x-api-key": "k" }, "{}")
      const limited = yield* call
      expect(limited.status).toBe(429)
      expect(limited.headers.get("retry-after")).toBe("2")
      expect(JSON.parse(yield* text(limited))).toMatchObject({
        type: "error",
        error: { type: "rate_limit_error" }
      })
      const down = yield* call
      expect([down.status, yield* text(down)]).toEqual([503, "down"])
      expect((yield* call).status).toBe(200)
    })
  )

  it.scoped("holds a gated stream after its first event until released", () =>
    Effect.gen(function* () {
      const fake = yield* FakeProvider.make({ apiKey: "k" })
      const gate = yield* fake.enqueueGated
      const response = yield* post(`${fake.url}/v1/messages`, { "x-api-key": "k" }, '{"stream":true}')
      yield* gate.firstSent
      const reader = response.body?.getReader()
      if (reader === undefined) return expect.fail("no body")
      const first = yield* Effect.promise(() => reader.read())
      expect(new TextDecoder().decode(first.value)).toMatch(/^event: message_start\n.*\n\n$/)
      const finished = yield* Effect.fork((yield* fake.request(0)).finished)
      yield* Effect.yieldNow()
      expect(Option.isNone(yield* Fiber.poll(finished))).toBe(true)
      yield* gate.release
      let rest = ""
      for (;;) {
        const next = yield* Effect.promise(() => reader.read())
        if (next.done) break
        rest += new TextDecoder().decode(next.value)
      }
      expect(events(rest).at(-1)?.name).toBe("message_stop")
      yield* Fiber.join(finished)
      expect(fake.requests[0]?.aborted).toBe(false)
    })
  )

  it.scoped("sees a client abort of a hanging request, and destroys connections on cue", () =>
    Effect.gen(function* () {
      const fake = yield* FakeProvider.make({ apiKey: "k" })
      yield* fake.enqueue(
        FakeProvider.Behaviour.Hang(),
        FakeProvider.Behaviour.Destroy({ afterFirstChunk: true })
      )
      const controller = new AbortController()
      const hanging = yield* Effect.fork(
        Effect.either(
          Effect.tryPromise(() =>
            fetch(`${fake.url}/v1/messages`, { method: "POST", body: "{}", signal: controller.signal })
          )
        )
      )
      yield* fake.request(0)
      controller.abort()
      yield* fake.untilAborted(0)
      yield* Fiber.join(hanging)
      const broken = yield* post(`${fake.url}/v1/messages`, { "x-api-key": "k" }, '{"stream":true}')
      const read = yield* Effect.either(Effect.tryPromise(() => broken.text()))
      expect(read._tag).toBe("Left")
      yield* fake.untilAborted(1)
    })
  )
})
