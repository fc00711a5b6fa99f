/**
 * The Postgres event log.
 *
 * Appends go through a bounded queue to one writer fiber that group-commits whatever is waiting
 * (one `INSERT … SELECT FROM unnest(…)` per transaction). Offsets come from a one-row counter
 * updated in the same transaction, so they are gapless and become visible in order across every
 * node sharing the database. The transaction ends with `pg_notify`, which wakes the tailers of
 * other nodes; subscribers read pages after their last offset whenever the head moves.
 */
import {
  Cause,
  Chunk,
  DateTime,
  Deferred,
  Effect,
  Either,
  Layer,
  Option,
  Queue,
  Schedule,
  Stream,
  SubscriptionRef
} from "effect"
import { SqlClient } from "@effect/sql/SqlClient"
import {
  compileFilter,
  compileGlob,
  type CompiledFilter,
  type EventFilter,
  LogStats,
  maxDataBytes,
  maxEventBytes,
  type NewEvent,
  Offset,
  StoredEvent,
  TypeStats
} from "../../rpc/Events.js"
import { isPermanentSqlError, Notifications } from "../db/Db.js"
import { isStorable, toStorable } from "../../rpc/Text.js"
import {
  checkCommit,
  checkConsumer,
  EventLog,
  EventLogError,
  EventRejected,
  EventTooLarge,
  bySize,
  type From,
  type RetentionPolicy,
  uuidv7
} from "./EventLog.js"

/** Tuning of the writer. */
export interface Options {
  /** Appends (batches) that may wait for the writer before callers block. */
  readonly queueCapacity?: number
  /** Most events written in one transaction. */
  readonly maxBatchEvents?: number
  /** Raw payload bytes after which a transaction takes no more appends. */
  readonly maxBatchBytes?: number
  /** Page size of subscribers' catch-up reads. */
  readonly pageSize?: number
  /** The node id written as the source of the log's own events (`system.alert`). */
  readonly nodeId?: string
}

/** The notification channel; its payload is the new head offset. */
export const channel = "vibes_events"

/** Why a batch could not be written: for now (`EventLogError`), or for good (`EventRejected`). */
type WriteError = EventLogError | EventRejected

interface Pending {
  readonly rows: ReadonlyArray<Row>
  readonly done: Deferred.Deferred<ReadonlyArray<Offset>, WriteError>
}

export interface Row {
  readonly id: string
  readonly type: string
  readonly ts: Date
  readonly sourceNode: string
  readonly sourceComponent: string
  readonly sessionId: string | null
  readonly jobId: string | null
  readonly tenantId: string
  readonly severity: string
  readonly correlationId: string | null
  readonly data: string
  /** The raw payload, stored as bytea. */
  readonly bytes: Uint8Array | null
}

interface DbRow {
  readonly offset: string | number
  readonly id: string
  readonly type: string
  readonly ts: Date
  readonly source_node: string
  readonly source_component: string
  readonly session_id: string | null
  readonly job_id: string | null
  readonly tenant_id: string
  readonly severity: StoredEvent["severity"]
  readonly correlation_id: string | null
  readonly data: unknown
  readonly bytes: Uint8Array | null
}

// Rows were checked on the way in; validating them again on the way out costs more than the read.
const toStored = (row: DbRow): StoredEvent =>
  StoredEvent.make(
    {
      offset: Offset.make(Number(row.offset), true),
      id: row.id,
      type: row.type,
      ts: DateTime.unsafeFromDate(row.ts),
      source: { nodeId: row.source_node, component: row.source_component },
      ...(row.session_id !== null ? { sessionId: row.session_id } : {}),
      ...(row.job_id !== null ? { jobId: row.job_id } : {}),
      tenantId: row.tenant_id,
      severity: row.severity,
      ...(row.correlation_id !== null ? { correlationId: row.correlation_id } : {}),
      data: row.data,
      ...(row.bytes !== null ? { bytes: row.bytes } : {})
    },
    true
  )

