/**
 * What a proxied request and its answer said, read from their bodies: the request's system prompt
 * and messages (Anthropic Messages, OpenAI Chat Completions, OpenAI Responses), and the answer
 * assembled into blocks (text, thinking, tool calls), stop reason, usage and id, from a JSON body
 * or from the Server-Sent Events of a stream. A streamed answer assembles to the same blocks as
 * the plain one. Nothing here runs on the request path: the recorder calls it afterwards.
 *
 * The thread of a request is a chain of hashes over its messages: the hash after message `i`
 * covers the system prompt and messages `0..i`, so a request that extends an earlier one carries
 * that one's full-chain hash among its own prefixes.
 */
import * as crypto from "node:crypto"
import type { Block, TurnApi } from "../../rpc/Conversations.js"

/** A JSON value's record view. */
type Json = Record<string, unknown>

const isRecord = (value: unknown): value is Json =>
  typeof value === "object" && value !== null && !Array.isArray(value)

const str = (value: unknown): string | null => (typeof value === "string" ? value : null)

const count = (value: unknown): number | null =>
  typeof value === "number" && Number.isInteger(value) && value >= 0 ? value : null

/** The API a request path speaks, or null when it is not a turn (model lists, token counts). */
export const apiOf = (method: string, path: string): TurnApi | null => {
  if (method !== "POST") return null
  const bare = path.split("?")[0] ?? path
  if (bare.endsWith("/messages")) return "anthropic.messages"
  if (bare.endsWith("/chat/completions")) return "openai.chat"
  if (bare.endsWith("/responses")) return "openai.responses"
  return null
}

// Messages ------------------------------------------------------------------------------------

/** Text of a content value: a string, or the text of its text blocks. */
const textOf = (content: unknown): string => {
  if (typeof content === "string") return content
  if (!Array.isArray(content)) return ""
  return content
    .map((part) => (isRecord(part) ? (str(part["text"]) ?? str(part["content"]) ?? "") : ""))
    .filter((text) => text !== "")
    .join("\n")
}

const json = (value: unknown): string => (typeof value === "string" ? value : JSON.stringify(value ?? null))

/** The blocks of one content part, in any of the three APIs' shapes. */
const blockOf = (part: unknown): Block => {
  if (typeof part === "string") return { _tag: "text", text: part }
  if (!isRecord(part)) return { _tag: "other", kind: typeof part }
  const type = str(part["type"]) ?? "unknown"
  switch (type) {
    case "text":
    case "input_text":
    case "output_text":
      return { _tag: "text", text: str(part["text"]) ?? "" }
    case "thinking":
      return { _tag: "thinking", text: str(part["thinking"]) ?? "" }
    case "tool_use":
      return {
        _tag: "tool_call",
        id: str(part["id"]) ?? "",
        name: str(part["name"]) ?? "",
        input: json(part["input"])
      }
    case "function_call":
      return {
        _tag: "tool_call",
        id: str(part["call_id"]) ?? str(part["id"]) ?? "",
        name: str(part["name"]) ?? "",
        input: json(part["arguments"])
      }
    case "tool_result":
      return {
        _tag: "tool_result",
        id: str(part["tool_use_id"]) ?? "",
        content: textOf(part["content"]),
        isError: part["is_error"] === true
      }
    case "function_call_output":
      return {
        _tag: "tool_result",
        id: str(part["call_id"]) ?? "",
        content: typeof part["output"] === "string" ? part["output"] : textOf(part["output"]),
        isError: false
      }
    case "message":
      return { _tag: "text", text: textOf(part["content"]) }
    default:
      return { _tag: "other", kind: type }
  }
}

/** A message as a turn shows it. */
export interface Message {
  readonly role: string
  readonly blocks: ReadonlyArray<Block>
}

/** One message of the request, in any API's shape. */
const messageOf = (item: unknown): Message => {
  if (!isRecord(item)) return { role: "user", blocks: [blockOf(item)] }
  const type = str(item["type"])
  // Responses input items that are not messages (function calls and their outputs).
  if (type !== null && type !== "message" && item["role"] === undefined) {
    return { role: type === "function_call_output" ? "tool" : "assistant", blocks: [blockOf(item)] }
  }
  const role = str(item["role"]) ?? "user"
  const blocks: Array<Block> = []
  const content = item["content"]
  if (typeof content === "string") {
    if (role === "tool") {
      blocks.push({ _tag: "tool_result", id: str(item["tool_call_id"]) ?? "", content, isError: false })
    } else if (content !== "") blocks.push({ _tag: "text", text: content })
  } else if (Array.isArray(content)) {
    for (const part of content) blocks.push(blockOf(part))
  }
  const toolCalls = item["tool_calls"]
  if (Array.isArray(toolCalls)) {
    for (const call of toolCalls) {
      if (!isRecord(call)) continue
      const fn = isRecord(call["function"]) ? call["function"] : {}
      blocks.push({
        _tag: "tool_call",
        id: str(call["id"]) ?? "",
        name: str(fn["name"]) ?? "",
        input: json(fn["arguments"])
      })
    }
  }
  return { role, blocks }
}

