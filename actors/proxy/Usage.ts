/**
 * Token usage and model, read from what passes through the proxy: a JSON response body, or the
 * events of a Server-Sent Events stream as they go by. Both the Anthropic names
 * (`input_tokens`, `output_tokens`) and the OpenAI Chat names (`prompt_tokens`,
 * `completion_tokens`) are understood, at the places each API puts them.
 */

/** What was learnt about a response. */
export interface Usage {
  model: string | null
  /** As the provider reports it: OpenAI's includes the cached tokens, Anthropic's does not. */
  inputTokens: number | null
  outputTokens: number | null
  /** Cached input tokens read (Anthropic `cache_read_input_tokens`, OpenAI `cached_tokens`). */
  cacheReadTokens?: number | null
  /** Input tokens written to the cache (Anthropic `cache_creation_input_tokens`). */
  cacheWriteTokens?: number | null
}

/** The tokens of `usage` with the cached ones kept apart from the input, as prices want them. */
export const priced = (usage: Usage, format: "anthropic" | "openai") => {
  const cacheRead = usage.cacheReadTokens ?? null
  return {
    inputTokens:
      usage.inputTokens === null
        ? null
        : format === "openai"
          ? Math.max(0, usage.inputTokens - (cacheRead ?? 0))
          : usage.inputTokens,
    outputTokens: usage.outputTokens,
    cacheReadTokens: cacheRead,
    cacheWriteTokens: usage.cacheWriteTokens ?? null
  }
}

const isRecord = (value: unknown): value is Record<string, unknown> =>
  typeof value === "object" && value !== null && !Array.isArray(value)

const count = (value: unknown): number | null =>
  typeof value === "number" && Number.isInteger(value) && value >= 0 ? value : null

/** Folds a `usage` object into `into`: later values win (a stream's totals grow). */
const takeUsage = (usage: unknown, into: Usage) => {
  if (!isRecord(usage)) return
  const input = count(usage["input_tokens"]) ?? count(usage["prompt_tokens"])
  const output = count(usage["output_tokens"]) ?? count(usage["completion_tokens"])
  if (input !== null && (into.inputTokens === null || input > 0)) into.inputTokens = input
  if (output !== null && (into.outputTokens === null || output > 0)) into.outputTokens = output
  const details = usage["prompt_tokens_details"] ?? usage["input_tokens_details"]
  const cacheRead =
    count(usage["cache_read_input_tokens"]) ?? (isRecord(details) ? count(details["cached_tokens"]) : null)
  const cacheWrite = count(usage["cache_creation_input_tokens"])
  if (cacheRead !== null && ((into.cacheReadTokens ?? null) === null || cacheRead > 0))
    into.cacheReadTokens = cacheRead
  if (cacheWrite !== null && ((into.cacheWriteTokens ?? null) === null || cacheWrite > 0))
    into.cacheWriteTokens = cacheWrite
}

const takeModel = (value: unknown, into: Usage) => {
  if (typeof value === "string" && value !== "" && into.model === null) into.model = value
}

/**
 * Reads one JSON document (a whole response body, or one stream event's data): the usage at
 * its top level, in `message` (Anthropic's `message_start`) or in `response` (OpenAI Responses).
 */
export const fromDocument = (document: unknown, into: Usage): void => {
  if (!isRecord(document)) return
  takeModel(document["model"], into)
  takeUsage(document["usage"], into)
  for (const nested of [document["message"], document["response"]]) {
    if (isRecord(nested)) {
      takeModel(nested["model"], into)
      takeUsage(nested["usage"], into)
    }
  }
}

/** The model a request asks for, when its body is JSON with a `model`; else null. */
export const requestModel = (body: Buffer, contentType: string | undefined): string | null => {
  if (body.length === 0 || body.length > 4 * 1024 * 1024) return null
  if (contentType !== undefined && !contentType.includes("json")) return null
  try {
    const parsed: unknown = JSON.parse(body.toString("utf8"))
    return isRecord(parsed) && typeof parsed["model"] === "string" ? parsed["model"] : null
  } catch {
    return null
  }
}

/** Collects a JSON response body (up to `limit` bytes) and reads it at the end. */
export class JsonReader {
  private readonly chunks: Array<Buffer> = []
  private size = 0
  constructor(private readonly limit = 8 * 1024 * 1024) {}

  push(chunk: Buffer): void {
    if (this.size > this.limit) return
    this.size += chunk.length
    if (this.size <= this.limit) this.chunks.push(chunk)
  }

  end(into: Usage): void {
    if (this.size === 0 || this.size > this.limit) return
    try {
      fromDocument(JSON.parse(Buffer.concat(this.chunks).toString("utf8")), into)
    } catch {
      // Not JSON after all: no usage.
    }
  }
}

/**
 * Reads a Server-Sent Events stream chunk by chunk: each `data:` line that holds a JSON object
 * with usage or a model is read. Lines split across chunks are joined; a line longer than
 * `maxLine` is skipped.
 */
export class SseReader {
  private partial = ""
  private skipping = false
  constructor(
    private readonly into: Usage,
    private readonly maxLine = 1024 * 1024
  ) {}

  push(chunk: Buffer): void {
    const text = chunk.toString("utf8")
    let start = 0
    for (;;) {
      const newline = text.indexOf("\n", start)
      if (newline === -1) {
        if (!this.skipping) this.partial += text.slice(start)
        if (this.partial.length > this.maxLine) {
          this.partial = ""
          this.skipping = true
        }
        return
      }
      const line = this.skipping ? "" : this.partial + text.slice(start, newline)
      this.partial = ""
      this.skipping = false
      this.line(line)
      start = newline + 1
    }
  }

  private line(raw: string): void {
    const line = raw.endsWith("\r") ? raw.slice(0, -1) : raw
    if (!line.startsWith("data:")) return
    const data = line.slice(line.startsWith("data: ") ? 6 : 5)
    if (!data.startsWith("{") || (!data.includes('"usage"') && !data.includes('"model"'))) return
    try {
      fromDocument(JSON.parse(data), this.into)
    } catch {
      // A data line that is not JSON: passed through, not read.
    }
  }
}