/**
 * A NUL or an unpaired surrogate in a JSON text as `JSON.stringify` writes it: an escape `\u0000`
 * or `\ud800`–`\udfff` (it writes valid pairs as they are) after an even run of backslashes.
 * Postgres' jsonb refuses both.
 */
const unstorableEscape = /(?:^|[^\\])(?:\\\\)*\\u(?:0000|d[89a-f][0-9a-f]{2})/i

/**
 * Serialises and checks one event; what the database would refuse for good (a payload over the
 * limit, a NUL or an unpaired surrogate anywhere) is refused here, before anything is stored.
 */
export const toRow = (event: NewEvent, now: number): Either.Either<Row, EventTooLarge | EventRejected> => {
  const data = JSON.stringify(event.data ?? null)
  const bytes = Buffer.byteLength(data, "utf8")
  if (bytes > maxDataBytes) {
    return Either.left(
      new EventTooLarge({
        type: event.type,
        bytes,
        limit: maxDataBytes,
        message: `the ${event.type} payload is ${bytes} bytes; the limit is ${maxDataBytes}`
      })
    )
  }
  if (event.bytes !== undefined && event.bytes.length > maxEventBytes) {
    return Either.left(
      new EventTooLarge({
        type: event.type,
        bytes: event.bytes.length,
        limit: maxEventBytes,
        message: `the ${event.type} event carries ${event.bytes.length} bytes; the limit is ${maxEventBytes}`
      })
    )
  }
  const texts = [
    event.type,
    event.source.nodeId,
    event.source.component,
    event.sessionId,
    event.jobId,
    event.tenantId,
    event.correlationId
  ]
  if (unstorableEscape.test(data) || texts.some((text) => text !== undefined && !isStorable(text))) {
    return Either.left(
      new EventRejected({
        type: toStorable(event.type),
        message: `the ${toStorable(event.type)} event holds a NUL character or an unpaired surrogate, which the log cannot store`
      })
    )
  }
  return Either.right({
    id: uuidv7(now),
    type: event.type,
    ts: new Date(now),
    sourceNode: event.source.nodeId,
    sourceComponent: event.source.component,
    sessionId: event.sessionId ?? null,
    jobId: event.jobId ?? null,
    tenantId: event.tenantId,
    severity: event.severity,
    correlationId: event.correlationId ?? null,
    data,
    bytes: event.bytes ?? null
  })
}

const payloadSize = (pending: Pending) => {
  let size = 0
  for (const row of pending.rows) size += row.bytes?.length ?? 0
  return size
}

/** The rows' raw payloads as one buffer, with where each starts (1-based) and its length. */
const payloads = (rows: ReadonlyArray<Row>) => {
  const parts: Array<Uint8Array> = []
  const starts: Array<number | null> = []
  const lengths: Array<number | null> = []
  let at = 1
  for (const row of rows) {
    if (row.bytes === null) {
      starts.push(null)
      lengths.push(null)
    } else {
      parts.push(row.bytes)
      starts.push(at)
      lengths.push(row.bytes.length)
      at += row.bytes.length
    }
  }
  return { bytes: Buffer.concat(parts, at - 1), starts, lengths }
}

const messageOf = (cause: unknown) => (cause instanceof Error ? cause.message : String(cause))

/** Backoff between the 3 retries of a failed write: 0.2 s, 0.4 s, 0.8 s (with jitter). */
const retrySchedule = Schedule.exponential("200 millis").pipe(Schedule.jittered)

/** How long a subscriber keeps retrying a failed read before it fails: up to about a minute. */
const readRetry = Schedule.exponential("100 millis").pipe(
  Schedule.union(Schedule.spaced("2 seconds")),
  Schedule.upTo("60 seconds")
)

const describeUnknown = (error: unknown): string =>
  typeof error === "object" && error !== null && "message" in error && typeof error.message === "string"
    ? describe({ message: error.message, cause: "cause" in error ? error.cause : undefined })
    : String(error)

