import { expect, layer } from "@effect/vitest"
import * as crypto from "node:crypto"
import { Context, Effect, Layer } from "effect"
import { SqlClient } from "@effect/sql/SqlClient"
import { TurnUsage } from "../../../rpc/Conversations.js"
import * as ConversationStore from "../../../actors/proxy/ConversationStore.js"
import { uuidv7 } from "../../../infra/eventlog/EventLog.js"
import * as Migrations from "../../../infra/db/Migrations.js"
import * as TestDatabase from "../../support/TestDatabase.js"

const Live = Layer.mergeAll(Layer.effectDiscard(Migrations.run)).pipe(
  Layer.provideMerge(TestDatabase.layerSql)
)

/** A store of its own: nothing in its memory, as on a node that just started. */
const freshStore = Effect.map(
  Layer.build(ConversationStore.layer),
  Context.get(ConversationStore.ConversationStore)
)

const hash = (text: string) => crypto.createHash("sha256").update(text).digest()

const turn = (
  sessionId: string,
  chain: ReadonlyArray<string>,
  extra: Partial<ConversationStore.NewTurn> = {}
): ConversationStore.NewTurn => ({
  id: uuidv7(),
  provider: "anthropic",
  api: "anthropic.messages",
  model: "m",
  path: "/v1/messages",
  status: 200,
  errorKind: null,
  streamed: false,
  client: "session",
  sessionId,
  jobId: null,
  chain: chain.map(hash),
  previousResponseId: null,
  responseId: null,
  stopReason: "end_turn",
  toolCalls: 0,
  usage: new TurnUsage({ inputTokens: 1, outputTokens: 1, cacheReadTokens: null, cacheWriteTokens: null }),
  costUsd: null,
  latencyMs: 1,
  ttfbMs: 1,
  requestBytes: 10,
  responseBytes: 10,
  preview: "",
  title: "t",
  searchText: "hello",
  bodies: [{ kind: "request", encoding: "identity", size: 2, truncated: false, body: Buffer.from("{}") }],
  ...extra
})

layer(Live, { timeout: 60_000, excludeTestServices: true })("conversation store", (it) => {
  it.scoped("a node that did not see the earlier turns threads from the database, forks included", () =>
    Effect.gen(function* () {
      const session = `s-${uuidv7()}`
      const a = yield* freshStore
      const [first] = yield* a.insert([turn(session, ["u1"])])
      const b = yield* freshStore
      const [second] = yield* b.insert([turn(session, ["u1", "a1", "u2"])])
      expect(second).toMatchObject({ conversationId: first?.conversationId, seq: 2, forked: false })
      // A failed turn continues nothing and is continued by nothing.
      const c = yield* freshStore
      const [failed] = yield* c.insert([
        turn(session, ["u1", "a1", "u2x"], { status: 500, errorKind: "upstream_status" })
      ])
      expect(failed).toMatchObject({ conversationId: first?.conversationId, seq: 3, forked: false })
      const d = yield* freshStore
      const [fork] = yield* d.insert([turn(session, ["u1", "a1", "u2y"])])
      expect(fork?.forked).toBe(true)
      expect(fork?.conversationId).not.toBe(first?.conversationId)
      expect(fork?.seq).toBe(1)
      // Another session with the same messages is another conversation.
      const [other] = yield* d.insert([turn(`${session}-other`, ["u1", "a1", "u2"])])
      expect(other?.conversationId).not.toBe(first?.conversationId)
      // Responses chain by id, across nodes too.
      const [r1] = yield* a.insert([
        turn(session, ["x"], { api: "openai.responses", responseId: `resp_${session}` })
      ])
      const e = yield* freshStore
      const [r2] = yield* e.insert([
        turn(session, ["y"], { api: "openai.responses", previousResponseId: `resp_${session}` })
      ])
      expect(r2).toMatchObject({ conversationId: r1?.conversationId, seq: 2 })
    })
  )

  it.scoped(
    "turns of one batch thread on each other; pruning removes old turns, bodies and empty conversations",
    () =>
      Effect.gen(function* () {
        const session = `s-${uuidv7()}`
        const store = yield* freshStore
        const turns = [
          turn(session, ["p1"]),
          turn(session, ["p1", "q1", "p2"]),
          turn(session, ["p1", "q1", "p2", "q2", "p3"])
        ]
        const threaded = yield* store.insert(turns)
        expect(threaded.map((t) => t.seq)).toEqual([1, 2, 3])
        expect(new Set(threaded.map((t) => t.conversationId)).size).toBe(1)
        const sql = yield* SqlClient
        const before = yield* store.count
        expect(before).toBeGreaterThanOrEqual(3)
        yield* sql`UPDATE vibes_proxy_turns SET created_at = now() - interval '40 days' WHERE session_id = ${session}`
        yield* sql`UPDATE vibes_conversations SET updated_at = now() - interval '40 days' WHERE session_id = ${session}`
        const deleted = yield* store.prune(new Date(Date.now() - 30 * 86_400_000))
        expect(deleted).toBe(3)
        const ids = turns.map((t) => t.id)
        const left = yield* sql<{ n: string }>`
        SELECT (SELECT count(*) FROM vibes_conversations WHERE session_id = ${session})
             + (SELECT count(*) FROM vibes_proxy_turn_bodies WHERE turn_id IN ${sql.in(ids)}) AS n`
        expect(Number(left[0]?.n)).toBe(0)
        expect(yield* store.count).toBe(before - 3)
      })
  )
})
