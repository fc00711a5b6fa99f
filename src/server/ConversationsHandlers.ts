/**
 * Handlers of the `Conversations` RPC group, on the conversation store of the node's database.
 */
import { Effect } from "effect"
import {
  ConversationsRpcs,
  type CostRequest,
  type GetConversation,
  type ListConversations
} from "../../rpc/Conversations.js"
import { ConversationStore } from "../../actors/proxy/ConversationStore.js"

/** `Conversations.List`, `Conversations.Get` and `Conversations.Cost`. */
export const layer = ConversationsRpcs.toLayer(
  Effect.map(ConversationStore, (store) => ({
    "Conversations.List": (request: ListConversations) => store.list(request),
    "Conversations.Get": (request: GetConversation) => store.get(request.conversationId, request.bodies),
    "Conversations.Cost": (request: CostRequest) => store.cost(request)
  }))
)
