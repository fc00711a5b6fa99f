/**
 * The NATS JetStream event log.
 *
 * **Offsets are stream sequences.** One stream (`stream`, subjects `<prefix>.>`) holds the log;
 * JetStream numbers what it stores 1, 2, 3, … without gaps, and a deleted or purged message
 * leaves its number unused rather than renumbering: offsets handed out stay valid after
 * retention, and new events carry on from the last sequence ever stored.
 *
 * **Subjects** are `<prefix>.<tenant>.<area>.<verb>[.<more>].<session>.<job>`: the event type's
 * own segments between the tenant and the ids (each id a subject token, `~` when absent). A
 * type glob maps exactly onto subject wildcards (`session.*` → `session.*.*.*`, `job.**` →
 * `job.>`), so a filter with one glob, a tenant or a session is applied by the server; what a
 * subject cannot say (several globs on a 2.9 server, ids after `**`) is applied in process by
 * `compileFilter`, which always has the last word.
 *
 * **Appends** go through a bounded queue to one writer fiber, which publishes everything waiting
 * in order on one connection (pipelined: all acks are awaited together), so an append's events
 * get consecutive offsets in batch order when this node is the only writer. Every message
 * carries `Nats-Msg-Id` = the event's id: when acks are lost (a dropped connection, a killed
 * server), the writer publishes the same batch again and JetStream answers for the ones it
 * already stored with their first sequence instead of storing them twice. JetStream before 2.12
 * has no atomic batch publish: a batch cut off by a crash may be stored in part until the retry
 * stores the rest; a batch whose retries all fail leaves that part behind.
 *
 * **Messages** are `[format][u32 length][JSON envelope][raw bytes]`: a format byte, then the
 * event's metadata and JSON data as one JSON array, then (format 2) the event's raw binary payload
 * (terminal output) as it is, with no JSON escaping or base64.
 *
 * **Reads and subscriptions** run ordered consumers (ephemeral, in memory, flow-controlled)
 * from their start offset, each deleted when its reader is done. A server restart loses them:
 * on a reconnect or missed heartbeats the reader starts a new one after the last message it
 * delivered, so subscribers see every offset once across failures. `readBackward` reads windows
 * of growing size back from its upper bound (JetStream has no backward consumer).
 *
 * **Consumer offsets** live in a second stream (`<stream>_OFFSETS`, one message kept per
 * consumer subject, read with direct get). **Retention** purges by subject below a sequence:
 * age, size and per-session snapshot compaction are each "everything matching before sequence
 * N", bounded by the slowest named consumer unless the policy ignores consumers. Age is judged
 * by the time the server stored a message (the first sequence stored at or after the cutoff),
 * which is the event's `ts` up to the writer's clock skew.
 */
import * as crypto from "node:crypto"
import { connect, createInbox, headers, type Msg, type NatsConnection } from "@nats-io/transport-node"
import {
  type Consumer,
  type ConsumerMessages,
  DeliverPolicy,
  DiscardPolicy,
  jetstream,
  jetstreamManager,
  type JetStreamClient,
  type JetStreamManager,
  type JsMsg,
  RetentionPolicy as JsRetention,
  StorageType
} from "@nats-io/jetstream"
import {
  Cause,
  Chunk,
  DateTime,
  Deferred,
  Duration,
  Effect,
  Either,
  Layer,
  Option,
  Queue,
  Redacted,
  Schedule,
  Schema,
  Stream
} from "effect"
import {
  compileFilter,
  compileGlob,
  type EventFilter,
  LogStats,
  NewEvent,
  Offset,
  StoredEvent,
  newEvent
} from "../../rpc/Events.js"
import {
  checkCommit,
  checkConsumer,
  type ConsumerOffset,
  EventLog,
  EventLogError,
  EventRejected,
  type From,
  type RetentionPolicy,
  type RetentionReport,
  tally
} from "./EventLog.js"
import { type Row, toRow } from "./PgEventLog.js"

/** Where the log lives and how its writer is tuned. */
export interface Options {
  /** NATS server URL(s), comma-separated: `nats://127.0.0.1:4222`. */
  readonly url: string
  /** The token the server asks for, if any. */
  readonly token?: Redacted.Redacted<string>
  /** The stream holding the log (default `VIBES`). */
  readonly stream?: string
  /** The first subject token of every event (default `vibes`). */
  readonly prefix?: string
  /** Replicas of the streams in a NATS cluster (default 1). */
  readonly replicas?: number
  /** Appends (batches) that may wait for the writer before callers block. */
  readonly queueCapacity?: number
  /** Most events published in one round of the writer. */
  readonly maxBatchEvents?: number
  /**
   * Batches whose acks the writer awaits at once (default 4). Each caller waits for its own acks,
   * so a producer's appends still land in its order.
   */
  readonly maxInFlight?: number
  /** How long the writer keeps retrying a batch whose acks do not come before it fails it. */
  readonly writeTimeout?: Duration.DurationInput
  /** How long one publish waits for its ack. */
  readonly ackTimeoutMillis?: number
  /** How long readers try to start a consumer again while the server is away before they fail. */
  readonly readRetry?: Duration.DurationInput
  /** Messages a reader asks the server for at a time. */
  readonly pageSize?: number
  /** The node id written as the source of the log's own events (`system.alert`). */
  readonly nodeId?: string
}

/** Longest escaped id kept as it is in a subject; longer ones are hashed (NATS limits a control line to 4 kB). */
const maxTokenLength = 96

/**
 * The subject token of an id: letters, digits, `_` and `-` as they are, any other byte `~XX`;
 * `~` when absent; `~~` and a SHA-256 prefix when the escaped id would be too long.
 */
