/**
 * Where recorded conversations live: `vibes_conversations`, `vibes_proxy_turns` and the
 * compressed bodies in `vibes_proxy_turn_bodies` (migration 0012). Storing a turn threads it:
 * a Responses request names its parent by `previous_response_id`; a Messages or Chat request's
 * parent is the latest answered turn of the same caller whose whole message chain is a strict
 * prefix of its own. A parent that already has an answered child makes the new turn a fork: a
 * conversation of its own that names the turn it left from.
 */
import * as zlib from "node:zlib"
import { Context, DateTime, Effect, Layer, Option } from "effect"
import { SqlClient } from "@effect/sql/SqlClient"
import type { SqlError } from "@effect/sql/SqlError"
import {
  type Block,
  type CostBy,
  CostRow,
  ConversationDetail,
  ConversationNotFound,
  ConversationSummary,
  ConversationsUnavailable,
  TurnDetail,
  TurnMessage,
  TurnSummary,
  TurnUsage,
  type TurnApi
} from "../../rpc/Conversations.js"
import * as Turns from "./Turns.js"

/** The tenant conversations belong to (vibes has one until tenants arrive). */
const tenant = "default"

/** One stored body of a turn. */
export interface Body {
  readonly kind: "request" | "response" | "assembled"
  readonly encoding: "identity" | "gzip"
  /** Bytes before compression. */
  readonly size: number
  /** Only the first bytes were kept (the body was larger than the capture limit). */
  readonly truncated: boolean
  readonly body: Buffer
}

/** A turn ready to store. */
export interface NewTurn {
  readonly id: string
  readonly provider: string
  readonly api: TurnApi
  readonly model: string | null
  readonly path: string
  readonly status: number
  readonly errorKind: string | null
  readonly streamed: boolean
  readonly client: string
  readonly sessionId: string | null
  readonly jobId: string | null
  /** The request's chain of message hashes (`Turns.chain`). */
  readonly chain: ReadonlyArray<Buffer>
  readonly previousResponseId: string | null
  readonly responseId: string | null
  readonly stopReason: string | null
  readonly toolCalls: number
  readonly usage: TurnUsage
  readonly costUsd: number | null
  readonly latencyMs: number
  readonly ttfbMs: number | null
  readonly requestBytes: number
  readonly responseBytes: number
  readonly preview: string
  readonly title: string
  readonly searchText: string
  readonly bodies: ReadonlyArray<Body>
}

/** Where a stored turn went. */
export interface Threaded {
  readonly conversationId: string
  readonly seq: number
  readonly parentTurnId: string | null
  readonly forked: boolean
}

/** A stored turn as threading needs it. */
interface Known {
  readonly id: string
  readonly conversationId: string
  readonly messageCount: number
  readonly seq: number
  /** An answered turn continues it already: the next one to do so is a fork. */
  answeredChild: boolean
}

/** Turns (and conversations) threading keeps in memory, per index. */
const maxKnown = 50_000

/** The key of a chain hash among a caller's turns of one provider and API. */
const hashKey = (turn: NewTurn, hash: Buffer) =>
  `${turn.provider}\0${turn.api}\0${turn.sessionId ?? ""}\0${turn.jobId ?? ""}\0${hash.toString("base64")}`

/** Spend loaded at start, for the budgets. */
export interface Spent {
  readonly byHolder: ReadonlyArray<{ readonly key: string; readonly usd: number }>
  readonly today: number
}

