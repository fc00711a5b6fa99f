import * as crypto from "node:crypto"
import { describe, expect, it } from "@effect/vitest"
import { Context, Duration, Effect, Exit, Layer, Option, Redacted, Scope, Stream } from "effect"
import * as Client from "../../rpc/Client.js"
import { EventFilter } from "../../rpc/Events.js"
import { JobSpec } from "../../rpc/Jobs.js"
import { AddEndpoint } from "../../rpc/Notify.js"
import { CreateSession } from "../../rpc/Sessions.js"
import { clientLayer, eventually } from "../support/Attach.js"
import * as TestDatabase from "../support/TestDatabase.js"
import * as TestServer from "../support/TestServer.js"
import * as WebhookReceiver from "../support/WebhookReceiver.js"

/** Retries come fast, so a test sees several attempts in a second. */
const fast = {
  retryBase: Duration.millis(50),
  retryMax: Duration.millis(300),
  refreshEvery: Duration.seconds(1)
}

const newSecret = () => `whsec_${crypto.randomBytes(24).toString("base64")}`

const connect = (server: TestServer.Running) =>
  Effect.map(Layer.build(clientLayer(server.url, server.token)), Context.get(Client.VibesClient))

/** Runs `true` as a job and waits for its end; its id. */
const runJob = (rpc: Client.Client) =>
  Effect.gen(function* () {
    const job = yield* rpc.Jobs.Submit(JobSpec.make({ command: "true" }))
    yield* rpc.Jobs.Logs({ jobId: job.id, follow: true }).pipe(Stream.runDrain)
    return job.id
  })

interface Delivered {
  readonly type: string
  readonly data: { readonly offset: number; readonly data: { readonly jobId: string } }
}

/** The job ids the receiver accepted, each at its first acceptance, and their offsets in that order. */
const firstAcceptances = (receiver: WebhookReceiver.Receiver) => {
  const seen = new Set<string>()
  const offsets: Array<number> = []
  const jobs: Array<string> = []
  for (const { body } of receiver.accepted()) {
    const delivered = body as Delivered
    if (delivered.type !== "job.done" || seen.has(delivered.data.data.jobId)) continue
    seen.add(delivered.data.data.jobId)
    jobs.push(delivered.data.data.jobId)
    offsets.push(delivered.data.offset)
  }
  return { jobs, offsets }
}

const metricsText = (server: TestServer.Running) =>
  Effect.promise(async () => {
    const response = await fetch(`${server.url}/metrics`, {
      headers: { authorization: `Bearer ${server.token}` }
    })
    return response.text()
  })