export const subjectToken = (value: string | null | undefined): string => {
  if (value === null || value === undefined) return "~"
  if (value.length <= maxTokenLength && /^[A-Za-z0-9_-]+$/.test(value)) return value
  let out = ""
  for (const char of value) {
    if (/^[A-Za-z0-9_-]$/.test(char)) out += char
    else
      for (const byte of Buffer.from(char, "utf8"))
        out += `~${byte.toString(16).toUpperCase().padStart(2, "0")}`
  }
  return out.length <= maxTokenLength
    ? out
    : `~~${crypto.createHash("sha256").update(value, "utf8").digest("hex").slice(0, 32)}`
}

/** The value a `subjectToken` stands for (a hashed token stays as it is). */
export const tokenValue = (token: string): string => {
  if (token.startsWith("~~") || !/^(?:[A-Za-z0-9_-]|~[0-9A-F]{2})+$/.test(token)) return token
  try {
    return decodeURIComponent(token.replace(/~/g, "%"))
  } catch {
    return token
  }
}

/** The subject of an event. */
export const subjectOf = (
  prefix: string,
  event: {
    readonly tenantId: string
    readonly type: string
    readonly sessionId: string | null
    readonly jobId: string | null
  }
) =>
  `${prefix}.${subjectToken(event.tenantId)}.${event.type}.${subjectToken(event.sessionId)}.${subjectToken(event.jobId)}`

/** A glob (already checked by `compileGlob`) as subject tokens; `open` when it ends in `>`. */
const globSubject = (glob: string): { readonly tokens: string; readonly open: boolean } => {
  const segments = glob.split(".")
  const open = segments[segments.length - 1] === "**"
  return { tokens: segments.map((s) => (s === "**" ? ">" : s)).join("."), open }
}

/** The narrowest subject that holds every event `filter` can match. */
export const filterSubject = (
  prefix: string,
  filter: {
    readonly types: ReadonlyArray<string>
    readonly tenantId?: string | undefined
    readonly sessionId?: string | undefined
    readonly jobId?: string | undefined
  }
): string => {
  const tenant = filter.tenantId !== undefined ? subjectToken(filter.tenantId) : "*"
  const [glob] = filter.types
  if (filter.types.length !== 1 || glob === undefined) return `${prefix}.${tenant}.>`
  const type = globSubject(glob)
  if (type.open) return `${prefix}.${tenant}.${type.tokens}`
  const session = filter.sessionId !== undefined ? subjectToken(filter.sessionId) : "*"
  const job = filter.jobId !== undefined ? subjectToken(filter.jobId) : "*"
  return `${prefix}.${tenant}.${type.tokens}.${session}.${job}`
}

/** Format 1: the envelope alone; format 2: the envelope, then the event's raw bytes. */
const format = 1
const formatWithBytes = 2

/**
 * `[format][u32 length][JSON envelope][raw bytes]`; the envelope is metadata then the data's JSON,
 * and the raw bytes (format 2 only) are the rest of the message, as they are.
 */
export const encode = (row: Row): Uint8Array => {
  const meta = JSON.stringify([
    row.id,
    row.type,
    row.ts.getTime(),
    row.sourceNode,
    row.sourceComponent,
    row.sessionId,
    row.jobId,
    row.tenantId,
    row.severity,
    row.correlationId
  ])
  const envelope = `${meta.slice(0, -1)},${row.data}]`
  const length = Buffer.byteLength(envelope, "utf8")
  const out = Buffer.allocUnsafe(5 + length + (row.bytes?.length ?? 0))
  out[0] = row.bytes === null ? format : formatWithBytes
  out.writeUInt32BE(length, 1)
  out.write(envelope, 5, "utf8")
  if (row.bytes !== null) out.set(row.bytes, 5 + length)
  return out
}

type Envelope = [
  id: string,
  type: string,
  ts: number,
  node: string,
  component: string,
  sessionId: string | null,
  jobId: string | null,
  tenantId: string,
  severity: StoredEvent["severity"],
  correlationId: string | null,
  data: unknown
]

const severities: ReadonlySet<unknown> = new Set(["info", "warn", "error", "critical"])
const isText = (value: unknown): value is string => typeof value === "string"
const isTextOrNull = (value: unknown): value is string | null => value === null || typeof value === "string"

const isEnvelope = (value: unknown): value is Envelope =>
  Array.isArray(value) &&
  value.length === 11 &&
  isText(value[0]) &&
  isText(value[1]) &&
  typeof value[2] === "number" &&
  isText(value[3]) &&
  isText(value[4]) &&
  isTextOrNull(value[5]) &&
  isTextOrNull(value[6]) &&
  isText(value[7]) &&
  severities.has(value[8]) &&
  isTextOrNull(value[9])

