import * as crypto from "node:crypto"
import * as http from "node:http"
import { expect, layer } from "@effect/vitest"
import { Context, Effect, Layer, Option, Redacted, Stream } from "effect"
import { Webhook } from "standardwebhooks"
import * as Client from "../../rpc/Client.js"
import { EventFilter } from "../../rpc/Events.js"
import { JobSpec } from "../../rpc/Jobs.js"
import { AddHook } from "../../rpc/Notify.js"
import { CreateSession } from "../../rpc/Sessions.js"
import { clientLayer, eventually, watch } from "../support/Attach.js"
import * as TestServer from "../support/TestServer.js"
import { github, slack } from "../support/WebhookVectors.js"

class Node extends Context.Tag("test/Node")<Node, TestServer.Running>() {}

const NodeLive = Layer.scoped(Node, TestServer.start)

const client = Effect.flatMap(Node, (server) =>
  Effect.map(Layer.build(clientLayer(server.url, server.token)), Context.get(Client.VibesClient))
)

/** A POST to the node with no vibes credentials at all. */
const post = (path: string, body: string, headers: Record<string, string>) =>
  Effect.flatMap(Node, (server) =>
    Effect.promise(async () => {
      const response = await fetch(`${server.url}${path}`, { method: "POST", headers, body })
      const text = await response.text()
      return {
        status: response.status,
        text,
        json: (() => {
          try {
            return JSON.parse(text) as Record<string, unknown>
          } catch {
            return {}
          }
        })()
      }
    })
  )

const githubSecret = github.secret

const githubSign = (secret: string, body: string) =>
  `sha256=${crypto.createHmac("sha256", secret).update(body).digest("hex")}`

const slackSign = (secret: string, timestamp: string, body: string) =>
  `v0=${crypto.createHmac("sha256", secret).update(`v0:${timestamp}:${body}`).digest("hex")}`

const hookEvents = (rpc: Client.Client) =>
  Effect.map(
    rpc.Events.Read({ from: 1, filter: EventFilter.make({ types: ["hook.received"] }), limit: 1000 }),
    (events) =>
      events.map((event) => ({
        ...(event.data as { hook: string; outcome: string; reason: string | null }),
        jobId: event.jobId
      }))
  )

