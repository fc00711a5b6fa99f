import { expect, layer } from "@effect/vitest"
import { Context, Duration, Effect, Layer, Option, Stream } from "effect"
import * as Client from "../../rpc/Client.js"
import { EventFilter, type StoredEvent } from "../../rpc/Events.js"
import { CreateSession } from "../../rpc/Sessions.js"
import { clientLayer, eventually, ptyHostPid, watch, type Watched } from "../support/Attach.js"
import * as TestServer from "../support/TestServer.js"

class Node extends Context.Tag("test/Node")<Node, TestServer.Running>() {}

const NodeLive = Layer.scoped(Node, TestServer.startWith({ sessionIdleAfter: Duration.seconds(1) }))

const client = Effect.flatMap(Node, (server) =>
  Effect.map(Layer.build(clientLayer(server.url, server.token)), Context.get(Client.VibesClient))
)

/** The starting screen and every byte after it. */
const seen = (watched: Watched) => `${watched.screen()?.text ?? ""}\n${watched.text()}`

const encode = (text: string) => new TextEncoder().encode(text)

/** The session's events of `types`, as they are written, until `count` have arrived. */
const sessionEvents = (rpc: Client.Client, sessionId: string, types: ReadonlyArray<string>, count: number) =>
  rpc.Events.Subscribe({
    from: { _tag: "Offset", offset: 1 },
    filter: EventFilter.make({ sessionId, types })
  }).pipe(
    Stream.take(count),
    Stream.runCollect,
    Effect.map((chunk): ReadonlyArray<StoredEvent> => [...chunk]),
    Effect.timeoutFail({
      duration: "60 seconds",
      onTimeout: () => new Error(`timed out waiting for ${types.join(", ")}`)
    })
  )

