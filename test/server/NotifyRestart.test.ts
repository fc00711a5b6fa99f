import * as crypto from "node:crypto"
import * as fs from "node:fs"
import * as path from "node:path"
import { describe, expect, it } from "@effect/vitest"
import { Context, Deferred, Effect, Exit, Layer, Option, Redacted, Scope, Stream } from "effect"
import * as Client from "../../rpc/Client.js"
import { JobSpec } from "../../rpc/Jobs.js"
import { AddEndpoint } from "../../rpc/Notify.js"
import { clientLayer, eventually, stopPtyHostAtEnd } from "../support/Attach.js"
import * as TestDatabase from "../support/TestDatabase.js"
import { tempDir } from "../support/TempDir.js"
import * as Vibes from "../support/VibesProcess.js"
import * as WebhookReceiver from "../support/WebhookReceiver.js"

/** A `vibes serve` process on `dataDir` ending with `scope`, and its client. */
const node = (dataDir: string, env: NodeJS.ProcessEnv, scope: Scope.Scope) =>
  Effect.gen(function* () {
    const serving = yield* Vibes.serve(dataDir, env).pipe(Scope.extend(scope))
    const token = fs.readFileSync(path.join(dataDir, "admin-token"), "utf8").trim()
    const rpc = yield* Effect.map(
      Layer.build(clientLayer(serving.url, token)).pipe(Scope.extend(scope)),
      Context.get(Client.VibesClient)
    )
    return { serving, rpc }
  })

const runJob = (rpc: Client.Client) =>
  Effect.gen(function* () {
    const job = yield* rpc.Jobs.Submit(JobSpec.make({ command: "true" }))
    yield* rpc.Jobs.Logs({ jobId: job.id, follow: true }).pipe(Stream.runDrain)
    return job.id
  })

describe("outbound webhooks across a crash", () => {
  it.scopedLive(
    "kill -9 while deliveries are failing: after a restart every event is delivered, in order",
    () =>
      Effect.gen(function* () {
        const secret = `whsec_${crypto.randomBytes(24).toString("base64")}`
        const receiver = yield* WebhookReceiver.start(secret)
        receiver.answer = 503
        const dataDir = yield* tempDir("vibes-notifycrash-")
        yield* stopPtyHostAtEnd(dataDir)
        const database = yield* TestDatabase.freshDatabase("vibes_notifycrash")
        const env = Vibes.childEnv({
          DATABASE_URL: Redacted.value(database.url),
          VIBES_NOTIFY_RETRY_BASE: "50 millis",
          VIBES_NOTIFY_RETRY_MAX: "300 millis"
        })
        const firstScope = yield* Scope.make()
        const first = yield* node(dataDir, env, firstScope)
        yield* first.rpc.Notify.AddEndpoint(
          AddEndpoint.make({
            name: "ci",
            url: receiver.url,
            secret: Redacted.make(secret),
            types: ["job.done"],
            coalesceMillis: 0,
            ratePerMinute: 60_000,
            maxAttempts: 50
          })
        )
        const before = [yield* runJob(first.rpc), yield* runJob(first.rpc), yield* runJob(first.rpc)]
        yield* eventually(
          Effect.sync(() => (receiver.requests.length >= 4 ? Option.some(true) : Option.none())),
          "failed attempts"
        )
        first.serving.child.kill("SIGKILL")
        yield* Deferred.await(first.serving.exited)
        yield* Scope.close(firstScope, Exit.void)

        receiver.answer = 204
        const second = yield* node(dataDir, env, yield* Effect.scope)
        const all = [...before, yield* runJob(second.rpc)]
        const firsts = yield* eventually(
          Effect.sync(() => {
            const seen: Array<string> = []
            for (const { body } of receiver.accepted()) {
              const jobId = (body as { data: { data: { jobId: string } } }).data.data.jobId
              if (!seen.includes(jobId)) seen.push(jobId)
            }
            return all.every((job) => seen.includes(job)) ? Option.some(seen) : Option.none()
          }),
          "every job.done delivered"
        )
        expect(firsts).toEqual(all)
        expect(receiver.requests.every((request) => request.verified)).toBe(true)
      }),
    180_000
  )
})
