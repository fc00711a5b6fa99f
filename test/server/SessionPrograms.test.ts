import { expect, layer } from "@effect/vitest"
import * as fs from "node:fs"
import * as path from "node:path"
import { Chunk, Context, Effect, FastCheck as fc, Layer, Option, Stream } from "effect"
import * as Client from "../../rpc/Client.js"
import { EventFilter } from "../../rpc/Events.js"
import { CreateSession } from "../../rpc/Sessions.js"
import { clientLayer, eventually, stopPtyHostAtEnd } from "../support/Attach.js"
import { int, step } from "../support/RandomOutput.js"
import * as Terminals from "../support/Terminals.js"
import { readableTempDir } from "../support/TempDir.js"
import * as TestServer from "../support/TestServer.js"

class Node extends Context.Tag("test/Node")<Node, TestServer.Running>() {}

const rpc = Effect.flatMap(Node, (server) =>
  Effect.map(Layer.build(clientLayer(server.url, server.token)), Context.get(Client.VibesClient))
)

/** Every output byte of a session up to `upTo`, from its recorded `session.output` events. */
const rawOutput = (client: Client.VibesClient["Type"], sessionId: string, upTo: number) =>
  eventually(
    Effect.map(
      client.Events.Read({
        from: 1,
        filter: EventFilter.make({ sessionId, types: ["session.output"] }),
        limit: 10_000
      }),
      (events) => {
        const bytes = Buffer.concat(
          events.flatMap((event) => (event.bytes !== undefined ? [event.bytes] : []))
        )
        return bytes.length >= upTo ? Option.some(bytes.subarray(0, upTo)) : Option.none()
      }
    ),
    "the output to be recorded"
  )

interface Program {
  readonly name: string
  readonly command: string
  readonly args: ReadonlyArray<string>
  /** Text on the screen once the program has drawn. */
  readonly drawn: string
  readonly env?: Record<string, string>
}

const sample = (dir: string) => {
  const file = path.join(dir, "sample.sh")
  fs.writeFileSync(
    file,
    Array.from(
      { length: 60 },
      (_, n) =>
        `# line ${n}: 日本語 and é\nfunction f${n}() { echo "\\e[3${n % 8}mcolour ${n}\\e[0m" | grep -q x; }`
    ).join("\n")
  )
  return file
}