layer(NodeLive, { timeout: 180_000, excludeTestServices: true })("inbound hooks", (it) => {
  it.scoped(
    "a GitHub-signed push runs the hook's job; GitHub's example signature verifies; replays, bad signatures, unknown hooks and oversized bodies are refused",
    () =>
      Effect.gen(function* () {
        const rpc = yield* client
        const added = yield* rpc.Notify.AddHook(
          AddHook.make({
            name: "gh",
            verify: "github",
            secret: Redacted.make(githubSecret),
            maxBodyBytes: 4096,
            action: {
              _tag: "RunJob",
              spec: JobSpec.make({ command: 'echo "$VIBES_HOOK_EVENT $VIBES_HOOK_DELIVERY"', shell: true })
            }
          })
        )
        expect(added.hook.path).toBe("/hooks/gh")
        // GitHub's documented example: the signature verifies (the body then fails as not JSON, not as unsigned).
        const example = yield* post("/hooks/gh", github.payload, {
          "x-hub-signature-256": github.signature,
          "x-github-delivery": "example-1",
          "x-github-event": "push",
          "content-type": "application/json"
        })
        expect(example.status).toBe(400)
        const push = JSON.stringify({ ref: "refs/heads/main", after: "abc123" })
        const headers = {
          "x-hub-signature-256": githubSign(githubSecret, push),
          "x-github-delivery": "delivery-1",
          "x-github-event": "push",
          "content-type": "application/json"
        }
        const accepted = yield* post("/hooks/gh", push, headers)
        expect(accepted.status).toBe(202)
        const jobId = String(accepted.json["jobId"])
        const output = yield* rpc.Jobs.Logs({ jobId, follow: true }).pipe(
          Stream.runCollect,
          Effect.map((chunk) =>
            [...chunk]
              .flatMap((o) => (o._tag === "JobLog" && o.stream === "stdout" ? [o.chunk] : []))
              .join("")
          )
        )
        expect(output).toBe("push delivery-1\n")
        const job = yield* rpc.Jobs.Get({ jobId })
        expect(job.spec.labels["hook"]).toBe("gh")
        expect(job.spec.env["VIBES_HOOK_PAYLOAD"]).toBe(push)
        // The same delivery again does nothing.
        const replay = yield* post("/hooks/gh", push, headers)
        expect(replay.status).toBe(200)
        expect(replay.json).toEqual({ accepted: false, duplicate: true })
        const wrong = yield* post("/hooks/gh", push, {
          ...headers,
          "x-github-delivery": "delivery-2",
          "x-hub-signature-256": githubSign("not the secret", push)
        })
        const unknown = yield* post("/hooks/nope", push, { ...headers, "x-github-delivery": "delivery-3" })
        expect(wrong.status).toBe(401)
        expect(unknown.status).toBe(401)
        // No oracle: an unknown hook is answered exactly like a bad signature.
        expect(unknown.text).toBe(wrong.text)
        const unsigned = yield* post("/hooks/gh", push, { "content-type": "application/json" })
        expect(unsigned.status).toBe(401)
        const big = "x".repeat(8192)
        const oversized = yield* post("/hooks/gh", big, {
          ...headers,
          "x-hub-signature-256": githubSign(githubSecret, big)
        })
        expect(oversized.status).toBe(413)
        // The vibes token is not what this route takes: it neither helps nor is needed.
        const server = yield* Node
        const withToken = yield* post("/hooks/gh", push, { authorization: `Bearer ${server.token}` })
        expect(withToken.status).toBe(401)
        const submitted = yield* rpc.Events.Read({
          from: 1,
          filter: EventFilter.make({ types: ["job.submitted"] }),
          limit: 100
        })
        expect(submitted.map((event) => event.jobId)).toEqual([jobId])
        const recorded = yield* eventually(
          Effect.map(hookEvents(rpc), (events) => (events.length >= 8 ? Option.some(events) : Option.none())),
          "every request recorded"
        )
        expect(recorded.map((event) => event.outcome)).toEqual([
          "invalid",
          "accepted",
          "replayed",
          "refused",
          "refused",
          "refused",
          "too_large",
          "refused"
        ])
        expect(recorded[1]?.jobId).toBe(jobId)
        expect(recorded[4]?.reason).toBe("unknown")
        const metrics = yield* Effect.promise(async () =>
          (
            await fetch(`${server.url}/metrics`, { headers: { authorization: `Bearer ${server.token}` } })
          ).text()
        )
        expect(metrics).toMatch(/vibes_hook_requests_total\{[^}]*hook="gh"[^}]*outcome="accepted"/)
        expect(metrics).toMatch(/vibes_hook_requests_total\{[^}]*hook="unknown"[^}]*outcome="refused"/)
      })
  )

  it.scoped(
    "a Slack slash command signed with the signing secret starts the job; Slack's stale example and replays are refused",
    () =>
      Effect.gen(function* () {
        const rpc = yield* client
        yield* rpc.Notify.AddHook(
          AddHook.make({
            name: "slack",
            verify: "slack",
            secret: Redacted.make(slack.secret),
            action: {
              _tag: "RunJob",
              spec: JobSpec.make({ command: 'echo "$VIBES_HOOK_TEXT"', shell: true })
            }
          })
        )
        // Slack's documented request is signed right, but in 2018: outside the five-minute window.
        const stale = yield* post("/hooks/slack", slack.body, {
          "x-slack-signature": slack.signature,
          "x-slack-request-timestamp": slack.timestamp,
          "content-type": "application/x-www-form-urlencoded"
        })
        expect(stale.status).toBe(401)
        const body = new URLSearchParams({
          command: "/vibes",
          text: "run tests",
          user_name: "roadrunner"
        }).toString()
        const timestamp = String(Math.floor(Date.now() / 1000))
        const headers = {
          "x-slack-signature": slackSign(slack.secret, timestamp, body),
          "x-slack-request-timestamp": timestamp,
          "content-type": "application/x-www-form-urlencoded"
        }
        const accepted = yield* post("/hooks/slack", body, headers)
        expect(accepted.status).toBe(200)
        expect(String(accepted.json["text"])).toMatch(/^vibes started job /)
        const replay = yield* post("/hooks/slack", body, headers)
        expect(replay.json).toEqual({ accepted: false, duplicate: true })
        const events = yield* eventually(
          Effect.map(hookEvents(rpc), (all) => {
            const mine = all.filter((event) => event.hook === "slack")
            return mine.length >= 3 ? Option.some(mine) : Option.none()
          }),
          "the slack requests recorded"
        )
        expect(events.map((event) => [event.outcome, event.reason])).toEqual([
          ["refused", "stale"],
          ["accepted", null],
          ["replayed", "this delivery id was received before"]
        ])
        const noSecret = yield* Effect.flip(
          rpc.Notify.AddHook(
            AddHook.make({ name: "slack2", verify: "slack", action: { _tag: "CreateSession", args: [] } })
          )
        )
        expect(noSecret._tag).toBe("InvalidNotifyRequest")
      })
  )

  it.scoped("a Slack slash command runs a command and its result is posted back to the response URL", () =>
    Effect.gen(function* () {
      const rpc = yield* client
      const answers: Array<string> = []
      const responder = http.createServer((request, response) => {
        let body = ""
        request.on("data", (chunk: Buffer) => (body += chunk.toString("utf8")))
        request.on("end", () => {
          answers.push(body)
          response.writeHead(200)
          response.end("ok")
        })
      })
      yield* Effect.acquireRelease(
        Effect.async<void>((resume) => {
          responder.listen(0, "127.0.0.1", () => resume(Effect.void))
        }),
        () => Effect.sync(() => responder.close())
      )
      const address = responder.address()
      const origin = `http://127.0.0.1:${typeof address === "object" && address !== null ? address.port : 0}`
      yield* rpc.Notify.AddHook(
        AddHook.make({
          name: "slash",
          verify: "slack",
          secret: Redacted.make(slack.secret),
          action: { _tag: "SlackCommand", responseUrlPrefix: `${origin}/commands/` }
        })
      )
      const command = (text: string, responseUrl: string) => {
        const body = new URLSearchParams({ command: "/vibes", text, response_url: responseUrl }).toString()
        const timestamp = String(Math.floor(Date.now() / 1000))
        return post("/hooks/slash", body, {
          "x-slack-signature": slackSign(slack.secret, timestamp, body),
          "x-slack-request-timestamp": timestamp,
          "content-type": "application/x-www-form-urlencoded"
        })
      }
      const started = yield* command("run echo hello-$((6*7))", `${origin}/commands/T1/42/abc`)
      expect(started.status).toBe(200)
      expect(started.json["response_type"]).toBe("ephemeral")
      expect(String(started.json["text"])).toMatch(/^vibes started job /)
      const answer = yield* eventually(
        Effect.sync(() => Option.fromNullable(answers[0])),
        "the job's result at the response URL"
      )
      const parsed = JSON.parse(answer) as { response_type: string; text: string }
      expect(parsed.response_type).toBe("in_channel")
      expect(parsed.text).toContain("succeeded (exit 0)")
      expect(parsed.text).toContain("hello-42")
      const listed = yield* command("ls", `${origin}/commands/T1/43/abc`)
      expect(String(listed.json["text"])).toContain("succeeded")
      // Answers go only where the hook allows.
      const elsewhere = yield* command("run echo no", "http://127.0.0.1:9/commands/x")
      expect(elsewhere.status).toBe(422)
    })
  )

  it.scoped("a Standard Webhooks hook types its text into a session, and is rate-limited per sender", () =>
    Effect.gen(function* () {
      const rpc = yield* client
      const session = yield* rpc.Sessions.Create(CreateSession.make({ command: "/bin/cat" }))
      const view = yield* watch(rpc.Sessions.Attach({ sessionId: session.id }))
      const added = yield* rpc.Notify.AddHook(
        AddHook.make({
          name: "typer",
          verify: "hmac",
          ratePerMinute: 6,
          action: { _tag: "SendText", sessionId: session.id }
        })
      )
      const webhook = new Webhook(Redacted.value(added.secret))
      const body = JSON.stringify({ type: "note", text: "hello-from-a-hook\n" })
      const signed = (id: string, at: Date, payload: string) => ({
        "webhook-id": id,
        "webhook-timestamp": String(Math.floor(at.getTime() / 1000)),
        "webhook-signature": webhook.sign(id, at, payload),
        "content-type": "application/json"
      })
      const accepted = yield* post("/hooks/typer", body, signed("msg_1", new Date(), body))
      expect(accepted.status).toBe(200)
      yield* view.until((w) => w.text().includes("hello-from-a-hook"), "the hook's text in the session")
      // Six a minute, one at a time: the next request from this address waits.
      const limited = yield* post("/hooks/typer", body, signed("msg_2", new Date(), body))
      expect(limited.status).toBe(429)
      const events = yield* eventually(
        Effect.map(hookEvents(rpc), (all) => {
          const mine = all.filter((event) => event.hook === "typer")
          return mine.length >= 2 ? Option.some(mine) : Option.none()
        }),
        "the typer requests recorded"
      )
      expect(events.map((event) => event.outcome)).toEqual(["accepted", "rate_limited"])
      const listed = yield* rpc.Notify.ListHooks()
      expect(JSON.stringify(listed)).not.toContain(Redacted.value(added.secret).slice(6))
      yield* rpc.Notify.RemoveHook({ name: "typer" })
      const removed = yield* Effect.flip(rpc.Notify.RemoveHook({ name: "typer" }))
      expect(removed._tag).toBe("NotifyNotFound")
    })
  )
})
