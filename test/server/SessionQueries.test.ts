import { expect, layer } from "@effect/vitest"
import { Context, Effect, Layer, Option, Stream } from "effect"
import * as Client from "../../rpc/Client.js"
import { CreateSession } from "../../rpc/Sessions.js"
import { clientLayer, eventually, stopPtyHostAtEnd } from "../support/Attach.js"
import * as Terminals from "../support/Terminals.js"
import * as TestServer from "../support/TestServer.js"

class Node extends Context.Tag("test/Node")<Node, TestServer.Running>() {}

const rpc = Effect.flatMap(Node, (server) =>
  Effect.map(Layer.build(clientLayer(server.url, server.token)), Context.get(Client.VibesClient))
)

/** A program in a session: node running `script` in the PTY's raw mode. */
const program = (script: string) =>
  CreateSession.make({
    command: process.execPath,
    args: ["-e", `process.stdin.setRawMode(true);${script}`],
    cols: 80,
    rows: 24
  })

/** The screen text of a session once it has ended. */
const endedScreen = (client: Client.VibesClient["Type"], sessionId: string) =>
  Effect.gen(function* () {
    yield* eventually(
      Effect.map(client.Sessions.Get({ sessionId }), (info) =>
        info.state === "running" ? Option.none() : Option.some(info)
      ),
      "the program to end"
    )
    return (yield* client.Sessions.Snapshot({ sessionId })).text
  })

layer(
  Layer.scoped(
    Node,
    Effect.tap(TestServer.start, (server) => stopPtyHostAtEnd(server.dataDir))
  ),
  { timeout: 120_000, excludeTestServices: true }
)("terminal queries", (it) => {
  it.scoped(
    "a program that asks for its device attributes at start-up, with no client attached, gets the answer",
    () =>
      Effect.gen(function* () {
        const client = yield* rpc
        const session = yield* client.Sessions.Create(
          program(`
            const asked = performance.now()
            let got = ""
            process.stdin.on("data", (data) => {
              got += data.toString("latin1")
              if (!got.endsWith("c")) return
              const ms = (performance.now() - asked).toFixed(1)
              process.stdout.write("\\r\\nANSWER " + JSON.stringify(got) + " AFTER " + ms + " ms\\r\\n")
              process.exit(0)
            })
            process.stdout.write("\\x1b[c")
          `)
        )
        const text = yield* endedScreen(client, session.id)
        const answer = /ANSWER (".*") AFTER ([\d.]+) ms/.exec(text)
        expect(answer, text).not.toBeNull()
        expect(JSON.parse(answer?.[1] ?? "null")).toBe("\x1b[?1;2c")
        // The issue asks for 50 ms, which bench/sessions/queries.ts measures on the build. Here the
        // node's screen worker is still loading its code through tsx when the first program asks
        // (about a second, more on a loaded machine), so the test only bounds it generously.
        console.log(`device attributes answered after ${answer?.[2]} ms`)
        expect(Number(answer?.[2])).toBeLessThan(10_000)
      })
  )

  it.scoped("with three clients attached, each query gets exactly one answer: the screen model's", () =>
    Effect.gen(function* () {
      const client = yield* rpc
      const session = yield* client.Sessions.Create(
        program(`
          let got = ""
          let asked = false
          process.stdin.on("data", (data) => {
            got += data.toString("latin1")
            if (!asked && got.includes("GO")) {
              asked = true
              got = ""
              process.stdout.write("\\x1b[5;7H\\x1b[c\\x1b[6n\\x1b]11;?\\x1b\\\\")
            }
            if (asked && got.includes("MARK")) {
              process.stdout.write("\\x1b[H\\x1b[2JGOT " + JSON.stringify(got.slice(0, got.indexOf("MARK"))) + "\\r\\n")
              process.exit(0)
            }
          })
          process.stdout.write("ready\\r\\n")
        `)
      )
      // Three clients whose terminals (xterm.js, as in the browser) answer what they are sent.
      const clients = yield* Effect.forEach([0, 1, 2], () =>
        Effect.gen(function* () {
          const terminal = yield* Terminals.reference(80, 24)
          const state = { attachmentId: "", answered: 0 }
          terminal.onData((reply) => {
            Effect.runFork(
              client.Sessions.Input({
                sessionId: session.id,
                data: new TextEncoder().encode(reply),
                attachmentId: state.attachmentId
              }).pipe(Effect.ensuring(Effect.sync(() => state.answered++)))
            )
          })
          const attached = yield* Effect.makeLatch(false)
          yield* client.Sessions.Attach({ sessionId: session.id, cols: 80, rows: 24 }).pipe(
            Stream.runForEach((event) =>
              event._tag === "Attached"
                ? Effect.zipRight(
                    Effect.sync(() => (state.attachmentId = event.attachmentId)),
                    Effect.zipRight(
                      event.screen === null ? Effect.void : Terminals.feed(terminal, event.screen.vt),
                      attached.open
                    )
                  )
                : event._tag === "Output"
                  ? Terminals.feed(terminal, event.data)
                  : Effect.void
            ),
            Effect.ignore,
            Effect.forkScoped
          )
          yield* attached.await
          return state
        })
      )
      yield* client.Sessions.Input({ sessionId: session.id, data: new TextEncoder().encode("GO") })
      // Each client's terminal answers the device attributes and the cursor position.
      yield* eventually(
        Effect.sync(() =>
          clients.every((state) => state.answered >= 2) ? Option.some(true) : Option.none()
        ),
        "the clients to answer"
      )
      yield* client.Sessions.Input({ sessionId: session.id, data: new TextEncoder().encode("MARK") })
      const text = yield* endedScreen(client, session.id)
      const got = /GOT (".*")/.exec(text)
      expect(got, text).not.toBeNull()
      expect(JSON.parse(got?.[1] ?? "null")).toBe(
        "\x1b[?1;2c" + "\x1b[5;7R" + "\x1b]11;rgb:0b0b/0d0d/1010\x1b\\"
      )
    })
  )
})
