/**
 * Records proxied requests as conversation turns, off the request path. The proxy hands over a
 * capture (the request body it read anyway, and the response chunks it passed on, kept by
 * reference) once the answer has ended, and goes on; a single fiber takes captures from a queue
 * bounded in count and in bytes, redacts the secrets out of both bodies, assembles the answer,
 * compresses the bodies (gzip, on libuv's thread pool), stores the turn threaded into its
 * conversation and writes a `proxy.turn` event without the bodies. A capture that does not fit in
 * the queue is dropped and counted, never waited for.
 */
import * as zlib from "node:zlib"
import { Chunk, Duration, Effect, Fiber, Metric, Queue, type Scope } from "effect"
import { newEvent, type NewEvent } from "../../rpc/Events.js"
import { TurnUsage, type TurnApi } from "../../rpc/Conversations.js"
import * as ChildEnv from "../../infra/sandbox/ChildEnv.js"
import { uuidv7 } from "../../infra/eventlog/EventLog.js"
import { toStorable, truncate } from "../../rpc/Text.js"
import type * as ConversationStore from "./ConversationStore.js"
import * as Turns from "./Turns.js"

/** One proxied request and its answer, as the proxy hands it over. */
export interface Capture {
  readonly api: TurnApi
  readonly provider: string
  readonly path: string
  readonly status: number
  readonly errorKind: string | null
  readonly streamed: boolean
  readonly client: "admin" | "session" | "job"
  readonly sessionId: string | null
  readonly jobId: string | null
  readonly latencyMs: number
  readonly ttfbMs: number | null
  readonly model: string | null
  readonly costUsd: number | null
  readonly request: Buffer
  /** The chunks the client was sent, up to the capture limit. */
  readonly response: ReadonlyArray<Buffer>
  /** Bytes the client was sent in all. */
  readonly responseBytes: number
  readonly responseTruncated: boolean
}

/** How the recorder redacts and bounds. */
export interface RecorderSettings {
  readonly nodeId: string
  /** Secret values replaced by `[redacted]` wherever they appear (keys, tokens). */
  readonly secrets: ReadonlyArray<string>
  /** Patterns replaced too (vibes' own proxy tokens are always among them). */
  readonly patterns: ReadonlyArray<RegExp>
  /** Captures waiting at most, and their bytes at most. */
  readonly maxQueued: number
  readonly maxQueuedBytes: number
  /** Bodies larger than this are stored but not parsed (no thread, no assembled answer). */
  readonly maxParseBytes: number
}

/** The recorder: `submit` never blocks and never fails. */
export interface Recorder {
  /** Queues a capture; false when it was dropped (queue full). */
  readonly submit: (capture: Capture) => boolean
  /** Captures dropped so far. */
  readonly dropped: () => number
}

