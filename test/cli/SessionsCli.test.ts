import * as childProcess from "node:child_process"
import { expect, layer } from "@effect/vitest"
import { Context, Effect, Layer, Option } from "effect"
import * as Client from "../../rpc/Client.js"
import { CreateSession } from "../../rpc/Sessions.js"
import { clientLayer, eventually, watch } from "../support/Attach.js"
import * as TestServer from "../support/TestServer.js"
import * as Tmux from "../support/Tmux.js"
import * as Vibes from "../support/VibesProcess.js"

class Node extends Context.Tag("test/Node")<Node, TestServer.Running>() {}

/** `vibes <args>` against the test node. */
const vibes = (args: ReadonlyArray<string>) =>
  Effect.flatMap(Node, (server) =>
    Vibes.run(args, Vibes.childEnv({ VIBES_URL: server.url, VIBES_TOKEN: server.token }))
  )

layer(Layer.scoped(Node, TestServer.start), { timeout: 240_000, excludeTestServices: true })(
  "session commands",
  (it) => {
    it.scoped(
      "new, ls, send, snapshot and kill work with exit codes",
      () =>
        Effect.gen(function* () {
          const created = yield* vibes(["new", "--name", "builder", "--", "/bin/sh"])
          expect(created.code).toBe(0)
          const id = created.stdout.trim()
          expect(id).toMatch(/^test-node_[0-9a-f-]{36}$/)
          const listed = yield* vibes(["ls"])
          expect(listed.code).toBe(0)
          expect(listed.stdout).toContain(id)
          expect(listed.stdout).toContain("builder")
          const server = yield* Node
          const rpc = yield* Effect.map(
            Layer.build(clientLayer(server.url, server.token)),
            Context.get(Client.VibesClient)
          )
          const view = yield* watch(rpc.Sessions.Attach({ sessionId: id }))
          yield* view.until((w) => w.attachmentId() !== "", "the watcher to attach")
          const sent = yield* vibes(["send", id, "echo sent-$((40+2))", "--enter"])
          expect(sent.code).toBe(0)
          yield* view.until((w) => w.text().includes("\r\nsent-42\r\n"), "the output of the sent line")
          const screen = yield* vibes(["snapshot", id])
          expect(screen.code).toBe(0)
          expect(screen.stdout).toMatch(/^sent-42$/m)
          expect((yield* vibes(["kill", id])).code).toBe(0)
          const late = yield* vibes(["send", id, "x"])
          expect(late.code).toBe(1)
          expect(late.stderr).toContain("closed")
          const unknown = yield* vibes(["attach", "0193d9b4-7c1e-7a2b-9c3d-4e5f60718293"])
          expect(unknown.code).toBe(1)
          expect(unknown.stderr).toContain("no session")
          const bad = yield* vibes(["new", "--cwd", "/does/not/exist"])
          expect(bad.code).toBe(2)
          expect(bad.stderr).toContain("/does/not/exist")
          for (const command of ["new", "ls", "attach", "kill", "send", "snapshot"]) {
            const help = yield* vibes([command, "--help"])
            expect(help.code).toBe(0)
          }
        }),
      // About 25 CLI runs of ~1 s each (issue 19): room for a loaded machine.
      180_000
    )

    it.scoped("vibes ls lines every column up under its header, however long the ids", () =>
      Effect.gen(function* () {
        const created = yield* vibes(["new", "--name", "a-rather-long-session-name", "--", "/bin/sh"])
        const id = created.stdout.trim()
        const listed = yield* vibes(["ls", "--state", "running"])
        expect(listed.code).toBe(0)
        const [header = "", ...rows] = listed.stdout.trimEnd().split("\n")
        const row = rows.find((line) => line.startsWith(id)) ?? ""
        expect(row).not.toBe("")
        for (const title of ["STATE", "SIZE", "AT", "LAST ACTIVITY", "NAME", "COMMAND", "CWD"]) {
          const at = header.indexOf(`  ${title}`) + 2
          expect(at, title).toBeGreaterThan(2)
          // Each column starts where its title does: after a gap, with a value.
          expect(row.slice(at - 2, at), title).toBe("  ")
          expect(row.charAt(at), title).not.toBe(" ")
        }
        expect(row).toContain("a-rather-long-session-name")
        yield* vibes(["kill", id])
      })
    )

    it.scoped(
      "vibes ls and vibes events show control characters from the server escaped; --json stays JSON",
      () =>
        Effect.gen(function* () {
          const server = yield* Node
          const rpc = yield* Effect.map(
            Layer.build(clientLayer(server.url, server.token)),
            Context.get(Client.VibesClient)
          )
          // OSC 52 would write the user's clipboard; CSI 2J clear the screen; U+202E reverse the text.
          const name = "\u001b]52;c;aGFja2Vk\u0007owned\u009b2J\u007f\u202egnp.exe"
          const session = yield* rpc.Sessions.Create(
            CreateSession.make({
              command: "/bin/sh",
              args: ["-c", "exec cat # \u001b[2J\u001b]0;title\u0007"],
              name
            })
          )
          /** Whether `text` holds a character a terminal would act on (line breaks aside). */
          const unsafe = (text: string) =>
            [...text].some((char) => {
              const code = char.charCodeAt(0)
              return (code < 0x20 && code !== 0x0a) || (code >= 0x7f && code <= 0x9f) || code === 0x202e
            })
          const listed = yield* vibes(["ls"])
          expect(listed.code).toBe(0)
          const line = listed.stdout.split("\n").find((l) => l.includes(session.id)) ?? ""
          expect(unsafe(line)).toBe(false)
          expect(line).toContain("\\e]52;c;aGFja2Vk\\x07owned\\x9b2J\\x7f\\u202egnp.exe")
          expect(line).toContain("exec cat # \\e[2J\\e]0;title\\x07")
          const events = yield* vibes(["events", "--session", session.id, "--from", "1"])
          expect(events.code).toBe(0)
          expect(events.stdout).toContain("session.created")
          expect(unsafe(events.stdout)).toBe(false)
          // JSON output is JSON: the same name comes back when parsed, and no raw control is printed.
          const asJson = yield* vibes(["ls", "--json"])
          expect(unsafe(asJson.stdout)).toBe(false)
          const entry = asJson.stdout
            .split("\n")
            .filter((l) => l !== "")
            .map((l) => JSON.parse(l) as { id: string; name: string })
            .find((e) => e.id === session.id)
          expect(entry?.name).toBe(name)
          yield* rpc.Sessions.Close({ sessionId: session.id })
        })
    )

    it.scoped(
      "vibes attach in tmux: type, see output, detach with Ctrl-], reattach",
      () =>
        Effect.gen(function* () {
          const server = yield* Node
          const created = yield* vibes(["new", "--", "/bin/sh"])
          const id = created.stdout.trim()
          const term = yield* Tmux.make
          const attach = `${Vibes.commandLine} attach ${id} --url ${server.url} --token ${server.token}`
          yield* term.keys(attach, "Enter")
          yield* term.keys("echo typed-$((6*7))", "Enter")
          yield* Tmux.paneShows(term.pane, /^typed-42$/m)
          yield* term.keys("tput cols", "Enter")
          yield* Tmux.paneShows(term.pane, /^100$/m)
          yield* term.keys("C-]")
          yield* Tmux.paneShows(term.pane, "[vibes: detached")
          // The local terminal is back in cooked mode.
          yield* term.keys("clear; stty -a | tr ' ;' '\\n\\n' | grep -x -e icanon -e -icanon", "Enter")
          yield* Tmux.paneShows(term.pane, /^icanon$/m)
          yield* term.keys("clear", "Enter")
          yield* term.keys(attach, "Enter")
          // The screen comes back from the session's snapshot.
          yield* Tmux.paneShows(term.pane, /^typed-42$/m)
          yield* term.keys("echo again-$((1+1))", "Enter")
          yield* Tmux.paneShows(term.pane, /^again-2$/m)
          yield* term.keys("exit", "Enter")
          yield* Tmux.paneShows(term.pane, "exited with code 0")
          const info = yield* vibes(["ls", "--json"])
          expect(info.stdout).toContain(`"id":"${id}","name":null,"state":"exited"`)
        }),
      180_000
    )

    it.scoped("vibes attach sends a paste larger than one Input in parts, every byte once", () =>
      Effect.gen(function* () {
        const server = yield* Node
        const rpc = yield* Effect.map(
          Layer.build(clientLayer(server.url, server.token)),
          Context.get(Client.VibesClient)
        )
        // 600,000 bytes (more than one Input may carry) piped into `vibes attach`, counted by
        // the program on a raw terminal.
        const bytes = 600_000
        const session = yield* rpc.Sessions.Create(
          CreateSession.make({
            command: "/bin/sh",
            args: ["-c", `stty raw -echo; printf ready; head -c ${bytes} | wc -c; sleep 30`]
          })
        )
        const shows = (text: string) =>
          eventually(
            Effect.map(rpc.Sessions.Snapshot({ sessionId: session.id }), (screen) =>
              screen.text.includes(text) ? Option.some(true) : Option.none()
            ),
            `the screen to show ${text}`
          )
        yield* shows("ready")
        const attach = childProcess.spawn(
          "sh",
          ["-c", `head -c ${bytes} /dev/zero | tr '\\0' a | ${Vibes.commandLine} attach ${session.id}`],
          { env: Vibes.childEnv({ VIBES_URL: server.url, VIBES_TOKEN: server.token }), stdio: "ignore" }
        )
        yield* Effect.addFinalizer(() => Effect.sync(() => attach.kill("SIGKILL")))
        yield* shows(String(bytes))
        yield* rpc.Sessions.Close({ sessionId: session.id })
      })
    )
  }
)