/** What a request said. */
export interface RequestView {
  readonly model: string | null
  readonly system: string | null
  /** The conversation so far, as sent (raw items, for hashing). */
  readonly items: ReadonlyArray<unknown>
  readonly previousResponseId: string | null
}

/** Reads a request body of `api`; null when it is not a JSON object. */
export const readRequest = (api: TurnApi, body: unknown): RequestView | null => {
  if (!isRecord(body)) return null
  const model = str(body["model"])
  if (api === "anthropic.messages") {
    const system = body["system"]
    return {
      model,
      system: system === undefined ? null : textOf(system),
      items: Array.isArray(body["messages"]) ? body["messages"] : [],
      previousResponseId: null
    }
  }
  if (api === "openai.chat") {
    return {
      model,
      system: null,
      items: Array.isArray(body["messages"]) ? body["messages"] : [],
      previousResponseId: null
    }
  }
  const input = body["input"]
  return {
    model,
    system: str(body["instructions"]),
    items: Array.isArray(input) ? input : input === undefined ? [] : [{ role: "user", content: input }],
    previousResponseId: str(body["previous_response_id"])
  }
}

/** The request's messages from `from` on, as a turn shows them. */
export const messages = (view: RequestView, from = 0): ReadonlyArray<Message> =>
  view.items.slice(from).map(messageOf)

// Threading -----------------------------------------------------------------------------------

/**
 * A value as JSON with sorted keys and without `cache_control` (agents move their cache
 * breakpoints from turn to turn; the conversation is the same).
 */
const canonical = (value: unknown): string => {
  if (Array.isArray(value)) return `[${value.map(canonical).join(",")}]`
  if (isRecord(value)) {
    const keys = Object.keys(value)
      .filter((key) => key !== "cache_control" && value[key] !== undefined)
      .sort()
    return `{${keys.map((key) => `${JSON.stringify(key)}:${canonical(value[key])}`).join(",")}}`
  }
  return JSON.stringify(value ?? null)
}

/** The chain of hashes of a request: element `i` covers the system prompt and items `0..i`. */
export const chain = (view: RequestView): ReadonlyArray<Buffer> => {
  let previous = crypto
    .createHash("sha256")
    .update(`vibes-thread\0${view.system ?? ""}`)
    .digest()
  return view.items.map((item) => {
    previous = crypto.createHash("sha256").update(previous).update(canonical(item)).digest()
    return previous
  })
}

// Answers -------------------------------------------------------------------------------------

/** An answer, assembled. */
export interface Assembled {
  id: string | null
  model: string | null
  blocks: Array<Block>
  stopReason: string | null
  inputTokens: number | null
  outputTokens: number | null
  cacheReadTokens: number | null
  cacheWriteTokens: number | null
  /** The error the provider answered with, when it did. */
  error: string | null
}

const empty = (): Assembled => ({
  id: null,
  model: null,
  blocks: [],
  stopReason: null,
  inputTokens: null,
  outputTokens: null,
  cacheReadTokens: null,
  cacheWriteTokens: null,
  error: null
})

/** Folds a usage object of any API into `into`; later non-zero values win (stream totals grow). */
const takeUsage = (usage: unknown, into: Assembled) => {
  if (!isRecord(usage)) return
  const set = (
    key: "inputTokens" | "outputTokens" | "cacheReadTokens" | "cacheWriteTokens",
    v: number | null
  ) => {
    if (v !== null && (into[key] === null || v > 0)) into[key] = v
  }
  const promptDetails = isRecord(usage["prompt_tokens_details"]) ? usage["prompt_tokens_details"] : null
  const inputDetails = isRecord(usage["input_tokens_details"]) ? usage["input_tokens_details"] : null
  const openaiCached = count(promptDetails?.["cached_tokens"]) ?? count(inputDetails?.["cached_tokens"])
  const prompt = count(usage["prompt_tokens"])
  if (prompt !== null || inputDetails !== null) {
    // OpenAI counts cached tokens inside the input; vibes keeps them apart, as Anthropic does.
    const total = prompt ?? count(usage["input_tokens"])
    if (total !== null) set("inputTokens", Math.max(0, total - (openaiCached ?? 0)))
    set("cacheReadTokens", openaiCached)
    set("outputTokens", count(usage["completion_tokens"]) ?? count(usage["output_tokens"]))
    return
  }
  set("inputTokens", count(usage["input_tokens"]))
  set("outputTokens", count(usage["output_tokens"]))
  set("cacheReadTokens", count(usage["cache_read_input_tokens"]))
  set("cacheWriteTokens", count(usage["cache_creation_input_tokens"]))
}