describe("outbound webhooks", () => {
  it.scopedLive(
    "every event is delivered at least once and in order, signed, while the receiver fails, recovers, and the server restarts",
    () =>
      Effect.gen(function* () {
        const secret = newSecret()
        const receiver = yield* WebhookReceiver.start(secret)
        receiver.answer = 503
        const database = yield* TestDatabase.databaseUrl
        const firstScope = yield* Scope.make()
        const first = yield* TestServer.startWith({
          databaseUrl: Option.some(database.url),
          notify: fast
        }).pipe(Scope.extend(firstScope))
        const rpc = yield* connect(first).pipe(Scope.extend(firstScope))
        const added = yield* rpc.Notify.AddEndpoint(
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
        expect(Redacted.value(added.secret)).toBe(secret)
        expect(added.endpoint.target).toBe(new URL(receiver.url).origin)
        const before = [yield* runJob(rpc), yield* runJob(rpc), yield* runJob(rpc)]
        // The receiver refuses them for a while: attempts are made and fail.
        yield* eventually(
          Effect.sync(() => (receiver.requests.length >= 3 ? Option.some(true) : Option.none())),
          "failed attempts"
        )
        yield* Scope.close(firstScope, Exit.void)

        const second = yield* TestServer.startWith({
          databaseUrl: Option.some(database.url),
          notify: fast
        })
        const rpc2 = yield* connect(second)
        const after = [yield* runJob(rpc2), yield* runJob(rpc2)]
        receiver.answer = 204
        const all = [...before, ...after]
        const delivered = yield* eventually(
          Effect.sync(() => {
            const firsts = firstAcceptances(receiver)
            return all.every((job) => firsts.jobs.includes(job)) ? Option.some(firsts) : Option.none()
          }),
          "every job.done delivered"
        )
        expect(delivered.jobs).toEqual(all)
        expect([...delivered.offsets].sort((a, b) => a - b)).toEqual(delivered.offsets)
        expect(receiver.requests.every((request) => request.verified)).toBe(true)
        // Every delivery of one event carries the same webhook-id, on every attempt.
        const ids = new Map<string, string>()
        for (const request of receiver.requests) {
          const jobId = (JSON.parse(request.body) as Delivered).data.data.jobId
          expect(ids.get(jobId) ?? request.id).toBe(request.id)
          ids.set(jobId, request.id)
        }
        // The log records an attempt once its answer is in: just after the receiver has it.
        const log = yield* eventually(
          Effect.map(rpc2.Notify.Deliveries({ endpoint: "ci", limit: 100 }), (rows) =>
            rows.filter((entry) => entry.status === "delivered").length === all.length
              ? Option.some(rows)
              : Option.none()
          ),
          "the delivery log to show every delivery"
        )
        expect(log.some((entry) => entry.attempts > 1 && entry.lastStatus === 204)).toBe(true)
        const metrics = yield* metricsText(second)
        expect(metrics).toMatch(/vibes_notify_attempts_total\{[^}]*endpoint="ci"[^}]*outcome="delivered"/)
        // The secret is in no event.
        const events = yield* rpc2.Events.Read({ from: 1, filter: EventFilter.make({}), limit: 10_000 })
        expect(JSON.stringify(events.map((event) => event.data))).not.toContain(secret.slice(6))
        const listed = yield* rpc2.Notify.ListEndpoints()
        expect(JSON.stringify(listed)).not.toContain(secret.slice(6))
      }),
    180_000
  )

  it.scopedLive("a delivery that fails every attempt is dead-lettered, reported, and can be sent again", () =>
    Effect.gen(function* () {
      const secret = newSecret()
      const receiver = yield* WebhookReceiver.start(secret)
      receiver.answer = 500
      const server = yield* TestServer.startWith({ notify: fast })
      const rpc = yield* connect(server)
      yield* rpc.Notify.AddEndpoint(
        AddEndpoint.make({
          name: "flaky",
          url: receiver.url,
          secret: Redacted.make(secret),
          types: ["job.done"],
          coalesceMillis: 0,
          maxAttempts: 3
        })
      )
      const jobId = yield* runJob(rpc)
      const dead = yield* eventually(
        Effect.map(rpc.Notify.Deliveries({ endpoint: "flaky", status: "dead" }), (rows) =>
          Option.fromNullable(rows[0])
        ),
        "a dead letter"
      )
      expect(dead.attempts).toBe(3)
      expect(dead.lastStatus).toBe(500)
      expect(receiver.requests.length).toBe(3)
      const reported = yield* eventually(
        Effect.map(
          rpc.Events.Read({
            from: 1,
            filter: EventFilter.make({ types: ["notify.dead_lettered"] }),
            limit: 10
          }),
          (events) => Option.fromNullable(events[0])
        ),
        "notify.dead_lettered"
      )
      expect(reported.severity).toBe("warn")
      receiver.answer = 200
      const again = yield* rpc.Notify.Redeliver({ id: dead.id })
      expect(again.status).toBe("delivered")
      expect(again.attempts).toBe(4)
      const last = receiver.requests[receiver.requests.length - 1]
      expect(last?.id).toBe(dead.webhookId)
      expect((JSON.parse(last?.body ?? "{}") as Delivered).data.data.jobId).toBe(jobId)
    })
  )

  it.scopedLive("sessions going idle together reach a Slack endpoint as one message", () =>
    Effect.gen(function* () {
      const secret = newSecret()
      const receiver = yield* WebhookReceiver.start(secret)
      const server = yield* TestServer.startWith({ notify: fast, sessionIdleAfter: Duration.millis(300) })
      const rpc = yield* connect(server)
      yield* rpc.Notify.AddEndpoint(
        AddEndpoint.make({
          name: "team",
          url: receiver.url,
          format: "slack",
          secret: Redacted.make(secret),
          types: ["session.idle"],
          coalesceMillis: 5000
        })
      )
      const sessions = yield* Effect.forEach(
        [1, 2, 3, 4],
        () =>
          rpc.Sessions.Create(
            CreateSession.make({ command: "/bin/sh", args: ["-c", "echo ready; sleep 60"] })
          ),
        { concurrency: "unbounded" }
      )
      const idle = yield* eventually(
        Effect.map(
          rpc.Events.Read({ from: 1, filter: EventFilter.make({ types: ["session.idle"] }), limit: 100 }),
          (events) => {
            const ids = new Set(events.map((event) => event.sessionId))
            return sessions.every((session) => ids.has(session.id)) ? Option.some(events) : Option.none()
          }
        ),
        "every session idle"
      )
      const texts = yield* eventually(
        Effect.sync(() => {
          const bodies = receiver.accepted().map(({ body }) => (body as { readonly text: string }).text)
          const covered = sessions.every((session) =>
            bodies.some((text) => text.includes(session.id.slice(-12)))
          )
          return covered ? Option.some(bodies) : Option.none()
        }),
        "the idle sessions delivered"
      )
      expect(idle.length).toBeGreaterThanOrEqual(4)
      expect(texts.length).toBeLessThan(idle.length)
      expect(texts.some((text) => /^\d+ sessions are waiting for input: /.test(text))).toBe(true)
    })
  )

  it.scopedLive(
    "an endpoint that names no types gets the default rules: jobs ending, sessions waiting for input",
    () =>
      Effect.gen(function* () {
        const secret = newSecret()
        const receiver = yield* WebhookReceiver.start(secret)
        const server = yield* TestServer.startWith({ notify: fast, sessionIdleAfter: Duration.millis(300) })
        const rpc = yield* connect(server)
        yield* rpc.Notify.AddEndpoint(
          AddEndpoint.make({
            name: "defaults",
            url: receiver.url,
            secret: Redacted.make(secret),
            coalesceMillis: 0
          })
        )
        const jobId = yield* runJob(rpc)
        const session = yield* rpc.Sessions.Create(
          CreateSession.make({ command: "/bin/sh", args: ["-c", "echo ready; sleep 60"] })
        )
        const types = yield* eventually(
          Effect.sync(() => {
            const bodies = receiver
              .accepted()
              .map(({ body }) => body as Delivered & { data: { sessionId?: string } })
            const job = bodies.some((body) => body.type === "job.done" && body.data.data.jobId === jobId)
            const idle = bodies.some(
              (body) => body.type === "session.idle" && body.data.sessionId === session.id
            )
            return job && idle ? Option.some(bodies.map((body) => body.type)) : Option.none()
          }),
          "the job's end and the session's idleness"
        )
        expect(types.every((type) => ["job.done", "session.idle", "session.bell"].includes(type))).toBe(true)
      })
  )

  it.scopedLive(
    "endpoints: bad requests change nothing, the list shows no secret, a test message is signed",
    () =>
      Effect.gen(function* () {
        const secret = newSecret()
        const receiver = yield* WebhookReceiver.start(secret)
        const server = yield* TestServer.startWith({ notify: fast })
        const rpc = yield* connect(server)
        const badGlob = yield* Effect.flip(
          rpc.Notify.AddEndpoint(AddEndpoint.make({ name: "x", url: receiver.url, types: ["Session.**.x"] }))
        )
        expect(badGlob._tag).toBe("InvalidNotifyRequest")
        const added = yield* rpc.Notify.AddEndpoint(
          AddEndpoint.make({
            name: "one",
            url: `${receiver.url}/T000/B000/tokenpart`,
            secret: Redacted.make(secret)
          })
        )
        expect(added.endpoint.types).toEqual([])
        const duplicate = yield* Effect.flip(
          rpc.Notify.AddEndpoint(AddEndpoint.make({ name: "one", url: receiver.url }))
        )
        expect(duplicate._tag).toBe("InvalidNotifyRequest")
        const listed = yield* rpc.Notify.ListEndpoints()
        expect(listed.map((endpoint) => endpoint.name)).toEqual(["one"])
        expect(JSON.stringify(listed)).not.toContain("tokenpart")
        const tested = yield* rpc.Notify.TestEndpoint({ name: "one" })
        expect(tested.status).toBe("delivered")
        expect(receiver.requests[0]?.verified).toBe(true)
        const missing = yield* Effect.flip(rpc.Notify.RemoveEndpoint({ name: "nope" }))
        expect(missing._tag).toBe("NotifyNotFound")
        yield* rpc.Notify.RemoveEndpoint({ name: "one" })
        expect(yield* rpc.Notify.ListEndpoints()).toEqual([])
      })
  )
})
