/**
 * The PTY host's data plane: terminal bytes between the host and its server, on a socket of their
 * own (`<dataDir>/pty-data.sock`) beside the RPC socket that carries control (spawn, resize,
 * signals, release).
 *
 * Every frame is a 4-byte big-endian length (of what follows), a type byte and a body. Numbers are
 * big-endian; sequence numbers are float64 (exact up to 2^53 bytes); strings are UTF-8 and run to
 * the end of the frame.
 *
 * Server → host:
 * - `Subscribe` (1): u32 stream, f64 from, u32 credit, id. Output of PTY `id` from byte `from`;
 *   the host sends at most `credit` bytes of data before it is given more.
 * - `Credit` (2): u32 stream, u32 bytes. The server has consumed `bytes` more.
 * - `Cancel` (3): u32 stream. Stop sending; nothing more comes for that stream.
 * - `Write` (4): u32 request, u16 id length, id, data. The program's input; answered by `Written`
 *   or `WriteFailed`.
 *
 * Host → server:
 * - `Data` (16): u32 stream, f64 seq, bytes (`seq` is the sequence number of the first).
 * - `Gap` (17): u32 stream, f64 from, f64 to: bytes the ring overwrote before this reader got them.
 * - `Exited` (18): u32 stream, f64 seq (the final byte count), u8 has exit code, i32 exit code,
 *   signal (empty: none). The stream's last frame.
 * - `NotFound` (19): u32 stream, message. No such PTY (or it was released); the stream's last frame.
 * - `Written` (20): u32 request.
 * - `WriteFailed` (21): u32 request, u8 reason (1 not found, 2 not running), message.
 *
 * Flow control is by credit: several frames are in flight, and the host only stops when a
 * stream's credit is spent. A server that stops granting credit stops the stream, and a PTY whose
 * reader lags far enough is paused (its program blocks), as with any slow reader.
 */
import * as path from "node:path"
import { PtyData, PtyExit, PtyExited, PtyGap, type PtyOutput } from "./PtyHost.js"

/** Name of the data socket in the data dir. */
export const dataSocketFileName = "pty-data.sock"

/** The data socket beside the host's RPC socket at `rpcSocketPath`. */
export const dataSocketPathOf = (rpcSocketPath: string): string =>
  path.join(path.dirname(rpcSocketPath), dataSocketFileName)

/** Most data bytes in one `Data` frame. */
export const maxDataFrameBytes = 256 * 1024

/** Largest frame either side accepts (a `Write` of the largest input, with room to spare). */
export const maxFrameBytes = 2 * 1024 * 1024

/** Credit a reader starts with, and what it may have outstanding. */
export const defaultWindowBytes = 1024 * 1024

/** What the server sends. */
export type ClientFrame =
  | {
      readonly _tag: "Subscribe"
      readonly stream: number
      readonly from: number
      readonly credit: number
      readonly id: string
    }
  | { readonly _tag: "Credit"; readonly stream: number; readonly bytes: number }
  | { readonly _tag: "Cancel"; readonly stream: number }
  | { readonly _tag: "Write"; readonly request: number; readonly id: string; readonly data: Uint8Array }

/** What the host sends. */
export type HostFrame =
  | { readonly _tag: "Output"; readonly stream: number; readonly output: PtyOutput }
  | { readonly _tag: "NotFound"; readonly stream: number; readonly message: string }
  | { readonly _tag: "Written"; readonly request: number }
  | {
      readonly _tag: "WriteFailed"
      readonly request: number
      readonly reason: "NotFound" | "NotRunning"
      readonly message: string
    }

/** A frame that breaks the protocol; the connection that sent it is closed. */
export class ProtocolViolation extends Error {
  override readonly name = "ProtocolViolation"
}

const Type = {
  Subscribe: 1,
  Credit: 2,
  Cancel: 3,
  Write: 4,
  Data: 16,
  Gap: 17,
  Exited: 18,
  NotFound: 19,
  Written: 20,
  WriteFailed: 21
} as const

/** A frame of `type` whose fixed part is `fixed` bytes, followed by `tail`; the fixed part is written by `fill`. */
const frame = (type: number, fixed: number, tail: Uint8Array | undefined, fill: (buffer: Buffer) => void) => {
  const tailBytes = tail?.length ?? 0
  const buffer = Buffer.allocUnsafe(5 + fixed + tailBytes)
  buffer.writeUInt32BE(1 + fixed + tailBytes, 0)
  buffer.writeUInt8(type, 4)
  fill(buffer.subarray(5, 5 + fixed))
  if (tail !== undefined) buffer.set(tail, 5 + fixed)
  return buffer
}

