/**
 * Conversations recorded by the AI-provider proxy, against local fake providers and the official
 * `@anthropic-ai/sdk` and `openai` clients: what is stored matches what the client received,
 * turns thread into conversations (and forks), secrets never reach the store, turns are costed
 * from the price table, a spent budget is refused in the provider's own format, a provider with
 * recording off leaves nothing, and a large body is stored compressed.
 */
import { expect, layer } from "@effect/vitest"
import Anthropic from "@anthropic-ai/sdk"
import OpenAI from "openai"
import pg from "pg"
import { Chunk, Context, Effect, Layer, Option, Redacted, Stream } from "effect"
import * as Client from "../../rpc/Client.js"
import { EventFilter, type StoredEvent } from "../../rpc/Events.js"
import type { ConversationDetail } from "../../rpc/Conversations.js"
import * as ProxyTokens from "../../actors/proxy/ProxyTokens.js"
import * as Config from "../../src/config/Config.js"
import { clientLayer } from "../support/Attach.js"
import * as FakeProvider from "../support/FakeProvider.js"
import * as TestServer from "../support/TestServer.js"

const anthropicKey = "sk-ant-fake-provider-key-for-conversations"
const openaiKey = "sk-openai-fake-provider-key-for-conversations"
const keyVariable = "VIBES_TEST_CONVERSATIONS_KEY"
const anthropicKeyVariable = "VIBES_TEST_CONVERSATIONS_ANTHROPIC_KEY"

interface Env {
  readonly server: TestServer.Running
  readonly rpc: Client.Client
  readonly anthropic: FakeProvider.FakeProvider
  readonly openai: FakeProvider.FakeProvider
  readonly quiet: FakeProvider.FakeProvider
  readonly token: (sessionId: string) => string
}
class ConversationsEnv extends Context.Tag("test/ConversationsEnv")<ConversationsEnv, Env>() {}

const prices = [
  { model: "claude-test-*", input: 3, output: 15, cacheRead: 0.3, cacheWrite: 3.75 },
  { provider: "openai", model: "gpt-test-1", input: 2, output: 8, cacheRead: 0.5, cacheWrite: 0 }
]

const EnvLive = Layer.scoped(
  ConversationsEnv,
  Effect.gen(function* () {
    const anthropic = yield* FakeProvider.make({ apiKey: anthropicKey })
    const openai = yield* FakeProvider.make({ apiKey: openaiKey })
    const quiet = yield* FakeProvider.make({ apiKey: openaiKey })
    process.env[keyVariable] = openaiKey
    process.env[anthropicKeyVariable] = anthropicKey
    yield* Effect.addFinalizer(() =>
      Effect.sync(() => {
        delete process.env[keyVariable]
        delete process.env[anthropicKeyVariable]
      })
    )
    const server = yield* TestServer.startWith({
      proxyRate: 0,
      proxyMaxBody: 64 * 1024 * 1024,
      proxyProviders: [
        FakeProvider.providerConfig("anthropic", anthropic.url, {
          format: "anthropic",
          auth: "x-api-key",
          keyEnv: anthropicKeyVariable
        }),
        FakeProvider.providerConfig("openai", openai.url, { keyEnv: keyVariable }),
        FakeProvider.providerConfig("quiet", quiet.url, { keyEnv: keyVariable, record: false })
      ],
      proxyConversations: {
        ...Config.proxyConversationsDefaults,
        prices: prices.map((price) => ({ ...price })),
        budgetSession: 0.02,
        redactPatterns: [/sk-custom-[a-z0-9]{8,}/g]
      }
    })
    const rpc = yield* Effect.map(
      Layer.build(clientLayer(server.url, server.token)),
      Context.get(Client.VibesClient)
    )
    const tokens = ProxyTokens.make({ token: Redacted.make(server.token), verify: (t) => t === server.token })
    return {
      server,
      rpc,
      anthropic,
      openai,
      quiet,
      token: (sessionId: string) => tokens.mint({ kind: "session", id: sessionId })
    }
  })
)