layer(
  Layer.scoped(
    Node,
    Effect.tap(TestServer.start, (server) => stopPtyHostAtEnd(server.dataDir))
  ),
  { timeout: 240_000, excludeTestServices: true }
)("real programs in sessions", (it) => {
  const programs = (dir: string): ReadonlyArray<Program> => {
    const file = sample(dir)
    return [
      {
        name: "vim",
        command: "vim",
        args: [
          "-u",
          "DEFAULTS",
          "-i",
          "NONE",
          "-c",
          "syntax on | set number cursorline list hlsearch",
          "-c",
          "/echo",
          file
        ],
        drawn: "f3()"
      },
      { name: "less", command: "less", args: ["-R", "-N", "-S", file], drawn: "line 2" },
      { name: "htop", command: "htop", args: ["-d", "5"], drawn: "PID" },
      {
        name: "tmux",
        command: "tmux",
        args: [
          "-L",
          `vibes-29-${process.pid}`,
          "-f",
          "/dev/null",
          "new-session",
          "sh",
          "-c",
          `cat ${file}; exec sh`
        ],
        drawn: "[0]",
        // Without `rep`: xterm.js repeats a character (REP) differently when the output is split
        // between the character and the repeat, so a reference fed it at once may differ.
        env: { TERM: "screen-256color" }
      },
      {
        name: "ncurses demo_menus",
        command: "/usr/libexec/ncurses-examples/demo_menus",
        args: [],
        drawn: "Select"
      }
    ]
  }

  for (const index of [0, 1, 2, 3, 4]) {
    it.scoped(
      `attached after it draws, the screen of ${["vim", "less", "htop", "tmux", "an ncurses program"][index]} is the raw bytes' screen, cell by cell`,
      () =>
        Effect.gen(function* () {
          // The sample is read by the session's program, which may run as the sandbox's user.
          const program = programs(yield* readableTempDir("vibes-programs-"))[index]
          if (program === undefined) return
          const client = yield* rpc
          const session = yield* client.Sessions.Create(
            CreateSession.make({
              command: program.command,
              args: [...program.args],
              env: program.env ?? {},
              cols: 80,
              rows: 24
            })
          )
          yield* eventually(
            Effect.map(client.Sessions.Snapshot({ sessionId: session.id }), (screen) =>
              screen.text.includes(program.drawn) ? Option.some(true) : Option.none()
            ),
            `${program.name} to draw`
          )
          // Attached as a client would be: the first element is the screen.
          const attached = yield* client.Sessions.Attach({
            sessionId: session.id,
            cols: 80,
            rows: 24,
            readOnly: true
          }).pipe(Stream.take(1), Stream.runCollect, Effect.map(Chunk.unsafeHead))
          expect(attached._tag).toBe("Attached")
          if (attached._tag !== "Attached") return
          expect(attached.screen).not.toBeNull()
          if (attached.screen === null) return
          const raw = yield* Terminals.reference(80, 24)
          yield* Terminals.feed(raw, yield* rawOutput(client, session.id, attached.seq))
          const restored = yield* Terminals.reference(80, 24)
          yield* Terminals.feed(restored, attached.screen.vt)
          expect(Terminals.dump(restored)).toEqual(Terminals.dump(raw))
          yield* client.Sessions.Close({ sessionId: session.id })
        })
    )
  }

  it.scoped(
    "random output of a program in a session: the screen on attach is the raw bytes' screen, cells, attributes and modes",
    () =>
      Effect.gen(function* () {
        const client = yield* rpc
        // Read by the session's program, which may run as the sandbox's user.
        const dir = yield* readableTempDir("vibes-random-output-")
        const samples = fc.sample(
          fc.record({
            cols: int(10, 40),
            rows: int(3, 14),
            steps: fc.array(step, { minLength: 1, maxLength: 120 })
          }),
          { seed: 2929, numRuns: 8 }
        )
        for (const [n, sample] of samples.entries()) {
          const file = path.join(dir, `output-${n}`)
          const bytes = Buffer.from(sample.steps.join(""), "utf8")
          fs.writeFileSync(file, bytes)
          // Output post-processing off: the PTY passes the bytes as they are (no LF to CR LF).
          const session = yield* client.Sessions.Create(
            CreateSession.make({
              command: "/bin/sh",
              args: ["-c", 'stty -opost && cat "$1" && exec sleep 600', "sh", file],
              cols: sample.cols,
              rows: sample.rows
            })
          )
          const raw = yield* rawOutput(client, session.id, bytes.length)
          expect(raw.equals(bytes)).toBe(true)
          const attached = yield* client.Sessions.Attach({
            sessionId: session.id,
            cols: sample.cols,
            rows: sample.rows,
            readOnly: true
          }).pipe(Stream.take(1), Stream.runCollect, Effect.map(Chunk.unsafeHead))
          if (attached._tag !== "Attached" || attached.screen === null) {
            return expect.fail(`sample ${n}: no screen on attach (${attached._tag})`)
          }
          const reference = yield* Terminals.reference(sample.cols, sample.rows)
          yield* Terminals.feed(reference, yield* rawOutput(client, session.id, attached.seq))
          const restored = yield* Terminals.reference(sample.cols, sample.rows)
          yield* Terminals.feed(restored, attached.screen.vt)
          expect(Terminals.dump(restored), `sample ${n}: ${JSON.stringify(sample.steps.join(""))}`).toEqual(
            Terminals.dump(reference)
          )
          yield* client.Sessions.Close({ sessionId: session.id })
        }
      }),
    120_000
  )
})