/** The stored event in message `seq`, or why it is not one vibes wrote. */
export const decode = (seq: number, body: Uint8Array): Either.Either<StoredEvent, EventLogError> => {
  const bad = (why: string) =>
    Either.left(
      new EventLogError({ message: `message ${seq} of the event stream is not a vibes event: ${why}` })
    )
  const buffer = Buffer.from(body.buffer, body.byteOffset, body.byteLength)
  if (buffer.length < 5 || (buffer[0] !== format && buffer[0] !== formatWithBytes))
    return bad("unknown format")
  const length = buffer.readUInt32BE(1)
  if (5 + length > buffer.length) return bad("truncated")
  let parsed: unknown
  try {
    parsed = JSON.parse(buffer.toString("utf8", 5, 5 + length))
  } catch (cause) {
    return bad(String(cause))
  }
  if (!isEnvelope(parsed)) return bad("malformed envelope")
  const [id, type, ts, nodeId, component, sessionId, jobId, tenantId, severity, correlationId, data] = parsed
  // Checked by toRow on the way in; validating again on the way out would cost more than the read.
  return Either.right(
    StoredEvent.make(
      {
        offset: Offset.make(seq, true),
        id,
        type,
        ts: DateTime.unsafeMake(ts),
        source: { nodeId, component },
        ...(sessionId !== null ? { sessionId } : {}),
        ...(jobId !== null ? { jobId } : {}),
        tenantId,
        severity,
        ...(correlationId !== null ? { correlationId } : {}),
        data,
        ...(buffer[0] === formatWithBytes ? { bytes: buffer.subarray(5 + length) } : {})
      },
      true
    )
  )
}

interface Outgoing {
  readonly subject: string
  readonly body: Uint8Array
  readonly id: string
}

/** Why an append could not be written: for now (`EventLogError`), or for good (`EventRejected`). */
type WriteError = EventLogError | EventRejected

interface Pending {
  readonly messages: ReadonlyArray<Outgoing>
  /** The event type of a single-event append, for errors. */
  readonly type: string
  readonly done: Deferred.Deferred<ReadonlyArray<Offset>, WriteError>
}

/** JetStream's error code for a message larger than the stream's `max_msg_size`. */
const messageTooLarge = 10054

/** A publish's answer: the sequence the message got, or JetStream's refusal. */
type Ack =
  | { readonly _tag: "Stored"; readonly seq: number }
  | { readonly _tag: "Refused"; readonly code: number; readonly description: string }

const PubAckJson = Schema.parseJson(
  Schema.Struct({
    seq: Schema.optional(Schema.Number),
    error: Schema.optional(
      Schema.Struct({
        code: Schema.optional(Schema.Number),
        err_code: Schema.optional(Schema.Number),
        description: Schema.optional(Schema.String)
      })
    )
  })
)
const decodePubAck = Schema.decodeUnknownEither(PubAckJson)
const utf8 = new TextDecoder()

/** Reads a publish's answer (`{"stream":…,"seq":…}` or `{"error":{…}}`). */
export const parseAck = (data: Uint8Array): Ack => {
  const decoded = decodePubAck(utf8.decode(data))
  if (Either.isLeft(decoded))
    return { _tag: "Refused", code: 0, description: "an answer that is not a JetStream ack" }
  const { seq, error } = decoded.right
  if (error !== undefined || seq === undefined) {
    return {
      _tag: "Refused",
      code: error?.err_code ?? error?.code ?? 0,
      description: error?.description ?? "an ack without a sequence"
    }
  }
  return { _tag: "Stored", seq }
}

const isPublishFailure = (
  value: unknown
): value is { readonly refusal: { readonly code: number } | undefined; readonly message: string } =>
  typeof value === "object" && value !== null && "refusal" in value && "message" in value

const messageOf = (cause: unknown): string => (cause instanceof Error ? cause.message : String(cause))

/** What a race against the next buffered message gives when there is none. */
const emptyBuffer: unique symbol = Symbol("emptyBuffer")

/** How long a quiet scan waits before it asks the server whether anything is left to read. */
const idleCheckMillis = 1000

