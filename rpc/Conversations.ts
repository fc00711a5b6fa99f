/**
 * Conversations recorded by the AI-provider proxy: every proxied Messages, Chat Completions and
 * Responses request is a turn (its request and assembled answer, usage and cost), and turns are
 * threaded into conversations the way the APIs chain them. The `Conversations` RPC group lists,
 * reads, searches and costs them; the price table that costs them is configured here too.
 */
import { Schema } from "effect"
import * as Rpc from "@effect/rpc/Rpc"
import * as RpcGroup from "@effect/rpc/RpcGroup"
import { AuthMiddleware } from "./Auth.js"

/** Which API a turn spoke. */
export const TurnApi = Schema.Literal("anthropic.messages", "openai.chat", "openai.responses")
export type TurnApi = typeof TurnApi.Type

/** One price of the price table, in US dollars per million tokens. */
export const Price = Schema.Struct({
  /** The provider name (as in `/proxy/<provider>`); absent: any provider. */
  provider: Schema.optional(Schema.String),
  /** The model: exact, or a prefix ending in `*` (`claude-sonnet-4*`); the longest match wins. */
  model: Schema.String.pipe(Schema.minLength(1), Schema.maxLength(200)),
  input: Schema.NonNegative,
  output: Schema.NonNegative,
  cacheRead: Schema.optionalWith(Schema.NonNegative, { default: () => 0 }),
  cacheWrite: Schema.optionalWith(Schema.NonNegative, { default: () => 0 })
})
export type Price = typeof Price.Type

/** The price table (`VIBES_PROXY_PRICES`, JSON). */
export const PriceTable = Schema.Array(Price)

/** Tokens of a turn, as the provider reported them (input without the cached part). */
export class TurnUsage extends Schema.Class<TurnUsage>("TurnUsage")({
  inputTokens: Schema.NullOr(Schema.Int),
  outputTokens: Schema.NullOr(Schema.Int),
  cacheReadTokens: Schema.NullOr(Schema.Int),
  cacheWriteTokens: Schema.NullOr(Schema.Int)
}) {}

/** One block of an assembled answer or of a message: text, a tool call, a tool result, thinking. */
export const Block = Schema.Union(
  Schema.TaggedStruct("text", { text: Schema.String }),
  Schema.TaggedStruct("thinking", { text: Schema.String }),
  Schema.TaggedStruct("tool_call", { id: Schema.String, name: Schema.String, input: Schema.String }),
  Schema.TaggedStruct("tool_result", { id: Schema.String, content: Schema.String, isError: Schema.Boolean }),
  Schema.TaggedStruct("other", { kind: Schema.String })
)
export type Block = typeof Block.Type

/** A message as a turn shows it: who said it and its blocks. */
export class TurnMessage extends Schema.Class<TurnMessage>("TurnMessage")({
  role: Schema.String,
  blocks: Schema.Array(Block)
}) {}

/** A turn without its bodies. */
export class TurnSummary extends Schema.Class<TurnSummary>("TurnSummary")({
  id: Schema.UUID,
  conversationId: Schema.UUID,
  seq: Schema.Int,
  parentTurnId: Schema.NullOr(Schema.UUID),
  provider: Schema.String,
  api: TurnApi,
  model: Schema.NullOr(Schema.String),
  status: Schema.Int,
  errorKind: Schema.NullOr(Schema.String),
  streamed: Schema.Boolean,
  stopReason: Schema.NullOr(Schema.String),
  toolCalls: Schema.Int,
  usage: TurnUsage,
  costUsd: Schema.NullOr(Schema.Number),
  latencyMs: Schema.Number,
  ttfbMs: Schema.NullOr(Schema.Number),
  requestBytes: Schema.Number,
  responseBytes: Schema.Number,
  preview: Schema.String,
  createdAt: Schema.DateTimeUtc
}) {}

/** A turn with what was said: the messages new in it and the assembled answer. */
export class TurnDetail extends Schema.Class<TurnDetail>("TurnDetail")({
  turn: TurnSummary,
  /** The system prompt or instructions, when the turn starts its conversation. */
  system: Schema.NullOr(Schema.String),
  /** The request's messages that its parent turn did not have (all of them for a first turn). */
  input: Schema.Array(TurnMessage),
  output: Schema.Array(Block),
  /** The bodies as sent and received (redacted), when asked for. */
  requestBody: Schema.NullOr(Schema.String),
  responseBody: Schema.NullOr(Schema.String)
}) {}

/** A conversation with its totals. */
export class ConversationSummary extends Schema.Class<ConversationSummary>("ConversationSummary")({
  id: Schema.UUID,
  provider: Schema.String,
  api: TurnApi,
  client: Schema.String,
  sessionId: Schema.NullOr(Schema.String),
  jobId: Schema.NullOr(Schema.String),
  parentId: Schema.NullOr(Schema.UUID),
  forkedFromTurnId: Schema.NullOr(Schema.UUID),
  title: Schema.String,
  model: Schema.NullOr(Schema.String),
  turns: Schema.Int,
  usage: TurnUsage,
  costUsd: Schema.NullOr(Schema.Number),
  createdAt: Schema.DateTimeUtc,
  updatedAt: Schema.DateTimeUtc
}) {}

