/**
 * Handlers of the `Conversations` RPC group, on the conversation store of the node's database;
 * a replay goes to the provider through this node's proxy.
 */
import { Effect } from "effect"
import {
  ConversationsRpcs,
  type CostRequest,
  type GetConversation,
  type ListConversations,
  ReplayFailed,
  ReplayResult,
  type ReplayTurn,
  TurnUsage
} from "../../rpc/Conversations.js"
import { ConversationStore } from "../../actors/proxy/ConversationStore.js"
import { Proxy } from "../../actors/proxy/Proxy.js"
import * as Turns from "../../actors/proxy/Turns.js"

const isRecord = (value: unknown): value is Record<string, unknown> =>
  typeof value === "object" && value !== null && !Array.isArray(value)

/** `Conversations.List`, `Conversations.Get`, `Conversations.Cost` and `Conversations.Replay`. */
export const layer = ConversationsRpcs.toLayer(
  Effect.gen(function* () {
    const store = yield* ConversationStore
    const proxy = yield* Proxy
    const replay = (request: ReplayTurn) =>
      Effect.gen(function* () {
        const recorded = yield* store.request(request.turnId)
        let parsed: unknown
        try {
          parsed = JSON.parse(recorded.body.toString("utf8"))
        } catch {
          parsed = undefined
        }
        if (!isRecord(parsed)) {
          return yield* new ReplayFailed({ message: `turn ${request.turnId}'s request is not a JSON object` })
        }
        // The same request, answered whole (a stream is assembled the same way), to the model asked for.
        const body: Record<string, unknown> = { ...parsed, stream: false }
        if (request.model !== undefined) body["model"] = request.model
        delete body["stream_options"]
        const answer = yield* proxy.replay(
          recorded.provider,
          recorded.path.split("?")[0] ?? recorded.path,
          Buffer.from(JSON.stringify(body))
        )
        const assembled = Turns.assemble(recorded.api, answer.body.toString("utf8"), false)
        return new ReplayResult({
          turnId: request.turnId,
          provider: recorded.provider,
          originalModel: recorded.model,
          model: assembled.model ?? (typeof body["model"] === "string" ? body["model"] : null),
          original: recorded.original,
          replay: assembled.blocks,
          status: answer.status,
          error: assembled.error,
          usage: new TurnUsage({
            inputTokens: assembled.inputTokens,
            outputTokens: assembled.outputTokens,
            cacheReadTokens: assembled.cacheReadTokens,
            cacheWriteTokens: assembled.cacheWriteTokens
          }),
          costUsd: answer.costUsd,
          latencyMs: answer.latencyMs
        })
      })
    return {
      "Conversations.List": (request: ListConversations) => store.list(request),
      "Conversations.Get": (request: GetConversation) => store.get(request.conversationId, request.bodies),
      "Conversations.Cost": (request: CostRequest) => store.cost(request),
      "Conversations.Replay": replay
    }
  })
)