const errorOf = (document: Json): string | null => {
  const error = document["error"]
  if (isRecord(error)) return str(error["message"]) ?? JSON.stringify(error)
  return typeof error === "string" ? error : null
}

/** A whole (non-streamed) answer of `api`. */
const fromDocument = (api: TurnApi, document: unknown, into: Assembled) => {
  if (!isRecord(document)) return
  const error = errorOf(document)
  if (error !== null) into.error = error
  into.id = str(document["id"]) ?? into.id
  into.model = str(document["model"]) ?? into.model
  takeUsage(document["usage"], into)
  if (api === "anthropic.messages") {
    const content = document["content"]
    if (Array.isArray(content)) into.blocks = content.map(blockOf)
    into.stopReason = str(document["stop_reason"]) ?? into.stopReason
  } else if (api === "openai.chat") {
    const choices = document["choices"]
    const first = Array.isArray(choices) && isRecord(choices[0]) ? choices[0] : null
    if (first !== null) {
      into.blocks = [...messageOf(first["message"]).blocks]
      into.stopReason = str(first["finish_reason"]) ?? into.stopReason
    }
  } else {
    const output = document["output"]
    if (Array.isArray(output)) {
      into.blocks = output.flatMap((item): Array<Block> => {
        if (!isRecord(item)) return []
        if (item["type"] === "message" && Array.isArray(item["content"])) return item["content"].map(blockOf)
        if (item["type"] === "reasoning") {
          const summary = item["summary"]
          return [{ _tag: "thinking", text: textOf(summary) }]
        }
        return [blockOf(item)]
      })
    }
    const incomplete = isRecord(document["incomplete_details"])
      ? str(document["incomplete_details"]["reason"])
      : null
    into.stopReason = incomplete ?? str(document["status"]) ?? into.stopReason
  }
}

/** Assembles the events of a stream, one `data:` payload at a time. */
class StreamAssembler {
  readonly result = empty()
  /** Anthropic blocks by index, with their tool input JSON as it arrives. */
  private readonly blocks = new Map<number, { block: Block; json: string }>()
  /** OpenAI Chat text and tool calls by index. */
  private text = ""
  private readonly calls = new Map<number, { id: string; name: string; input: string }>()
  /** OpenAI Responses: the completed response, when the stream got that far. */
  private completed = false

  constructor(private readonly api: TurnApi) {}

