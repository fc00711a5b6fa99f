/**
 * A whole node on the JetStream backend (`VIBES_EVENT_BACKEND=jetstream`, no `VIBES_NATS_URL`):
 * `vibes serve` starts and supervises its own nats-server, records sessions and jobs in it, and
 * a session survives kill -9 of the server with every byte delivered once after the restart.
 */
import { describe, expect, it } from "@effect/vitest"
import * as fs from "node:fs"
import * as path from "node:path"
import { Chunk, Context, Effect, Exit, Layer, Option, Redacted, Scope, Stream } from "effect"
import * as Client from "../../rpc/Client.js"
import { EventFilter } from "../../rpc/Events.js"
import { JobSpec, RetryPolicy } from "../../rpc/Jobs.js"
import { CreateSession } from "../../rpc/Sessions.js"
import * as FreePort from "../../infra/net/FreePort.js"
import { clientLayer, eventually, stopPtyHostAtEnd, watch } from "../support/Attach.js"
import * as TestDatabase from "../support/TestDatabase.js"
import { tempDir } from "../support/TempDir.js"
import * as Vibes from "../support/VibesProcess.js"

const lines = 1500

const numbers = (text: string) => [...text.matchAll(/line-(\d+)\r\n/g)].map((m) => Number(m[1]))

/** The pid in the bundled nats-server's pid file, if it runs. */
const natsPid = (dataDir: string): Option.Option<number> => {
  try {
    const pid = Number(fs.readFileSync(path.join(dataDir, "nats", "nats-server.pid"), "utf8").trim())
    process.kill(pid, 0)
    return Option.some(pid)
  } catch {
    return Option.none()
  }
}

describe("a node on the JetStream backend", () => {
  it.scopedLive(
    "records sessions and jobs in its bundled nats-server, and a session survives kill -9 of the server",
    () =>
      Effect.gen(function* () {
        const dataDir = yield* tempDir("vibes-jetstream-")
        yield* stopPtyHostAtEnd(dataDir)
        const database = yield* TestDatabase.freshDatabase("vibes_jetstream")
        const env = Vibes.childEnv({
          DATABASE_URL: Redacted.value(database.url),
          VIBES_EVENT_BACKEND: "jetstream"
        })
        const port = yield* FreePort.find()
        const firstScope = yield* Scope.make()
        const first = yield* Vibes.serve(dataDir, env, port).pipe(Scope.extend(firstScope))
        const token = fs.readFileSync(path.join(dataDir, "admin-token"), "utf8").trim()
        const rpc1 = yield* Effect.map(
          Layer.build(clientLayer(first.url, token)).pipe(Scope.extend(firstScope)),
          Context.get(Client.VibesClient)
        )
        expect(Option.isSome(natsPid(dataDir))).toBe(true)

        // A job's output and end are events in the stream.
        const job = yield* rpc1.Jobs.Submit(
          JobSpec.make({
            command: "echo job-on-jetstream",
            shell: true,
            retry: RetryPolicy.make({ maxAttempts: 1, initialDelayMs: 100 })
          })
        )
        const done = yield* rpc1.Events.Subscribe({
          from: { _tag: "Offset", offset: 1 },
          filter: EventFilter.make({ jobId: job.id, types: ["job.done"] })
        }).pipe(Stream.runHead)
        expect(Option.map(done, (event) => (event.data as { status: string }).status)).toEqual(
          Option.some("succeeded")
        )
        // Its output is stored once, in the stream: the job log reads it there.
        const logged = (rpc: Client.Client) =>
          rpc.Jobs.Logs({ jobId: job.id }).pipe(
            Stream.runCollect,
            Effect.map((outputs) =>
              Chunk.toReadonlyArray(outputs).flatMap((o) =>
                o._tag === "JobLog" && o.stream === "stdout" ? [o.chunk] : []
              )
            )
          )
        expect(yield* logged(rpc1)).toEqual(["job-on-jetstream\n"])

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
        const before = yield* watch(rpc1.Sessions.Attach({ sessionId: session.id })).pipe(
          Scope.extend(firstScope)
        )
        yield* before.until((w) => w.attachmentId() !== "", "the first attach")
        yield* rpc1.Sessions.Input({ sessionId: session.id, data: new TextEncoder().encode("go\r") })
        yield* before.until((w) => numbers(w.text()).length >= 200, "some lines before the crash")
        // The output is recorded as raw bytes in the stream.
        const recorded = yield* eventually(
          Effect.map(
            rpc1.Events.Read({
              from: 1,
              filter: EventFilter.make({ sessionId: session.id, types: ["session.output"] }),
              limit: 10_000
            }),
            (events) => {
              const text = Buffer.concat(events.map((e) => e.bytes ?? new Uint8Array())).toString("utf8")
              return text.includes("line-100\r\n") ? Option.some(text) : Option.none()
            }
          ),
          "recorded output in the stream"
        )
        expect(numbers(recorded).slice(0, 100)).toEqual(Array.from({ length: 100 }, (_, i) => i + 1))

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
        expect(after.screen()).toBeNull()
        const all = numbers(Buffer.concat([seen, after.bytes()]).toString("utf8"))
        expect(all).toEqual(Array.from({ length: lines }, (_, i) => i + 1))
        // The events from before the crash are still there, and the stream goes on after them.
        const created = yield* rpc2.Events.Read({
          from: 1,
          filter: EventFilter.make({ sessionId: session.id, types: ["session.created"] }),
          limit: 10
        })
        expect(created).toHaveLength(1)
        expect(yield* logged(rpc2)).toEqual(["job-on-jetstream\n"])
        yield* rpc2.Sessions.Close({ sessionId: session.id })
      }),
    240_000
  )
})
