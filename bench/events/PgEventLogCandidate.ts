/**
 * An experiment, not used by vibes: the append, read and subscribe paths of
 * `infra/eventlog/PgEventLog.ts` (as of f57386b; later commits added retries and a LISTEN
 * connection of its own, which leave the paths measured here as they were) with the changes the
 * benchmarks propose, each behind an option, so that one run measures each change alone against
 * the current code.
 *
 * - `statement: "single"`: the counter update, the insert and `pg_notify` as one statement
 *   (one round trip, autocommit) instead of BEGIN, UPDATE, INSERT, SELECT pg_notify, COMMIT.
 * - `writers`: fibers writing batches at once; the counter's row lock still orders the commits,
 *   and a second batch is serialised and sent while the first commits.
 * - `uuid: "fast"`: UUIDv7 from `crypto.randomUUID` (which draws from a cached entropy pool)
 *   instead of `crypto.randomBytes(16)` for every event.
 * - `validateRows: false`: rows read back are trusted (they were validated on the way in), so
 *   `StoredEvent` is built without re-running its schema.
 * - `catchUp: "pages"`: a subscriber behind the head reads page after page until it reaches it,
 *   instead of one page each time the head moves.
 * - `prefetch`: pages a catching-up subscriber reads ahead of its consumer (0: none).
 */
import * as crypto from "node:crypto"
import {
  Chunk,
  DateTime,
  Deferred,
  Effect,
  Either,
  Option,
  Queue,
  Schedule,
  Stream,
  SubscriptionRef
} from "effect"
import * as PgClient from "@effect/sql-pg/PgClient"
import { SqlClient } from "@effect/sql/SqlClient"
import type { SqlError } from "@effect/sql/SqlError"
import {
  compileFilter,
  compileGlob,
  type CompiledFilter,
  type EventFilter,
  maxDataBytes,
  type NewEvent,
  Offset,
  StoredEvent
} from "../../rpc/Events.js"
import {
  type EventLog,
  EventLogError,
  EventTooLarge,
  type From,
  uuidv7
} from "../../infra/eventlog/EventLog.js"
import { channel, describe, type Row } from "../../infra/eventlog/PgEventLog.js"

/** The part of the log the benchmarks drive. */
export type BenchedLog = Pick<EventLog["Type"], "append" | "read" | "subscribe" | "head">

/** The current code's choices and the proposed ones, each on its own. */
export interface Options {
  readonly queueCapacity: number
  readonly maxBatchEvents: number
  readonly pageSize: number
  readonly statement: "transaction" | "single"
  readonly writers: number
  readonly uuid: "crypto" | "fast"
  readonly validateRows: boolean
  readonly catchUp: "one-page" | "pages"
  readonly prefetch: number
}

/** What `infra/eventlog/PgEventLog.ts` does today. */
export const current: Options = {
  queueCapacity: 1024,
  maxBatchEvents: 5000,
  pageSize: 1000,
  statement: "transaction",
  writers: 1,
  uuid: "crypto",
  validateRows: true,
  catchUp: "one-page",
  prefetch: 0
}

/** Every proposed change. */
export const proposed: Options = {
  ...current,
  statement: "single",
  uuid: "fast",
  validateRows: false,
  catchUp: "pages"
}

/**
 * Options from a spec like `proposed+writers=2+uuid=crypto`: a base (`current` or `proposed`),
 * then overrides.
 */
export const parse = (spec: string): Options => {
  const [base = "proposed", ...overrides] = spec.split("+")
  let options: Options = base === "current" ? current : proposed
  for (const override of overrides) {
    const [key = "", value = ""] = override.split("=")
    const number = Number(value)
    switch (key) {
      case "queueCapacity":
      case "maxBatchEvents":
      case "pageSize":
      case "writers":
      case "prefetch":
        if (!Number.isSafeInteger(number) || number < (key === "prefetch" ? 0 : 1)) {
          throw new Error(`bad number in '${override}'`)
        }
        options = { ...options, [key]: number }
        break
      case "statement":
        if (value !== "transaction" && value !== "single") throw new Error(`bad '${override}'`)
        options = { ...options, statement: value }
        break
      case "uuid":
        if (value !== "crypto" && value !== "fast") throw new Error(`bad '${override}'`)
        options = { ...options, uuid: value }
        break
      case "validateRows":
        options = { ...options, validateRows: value === "true" }
        break
      case "catchUp":
        if (value !== "one-page" && value !== "pages") throw new Error(`bad '${override}'`)
        options = { ...options, catchUp: value }
        break
      default:
        throw new Error(`unknown candidate option '${key}' in '${spec}'`)
    }
  }
  return options
}

/** A UUIDv7: the millisecond time over the random bits of a v4 UUID from the cached pool. */
export const fastUuidv7 = (now: number = Date.now()): string => {
  const time = now.toString(16).padStart(12, "0")
  return `${time.slice(0, 8)}-${time.slice(8, 12)}-7${crypto.randomUUID().slice(15)}`
}

interface Pending {
  readonly rows: ReadonlyArray<Row>
  readonly done: Deferred.Deferred<ReadonlyArray<Offset>, EventLogError>
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
}

