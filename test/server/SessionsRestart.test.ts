import { describe, expect, it } from "@effect/vitest"
import * as fs from "node:fs"
import * as path from "node:path"
import { Context, Deferred, Effect, Exit, Layer, Option, Redacted, Scope, Stream } from "effect"
import * as Client from "../../rpc/Client.js"
import { EventFilter } from "../../rpc/Events.js"
import * as FreePort from "../../infra/net/FreePort.js"
import * as PtyExitRecords from "../../infra/pty/PtyExitRecords.js"
import { isRunning } from "../../infra/pty/PtyHostRpcs.js"
import { CreateSession } from "../../rpc/Sessions.js"
import { clientLayer, eventually, ptyHostPid, stopPtyHostAtEnd, watch } from "../support/Attach.js"
import * as FakeProvider from "../support/FakeProvider.js"
import * as TestDatabase from "../support/TestDatabase.js"
import { readableTempDir, tempDir, writableTempDir } from "../support/TempDir.js"
import * as Vibes from "../support/VibesProcess.js"

const lines = 3000

/** An OSC "set the window title" sequence: ESC ] … BEL. */
const titleSequence = new RegExp(
  `${String.fromCharCode(27)}\\][^${String.fromCharCode(7)}]*${String.fromCharCode(7)}`,
  "g"
)

const numbers = (text: string) => [...text.matchAll(/line-(\d+)\r\n/g)].map((m) => Number(m[1]))