  event(data: Json): void {
    const into = this.result
    if (this.api === "anthropic.messages") {
      switch (data["type"]) {
        case "message_start":
          if (isRecord(data["message"])) {
            into.id = str(data["message"]["id"])
            into.model = str(data["message"]["model"])
            takeUsage(data["message"]["usage"], into)
          }
          return
        case "content_block_start": {
          const index = count(data["index"]) ?? this.blocks.size
          this.blocks.set(index, { block: blockOf(data["content_block"]), json: "" })
          return
        }
        case "content_block_delta": {
          const entry = this.blocks.get(count(data["index"]) ?? -1)
          const delta = isRecord(data["delta"]) ? data["delta"] : {}
          if (entry === undefined) return
          const block = entry.block
          if (delta["type"] === "text_delta" && block._tag === "text") {
            entry.block = { ...block, text: block.text + (str(delta["text"]) ?? "") }
          } else if (delta["type"] === "thinking_delta" && block._tag === "thinking") {
            entry.block = { ...block, text: block.text + (str(delta["thinking"]) ?? "") }
          } else if (delta["type"] === "input_json_delta") {
            entry.json += str(delta["partial_json"]) ?? ""
          }
          return
        }
        case "message_delta":
          if (isRecord(data["delta"])) into.stopReason = str(data["delta"]["stop_reason"]) ?? into.stopReason
          takeUsage(data["usage"], into)
          return
        case "error":
          into.error = errorOf(data)
          return
        default:
          return
      }
    }
    if (this.api === "openai.chat") {
      into.id = into.id ?? str(data["id"])
      into.model = into.model ?? str(data["model"])
      takeUsage(data["usage"], into)
      const error = errorOf(data)
      if (error !== null) into.error = error
      const choices = data["choices"]
      const first = Array.isArray(choices) && isRecord(choices[0]) ? choices[0] : null
      if (first === null) return
      into.stopReason = str(first["finish_reason"]) ?? into.stopReason
      const delta = isRecord(first["delta"]) ? first["delta"] : {}
      this.text += str(delta["content"]) ?? ""
      const toolCalls = delta["tool_calls"]
      if (Array.isArray(toolCalls)) {
        for (const call of toolCalls) {
          if (!isRecord(call)) continue
          const index = count(call["index"]) ?? this.calls.size
          const entry = this.calls.get(index) ?? { id: "", name: "", input: "" }
          const fn = isRecord(call["function"]) ? call["function"] : {}
          entry.id = entry.id || (str(call["id"]) ?? "")
          entry.name = entry.name || (str(fn["name"]) ?? "")
          entry.input += str(fn["arguments"]) ?? ""
          this.calls.set(index, entry)
        }
      }
      return
    }
    const type = str(data["type"])
    if (type === "response.completed" || type === "response.incomplete" || type === "response.failed") {
      fromDocument(this.api, data["response"], into)
      this.completed = true
    } else if (type === "response.created" && isRecord(data["response"])) {
      into.id = str(data["response"]["id"])
      into.model = str(data["response"]["model"])
    } else if (type === "response.output_text.delta" && !this.completed) {
      this.text += str(data["delta"]) ?? ""
    } else if (type === "error") {
      into.error = str(data["message"]) ?? errorOf(data)
    }
  }

  end(): Assembled {
    const into = this.result
    if (this.api === "anthropic.messages") {
      into.blocks = [...this.blocks.entries()]
        .sort(([a], [b]) => a - b)
        .map(([, { block, json }]) => {
          if (block._tag !== "tool_call" || json === "") return block
          try {
            return { ...block, input: JSON.stringify(JSON.parse(json)) }
          } catch {
            return { ...block, input: json }
          }
        })
    } else if (this.api === "openai.chat") {
      into.blocks = [
        ...(this.text === "" ? [] : [{ _tag: "text" as const, text: this.text }]),
        ...[...this.calls.entries()]
          .sort(([a], [b]) => a - b)
          .map(([, call]) => ({
            _tag: "tool_call" as const,
            id: call.id,
            name: call.name,
            input: call.input
          }))
      ]
    } else if (!this.completed && this.text !== "") {
      into.blocks = [{ _tag: "text", text: this.text }]
    }
    return into
  }
}

/** Splits a Server-Sent Events body into the JSON objects of its `data:` fields. */
const sseData = (body: string): Array<Json> => {
  const out: Array<Json> = []
  for (const raw of body.split(/\r?\n\r?\n/)) {
    const data = raw
      .split(/\r?\n/)
      .filter((line) => line.startsWith("data:"))
      .map((line) => line.slice(line.startsWith("data: ") ? 6 : 5))
      .join("\n")
    if (!data.startsWith("{")) continue
    try {
      const parsed: unknown = JSON.parse(data)
      if (isRecord(parsed)) out.push(parsed)
    } catch {
      // Not JSON: the client got it, the assembly skips it.
    }
  }
  return out
}

/** Assembles an answer of `api` from its body as the client received it. */
export const assemble = (api: TurnApi, body: string, streamed: boolean): Assembled => {
  if (streamed) {
    const assembler = new StreamAssembler(api)
    for (const data of sseData(body)) assembler.event(data)
    return assembler.end()
  }
  const result = empty()
  try {
    fromDocument(api, JSON.parse(body), result)
  } catch {
    if (body.trim() !== "") result.error = body.slice(0, 1000)
  }
  return result
}

/** The text of blocks for search and previews. */
export const blocksText = (blocks: ReadonlyArray<Block>): string =>
  blocks
    .map((block) => {
      switch (block._tag) {
        case "text":
        case "thinking":
          return block.text
        case "tool_call":
          return `${block.name} ${block.input}`
        case "tool_result":
          return block.content
        case "other":
          return ""
      }
    })
    .filter((text) => text !== "")
    .join("\n")