/** An SQL error with the database's own reason, which `SqlError.message` leaves out. */
export const describe = (error: { readonly message: string; readonly cause?: unknown }): string =>
  error.cause instanceof Error && error.cause.message !== error.message
    ? `${error.message}: ${error.cause.message}`
    : error.message

/** Builds the log on the current SQL client; the scope owns the writer and the tailer. */
export const make = (options: Options = {}) =>
  Effect.gen(function* () {
    const sql = yield* SqlClient
    const notifications = yield* Notifications
    const queueCapacity = options.queueCapacity ?? 1024
    const maxBatchEvents = options.maxBatchEvents ?? 5000
    const maxBatchBytes = options.maxBatchBytes ?? 16 * 1024 * 1024
    const pageSize = options.pageSize ?? 1000
    const queue = yield* Queue.bounded<Pending>(queueCapacity)

    const readHead = sql<{ head: string }>`SELECT head FROM vibes_event_head`.pipe(
      Effect.map((rows) => Number(rows[0]?.head ?? 0)),
      Effect.mapError(
        (error) => new EventLogError({ message: `cannot read the event log head: ${describe(error)}` })
      )
    )
    const head = yield* SubscriptionRef.make(yield* readHead)
    const advance = (to: number) => SubscriptionRef.update(head, (current) => Math.max(current, to))

    const insertUnlessCommitted = (rows: ReadonlyArray<Row>) =>
      Effect.flatMap(
        sql<{ offset: string }>`SELECT "offset" FROM vibes_events WHERE id = ${rows[0]?.id ?? null}`,
        ([found]) => (found !== undefined ? Effect.succeed(Number(found.offset)) : insert(rows))
      )

    // One statement, so one round trip: it takes the offsets (the head row's lock orders writers
    // on every node until the statement commits), inserts the rows and notifies the listeners
    // (delivered on commit only, to every node listening). Data-modifying CTEs run exactly once.
    const insert = (rows: ReadonlyArray<Row>) => {
      const count = rows.length
      // The raw payloads go as one binary parameter, cut into rows by the database: an array of
      // bytea would travel as hex text.
      const blob = payloads(rows)
      return sql<{ head: string }>`
        WITH h AS (UPDATE vibes_event_head SET head = head + ${count} RETURNING head),
        ins AS (
          INSERT INTO vibes_events ("offset", id, type, ts, source_node, source_component, session_id, job_id,
                                    tenant_id, severity, correlation_id, data, bytes)
          SELECT (SELECT head FROM h) - ${count} + k, i, ty, t, sn, sc, se, jo, te, sv, co, d::jsonb,
                 CASE WHEN bl IS NULL THEN NULL ELSE substring(${blob.bytes}::bytea FROM bs FOR bl) END
          FROM unnest(
            ${rows.map((r) => r.id)}::uuid[],
            ${rows.map((r) => r.type)}::text[], ${rows.map((r) => r.ts)}::timestamptz[],
            ${rows.map((r) => r.sourceNode)}::text[], ${rows.map((r) => r.sourceComponent)}::text[],
            ${rows.map((r) => r.sessionId)}::text[], ${rows.map((r) => r.jobId)}::text[],
            ${rows.map((r) => r.tenantId)}::text[], ${rows.map((r) => r.severity)}::text[],
            ${rows.map((r) => r.correlationId)}::text[], ${rows.map((r) => r.data)}::text[],
            ${blob.starts}::int[], ${blob.lengths}::int[]
          ) WITH ORDINALITY AS t(i, ty, t, sn, sc, se, jo, te, sv, co, d, bs, bl, k)
          RETURNING 1
        )
        SELECT head, pg_notify(${channel}, head::text) FROM h`.pipe(
        Effect.map(([counter]) => Number(counter?.head ?? 0) - count + 1)
      )
    }

    // Alerts about failed writes, written ahead of the next batch that goes through.
    let alerts: Array<Row> = []

    const alertRow = (message: string): Row => ({
      id: uuidv7(),
      type: "system.alert",
      ts: new Date(),
      sourceNode: options.nodeId ?? "unknown",
      sourceComponent: "eventlog",
      sessionId: null,
      jobId: null,
      tenantId: "default",
      severity: "critical",
      correlationId: null,
      data: JSON.stringify({ component: "eventlog", message }),
      bytes: null
    })

    const commitRows = (batch: ReadonlyArray<Pending>) =>
      Effect.gen(function* () {
        const waiting = alerts
        const rows = [...waiting, ...batch.flatMap((pending) => pending.rows)]
        let attempts = 0
        // A retry first looks for the batch: a COMMIT whose answer was lost may have gone through.
        const attempt = Effect.suspend(() =>
          attempts++ === 0 ? insert(rows) : insertUnlessCommitted(rows)
        ).pipe(
          // @effect/sql turns a failed ROLLBACK or COMMIT (a dead connection) into a defect.
          Effect.catchAllCause((cause) =>
            Cause.isInterruptedOnly(cause)
              ? Effect.failCause(cause)
              : Effect.fail(Cause.squashWith(cause, (error) => error))
          )
        )
        // What the database refused for good (a constraint, a value it cannot hold) is not retried.
        const first = yield* attempt.pipe(
          Effect.retry({ times: 3, schedule: retrySchedule, while: (error) => !isPermanentSqlError(error) }),
          Effect.mapError((error): WriteError =>
            isPermanentSqlError(error)
              ? new EventRejected({
                  type: rows.length === 1 ? (rows[0]?.type ?? "?") : `${rows.length} events`,
                  message: `the database refused ${rows.length} events: ${describeUnknown(error)}`
                })
              : new EventLogError({
                  message: `the event log could not write ${rows.length} events: ${describeUnknown(error)}`
                })
          )
        )
        alerts = alerts.slice(waiting.length)
        let next = first + waiting.length
        for (const pending of batch) {
          const offsets = pending.rows.map(() => Offset.make(next++))
          yield* Deferred.succeed(pending.done, offsets)
        }
        yield* advance(next - 1)
      })

    const fail = (batch: ReadonlyArray<Pending>, error: WriteError) =>
      Effect.gen(function* () {
        yield* Effect.logError("system.alert: event log write failed").pipe(
          Effect.annotateLogs({ component: "eventlog", message: error.message })
        )
        if (alerts.length < 100) alerts.push(alertRow(error.message))
        for (const pending of batch) yield* Deferred.fail(pending.done, error)
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

    // A batch that cannot be written is split, so one bad append does not fail the others'.
    const writeBatch = (batch: ReadonlyArray<Pending>) =>
      commitRows(batch).pipe(
        Effect.catchAll((error) =>
          batch.length === 1
            ? fail(batch, error)
            : Effect.forEach(
                batch,
                (pending) => commitRows([pending]).pipe(Effect.catchAll((e) => fail([pending], e))),
                {
                  discard: true
                }
              )
        )
      )

    // The writer: takes whatever is waiting (up to maxBatchEvents) and commits it as one. Whatever
    // happens to a batch, its callers get an answer, and the writer goes on.
    yield* Effect.forkScoped(
      Effect.forever(
        Effect.gen(function* () {
          const first = yield* Queue.take(queue)
          const batch = [first]
          let count = first.rows.length
          let size = payloadSize(first)
          while (count < maxBatchEvents && size < maxBatchBytes) {
            const more = yield* Queue.poll(queue)
            if (Option.isNone(more)) break
            batch.push(more.value)
            count += more.value.rows.length
            size += payloadSize(more.value)
          }
          yield* writeBatch(batch).pipe(
            Effect.catchAllCause((cause) =>
              fail(
                batch,
                new EventLogError({ message: `the event log writer failed: ${Cause.pretty(cause)}` })
              )
            ),
            Effect.onInterrupt(() => answerShutdown(batch))
          )
        })
      )
    )
    // Appends still waiting when the log closes get an answer rather than hang.
    yield* Effect.addFinalizer(() =>
      Effect.flatMap(Queue.takeAll(queue), (waiting) => answerShutdown(Array.from(waiting)))
    )

    // The tailer: other nodes' commits arrive as notifications; a slow poll covers lost ones.
    yield* Effect.forkScoped(
      notifications.listen(channel).pipe(
        Stream.runForEach((payload) => {
          const offset = Number(payload)
          return Number.isSafeInteger(offset) ? advance(offset) : Effect.void
        }),
        Effect.catchAll((error) => Effect.logWarning(`event log listener failed: ${describe(error)}`)),
        // Listening again also re-reads the head, which covers what was missed meanwhile.
        Effect.zipRight(Effect.ignore(Effect.flatMap(readHead, advance))),
        Effect.repeat(Schedule.spaced("1 second"))
      )
    )
    yield* Effect.forkScoped(
      readHead.pipe(Effect.flatMap(advance), Effect.ignore, Effect.repeat(Schedule.spaced("1 second")))
    )

    const append = (events: ReadonlyArray<NewEvent>) =>
      Effect.gen(function* () {
        if (events.length === 0) return []
        const now = Date.now()
        const rows: Array<Row> = []
        for (const event of events) {
          const row = toRow(event, now)
          if (Either.isLeft(row)) return yield* row.left
          rows.push(row.right)
        }
        const done = yield* Deferred.make<ReadonlyArray<Offset>, WriteError>()
        yield* Queue.offer(queue, { rows, done })
        return yield* Deferred.await(done)
      })

    /** One page of matching events; `retry` is tried on failures that may pass (never on a refused query). */
    const page = (
      from: number,
      upTo: number,
      compiled: CompiledFilter,
      limit: number,
      order: "forward" | "backward" = "forward",
      retry: Schedule.Schedule<unknown, unknown> = Schedule.stop
    ) => {
      const filter = compiled.filter
      const globs = filter.types.map((glob) => compileGlobSql(glob))
      return sql<DbRow>`
        SELECT "offset", id, type, ts, source_node, source_component, session_id, job_id, tenant_id, severity,
               correlation_id, data, bytes
        FROM vibes_events
        WHERE "offset" >= ${from} AND "offset" <= ${upTo}
          ${globs.length > 0 ? sql`AND type ~ ANY(${globs}::text[])` : sql``}
          ${filter.sessionId !== undefined ? sql`AND session_id = ${filter.sessionId}` : sql``}
          ${filter.jobId !== undefined ? sql`AND job_id = ${filter.jobId}` : sql``}
          ${filter.tenantId !== undefined ? sql`AND tenant_id = ${filter.tenantId}` : sql``}
        ORDER BY "offset" ${order === "forward" ? sql.literal("ASC") : sql.literal("DESC")}
        LIMIT ${limit}`.pipe(
        Effect.retry({ schedule: retry, while: (error) => !isPermanentSqlError(error) }),
        Effect.map((rows) => rows.map(toStored)),
        Effect.mapError(
          (error) => new EventLogError({ message: `cannot read the event log: ${describe(error)}` })
        )
      )
    }

    const compile = (filter: EventFilter) =>
      Either.match(compileFilter(filter), { onLeft: Effect.fail, onRight: Effect.succeed })

    const read = (from: number, filter: EventFilter, limit: number) =>
      Effect.flatMap(compile(filter), (compiled) =>
        page(Math.max(from, 1), Number.MAX_SAFE_INTEGER, compiled, Math.max(0, Math.min(limit, 10_000)))
      )

    const readBackward = (upTo: number, filter: EventFilter, limit: number) =>
      Effect.flatMap(compile(filter), (compiled) =>
        page(1, upTo, compiled, Math.max(0, Math.min(limit, 10_000)), "backward")
      )

    const startOffset = (from: From) => {
      switch (from._tag) {
        case "Offset":
          return Effect.succeed(Math.max(1, from.offset))
        case "Latest":
          return Effect.map(SubscriptionRef.get(head), (h) => h + 1)
        case "Time":
          return sql<{ offset: string | null }>`
            SELECT min("offset") AS "offset" FROM vibes_events WHERE ts >= ${new Date(from.epochMillis)}`.pipe(
            Effect.zip(SubscriptionRef.get(head)),
            Effect.map(([rows, h]) => (rows[0]?.offset != null ? Number(rows[0].offset) : h + 1)),
            Effect.mapError((error) => new EventLogError({ message: messageOf(error) }))
          )
      }
    }

    const commit = (consumer: string, offset: number) =>
      Effect.gen(function* () {
        yield* checkCommit(consumer, offset, yield* SubscriptionRef.get(head))
        yield* sql`
          INSERT INTO vibes_event_consumers (name, "offset", updated_at) VALUES (${consumer}, ${offset}, now())
          ON CONFLICT (name) DO UPDATE SET "offset" = EXCLUDED."offset", updated_at = now()`.pipe(
          Effect.mapError(
            (error) => new EventLogError({ message: `cannot commit a consumer offset: ${describe(error)}` })
          )
        )
      })

    const committed = (consumer: string) =>
      Effect.gen(function* () {
        yield* checkConsumer(consumer)
        const rows = yield* sql<{ offset: string }>`
          SELECT "offset" FROM vibes_event_consumers WHERE name = ${consumer}`.pipe(
          Effect.mapError(
            (error) => new EventLogError({ message: `cannot read a consumer offset: ${describe(error)}` })
          )
        )
        return Option.map(Option.fromNullable(rows[0]), (row) => Number(row.offset))
      })

    const consumers = sql<{ name: string; offset: string }>`
      SELECT name, "offset" FROM vibes_event_consumers ORDER BY name`.pipe(
      Effect.map((rows) => rows.map((row) => ({ name: row.name, offset: Number(row.offset) }))),
      Effect.mapError(
        (error) => new EventLogError({ message: `cannot read the consumer offsets: ${describe(error)}` })
      )
    )

    const applyRetention = (policies: ReadonlyArray<RetentionPolicy>, now: number) =>
      Effect.gen(function* () {
        for (const policy of policies) {
          for (const glob of [
            ...policy.types,
            ...(policy.snapshotType !== undefined ? [policy.snapshotType] : [])
          ]) {
            yield* Either.match(compileGlob(glob), { onLeft: Effect.fail, onRight: () => Effect.void })
          }
        }
        const [slowest] = yield* sql<{ offset: string | null }>`
          SELECT min("offset") AS "offset" FROM vibes_event_consumers`
        const safeOffset = slowest?.offset != null ? Number(slowest.offset) : null
        let deleted = 0
        for (const policy of policies) {
          const types = policy.types.map(compileGlobSql)
          const bound =
            policy.ignoreConsumers || safeOffset === null ? sql`` : sql`AND "offset" <= ${safeOffset}`
          if (policy.maxAgeMillis !== undefined) {
            const rows = yield* sql`
              DELETE FROM vibes_events
              WHERE type ~ ANY(${types}::text[]) AND ts < ${new Date(now - policy.maxAgeMillis)} ${bound}
              RETURNING 1`
            deleted += rows.length
          }
          if (policy.maxBytes !== undefined) {
            const rows = yield* sql`
              DELETE FROM vibes_events WHERE "offset" IN (
                SELECT "offset" FROM (
                  SELECT "offset", sum(octet_length(data::text) + coalesce(octet_length(bytes), 0)) OVER (ORDER BY "offset" DESC) AS kept
                  FROM vibes_events WHERE type ~ ANY(${types}::text[])
                ) sized WHERE kept > ${policy.maxBytes}
              ) ${bound}
              RETURNING 1`
            deleted += rows.length
          }
          if (policy.snapshotType !== undefined) {
            const rows = yield* sql`
              DELETE FROM vibes_events e
              USING (
                SELECT session_id, max("offset") AS covered FROM vibes_events
                WHERE type ~ ${compileGlobSql(policy.snapshotType)} AND session_id IS NOT NULL
                GROUP BY session_id
              ) s
              WHERE e.session_id = s.session_id AND e."offset" < s.covered AND e.type ~ ANY(${types}::text[])
                ${policy.ignoreConsumers || safeOffset === null ? sql`` : sql`AND e."offset" <= ${safeOffset}`}
              RETURNING 1`
            deleted += rows.length
          }
        }
        return { deleted, safeOffset }
      }).pipe(
        Effect.catchTag("SqlError", (error) =>
          Effect.fail(new EventLogError({ message: `retention failed: ${describe(error)}` }))
        )
      )

    const subscribe = (from: From, filter: EventFilter) =>
      Stream.unwrap(
        Effect.gen(function* () {
          const compiled = yield* compile(filter)
          let next = yield* startOffset(from)
          // Page after page up to the head, then wait for the head to move. Rows skipped by the
          // filter still move `next` on, up to the head we saw; offsets make it gapless.
          const catchUp = Stream.paginateChunkEffect(undefined, () =>
            Effect.gen(function* () {
              const current = yield* SubscriptionRef.get(head)
              if (current < next) return [Chunk.empty<StoredEvent>(), Option.none<undefined>()] as const
              // A database outage is waited out (the writer retries too); only a long one ends the stream.
              const rows = yield* page(next, current, compiled, pageSize, "forward", readRetry)
              next = rows.length === pageSize ? (rows[rows.length - 1]?.offset ?? current) + 1 : current + 1
              return [Chunk.unsafeFromArray(rows), Option.some(undefined)] as const
            })
          )
          const pages = head.changes.pipe(
            Stream.filter((h) => h >= next),
            Stream.flatMap(() => catchUp)
          )
          return pages
        })
      )

    const stats = Effect.gen(function* () {
      const rows = yield* sql<{
        type: string
        events: string
        bytes: string
        oldest: Date
        newest: Date
      }>`
        SELECT type, count(*) AS events,
          sum(octet_length(data::text) + coalesce(octet_length(bytes), 0)) AS bytes,
          min(ts) AS oldest, max(ts) AS newest
        FROM vibes_events GROUP BY type`
      const [size] = yield* sql<{ size: string }>`SELECT pg_total_relation_size('vibes_events') AS size`
      const types = bySize(
        rows.map((row) =>
          TypeStats.make({
            type: row.type,
            events: Number(row.events),
            bytes: Number(row.bytes),
            oldest: DateTime.unsafeMake(row.oldest),
            newest: DateTime.unsafeMake(row.newest)
          })
        )
      )
      return LogStats.make({
        backend: "postgres",
        head: yield* readHead,
        events: types.reduce((sum, t) => sum + t.events, 0),
        bytes: types.reduce((sum, t) => sum + t.bytes, 0),
        storedBytes: size === undefined ? null : Number(size.size),
        types
      })
    }).pipe(
      Effect.catchTag("SqlError", (error) =>
        Effect.fail(new EventLogError({ message: `cannot count the event log: ${describe(error)}` }))
      )
    )

    return EventLog.of({
      append,
      read,
      readBackward,
      subscribe,
      head: SubscriptionRef.get(head),
      resolve: startOffset,
      commit,
      committed,
      consumers,
      stats,
      applyRetention
    })
  })

/** The Postgres regular expression of a glob already checked by `compileFilter`. */
const compileGlobSql = (glob: string): string =>
  Either.match(compileGlob(glob), { onLeft: () => "^$", onRight: (regex) => regex.source })

/** The log as a layer on the current SQL client. */
export const layer = (options?: Options): Layer.Layer<EventLog, EventLogError, SqlClient | Notifications> =>
  Layer.scoped(EventLog, make(options))