describe("sessions across a server crash", () => {
  it.scopedLive(
    "kill -9 of vibes serve while a shell prints: after a restart every byte arrives, in order, once",
    () =>
      Effect.gen(function* () {
        const dataDir = yield* tempDir("vibes-restart-")
        yield* stopPtyHostAtEnd(dataDir)
        const database = yield* TestDatabase.freshDatabase("vibes_restart")
        const env = Vibes.childEnv({ DATABASE_URL: Redacted.value(database.url) })

        // A fixed port, so that the CLI client below finds the restarted server where it was.
        const port = yield* FreePort.find()
        const firstScope = yield* Scope.make()
        const first = yield* Vibes.serve(dataDir, env, port).pipe(Scope.extend(firstScope))
        const token = fs.readFileSync(path.join(dataDir, "admin-token"), "utf8").trim()
        const rpc1 = yield* Effect.map(
          Layer.build(clientLayer(first.url, token)).pipe(Scope.extend(firstScope)),
          Context.get(Client.VibesClient)
        )
        const session = yield* rpc1.Sessions.Create(
          CreateSession.make({
            command: "/bin/sh",
            args: [
              "-c",
              `read go; i=0; while [ $i -lt ${lines} ]; do i=$((i+1)); echo line-$i; [ $((i % 5)) -eq 0 ] && sleep 0.01; done; exec cat`
            ],
            env: { PS1: "" }
          })
        )
        const cli = yield* Vibes.start(
          ["attach", session.id, "--read-only", "--url", first.url, "--token", token],
          Vibes.childEnv()
        )
        const before = yield* watch(rpc1.Sessions.Attach({ sessionId: session.id })).pipe(
          Scope.extend(firstScope)
        )
        yield* before.until((w) => w.attachmentId() !== "", "the first attach")
        // Both clients are attached (the CLI's stream is registered before its event is written).
        yield* rpc1.Events.Subscribe({
          from: { _tag: "Offset", offset: 1 },
          filter: EventFilter.make({ sessionId: session.id, types: ["session.attached"] })
        }).pipe(Stream.take(2), Stream.runDrain)
        yield* rpc1.Sessions.Input({ sessionId: session.id, data: new TextEncoder().encode("go\r") })
        yield* before.until((w) => numbers(w.text()).length >= 200, "some lines before the crash")

        first.child.kill("SIGKILL")
        yield* Effect.promise(() => new Promise((resolve) => first.child.once("exit", resolve)))
        yield* Scope.close(firstScope, Exit.void)
        const resumeAt = before.seq()
        const seen = before.bytes()

        const second = yield* Vibes.serve(dataDir, env, port)
        const rpc2 = yield* Effect.map(
          Layer.build(clientLayer(second.url, token)),
          Context.get(Client.VibesClient)
        )
        const after = yield* watch(rpc2.Sessions.Attach({ sessionId: session.id, from: resumeAt }))
        yield* after.until((w) => w.text().includes(`line-${lines}\r\n`), "the last line after the restart")
        // Resumed exactly: no screen to start over from, the bytes continue where they stopped.
        expect(after.screen()).toBeNull()
        const all = numbers(Buffer.concat([seen, after.bytes()]).toString("utf8"))
        expect(all).toEqual(Array.from({ length: lines }, (_, i) => i + 1))
        // `vibes attach` reconnected by itself and resumed at its byte, too.
        yield* cli.untilLine((line) => line.startsWith(`line-${lines}`))
        // While it reconnects it sets the terminal's title (an OSC sequence), which may fall inside a
        // line of the session's output: a terminal shows no trace of it, so neither does the count.
        const shown = cli.stdout
          .map((line) => `${line}\r\n`)
          .join("")
          .replace(titleSequence, "")
        expect(numbers(shown)).toEqual(Array.from({ length: lines }, (_, i) => i + 1))
        const info = yield* rpc2.Sessions.Get({ sessionId: session.id })
        expect(info.state).toBe("running")
        yield* rpc2.Sessions.Close({ sessionId: session.id })
      }),
    240_000
  )

  it.scopedLive(
    "kill -9 of vibes serve for good: the PTY host exits once the session's program has ended, and a later server reports how it ended",
    () =>
      Effect.gen(function* () {
        const dataDir = yield* tempDir("vibes-orphan-")
        // Looked into by the session's program, which may run as the sandbox's user.
        const work = yield* readableTempDir("vibes-orphan-work-")
        yield* stopPtyHostAtEnd(dataDir)
        const database = yield* TestDatabase.freshDatabase("vibes_orphan")
        const idleExitSeconds = 1
        const env = Vibes.childEnv({
          DATABASE_URL: Redacted.value(database.url),
          VIBES_PTY_HOST_IDLE_EXIT: String(idleExitSeconds)
        })

        const firstScope = yield* Scope.make()
        const first = yield* Vibes.serve(dataDir, env).pipe(Scope.extend(firstScope))
        const token = fs.readFileSync(path.join(dataDir, "admin-token"), "utf8").trim()
        const rpc1 = yield* Effect.map(
          Layer.build(clientLayer(first.url, token)).pipe(Scope.extend(firstScope)),
          Context.get(Client.VibesClient)
        )
        // The program ends only once the server is gone, when the test creates `go`.
        const go = path.join(work, "go")
        const session = yield* rpc1.Sessions.Create(
          CreateSession.make({
            command: "/bin/sh",
            args: [
              "-c",
              'echo waiting; while [ ! -e "$1" ]; do sleep 0.05; done; echo finished; exit 7',
              "sh",
              go
            ]
          })
        )
        const watched = yield* watch(rpc1.Sessions.Attach({ sessionId: session.id })).pipe(
          Scope.extend(firstScope)
        )
        yield* watched.until(
          (w) => `${w.screen()?.text ?? ""}${w.text()}`.includes("waiting"),
          "the program to start"
        )
        const host = ptyHostPid(dataDir)
        expect(host).toBeDefined()
        const hostPid = host ?? -1

        first.child.kill("SIGKILL")
        yield* Deferred.await(first.exited)
        yield* Scope.close(firstScope, Exit.void)
        fs.writeFileSync(go, "")

        // Nothing runs in it any more and no server will come: it exits after its idle time.
        yield* eventually(
          Effect.sync(() => (isRunning(hostPid) ? Option.none() : Option.some(true))),
          "the PTY host to exit",
          idleExitSeconds * 1000 + 10_000
        )
        const left = (yield* PtyExitRecords.readAll(dataDir)).flatMap((file) =>
          Option.getOrElse(file.records, () => [])
        )
        expect(left.map((record) => [record.id, record.exit.exitCode])).toEqual([[session.id, 7]])

        const second = yield* Vibes.serve(dataDir, env)
        const rpc2 = yield* Effect.map(
          Layer.build(clientLayer(second.url, token)),
          Context.get(Client.VibesClient)
        )
        const info = yield* eventually(
          Effect.map(rpc2.Sessions.Get({ sessionId: session.id }), (info) =>
            info.state === "running" ? Option.none() : Option.some(info)
          ),
          "the session to end"
        )
        expect(info).toMatchObject({ state: "exited", exitCode: 7, exitSignal: null })
        // What it wrote while no server read it is there too.
        const screen = yield* rpc2.Sessions.Snapshot({ sessionId: session.id })
        expect(screen.text).toContain("waiting")
        expect(screen.text).toContain("finished")
        // The record was taken.
        expect(yield* PtyExitRecords.readAll(dataDir)).toEqual([])
      }),
    240_000
  )

  it.scopedLive(
    "a session that outlives its server keeps its proxy token: its agents reach the proxy through the next server",
    () =>
      Effect.gen(function* () {
        const key = "sk-fake-provider-key-for-the-restart"
        const fake = yield* FakeProvider.make({ apiKey: key })
        const keyFile = path.join(yield* tempDir("vibes-restart-keys-"), "fake.key")
        fs.writeFileSync(keyFile, key, { mode: 0o600 })
        const dataDir = yield* tempDir("vibes-restart-proxy-")
        // Written by the session's program, which may run as the sandbox's user.
        const work = yield* writableTempDir("vibes-restart-proxy-work-")
        const envFile = path.join(work, "env")
        yield* stopPtyHostAtEnd(dataDir)
        const database = yield* TestDatabase.freshDatabase("vibes_restart_proxy")
        const env = Vibes.childEnv({
          DATABASE_URL: Redacted.value(database.url),
          VIBES_PROXY_PROVIDERS: JSON.stringify([FakeProvider.providerConfig("fake", fake.url, { keyFile })])
        })
        /** A chat completion through `url`'s proxy with the session's token, as its agent would. */
        const complete = (url: string, token: string) =>
          Effect.promise(async () => {
            const response = await fetch(`${url}/proxy/fake/v1/chat/completions`, {
              method: "POST",
              headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
              body: JSON.stringify({ model: "gpt-restart", messages: [{ role: "user", content: "hi" }] })
            })
            await response.text()
            return response.status
          })

        const firstScope = yield* Scope.make()
        const first = yield* Vibes.serve(dataDir, env).pipe(Scope.extend(firstScope))
        const adminToken = fs.readFileSync(path.join(dataDir, "admin-token"), "utf8").trim()
        const rpc1 = yield* Effect.map(
          Layer.build(clientLayer(first.url, adminToken)).pipe(Scope.extend(firstScope)),
          Context.get(Client.VibesClient)
        )
        const session = yield* rpc1.Sessions.Create(
          CreateSession.make({
            command: "/bin/sh",
            args: ["-c", `env > ${envFile}.part && mv ${envFile}.part ${envFile} && exec sleep 600`],
            cwd: work
          })
        )
        const written = yield* eventually(
          Effect.sync(() =>
            fs.existsSync(envFile) ? Option.some(fs.readFileSync(envFile, "utf8")) : Option.none()
          ),
          "the session to write its environment"
        )
        const token = /^VIBES_PROXY_TOKEN=(.*)$/m.exec(written)?.[1] ?? ""
        expect(token).toMatch(new RegExp(`^vibes-session\\.${session.id}\\.`))
        expect(yield* complete(first.url, token)).toBe(200)

        first.child.kill("SIGKILL")
        yield* Deferred.await(first.exited)
        yield* Scope.close(firstScope, Exit.void)

        const second = yield* Vibes.serve(dataDir, env)
        const rpc2 = yield* Effect.map(
          Layer.build(clientLayer(second.url, adminToken)),
          Context.get(Client.VibesClient)
        )
        // Attached through the next server: the session has been resumed there.
        const watched = yield* watch(rpc2.Sessions.Attach({ sessionId: session.id }))
        yield* watched.until((w) => w.screen() !== null, "the session to be resumed")
        expect(yield* complete(second.url, token)).toBe(200)

        // Its token still ends with it.
        yield* rpc2.Sessions.Close({ sessionId: session.id })
        expect(yield* complete(second.url, token)).toBe(401)
      }),
    240_000
  )
})
