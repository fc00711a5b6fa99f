/**
 * The baseline of the SSE latency benchmark: the least a Node server can do to broadcast events
 * to Server-Sent Events clients. Plain `node:http`, no database, no Effect, no authentication.
 *
 * Events arrive as JSON lines on a TCP socket (the ingest port); each line becomes one frame,
 * `id: <n>\ndata: <line>\n\n`, written to every connected client. Once both servers listen it
 * prints one JSON line to stdout: `{"http":<port>,"ingest":<port>,"pid":<pid>}`.
 *
 * Run by `sse-latency.ts`: `node --import tsx bench/events/sse-baseline-server.ts`.
 */
import * as http from "node:http"
import * as net from "node:net"

const host = "127.0.0.1"
const clients = new Set<http.ServerResponse>()
let offset = 0

const server = http.createServer((request, response) => {
  if (request.method !== "GET" || !(request.url ?? "").startsWith("/api/events")) {
    response.writeHead(404).end()
    return
  }
  response.writeHead(200, {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache, no-store, no-transform",
    "x-accel-buffering": "no"
  })
  response.write("retry: 1000\n: connected\n\n")
  clients.add(response)
  response.once("close", () => clients.delete(response))
})

const broadcast = (line: string) => {
  offset++
  const frame = `id: ${offset}\ndata: ${line}\n\n`
  for (const client of clients) client.write(frame)
}

const ingest = net.createServer((socket) => {
  socket.setNoDelay(true)
  socket.setEncoding("utf8")
  let buffer = ""
  socket.on("data", (chunk: string) => {
    buffer += chunk
    let at: number
    while ((at = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, at)
      buffer = buffer.slice(at + 1)
      if (line !== "") broadcast(line)
    }
  })
  socket.on("error", () => socket.destroy())
})

const portOf = (listening: net.Server): number => {
  const address = listening.address()
  return typeof address === "object" && address !== null ? address.port : 0
}

server.listen({ host, port: 0, backlog: 4096 }, () => {
  ingest.listen({ host, port: 0 }, () => {
    console.log(JSON.stringify({ http: portOf(server), ingest: portOf(ingest), pid: process.pid }))
  })
})

const shutdown = () => {
  for (const client of clients) client.end()
  ingest.close()
  server.close(() => process.exit(0))
  server.closeAllConnections()
  setTimeout(() => process.exit(0), 2000).unref()
}
process.once("SIGTERM", shutdown)
process.once("SIGINT", shutdown)