const utf8 = (text: string) => Buffer.from(text, "utf8")

/** Encodes a frame the server sends. */
export const encodeClientFrame = (message: ClientFrame): Buffer => {
  switch (message._tag) {
    case "Subscribe":
      return frame(Type.Subscribe, 16, utf8(message.id), (b) => {
        b.writeUInt32BE(message.stream, 0)
        b.writeDoubleBE(message.from, 4)
        b.writeUInt32BE(message.credit, 12)
      })
    case "Credit":
      return frame(Type.Credit, 8, undefined, (b) => {
        b.writeUInt32BE(message.stream, 0)
        b.writeUInt32BE(message.bytes, 4)
      })
    case "Cancel":
      return frame(Type.Cancel, 4, undefined, (b) => b.writeUInt32BE(message.stream, 0))
    case "Write": {
      const id = utf8(message.id)
      return frame(Type.Write, 6 + id.length, message.data, (b) => {
        b.writeUInt32BE(message.request, 0)
        b.writeUInt16BE(id.length, 4)
        b.set(id, 6)
      })
    }
  }
}

/**
 * The header of a `Data` frame whose `length` data bytes follow it: written separately, so the
 * bytes read from the ring are not copied again.
 */
export const dataHeader = (stream: number, seq: number, length: number): Buffer => {
  const buffer = Buffer.allocUnsafe(17)
  buffer.writeUInt32BE(13 + length, 0)
  buffer.writeUInt8(Type.Data, 4)
  buffer.writeUInt32BE(stream, 5)
  buffer.writeDoubleBE(seq, 9)
  return buffer
}

/** Encodes a frame the host sends (a `Data` frame whole; see `dataHeader`). */
export const encodeHostFrame = (message: HostFrame): Buffer => {
  switch (message._tag) {
    case "Output": {
      const output = message.output
      switch (output._tag) {
        case "Data":
          return Buffer.concat([dataHeader(message.stream, output.seq, output.data.length), output.data])
        case "Gap":
          return frame(Type.Gap, 20, undefined, (b) => {
            b.writeUInt32BE(message.stream, 0)
            b.writeDoubleBE(output.from, 4)
            b.writeDoubleBE(output.to, 12)
          })
        case "Exited":
          return frame(Type.Exited, 17, utf8(output.exit.signal ?? ""), (b) => {
            b.writeUInt32BE(message.stream, 0)
            b.writeDoubleBE(output.seq, 4)
            b.writeUInt8(output.exit.exitCode === null ? 0 : 1, 12)
            b.writeInt32BE(output.exit.exitCode ?? 0, 13)
          })
      }
      break
    }
    case "NotFound":
      return frame(Type.NotFound, 4, utf8(message.message), (b) => b.writeUInt32BE(message.stream, 0))
    case "Written":
      return frame(Type.Written, 4, undefined, (b) => b.writeUInt32BE(message.request, 0))
    case "WriteFailed":
      return frame(Type.WriteFailed, 5, utf8(message.message), (b) => {
        b.writeUInt32BE(message.request, 0)
        b.writeUInt8(message.reason === "NotFound" ? 1 : 2, 4)
      })
  }
}

const need = (body: Buffer, bytes: number, what: string) => {
  if (body.length < bytes) throw new ProtocolViolation(`a ${what} frame of ${body.length} bytes is too short`)
}

/** A sequence number: a whole number of bytes. */
const seqAt = (body: Buffer, at: number) => {
  const value = body.readDoubleBE(at)
  if (!Number.isSafeInteger(value) || value < 0)
    throw new ProtocolViolation(`${value} is not a sequence number`)
  return value
}

/** Decodes a frame's type and body (what follows its length); throws `ProtocolViolation`. */
export const decodeClientFrame = (type: number, body: Buffer): ClientFrame => {
  switch (type) {
    case Type.Subscribe: {
      need(body, 16, "Subscribe")
      const id = body.subarray(16).toString("utf8")
      if (id === "") throw new ProtocolViolation("a Subscribe frame names no PTY")
      return {
        _tag: "Subscribe",
        stream: body.readUInt32BE(0),
        from: seqAt(body, 4),
        credit: body.readUInt32BE(12),
        id
      }
    }
    case Type.Credit:
      need(body, 8, "Credit")
      return { _tag: "Credit", stream: body.readUInt32BE(0), bytes: body.readUInt32BE(4) }
    case Type.Cancel:
      need(body, 4, "Cancel")
      return { _tag: "Cancel", stream: body.readUInt32BE(0) }
    case Type.Write: {
      need(body, 6, "Write")
      const idBytes = body.readUInt16BE(4)
      need(body, 6 + idBytes, "Write")
      const id = body.subarray(6, 6 + idBytes).toString("utf8")
      if (id === "") throw new ProtocolViolation("a Write frame names no PTY")
      return { _tag: "Write", request: body.readUInt32BE(0), id, data: body.subarray(6 + idBytes) }
    }
    default:
      throw new ProtocolViolation(`unknown frame type ${type} from a server`)
  }
}

