import * as fs from "node:fs"
import * as path from "node:path"
import { describe, expect, it } from "@effect/vitest"
import { Context, Effect, Exit, Layer, Option, Redacted, Stream } from "effect"
import * as NodeSocket from "@effect/platform-node/NodeSocket"
import * as Client from "../../rpc/Client.js"
import { EventFilter } from "../../rpc/Events.js"
import { isFinal, JobSpec } from "../../rpc/Jobs.js"
import { eventually } from "../support/Attach.js"
import * as SmallFs from "../support/SmallFs.js"
import * as Vibes from "../support/VibesProcess.js"

/** Fills the filesystem of `dir` up to the last block, in a file of its own; returns the file. */
const fillUp = (dir: string) => {
  const file = path.join(dir, "ballast")
  const fd = fs.openSync(file, "w")
  const block = Buffer.alloc(1024 * 1024)
  try {
    for (;;) fs.writeSync(fd, block)
  } catch {
    // ENOSPC: megabytes first, then what is left byte by byte in smaller writes.
    for (const size of [65536, 4096, 512, 1]) {
      try {
        for (;;) fs.writeSync(fd, block.subarray(0, size))
      } catch {
        // full at this size
      }
    }
  } finally {
    fs.closeSync(fd)
  }
  return file
}

describe("a full disk", () => {
  it.scopedLive(
    "writes fail cleanly while the embedded Postgres's disk is full, nothing acknowledged is lost, and everything resumes when space returns",
    () =>
      Effect.gen(function* () {
        const dataDir = yield* SmallFs.make(192)
        const serving = yield* Vibes.serve(
          dataDir,
          Vibes.childEnv({ DATABASE_URL: undefined, VIBES_ALERT_INTERVAL: "200 millis" })
        )
        const token = fs.readFileSync(path.join(dataDir, "admin-token"), "utf8").trim()
        const client = yield* Effect.map(
          Layer.build(
            Client.layer({ url: serving.url, token: Option.some(Redacted.make(token)) }).pipe(
              Layer.provide(NodeSocket.layerWebSocketConstructor)
            )
          ),
          Context.get(Client.VibesClient)
        )
        const run = (command: string) =>
          Effect.gen(function* () {
            const job = yield* client.Jobs.Submit(JobSpec.make({ command, shell: true }))
            return yield* eventually(
              Effect.map(client.Jobs.Get({ jobId: job.id }), (info) =>
                isFinal(info.status) ? Option.some(info) : Option.none()
              ),
              `job ${job.id} to finish`,
              60_000
            )
          })
        const before = yield* run("echo before-the-disk-filled")
        expect(before.status).toBe("succeeded")
        const headBefore = (yield* client.Events.Head()).head

        const ballast = fillUp(dataDir)
        // While full: calls that write fail with an error (or wait), and the node stays up.
        // A job whose output (1 MB) the log must grow for, and a few more calls.
        const during = yield* run("head -c 1000000 /dev/zero | tr '\\0' x | fold -w 100").pipe(
          Effect.timeout("60 seconds"),
          Effect.exit
        )
        const calls = yield* Effect.forEach(Array.from({ length: 2 }), () =>
          run("echo small").pipe(Effect.timeout("20 seconds"), Effect.exit)
        )
        yield* Effect.logInfo(
          `small while full: ${calls.map((c) => (Exit.isSuccess(c) ? c.value.status : "failed")).join(",")}`
        )
        yield* Effect.logInfo(
          `while full: ${Exit.isSuccess(during) ? `${during.value.status} ${JSON.stringify(during.value)}` : String(during.cause)}`
        )
        expect(serving.child.exitCode).toBeNull()

        fs.rmSync(ballast)
        // Space is back: new work runs, without a restart.
        const after = yield* eventually(
          run("echo after-space-returned").pipe(Effect.option),
          "a job to run once space returned",
          90_000
        )
        expect(after.status).toBe("succeeded")
        const logs = yield* client.Jobs.Logs({ jobId: after.id, follow: false }).pipe(Stream.runCollect)
        expect([...logs].some((o) => o._tag === "JobLog" && o.chunk.includes("after-space-returned"))).toBe(
          true
        )
        // What was acknowledged before is all there.
        const earlier = yield* client.Events.Read({ from: 1, filter: EventFilter.make({}), limit: 10_000 })
        expect(earlier.filter((e) => e.offset <= headBefore).length).toBe(headBefore)
        const beforeLogs = yield* client.Jobs.Logs({ jobId: before.id, follow: false }).pipe(
          Stream.runCollect
        )
        expect(
          [...beforeLogs].some((o) => o._tag === "JobLog" && o.chunk.includes("before-the-disk-filled"))
        ).toBe(true)
        // The disk was seen to be low, and the failed writes were said to be failed, in the log once
        // it could take them.
        const alerts = yield* client.Events.Read({
          from: 1,
          filter: EventFilter.make({ types: ["system.alert"] }),
          limit: 1000
        })
        const said = alerts.map((a) => a.data as { condition?: string; resolved?: boolean; message: string })
        expect(said.some((a) => a.condition === "disk_low" && a.resolved !== true)).toBe(true)
        expect(said.some((a) => a.message.includes("No space left on device"))).toBe(true)
        const resolved = yield* eventually(
          Effect.map(
            client.Events.Read({
              from: 1,
              filter: EventFilter.make({ types: ["system.alert"] }),
              limit: 1000
            }),
            (events) =>
              Option.fromNullable(
                events.find((e) => (e.data as { condition?: string; resolved?: boolean }).resolved === true)
              )
          ),
          "the disk_low alert to be resolved",
          30_000
        )
        expect((resolved.data as { condition: string }).condition).toBe("disk_low")
        // And the node said so in its log too.
        expect(serving.lines.some((line) => line.includes("No space left on device"))).toBe(true)
      }),
    300_000
  )
})
