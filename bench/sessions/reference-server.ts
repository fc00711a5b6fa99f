/**
 * The minimal reference terminal server the session benchmarks compare against: node-pty and the
 * `ws` WebSocket library, binary frames both ways, no persistence, no screen model, no
 * authentication. One PTY per connection, running the command given as JSON in the `cmd` query
 * parameter (`["/bin/sh","-c","..."]`) at `cols`x`rows`; it is killed when the connection closes.
 *
 * Run: `node --import tsx bench/sessions/reference-server.ts` — it listens on 127.0.0.1 on a free
 * port and prints `listening <port>` on stdout. It ends with its parent's stdin.
 */
import * as http from "node:http"
import * as NodePty from "node-pty"
import { WebSocketServer } from "ws"

const server = http.createServer((_request, response) => {
  response.writeHead(404)
  response.end()
})
const sockets = new WebSocketServer({ server, perMessageDeflate: false })

sockets.on("connection", (socket, request) => {
  const query = new URL(request.url ?? "/", "http://reference").searchParams
  const argv = JSON.parse(query.get("cmd") ?? '["/bin/sh"]') as Array<string>
  const [file = "/bin/sh", ...args] = argv
  const env: Record<string, string> = {}
  for (const [key, value] of Object.entries(process.env)) if (value !== undefined) env[key] = value
  env["TERM"] = "xterm-256color"
  const pty = NodePty.spawn(file, args, {
    name: "xterm-256color",
    cols: Number(query.get("cols") ?? 80),
    rows: Number(query.get("rows") ?? 24),
    cwd: process.cwd(),
    env,
    encoding: null
  })
  const onData = pty.onData as unknown as NodePty.IEvent<Buffer>
  onData((data) => {
    socket.send(data)
    // Backpressure: stop reading the PTY while the socket's buffer is full.
    if (socket.bufferedAmount > 1024 * 1024) {
      pty.pause()
      socket.send(Buffer.alloc(0), () => pty.resume())
    }
  })
  pty.onExit(() => socket.close(1000))
  socket.on("message", (data: Buffer) => pty.write(data))
  socket.on("close", () => {
    try {
      pty.kill("SIGKILL")
    } catch {
      // already gone
    }
  })
})

server.listen(0, "127.0.0.1", () => {
  const address = server.address()
  console.log(`listening ${typeof address === "object" && address !== null ? address.port : 0}`)
})
process.stdin.on("end", () => process.exit(0))
process.stdin.resume()