/** A conversation and its turns, in order. */
export class ConversationDetail extends Schema.Class<ConversationDetail>("ConversationDetail")({
  conversation: ConversationSummary,
  turns: Schema.Array(TurnDetail)
}) {}

/** What a cost row adds up. */
export const CostBy = Schema.Literal("model", "session", "day", "conversation")
export type CostBy = typeof CostBy.Type

/** Spend of one group of turns. */
export class CostRow extends Schema.Class<CostRow>("CostRow")({
  key: Schema.String,
  provider: Schema.NullOr(Schema.String),
  turns: Schema.Int,
  usage: TurnUsage,
  /** Null when no turn of the group had a price. */
  costUsd: Schema.NullOr(Schema.Number),
  /** Turns of the group without a price. */
  unpriced: Schema.Int
}) {}

/** There is no conversation with this id. */
export class ConversationNotFound extends Schema.TaggedError<ConversationNotFound>()("ConversationNotFound", {
  conversationId: Schema.String,
  message: Schema.String
}) {}

/** The conversation store cannot be read now (the database is down). */
export class ConversationsUnavailable extends Schema.TaggedError<ConversationsUnavailable>()(
  "ConversationsUnavailable",
  { message: Schema.String }
) {}

/** A replay could not be sent or answered (the provider is unknown, unreachable, or refused it). */
export class ReplayFailed extends Schema.TaggedError<ReplayFailed>()("ReplayFailed", {
  message: Schema.String
}) {}

/** Anything a `Conversations` RPC can fail with. */
export const ConversationError = Schema.Union(ConversationNotFound, ConversationsUnavailable, ReplayFailed)
export type ConversationError = typeof ConversationError.Type

/** `Conversations.List`: newest first, of a session or job, matching a search. */
export class ListConversations extends Schema.Class<ListConversations>("ListConversations")({
  sessionId: Schema.optional(Schema.String.pipe(Schema.maxLength(200))),
  jobId: Schema.optional(Schema.String.pipe(Schema.maxLength(200))),
  /** Postgres full-text search over what was said (`websearch_to_tsquery` syntax). */
  search: Schema.optional(Schema.String.pipe(Schema.minLength(1), Schema.maxLength(1000))),
  limit: Schema.optionalWith(Schema.Int.pipe(Schema.between(1, 1000)), { default: () => 50 })
}) {}

/** `Conversations.Get`: one conversation with its turns. */
export class GetConversation extends Schema.Class<GetConversation>("GetConversation")({
  conversationId: Schema.UUID,
  /** Include the raw (redacted) bodies of every turn. */
  bodies: Schema.optionalWith(Schema.Boolean, { default: () => false })
}) {}

/** `Conversations.Cost`: spend grouped `by`, over the last `days`. */
export class CostRequest extends Schema.Class<CostRequest>("CostRequest")({
  by: CostBy,
  sessionId: Schema.optional(Schema.String.pipe(Schema.maxLength(200))),
  days: Schema.optionalWith(Schema.Int.pipe(Schema.between(1, 3650)), { default: () => 30 })
}) {}

/** `Conversations.Replay`: a turn's recorded request sent again, as it was or to another model. */
export class ReplayTurn extends Schema.Class<ReplayTurn>("ReplayTurn")({
  turnId: Schema.UUID,
  model: Schema.optional(Schema.String.pipe(Schema.minLength(1), Schema.maxLength(200)))
}) {}

/** The recorded answer and the new one, side by side. */
export class ReplayResult extends Schema.Class<ReplayResult>("ReplayResult")({
  turnId: Schema.UUID,
  provider: Schema.String,
  originalModel: Schema.NullOr(Schema.String),
  model: Schema.NullOr(Schema.String),
  original: Schema.Array(Block),
  replay: Schema.Array(Block),
  status: Schema.Int,
  /** The provider's error, when it answered with one. */
  error: Schema.NullOr(Schema.String),
  usage: TurnUsage,
  costUsd: Schema.NullOr(Schema.Number),
  latencyMs: Schema.Number
}) {}

/** RPCs over the recorded conversations. */
export class ConversationsRpcs extends RpcGroup.make(
  Rpc.make("List", {
    payload: ListConversations,
    success: Schema.Array(ConversationSummary),
    error: ConversationError
  }),
  Rpc.make("Get", { payload: GetConversation, success: ConversationDetail, error: ConversationError }),
  Rpc.make("Cost", { payload: CostRequest, success: Schema.Array(CostRow), error: ConversationError }),
  Rpc.make("Replay", { payload: ReplayTurn, success: ReplayResult, error: ConversationError })
)
  .prefix("Conversations.")
  .middleware(AuthMiddleware) {}
