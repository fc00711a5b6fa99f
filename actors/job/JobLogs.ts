/**
 * Job output: one writer for the whole node turns chunks into `job_events` rows and `job.log`
 * events, in batches, and hands them to the node's followers once stored.
 *
 * Every running job hands its chunks to `write` (which waits when the writer is 64 Ki chunks
 * behind, so a flood slows the job's pipe instead of growing memory). The writer takes whatever is
 * waiting, inserts it in one statement and appends the events in one batch, so latency under light
 * load is one round trip and throughput under heavy load grows with the batch. An insert that fails
 * for now (a lost connection) is retried 3 times; one the database refuses for good is not
 * retried: its chunks are inserted one by one, so only the refused ones are lost. Each chunk that
 * could not be stored becomes an error-severity `job.log` event instead (and a log line), so output
 * is never dropped silently. Chunks are stored as text: NUL and unpaired surrogates become U+FFFD.
 *
 * Followers read stored rows first and then live items; a sequence gap (a follower that fell
 * behind has its oldest live items dropped) is filled from the table.
 */
import {
  Chunk,
  Context,
  DateTime,
  Deferred,
  Effect,
  Exit,
  Layer,
  Metric,
  Option,
  Queue,
  Schedule,
  Scope,
  Stream
} from "effect"
import { SqlClient } from "@effect/sql/SqlClient"
import type { Connection } from "@effect/sql/SqlConnection"
import type { Statement } from "@effect/sql/Statement"
import { NewEvent } from "../../rpc/Events.js"
import {
  JobDone,
  JobLog,
  type JobOutput,
  type JobProgress,
  JobsUnavailable,
  isFinal,
  type LogStream,
  type JobNotFound
} from "../../rpc/Jobs.js"
import { isPermanentSqlError } from "../../infra/db/Db.js"
import { appendOrMark, EventLog } from "../../infra/eventlog/EventLog.js"
import { isStorable, toStorable } from "../../rpc/Text.js"
import { JobStore } from "./JobStore.js"

/** One chunk of output. */
export interface Entry {
  readonly jobId: string
  readonly seq: number
  readonly stream: LogStream
  readonly chunk: string
  readonly ts: Date
}

/** What a follower's inbox holds: output, progress, and the end (with the last sequence number). */
type Live = JobOutput | { readonly _tag: "End"; readonly done: JobDone; readonly lastSeq: number }

/** The longest chunk stored in one row (and one event), in UTF-16 code units. */
export const maxChunkChars = 32 * 1024

const writerBacklog = 64 * 1024
const batchSize = 2048
const followerBuffer = 4096
const pageSize = 1000

const chunksWritten = Metric.counter("vibes_job_log_chunks_total", {
  description: "Job output chunks stored in job_events",
  incremental: true
})
const chunksFailed = Metric.counter("vibes_job_log_write_failures_total", {
  description: "Job output chunks that could not be stored after 3 retries (kept as error events)",
  incremental: true
})

/** Postgres text cannot hold NUL nor an unpaired surrogate; each is stored as U+FFFD. */
export const sanitize = (text: string): string => toStorable(text)

/**
 * `text` in pieces of at most `max` UTF-16 units (`maxChunkChars` by default), never splitting a
 * surrogate pair: half a pair alone is not storable text.
 */
export const split = (text: string, max: number = maxChunkChars): Array<string> => {
  const pieces: Array<string> = []
  for (let at = 0; at < text.length;) {
    let end = Math.min(text.length, at + max)
    const last = text.charCodeAt(end - 1)
    if (end < text.length && end - at > 1 && last >= 0xd800 && last <= 0xdbff) end--
    pieces.push(text.slice(at, end))
    at = end
  }
  return pieces
}

type Item =
  | { readonly _tag: "Entry"; readonly entry: Entry }
  | { readonly _tag: "Flush"; readonly done: Deferred.Deferred<void> }

interface Row {
  readonly seq: string | number
  readonly stream: LogStream
  readonly chunk: string
  readonly ts: Date
}

// Rows and entries are typed already (the table's CHECK constraints guard `stream`): no revalidation.
const toLog = (row: Row) =>
  new JobLog(
    { seq: Number(row.seq), stream: row.stream, chunk: row.chunk, ts: DateTime.unsafeMake(row.ts) },
    true
  )

