/**
 * Live previews: one stream with the screens of every running session, sent when they change and
 * when a session goes quiet (waiting for input) or busy again.
 */
import { expect, layer } from "@effect/vitest"
import { Context, Duration, Effect, Either, Layer, Option, Schema, Stream } from "effect"
import * as Client from "../../rpc/Client.js"
import { CreateSession, PreviewsRequest, type SessionPreview } from "../../rpc/Sessions.js"
import { clientLayer, eventually, stopPtyHostAtEnd } from "../support/Attach.js"
import * as TestServer from "../support/TestServer.js"

class Node extends Context.Tag("test/Node")<Node, TestServer.Running>() {}

const rpc = Effect.flatMap(Node, (server) =>
  Effect.map(Layer.build(clientLayer(server.url, server.token)), Context.get(Client.VibesClient))
)

layer(
  Layer.scoped(
    Node,
    Effect.tap(TestServer.startWith({ sessionIdleAfter: Duration.seconds(1) }), (server) =>
      stopPtyHostAtEnd(server.dataDir)
    )
  ),
  { timeout: 120_000, excludeTestServices: true }
)("session previews", (it) => {
  it.scoped("every running session's screen, again when it changes, and whether it waits for input", () =>
    Effect.gen(function* () {
      const client = yield* rpc
      const first = yield* client.Sessions.Create(
        CreateSession.make({
          command: "/bin/sh",
          args: ["-c", "echo first-screen; exec cat"],
          cols: 40,
          rows: 6
        })
      )
      const second = yield* client.Sessions.Create(
        CreateSession.make({
          command: "/bin/sh",
          args: ["-c", "echo second-screen; exec cat"],
          cols: 30,
          rows: 4
        })
      )
      const received: Array<SessionPreview> = []
      yield* client.Sessions.Previews({ everyMs: 250 }).pipe(
        Stream.runForEach((preview) => Effect.sync(() => received.push(preview))),
        Effect.forkScoped
      )
      const latest = (sessionId: string) => [...received].reverse().find((p) => p.sessionId === sessionId)
      const until = (what: string, test: () => boolean) =>
        eventually(
          Effect.sync(() => (test() ? Option.some(true) : Option.none())),
          what
        )

      yield* until("both screens", () =>
        [
          [first.id, "first-screen"],
          [second.id, "second-screen"]
        ].every(
          ([id, text]) =>
            latest(id ?? "")
              ?.lines.join("\n")
              .includes(text ?? "") === true
        )
      )
      expect(latest(second.id)).toMatchObject({ cols: 30, rows: 4 })
      expect(latest(second.id)?.lines).toHaveLength(4)

      // Quiet for the idle time: the preview says it is waiting, once.
      yield* until("the first session to be waiting", () => latest(first.id)?.idle === true)
      const sentWhileQuiet = received.filter((p) => p.sessionId === first.id).length
      // Output: a new screen, busy again; nothing is sent for a session that did not change.
      yield* client.Sessions.Input({ sessionId: first.id, data: new TextEncoder().encode("typed-more\r") })
      yield* until("the new line", () => latest(first.id)?.lines.join("\n").includes("typed-more") === true)
      expect(received.filter((p) => p.sessionId === first.id).length).toBeGreaterThan(sentWhileQuiet)
      const seenOfSecond = received.filter((p) => p.sessionId === second.id)
      expect(new Set(seenOfSecond.map((p) => `${p.seq}/${p.idle}`)).size).toBe(seenOfSecond.length)

      // A session that ends is no longer previewed. Ticks run one after another: once a tick that
      // began after the close has sent the first session's new line, no later tick sends the second.
      yield* client.Sessions.Close({ sessionId: second.id })
      const type = (text: string) =>
        Effect.zipRight(
          client.Sessions.Input({ sessionId: first.id, data: new TextEncoder().encode(`${text}\r`) }),
          until(text, () => latest(first.id)?.lines.join("\n").includes(text) === true)
        )
      yield* type("after-close")
      const count = received.filter((p) => p.sessionId === second.id).length
      yield* type("later-still")
      expect(received.filter((p) => p.sessionId === second.id).length).toBe(count)
      yield* client.Sessions.Close({ sessionId: first.id })
    })
  )

  it("an interval outside 250 ms to 60 s is refused, naming the field (the server decodes with this schema)", () => {
    for (const everyMs of [10, 249, 60_001, 1.5]) {
      const decoded = Schema.decodeUnknownEither(PreviewsRequest)({ everyMs })
      expect(Either.isLeft(decoded)).toBe(true)
      if (Either.isLeft(decoded)) expect(String(decoded.left)).toContain("everyMs")
    }
    expect(Schema.decodeUnknownSync(PreviewsRequest)({}).everyMs).toBe(1000)
  })
})
