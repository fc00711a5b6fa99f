/**
 * The local upstream of the proxy benchmark: a small, fast OpenAI-like server, plain `node:http`,
 * in a process of its own so that it shares no event loop with the load generator or the proxies.
 *
 * `POST /v1/chat/completions` with `authorization: Bearer $BENCH_UPSTREAM_KEY` (401 otherwise):
 *
 * - a body without `"stream":true`: one fixed JSON completion of about 300 bytes, with `usage`;
 * - with `"stream":true`: Server-Sent Events, the first chunk written at once, then
 *   `--events` more chunks `--interval` ms apart, the last with `usage`, then `data: [DONE]`.
 *
 * Keep-alive stays open for 65 s, longer than any proxy keeps an idle connection, so that no
 * proxy races the upstream closing one. Once it listens it prints one JSON line to stdout:
 * `{"port":<port>,"pid":<pid>}`.
 *
 * Run by `proxy.ts`: `node --import tsx bench/proxy/upstream.ts --events 20 --interval 5`.
 */
import * as http from "node:http"

const argument = (name: string, fallback: number): number => {
  const at = process.argv.indexOf(`--${name}`)
  const value = at >= 0 ? Number(process.argv[at + 1]) : fallback
  if (!Number.isSafeInteger(value) || value < 0) throw new Error(`--${name} must be a whole number`)
  return value
}

const streamEvents = argument("events", 20)
const intervalMs = argument("interval", 5)
const expected = `Bearer ${process.env["BENCH_UPSTREAM_KEY"] ?? ""}`
const model = "bench-model-2025-01-01"
const created = 1_735_689_600

const completion = Buffer.from(
  JSON.stringify({
    id: "chatcmpl-bench0000000000000000000000",
    object: "chat.completion",
    created,
    model,
    choices: [
      {
        index: 0,
        message: { role: "assistant", content: "Hello! How can I help you today?" },
        finish_reason: "stop"
      }
    ],
    usage: { prompt_tokens: 12, completion_tokens: 9, total_tokens: 21 }
  })
)

const chunk = (delta: Record<string, string>, finish: string | null, usage?: Record<string, number>) =>
  `data: ${JSON.stringify({
    id: "chatcmpl-bench0000000000000000000000",
    object: "chat.completion.chunk",
    created,
    model,
    choices: [{ index: 0, delta, finish_reason: finish }],
    ...(usage === undefined ? {} : { usage })
  })}\n\n`

const firstEvent = chunk({ role: "assistant", content: "" }, null)
const middleEvent = chunk({ content: "tok " }, null)
const lastEvent = chunk({}, "stop", {
  prompt_tokens: 12,
  completion_tokens: streamEvents,
  total_tokens: 12 + streamEvents
})
const unauthorized = Buffer.from(
  JSON.stringify({
    error: { message: "bad key", type: "invalid_request_error", param: null, code: "invalid_api_key" }
  })
)

const stream = (response: http.ServerResponse) => {
  response.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" })
  response.write(firstEvent)
  let sent = 0
  const next = () => {
    if (response.destroyed) return
    sent += 1
    if (sent < streamEvents) {
      response.write(middleEvent)
      setTimeout(next, intervalMs)
    } else {
      response.end(`${streamEvents > 0 ? lastEvent : ""}data: [DONE]\n\n`)
    }
  }
  if (streamEvents === 0) response.end("data: [DONE]\n\n")
  else setTimeout(next, intervalMs)
}

const server = http.createServer({ keepAliveTimeout: 65_000 }, (request, response) => {
  const chunks: Array<Buffer> = []
  request.on("data", (data: Buffer) => chunks.push(data))
  request.on("end", () => {
    if (request.method !== "POST" || request.url !== "/v1/chat/completions") {
      response.writeHead(404, { "content-length": "0" }).end()
      return
    }
    if (request.headers["authorization"] !== expected) {
      response
        .writeHead(401, { "content-type": "application/json", "content-length": unauthorized.length })
        .end(unauthorized)
      return
    }
    const body = Buffer.concat(chunks).toString("utf8")
    if (/"stream"\s*:\s*true/.test(body)) {
      stream(response)
      return
    }
    response
      .writeHead(200, { "content-type": "application/json", "content-length": completion.length })
      .end(completion)
  })
})
server.headersTimeout = 70_000

server.listen({ host: "127.0.0.1", port: 0, backlog: 4096 }, () => {
  const address = server.address()
  const port = typeof address === "object" && address !== null ? address.port : 0
  process.stdout.write(`${JSON.stringify({ port, pid: process.pid })}\n`)
})

const stop = () => {
  server.close()
  server.closeAllConnections()
  process.exit(0)
}
process.on("SIGTERM", stop)
process.on("SIGINT", stop)
