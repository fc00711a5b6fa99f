/**
 * The attach socket (`/api/sessions/<id>/attach`): the data plane of a session's terminal, raw
 * (frames as the README documents them) and through the typed attach client.
 */
import { expect, layer } from "@effect/vitest"
import * as NodeSocket from "@effect/platform-node/NodeSocket"
import { Chunk, Context, Effect, Layer, Option, Stream } from "effect"
import type WebSocket from "ws"
import * as AttachClient from "../../rpc/AttachClient.js"
import { attachPath, attachProtocol, decodeOutput } from "../../rpc/AttachProtocol.js"
import * as Client from "../../rpc/Client.js"
import { CreateSession } from "../../rpc/Sessions.js"
import { clientLayer, eventually, stopPtyHostAtEnd } from "../support/Attach.js"
import * as RawRpc from "../support/RawRpc.js"
import * as TestServer from "../support/TestServer.js"

class Node extends Context.Tag("test/Node")<Node, TestServer.Running>() {}

const rpc = Effect.flatMap(Node, (server) =>
  Effect.map(Layer.build(clientLayer(server.url, server.token)), Context.get(Client.VibesClient))
)

/** A session running `script` in sh. */
const shell = (script: string) =>
  Effect.flatMap(rpc, (client) =>
    client.Sessions.Create(
      CreateSession.make({ command: "/bin/sh", args: ["-c", script], cols: 80, rows: 24 })
    )
  )

/** Every frame a raw socket has received (collected from its creation), as it arrives. */
const frames = (socket: WebSocket) => {
  const received = RawRpc.framesOf(socket)
  const text = () =>
    received
      .filter((frame) => frame.binary)
      .map((frame) => Buffer.from(decodeOutput(new Uint8Array(frame.data))?.data ?? []).toString("utf8"))
      .join("")
  const messages = () =>
    received
      .filter((frame) => !frame.binary)
      .map((frame) => JSON.parse(frame.data.toString("utf8")) as { _tag: string })
  return { received, text, messages }
}

const until = (what: string, test: () => boolean) =>
  eventually(
    Effect.sync(() => (test() ? Option.some(true) : Option.none())),
    what
  )

/** The typed client's attachment to `sessionId`, for the scope. */
const attachment = (sessionId: string, extra: Partial<AttachClient.AttachOptions> = {}) =>
  Effect.flatMap(Node, (server) =>
    AttachClient.attach({
      url: server.url,
      token: TestServer.redacted(server),
      sessionId,
      size: () => ({ cols: 80, rows: 24 }),
      ...extra
    }).pipe(Effect.provide(NodeSocket.layerWebSocketConstructor))
  )

