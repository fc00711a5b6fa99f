import * as crypto from "node:crypto"
import { expect, layer } from "@effect/vitest"
import { Context, Effect, Layer } from "effect"
import * as TestServer from "../support/TestServer.js"
import * as Vibes from "../support/VibesProcess.js"
import * as WebhookReceiver from "../support/WebhookReceiver.js"

class Node extends Context.Tag("test/Node")<Node, TestServer.Running>() {}

/** `vibes <args>` against the test node. */
const vibes = (args: ReadonlyArray<string>) =>
  Effect.flatMap(Node, (server) =>
    Vibes.run(args, Vibes.childEnv({ VIBES_URL: server.url, VIBES_TOKEN: server.token }))
  )

layer(Layer.scoped(Node, TestServer.start), { timeout: 240_000, excludeTestServices: true })(
  "notify commands",
  (it) => {
    it.scoped(
      "endpoint add, ls, test, deliveries and rm work with exit codes, and never print the secret again",
      () =>
        Effect.gen(function* () {
          const secret = `whsec_${crypto.randomBytes(24).toString("base64")}`
          const receiver = yield* WebhookReceiver.start(secret)
          const added = yield* vibes([
            "notify",
            "endpoint",
            "add",
            "--format",
            "slack",
            "--secret",
            secret,
            "--type",
            "job.*",
            "--json",
            "team",
            `${receiver.url}/T0/B0/pathtoken`
          ])
          expect(added.code, added.stderr).toBe(0)
          const parsed = JSON.parse(added.stdout) as {
            endpoint: { name: string; types: Array<string> }
            secret: string
          }
          expect(parsed.endpoint.name).toBe("team")
          expect(parsed.endpoint.types).toEqual(["job.*"])
          expect(parsed.secret).toBe(secret)
          const listed = yield* vibes(["notify", "endpoint", "ls"])
          expect(listed.code).toBe(0)
          expect(listed.stdout).toContain("team")
          expect(listed.stdout).not.toContain("pathtoken")
          expect(listed.stdout).not.toContain(secret.slice(6))
          const tested = yield* vibes(["notify", "endpoint", "test", "team"])
          expect(tested.code, tested.stderr).toBe(0)
          expect(tested.stdout).toContain("delivered")
          expect(receiver.requests.length).toBe(1)
          expect(receiver.requests[0]?.verified).toBe(true)
          expect(JSON.parse(receiver.requests[0]?.body ?? "{}")).toHaveProperty("text")
          const log = yield* vibes(["notify", "deliveries", "--endpoint", "team"])
          expect(log.code).toBe(0)
          expect(log.stdout).toContain("notify.test")
          receiver.answer = 500
          const failing = yield* vibes(["notify", "endpoint", "test", "team"])
          expect(failing.code).toBe(1)
          const unknown = yield* vibes(["notify", "endpoint", "test", "nope"])
          expect(unknown.code).toBe(1)
          expect(unknown.stderr).toContain("nope")
          const badUrl = yield* vibes(["notify", "endpoint", "add", "x", "ftp://example.com/"])
          expect(badUrl.code).toBe(2)
          const badGlob = yield* vibes(["notify", "endpoint", "add", "--type", "Job..x", "y", receiver.url])
          expect(badGlob.code).toBe(2)
          const removed = yield* vibes(["notify", "endpoint", "rm", "team"])
          expect(removed.code).toBe(0)
          expect((yield* vibes(["notify", "endpoint", "ls"])).stdout).toContain("no endpoints")
          for (const command of [
            ["notify", "--help"],
            ["notify", "endpoint", "add", "--help"],
            ["notify", "deliveries", "--help"],
            ["notify", "hook", "add", "--help"]
          ]) {
            expect((yield* vibes(command)).code).toBe(0)
          }
        }),
      180_000
    )
  }
)
