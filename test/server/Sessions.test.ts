import { expect, layer } from "@effect/vitest"
import { Context, Duration, Effect, Layer, Option, Stream } from "effect"
import xterm from "@xterm/headless"
import * as Client from "../../rpc/Client.js"
import { EventFilter } from "../../rpc/Events.js"
import { CreateSession, maxInputBytes } from "../../rpc/Sessions.js"
import { childrenOf, clientLayer, eventually, fdCount, ptyHostPid, watch } from "../support/Attach.js"
import * as TestServer from "../support/TestServer.js"

class Node extends Context.Tag("test/Node")<Node, TestServer.Running>() {}

const NodeLive = Layer.scoped(Node, TestServer.startWith({ sessionIdleAfter: Duration.seconds(2) }))

const client = Effect.flatMap(Node, (server) =>
  Effect.map(Layer.build(clientLayer(server.url, server.token)), Context.get(Client.VibesClient))
)

const sh = (script: string, extra: Partial<ConstructorParameters<typeof CreateSession>[0]> = {}) =>
  CreateSession.make({ command: "/bin/sh", args: ["-c", script], cols: 80, rows: 24, ...extra })

const encode = (text: string) => new TextEncoder().encode(text)

/** Writes `data` into a headless terminal and resolves once it is parsed. */
const feed = (terminal: xterm.Terminal, data: string | Uint8Array) =>
  Effect.async<void>((resume) => terminal.write(data, () => resume(Effect.void)))

/** Every cell of the active buffer with its attributes, plus cursor and buffer kind. */
const cells = (terminal: xterm.Terminal) => {
  const buffer = terminal.buffer.active
  const rows: Array<string> = []
  for (let y = 0; y < terminal.rows; y++) {
    const line = buffer.getLine(buffer.viewportY + y)
    const row: Array<string> = []
    for (let x = 0; x < terminal.cols; x++) {
      const cell = line?.getCell(x)
      if (cell === undefined) continue
      row.push(
        [
          cell.getChars() || " ",
          cell.getFgColorMode(),
          cell.getFgColor(),
          cell.getBgColorMode(),
          cell.getBgColor(),
          cell.isBold(),
          cell.isItalic(),
          cell.isUnderline(),
          cell.isInverse()
        ].join(",")
      )
    }
    rows.push(row.join("|"))
  }
  return { type: buffer.type, cursor: [buffer.cursorX, buffer.cursorY], rows }
}

const drawing = [
  "\\033[2J\\033[H",
  "\\033[1;31mbold red\\033[0m plain \\033[4;32munderlined green\\033[0m\\n",
  "\\033[38;5;208m256-colour orange\\033[0m \\033[48;2;10;20;200mtruecolor bg\\033[0m\\n",
  "\\033[7;3Hmoved\\033[3;1Hline three\\033[K",
  "\\033[?1049h\\033[H\\033[2Jin the alternate screen \\033[35mmagenta\\033[0m",
  "\\033[12;40H\\033[1;44mcursor here\\033[0m\\033[10;5H"
].join("")