/** A session of its own (its token is live while it runs), and SDK clients with its token. */
const freshSession = Effect.gen(function* () {
  const env = yield* ConversationsEnv
  const session = yield* env.rpc.Sessions.Create({ command: "sleep", args: ["600"] })
  yield* Effect.addFinalizer(() => Effect.ignore(env.rpc.Sessions.Close({ sessionId: session.id })))
  const token = env.token(session.id)
  return {
    sessionId: session.id,
    token,
    anthropic: new Anthropic({ apiKey: token, baseURL: `${env.server.url}/proxy/anthropic`, maxRetries: 0 }),
    openai: new OpenAI({ apiKey: token, baseURL: `${env.server.url}/proxy/openai/v1`, maxRetries: 0 })
  }
})

/** The first `n` events of `type` from `sessionId`. */
const eventsOf = (sessionId: string, type: string, n: number) =>
  Effect.flatMap(ConversationsEnv, ({ rpc }) =>
    rpc.Events.Subscribe({
      from: { _tag: "Offset", offset: 0 },
      filter: new EventFilter({ types: [type], sessionId })
    }).pipe(
      Stream.take(n),
      Stream.runCollect,
      Effect.map(Chunk.toReadonlyArray),
      Effect.timeoutFail({
        duration: "20 seconds",
        onTimeout: () => new Error(`fewer than ${n} ${type} events`)
      }),
      Effect.orDie
    )
  )

const data = (event: StoredEvent) => event.data as Record<string, unknown>

const conversation = (
  id: unknown,
  bodies = true
): Effect.Effect<ConversationDetail, never, ConversationsEnv> =>
  Effect.flatMap(ConversationsEnv, ({ rpc }) =>
    Effect.orDie(rpc.Conversations.Get({ conversationId: String(id), bodies }))
  )

const text = (blocks: ReadonlyArray<{ readonly _tag: string }>) =>
  blocks.flatMap((block) => ("text" in block && block._tag === "text" ? [String(block.text)] : [])).join("")

const sse = (events: ReadonlyArray<readonly [string, unknown]>) =>
  events.map(([name, value]) => `event: ${name}\ndata: ${JSON.stringify(value)}\n\n`).join("")

const withSql = <A>(f: (client: pg.Client) => Promise<A>) =>
  Effect.flatMap(ConversationsEnv, ({ server }) =>
    Effect.promise(async () => {
      const client = new pg.Client({ connectionString: Redacted.value(server.databaseUrl) })
      await client.connect()
      try {
        return await f(client)
      } finally {
        await client.end()
      }
    })
  )

