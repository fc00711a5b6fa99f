import { expect, layer } from "@effect/vitest"
import { Chunk, Context, Effect, Layer, Stream } from "effect"
import * as Client from "../../rpc/Client.js"
import { JobSpec } from "../../rpc/Jobs.js"
import { clientLayer } from "../support/Attach.js"
import * as TestServer from "../support/TestServer.js"

class Node extends Context.Tag("test/Node")<Node, TestServer.Running>() {}

const NodeLive = Layer.scoped(Node, TestServer.startWith({}))

const client = Effect.flatMap(Node, (server) =>
  Effect.map(Layer.build(clientLayer(server.url, server.token)), Context.get(Client.VibesClient))
)

const jobs = 5
const seconds = 30
const padding = "x".repeat(1000 - "job-0 0000 \n".length)

/** What job `k` prints: one 1000-byte line a second. */
const expected = (k: number) =>
  Array.from({ length: seconds }, (_, i) => `job-${k} ${String(i + 1).padStart(4, "0")} ${padding}\n`).join(
    ""
  )

layer(NodeLive, { timeout: 180_000, excludeTestServices: true })("jobs under load", (it) => {
  it.scoped(
    `${jobs} concurrent jobs writing 1 kB/s for ${seconds} s: every byte is stored once, in order, and read back`,
    () =>
      Effect.gen(function* () {
        const rpc = yield* client
        const submitted = yield* Effect.forEach(
          Array.from({ length: jobs }, (_, k) => k),
          (k) =>
            rpc.Jobs.Submit(
              JobSpec.make({
                command: `i=0; while [ $i -lt ${seconds} ]; do i=$((i+1)); printf 'job-${k} %04d %s\\n' $i '${padding}'; sleep 1; done`,
                shell: true
              })
            )
        )
        // Followers see it live, too.
        const live = yield* Effect.forEach(
          submitted,
          (job) =>
            rpc.Jobs.Logs({ jobId: job.id, follow: true }).pipe(
              Stream.runFold("", (acc, o) =>
                o._tag === "JobLog" && o.stream === "stdout" ? acc + o.chunk : acc
              )
            ),
          { concurrency: "unbounded" }
        )
        for (const [k, job] of submitted.entries()) {
          expect(live[k]).toBe(expected(k))
          const stored = Chunk.toReadonlyArray(yield* Stream.runCollect(rpc.Jobs.Logs({ jobId: job.id })))
          const logs = stored.flatMap((o) => (o._tag === "JobLog" ? [o] : []))
          // Sequence numbers are 1, 2, 3, … with nothing missing.
          expect(logs.map((l) => l.seq)).toEqual(Array.from({ length: logs.length }, (_, i) => i + 1))
          expect(
            logs
              .filter((l) => l.stream === "stdout")
              .map((l) => l.chunk)
              .join("")
          ).toBe(expected(k))
          const info = yield* rpc.Jobs.Get({ jobId: job.id })
          expect(info.status).toBe("succeeded")
        }
      })
  )
})