layer(NodeLive, { timeout: 240_000, excludeTestServices: true })("terminal sessions", (it) => {
  it.scoped("the attach snapshot renders the same screen as a terminal fed the raw bytes", () =>
    Effect.gen(function* () {
      const rpc = yield* client
      const session = yield* rpc.Sessions.Create(
        sh(`read go; printf '${drawing}'; printf 'DONE\\033[10;5H'; exec cat`, {
          env: { PS1: "" }
        })
      )
      expect(session.state).toBe("running")
      expect([session.cols, session.rows]).toEqual([80, 24])
      const first = yield* watch(rpc.Sessions.Attach({ sessionId: session.id, cols: 80, rows: 24 }))
      yield* first.until((w) => w.screen() !== null, "the first screen")
      yield* rpc.Sessions.Input({ sessionId: session.id, data: encode("go\r") })
      yield* first.until((w) => w.text().includes("DONE"), "the drawing")

      const second = yield* watch(rpc.Sessions.Attach({ sessionId: session.id, readOnly: true }))
      yield* second.until((w) => w.screen() !== null, "the second client's screen")
      const screen = second.screen()
      expect(screen?.altScreen).toBe(true)
      expect(screen?.seq).toBe(first.seq())

      const reference = new xterm.Terminal({ cols: 80, rows: 24, allowProposedApi: true })
      yield* feed(reference, first.screen()?.vt ?? "")
      yield* feed(reference, new Uint8Array(first.bytes()))
      const restored = new xterm.Terminal({ cols: 80, rows: 24, allowProposedApi: true })
      yield* feed(restored, screen?.vt ?? "")
      expect(cells(restored)).toEqual(cells(reference))
      expect(cells(reference).type).toBe("alternate")
      const snapshot = yield* rpc.Sessions.Snapshot({ sessionId: session.id })
      expect(snapshot.text).toContain("in the alternate screen magenta")
      expect(snapshot.text).toContain("cursor here")
      yield* rpc.Sessions.Close({ sessionId: session.id })
    })
  )

  it.scoped("two attached clients receive identical bytes; a read-only client cannot write", () =>
    Effect.gen(function* () {
      const rpc = yield* client
      const session = yield* rpc.Sessions.Create(sh("exec cat"))
      const writer = yield* watch(rpc.Sessions.Attach({ sessionId: session.id, cols: 80, rows: 24 }))
      const watcher = yield* watch(rpc.Sessions.Attach({ sessionId: session.id, readOnly: true }))
      yield* writer.until((w) => w.attachmentId() !== "", "the writer to attach")
      yield* watcher.until((w) => w.attachmentId() !== "", "the watcher to attach")
      const start = Math.max(writer.seq(), watcher.seq())
      for (let i = 0; i < 50; i++) {
        yield* rpc.Sessions.Input({
          sessionId: session.id,
          data: encode(`line ${i} ${"x".repeat(i * 20)}\r`),
          attachmentId: writer.attachmentId()
        })
      }
      const done = (w: typeof writer) =>
        w.text().includes(`line 49 ${"x".repeat(980)}\r\n`) && w.text().split("line 49").length >= 3
      yield* writer.until(done, "the writer's echo")
      yield* watcher.until(done, "the watcher's copy")
      const from = (w: typeof writer) => {
        const bytes = w.bytes()
        const skip = start - (w.seq() - bytes.length)
        return bytes.subarray(skip)
      }
      expect(Buffer.compare(from(writer), from(watcher))).toBe(0)
      expect(from(writer).length).toBeGreaterThan(2 * 20 * 49 * 25)

      const refused = yield* Effect.flip(
        rpc.Sessions.Input({
          sessionId: session.id,
          data: encode("nope\r"),
          attachmentId: watcher.attachmentId()
        })
      )
      expect(refused._tag).toBe("ReadOnlyAttachment")
      const refusedResize = yield* Effect.flip(
        rpc.Sessions.Resize({
          sessionId: session.id,
          cols: 100,
          rows: 30,
          attachmentId: watcher.attachmentId()
        })
      )
      expect(refusedResize._tag).toBe("ReadOnlyAttachment")
      const info = yield* rpc.Sessions.Get({ sessionId: session.id })
      expect(info.attachedClients).toBe(2)
      // Up to the byte while the session runs, not as of its last idle point.
      expect(info.outputBytes).toBe(writer.seq())
      const server = yield* Node
      const metrics = yield* Effect.promise(() =>
        fetch(`${server.url}/metrics`, { headers: { authorization: `Bearer ${server.token}` } }).then((r) =>
          r.text()
        )
      )
      const gauge = (name: string) =>
        Number(
          metrics
            .split("\n")
            .find((l) => l.startsWith(`${name}{`))
            ?.split(" ")[1]
        )
      expect(gauge("vibes_session_attached_clients")).toBeGreaterThanOrEqual(2)
      expect(gauge("vibes_sessions_live")).toBeGreaterThanOrEqual(1)
      expect(gauge("vibes_session_output_bytes_total")).toBeGreaterThan(0)
      yield* rpc.Sessions.Close({ sessionId: session.id })
      yield* writer.until((w) => Option.isSome(w.done()), "the writer's stream to end")
      expect(writer.events.at(-1)?._tag).toBe("Ended")
    })
  )

  it.scoped("resize reaches the program, and exit codes and signals are recorded", () =>
    Effect.gen(function* () {
      const rpc = yield* client
      const shell = yield* rpc.Sessions.Create(
        CreateSession.make({ command: "/bin/sh", cols: 91, rows: 20, env: { PS1: "$ " } })
      )
      const view = yield* watch(rpc.Sessions.Attach({ sessionId: shell.id }))
      // Typed before the first prompt, the echo of the line would come before it.
      yield* view.until(
        (w) => (w.screen()?.text ?? "").startsWith("$") || w.text().includes("$ "),
        "the first prompt"
      )
      yield* rpc.Sessions.Input({ sessionId: shell.id, data: encode("tput cols; stty size\r") })
      yield* view.until((w) => w.text().includes("\r\n91\r\n20 91"), "tput cols = 91")
      yield* rpc.Sessions.Resize({ sessionId: shell.id, cols: 132, rows: 40 })
      yield* rpc.Sessions.Input({ sessionId: shell.id, data: encode("tput cols; stty size\r") })
      yield* view.until((w) => w.text().includes("\r\n132\r\n40 132"), "tput cols = 132")
      expect(view.events.some((e) => e._tag === "Resized" && e.cols === 132)).toBe(true)
      yield* rpc.Sessions.Input({ sessionId: shell.id, data: encode("exit 7\r") })
      yield* view.until((w) => Option.isSome(w.done()), "the session to end")
      const ended = view.events.at(-1)
      expect(ended?._tag === "Ended" && [ended.state, ended.exitCode, ended.exitSignal]).toEqual([
        "exited",
        7,
        null
      ])
      const exited = yield* rpc.Sessions.Get({ sessionId: shell.id })
      expect([exited.state, exited.exitCode, exited.exitSignal, exited.cols]).toEqual([
        "exited",
        7,
        null,
        132
      ])

      const sleeper = yield* rpc.Sessions.Create(sh("exec sleep 1000"))
      const sleeping = yield* watch(rpc.Sessions.Attach({ sessionId: sleeper.id }))
      yield* rpc.Sessions.Signal({ sessionId: sleeper.id, signal: "KILL" })
      // `Ended` goes out once the registry has the exit.
      yield* sleeping.until((w) => Option.isSome(w.done()), "the sleeper to die")
      const killed = yield* rpc.Sessions.Get({ sessionId: sleeper.id })
      expect(killed.state).toBe("exited")
      expect([killed.exitSignal, killed.exitCode]).toEqual(["SIGKILL", null])
      const events = yield* rpc.Events.Read({
        from: 1,
        filter: EventFilter.make({ sessionId: sleeper.id }),
        limit: 100
      })
      expect(events.map((e) => e.type)).toEqual(
        expect.arrayContaining(["session.created", "session.started", "session.exited"])
      )
    })
  )

  it.scoped("bad input gets a typed error with a clear message and leaves nothing behind", () =>
    Effect.gen(function* () {
      const server = yield* Node
      const rpc = yield* client
      // Make sure the host runs and has settled before counting its descriptors.
      const probe = yield* rpc.Sessions.Create(sh("exit 0"))
      yield* rpc.Sessions.Close({ sessionId: probe.id })
      const host = ptyHostPid(server.dataDir) ?? 0
      const fdsBefore = fdCount(host)
      const before = (yield* rpc.Sessions.List({})).length

      const zero = yield* Effect.flip(rpc.Sessions.Create(sh("true", { cols: 0 })))
      expect(zero._tag).toBe("InvalidSessionRequest")
      expect(zero.message).toContain("1 to 1000")
      const huge = yield* Effect.flip(rpc.Sessions.Create(sh("true", { rows: 5000 })))
      expect(huge._tag).toBe("InvalidSessionRequest")
      const noCwd = yield* Effect.flip(rpc.Sessions.Create(sh("true", { cwd: "/does/not/exist" })))
      expect(noCwd._tag === "SpawnFailed" && noCwd.reason).toBe("cwd")
      expect(noCwd.message).toContain("/does/not/exist")
      const noCommand = yield* Effect.flip(
        rpc.Sessions.Create(CreateSession.make({ command: "surely-not-a-command-4711" }))
      )
      expect(noCommand._tag === "SpawnFailed" && noCommand.reason).toBe("command")
      expect(noCommand.message).toContain("surely-not-a-command-4711")
      const unknown = yield* Effect.flip(
        rpc.Sessions.Input({ sessionId: "0193d9b4-7c1e-7a2b-9c3d-4e5f60718293", data: encode("x") })
      )
      expect(unknown._tag).toBe("SessionNotFound")
      const malformed = yield* Effect.flip(rpc.Sessions.Get({ sessionId: "../../etc/passwd" }))
      expect(malformed._tag).toBe("SessionNotFound")

      const done = yield* rpc.Sessions.Create(sh("read x; exit 3"))
      const ending = yield* watch(rpc.Sessions.Attach({ sessionId: done.id }))
      yield* rpc.Sessions.Input({ sessionId: done.id, data: encode("\r") })
      yield* ending.until((w) => Option.isSome(w.done()), "the session to exit")
      const late = yield* Effect.flip(rpc.Sessions.Input({ sessionId: done.id, data: encode("x") }))
      expect(late._tag).toBe("SessionNotRunning")
      expect(late.message).toContain("exited")
      const live = yield* rpc.Sessions.Create(sh("exec cat"))
      const oversize = yield* Effect.flip(
        rpc.Sessions.Input({ sessionId: live.id, data: new Uint8Array(maxInputBytes + 1) })
      )
      expect(oversize._tag).toBe("InvalidSessionRequest")
      expect(oversize.message).toContain("larger than the limit")
      yield* rpc.Sessions.Close({ sessionId: live.id })

      // Only the two sessions that started are registered, and the host holds no extra descriptor.
      expect((yield* rpc.Sessions.List({})).length).toBe(before + 2)
      yield* eventually(
        Effect.sync(() => (fdCount(host) <= fdsBefore ? Option.some(true) : Option.none())),
        `the host's descriptors to return to ${fdsBefore}`
      )
    })
  )

  it.scoped(
    "text a program or the database cannot take, or too much of it, is refused naming the field, and nothing is created",
    () =>
      Effect.gen(function* () {
        const rpc = yield* client
        const before = (yield* rpc.Sessions.List({})).length
        const { head } = yield* rpc.Events.Head()
        const kib = (n: number) => "x".repeat(n * 1024)
        const cases: ReadonlyArray<
          readonly [string, Partial<ConstructorParameters<typeof CreateSession>[0]>]
        > = [
          ["command", { command: "/bin/sh\u0000-x" }],
          ["args.1", { args: ["-c", "echo a\u0000b"] }],
          ["env.GREETING", { env: { GREETING: "hello\u0000" } }],
          ["env.BAD\uFFFDNAME", { env: { "BAD\u0000NAME": "x" } }],
          ["env.A=B", { env: { "A=B": "x" } }],
          ["env.", { env: { "": "x" } }],
          ["name", { name: "evil\u0000name" }],
          ["cwd", { cwd: "/tmp\u0000" }],
          // Over the kernel's limit for one argument (E2BIG).
          ["args.1", { args: ["-c", kib(200)] }],
          ["env.BIG", { env: { BIG: kib(130) } }],
          // Each under it, together more than fits the session.created event.
          ["args", { args: ["-c", "true", ...Array.from({ length: 10 }, () => kib(30))] }]
        ]
        for (const [field, extra] of cases) {
          const refused = yield* Effect.flip(rpc.Sessions.Create(sh("exit 0", extra)))
          expect(refused._tag).toBe("InvalidSessionRequest")
          if (refused._tag === "InvalidSessionRequest") expect(refused.field).toBe(field)
          expect(refused.message.length).toBeLessThan(400)
        }
        expect((yield* rpc.Sessions.List({})).length).toBe(before)
        const created = yield* rpc.Events.Read({
          from: head + 1,
          filter: EventFilter.make({ types: ["session.created"] }),
          limit: 100
        })
        expect(created).toEqual([])
        // Just under the limits is accepted and recorded whole.
        const large = yield* rpc.Sessions.Create(
          sh("exit 0", { args: ["-c", "exit 0", ...Array.from({ length: 6 }, () => kib(30))] })
        )
        expect(large.args.length).toBe(8)
        const recorded = yield* rpc.Events.Read({
          from: head + 1,
          filter: EventFilter.make({ sessionId: large.id, types: ["session.created"] }),
          limit: 1
        })
        expect((recorded[0]?.data as { args: ReadonlyArray<string> } | undefined)?.args.length).toBe(8)
      })
  )

  it.scoped("a screen too large for a snapshot event is not recorded as one, and the history goes on", () =>
    Effect.gen(function* () {
      const rpc = yield* client
      // Every cell in its own colours: the serialized screen is far over the 256 KiB event limit.
      const paint = `awk 'BEGIN { for (i = 0; i < 40000; i++) printf "\\033[38;5;%dm\\033[48;5;%dm%c", i % 256, (i * 7) % 256, 65 + i % 26 }'`
      const session = yield* rpc.Sessions.Create(sh(`${paint}; exec cat`, { cols: 400, rows: 100 }))
      const events = rpc.Events.Read({
        from: 1,
        filter: EventFilter.make({ sessionId: session.id }),
        limit: 1000
      })
      yield* eventually(
        Effect.map(events, (found) =>
          found.some((e) => e.type === "session.idle") ? Option.some(true) : Option.none()
        ),
        "the session to go idle (when a snapshot is taken)"
      )
      yield* rpc.Sessions.Input({ sessionId: session.id, data: encode("after-the-screen\r") })
      const recorded = yield* eventually(
        Effect.map(events, (found) =>
          found.some(
            (e) =>
              e.type === "session.output" &&
              Buffer.from(e.bytes ?? [])
                .toString()
                .includes("after-the-screen")
          )
            ? Option.some(found)
            : Option.none()
        ),
        "the input's echo to be recorded"
      )
      expect(recorded.filter((e) => e.type === "event.dropped")).toEqual([])
      expect(recorded.filter((e) => e.type === "session.snapshot")).toEqual([])
      yield* rpc.Sessions.Close({ sessionId: session.id })
    })
  )

  it.scoped("200 sessions created and closed leave no process and no file descriptor behind", () =>
    Effect.gen(function* () {
      const server = yield* Node
      const rpc = yield* client
      const warm = yield* rpc.Sessions.Create(sh("exec cat"))
      yield* rpc.Sessions.Close({ sessionId: warm.id })
      const host = ptyHostPid(server.dataDir) ?? 0
      // Nothing may run afterwards that did not run before (the host's own helpers stay: tsx runs
      // esbuild as a child when the host is started from the sources).
      const own = childrenOf(host)
      const fdsBefore = fdCount(host)
      yield* Effect.forEach(
        Array.from({ length: 200 }, (_, i) => i),
        (i) =>
          Effect.gen(function* () {
            const session = yield* rpc.Sessions.Create(sh(i % 2 === 0 ? "exec cat" : "exec sleep 1000"))
            yield* rpc.Sessions.Close({ sessionId: session.id })
          }),
        { concurrency: 8, discard: true }
      )
      yield* eventually(
        Effect.sync(() =>
          childrenOf(host).every((pid) => own.includes(pid)) && fdCount(host) <= fdsBefore
            ? Option.some(true)
            : Option.none()
        ),
        "every PTY process and descriptor to be gone"
      )
      expect(childrenOf(host).filter((pid) => !own.includes(pid))).toEqual([])
    })
  )

  it.scoped("the screen at a past offset is rebuilt from the event log", () =>
    Effect.gen(function* () {
      const rpc = yield* client
      const session = yield* rpc.Sessions.Create(sh("exec cat"))
      const view = yield* watch(rpc.Sessions.Attach({ sessionId: session.id }))
      const recorded = (text: string) =>
        rpc.Events.Subscribe({
          from: { _tag: "Offset", offset: 1 },
          filter: EventFilter.make({ sessionId: session.id, types: ["session.output"] })
        }).pipe(
          Stream.filter((event) =>
            Buffer.from(event.bytes ?? [])
              .toString("utf8")
              .includes(text)
          ),
          Stream.runHead,
          Effect.map(Option.getOrThrow)
        )
      yield* rpc.Sessions.Input({ sessionId: session.id, data: encode("first words\r") })
      const firstEvent = yield* recorded("first words\r\n")
      yield* rpc.Sessions.Input({ sessionId: session.id, data: encode("second words\r") })
      yield* view.until((w) => w.text().split("second words").length === 3, "the second echo")
      yield* recorded("second words\r\n")
      const past = yield* rpc.Sessions.ScreenAt({
        sessionId: session.id,
        at: { _tag: "Offset", offset: firstEvent.offset }
      })
      expect(past.text).toContain("first words")
      expect(past.text).not.toContain("second words")
      const now = yield* rpc.Sessions.ScreenAt({
        sessionId: session.id,
        at: { _tag: "Offset", offset: Number.MAX_SAFE_INTEGER }
      })
      expect(now.text).toContain("second words")
      yield* rpc.Sessions.Close({ sessionId: session.id })
    })
  )

  it.scoped("a session closed while its end is being recorded stays exited, with its exit code", () =>
    Effect.gen(function* () {
      const rpc = yield* client
      // What the program leaves behind ignores the hangup, so its PTY's release waits out the
      // grace before the group's SIGKILL: the session's end is recorded for two seconds, and a
      // Close then must wait for it rather than record the session as closed.
      const session = yield* rpc.Sessions.Create(sh("trap '' HUP; sleep 30 & exit 3"))
      yield* eventually(
        Effect.map(rpc.Sessions.Get({ sessionId: session.id }), (info) =>
          info.state === "running" ? Option.none() : Option.some(info)
        ),
        "the program to exit"
      )
      const closed = yield* rpc.Sessions.Close({ sessionId: session.id })
      expect(closed).toMatchObject({ state: "exited", exitCode: 3 })
      expect(yield* rpc.Sessions.Get({ sessionId: session.id })).toMatchObject({
        state: "exited",
        exitCode: 3
      })
    })
  )
})