layer(
  Layer.scoped(
    Node,
    Effect.tap(TestServer.start, (server) => stopPtyHostAtEnd(server.dataDir))
  ),
  { timeout: 120_000, excludeTestServices: true }
)("the attach socket", (it) => {
  it.scoped("raw frames: Attached first, output as sequence number + bytes, keystrokes and resizes in", () =>
    Effect.gen(function* () {
      const server = yield* Node
      const session = yield* shell("stty raw -echo; printf ready; cat")
      const socket = yield* RawRpc.open(server.url, server.token, {
        path: attachPath(session.id, { cols: 80, rows: 24 }),
        protocols: [attachProtocol]
      })
      expect(socket.protocol).toBe(attachProtocol)
      const got = frames(socket)
      yield* until(
        "the screen and the prompt",
        () => got.messages().length > 0 && (got.text() + JSON.stringify(got.messages())).includes("ready")
      )
      const [first] = got.messages()
      expect(first).toMatchObject({ _tag: "Attached", readOnly: false })
      // Output frames carry consecutive sequence numbers.
      socket.send(Buffer.from("one "), { binary: true })
      socket.send(Buffer.from("two"), { binary: true })
      yield* until("the echo of both keystroke frames", () => got.text().includes("one two"))
      let next: number | undefined
      for (const frame of got.received.filter((f) => f.binary)) {
        const output = decodeOutput(new Uint8Array(frame.data))
        expect(output).toBeDefined()
        if (output === undefined) continue
        if (next !== undefined) expect(output.seq).toBe(next)
        next = output.seq + output.data.length
      }
      socket.send(JSON.stringify({ _tag: "Resize", cols: 100, rows: 30 }))
      const client = yield* rpc
      yield* eventually(
        Effect.map(client.Sessions.Get({ sessionId: session.id }), (info) =>
          info.cols === 100 && info.rows === 30 ? Option.some(info) : Option.none()
        ),
        "the resize to reach the session"
      )
      // The session ends: `Ended`, then a normal close.
      const closed = yield* RawRpc.watchClose(socket)
      yield* client.Sessions.Close({ sessionId: session.id })
      const how = yield* closed
      expect(how.code).toBe(1000)
      expect(got.messages().at(-1)).toMatchObject({ _tag: "Ended", state: "closed" })
    })
  )

  it.scoped("resuming from a sequence number sends no screen, only the bytes from there", () =>
    Effect.gen(function* () {
      const server = yield* Node
      const session = yield* shell("printf 0123456789; exec cat")
      const client = yield* rpc
      yield* eventually(
        Effect.map(client.Sessions.Snapshot({ sessionId: session.id }), (screen) =>
          screen.text.includes("0123456789") ? Option.some(screen) : Option.none()
        ),
        "the digits"
      )
      const socket = yield* RawRpc.open(server.url, server.token, {
        path: attachPath(session.id, { from: 4, readOnly: true }),
        protocols: [attachProtocol]
      })
      const got = frames(socket)
      yield* until("the rest of the digits", () => got.text().includes("456789")).pipe(
        Effect.tapError(() => Effect.logError(JSON.stringify({ messages: got.messages(), text: got.text() })))
      )
      expect(got.messages()[0]).toMatchObject({ _tag: "Attached", screen: null, seq: 4, readOnly: true })
      expect(got.text().startsWith("456789")).toBe(true)
      // A read-only attachment's keystrokes are refused, in a message; the socket stays.
      socket.send(Buffer.from("x"), { binary: true })
      yield* until("the refusal", () => got.messages().some((m) => m._tag === "Failure"))
      expect(got.messages().find((m) => m._tag === "Failure")).toMatchObject({ error: "ReadOnlyAttachment" })
      expect(socket.readyState).toBe(socket.OPEN)
    })
  )

  it.scoped(
    "refusals before the upgrade: 401 without credentials, 400 for bad parameters, 404 for no session",
    () =>
      Effect.gen(function* () {
        const server = yield* Node
        const session = yield* shell("exec cat")
        const path = attachPath(session.id, {})
        const anonymous = yield* RawRpc.upgrade(server.url, { path, protocols: [attachProtocol] })
        expect(anonymous).toMatchObject({ _tag: "Refused", status: 401 })
        const auth = { authorization: `Bearer ${server.token}` }
        const bad = yield* RawRpc.upgrade(server.url, {
          path: `${path}?cols=wide`,
          headers: auth,
          protocols: [attachProtocol]
        })
        expect(bad).toMatchObject({ _tag: "Refused", status: 400 })
        if (bad._tag === "Refused")
          expect(JSON.parse(bad.body)).toMatchObject({ error: "InvalidSessionRequest" })
        const unknown = yield* RawRpc.upgrade(server.url, {
          path: attachPath("test-node_0193d9b4-7c1e-7a2b-9c3d-4e5f60718293", {}),
          headers: auth,
          protocols: [attachProtocol]
        })
        expect(unknown).toMatchObject({ _tag: "Refused", status: 404 })
        const elsewhere = yield* RawRpc.upgrade(server.url, {
          path: "/api/sessions/x/attach/more",
          headers: auth,
          protocols: [attachProtocol]
        })
        expect(elsewhere).toMatchObject({ _tag: "Refused", status: 404 })
      })
  )

  it.scoped(
    "frames that break the protocol close only that socket: 1008 for bad text, 1009 when too large",
    () =>
      Effect.gen(function* () {
        const server = yield* Node
        const session = yield* shell("exec cat")
        const open = RawRpc.open(server.url, server.token, {
          path: attachPath(session.id, {}),
          protocols: [attachProtocol]
        })
        const first = yield* open
        const firstClosed = yield* RawRpc.watchClose(first)
        first.send("not json")
        expect((yield* firstClosed).code).toBe(1008)
        const second = yield* open
        const secondClosed = yield* RawRpc.watchClose(second)
        second.send(Buffer.alloc(600 * 1024), { binary: true })
        expect((yield* secondClosed).code).toBe(1009)
        // The session goes on.
        const client = yield* rpc
        expect((yield* client.Sessions.Get({ sessionId: session.id })).state).toBe("running")
      })
  )

  it.scoped("the typed client: screen, keystrokes, resize, and the end", () =>
    Effect.gen(function* () {
      const session = yield* shell(
        "stty -echo; printf 'say> '; read line; printf 'heard %s' \"$line\"; sleep 0.2"
      )
      const attached = yield* attachment(session.id)
      const events = yield* attached.events.pipe(
        Stream.tap((event) =>
          event._tag === "Attached"
            ? Effect.zipRight(attached.resize(90, 20), attached.input(new TextEncoder().encode("hello\r")))
            : Effect.void
        ),
        Stream.runCollect,
        Effect.map(Chunk.toArray)
      )
      expect(events[0]?._tag).toBe("Attached")
      const output = events
        .flatMap((event) => (event._tag === "Output" ? [Buffer.from(event.data).toString("utf8")] : []))
        .join("")
      const first = events[0]
      const screen = first?._tag === "Attached" ? (first.screen?.text ?? "") : ""
      expect(`${screen}${output}`).toContain("heard hello")
      expect(events.at(-1)).toMatchObject({ _tag: "Ended", state: "exited", exitCode: 0 })
    })
  )

  it.scoped("the typed client fails at once for a session that does not exist", () =>
    Effect.gen(function* () {
      const attached = yield* attachment("test-node_0193d9b4-7c1e-7a2b-9c3d-4e5f60718293")
      const error = yield* Effect.flip(Stream.runDrain(attached.events))
      expect(error).toMatchObject({ _tag: "AttachFailed", error: "SessionNotFound" })
    })
  )
})
