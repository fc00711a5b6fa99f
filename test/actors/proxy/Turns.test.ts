import { describe, expect, it } from "@effect/vitest"
import * as Prices from "../../../actors/proxy/Prices.js"
import * as Recorder from "../../../actors/proxy/Recorder.js"
import * as Turns from "../../../actors/proxy/Turns.js"

const view = (messages: ReadonlyArray<unknown>, system = "sys") =>
  Turns.readRequest("anthropic.messages", { model: "m", system, messages }) ?? {
    items: [],
    system: null,
    model: null,
    previousResponseId: null
  }

describe("Turns", () => {
  it("a request that extends another carries the other's whole chain among its prefixes", () => {
    const first = [{ role: "user", content: "hi" }]
    const second = [...first, { role: "assistant", content: "hello" }, { role: "user", content: "more" }]
    const a = Turns.chain(view(first))
    const b = Turns.chain(view(second))
    expect(b[0]?.equals(a[a.length - 1] ?? Buffer.alloc(0))).toBe(true)
    // Another system prompt is another conversation.
    expect(Turns.chain(view(second, "other"))[0]?.equals(a[0] ?? Buffer.alloc(0))).toBe(false)
  })

  it("moved cache breakpoints and key order do not change the chain", () => {
    const plain = [{ role: "user", content: [{ type: "text", text: "hi" }] }]
    const marked = [
      { content: [{ text: "hi", type: "text", cache_control: { type: "ephemeral" } }], role: "user" }
    ]
    expect(Turns.chain(view(plain))[0]?.equals(Turns.chain(view(marked))[0] ?? Buffer.alloc(0))).toBe(true)
  })

  it("an OpenAI Chat stream with tool calls assembles like its plain answer", () => {
    const plain = JSON.stringify({
      id: "c1",
      model: "g",
      choices: [
        {
          index: 0,
          message: {
            role: "assistant",
            content: "Let me look",
            tool_calls: [
              { id: "call_1", type: "function", function: { name: "ls", arguments: '{"dir":"/"}' } }
            ]
          },
          finish_reason: "tool_calls"
        }
      ],
      usage: { prompt_tokens: 100, completion_tokens: 7, prompt_tokens_details: { cached_tokens: 60 } }
    })
    const chunk = (value: unknown) => `data: ${JSON.stringify(value)}\n\n`
    const streamed =
      chunk({
        id: "c1",
        model: "g",
        choices: [{ index: 0, delta: { role: "assistant", content: "Let " } }]
      }) +
      chunk({ id: "c1", model: "g", choices: [{ index: 0, delta: { content: "me look" } }] }) +
      chunk({
        id: "c1",
        choices: [
          {
            index: 0,
            delta: { tool_calls: [{ index: 0, id: "call_1", function: { name: "ls", arguments: '{"di' } }] }
          }
        ]
      }) +
      chunk({
        id: "c1",
        choices: [{ index: 0, delta: { tool_calls: [{ index: 0, function: { arguments: 'r":"/"}' } }] } }]
      }) +
      chunk({ id: "c1", choices: [{ index: 0, delta: {}, finish_reason: "tool_calls" }] }) +
      chunk({
        id: "c1",
        choices: [],
        usage: { prompt_tokens: 100, completion_tokens: 7, prompt_tokens_details: { cached_tokens: 60 } }
      }) +
      "data: [DONE]\n\n"
    const a = Turns.assemble("openai.chat", plain, false)
    const b = Turns.assemble("openai.chat", streamed, true)
    expect(b).toEqual(a)
    expect(a).toMatchObject({
      stopReason: "tool_calls",
      inputTokens: 40,
      cacheReadTokens: 60,
      outputTokens: 7
    })
    expect(a.blocks).toEqual([
      { _tag: "text", text: "Let me look" },
      { _tag: "tool_call", id: "call_1", name: "ls", input: '{"dir":"/"}' }
    ])
  })

  it("only the three conversation APIs are turns", () => {
    expect(Turns.apiOf("POST", "/v1/messages")).toBe("anthropic.messages")
    expect(Turns.apiOf("POST", "/v1/chat/completions?x=1")).toBe("openai.chat")
    expect(Turns.apiOf("POST", "/v1/responses")).toBe("openai.responses")
    expect(Turns.apiOf("POST", "/v1/messages/count_tokens")).toBeNull()
    expect(Turns.apiOf("GET", "/v1/models")).toBeNull()
  })
})

describe("Prices", () => {
  const table = [
    { model: "claude-*", input: 1, output: 1, cacheRead: 0, cacheWrite: 0 },
    { model: "claude-opus-*", input: 15, output: 75, cacheRead: 1.5, cacheWrite: 18.75 },
    { provider: "bedrock", model: "claude-opus-*", input: 16, output: 80, cacheRead: 0, cacheWrite: 0 },
    { model: "claude-opus-4", input: 14, output: 70, cacheRead: 0, cacheWrite: 0 }
  ]

  it("the provider's own entry wins, then an exact model, then the longest prefix", () => {
    expect(Prices.find(table, "bedrock", "claude-opus-4")?.input).toBe(16)
    expect(Prices.find(table, "anthropic", "claude-opus-4")?.input).toBe(14)
    expect(Prices.find(table, "anthropic", "claude-opus-4-1")?.input).toBe(15)
    expect(Prices.find(table, "anthropic", "claude-haiku")?.input).toBe(1)
    expect(Prices.find(table, "anthropic", "gpt-4o")).toBeNull()
  })

  it("a turn costs its tokens at the price per million; no usage or no price is no cost", () => {
    const tokens = { inputTokens: 1000, outputTokens: 2000, cacheReadTokens: 10_000, cacheWriteTokens: 4000 }
    // (1000 × 15 + 2000 × 75 + 10000 × 1.5 + 4000 × 18.75) / 1e6
    expect(Prices.costOf(table, "anthropic", "claude-opus-4-1", tokens)).toBeCloseTo(0.255, 12)
    expect(Prices.costOf(table, "anthropic", "gpt-4o", tokens)).toBeNull()
    const none = { inputTokens: null, outputTokens: null, cacheReadTokens: null, cacheWriteTokens: null }
    expect(Prices.costOf(table, "anthropic", "claude-opus-4-1", none)).toBeNull()
  })
})

describe("Recorder redaction", () => {
  it("replaces secret values, vibes tokens and configured patterns", () => {
    const redact = Recorder.redactor({
      secrets: ["sk-live-0123456789abcdef", "short"],
      patterns: [Recorder.tokenPattern, /ghp_[A-Za-z0-9]{20,}/g]
    })
    const token = `vibes-session.node1_0190e0c2-aaaa-7bbb-8ccc-123456789abc.${"A".repeat(43)}`
    const out = redact(`k=sk-live-0123456789abcdef t=${token} g=ghp_abcdefghijklmnopqrstuvwxyz short`)
    expect(out).toBe("k=[redacted] t=[redacted] g=[redacted] short")
  })
})