/** vibes' own session and job proxy tokens (`vibes-session.<id>.<43-character MAC>`). */
export const tokenPattern = /vibes-(?:session|job)\.[^\s"'\\]{1,300}?\.[A-Za-z0-9_-]{43}/g

const droppedTotal = Metric.counter("vibes_proxy_turns_dropped_total", {
  description: "Proxy turns not recorded because the recording queue was full",
  incremental: true
})
const recordedTotal = Metric.counter("vibes_proxy_turns_recorded_total", {
  description: "Proxy turns recorded as conversation turns",
  incremental: true
})

/** The most turns stored by one statement. */
const batchSize = 64

/** How long the first turn of a batch waits for others. */
const lingerMs = Duration.millis(20)

/** Bodies smaller than this are stored as they are. */
const compressFrom = 1024

const gzip = (bytes: Buffer): Effect.Effect<Buffer> =>
  Effect.async<Buffer>((resume) =>
    zlib.gzip(bytes, { level: 6 }, (error, out) =>
      resume(error === null ? Effect.succeed(out) : Effect.die(error))
    )
  )

const body = (
  kind: ConversationStore.Body["kind"],
  bytes: Buffer,
  truncated: boolean
): Effect.Effect<ConversationStore.Body> =>
  bytes.length < compressFrom
    ? Effect.succeed({ kind, encoding: "identity", size: bytes.length, truncated, body: bytes })
    : Effect.map(gzip(bytes), (compressed) => ({
        kind,
        encoding: "gzip" as const,
        size: bytes.length,
        truncated,
        body: compressed
      }))

/** `text` without the secrets and what matches the patterns. */
export const redactor = (settings: Pick<RecorderSettings, "secrets" | "patterns">) => {
  const secrets = ChildEnv.secrets({ values: settings.secrets })
  return (text: string): string => {
    let out = ChildEnv.redact(secrets, text)
    for (const pattern of settings.patterns) out = out.replace(pattern, ChildEnv.placeholder)
    return out
  }
}

const parse = (text: string, limit: number): unknown => {
  if (text.length > limit) return null
  try {
    return JSON.parse(text)
  } catch {
    return null
  }
}

/** Starts the recorder for the life of the scope; at its end, what is queued is stored (for up to 10 s). */
export const make = (
  settings: RecorderSettings,
  store: ConversationStore.ConversationStore["Type"],
  emit: (event: NewEvent) => void
): Effect.Effect<Recorder, never, Scope.Scope> =>
  Effect.gen(function* () {
    const queue = yield* Queue.unbounded<Capture>()
    const redact = redactor(settings)
    let queuedBytes = 0
    let dropped = 0

    const sizeOf = (capture: Capture) =>
      capture.request.length + capture.response.reduce((sum, chunk) => sum + chunk.length, 0)

    /** A capture made into a turn ready to store: redacted, assembled, compressed. */
    const prepare = (capture: Capture) =>
      Effect.gen(function* () {
        const requestText = redact(capture.request.toString("utf8"))
        const responseText = redact(Buffer.concat(capture.response).toString("utf8"))
        const view = Turns.readRequest(capture.api, parse(requestText, settings.maxParseBytes))
        const assembled =
          responseText.length > settings.maxParseBytes
            ? null
            : Turns.assemble(capture.api, responseText, capture.streamed)
        const chain = view === null ? [] : Turns.chain(view)
        const lastMessage = view === null ? [] : Turns.messages(view, Math.max(0, view.items.length - 1))
        const firstMessage = view === null ? [] : Turns.messages(view).slice(0, 1)
        const outputText = assembled === null ? "" : Turns.blocksText(assembled.blocks)
        const inputText = lastMessage.map((message) => Turns.blocksText(message.blocks)).join("\n")
        const id = uuidv7()
        const usage = new TurnUsage({
          inputTokens: assembled?.inputTokens ?? null,
          outputTokens: assembled?.outputTokens ?? null,
          cacheReadTokens: assembled?.cacheReadTokens ?? null,
          cacheWriteTokens: assembled?.cacheWriteTokens ?? null
        })
        const bodies = yield* Effect.all(
          [
            body("request", Buffer.from(requestText, "utf8"), false),
            body("response", Buffer.from(responseText, "utf8"), capture.responseTruncated),
            body("assembled", Buffer.from(JSON.stringify(assembled ?? { blocks: [] }), "utf8"), false)
          ],
          { concurrency: 3 }
        )
        const model = assembled?.model ?? view?.model ?? capture.model
        const turn: ConversationStore.NewTurn = {
          id,
          provider: capture.provider,
          api: capture.api,
          model: model === null ? null : truncate(toStorable(model), 200),
          path: truncate(toStorable(capture.path), 2048),
          status: capture.status,
          errorKind: capture.errorKind,
          streamed: capture.streamed,
          client: capture.client,
          sessionId: capture.sessionId,
          jobId: capture.jobId,
          chain,
          previousResponseId: view?.previousResponseId ?? null,
          responseId: assembled?.id ?? null,
          stopReason: assembled?.stopReason ?? null,
          toolCalls: assembled?.blocks.filter((block) => block._tag === "tool_call").length ?? 0,
          usage,
          costUsd: capture.costUsd,
          latencyMs: capture.latencyMs,
          ttfbMs: capture.ttfbMs,
          requestBytes: capture.request.length,
          responseBytes: capture.responseBytes,
          preview: toStorable(truncate(outputText !== "" ? outputText : (assembled?.error ?? ""), 300)),
          title: toStorable(
            truncate(firstMessage.map((message) => Turns.blocksText(message.blocks)).join(" "), 120)
          ),
          // A tsvector holds at most 1 MB: the search covers each turn's first 200,000 characters.
          searchText: toStorable(truncate(`${inputText}\n${outputText}`, 200_000)),
          bodies
        }
        return turn
      })

    /** The `proxy.turn` event of a stored turn. */
    const announce = (
      capture: Capture,
      turn: ConversationStore.NewTurn,
      threaded: ConversationStore.Threaded
    ) => {
      const usage = turn.usage
      const id = turn.id
      emit(
        newEvent(
          "proxy.turn",
          {
            conversationId: threaded.conversationId,
            turnId: id,
            seq: threaded.seq,
            parentTurnId: threaded.parentTurnId,
            forked: threaded.forked,
            provider: truncate(toStorable(capture.provider), 100),
            api: capture.api,
            model: turn.model,
            status: capture.status,
            stopReason: turn.stopReason === null ? null : truncate(toStorable(turn.stopReason), 100),
            toolCalls: turn.toolCalls,
            inputTokens: usage.inputTokens,
            outputTokens: usage.outputTokens,
            cacheReadTokens: usage.cacheReadTokens,
            cacheWriteTokens: usage.cacheWriteTokens,
            costUsd: capture.costUsd,
            latencyMillis: Math.round(capture.latencyMs * 1000) / 1000
          },
          {
            source: { nodeId: settings.nodeId, component: "proxy" },
            tenantId: "default",
            ...(capture.sessionId !== null ? { sessionId: capture.sessionId } : {}),
            ...(capture.jobId !== null ? { jobId: capture.jobId } : {})
          }
        )
      )
    }

    /** Stores captures as turns, in order, with one statement; a turn that cannot be made is skipped. */
    const record = (captures: ReadonlyArray<Capture>) =>
      Effect.gen(function* () {
        const prepared: Array<readonly [Capture, ConversationStore.NewTurn]> = []
        for (const capture of captures) {
          const turn = yield* prepare(capture).pipe(
            Effect.catchAllCause((cause) =>
              Effect.as(
                Effect.logWarning("could not make a proxy turn").pipe(
                  Effect.annotateLogs("cause", String(cause))
                ),
                null
              )
            )
          )
          if (turn !== null) prepared.push([capture, turn])
        }
        if (prepared.length === 0) return
        const threaded = yield* store.insert(prepared.map(([, turn]) => turn))
        recordedTotal.unsafeUpdate(prepared.length, [])
        prepared.forEach(([capture, turn], i) => {
          const where = threaded[i]
          if (where !== undefined) announce(capture, turn, where)
        })
      }).pipe(
        Effect.catchAllCause((cause) =>
          Effect.logWarning(`could not record ${captures.length} proxy turns`).pipe(
            Effect.annotateLogs("cause", String(cause))
          )
        )
      )

    // The first capture waits `lingerMs` for others: one statement stores them all, and the
    // recorder's work leaves the moments right after an answer to the requests that follow.
    const batch = Effect.gen(function* () {
      const first = yield* Queue.take(queue)
      yield* Effect.sleep(lingerMs)
      const rest = yield* Queue.takeUpTo(queue, batchSize - 1)
      return [first, ...Chunk.toReadonlyArray(rest)]
    })
    const take = Effect.flatMap(batch, (captures) => {
      return Effect.ensuring(
        record(captures),
        Effect.sync(() => {
          for (const capture of captures) queuedBytes -= sizeOf(capture)
        })
      )
    })
    const consumer = yield* Effect.forkDaemon(Effect.forever(take))
    yield* Effect.addFinalizer(() =>
      Effect.gen(function* () {
        yield* Fiber.interrupt(consumer)
        const rest = yield* Queue.takeAll(queue)
        yield* record(Chunk.toReadonlyArray(rest)).pipe(Effect.timeout(Duration.seconds(10)), Effect.ignore)
      })
    )

    return {
      submit: (capture) => {
        const size = sizeOf(capture)
        const waiting = queue.unsafeSize()
        const count = waiting._tag === "Some" ? waiting.value : 0
        if (count >= settings.maxQueued || queuedBytes + size > settings.maxQueuedBytes) {
          dropped += 1
          droppedTotal.unsafeUpdate(1, [])
          return false
        }
        queuedBytes += size
        return queue.unsafeOffer(capture)
      },
      dropped: () => dropped
    }
  })
