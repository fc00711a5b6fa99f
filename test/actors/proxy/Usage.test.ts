import { describe, expect, it } from "@effect/vitest"
import { CircuitBreaker, RateLimiter } from "../../../actors/proxy/Guards.js"
import * as Usage from "../../../actors/proxy/Usage.js"

const empty = (): Usage.Usage => ({ model: null, inputTokens: null, outputTokens: null })

/** Feeds `text` to an SSE reader in pieces of `size` bytes. */
const sse = (text: string, size: number) => {
  const usage = empty()
  const reader = new Usage.SseReader(usage)
  const bytes = Buffer.from(text)
  for (let i = 0; i < bytes.length; i += size) reader.push(bytes.subarray(i, i + size))
  return usage
}

describe("usage", () => {
  it("is read from Anthropic, OpenAI Chat and OpenAI Responses streams, however the bytes are split", () => {
    const anthropic =
      'event: message_start\r\ndata: {"type":"message_start","message":{"model":"claude-x","usage":{"input_tokens":25,"output_tokens":1}}}\r\n\r\n' +
      'event: content_block_delta\ndata: {"type":"content_block_delta","delta":{"type":"text_delta","text":"usage \\"model\\""}}\n\n' +
      'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":15}}\n\n'
    const chat =
      'data: {"model":"gpt-x","choices":[{"delta":{"content":"hi"}}],"usage":null}\n\n' +
      'data: {"model":"gpt-x","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4,"total_tokens":13}}\n\ndata: [DONE]\n\n'
    const responses =
      'event: response.created\ndata: {"type":"response.created","response":{"model":"gpt-r","usage":null}}\n\n' +
      'event: response.completed\ndata: {"type":"response.completed","response":{"model":"gpt-r","usage":{"input_tokens":7,"output_tokens":3}}}\n\n'
    for (const size of [1, 7, 64, 100_000]) {
      expect(sse(anthropic, size)).toEqual({ model: "claude-x", inputTokens: 25, outputTokens: 15 })
      expect(sse(chat, size)).toEqual({ model: "gpt-x", inputTokens: 9, outputTokens: 4 })
      expect(sse(responses, size)).toEqual({ model: "gpt-r", inputTokens: 7, outputTokens: 3 })
    }
    // Not JSON, or no usage at all: nothing is made up.
    expect(sse('data: {not json, "usage"\n\ndata: hello\n\n', 5)).toEqual(empty())
  })

  it("is read from a JSON body (both APIs), and the request's model from its body", () => {
    const read = (body: string) => {
      const usage = empty()
      const reader = new Usage.JsonReader()
      reader.push(Buffer.from(body.slice(0, 10)))
      reader.push(Buffer.from(body.slice(10)))
      reader.end(usage)
      return usage
    }
    expect(read('{"model":"claude-x","usage":{"input_tokens":3,"output_tokens":2}}')).toEqual({
      model: "claude-x",
      inputTokens: 3,
      outputTokens: 2
    })
    expect(read('{"model":"gpt-x","usage":{"prompt_tokens":5,"completion_tokens":6}}')).toMatchObject({
      inputTokens: 5,
      outputTokens: 6
    })
    expect(read("{oops")).toEqual(empty())
    expect(Usage.requestModel(Buffer.from('{"model":"m1"}'), "application/json")).toBe("m1")
    expect(Usage.requestModel(Buffer.from("{oops"), "application/json")).toBeNull()
    expect(Usage.requestModel(Buffer.from('{"model":"m1"}'), "text/plain")).toBeNull()
  })
})

describe("guards", () => {
  it("a token bucket allows the burst, then the rate, and says how long to wait", () => {
    const limiter = new RateLimiter(2, 3)
    expect([0, 0, 0].map(() => limiter.take("a", 1000))).toEqual([0, 0, 0])
    expect(limiter.take("a", 1000)).toBeCloseTo(0.5)
    expect(limiter.take("b", 1000)).toBe(0)
    expect(limiter.take("a", 1500)).toBe(0)
    expect(limiter.take("a", 1500)).toBeGreaterThan(0)
    expect(new RateLimiter(0, 1).take("a", 0)).toBe(0)
  })

  it("a circuit opens after the failures in a row, lets one trial through when it half-opens, and closes on success", () => {
    const circuit = new CircuitBreaker({ failures: 2, openMs: 1000 })
    circuit.failed(0)
    expect(circuit.state(0)).toBe("closed")
    circuit.succeeded()
    circuit.failed(0)
    circuit.failed(10)
    expect(circuit.state(10)).toBe("open")
    expect(circuit.admit(500)).toMatchObject({ ok: false })
    expect(circuit.state(1010)).toBe("half-open")
    expect(circuit.admit(1010)).toEqual({ ok: true })
    expect(circuit.admit(1011)).toMatchObject({ ok: false })
    circuit.failed(1020)
    expect(circuit.state(1500)).toBe("open")
    expect(circuit.admit(2020)).toEqual({ ok: true })
    circuit.succeeded()
    expect(circuit.state(2021)).toBe("closed")
    expect(circuit.admit(2021)).toEqual({ ok: true })
  })
})