/** Decodes a frame the host sent; throws `ProtocolViolation`. */
export const decodeHostFrame = (type: number, body: Buffer): HostFrame => {
  switch (type) {
    case Type.Data:
      need(body, 12, "Data")
      return {
        _tag: "Output",
        stream: body.readUInt32BE(0),
        output: new PtyData({ seq: seqAt(body, 4), data: body.subarray(12) }, { disableValidation: true })
      }
    case Type.Gap:
      need(body, 20, "Gap")
      return {
        _tag: "Output",
        stream: body.readUInt32BE(0),
        output: new PtyGap({ from: seqAt(body, 4), to: seqAt(body, 12) })
      }
    case Type.Exited: {
      need(body, 17, "Exited")
      const signal = body.subarray(17).toString("utf8")
      return {
        _tag: "Output",
        stream: body.readUInt32BE(0),
        output: new PtyExited({
          seq: seqAt(body, 4),
          exit: new PtyExit({
            exitCode: body.readUInt8(12) === 1 ? body.readInt32BE(13) : null,
            signal: signal === "" ? null : signal
          })
        })
      }
    }
    case Type.NotFound:
      need(body, 4, "NotFound")
      return { _tag: "NotFound", stream: body.readUInt32BE(0), message: body.subarray(4).toString("utf8") }
    case Type.Written:
      need(body, 4, "Written")
      return { _tag: "Written", request: body.readUInt32BE(0) }
    case Type.WriteFailed:
      need(body, 5, "WriteFailed")
      return {
        _tag: "WriteFailed",
        request: body.readUInt32BE(0),
        reason: body.readUInt8(4) === 1 ? "NotFound" : "NotRunning",
        message: body.subarray(5).toString("utf8")
      }
    default:
      throw new ProtocolViolation(`unknown frame type ${type} from the host`)
  }
}

/**
 * Cuts a byte stream into frames. Chunks are kept as they came and joined only where a frame
 * spans them, so a large frame arriving in many reads is copied once.
 */
export class FrameReader {
  private chunks: Array<Buffer> = []
  private buffered = 0

  constructor(private readonly maxBytes: number = maxFrameBytes) {}

  /** The frames completed by `chunk`, each as its type and body; throws `ProtocolViolation`. */
  push(chunk: Buffer): Array<{ readonly type: number; readonly body: Buffer }> {
    this.chunks.push(chunk)
    this.buffered += chunk.length
    const frames: Array<{ readonly type: number; readonly body: Buffer }> = []
    while (this.buffered >= 4) {
      let head = this.chunks[0] as Buffer
      if (head.length < 4) {
        head = Buffer.concat(this.chunks, this.buffered)
        this.chunks = [head]
      }
      const size = head.readUInt32BE(0)
      if (size < 1 || size > this.maxBytes) {
        throw new ProtocolViolation(`a frame of ${size} bytes is outside 1..${this.maxBytes}`)
      }
      if (this.buffered < 4 + size) break
      const whole = this.take(4 + size)
      frames.push({ type: whole.readUInt8(4), body: whole.subarray(5) })
    }
    return frames
  }

  private take(bytes: number): Buffer {
    const head = this.chunks[0] as Buffer
    this.buffered -= bytes
    if (head.length > bytes) {
      this.chunks[0] = head.subarray(bytes)
      return head.subarray(0, bytes)
    }
    if (head.length === bytes) {
      this.chunks.shift()
      return head
    }
    const out = Buffer.allocUnsafe(bytes)
    let at = 0
    while (at < bytes) {
      const chunk = this.chunks[0] as Buffer
      const part = Math.min(chunk.length, bytes - at)
      chunk.copy(out, at, 0, part)
      at += part
      if (part === chunk.length) this.chunks.shift()
      else this.chunks[0] = chunk.subarray(part)
    }
    return out
  }
}