layer(NodeLive, { timeout: 240_000, excludeTestServices: true })("session lifecycle", (it) => {
  it.scoped("a quiet session goes idle, becomes active with new output, and a bell is recorded", () =>
    Effect.gen(function* () {
      const rpc = yield* client
      const session = yield* rpc.Sessions.Create(
        CreateSession.make({ command: "/bin/sh", args: ["-c", "read x; printf 'ring\\a'; exec cat"] })
      )
      const idle = yield* sessionEvents(rpc, session.id, ["session.idle"], 1)
      expect(idle[0]?.type).toBe("session.idle")
      yield* rpc.Sessions.Input({ sessionId: session.id, data: encode("go\r") })
      // Until both the activity and the bell are in (on a loaded machine the session may go idle
      // again before the screen model has seen the bell).
      const seen = new Set<string>()
      const events = yield* rpc.Events.Subscribe({
        from: { _tag: "Offset", offset: 1 },
        filter: EventFilter.make({
          sessionId: session.id,
          types: ["session.idle", "session.active", "session.bell"]
        })
      }).pipe(
        Stream.tap((e) => Effect.sync(() => seen.add(e.type))),
        Stream.takeUntil(() => seen.has("session.active") && seen.has("session.bell")),
        Stream.runCollect,
        Effect.map((chunk) => [...chunk]),
        Effect.timeoutFail({
          duration: "60 seconds",
          onTimeout: () => new Error(`timed out waiting for session.active and session.bell`)
        })
      )
      expect(new Set(events.map((e) => e.type))).toEqual(
        new Set(["session.active", "session.bell", "session.idle"])
      )
      // Idle first, then active.
      expect(events[0]?.type).toBe("session.idle")
      // Going idle records a snapshot, so the screen can be rebuilt cheaply.
      const snapshots = yield* sessionEvents(rpc, session.id, ["session.snapshot"], 1)
      expect(snapshots).toHaveLength(1)
      yield* rpc.Sessions.Close({ sessionId: session.id })
    })
  )

  it.scoped("restart policies: always starts the command again, on-failure only when it failed", () =>
    Effect.gen(function* () {
      const rpc = yield* client
      const always = yield* rpc.Sessions.Create(
        CreateSession.make({
          command: "/bin/sh",
          // Each run prints a mark of its own (not its pid: in namespaces every run has the same).
          args: ["-c", "echo run-$(date +%s%N); exit 0"],
          restartPolicy: "always"
        })
      )
      const view = yield* watch(rpc.Sessions.Attach({ sessionId: always.id }))
      yield* view.until((w) => new Set(seen(w).match(/run-\d+/g)).size >= 3, "three runs")
      const info = yield* rpc.Sessions.Get({ sessionId: always.id })
      expect(info.restarts).toBeGreaterThanOrEqual(2)
      expect(view.text()).toContain("[vibes: restarting /bin/sh")
      const closed = yield* rpc.Sessions.Close({ sessionId: always.id })
      expect(closed.state).toBe("closed")

      const succeeded = yield* rpc.Sessions.Create(
        CreateSession.make({
          command: "/bin/sh",
          args: ["-c", "read x; exit 0"],
          restartPolicy: "on-failure"
        })
      )
      const ending = yield* watch(rpc.Sessions.Attach({ sessionId: succeeded.id }))
      yield* rpc.Sessions.Input({ sessionId: succeeded.id, data: encode("\r") })
      // `Ended` goes out once the registry has the exit, and only when no restart follows.
      yield* ending.until((w) => Option.isSome(w.done()), "the successful command to end")
      expect(ending.events.at(-1)?._tag).toBe("Ended")
      const done = yield* rpc.Sessions.Get({ sessionId: succeeded.id })
      expect([done.state, done.exitCode, done.restarts]).toEqual(["exited", 0, 0])
    })
  )

  it.scoped(
    "when the PTY host dies with its programs, sessions are marked lost and on-failure ones start again with the old screen",
    () =>
      Effect.gen(function* () {
        const server = yield* Node
        const rpc = yield* client
        const keep = yield* rpc.Sessions.Create(
          CreateSession.make({
            command: "/bin/sh",
            args: ["-c", "echo screen-of-$((20+22)); exec cat"],
            restartPolicy: "on-failure"
          })
        )
        const drop = yield* rpc.Sessions.Create(
          CreateSession.make({ command: "/bin/sh", args: ["-c", "exec cat"] })
        )
        const view = yield* watch(rpc.Sessions.Attach({ sessionId: keep.id }))
        yield* view.until((w) => seen(w).includes("screen-of-42"), "the first output")
        const host = ptyHostPid(server.dataDir) ?? 0
        process.kill(host, "SIGKILL")
        const lost = yield* sessionEvents(rpc, drop.id, ["session.lost"], 1)
        expect(lost[0]?.severity).toBe("warn")
        // The event is durable first, then the session's row says so (a moment later).
        const dropped = yield* eventually(
          Effect.map(rpc.Sessions.Get({ sessionId: drop.id }), (info) =>
            info.state === "running" ? Option.none() : Option.some(info)
          ),
          "the session's row to say it was lost"
        )
        expect(dropped.state).toBe("lost")
        const late = yield* Effect.flip(rpc.Sessions.Input({ sessionId: drop.id, data: encode("x") }))
        expect(late._tag).toBe("SessionNotRunning")

        yield* view.until((w) => seen(w).split("screen-of-42").length >= 4, "the restarted command's output")
        const revived = yield* rpc.Sessions.Get({ sessionId: keep.id })
        expect([revived.state, revived.restarts]).toEqual(["running", 1])
        // The old screen comes first (replayed as scrollback), then the notice, then the new run.
        const text = seen(view)
        const notice = text.indexOf("[vibes: restarting /bin/sh")
        expect(notice).toBeGreaterThan(0)
        expect(text.indexOf("screen-of-42")).toBeLessThan(notice)
        expect(text.lastIndexOf("screen-of-42")).toBeGreaterThan(notice)
        const screen = yield* rpc.Sessions.Snapshot({ sessionId: keep.id })
        expect(screen.text).toContain("[vibes: restarting /bin/sh")
        yield* rpc.Sessions.Input({ sessionId: keep.id, data: encode("still here\r") })
        yield* view.until((w) => w.text().includes("still here\r\nstill here"), "the revived session's echo")
        yield* rpc.Sessions.Close({ sessionId: keep.id })
      })
  )
})