const toStored =
  (validate: boolean) =>
  (row: DbRow): StoredEvent =>
    StoredEvent.make(
      {
        offset: Offset.make(Number(row.offset), !validate),
        id: row.id,
        type: row.type,
        ts: DateTime.unsafeFromDate(row.ts),
        source: { nodeId: row.source_node, component: row.source_component },
        ...(row.session_id !== null ? { sessionId: row.session_id } : {}),
        ...(row.job_id !== null ? { jobId: row.job_id } : {}),
        tenantId: row.tenant_id,
        severity: row.severity,
        ...(row.correlation_id !== null ? { correlationId: row.correlation_id } : {}),
        data: row.data
      },
      !validate
    )

const toRow =
  (uuid: (now: number) => string) =>
  (event: NewEvent, now: number): Either.Either<Row, EventTooLarge> => {
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
    return Either.right({
      id: uuid(now),
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
      bytes: null
    })
  }

/** Builds the candidate log on the current SQL client; the scope owns its fibers. */
export const make = (options: Options) =>
  Effect.gen(function* () {
    const sql = yield* SqlClient
    const pg = yield* PgClient.PgClient
    const { maxBatchEvents, pageSize } = options
    const queue = yield* Queue.bounded<Pending>(options.queueCapacity)
    const rowOf = toRow(options.uuid === "fast" ? fastUuidv7 : uuidv7)
    const storedOf = toStored(options.validateRows)

    const readHead = sql<{ head: string }>`SELECT head FROM vibes_event_head`.pipe(
      Effect.map((rows) => Number(rows[0]?.head ?? 0)),
      Effect.mapError(
        (error) => new EventLogError({ message: `cannot read the event log head: ${describe(error)}` })
      )
    )
    const head = yield* SubscriptionRef.make(yield* readHead)
    const advance = (to: number) => SubscriptionRef.update(head, (current) => Math.max(current, to))

    const insertInTransaction = (rows: ReadonlyArray<Row>): Effect.Effect<number, SqlError> =>
      sql.withTransaction(
        Effect.gen(function* () {
          const [counter] = yield* sql<{ head: string }>`
            UPDATE vibes_event_head SET head = head + ${rows.length} RETURNING head`
          const last = Number(counter?.head ?? 0)
          const first = last - rows.length + 1
          yield* sql`
            INSERT INTO vibes_events ("offset", id, type, ts, source_node, source_component, session_id, job_id,
                                      tenant_id, severity, correlation_id, data)
            SELECT o, i, ty, t, sn, sc, se, jo, te, sv, co, d::jsonb
            FROM unnest(
              ${rows.map((_, k) => first + k)}::bigint[], ${rows.map((r) => r.id)}::uuid[],
              ${rows.map((r) => r.type)}::text[], ${rows.map((r) => r.ts)}::timestamptz[],
              ${rows.map((r) => r.sourceNode)}::text[], ${rows.map((r) => r.sourceComponent)}::text[],
              ${rows.map((r) => r.sessionId)}::text[], ${rows.map((r) => r.jobId)}::text[],
              ${rows.map((r) => r.tenantId)}::text[], ${rows.map((r) => r.severity)}::text[],
              ${rows.map((r) => r.correlationId)}::text[], ${rows.map((r) => r.data)}::text[]
            ) AS t(o, i, ty, t, sn, sc, se, jo, te, sv, co, d)`
          yield* sql`SELECT pg_notify(${channel}, ${String(last)})`
          return first
        })
      )

    // One statement is one transaction: the counter's row lock is held until it commits, so
    // offsets still commit in order; data-modifying CTEs run once whether read or not.
    const insertInOneStatement = (rows: ReadonlyArray<Row>): Effect.Effect<number, SqlError> =>
      sql<{ first: string }>`
        WITH counter AS (
          UPDATE vibes_event_head SET head = head + ${rows.length} RETURNING head - ${rows.length} AS first
        ), inserted AS (
          INSERT INTO vibes_events ("offset", id, type, ts, source_node, source_component, session_id, job_id,
                                    tenant_id, severity, correlation_id, data)
          SELECT (SELECT first FROM counter) + t.n, i, ty, t, sn, sc, se, jo, te, sv, co, d::jsonb
          FROM unnest(
            ${rows.map((r) => r.id)}::uuid[],
            ${rows.map((r) => r.type)}::text[], ${rows.map((r) => r.ts)}::timestamptz[],
            ${rows.map((r) => r.sourceNode)}::text[], ${rows.map((r) => r.sourceComponent)}::text[],
            ${rows.map((r) => r.sessionId)}::text[], ${rows.map((r) => r.jobId)}::text[],
            ${rows.map((r) => r.tenantId)}::text[], ${rows.map((r) => r.severity)}::text[],
            ${rows.map((r) => r.correlationId)}::text[], ${rows.map((r) => r.data)}::text[]
          ) WITH ORDINALITY AS t(i, ty, t, sn, sc, se, jo, te, sv, co, d, n)
        )
        SELECT first, pg_notify(${channel}, (first + ${rows.length})::text) FROM counter`.pipe(
        Effect.map(([counter]) => Number(counter?.first ?? 0) + 1)
      )

    const insert = options.statement === "single" ? insertInOneStatement : insertInTransaction

    const writeBatch = (batch: ReadonlyArray<Pending>) =>
      Effect.gen(function* () {
        const rows = batch.flatMap((pending) => pending.rows)
        const first = yield* insert(rows).pipe(
          Effect.retry({ times: 3, schedule: Schedule.exponential("50 millis") }),
          Effect.mapError(
            (error) =>
              new EventLogError({
                message: `the event log could not write ${rows.length} events: ${describe(error)}`
              })
          )
        )
        let next = first
        for (const pending of batch) {
          const offsets = pending.rows.map(() => Offset.make(next++))
          yield* Deferred.succeed(pending.done, offsets)
        }
        yield* advance(next - 1)
      }).pipe(
        Effect.catchAll((error) => Effect.forEach(batch, (pending) => Deferred.fail(pending.done, error)))
      )

    const writer = Effect.forever(
      Effect.gen(function* () {
        const first = yield* Queue.take(queue)
        const batch = [first]
        let count = first.rows.length
        while (count < maxBatchEvents) {
          const more = yield* Queue.poll(queue)
          if (Option.isNone(more)) break
          batch.push(more.value)
          count += more.value.rows.length
        }
        yield* writeBatch(batch)
      })
    )
    for (let w = 0; w < options.writers; w++) yield* Effect.forkScoped(writer)

    yield* Effect.forkScoped(
      pg.listen(channel).pipe(
        Stream.runForEach((payload) => {
          const offset = Number(payload)
          return Number.isSafeInteger(offset) ? advance(offset) : Effect.void
        }),
        Effect.catchAll((error) => Effect.logWarning(`event log listener failed: ${describe(error)}`)),
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
          const row = rowOf(event, now)
          if (Either.isLeft(row)) return yield* row.left
          rows.push(row.right)
        }
        const done = yield* Deferred.make<ReadonlyArray<Offset>, EventLogError>()
        yield* Queue.offer(queue, { rows, done })
        return yield* Deferred.await(done)
      })

    const page = (from: number, upTo: number, compiled: CompiledFilter, limit: number) => {
      const filter = compiled.filter
      const globs = filter.types.map((glob) => compileGlobSql(glob))
      return sql<DbRow>`
        SELECT "offset", id, type, ts, source_node, source_component, session_id, job_id, tenant_id, severity,
               correlation_id, data
        FROM vibes_events
        WHERE "offset" >= ${from} AND "offset" <= ${upTo}
          ${globs.length > 0 ? sql`AND type ~ ANY(${globs}::text[])` : sql``}
          ${filter.sessionId !== undefined ? sql`AND session_id = ${filter.sessionId}` : sql``}
          ${filter.jobId !== undefined ? sql`AND job_id = ${filter.jobId}` : sql``}
          ${filter.tenantId !== undefined ? sql`AND tenant_id = ${filter.tenantId}` : sql``}
        ORDER BY "offset"
        LIMIT ${limit}`.pipe(
        Effect.map((rows) => rows.map(storedOf)),
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
            Effect.mapError((error) => new EventLogError({ message: describe(error) }))
          )
      }
    }

    const subscribe = (from: From, filter: EventFilter) =>
      Stream.unwrap(
        Effect.gen(function* () {
          const compiled = yield* compile(filter)
          let next = yield* startOffset(from)
          // One page after `next`, up to the head seen now; None once `next` is past the head.
          const nextPage = Effect.gen(function* () {
            const current = yield* SubscriptionRef.get(head)
            if (current < next) return Option.none<ReadonlyArray<StoredEvent>>()
            const rows = yield* page(next, current, compiled, pageSize)
            // Rows skipped by the filter still move `next` on, up to the head we saw.
            next = rows.length === pageSize ? (rows[rows.length - 1]?.offset ?? current) + 1 : current + 1
            return Option.some(rows)
          })
          const moved = head.changes.pipe(Stream.filter((h) => h >= next))
          if (options.catchUp === "one-page") {
            return moved.pipe(
              Stream.mapEffect(() =>
                Effect.map(
                  nextPage,
                  Option.getOrElse(() => [])
                )
              ),
              Stream.flattenIterables
            )
          }
          // Page after page until caught up with the head, then wait for it to move again.
          const catchUp = Stream.repeatEffectChunkOption(
            nextPage.pipe(
              Effect.mapError(Option.some),
              Effect.flatMap(
                Option.match({
                  onNone: () => Effect.fail(Option.none()),
                  onSome: (rows) => Effect.succeed(Chunk.unsafeFromArray(rows))
                })
              )
            )
          )
          return moved.pipe(
            Stream.flatMap(() =>
              options.prefetch > 0 ? Stream.bufferChunks(catchUp, { capacity: options.prefetch }) : catchUp
            )
          )
        })
      )

    const log: BenchedLog = { append, read, subscribe, head: SubscriptionRef.get(head) }
    return log
  })

const compileGlobSql = (glob: string): string =>
  Either.match(compileGlob(glob), { onLeft: () => "^$", onRight: (regex) => regex.source })