/** The conversation store. */
export class ConversationStore extends Context.Tag("vibes/ConversationStore")<
  ConversationStore,
  {
    /** Stores turns in order, threading each (a later one may continue an earlier one). */
    readonly insert: (turns: ReadonlyArray<NewTurn>) => Effect.Effect<ReadonlyArray<Threaded>, SqlError>
    readonly list: (options: {
      readonly sessionId?: string | undefined
      readonly jobId?: string | undefined
      readonly search?: string | undefined
      readonly limit: number
    }) => Effect.Effect<ReadonlyArray<ConversationSummary>, ConversationsUnavailable>
    readonly get: (
      conversationId: string,
      bodies: boolean
    ) => Effect.Effect<ConversationDetail, ConversationNotFound | ConversationsUnavailable>
    readonly cost: (options: {
      readonly by: CostBy
      readonly sessionId?: string | undefined
      readonly days: number
    }) => Effect.Effect<ReadonlyArray<CostRow>, ConversationsUnavailable>
    /** A turn's recorded request (redacted) and assembled answer, to replay it. */
    readonly request: (turnId: string) => Effect.Effect<
      {
        readonly provider: string
        readonly api: TurnApi
        readonly path: string
        readonly model: string | null
        readonly body: Buffer
        readonly original: ReadonlyArray<Block>
      },
      ConversationNotFound | ConversationsUnavailable
    >
    /** Deletes the turns recorded before `cutoff`, and the conversations left empty. */
    readonly prune: (cutoff: Date) => Effect.Effect<number, SqlError>
    /** Spend per session and job over the last `days`, and since midnight UTC. */
    readonly spent: (days: number) => Effect.Effect<Spent, SqlError>
    /** The turns stored in all (for tests and `vibes doctor`). */
    readonly count: Effect.Effect<number, SqlError>
  }
>() {}

interface ConversationRow {
  readonly id: string
  readonly provider: string
  readonly api: TurnApi
  readonly client: string
  readonly session_id: string | null
  readonly job_id: string | null
  readonly parent_id: string | null
  readonly forked_from_turn_id: string | null
  readonly title: string
  readonly created_at: Date
  readonly updated_at: Date
  readonly model: string | null
  readonly turns: string | number
  readonly input_tokens: string | number | null
  readonly output_tokens: string | number | null
  readonly cache_read_tokens: string | number | null
  readonly cache_write_tokens: string | number | null
  readonly cost_usd: number | null
}

interface TurnRow {
  readonly id: string
  readonly conversation_id: string
  readonly seq: number
  readonly parent_turn_id: string | null
  readonly provider: string
  readonly api: TurnApi
  readonly model: string | null
  readonly status: number
  readonly error_kind: string | null
  readonly streamed: boolean
  readonly stop_reason: string | null
  readonly tool_calls: number
  readonly input_tokens: number | null
  readonly output_tokens: number | null
  readonly cache_read_tokens: number | null
  readonly cache_write_tokens: number | null
  readonly cost_usd: number | null
  readonly latency_ms: number
  readonly ttfb_ms: number | null
  readonly request_bytes: string | number
  readonly response_bytes: string | number
  readonly preview: string
  readonly input_from: number
  readonly created_at: Date
}

interface BodyRow {
  readonly turn_id: string
  readonly kind: Body["kind"]
  readonly encoding: Body["encoding"]
  readonly body: Buffer
}

const num = (value: string | number | null): number | null => (value === null ? null : Number(value))

const unavailable = (error: SqlError) =>
  new ConversationsUnavailable({ message: `the conversation store cannot be read: ${error.message}` })

/** A body's bytes, decompressed. */
export const decode = (row: {
  readonly encoding: Body["encoding"]
  readonly body: Buffer
}): Effect.Effect<Buffer> =>
  row.encoding === "identity"
    ? Effect.succeed(row.body)
    : Effect.async<Buffer>((resume) =>
        zlib.gunzip(row.body, (error, out) =>
          resume(
            error === null
              ? Effect.succeed(out)
              : Effect.succeed(Buffer.from(`[cannot decompress: ${error.message}]`))
          )
        )
      )

