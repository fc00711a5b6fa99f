/**
 * The plain-Node baseline of the proxy benchmark: the least a Node reverse proxy does, with
 * `node:http` only (no Effect, no authentication, no events, no metrics). `/proxy/bench/<path>`
 * goes to `http://127.0.0.1:<upstream port>/<path>` on a keep-alive agent: the request body is
 * read whole (as vibes and nginx do by default), hop-by-hop headers are dropped, and the response
 * is piped back as it arrives (so SSE streams). Once it listens it prints one JSON line to stdout:
 * `{"port":<port>,"pid":<pid>}`.
 *
 * Run by `proxy.ts`: `node --import tsx bench/proxy/node-proxy.ts --upstream <port>`.
 */
import * as http from "node:http"

const at = process.argv.indexOf("--upstream")
const upstreamPort = Number(at >= 0 ? process.argv[at + 1] : Number.NaN)
if (!Number.isSafeInteger(upstreamPort)) throw new Error("--upstream <port> is required")

const prefix = "/proxy/bench"
const hopByHop = new Set([
  "connection",
  "keep-alive",
  "proxy-authenticate",
  "proxy-authorization",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
  "host",
  "content-length"
])
const agent = new http.Agent({ keepAlive: true, maxSockets: 512, maxFreeSockets: 64, scheduling: "lifo" })

const server = http.createServer({ keepAliveTimeout: 65_000 }, (request, response) => {
  const url = request.url ?? ""
  if (!url.startsWith(`${prefix}/`)) {
    response.writeHead(404, { "content-length": "0" }).end()
    return
  }
  const chunks: Array<Buffer> = []
  request.on("data", (chunk: Buffer) => chunks.push(chunk))
  request.on("end", () => {
    const body = Buffer.concat(chunks)
    const headers: http.OutgoingHttpHeaders = { "content-length": body.length }
    for (const [name, value] of Object.entries(request.headers)) {
      if (value !== undefined && !hopByHop.has(name)) headers[name] = value
    }
    const upstream = http.request(
      {
        agent,
        host: "127.0.0.1",
        port: upstreamPort,
        method: request.method,
        path: url.slice(prefix.length),
        headers
      },
      (answer) => {
        const back: http.OutgoingHttpHeaders = {}
        for (const [name, value] of Object.entries(answer.headers)) {
          if (value !== undefined && !hopByHop.has(name) && name !== "content-length") back[name] = value
        }
        if (answer.headers["content-length"] !== undefined) {
          back["content-length"] = answer.headers["content-length"]
        }
        response.writeHead(answer.statusCode ?? 502, back)
        answer.pipe(response)
      }
    )
    upstream.once("error", (error) => {
      if (!response.headersSent) response.writeHead(502, { "content-type": "text/plain" })
      response.end(error.message)
    })
    response.once("close", () => {
      if (!response.writableFinished) upstream.destroy()
    })
    upstream.end(body)
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
  agent.destroy()
  process.exit(0)
}
process.on("SIGTERM", stop)
process.on("SIGINT", stop)