layer(EnvLive, { timeout: 120_000, excludeTestServices: true })("proxy conversations", (it) => {
  it.scoped("plain and streamed answers are recorded as the client received them, in all three APIs", () =>
    Effect.gen(function* () {
      const { server } = yield* ConversationsEnv
      const client = yield* freshSession
      const ask = (stream: boolean) =>
        Effect.promise(async () => {
          const response = await fetch(`${server.url}/proxy/anthropic/v1/messages`, {
            method: "POST",
            headers: {
              "x-api-key": client.token,
              "content-type": "application/json",
              "anthropic-version": "2023-06-01"
            },
            body: JSON.stringify({
              model: "claude-test-1",
              max_tokens: 64,
              stream,
              messages: [{ role: "user", content: `Hello ${stream ? "streamed" : "plain"}` }]
            })
          })
          return await response.text()
        })
      const plainBody = yield* ask(false)
      const streamedBody = yield* ask(true)
      const chatPlain = yield* Effect.promise(() =>
        client.openai.chat.completions.create({
          model: "gpt-test-1",
          messages: [{ role: "user", content: "Hi" }]
        })
      )
      const chatStream = yield* Effect.promise(async () => {
        const stream = await client.openai.chat.completions.create({
          model: "gpt-test-1",
          stream: true,
          stream_options: { include_usage: true },
          messages: [{ role: "user", content: "Hi streamed" }]
        })
        let out = ""
        for await (const chunk of stream) out += chunk.choices[0]?.delta.content ?? ""
        return out
      })
      const responsesPlain = yield* Effect.promise(() =>
        client.openai.responses.create({ model: "gpt-test-1", input: "Hi responses" })
      )
      const responsesStream = yield* Effect.promise(async () => {
        const stream = await client.openai.responses.create({
          model: "gpt-test-1",
          input: "Hi streamed responses",
          stream: true
        })
        let out = ""
        for await (const event of stream) if (event.type === "response.output_text.delta") out += event.delta
        return out
      })

      const turns = yield* eventsOf(client.sessionId, "proxy.turn", 6)
      const details = yield* Effect.forEach(turns, (event) => conversation(data(event)["conversationId"]))
      // Six first questions: six conversations of one turn each.
      expect(new Set(details.map((d) => d.conversation.id)).size).toBe(6)
      const turn = (i: number) => {
        const detail = details[i]
        if (detail === undefined || detail.turns.length !== 1) throw new Error(`turn ${i} missing`)
        return detail.turns[0] as ConversationDetail["turns"][number]
      }
      // Byte for byte what the client received, and the same assembled answer either way.
      expect(turn(0).responseBody).toBe(plainBody)
      expect(turn(1).responseBody).toBe(streamedBody)
      for (const i of [0, 1]) {
        expect(turn(i).turn).toMatchObject({
          api: "anthropic.messages",
          model: "claude-test-1",
          status: 200,
          stopReason: "end_turn",
          usage: { inputTokens: 12, outputTokens: 5 },
          streamed: i === 1
        })
        expect(text(turn(i).output)).toBe("Hello world!")
      }
      expect(turn(0).input.map((m) => text(m.blocks))).toEqual(["Hello plain"])
      expect(turn(1).input.map((m) => text(m.blocks))).toEqual(["Hello streamed"])

      expect(text(turn(2).output)).toBe(chatPlain.choices[0]?.message.content)
      expect(text(turn(3).output)).toBe(chatStream)
      expect(turn(2).turn).toMatchObject({ api: "openai.chat", stopReason: "stop", streamed: false })
      expect(turn(3).turn).toMatchObject({ api: "openai.chat", stopReason: "stop", streamed: true })
      expect(turn(3).turn.usage).toEqual(turn(2).turn.usage)

      expect(text(turn(4).output)).toBe(responsesPlain.output_text)
      expect(text(turn(5).output)).toBe(responsesStream)
      expect(turn(4).turn).toMatchObject({ api: "openai.responses", stopReason: "completed" })
      expect(turn(5).turn).toMatchObject({ api: "openai.responses", stopReason: "completed", streamed: true })
      expect(turn(5).turn.usage).toEqual(turn(4).turn.usage)

      // The event carries the turn, never its bodies.
      expect(data(turns[0] as StoredEvent)).toMatchObject({
        seq: 1,
        forked: false,
        inputTokens: 12,
        outputTokens: 5
      })
      expect(JSON.stringify(turns.map(data))).not.toContain("Hello plain")
    })
  )

  it.scoped(
    "a tool-use run threads into one conversation, a divergent request forks it, Responses chain by id",
    () =>
      Effect.gen(function* () {
        const { anthropic } = yield* ConversationsEnv
        const client = yield* freshSession
        const tools = [
          {
            name: "read_file",
            description: "Reads a file",
            input_schema: { type: "object" as const, properties: { path: { type: "string" } } }
          }
        ]
        const toolUse = (id: string, path: string) => ({
          id: `msg_${id}`,
          type: "message",
          role: "assistant",
          model: "claude-test-1",
          content: [
            { type: "text", text: `Reading ${path}` },
            { type: "tool_use", id, name: "read_file", input: { path } }
          ],
          stop_reason: "tool_use",
          stop_sequence: null,
          usage: { input_tokens: 20, output_tokens: 10 }
        })
        // Turn 1 plain, turn 2 streamed (its tool input arrives in pieces), turn 3 the final answer.
        yield* anthropic.enqueue(
          FakeProvider.Behaviour.Status({ status: 200, body: JSON.stringify(toolUse("toolu_1", "a.txt")) }),
          FakeProvider.Behaviour.Status({
            status: 200,
            headers: { "content-type": "text/event-stream" },
            body: sse([
              [
                "message_start",
                {
                  type: "message_start",
                  message: {
                    ...toolUse("toolu_2", "b.txt"),
                    content: [],
                    stop_reason: null,
                    usage: { input_tokens: 40, output_tokens: 1 }
                  }
                }
              ],
              [
                "content_block_start",
                { type: "content_block_start", index: 0, content_block: { type: "text", text: "" } }
              ],
              [
                "content_block_delta",
                {
                  type: "content_block_delta",
                  index: 0,
                  delta: { type: "text_delta", text: "Reading b.txt" }
                }
              ],
              ["content_block_stop", { type: "content_block_stop", index: 0 }],
              [
                "content_block_start",
                {
                  type: "content_block_start",
                  index: 1,
                  content_block: { type: "tool_use", id: "toolu_2", name: "read_file", input: {} }
                }
              ],
              [
                "content_block_delta",
                {
                  type: "content_block_delta",
                  index: 1,
                  delta: { type: "input_json_delta", partial_json: '{"pa' }
                }
              ],
              [
                "content_block_delta",
                {
                  type: "content_block_delta",
                  index: 1,
                  delta: { type: "input_json_delta", partial_json: 'th":"b.txt"}' }
                }
              ],
              ["content_block_stop", { type: "content_block_stop", index: 1 }],
              [
                "message_delta",
                {
                  type: "message_delta",
                  delta: { stop_reason: "tool_use", stop_sequence: null },
                  usage: { output_tokens: 10 }
                }
              ],
              ["message_stop", { type: "message_stop" }]
            ])
          })
        )
        const messages: Array<Anthropic.MessageParam> = [
          { role: "user", content: "Summarise a.txt and b.txt" }
        ]
        const first = yield* Effect.promise(() =>
          client.anthropic.messages.create({
            model: "claude-test-1",
            max_tokens: 256,
            system: "Be brief.",
            tools,
            messages
          })
        )
        messages.push({ role: "assistant", content: first.content })
        messages.push({
          role: "user",
          content: [{ type: "tool_result", tool_use_id: "toolu_1", content: "contents of a" }]
        })
        const second = yield* Effect.promise(() =>
          client.anthropic.messages
            .stream({ model: "claude-test-1", max_tokens: 256, system: "Be brief.", tools, messages })
            .finalMessage()
        )
        expect(second.content[1]).toMatchObject({ type: "tool_use", input: { path: "b.txt" } })
        messages.push({ role: "assistant", content: second.content })
        messages.push({
          role: "user",
          content: [{ type: "tool_result", tool_use_id: "toolu_2", content: "contents of b" }]
        })
        yield* Effect.promise(() =>
          client.anthropic.messages.create({
            model: "claude-test-1",
            max_tokens: 256,
            system: "Be brief.",
            tools,
            messages
          })
        )
        // A different answer to the first tool call: a fork from turn 1.
        yield* Effect.promise(() =>
          client.anthropic.messages.create({
            model: "claude-test-1",
            max_tokens: 256,
            system: "Be brief.",
            tools,
            messages: [
              messages[0] as Anthropic.MessageParam,
              { role: "assistant", content: first.content },
              {
                role: "user",
                content: [
                  { type: "tool_result", tool_use_id: "toolu_1", content: "a is missing", is_error: true }
                ]
              }
            ]
          })
        )

        const events = (yield* eventsOf(client.sessionId, "proxy.turn", 4)).map(data)
        const main = events[0]?.["conversationId"]
        expect(events.slice(0, 3).map((e) => [e["conversationId"], e["seq"], e["forked"]])).toEqual([
          [main, 1, false],
          [main, 2, false],
          [main, 3, false]
        ])
        expect(events[3]).toMatchObject({ seq: 1, forked: true, parentTurnId: events[0]?.["turnId"] })
        expect(events[3]?.["conversationId"]).not.toBe(main)

        const thread = yield* conversation(main, false)
        expect(thread.conversation).toMatchObject({ turns: 3, title: "Summarise a.txt and b.txt" })
        const [t1, t2, t3] = thread.turns
        expect(t1?.system).toBe("Be brief.")
        expect(t1?.turn.stopReason).toBe("tool_use")
        expect(t1?.output).toContainEqual({
          _tag: "tool_call",
          id: "toolu_1",
          name: "read_file",
          input: '{"path":"a.txt"}'
        })
        // Each later turn shows only what is new in it: the tool result, not the repeated history.
        expect(t2?.input).toEqual([
          {
            role: "user",
            blocks: [{ _tag: "tool_result", id: "toolu_1", content: "contents of a", isError: false }]
          }
        ])
        expect(t2?.turn.parentTurnId).toBe(t1?.turn.id)
        expect(t2?.turn.streamed).toBe(true)
        expect(t2?.output).toContainEqual({
          _tag: "tool_call",
          id: "toolu_2",
          name: "read_file",
          input: '{"path":"b.txt"}'
        })
        expect(t3?.turn.parentTurnId).toBe(t2?.turn.id)
        expect(text(t3?.output ?? [])).toBe("Hello world!")
        const fork = yield* conversation(events[3]?.["conversationId"], false)
        expect(fork.conversation).toMatchObject({ parentId: main, forkedFromTurnId: t1?.turn.id })
        expect(fork.turns[0]?.input[0]?.blocks[0]).toMatchObject({ _tag: "tool_result", isError: true })

        // Responses: chained by previous_response_id.
        const r1 = yield* Effect.promise(() =>
          client.openai.responses.create({ model: "gpt-test-1", input: "one" })
        )
        yield* Effect.promise(() =>
          client.openai.responses.create({ model: "gpt-test-1", input: "two", previous_response_id: r1.id })
        )
        const chained = (yield* eventsOf(client.sessionId, "proxy.turn", 6)).map(data).slice(4)
        expect(chained[1]).toMatchObject({
          conversationId: chained[0]?.["conversationId"],
          seq: 2,
          forked: false
        })

        // Listing by session shows the three conversations, newest first.
        const { rpc } = yield* ConversationsEnv
        const listed = yield* Effect.orDie(rpc.Conversations.List({ sessionId: client.sessionId }))
        expect(listed.map((c) => c.turns).sort()).toEqual([1, 2, 3])
      })
  )

  it.scoped("keys, vibes tokens and configured patterns in a prompt never reach the store", () =>
    Effect.gen(function* () {
      const { server, rpc } = yield* ConversationsEnv
      const client = yield* freshSession
      const prompt = `my keys: ${anthropicKey} and ${openaiKey}, the admin token ${server.token}, my token ${client.token}, custom sk-custom-abcdef123456 and marker zebracorn`
      yield* Effect.promise(() =>
        client.anthropic.messages.create({
          model: "claude-test-1",
          max_tokens: 16,
          messages: [{ role: "user", content: prompt }]
        })
      )
      const [event] = yield* eventsOf(client.sessionId, "proxy.turn", 1)
      const stored = yield* conversation(data(event as StoredEvent)["conversationId"])
      const everything = JSON.stringify(stored)
      for (const secret of [anthropicKey, openaiKey, server.token, client.token, "sk-custom-abcdef123456"]) {
        expect(everything).not.toContain(secret)
      }
      expect(stored.turns[0]?.requestBody).toContain("zebracorn")
      expect(stored.turns[0]?.requestBody?.split("[redacted]").length).toBe(6)
      // Nor the search index, nor the raw tables.
      const found = yield* Effect.orDie(rpc.Conversations.List({ search: "zebracorn" }))
      expect(found.map((c) => c.id)).toContain(data(event as StoredEvent)["conversationId"])
      expect(yield* Effect.orDie(rpc.Conversations.List({ search: anthropicKey }))).toEqual([])
      const raw = yield* withSql((sql) =>
        sql.query<{ n: string }>(
          `SELECT count(*) AS n FROM vibes_proxy_turns t JOIN vibes_conversations c ON c.id = t.conversation_id
           WHERE t.search @@ plainto_tsquery('simple', $1) OR t.preview LIKE $2 OR c.title LIKE $2`,
          [openaiKey, `%${openaiKey}%`]
        )
      )
      expect(raw.rows[0]?.n).toBe("0")
    })
  )

  it.scoped(
    "turns are costed from the price table; a spent session budget is refused in the provider's format",
    () =>
      Effect.gen(function* () {
        const { anthropic, openai, rpc } = yield* ConversationsEnv
        const client = yield* freshSession
        const cached = {
          id: "msg_cached",
          type: "message",
          role: "assistant",
          model: "claude-test-2",
          content: [{ type: "text", text: "ok" }],
          stop_reason: "end_turn",
          stop_sequence: null,
          usage: {
            input_tokens: 1000,
            output_tokens: 500,
            cache_read_input_tokens: 2000,
            cache_creation_input_tokens: 400
          }
        }
        yield* anthropic.enqueue(FakeProvider.Behaviour.Status({ status: 200, body: JSON.stringify(cached) }))
        yield* Effect.promise(() =>
          client.anthropic.messages.create({
            model: "claude-test-2",
            max_tokens: 16,
            messages: [{ role: "user", content: "cost me" }]
          })
        )
        yield* openai.enqueue(
          FakeProvider.Behaviour.Status({
            status: 200,
            body: JSON.stringify({
              id: "chatcmpl-cached",
              object: "chat.completion",
              created: 1,
              model: "gpt-test-1",
              choices: [
                {
                  index: 0,
                  message: { role: "assistant", content: "ok" },
                  finish_reason: "stop",
                  logprobs: null
                }
              ],
              usage: {
                prompt_tokens: 1000,
                completion_tokens: 100,
                total_tokens: 1100,
                prompt_tokens_details: { cached_tokens: 400 }
              }
            })
          })
        )
        yield* Effect.promise(() =>
          client.openai.chat.completions.create({
            model: "gpt-test-1",
            messages: [{ role: "user", content: "cost me too" }]
          })
        )
        const events = (yield* eventsOf(client.sessionId, "proxy.turn", 2)).map(data)
        // (1000 × 3 + 500 × 15 + 2000 × 0.3 + 400 × 3.75) / 1e6 and (600 × 2 + 100 × 8 + 400 × 0.5) / 1e6
        expect(events[0]?.["costUsd"]).toBeCloseTo(0.0126, 10)
        expect(events[0]).toMatchObject({
          inputTokens: 1000,
          outputTokens: 500,
          cacheReadTokens: 2000,
          cacheWriteTokens: 400
        })
        expect(events[1]?.["costUsd"]).toBeCloseTo(0.0022, 10)
        expect(events[1]).toMatchObject({ inputTokens: 600, cacheReadTokens: 400, outputTokens: 100 })
        const bySession = yield* Effect.orDie(
          rpc.Conversations.Cost({ by: "session", sessionId: client.sessionId })
        )
        expect(bySession).toHaveLength(1)
        expect(bySession[0]?.costUsd).toBeCloseTo(0.0148, 10)
        const conversationCost = yield* conversation(events[0]?.["conversationId"], false)
        expect(conversationCost.conversation.costUsd).toBeCloseTo(0.0126, 10)

        // 0.0148 spent of 0.02: one more costly answer goes through, then the session is refused.
        yield* anthropic.enqueue(FakeProvider.Behaviour.Status({ status: 200, body: JSON.stringify(cached) }))
        yield* Effect.promise(() =>
          client.anthropic.messages.create({
            model: "claude-test-2",
            max_tokens: 16,
            messages: [{ role: "user", content: "again" }]
          })
        )
        const seen = anthropic.requests.length
        const refused = yield* Effect.promise(() =>
          client.anthropic.messages
            .create({
              model: "claude-test-2",
              max_tokens: 16,
              messages: [{ role: "user", content: "once more" }]
            })
            .then(
              () => null,
              (error: unknown) => error
            )
        )
        expect(refused).toBeInstanceOf(Anthropic.BadRequestError)
        expect((refused as InstanceType<typeof Anthropic.BadRequestError>).error).toMatchObject({
          type: "error",
          error: { type: "invalid_request_error" }
        })
        expect(String((refused as Error).message)).toContain("session budget of $0.02 is spent")
        const openaiRefused = yield* Effect.promise(() =>
          client.openai.chat.completions
            .create({ model: "gpt-test-1", messages: [{ role: "user", content: "and now?" }] })
            .then(
              () => null,
              (error: unknown) => error
            )
        )
        expect(openaiRefused).toBeInstanceOf(OpenAI.RateLimitError)
        expect((openaiRefused as InstanceType<typeof OpenAI.RateLimitError>).code).toBe("insufficient_quota")
        expect(anthropic.requests.length).toBe(seen)
        const [exceeded] = yield* eventsOf(client.sessionId, "proxy.budget_exceeded", 1)
        expect(data(exceeded as StoredEvent)).toMatchObject({ scope: "session", budgetUsd: 0.02 })
        expect(data(exceeded as StoredEvent)["spentUsd"]).toBeCloseTo(0.0274, 10)
      })
  )

  it.scoped(
    "the REST API lists, reads and costs conversations, after credentials, and refuses bad input",
    () =>
      Effect.gen(function* () {
        const { server } = yield* ConversationsEnv
        const client = yield* freshSession
        yield* Effect.promise(() =>
          client.anthropic.messages.create({
            model: "claude-test-1",
            max_tokens: 16,
            messages: [{ role: "user", content: "rest please" }]
          })
        )
        const [event] = yield* eventsOf(client.sessionId, "proxy.turn", 1)
        const id = String(data(event as StoredEvent)["conversationId"])
        const get = (path: string, token: string | null = server.token) =>
          Effect.promise(async () => {
            const response = await fetch(`${server.url}${path}`, {
              headers: token === null ? {} : { authorization: `Bearer ${token}` }
            })
            return { status: response.status, body: (await response.json()) as unknown }
          })
        expect((yield* get(`/api/conversations?session=${client.sessionId}`, null)).status).toBe(401)
        // A session's proxy token is for the proxy only.
        expect((yield* get(`/api/conversations?session=${client.sessionId}`, client.token)).status).toBe(401)
        const listed = yield* get(`/api/conversations?session=${encodeURIComponent(client.sessionId)}`)
        expect(listed.status).toBe(200)
        expect(listed.body).toMatchObject([{ id, turns: 1, title: "rest please" }])
        const one = yield* get(`/api/conversations/${id}?bodies=true`)
        expect(one.status).toBe(200)
        expect(one.body).toMatchObject({ conversation: { id }, turns: [{ turn: { seq: 1, status: 200 } }] })
        const cost = yield* get(
          `/api/conversations-cost?by=session&session=${encodeURIComponent(client.sessionId)}`
        )
        expect(cost.body).toMatchObject([{ key: client.sessionId, turns: 1 }])
        expect((cost.body as Array<{ costUsd: number }>)[0]?.costUsd).toBeCloseTo(0.000111, 10)
        expect((yield* get("/api/conversations?limit=0")).status).toBe(400)
        expect((yield* get("/api/conversations-cost?by=planet")).status).toBe(400)
        expect((yield* get("/api/conversations/not-a-uuid")).status).toBe(400)
        const missing = yield* get("/api/conversations/01890000-0000-7000-8000-000000000000")
        expect(missing).toMatchObject({ status: 404, body: { error: "ConversationNotFound" } })
      })
  )

  it.scoped("a provider with recording off leaves nothing in the store", () =>
    Effect.gen(function* () {
      const { server, rpc, quiet } = yield* ConversationsEnv
      const client = yield* freshSession
      const quietClient = new OpenAI({
        apiKey: client.token,
        baseURL: `${server.url}/proxy/quiet/v1`,
        maxRetries: 0
      })
      const answer = yield* Effect.promise(() =>
        quietClient.chat.completions.create({
          model: "gpt-quiet",
          messages: [{ role: "user", content: "say nothing" }]
        })
      )
      expect(answer.choices[0]?.message.content).toBe("Hello world!")
      expect(quiet.requests).toHaveLength(1)
      // The recorder takes turns in order: once a later turn is stored, the quiet one would have been.
      yield* Effect.promise(() =>
        client.openai.chat.completions.create({
          model: "gpt-test-1",
          messages: [{ role: "user", content: "recorded" }]
        })
      )
      const events = yield* eventsOf(client.sessionId, "proxy.turn", 1)
      expect(data(events[0] as StoredEvent)).toMatchObject({ provider: "openai" })
      const listed = yield* Effect.orDie(rpc.Conversations.List({ sessionId: client.sessionId }))
      expect(listed.map((c) => c.provider)).toEqual(["openai"])
      const rows = yield* withSql((sql) =>
        sql.query<{ n: string }>(
          "SELECT count(*) AS n FROM vibes_proxy_turns WHERE provider = 'quiet' OR model = 'gpt-quiet'"
        )
      )
      expect(rows.rows[0]?.n).toBe("0")
      // Its proxy.request event is still there: only the recording is off.
      const requests = yield* eventsOf(client.sessionId, "proxy.request", 2)
      expect(requests.map((e) => data(e)["provider"])).toEqual(["quiet", "openai"])
    })
  )

  it.scoped("a 20 MB request body is recorded compressed, out of the turn row", () =>
    Effect.gen(function* () {
      const { server } = yield* ConversationsEnv
      const client = yield* freshSession
      const line = "The quick brown fox jumps over the lazy dog; log line 0123456789. "
      const big = line.repeat(Math.ceil((20 * 1024 * 1024) / line.length))
      const response = yield* Effect.promise(() =>
        fetch(`${server.url}/proxy/anthropic/v1/messages`, {
          method: "POST",
          headers: {
            "x-api-key": client.token,
            "content-type": "application/json",
            "anthropic-version": "2023-06-01"
          },
          body: JSON.stringify({
            model: "claude-test-1",
            max_tokens: 16,
            messages: [{ role: "user", content: big }]
          })
        }).then((r) => r.status)
      )
      expect(response).toBe(200)
      const [event] = yield* eventsOf(client.sessionId, "proxy.turn", 1)
      const turnId = String(data(event as StoredEvent)["turnId"])
      const rows = yield* withSql((sql) =>
        sql.query<{ kind: string; encoding: string; size: string; stored: number }>(
          "SELECT kind, encoding, size, octet_length(body) AS stored FROM vibes_proxy_turn_bodies WHERE turn_id = $1 ORDER BY kind",
          [turnId]
        )
      )
      const request = rows.rows.find((row) => row.kind === "request")
      expect(Number(request?.size)).toBeGreaterThan(20 * 1024 * 1024)
      expect(request?.encoding).toBe("gzip")
      expect(Number(request?.stored)).toBeLessThan(Number(request?.size) / 20)
      const turnRow = yield* withSql((sql) =>
        sql.query<{ width: number; request_bytes: string }>(
          "SELECT pg_column_size(t.*) AS width, request_bytes FROM vibes_proxy_turns t WHERE id = $1",
          [turnId]
        )
      )
      expect(Number(turnRow.rows[0]?.request_bytes)).toBeGreaterThan(20 * 1024 * 1024)
      expect(turnRow.rows[0]?.width).toBeLessThan(64 * 1024)
      const detail = yield* conversation(data(event as StoredEvent)["conversationId"], false)
      expect(text(detail.turns[0]?.input[0]?.blocks ?? []).length).toBe(big.length)
      expect(Option.isSome(Option.fromNullable(detail.turns[0]?.output))).toBe(true)
    })
  )
})