const summaryOf = (row: ConversationRow) =>
  new ConversationSummary({
    id: row.id,
    provider: row.provider,
    api: row.api,
    client: row.client,
    sessionId: row.session_id,
    jobId: row.job_id,
    parentId: row.parent_id,
    forkedFromTurnId: row.forked_from_turn_id,
    title: row.title,
    model: row.model,
    turns: Number(row.turns),
    usage: new TurnUsage({
      inputTokens: num(row.input_tokens),
      outputTokens: num(row.output_tokens),
      cacheReadTokens: num(row.cache_read_tokens),
      cacheWriteTokens: num(row.cache_write_tokens)
    }),
    costUsd: row.cost_usd,
    createdAt: DateTime.unsafeFromDate(row.created_at),
    updatedAt: DateTime.unsafeFromDate(row.updated_at)
  })

const turnOf = (row: TurnRow) =>
  new TurnSummary({
    id: row.id,
    conversationId: row.conversation_id,
    seq: row.seq,
    parentTurnId: row.parent_turn_id,
    provider: row.provider,
    api: row.api,
    model: row.model,
    status: row.status,
    errorKind: row.error_kind,
    streamed: row.streamed,
    stopReason: row.stop_reason,
    toolCalls: row.tool_calls,
    usage: new TurnUsage({
      inputTokens: row.input_tokens,
      outputTokens: row.output_tokens,
      cacheReadTokens: row.cache_read_tokens,
      cacheWriteTokens: row.cache_write_tokens
    }),
    costUsd: row.cost_usd,
    latencyMs: row.latency_ms,
    ttfbMs: row.ttfb_ms,
    requestBytes: Number(row.request_bytes),
    responseBytes: Number(row.response_bytes),
    preview: row.preview,
    createdAt: DateTime.unsafeFromDate(row.created_at)
  })

const parseJson = (bytes: Buffer): unknown => {
  try {
    return JSON.parse(bytes.toString("utf8"))
  } catch {
    return null
  }
}

/** The assembled blocks as the recorder stored them. */
const blocksOf = (value: unknown): ReadonlyArray<Block> =>
  typeof value === "object" && value !== null && "blocks" in value && Array.isArray(value.blocks)
    ? (value.blocks as ReadonlyArray<Block>) // written by the recorder from `Block`s
    : []

