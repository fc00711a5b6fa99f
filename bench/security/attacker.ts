/**
 * An unauthenticated attacker, as a process of its own: sends `BENCH_ATTACK_BYTES` of garbage to a
 * node as fast as it can over `BENCH_ATTACK_CONNECTIONS` connections at a time, then prints one
 * JSON line: bytes sent, connections used, seconds and its own CPU milliseconds.
 *
 * Usage: attacker.ts <mode> <url>, mode one of
 * - `tcp`: random bytes on bare TCP connections (the HTTP parser refuses them);
 * - `upgrade`: a WebSocket upgrade of /rpc without credentials, followed by garbage frames;
 * - `body`: a chunked POST of /api/jobs without credentials, the garbage as its body.
 */
import * as crypto from "node:crypto"
import * as net from "node:net"

const [mode = "tcp", url = "http://127.0.0.1:7432"] = process.argv.slice(2)
const total = Number(process.env["BENCH_ATTACK_BYTES"] ?? 100 * 1024 * 1024)
const parallel = Number(process.env["BENCH_ATTACK_CONNECTIONS"] ?? 8)
const target = new URL(url)
const chunk = crypto.randomBytes(64 * 1024)
const host = target.host

const preamble = (): string => {
  switch (mode) {
    case "upgrade":
      return (
        `GET /rpc HTTP/1.1\r\nHost: ${host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n` +
        `Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n` +
        `Sec-WebSocket-Protocol: vibes.rpc.v1\r\n\r\n`
      )
    case "body":
      return `POST /api/jobs HTTP/1.1\r\nHost: ${host}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n`
    default:
      return ""
  }
}

const frameOf = (bytes: Buffer): Buffer =>
  mode === "body"
    ? Buffer.concat([Buffer.from(`${bytes.length.toString(16)}\r\n`), bytes, Buffer.from("\r\n")])
    : bytes

let sent = 0
let connections = 0
let active = 0
const started = performance.now()

const finish = () => {
  const cpu = process.cpuUsage()
  console.log(
    JSON.stringify({
      mode,
      bytes: sent,
      connections,
      seconds: (performance.now() - started) / 1000,
      cpuMillis: (cpu.user + cpu.system) / 1000
    })
  )
  process.exit(0)
}

const open = () => {
  if (sent >= total) {
    if (active === 0) finish()
    return
  }
  active++
  connections++
  const socket = net.connect(Number(target.port), target.hostname)
  socket.setNoDelay(true)
  let closed = false
  const pump = () => {
    while (!closed && sent < total) {
      const ok = socket.write(frameOf(chunk))
      sent += chunk.length
      if (!ok) return
    }
    if (sent >= total) socket.end()
  }
  socket.on("connect", () => {
    socket.write(preamble())
    pump()
  })
  socket.on("drain", pump)
  socket.on("data", () => undefined)
  socket.on("error", () => undefined)
  socket.on("close", () => {
    closed = true
    active--
    open()
  })
}

for (let i = 0; i < parallel; i++) open()
