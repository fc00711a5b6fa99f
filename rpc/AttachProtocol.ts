/**
 * The attach socket: a session's terminal over one WebSocket, at
 * `/api/sessions/<id>/attach?cols=&rows=&readOnly=&from=&scrollback=` with the subprotocol
 * `vibes.attach.v1`. The typed RPC (`Sessions.*`) stays the control plane; this is the data plane
 * the web UI and `vibes attach` use, and the one other languages can speak without msgpack.
 *
 * Frames from the server:
 * - binary: output. Bytes 0–7 are the sequence number of the first output byte (unsigned, big
 *   endian, below 2^53); the rest is the output, as the program wrote it.
 * - text: one JSON object with a `_tag`: `Attached` (first, with the screen to start from unless
 *   the client resumed), `Resized`, `Reset` (output was lost: the screen replaces the client's),
 *   `Ended` (last; the socket then closes with 1000), or `Failure` (`error`, `message`: a refused
 *   input or resize, or why the socket is about to close).
 *
 * Frames from the client:
 * - binary: keystrokes, sent to the program as they are (at most `maxInputBytes` a frame);
 * - text: `{"_tag":"Resize","cols":N,"rows":N}`.
 *
 * Output flows without acknowledgements: the server stops reading the session while the socket's
 * send buffer holds more than `sendWindowBytes`, so TCP's window is the flow control. Close codes:
 * 1000 the session ended, 1001 the server is stopping, 1008 a frame broke the protocol, 1009 a frame
 * too large, 4400 bad parameters, 4404 no such session, 4503 the session is unreachable for now
 * (attach again, with `from`).
 */
import { Schema } from "effect"
import { Attached, Ended, maxInputBytes, Reset, Resized } from "./Sessions.js"

/** The WebSocket subprotocol of the attach socket. */
export const attachProtocol = "vibes.attach.v1"

/** Bytes the server lets wait in a socket's send buffer before it stops reading the session. */
export const sendWindowBytes = 1024 * 1024

/** The largest frame a client may send: one `Input`'s worth of keystrokes, or a control message. */
export const maxClientFrameBytes = maxInputBytes + 1024

/** Close codes of the attach socket beyond the standard ones. */
export const AttachCloseCode = {
  ended: 1000,
  goingAway: 1001,
  protocolError: 1008,
  tooLarge: 1009,
  badRequest: 4400,
  notFound: 4404,
  unavailable: 4503
} as const

/** A refused input or resize, or why the server is about to close the socket. */
export class Failure extends Schema.TaggedClass<Failure>()("Failure", {
  error: Schema.String,
  message: Schema.String
}) {}

/** A text frame from the server. */
export const ServerMessage = Schema.Union(Attached, Resized, Reset, Ended, Failure)
export type ServerMessage = typeof ServerMessage.Type

/** The client's terminal changed size. */
export class Resize extends Schema.TaggedClass<Resize>()("Resize", {
  cols: Schema.Int,
  rows: Schema.Int
}) {}

/** A text frame from the client. */
export const ClientMessage = Schema.Union(Resize)
export type ClientMessage = typeof ClientMessage.Type

/** Text frames as JSON, each way. */
export const ServerMessageJson = Schema.parseJson(ServerMessage)
export const ClientMessageJson = Schema.parseJson(ClientMessage)

/** The binary frame of `data`, the output that starts at sequence number `seq`. */
export const encodeOutput = (seq: number, data: Uint8Array): Uint8Array => {
  const frame = new Uint8Array(8 + data.length)
  new DataView(frame.buffer).setBigUint64(0, BigInt(seq))
  frame.set(data, 8)
  return frame
}

/** An output frame's sequence number and bytes, or undefined for a frame too short to be one. */
export const decodeOutput = (
  frame: Uint8Array
): { readonly seq: number; readonly data: Uint8Array } | undefined =>
  frame.length < 8
    ? undefined
    : {
        seq: Number(new DataView(frame.buffer, frame.byteOffset, 8).getBigUint64(0)),
        data: frame.subarray(8)
      }

/** The attach socket's path for session `sessionId`, with its query. */
export const attachPath = (
  sessionId: string,
  query: {
    readonly cols?: number | undefined
    readonly rows?: number | undefined
    readonly readOnly?: boolean | undefined
    readonly from?: number | undefined
    readonly scrollback?: number | undefined
  }
): string => {
  const params = new URLSearchParams()
  for (const [name, value] of Object.entries(query)) {
    if (value !== undefined) params.set(name, String(value))
  }
  const search = params.toString()
  return `/api/sessions/${encodeURIComponent(sessionId)}/attach${search === "" ? "" : `?${search}`}`
}

/** The session id of an attach socket's path, if `path` is one. */
export const sessionOfPath = (path: string): string | undefined => {
  const match = /^\/api\/sessions\/([^/]+)\/attach$/.exec(path)
  if (match === null) return undefined
  try {
    return decodeURIComponent(match[1] ?? "")
  } catch {
    return undefined
  }
}