/** The store on the node's Postgres. */
export const layer: Layer.Layer<ConversationStore, never, SqlClient> = Layer.effect(
  ConversationStore,
  Effect.gen(function* () {
    const sql = yield* SqlClient

    /**
     * What this node knows of the turns it stored lately, so that threading a turn costs no query
     * in the common case (the agent's previous turn went through this node). A miss (a restart,
     * another node) asks the database.
     */
    const known = new Map<string, Known>()
    const byResponse = new Map<string, Known>()
    const byHash = new Map<string, Known>()
    const lastSeq = new Map<string, number>()
    const remember = (turn: NewTurn, entry: Known) => {
      for (const map of [known, byResponse, byHash])
        if (map.size >= maxKnown) map.delete(map.keys().next().value ?? "")
      if (lastSeq.size >= maxKnown) lastSeq.delete(lastSeq.keys().next().value ?? "")
      known.set(entry.id, entry)
      lastSeq.set(entry.conversationId, entry.seq)
      if (turn.responseId !== null) byResponse.set(turn.responseId, entry)
      const last = turn.chain[turn.chain.length - 1]
      if (last !== undefined) byHash.set(hashKey(turn, last), entry)
    }

    type Parent = { readonly id: string; readonly conversation_id: string; readonly message_count: number }
    const fromRow = (row: Parent, answeredChild: boolean, seq: number): Known => ({
      id: row.id,
      conversationId: row.conversation_id,
      messageCount: row.message_count,
      seq,
      answeredChild
    })

    /** The parent turn of `turn`: from memory, else from the database. */
    const parentOf = (turn: NewTurn): Effect.Effect<Option.Option<Known>, SqlError> =>
      Effect.gen(function* () {
        if (turn.previousResponseId !== null) {
          const hit = byResponse.get(turn.previousResponseId)
          if (hit !== undefined) return Option.some(hit)
        } else {
          for (let i = turn.chain.length - 2; i >= 0; i--) {
            const prefix = turn.chain[i]
            const hit = prefix === undefined ? undefined : byHash.get(hashKey(turn, prefix))
            if (hit !== undefined) return Option.some(hit)
          }
        }
        const prefixes = turn.chain.slice(0, -1)
        if (turn.previousResponseId === null && prefixes.length === 0) return Option.none()
        const rows =
          turn.previousResponseId !== null
            ? yield* sql<Parent>`
                SELECT id, conversation_id, message_count FROM vibes_proxy_turns
                WHERE tenant_id = ${tenant} AND response_id = ${turn.previousResponseId}
                ORDER BY created_at DESC LIMIT 1`
            : yield* sql<Parent>`
                SELECT id, conversation_id, message_count FROM vibes_proxy_turns
                WHERE messages_hash IN ${sql.in(prefixes)}
                  AND tenant_id = ${tenant} AND provider = ${turn.provider} AND api = ${turn.api}
                  AND session_id IS NOT DISTINCT FROM ${turn.sessionId}
                  AND job_id IS NOT DISTINCT FROM ${turn.jobId}
                  AND status < 400 AND error_kind IS NULL
                ORDER BY message_count DESC, created_at DESC LIMIT 1`
        const row = rows[0]
        if (row === undefined) return Option.none()
        const children = yield* sql<{ readonly n: number }>`
          SELECT 1 AS n FROM vibes_proxy_turns
          WHERE parent_turn_id = ${row.id} AND status < 400 AND error_kind IS NULL LIMIT 1`
        const seq = yield* seqOf(row.conversation_id)
        return Option.some(fromRow(row, children.length > 0, seq - 1))
      })

    /** The next seq of a conversation. */
    const seqOf = (conversationId: string) =>
      Effect.gen(function* () {
        const cached = lastSeq.get(conversationId)
        if (cached !== undefined) return cached + 1
        const rows = yield* sql<{ readonly seq: number }>`
          SELECT coalesce(max(seq), 0) + 1 AS seq FROM vibes_proxy_turns WHERE conversation_id = ${conversationId}`
        return Number(rows[0]?.seq ?? 1)
      })

    const insert = (turns: ReadonlyArray<NewTurn>) =>
      Effect.gen(function* () {
        const conversations = new Map<string, Record<string, unknown>>()
        const turnRows: Array<Record<string, unknown>> = []
        const bodyRows: Array<Record<string, unknown>> = []
        const threaded: Array<Threaded> = []
        for (const turn of turns) {
          const parent = yield* parentOf(turn)
          const answered = turn.status < 400 && turn.errorKind === null
          const forked = Option.isSome(parent) && answered && parent.value.answeredChild
          const conversationId = Option.isSome(parent) && !forked ? parent.value.conversationId : turn.id
          const parentTurnId = Option.match(parent, { onNone: () => null, onSome: (p) => p.id })
          const seq = conversationId === turn.id ? 1 : yield* seqOf(conversationId)
          conversations.set(conversationId, {
            id: conversationId,
            tenant_id: tenant,
            provider: turn.provider,
            api: turn.api,
            client: turn.client,
            session_id: turn.sessionId,
            job_id: turn.jobId,
            parent_id: forked ? Option.getOrThrow(parent).conversationId : null,
            forked_from_turn_id: forked ? parentTurnId : null,
            title: turn.title
          })
          if (answered && Option.isSome(parent)) parent.value.answeredChild = true
          const inputFrom = Option.match(parent, {
            onNone: () => 0,
            onSome: (p) => (turn.previousResponseId !== null ? 0 : p.messageCount)
          })
          turnRows.push({
            id: turn.id,
            tenant_id: tenant,
            conversation_id: conversationId,
            seq,
            parent_turn_id: parentTurnId,
            provider: turn.provider,
            api: turn.api,
            model: turn.model,
            path: turn.path,
            status: turn.status,
            error_kind: turn.errorKind,
            streamed: turn.streamed,
            client: turn.client,
            session_id: turn.sessionId,
            job_id: turn.jobId,
            messages_hash: turn.chain[turn.chain.length - 1] ?? null,
            message_count: turn.chain.length,
            input_from: inputFrom,
            response_id: turn.responseId,
            stop_reason: turn.stopReason,
            tool_calls: turn.toolCalls,
            input_tokens: turn.usage.inputTokens,
            output_tokens: turn.usage.outputTokens,
            cache_read_tokens: turn.usage.cacheReadTokens,
            cache_write_tokens: turn.usage.cacheWriteTokens,
            cost_usd: turn.costUsd,
            latency_ms: turn.latencyMs,
            ttfb_ms: turn.ttfbMs,
            request_bytes: turn.requestBytes,
            response_bytes: turn.responseBytes,
            preview: turn.preview,
            search_text: turn.searchText
          })
          for (const body of turn.bodies) {
            bodyRows.push({
              turn_id: turn.id,
              kind: body.kind,
              tenant_id: tenant,
              encoding: body.encoding,
              size: body.size,
              truncated: body.truncated,
              body: body.body
            })
          }
          if (answered) {
            remember(turn, {
              id: turn.id,
              conversationId,
              messageCount: turn.chain.length,
              seq,
              answeredChild: false
            })
          } else lastSeq.set(conversationId, seq)
          threaded.push({ conversationId, seq, parentTurnId, forked })
        }
        // One statement: the conversations (new, or touched), the turns and their bodies.
        yield* sql`
          WITH conversations AS (
            INSERT INTO vibes_conversations ${sql.insert([...conversations.values()])}
            ON CONFLICT (id) DO UPDATE SET updated_at = now()
          ), turns AS (
            INSERT INTO vibes_proxy_turns ${sql.insert(turnRows)}
          )
          INSERT INTO vibes_proxy_turn_bodies ${sql.insert(bodyRows)}`.pipe(
          // What memory learnt from a batch that was not stored is forgotten.
          Effect.tapError(() =>
            Effect.sync(() => {
              for (const turn of turns) known.delete(turn.id)
              byResponse.clear()
              byHash.clear()
              lastSeq.clear()
            })
          )
        )
        return threaded
      })

    const totals = sql`
      count(t.id) AS turns,
      sum(t.input_tokens) AS input_tokens, sum(t.output_tokens) AS output_tokens,
      sum(t.cache_read_tokens) AS cache_read_tokens, sum(t.cache_write_tokens) AS cache_write_tokens,
      sum(t.cost_usd) AS cost_usd`

    const list: ConversationStore["Type"]["list"] = (options) =>
      sql<ConversationRow>`
        SELECT c.*, (array_agg(t.model ORDER BY t.seq DESC))[1] AS model, ${totals}
        FROM vibes_conversations c JOIN vibes_proxy_turns t ON t.conversation_id = c.id
        WHERE c.tenant_id = ${tenant}
          ${options.sessionId === undefined ? sql`` : sql`AND c.session_id = ${options.sessionId}`}
          ${options.jobId === undefined ? sql`` : sql`AND c.job_id = ${options.jobId}`}
          ${
            options.search === undefined
              ? sql``
              : sql`AND c.id IN (SELECT conversation_id FROM vibes_proxy_turns
                    WHERE tenant_id = ${tenant} AND search @@ websearch_to_tsquery('simple', ${options.search}))`
          }
        GROUP BY c.id
        ORDER BY c.updated_at DESC, c.id DESC
        LIMIT ${options.limit}`.pipe(
        Effect.map((rows) => rows.map(summaryOf)),
        Effect.mapError(unavailable)
      )

    const get: ConversationStore["Type"]["get"] = (conversationId, withBodies) =>
      Effect.gen(function* () {
        const rows = yield* sql<ConversationRow>`
          SELECT c.*, (array_agg(t.model ORDER BY t.seq DESC))[1] AS model, ${totals}
          FROM vibes_conversations c JOIN vibes_proxy_turns t ON t.conversation_id = c.id
          WHERE c.tenant_id = ${tenant} AND c.id = ${conversationId}
          GROUP BY c.id`
        const row = rows[0]
        if (row === undefined) {
          return yield* new ConversationNotFound({
            conversationId,
            message: `no conversation ${conversationId}; list them with 'vibes conversations'`
          })
        }
        const turns = yield* sql<TurnRow>`
          SELECT * FROM vibes_proxy_turns WHERE conversation_id = ${conversationId} ORDER BY seq`
        const kinds = withBodies ? ["request", "response", "assembled"] : ["request", "assembled"]
        const bodies =
          turns.length === 0
            ? []
            : yield* sql<BodyRow>`
                SELECT turn_id, kind, encoding, body FROM vibes_proxy_turn_bodies
                WHERE turn_id IN ${sql.in(turns.map((t) => t.id))} AND kind IN ${sql.in(kinds)}`
        const byTurn = new Map<string, Map<string, Buffer>>()
        for (const body of bodies) {
          const decoded = yield* decode(body)
          const entry = byTurn.get(body.turn_id) ?? new Map<string, Buffer>()
          entry.set(body.kind, decoded)
          byTurn.set(body.turn_id, entry)
        }
        const details = turns.map((turn, index) => {
          const stored = byTurn.get(turn.id)
          const request = stored?.get("request")
          const view = request === undefined ? null : Turns.readRequest(turn.api, parseJson(request))
          const input = view === null ? [] : Turns.messages(view, turn.input_from)
          // A request that extends its parent repeats the parent's answer first: shown once, there.
          let start = 0
          if (turn.input_from > 0) while (input[start]?.role === "assistant") start += 1
          const assembled = stored?.get("assembled")
          return new TurnDetail({
            turn: turnOf(turn),
            system: index === 0 || turn.input_from === 0 ? (view?.system ?? null) : null,
            input: input.slice(start).map((message) => new TurnMessage(message)),
            output: assembled === undefined ? [] : blocksOf(parseJson(assembled)),
            requestBody: withBodies && request !== undefined ? request.toString("utf8") : null,
            responseBody: withBodies ? (stored?.get("response")?.toString("utf8") ?? null) : null
          })
        })
        return new ConversationDetail({ conversation: summaryOf(row), turns: details })
      }).pipe(Effect.catchTag("SqlError", (error) => Effect.fail(unavailable(error))))

    const cost: ConversationStore["Type"]["cost"] = (options) => {
      const key =
        options.by === "model"
          ? sql`coalesce(t.model, '-')`
          : options.by === "session"
            ? sql`coalesce(t.session_id, CASE WHEN t.job_id IS NOT NULL THEN 'job:' || t.job_id ELSE t.client END)`
            : options.by === "day"
              ? sql`to_char(t.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')`
              : sql`t.conversation_id::text`
      const provider = options.by === "model" ? sql`t.provider` : sql`NULL::text`
      return sql<{
        readonly key: string
        readonly provider: string | null
        readonly turns: string | number
        readonly unpriced: string | number
        readonly input_tokens: string | number | null
        readonly output_tokens: string | number | null
        readonly cache_read_tokens: string | number | null
        readonly cache_write_tokens: string | number | null
        readonly cost_usd: number | null
      }>`
        SELECT ${key} AS key, ${provider} AS provider, ${totals},
          count(t.id) FILTER (WHERE t.cost_usd IS NULL) AS unpriced
        FROM vibes_proxy_turns t
        WHERE t.tenant_id = ${tenant} AND t.created_at > now() - make_interval(days => ${options.days})
          ${options.sessionId === undefined ? sql`` : sql`AND t.session_id = ${options.sessionId}`}
        GROUP BY 1, 2
        ORDER BY ${options.by === "day" ? sql`1 DESC` : sql`sum(t.cost_usd) DESC NULLS LAST, 1`}
        LIMIT 1000`.pipe(
        Effect.map((rows) =>
          rows.map(
            (row) =>
              new CostRow({
                key: row.key,
                provider: row.provider,
                turns: Number(row.turns),
                usage: new TurnUsage({
                  inputTokens: num(row.input_tokens),
                  outputTokens: num(row.output_tokens),
                  cacheReadTokens: num(row.cache_read_tokens),
                  cacheWriteTokens: num(row.cache_write_tokens)
                }),
                costUsd: row.cost_usd,
                unpriced: Number(row.unpriced)
              })
          )
        ),
        Effect.mapError(unavailable)
      )
    }

    const request: ConversationStore["Type"]["request"] = (turnId) =>
      Effect.gen(function* () {
        const rows = yield* sql<{
          readonly provider: string
          readonly api: TurnApi
          readonly path: string
          readonly model: string | null
        }>`SELECT provider, api, path, model FROM vibes_proxy_turns WHERE tenant_id = ${tenant} AND id = ${turnId}`
        const row = rows[0]
        if (row === undefined) {
          return yield* new ConversationNotFound({
            conversationId: turnId,
            message: `no turn ${turnId}; 'vibes conversation ID --json' lists a conversation's turns`
          })
        }
        const bodies = yield* sql<BodyRow>`
          SELECT turn_id, kind, encoding, body FROM vibes_proxy_turn_bodies WHERE turn_id = ${turnId}`
        const decoded = new Map<string, Buffer>()
        for (const body of bodies) decoded.set(body.kind, yield* decode(body))
        const body = decoded.get("request")
        if (body === undefined) {
          return yield* new ConversationNotFound({
            conversationId: turnId,
            message: `turn ${turnId} has no recorded request`
          })
        }
        const assembled = decoded.get("assembled")
        return { ...row, body, original: assembled === undefined ? [] : blocksOf(parseJson(assembled)) }
      }).pipe(Effect.catchTag("SqlError", (error) => Effect.fail(unavailable(error))))

    const prune = (cutoff: Date) =>
      Effect.gen(function* () {
        const deleted = yield* sql<{ readonly id: string }>`
          DELETE FROM vibes_proxy_turns WHERE created_at < ${cutoff} RETURNING id`
        yield* sql`
          DELETE FROM vibes_conversations c WHERE c.updated_at < ${cutoff}
            AND NOT EXISTS (SELECT 1 FROM vibes_proxy_turns t WHERE t.conversation_id = c.id)`
        return deleted.length
      })

    const spent = (days: number) =>
      Effect.gen(function* () {
        const rows = yield* sql<{ readonly key: string; readonly usd: number }>`
          SELECT CASE WHEN session_id IS NOT NULL THEN 'session:' || session_id ELSE 'job:' || job_id END AS key,
                 sum(cost_usd) AS usd
          FROM vibes_proxy_turns
          WHERE tenant_id = ${tenant} AND cost_usd IS NOT NULL
            AND (session_id IS NOT NULL OR job_id IS NOT NULL)
            AND created_at > now() - make_interval(days => ${days})
          GROUP BY 1`
        const today = yield* sql<{ readonly usd: number | null }>`
          SELECT sum(cost_usd) AS usd FROM vibes_proxy_turns
          WHERE tenant_id = ${tenant} AND created_at >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'`
        return {
          byHolder: rows.map((row) => ({ key: row.key, usd: Number(row.usd) })),
          today: Number(today[0]?.usd ?? 0)
        }
      })

    const count = Effect.map(
      sql<{ readonly n: string | number }>`SELECT count(*) AS n FROM vibes_proxy_turns`,
      (rows) => Number(rows[0]?.n ?? 0)
    )

    return ConversationStore.of({ insert, list, get, cost, request, prune, spent, count })
  })
)
