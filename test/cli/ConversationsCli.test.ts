import { expect, layer } from "@effect/vitest"
import { Chunk, Context, Effect, Layer, Stream } from "effect"
import * as Client from "../../rpc/Client.js"
import { EventFilter } from "../../rpc/Events.js"
import * as Config from "../../src/config/Config.js"
import { clientLayer } from "../support/Attach.js"
import * as FakeProvider from "../support/FakeProvider.js"
import * as TestServer from "../support/TestServer.js"
import * as Vibes from "../support/VibesProcess.js"

const fakeKey = "sk-fake-for-the-conversations-cli-test"
const keyVariable = "VIBES_TEST_CONVERSATIONS_CLI_KEY"

interface Env {
  readonly server: TestServer.Running
  readonly rpc: Client.Client
  readonly fake: FakeProvider.FakeProvider
}
class Node extends Context.Tag("test/ConversationsCliNode")<Node, Env>() {}

const NodeLive = Layer.scoped(
  Node,
  Effect.gen(function* () {
    const fake = yield* FakeProvider.make({ apiKey: fakeKey })
    process.env[keyVariable] = fakeKey
    yield* Effect.addFinalizer(() => Effect.sync(() => delete process.env[keyVariable]))
    const server = yield* TestServer.startWith({
      proxyProviders: [
        FakeProvider.providerConfig("claude", fake.url, {
          format: "anthropic",
          auth: "x-api-key",
          keyEnv: keyVariable
        })
      ],
      proxyConversations: {
        ...Config.proxyConversationsDefaults,
        prices: [{ model: "claude-cli-*", input: 3, output: 15, cacheRead: 0, cacheWrite: 0 }]
      }
    })
    const rpc = yield* Effect.map(
      Layer.build(clientLayer(server.url, server.token)),
      Context.get(Client.VibesClient)
    )
    return { server, rpc, fake }
  })
)

const vibes = (args: ReadonlyArray<string>) =>
  Effect.flatMap(Node, ({ server }) =>
    Vibes.run(args, Vibes.childEnv({ VIBES_URL: server.url, VIBES_TOKEN: server.token }))
  )

/** Sends one Messages request as the admin; `messages` is the conversation so far. */
const ask = (messages: ReadonlyArray<unknown>) =>
  Effect.flatMap(Node, ({ server }) =>
    Effect.promise(async () => {
      const response = await fetch(`${server.url}/proxy/claude/v1/messages`, {
        method: "POST",
        headers: {
          authorization: `Bearer ${server.token}`,
          "content-type": "application/json",
          "anthropic-version": "2023-06-01"
        },
        body: JSON.stringify({
          model: "claude-cli-1",
          max_tokens: 32,
          system: "Answer in one word.",
          messages
        })
      })
      return await response.text()
    })
  )