/** The node's job output writer and follower hub. */
export class JobLogs extends Context.Tag("vibes/JobLogs")<
  JobLogs,
  {
    /** Queues a chunk for storage (made storable: see `sanitize`); waits only when the writer is far behind. */
    readonly write: (entry: Entry) => Effect.Effect<void>
    /** Resolves once everything queued before it is stored (or recorded as failed). */
    readonly flush: Effect.Effect<void>
    /**
     * Hands a progress or end marker to the job's followers on this node; with the end, the
     * sequence number of the job's last chunk (when known), so followers that have it read nothing.
     */
    readonly publish: (jobId: string, item: JobProgress | JobDone, lastSeq?: number) => Effect.Effect<void>
    /** The highest sequence number stored for a job (0 when none). */
    readonly lastSeq: (jobId: string) => Effect.Effect<number, JobsUnavailable>
    /**
     * Stored output after `after`, then (with `follow`) live output until the job ends; closes
     * with the job's `JobDone` once it is final.
     */
    readonly stream: (
      jobId: string,
      after: number,
      follow: boolean
    ) => Stream.Stream<JobOutput, JobsUnavailable | JobNotFound>
  }
>() {}

/** The writer on the node's SQL client and event log; `nodeId` is the events' source. */
export const layer = (nodeId: string) =>
  Layer.scoped(
    JobLogs,
    Effect.gen(function* () {
      const sql = yield* SqlClient
      const log = yield* EventLog
      const store = yield* JobStore
      const queue = yield* Queue.bounded<Item>(writerBacklog)
      const followers = new Map<string, Set<Queue.Queue<Live>>>()

      // `Queue.offer` applies the sliding strategy (the oldest item goes, never the newest, so the
      // end always arrives); `unsafeOffer` would drop the new item instead. It never waits.
      const deliver = (jobId: string, items: ReadonlyArray<Live>) =>
        Effect.suspend(() => {
          const set = followers.get(jobId)
          return set === undefined
            ? Effect.void
            : Effect.forEach(set, (follower) => Queue.offerAll(follower, items), { discard: true })
        })

      const toEvent = (entry: Entry, stored: boolean) =>
        NewEvent.make(
          {
            type: "job.log",
            source: { nodeId, component: "job" },
            jobId: entry.jobId,
            ...(stored ? {} : { severity: "error" as const }),
            data: {
              jobId: entry.jobId,
              seq: entry.seq,
              stream: entry.stream,
              chunk: entry.chunk,
              ts: entry.ts.toISOString(),
              ...(stored ? {} : { stored: false })
            }
          },
          // Built from a typed entry: no revalidation.
          true
        )

      const retry3 = Schedule.intersect(Schedule.exponential("50 millis"), Schedule.recurs(3))

      // The writer keeps a connection of its own, so that output is stored (and reaches its
      // followers) without queueing behind the pool when many jobs start or end at once. A
      // connection that fails is given back and another one taken for the next try.
      let held: { readonly connection: Connection; readonly scope: Scope.CloseableScope } | undefined
      const release = Effect.suspend(() => {
        const current = held
        held = undefined
        return current === undefined ? Effect.void : Scope.close(current.scope, Exit.void)
      })
      yield* Effect.addFinalizer(() => release)
      const onWriterConnection = (statement: Statement<unknown>) =>
        Effect.gen(function* () {
          if (held === undefined) {
            const scope = yield* Scope.make()
            const connection = yield* Scope.extend(sql.reserve, scope).pipe(
              Effect.tapError(() => Scope.close(scope, Exit.void))
            )
            held = { connection, scope }
          }
          const [text, params] = statement.compile()
          return yield* held.connection.execute(text, params, undefined).pipe(Effect.tapError(() => release))
        })

      const insert = (entries: ReadonlyArray<Entry>) =>
        onWriterConnection(sql`
          INSERT INTO job_events ${sql.insert(
            entries.map((e) => ({
              job_id: e.jobId,
              seq: e.seq,
              ts: e.ts,
              stream: e.stream,
              chunk: e.chunk
            }))
          )}
          ON CONFLICT (job_id, seq) DO NOTHING
        `).pipe(
          // Only what may pass on a later try is tried again; a refused row never will.
          Effect.retry({ schedule: retry3, while: (error) => !isPermanentSqlError(error) })
        )

      /** Which entries were stored: all, or (when the batch was refused for good) those that go alone. */
      const insertOrSplit = (entries: ReadonlyArray<Entry>): Effect.Effect<ReadonlyArray<boolean>> =>
        insert(entries).pipe(
          Effect.as(entries.map(() => true)),
          Effect.catchAll((error) =>
            isPermanentSqlError(error) && entries.length > 1
              ? Effect.forEach(entries, (entry) =>
                  Effect.map(insertOrSplit([entry]), (stored) => stored[0] ?? false)
                )
              : Effect.as(
                  Effect.logError(
                    isPermanentSqlError(error)
                      ? `the database refused a job output chunk: ${error.message}`
                      : `could not store ${entries.length} job output chunks after 3 retries: ${error.message}`
                  ).pipe(
                    Effect.annotateLogs({
                      jobIds: [...new Set(entries.map((e) => e.jobId))].join(","),
                      chunks: JSON.stringify(
                        entries.map((e) => ({ jobId: e.jobId, seq: e.seq, chunk: e.chunk }))
                      )
                    })
                  ),
                  entries.map(() => false)
                )
          )
        )

      const store_ = (entries: ReadonlyArray<Entry>) =>
        Effect.gen(function* () {
          const stored = yield* insertOrSplit(entries)
          const written = stored.filter((ok) => ok).length
          yield* Metric.incrementBy(chunksWritten, written)
          yield* Metric.incrementBy(chunksFailed, entries.length - written)
          // Followers get the output once it is stored, before the events are appended.
          const byJob = new Map<string, Array<Live>>()
          for (const entry of entries) {
            const list = byJob.get(entry.jobId)
            if (list === undefined) byJob.set(entry.jobId, [toLog(entry)])
            else list.push(toLog(entry))
          }
          for (const [jobId, items] of byJob) yield* deliver(jobId, items)
          // An event the log refuses for good is replaced by an `event.dropped` marker; the rest go in.
          yield* appendOrMark(
            log,
            entries.map((entry, i) => toEvent(entry, stored[i] ?? false)),
            retry3
          ).pipe(
            Effect.catchAll((error) =>
              Effect.logWarning(`could not record ${entries.length} job.log events: ${error.message}`)
            )
          )
        })

      const writer = Effect.gen(function* () {
        const items = yield* Queue.takeBetween(queue, 1, batchSize)
        // A batch taken is a batch written, even when the node stops meanwhile.
        yield* Effect.uninterruptible(handle(items))
      }).pipe(Effect.forever)
      const handle = (items: Iterable<Item>) =>
        Effect.gen(function* () {
          // One write for the whole batch: a flush resolves once everything taken with it is
          // stored, which includes all that was queued before it.
          const entries: Array<Entry> = []
          const flushes: Array<Deferred.Deferred<void>> = []
          for (const item of items) {
            if (item._tag === "Entry") entries.push(item.entry)
            else flushes.push(item.done)
          }
          if (entries.length > 0) yield* store_(entries)
          for (const done of flushes) yield* Deferred.succeed(done, undefined)
        })
      yield* Effect.forkScoped(Effect.interruptible(writer))
      // Whatever is queued at shutdown is still written.
      yield* Effect.addFinalizer(() => Effect.flatMap(Queue.takeAll(queue), handle))

      const readAfter = (jobId: string, after: number, limit: number) =>
        sql<Row>`
          SELECT seq, stream, chunk, ts FROM job_events WHERE job_id = ${jobId} AND seq > ${after}
          ORDER BY seq LIMIT ${limit}
        `.pipe(
          Effect.map((rows) => rows.map(toLog)),
          Effect.mapError(
            (error) => new JobsUnavailable({ message: `could not read job output: ${error.message}` })
          )
        )

      /** Every stored chunk after `after`, page by page. */
      const stored = (jobId: string, after: number): Stream.Stream<JobLog, JobsUnavailable> =>
        Stream.paginateChunkEffect(after, (from) =>
          Effect.map(readAfter(jobId, from, pageSize), (logs) => {
            const last = logs[logs.length - 1]
            return [
              Chunk.unsafeFromArray(logs),
              logs.length < pageSize || last === undefined ? Option.none<number>() : Option.some(last.seq)
            ] as const
          })
        )

      const follow = (
        jobId: string,
        after: number
      ): Stream.Stream<JobOutput, JobsUnavailable | JobNotFound> =>
        Stream.unwrapScoped(
          Effect.gen(function* () {
            const inbox = yield* Effect.acquireRelease(
              Effect.tap(Queue.sliding<Live>(followerBuffer), (q) =>
                Effect.sync(() => {
                  const set = followers.get(jobId) ?? new Set()
                  set.add(q)
                  followers.set(jobId, set)
                })
              ),
              (q) =>
                Effect.sync(() => {
                  const set = followers.get(jobId)
                  set?.delete(q)
                  if (set !== undefined && set.size === 0) followers.delete(jobId)
                })
            )
            const job = yield* store.getOrFail(jobId)
            let last = after
            const track = (logs: ReadonlyArray<JobLog>) => {
              const fresh = logs.filter((l) => l.seq > last)
              const tail = fresh[fresh.length - 1]
              if (tail !== undefined) last = tail.seq
              return fresh
            }
            const backlog = stored(jobId, after).pipe(Stream.tap((l) => Effect.sync(() => (last = l.seq))))
            if (isFinal(job.info.status)) {
              const info = job.info
              return Stream.concat(
                backlog,
                Stream.succeed(
                  new JobDone({ status: info.status, exitCode: info.exitCode, signal: info.signal })
                )
              )
            }
            // Whole chunks of live items at a time (a busy node hands a follower many at once).
            const live = Stream.fromQueue(inbox).pipe(
              Stream.mapChunksEffect((items) =>
                Effect.gen(function* () {
                  const out: Array<JobOutput> = []
                  for (const item of items) {
                    if (item._tag === "JobLog") {
                      if (item.seq <= last) continue
                      if (item.seq === last + 1) {
                        last = item.seq
                        out.push(item)
                      } else {
                        // A gap: this follower fell behind and lost live items; the table has them.
                        out.push(...track(yield* readAfter(jobId, last, item.seq - last)))
                      }
                    } else if (item._tag === "JobProgress") {
                      out.push(item)
                    } else {
                      // The end: whatever was stored after the last item seen, then the status.
                      const lastSeq = item._tag === "End" ? item.lastSeq : undefined
                      while (lastSeq === undefined || last < lastSeq) {
                        const page = track(yield* readAfter(jobId, last, pageSize))
                        out.push(...page)
                        if (page.length < pageSize) break
                      }
                      out.push(item._tag === "End" ? item.done : item)
                      break
                    }
                  }
                  return Chunk.unsafeFromArray(out)
                })
              ),
              Stream.takeUntil((item) => item._tag === "JobDone")
            )
            return Stream.concat(backlog, live)
          })
        )

      return JobLogs.of({
        write: (entry) =>
          Queue.offer(queue, {
            _tag: "Entry",
            entry: isStorable(entry.chunk) ? entry : { ...entry, chunk: sanitize(entry.chunk) }
          }),
        flush: Effect.flatMap(Deferred.make<void>(), (done) =>
          Effect.zipRight(Queue.offer(queue, { _tag: "Flush", done }), Deferred.await(done))
        ),
        publish: (jobId, item, lastSeq) =>
          deliver(jobId, [
            item._tag === "JobDone" && lastSeq !== undefined ? { _tag: "End", done: item, lastSeq } : item
          ]),
        lastSeq: (jobId) =>
          sql<{ readonly seq: string | number | null }>`
            SELECT max(seq) AS seq FROM job_events WHERE job_id = ${jobId}
          `.pipe(
            Effect.map((rows) => Number(rows[0]?.seq ?? 0)),
            Effect.mapError(
              (error) => new JobsUnavailable({ message: `could not read job output: ${error.message}` })
            )
          ),
        stream: (jobId, after, follow_) =>
          follow_
            ? follow(jobId, after)
            : Stream.unwrap(
                Effect.map(store.getOrFail(jobId), ({ info }) =>
                  isFinal(info.status)
                    ? Stream.concat(
                        stored(jobId, after),
                        Stream.succeed(
                          new JobDone({ status: info.status, exitCode: info.exitCode, signal: info.signal })
                        )
                      )
                    : stored(jobId, after)
                )
              )
      })
    })
  )