/** Connects and opens (or creates) the log's streams; the scope owns the connection and the writer. */
export const make = (options: Options) =>
  Effect.gen(function* () {
    const stream = options.stream ?? "VIBES"
    const prefix = options.prefix ?? "vibes"
    const offsetsStream = `${stream}_OFFSETS`
    const offsetsPrefix = `${prefix}_offsets`
    const pageSize = options.pageSize ?? 2048
    const maxBatchEvents = options.maxBatchEvents ?? 5000
    const ackTimeout = options.ackTimeoutMillis ?? 5000
    const retryMillis = Duration.toMillis(options.readRetry ?? "60 seconds")
    const failure = (what: string) => (cause: unknown) =>
      new EventLogError({ message: `${what} (JetStream at ${options.url}): ${messageOf(cause)}` })

    const nc: NatsConnection = yield* Effect.acquireRelease(
      Effect.tryPromise({
        try: () =>
          connect({
            servers: options.url.split(","),
            ...(options.token !== undefined ? { token: Redacted.value(options.token) } : {}),
            name: `vibes-eventlog-${stream}`,
            maxReconnectAttempts: -1,
            reconnectTimeWait: 250
          }),
        catch: failure("cannot connect to NATS")
      }),
      (connection) => Effect.promise(() => connection.close().catch(() => undefined))
    )
    const jsm: JetStreamManager = yield* Effect.tryPromise({
      try: () => jetstreamManager(nc),
      catch: failure("JetStream is not available")
    })
    const js: JetStreamClient = jetstream(nc, { timeout: ackTimeout })
    const replicas = options.replicas ?? 1

    const ensureStream = (name: string, subjects: string, perSubject: number) =>
      Effect.tryPromise({
        try: async () => {
          const exists = await jsm.streams.info(name).then(
            () => true,
            () => false
          )
          if (exists) return
          await jsm.streams.add({
            name,
            subjects: [subjects],
            storage: StorageType.File,
            retention: JsRetention.Limits,
            discard: DiscardPolicy.Old,
            allow_direct: true,
            num_replicas: replicas,
            max_msgs_per_subject: perSubject,
            duplicate_window: 120_000_000_000
          })
        },
        catch: failure(`cannot open the event stream ${name}`)
      })
    yield* ensureStream(stream, `${prefix}.>`, -1)
    yield* ensureStream(offsetsStream, `${offsetsPrefix}.>`, 1)

    const streamState = Effect.tryPromise({
      try: () => jsm.streams.info(stream).then((info) => info.state),
      catch: failure("cannot read the event stream's state")
    })
    const head = Effect.map(streamState, (state) => state.last_seq)

    // Ordered consumers do not notice a server that restarted (and lost them) until heartbeats are
    // missed; a reconnect makes every reader start a new consumer after the last message it had.
    const onReconnect = new Set<() => void>()
    yield* Effect.forkScoped(
      Effect.promise(async () => {
        for await (const status of nc.status()) {
          if (status.type === "reconnect") for (const restart of onReconnect) restart()
        }
      })
    )

    /**
     * The messages of stream `name` matching `subject` from sequence `from` on, in order, each
     * once: across reconnects and server restarts (consumers are started again after the last
     * message delivered, for up to `retryMillis`). With `untilCaughtUp`, it ends once no matching
     * message is left; otherwise it follows new ones until `signal` aborts.
     */
    async function* follow(
      name: string,
      subject: string,
      from: number,
      options: { readonly untilCaughtUp: boolean; readonly signal?: AbortSignal }
    ): AsyncGenerator<JsMsg> {
      let next = Math.max(1, from)
      let failingSince: number | undefined
      let attempt = 0
      const aborted = () => options.signal?.aborted === true
      while (!aborted()) {
        let consumer: Consumer
        try {
          consumer = await js.consumers.get(name, {
            filter_subjects: subject,
            deliver_policy: DeliverPolicy.StartSequence,
            opt_start_seq: next
          })
          failingSince = undefined
          attempt = 0
        } catch (cause) {
          failingSince ??= Date.now()
          if (Date.now() - failingSince > retryMillis) throw cause
          await new Promise((wake) => setTimeout(wake, Math.min(1000, 50 * 2 ** attempt++)))
          continue
        }
        let messages: ConsumerMessages | undefined
        let caughtUp = false
        let watchdog: ReturnType<typeof setInterval> | undefined
        const interrupt = () => messages?.stop()
        onReconnect.add(interrupt)
        options.signal?.addEventListener("abort", interrupt)
        try {
          if (options.untilCaughtUp && (await consumer.info(true)).num_pending === 0) return
          messages = await consumer.consume({ max_messages: pageSize })
          const current = messages
          // Aborted while the consumer was being made: the listener came too late to hear it.
          if (aborted()) return
          void (async () => {
            for await (const status of current.status()) if (status.type === "heartbeats_missed") interrupt()
          })().catch(() => undefined)
          if (options.untilCaughtUp) {
            // Messages deleted after the consumer counted them never come: ask once the scan is quiet.
            let seen = next
            watchdog = setInterval(() => {
              if (seen !== next) {
                seen = next
                return
              }
              consumer.info().then((info) => {
                if (info.num_pending === 0 && info.delivered.stream_seq < next) {
                  caughtUp = true
                  current.stop()
                }
              }, interrupt)
            }, idleCheckMillis)
          }
          for await (const message of messages) {
            if (message.seq < next) continue
            next = message.seq + 1
            yield message
            if (options.untilCaughtUp && message.info.pending === 0) return
          }
          if (caughtUp) return
        } finally {
          onReconnect.delete(interrupt)
          options.signal?.removeEventListener("abort", interrupt)
          if (watchdog !== undefined) clearInterval(watchdog)
          messages?.stop()
          consumer.delete().catch(() => false)
        }
        // Ended otherwise (interrupted, or the consumer went away): start again after the last one.
      }
    }

    /** Calls `each` with the matching messages from `from` on while it returns true, until none is left. */
    const scan = (
      name: string,
      subject: string,
      from: number,
      each: (seq: number, data: Uint8Array, subject: string) => boolean
    ): Effect.Effect<void, EventLogError> =>
      Effect.tryPromise({
        try: async (signal) => {
          for await (const message of follow(name, subject, from, { untilCaughtUp: true, signal })) {
            if (!each(message.seq, message.data, message.subject)) return
          }
        },
        catch: failure("cannot read the event stream")
      })

    /** Scans the log, decoding; stops at the first message that is not an event. */
    const scanEvents = (subject: string, from: number, each: (event: StoredEvent) => boolean) =>
      Effect.suspend(() => {
        let broken: EventLogError | undefined
        return scan(stream, subject, from, (seq, data) => {
          const decoded = decode(seq, data)
          if (Either.isLeft(decoded)) {
            broken = decoded.left
            return false
          }
          return each(decoded.right)
        }).pipe(
          Effect.zipRight(Effect.suspend(() => (broken !== undefined ? Effect.fail(broken) : Effect.void)))
        )
      })

    // The writer ------------------------------------------------------------------------------

    const queue = yield* Queue.bounded<Pending>(options.queueCapacity ?? 1024)
    const inFlight = yield* Effect.makeSemaphore(options.maxInFlight ?? 4)
    const writeRetry = Schedule.exponential("100 millis").pipe(
      Schedule.union(Schedule.spaced("1 second")),
      Schedule.upTo(options.writeTimeout ?? "30 seconds")
    )

    /** Why a publish failed: the server's refusal (its answer, with JetStream's error code), or no answer at all. */
    interface PublishFailure {
      readonly refusal: { readonly code: number } | undefined
      readonly message: string
    }

    const publishFailure = (refusal: PublishFailure["refusal"], why: string): PublishFailure => ({
      refusal,
      message: `cannot append to the event stream (JetStream at ${options.url}): ${why}`
    })

    /** The stream sequences a batch's messages got, in order, or why not. */
    interface Acks {
      readonly seqs: Array<number>
      remaining: number
      readonly resolve: (seqs: ReadonlyArray<number>) => void
      readonly reject: (failure: PublishFailure) => void
      readonly timer: ReturnType<typeof setTimeout>
    }

    // A publish is a request to the stream's subject whose answer (the ack) comes to a reply
    // subject. All of them share one reply subscription, with a token a message and one timer a
    // batch: the client's `js.publish` makes a subscription entry, a timer and two stack-capturing
    // errors for every message, which was most of this writer's CPU.
    const replyPrefix = createInbox()
    const awaiting = new Map<string, { readonly acks: Acks; readonly index: number }>()
    let nextToken = 0
    const settle = (acks: Acks, failure?: PublishFailure) => {
      clearTimeout(acks.timer)
      if (failure === undefined) acks.resolve(acks.seqs)
      else acks.reject(failure)
    }
    const onAck = (msg: Msg) => {
      const token = msg.subject.slice(replyPrefix.length + 1)
      const entry = awaiting.get(token)
      if (entry === undefined) return
      awaiting.delete(token)
      const { acks, index } = entry
      if (acks.remaining <= 0) return
      // A status instead of an ack (503: no stream listens on the subject): no answer, try again.
      if (msg.headers?.hasError === true) {
        acks.remaining = 0
        return settle(acks, publishFailure(undefined, `${msg.headers.code} ${msg.headers.description}`))
      }
      const answer = parseAck(msg.data)
      if (answer._tag === "Refused") {
        acks.remaining = 0
        return settle(acks, publishFailure({ code: answer.code }, answer.description))
      }
      acks.seqs[index] = answer.seq
      if (--acks.remaining === 0) settle(acks)
    }
    const ackSubscription = nc.subscribe(`${replyPrefix}.*`, {
      callback: (error, msg) => {
        if (error === null) onAck(msg)
      }
    })
    yield* Effect.addFinalizer(() => Effect.sync(() => ackSubscription.unsubscribe()))

    // Published in order without waiting in between, so JetStream stores them in this order; a
    // duplicate id (a batch sent again after its answer was lost) is stored once.
    const startPublish = (messages: ReadonlyArray<Outgoing>): Promise<ReadonlyArray<number>> => {
      const acks = new Promise<ReadonlyArray<number>>((resolve, reject) => {
        const tokens: Array<string> = []
        const batch: Acks = {
          seqs: new Array<number>(messages.length),
          remaining: messages.length,
          resolve,
          reject,
          timer: setTimeout(() => {
            for (const token of tokens) awaiting.delete(token)
            if (batch.remaining > 0) {
              batch.remaining = 0
              settle(batch, publishFailure(undefined, `no answer within ${ackTimeout} ms`))
            }
          }, ackTimeout)
        }
        if (messages.length === 0) return settle(batch)
        try {
          messages.forEach((message, index) => {
            const token = (nextToken++).toString(36)
            tokens.push(token)
            awaiting.set(token, { acks: batch, index })
            const h = headers()
            h.set("Nats-Msg-Id", message.id)
            nc.publish(message.subject, message.body, { reply: `${replyPrefix}.${token}`, headers: h })
          })
        } catch (cause) {
          for (const token of tokens) awaiting.delete(token)
          batch.remaining = 0
          settle(batch, publishFailure(undefined, messageOf(cause)))
        }
      })
      // Whoever awaits the acks handles a failure; this keeps an early one from counting as unhandled.
      acks.catch(() => undefined)
      return acks
    }

    const awaitAcks = (acks: Promise<ReadonlyArray<number>>) =>
      Effect.tryPromise({
        try: () => acks,
        catch: (cause) => (isPublishFailure(cause) ? cause : publishFailure(undefined, messageOf(cause)))
      })

    // A lost answer is retried (the ids make it safe); the server's refusal would only come again.
    const publishRetrying = (messages: ReadonlyArray<Outgoing>, started?: Promise<ReadonlyArray<number>>) => {
      const again = Effect.suspend(() => awaitAcks(startPublish(messages))).pipe(
        Effect.tapError((failed) =>
          failed.refusal === undefined
            ? Effect.logWarning(`event log write failed, retrying: ${failed.message}`)
            : Effect.void
        ),
        Effect.retry({ schedule: writeRetry, while: (failed) => failed.refusal === undefined })
      )
      return started === undefined
        ? again
        : awaitAcks(started).pipe(
            Effect.catchAll((failed) =>
              failed.refusal === undefined
                ? Effect.logWarning(`event log write failed, retrying: ${failed.message}`).pipe(
                    Effect.zipRight(again)
                  )
                : Effect.fail(failed)
            )
          )
    }

    /** What a failed pending append is told: refused for good when its message is too large for the stream. */
    const errorOf = (pending: Pending, failed: PublishFailure): WriteError => {
      if (failed.refusal?.code === messageTooLarge) {
        const type = pending.messages.length === 1 ? pending.type : `${pending.messages.length} events`
        return new EventRejected({ type, message: `JetStream refused ${type}: ${failed.message}` })
      }
      return new EventLogError({ message: failed.message })
    }

    // Alerts about failed writes, published ahead of the next batch that goes through.
    let alerts: Array<Outgoing> = []

    const alertOf = (message: string): Outgoing => {
      const row = Either.getOrThrow(
        toRow(
          newEvent(
            "system.alert",
            { component: "eventlog", message: message.slice(0, 2000) },
            { source: { nodeId: options.nodeId ?? "unknown", component: "eventlog" }, severity: "critical" }
          ),
          Date.now()
        )
      )
      return { subject: subjectOf(prefix, row), body: encode(row), id: row.id }
    }

    const fail = (pending: Pending, error: WriteError) =>
      Effect.gen(function* () {
        yield* Effect.logError("system.alert: event log write failed").pipe(
          Effect.annotateLogs({ component: "eventlog", message: error.message })
        )
        if (alerts.length < 100) alerts.push(alertOf(error.message))
        yield* Deferred.fail(pending.done, error)
      })

    /**
     * Settles `batch`, whose messages (after the `waiting` alerts) were published as `started`; on
     * a refusal, publishes each append again on its own, so one bad append fails alone.
     */
    const writeBatch = (
      batch: ReadonlyArray<Pending>,
      waiting: ReadonlyArray<Outgoing>,
      messages: ReadonlyArray<Outgoing>,
      started: Promise<ReadonlyArray<number>>
    ) =>
      Effect.gen(function* () {
        const published = yield* Effect.either(publishRetrying(messages, started))
        if (Either.isRight(published)) {
          let next = waiting.length
          for (const pending of batch) {
            const offsets = pending.messages.map(() => Offset.make(published.right[next++] ?? 0))
            yield* Deferred.succeed(pending.done, offsets)
          }
          return
        }
        // Perhaps stored, perhaps not: they go out again with the next batch (their ids keep them single).
        alerts = [...waiting, ...alerts].slice(0, 100)
        if (published.left.refusal === undefined || batch.length === 1) {
          for (const pending of batch) yield* fail(pending, errorOf(pending, published.left))
          return
        }
        for (const pending of batch) {
          const alone = yield* Effect.either(publishRetrying(pending.messages))
          if (Either.isLeft(alone)) yield* fail(pending, errorOf(pending, alone.left))
          else
            yield* Deferred.succeed(
              pending.done,
              alone.right.map((seq) => Offset.make(seq))
            )
        }
      })

    const answerShutdown = (batch: ReadonlyArray<Pending>) =>
      Effect.forEach(
        batch,
        (pending) =>
          Deferred.fail(
            pending.done,
            new EventLogError({ message: "the event log closed before the write" })
          ),
        { discard: true }
      )

    yield* Effect.forkScoped(
      Effect.forever(
        Effect.gen(function* () {
          const first = yield* Queue.take(queue)
          const batch = [first]
          let count = first.messages.length
          while (count < maxBatchEvents) {
            const more = yield* Queue.poll(queue)
            if (Option.isNone(more)) break
            batch.push(more.value)
            count += more.value.messages.length
          }
          // Up to `maxInFlight` batches await their acks at once; the publishes leave here, in order.
          yield* inFlight.take(1)
          const waiting = alerts
          alerts = []
          const messages = [...waiting, ...batch.flatMap((pending) => pending.messages)]
          const started = yield* Effect.sync(() => startPublish(messages))
          yield* Effect.fork(
            writeBatch(batch, waiting, messages, started).pipe(
              Effect.catchAllCause((cause) =>
                Effect.forEach(
                  batch,
                  (pending) =>
                    Deferred.fail(
                      pending.done,
                      new EventLogError({ message: `the event log writer failed: ${Cause.pretty(cause)}` })
                    ),
                  { discard: true }
                )
              ),
              Effect.onInterrupt(() => answerShutdown(batch)),
              Effect.ensuring(inFlight.release(1))
            )
          )
        })
      )
    )
    yield* Effect.addFinalizer(() =>
      Effect.flatMap(Queue.takeAll(queue), (waiting) => answerShutdown(Array.from(waiting)))
    )

    const append = (events: ReadonlyArray<NewEvent>) =>
      Effect.gen(function* () {
        if (events.length === 0) return []
        const now = Date.now()
        const messages: Array<Outgoing> = []
        for (const event of events) {
          const row = toRow(event, now)
          if (Either.isLeft(row)) return yield* row.left
          messages.push({ subject: subjectOf(prefix, row.right), body: encode(row.right), id: row.right.id })
        }
        const done = yield* Deferred.make<ReadonlyArray<Offset>, WriteError>()
        yield* Queue.offer(queue, { messages, type: events[0]?.type ?? "?", done })
        return yield* Deferred.await(done)
      })

    // Reads -----------------------------------------------------------------------------------

    const compile = (filter: EventFilter) =>
      Either.match(compileFilter(filter), { onLeft: Effect.fail, onRight: Effect.succeed })

    const read = (from: number, filter: EventFilter, limit: number) =>
      Effect.gen(function* () {
        const compiled = yield* compile(filter)
        const max = Math.max(0, Math.min(limit, 10_000))
        const out: Array<StoredEvent> = []
        if (max === 0) return out
        yield* scanEvents(filterSubject(prefix, filter), from, (event) => {
          if (compiled.matches(event)) out.push(event)
          return out.length < max
        })
        return out
      })

    const readBackward = (upTo: number, filter: EventFilter, limit: number) =>
      Effect.gen(function* () {
        const compiled = yield* compile(filter)
        const max = Math.max(0, Math.min(limit, 10_000))
        const out: Array<StoredEvent> = []
        const state = yield* streamState
        const subject = filterSubject(prefix, filter)
        // The newest match (a job's last output chunk, say): the server finds the last message on
        // the subject at once, where a scan would go back through the stream window by window.
        if (max === 1 && upTo >= state.last_seq) {
          const last = yield* Effect.tryPromise({
            try: () => jsm.streams.getMessage(stream, { last_by_subj: subject }),
            catch: failure("cannot read the event stream")
          })
          if (last === null) return out
          const decoded = decode(last.seq, last.data)
          if (Either.isLeft(decoded)) return yield* decoded.left
          if (compiled.matches(decoded.right)) return [decoded.right]
          // The subject holds more than the filter matches: scan.
        }
        let high = Math.min(upTo, state.last_seq)
        let window = 256
        while (out.length < max && high >= state.first_seq && high >= 1) {
          const low = Math.max(state.first_seq, high - window + 1, 1)
          const found: Array<StoredEvent> = []
          const until = high
          yield* scanEvents(subject, low, (event) => {
            if (event.offset > until) return false
            if (compiled.matches(event)) found.push(event)
            return event.offset < until
          })
          for (let i = found.length - 1; i >= 0 && out.length < max; i--) {
            const event = found[i]
            if (event !== undefined) out.push(event)
          }
          high = low - 1
          window = Math.min(window * 4, 1 << 20)
        }
        return out
      })

    /** The first sequence stored at or after `epochMillis` (the head + 1 when there is none). */
    const seqAtTime = (epochMillis: number) =>
      Effect.tryPromise({
        try: async () => {
          const consumer = await js.consumers.get(stream, {
            deliver_policy: DeliverPolicy.StartTime,
            opt_start_time: new Date(epochMillis).toISOString()
          })
          try {
            // The server reports the sequence it will start at, minus one, as delivered.
            return (await consumer.info(true)).delivered.stream_seq + 1
          } finally {
            consumer.delete().catch(() => false)
          }
        },
        catch: failure("cannot find a time in the event stream")
      })

    const resolve = (from: From) => {
      switch (from._tag) {
        case "Offset":
          return Effect.succeed(Math.max(1, from.offset))
        case "Latest":
          return Effect.map(head, (h) => h + 1)
        case "Time":
          return seqAtTime(from.epochMillis)
      }
    }

    const subscribe = (from: From, filter: EventFilter) =>
      Stream.unwrapScoped(
        Effect.gen(function* () {
          const compiled = yield* compile(filter)
          const start = yield* resolve(from)
          const controller = new AbortController()
          // Aborting ends a wait for messages; returning runs the clean-up of a generator paused at a yield.
          const messages = yield* Effect.acquireRelease(
            Effect.sync(() =>
              follow(stream, filterSubject(prefix, filter), start, {
                untilCaughtUp: false,
                signal: controller.signal
              })
            ),
            (generator) =>
              Effect.sync(() => controller.abort()).pipe(
                Effect.zipRight(Effect.promise(() => generator.return(undefined).catch(() => undefined))),
                Effect.timeout("5 seconds"),
                Effect.ignore
              )
          )
          // Whatever is already buffered comes as one chunk: next() is raced against one
          // macrotask, which only wins once the buffer is empty (the unfinished next() is kept).
          let carried: Promise<IteratorResult<JsMsg>> | undefined
          const takeBuffered = async (): Promise<Array<JsMsg> | undefined> => {
            const first = await (carried ?? messages.next())
            carried = undefined
            if (first.done === true) return undefined
            const out = [first.value]
            const tick = new Promise<typeof emptyBuffer>((wake) => setImmediate(wake, emptyBuffer))
            while (out.length < pageSize) {
              const pending = messages.next()
              const result = await Promise.race([pending, tick])
              if (result === emptyBuffer || result.done === true) {
                carried = pending
                break
              }
              out.push(result.value)
            }
            return out
          }
          const next = Effect.tryPromise({
            try: takeBuffered,
            catch: failure("the event subscription failed")
          }).pipe(
            Effect.mapError(Option.some),
            Effect.flatMap((batch) =>
              batch === undefined ? Effect.fail(Option.none()) : Effect.succeed(Chunk.unsafeFromArray(batch))
            )
          )
          return Stream.repeatEffectChunkOption(next).pipe(
            Stream.mapChunksEffect((chunk) => {
              const out: Array<StoredEvent> = []
              for (const message of chunk) {
                const decoded = decode(message.seq, message.data)
                if (Either.isLeft(decoded)) return Effect.fail(decoded.left)
                if (compiled.matches(decoded.right)) out.push(decoded.right)
              }
              return Effect.succeed(Chunk.unsafeFromArray(out))
            })
          )
        })
      )

    // Consumer offsets ------------------------------------------------------------------------

    const offsetSubject = (consumer: string) => `${offsetsPrefix}.${subjectToken(consumer)}`

    const commit = (consumer: string, offset: number) =>
      Effect.gen(function* () {
        yield* checkCommit(consumer, offset, yield* head)
        yield* Effect.tryPromise({
          try: () => js.publish(offsetSubject(consumer), String(offset)),
          catch: failure("cannot commit a consumer offset")
        })
      })

    const parseOffset = (data: Uint8Array) => Number(Buffer.from(data).toString("utf8"))

    const committed = (consumer: string) =>
      Effect.gen(function* () {
        yield* checkConsumer(consumer)
        const message = yield* Effect.tryPromise({
          try: () => jsm.direct.getMessage(offsetsStream, { last_by_subj: offsetSubject(consumer) }),
          catch: failure("cannot read a consumer offset")
        })
        return message === null ? Option.none<number>() : Option.some(parseOffset(message.data))
      })

    /** The slowest named consumer's offset, if any consumer committed. */
    const slowestConsumer = Effect.suspend(() => {
      let slowest: number | null = null
      return scan(offsetsStream, `${offsetsPrefix}.>`, 1, (_, data) => {
        const offset = parseOffset(data)
        slowest = slowest === null ? offset : Math.min(slowest, offset)
        return true
      }).pipe(Effect.map(() => slowest))
    })

    /** Every consumer's offset; a name too long for a subject shows as its hashed token. */
    const consumers = Effect.suspend(() => {
      const found: Array<ConsumerOffset> = []
      return scan(offsetsStream, `${offsetsPrefix}.>`, 1, (_, data, subject) => {
        found.push({ name: tokenValue(subject.slice(offsetsPrefix.length + 1)), offset: parseOffset(data) })
        return true
      }).pipe(Effect.map(() => found.sort((a, b) => (a.name < b.name ? -1 : 1))))
    })

    // Retention -------------------------------------------------------------------------------

    /** Purges what matches `subject` below sequence `below`; how many went. */
    const purge = (subject: string, below: number) =>
      below <= 1
        ? Effect.succeed(0)
        : Effect.tryPromise({
            try: () => jsm.streams.purge(stream, { filter: subject, seq: below }).then((r) => r.purged),
            catch: failure("retention could not purge the event stream")
          })

    const deleteEach = (seqs: ReadonlyArray<number>) =>
      Effect.tryPromise({
        try: () => Promise.all(seqs.map((seq) => jsm.streams.deleteMessage(stream, seq, false))),
        catch: failure("retention could not delete from the event stream")
      }).pipe(Effect.map((results) => results.filter(Boolean).length))

    const checkGlob = (glob: string) =>
      Either.match(compileGlob(glob), { onLeft: Effect.fail, onRight: Effect.succeed })

    const applyRetention = (policies: ReadonlyArray<RetentionPolicy>, now: number) =>
      Effect.gen(function* () {
        for (const policy of policies) {
          yield* Effect.forEach(policy.types, checkGlob)
          if (policy.snapshotType !== undefined) yield* checkGlob(policy.snapshotType)
        }
        const safeOffset = yield* slowestConsumer
        let deleted = 0
        for (const policy of policies) {
          const globs = yield* Effect.forEach(policy.types, checkGlob)
          const subjects = policy.types.map((glob) => filterSubject(prefix, { types: [glob] }))
          // Purges are "everything matching below N": N is one past the last sequence that may go.
          const limit =
            policy.ignoreConsumers || safeOffset === null ? Number.MAX_SAFE_INTEGER : safeOffset + 1
          const purgeAll = (below: number) =>
            Effect.reduce(subjects, 0, (sum, subject) =>
              Effect.map(purge(subject, Math.min(below, limit)), (n) => sum + n)
            )

          if (policy.maxAgeMillis !== undefined) {
            deleted += yield* purgeAll(yield* seqAtTime(now - policy.maxAgeMillis))
          }

          if (policy.maxBytes !== undefined) {
            const maxBytes = policy.maxBytes
            const sizes: Array<readonly [number, number]> = []
            const subject = subjects.length === 1 ? (subjects[0] ?? `${prefix}.>`) : `${prefix}.>`
            yield* scanEvents(subject, 1, (event) => {
              if (globs.some((glob) => glob.test(event.type))) {
                sizes.push([event.offset, Buffer.byteLength(JSON.stringify(event.data), "utf8")])
              }
              return true
            })
            let kept = 0
            let cut = 0
            for (let i = sizes.length - 1; i >= 0; i--) {
              const [offset, bytes] = sizes[i] ?? [0, 0]
              kept += bytes
              if (kept > maxBytes) {
                cut = offset
                break
              }
            }
            deleted += yield* purgeAll(cut + 1)
          }

          if (policy.snapshotType !== undefined) {
            const covered = new Map<string, number>()
            yield* scanEvents(filterSubject(prefix, { types: [policy.snapshotType] }), 1, (event) => {
              if (event.sessionId !== undefined) covered.set(event.sessionId, event.offset)
              return true
            })
            for (const [sessionId, upTo] of covered) {
              const below = Math.min(upTo, limit)
              for (const glob of policy.types) {
                const type = globSubject(glob)
                if (!type.open) {
                  deleted += yield* purge(filterSubject(prefix, { types: [glob], sessionId }), below)
                  continue
                }
                // `x.**` cannot pin the session in a subject: find its events and delete them one by one.
                const doomed: Array<number> = []
                yield* scanEvents(filterSubject(prefix, { types: [glob] }), 1, (event) => {
                  if (event.offset >= below) return false
                  if (event.sessionId === sessionId) doomed.push(event.offset)
                  return true
                })
                deleted += yield* deleteEach(doomed)
              }
            }
          }
        }
        const report: RetentionReport = { deleted, safeOffset }
        return report
      })

    const stats = Effect.gen(function* () {
      const state = yield* streamState
      const counted = tally()
      yield* scanEvents(`${prefix}.>`, 1, (event) => {
        counted.add(event)
        return true
      })
      const types = counted.types()
      return LogStats.make({
        backend: "jetstream",
        head: state.last_seq,
        events: types.reduce((sum, t) => sum + t.events, 0),
        bytes: types.reduce((sum, t) => sum + t.bytes, 0),
        storedBytes: state.bytes,
        types
      })
    })

    return EventLog.of({
      append,
      read,
      readBackward,
      subscribe,
      head,
      resolve,
      commit,
      committed,
      consumers,
      stats,
      applyRetention
    })
  })

/** The log as a layer. */
export const layer = (options: Options): Layer.Layer<EventLog, EventLogError> =>
  Layer.scoped(EventLog, make(options))