layer(NodeLive, { timeout: 120_000, excludeTestServices: true })("conversation commands", (it) => {
  it.scoped(
    "vibes conversations lists and searches, vibes conversation renders turns, replay-turn compares two answers, proxy stats --cost adds up",
    () =>
      Effect.gen(function* () {
        const { rpc } = yield* Node
        const first = [{ role: "user", content: "What colour is the platypus?" }]
        yield* ask(first)
        yield* ask([
          ...first,
          { role: "assistant", content: [{ type: "text", text: "Hello world!" }] },
          { role: "user", content: "And the echidna?" }
        ])
        yield* rpc.Events.Subscribe({
          from: { _tag: "Offset", offset: 0 },
          filter: new EventFilter({ types: ["proxy.turn"] })
        }).pipe(
          Stream.take(2),
          Stream.runCollect,
          Effect.map(Chunk.size),
          Effect.timeout("20 seconds"),
          Effect.orDie
        )

        const listed = yield* vibes(["conversations"])
        expect(listed.code).toBe(0)
        expect(listed.stdout).toMatch(
          /^ID\s+UPDATED\s+WHO\s+PROVIDER\s+MODEL\s+TURNS\s+TOKENS\s+COST\s+TITLE/m
        )
        // Two turns of 12 in and 5 out at $3 and $15 a million: 2 × 111 / 1e6.
        expect(listed.stdout).toMatch(
          /admin\s+claude\s+claude-cli-1\s+2\s+in 24 \/ out 10\s+\$0\.0002\s+What colour is the platypus\?/
        )
        const json = yield* vibes(["conversations", "--json"])
        const conversations = JSON.parse(json.stdout) as Array<{ id: string; turns: number; costUsd: number }>
        expect(conversations).toHaveLength(1)
        expect(conversations[0]?.costUsd).toBeCloseTo(0.000222, 10)
        const id = conversations[0]?.id ?? ""

        const found = yield* vibes(["conversations", "--search", "echidna", "--json"])
        expect((JSON.parse(found.stdout) as Array<{ id: string }>).map((c) => c.id)).toEqual([id])
        const none = yield* vibes(["conversations", "--search", "wombat"])
        expect(none.stdout).toContain("no recorded conversations")

        const shown = yield* vibes(["conversation", id])
        expect(shown.code).toBe(0)
        expect(shown.stdout).toContain(`conversation ${id}`)
        expect(shown.stdout).toMatch(/── turn 1 .*claude-cli-1\s+200\s+end_turn\s+in 12 \/ out 5\s+\$0\.0001/)
        expect(shown.stdout).toContain("system:\n    Answer in one word.")
        expect(shown.stdout).toContain(
          "user:\n    What colour is the platypus?\n  assistant:\n    Hello world!"
        )
        // The second turn shows only what is new in it.
        expect(shown.stdout).toMatch(
          /── turn 2 [^\n]*\n {2}user:\n {4}And the echidna\?\n {2}assistant:\n {4}Hello world!/
        )
        const shownJson = yield* vibes(["conversation", id, "--json", "--bodies"])
        const detail = JSON.parse(shownJson.stdout) as {
          turns: Array<{ responseBody: string; turn: { seq: number } }>
        }
        expect(detail.turns.map((t) => t.turn.seq)).toEqual([1, 2])
        expect(JSON.parse(detail.turns[0]?.responseBody ?? "{}")).toMatchObject({ stop_reason: "end_turn" })

        // A turn replayed to another model: both answers, the request as recorded but for the model.
        const { fake } = yield* Node
        const turnId = (detail.turns[0] as unknown as { turn: { id: string } }).turn.id
        const replayed = yield* vibes(["replay-turn", turnId, "--model", "claude-cli-2", "--json"])
        expect(replayed.code).toBe(0)
        const result = JSON.parse(replayed.stdout) as {
          originalModel: string
          model: string
          costUsd: number
        }
        expect(result).toMatchObject({
          originalModel: "claude-cli-1",
          model: "claude-cli-2",
          status: 200,
          original: [{ _tag: "text", text: "Hello world!" }],
          replay: [{ _tag: "text", text: "Hello world!" }],
          usage: { inputTokens: 12, outputTokens: 5 }
        })
        expect(result.costUsd).toBeCloseTo(0.000111, 10)
        const sent = fake.requests[fake.requests.length - 1]
        expect(sent?.headers["x-api-key"]).toBe(fakeKey)
        expect(JSON.parse(sent?.body.toString("utf8") ?? "{}")).toMatchObject({
          model: "claude-cli-2",
          stream: false,
          system: "Answer in one word.",
          messages: first
        })
        const sideBySide = yield* vibes(["replay-turn", turnId])
        expect(sideBySide.stdout).toMatch(/recorded: claude-cli-1\s+│ replay: claude-cli-1\s+200/)
        expect(sideBySide.stdout).toMatch(/Hello world!\s+│ Hello world!/)
        // Replays are not recorded.
        const after = JSON.parse((yield* vibes(["conversations", "--json"])).stdout) as Array<{
          turns: number
        }>
        expect(after.map((c) => c.turns)).toEqual([2])
        const badTurn = yield* vibes(["replay-turn", "01890000-0000-7000-8000-000000000000"])
        expect(badTurn.code).toBe(1)

        const cost = yield* vibes(["proxy", "stats", "--cost"])
        expect(cost.code).toBe(0)
        expect(cost.stdout).toMatch(/^claude-cli-1\s+claude\s+2\s+24\s+10\s+0\s+0\s+\$0\.0002\s+0$/m)
        const byDay = yield* vibes(["proxy", "stats", "--cost", "--by", "day", "--json"])
        const days = JSON.parse(byDay.stdout) as Array<{ key: string; costUsd: number }>
        expect(days[0]?.key).toBe(new Date().toISOString().slice(0, 10))
        expect(days[0]?.costUsd).toBeCloseTo(0.000222, 10)
      }),
    // About fifteen CLI processes, each seconds long on a loaded machine.
    180_000
  )

  it.scoped(
    "bad ids are usage errors, unknown ids are refused, and both commands have help",
    () =>
      Effect.gen(function* () {
        const bad = yield* vibes(["conversation", "not-an-id"])
        expect(bad.code).toBe(2)
        expect(bad.stderr).toContain("is not a conversation id")
        const unknown = yield* vibes(["conversation", "01890000-0000-7000-8000-000000000000"])
        expect(unknown.code).toBe(1)
        expect(unknown.stderr).toContain("no conversation 01890000-0000-7000-8000-000000000000")
        const limit = yield* vibes(["conversations", "--limit", "0"])
        expect(limit.code).toBe(2)
        const help = yield* vibes(["conversations", "--help"])
        expect(help.stdout).toContain("--search")
        const showHelp = yield* vibes(["conversation", "--help"])
        expect(showHelp.stdout).toContain("--full")
        const statsHelp = yield* vibes(["proxy", "stats", "--help"])
        expect(statsHelp.stdout).toContain("--cost")
      }),
    120_000
  )
})
