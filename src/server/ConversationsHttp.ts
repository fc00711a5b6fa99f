/**
 * The conversations REST API, beside the `Conversations` RPCs:
 *
 * - `GET /api/conversations?session=&job=&search=&limit=`: the recorded conversations, newest first;
 * - `GET /api/conversations/:id?bodies=true`: one conversation with its turns (and their
 *   redacted bodies when asked);
 * - `GET /api/conversations-cost?by=model|session|day|conversation&session=&days=`: spend.
 *
 * Errors are JSON `{ error, message }`: 400 for bad input, 404 for an unknown conversation, 503
 * when the database cannot be reached.
 */
import { Effect, Either, Schema } from "effect"
import * as HttpRouter from "@effect/platform/HttpRouter"
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import {
  type ConversationError,
  ConversationDetail,
  ConversationSummary,
  CostBy,
  CostRequest,
  CostRow,
  GetConversation,
  ListConversations
} from "../../rpc/Conversations.js"
import { ConversationStore } from "../../actors/proxy/ConversationStore.js"
import { badRequest, formatIssue, json } from "./JsonApi.js"

const failure = (error: ConversationError) =>
  json(error._tag === "ConversationNotFound" ? 404 : 503, { error: error._tag, message: error.message })

/** The query parameters, each given at most once, as the schema's fields (numbers from text). */
const queryOf = (names: Record<string, string>) =>
  Effect.map(HttpServerRequest.HttpServerRequest, (request) => {
    const query = new URL(request.url, "http://localhost").searchParams
    const out: Record<string, string> = {}
    for (const [param, field] of Object.entries(names)) {
      const value = query.get(param)
      if (value !== null) out[field] = value
    }
    return out
  })

const ListQuery = Schema.Struct({
  ...ListConversations.fields,
  limit: Schema.optionalWith(Schema.NumberFromString.pipe(Schema.int(), Schema.between(1, 1000)), {
    default: () => 50
  })
})
const GetQuery = Schema.Struct({
  ...GetConversation.fields,
  bodies: Schema.optionalWith(Schema.BooleanFromString, { default: () => false })
})
const CostQuery = Schema.Struct({
  ...CostRequest.fields,
  by: Schema.optionalWith(CostBy, { default: () => "model" as const }),
  days: Schema.optionalWith(Schema.NumberFromString.pipe(Schema.int(), Schema.between(1, 3650)), {
    default: () => 30
  })
})

const decode = <A, I>(schema: Schema.Schema<A, I>, raw: unknown) =>
  Either.mapLeft(Schema.decodeUnknownEither(schema)(raw), formatIssue)

const list = Effect.gen(function* () {
  const query = decode(
    ListQuery,
    yield* queryOf({ session: "sessionId", job: "jobId", search: "search", limit: "limit" })
  )
  if (Either.isLeft(query)) return badRequest(query.left)
  const store = yield* ConversationStore
  return yield* store.list(query.right).pipe(
    Effect.match({
      onFailure: failure,
      onSuccess: (found) => json(200, Schema.encodeSync(Schema.Array(ConversationSummary))(found))
    })
  )
})

const get = Effect.gen(function* () {
  const params = yield* HttpRouter.params
  const query = decode(GetQuery, {
    ...(yield* queryOf({ bodies: "bodies" })),
    conversationId: params["id"] ?? ""
  })
  if (Either.isLeft(query)) return badRequest(query.left)
  const store = yield* ConversationStore
  return yield* store.get(query.right.conversationId, query.right.bodies).pipe(
    Effect.match({
      onFailure: failure,
      onSuccess: (detail) => json(200, Schema.encodeSync(ConversationDetail)(detail))
    })
  )
})

const cost = Effect.gen(function* () {
  const query = decode(CostQuery, yield* queryOf({ by: "by", session: "sessionId", days: "days" }))
  if (Either.isLeft(query)) return badRequest(query.left)
  const store = yield* ConversationStore
  return yield* store.cost(query.right).pipe(
    Effect.match({
      onFailure: failure,
      onSuccess: (rows) => json(200, Schema.encodeSync(Schema.Array(CostRow))(rows))
    })
  )
})

/** Every conversations route's handler, by method and path. */
export const handlers = [
  ["GET", "/api/conversations", list],
  ["GET", "/api/conversations/:id", get],
  ["GET", "/api/conversations-cost", cost]
] as const
