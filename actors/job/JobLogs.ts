/**
 * Job output: one writer for the whole node turns chunks into `job.log` events, in batches, and
 * hands them to the node's followers once they are durable. The event is the only record of a
 * chunk: the job log API, followers and event subscribers all read it, on either event backend.
 *
 * Every running job hands its chunks to `write` (which waits when the writer is 64 Ki chunks
 * behind, so a flood slows the job's pipe instead of growing memory). The writer takes whatever is
 * waiting and appends it as one batch, so latency under light load is one append and throughput
 * under heavy load grows with the batch. A batch that fails for now (a lost connection) is retried
 * 3 times; one the log refuses for good is appended event by event, and each refused event is
 * replaced by an `event.dropped` marker (as `appendOrMark` does), so output is never dropped silently.
 * Chunks are stored as text: NUL and unpaired surrogates become U+FFFD.
 *
 * Followers read stored events first and then live items; a sequence gap (a follower that fell
 * behind has its oldest live items dropped) is filled from the log. A chunk's place is its `seq`
 * within the job; a chunk appended twice (an append retried after its reply was lost) is read once.
 */
import {
  Chunk,
  Context,
  DateTime,
  Deferred,
  Duration,
  Effect,
  Either,
  Layer,
  Metric,
  Option,
  Queue,
  Schedule,
  Schema,
  Stream
} from "effect"
import {
  compileGlob,
  EventFilter,
  NewEvent,
  type Offset,
  payloads,
  type StoredEvent,
  newEvent
} from "../../rpc/Events.js"
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
import {
  type AppendError,
  droppedMarker,
  EventLog,
  type EventRejected,
  type EventTooLarge,
  isPermanent,
  RetentionPolicy
} from "../../infra/eventlog/EventLog.js"
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

/** The longest chunk stored in one row (and one event), in UTF-16 code units. */
export const maxChunkChars = 32 * 1024

const writerBacklog = 64 * 1024
const batchSize = 2048
const followerBuffer = 4096
const pageSize = 1000

const chunksWritten = Metric.counter("vibes_job_log_chunks_total", {
  description: "Job output chunks stored as job.log events",
  incremental: true
})
const chunksFailed = Metric.counter("vibes_job_log_write_failures_total", {
  description: "Job output chunks that could not be stored (after 3 retries, or refused by the log)",
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

/** A stored chunk and, when known, the offset of its event (where a follower may read on from). */
interface Stored {
  readonly log: JobLog
  readonly offset: number | undefined
}

/** What a follower's inbox holds: output, progress, and the end (with the last sequence number). */
type Live =
  | { readonly _tag: "Stored"; readonly stored: Stored }
  | JobProgress
  | JobDone
  | { readonly _tag: "End"; readonly done: JobDone; readonly lastSeq: number }

// Entries are typed already: no revalidation.
const toLog = (entry: Entry) =>
  new JobLog(
    { seq: entry.seq, stream: entry.stream, chunk: entry.chunk, ts: DateTime.unsafeMake(entry.ts) },
    true
  )

const decodeLogData = Schema.decodeUnknownOption(payloads["job.log"])

/** A `job.log` event as the chunk it holds (`None` for a payload that is not one). */
const fromEvent = (event: StoredEvent): Option.Option<Stored> =>
  Option.flatMap(decodeLogData(event.data), (data) =>
    Option.map(DateTime.make(data.ts), (ts) => ({
      log: new JobLog({ seq: data.seq, stream: data.stream, chunk: data.chunk, ts }, true),
      offset: event.offset
    }))
  )

/** The events of one job's output. */
export const logFilter = (jobId: string) => EventFilter.make({ types: ["job.log"], jobId })

/** Job output kept at most, oldest going first, whatever the jobs' age (a backstop for disk). */
export const jobLogCap = 2 * 1024 * 1024 * 1024

/**
 * Job output is kept as long as finished jobs are: the event retention policy that deletes
 * `job.log` events older than `maxAge` (and beyond `jobLogCap`), added to `policies` unless one of
 * them names `job.log` already (an operator's own policy for it wins).
 */
export const withRetention = (
  policies: ReadonlyArray<RetentionPolicy>,
  maxAge: Duration.Duration
): ReadonlyArray<RetentionPolicy> =>
  policies.some((policy) => policy.types.some((glob) => globMatches(glob, "job.log")))
    ? policies
    : [
        ...policies,
        RetentionPolicy.make({
          types: ["job.log"],
          maxAgeMillis: Duration.toMillis(maxAge),
          maxBytes: jobLogCap
        })
      ]

const globMatches = (glob: string, type: string) =>
  Either.match(compileGlob(glob), { onLeft: () => false, onRight: (regex) => regex.test(type) })

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

/** The writer on the node's event log; `nodeId` is the events' source. */
export const layer = (nodeId: string) =>
  Layer.scoped(
    JobLogs,
    Effect.gen(function* () {
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

      const toEvent = (entry: Entry) =>
        newEvent(
          "job.log",
          {
            jobId: entry.jobId,
            seq: entry.seq,
            stream: entry.stream,
            chunk: entry.chunk,
            ts: entry.ts.toISOString()
          },
          { source: { nodeId, component: "job" }, jobId: entry.jobId }
        )

      const retry3 = Schedule.intersect(Schedule.exponential("50 millis"), Schedule.recurs(3))

      const attempt = (events: ReadonlyArray<NewEvent>) =>
        log
          .append(events)
          .pipe(Effect.retry({ schedule: retry3, while: (error: AppendError) => !isPermanent(error) }))

      /**
       * Appends the batch; the offset each entry got, or `undefined` where it has none (refused
       * for good, so an `event.dropped` marker took its place; or not stored at all).
       */
      const append = (entries: ReadonlyArray<Entry>): Effect.Effect<ReadonlyArray<Offset | undefined>> =>
        attempt(entries.map(toEvent)).pipe(
          Effect.tap(() => Metric.incrementBy(chunksWritten, entries.length)),
          Effect.catchAll((error) =>
            isPermanent(error) && entries.length > 1
              ? // Each on its own, so that only what is refused is left out.
                Effect.map(
                  Effect.forEach(entries, (entry) => append([entry])),
                  (offsets) => offsets.flat()
                )
              : isPermanent(error)
                ? Effect.as(
                    dropped(entries, error),
                    entries.map(() => undefined)
                  )
                : Effect.as(
                    failed(entries, error.message),
                    entries.map(() => undefined)
                  )
          )
        )

      /** A refused chunk: an `event.dropped` marker in its place, a log line, the failure counted. */
      const dropped = (entries: ReadonlyArray<Entry>, error: EventTooLarge | EventRejected) =>
        Effect.forEach(entries, (entry) =>
          Effect.logError(`the event log refused a job output chunk for good: ${error.message}`).pipe(
            Effect.annotateLogs({ jobId: entry.jobId, seq: entry.seq }),
            Effect.zipRight(Metric.increment(chunksFailed)),
            Effect.zipRight(attempt([droppedMarker(toEvent(entry), error)])),
            Effect.catchAll((again) =>
              Effect.logError(`could not record the event.dropped marker either: ${again.message}`)
            )
          )
        )

      const failed = (entries: ReadonlyArray<Entry>, why: string) =>
        Effect.logError(`could not store ${entries.length} job output chunks after 3 retries: ${why}`).pipe(
          Effect.annotateLogs({ jobIds: [...new Set(entries.map((e) => e.jobId))].join(",") }),
          Effect.zipRight(Metric.incrementBy(chunksFailed, entries.length))
        )

      const store_ = (entries: ReadonlyArray<Entry>) =>
        Effect.gen(function* () {
          const offsets = yield* append(entries)
          // Followers get the output once it is durable (or known lost: they still see it live).
          const byJob = new Map<string, Array<Live>>()
          entries.forEach((entry, i) => {
            const item: Live = { _tag: "Stored", stored: { log: toLog(entry), offset: offsets[i] } }
            const list = byJob.get(entry.jobId)
            if (list === undefined) byJob.set(entry.jobId, [item])
            else list.push(item)
          })
          for (const [jobId, items] of byJob) yield* deliver(jobId, items)
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

      const unavailable = (error: { readonly message: string }) =>
        new JobsUnavailable({ message: `could not read job output: ${error.message}` })

      /**
       * A page of the job's stored chunks: those after sequence number `after` among the next
       * `limit` events from offset `from`, and the offset to read on from (`None` at the end).
       */
      const page = (jobId: string, after: number, from: number, limit: number) =>
        log.read(from, logFilter(jobId), limit).pipe(
          Effect.map((events) => {
            const logs: Array<JobLog> = []
            let seq = after
            for (const event of events) {
              const stored = fromEvent(event)
              // Each chunk once, in order: a repeat (a retried append) is skipped.
              if (Option.isSome(stored) && stored.value.log.seq > seq) {
                seq = stored.value.log.seq
                logs.push(stored.value.log)
              }
            }
            const last = events[events.length - 1]
            return {
              logs,
              next:
                events.length < limit || last === undefined
                  ? Option.none<number>()
                  : Option.some(last.offset + 1)
            }
          }),
          Effect.mapError(unavailable)
        )

      /** Every stored chunk after sequence number `after`, reading the log from offset `from`. */
      const stored = (jobId: string, after: number, from = 1): Stream.Stream<JobLog, JobsUnavailable> =>
        Stream.paginateChunkEffect({ after, from }, (cursor) =>
          Effect.map(page(jobId, cursor.after, cursor.from, pageSize), ({ logs, next }) => {
            const last = logs[logs.length - 1]
            const after_ = last === undefined ? cursor.after : last.seq
            return [
              Chunk.unsafeFromArray(logs),
              Option.map(next, (from_) => ({ after: after_, from: from_ }))
            ] as const
          })
        )

      /** Reads stored chunks after `after` up to and including sequence number `upTo` (or all, without). */
      const readUpTo = (jobId: string, after: number, from: number, upTo: number | undefined) =>
        stored(jobId, after, from).pipe(
          upTo === undefined ? (s) => s : Stream.takeUntil((l: JobLog) => l.seq >= upTo),
          Stream.runCollect,
          Effect.map(Chunk.toReadonlyArray)
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
            // The last chunk handed on, and the offset from which the log holds what comes after it.
            let last = after
            let from = 1
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
                    if (item._tag === "Stored") {
                      const { log: chunk, offset } = item.stored
                      if (chunk.seq <= last) continue
                      if (chunk.seq === last + 1) {
                        last = chunk.seq
                        out.push(chunk)
                      } else {
                        // A gap: this follower fell behind and lost live items; the log has them.
                        out.push(...track(yield* readUpTo(jobId, last, from, chunk.seq)))
                      }
                      if (offset !== undefined && chunk.seq <= last) from = offset + 1
                    } else if (item._tag === "JobProgress") {
                      out.push(item)
                    } else {
                      // The end: whatever was stored after the last item seen, then the status.
                      const lastSeq = item._tag === "End" ? item.lastSeq : undefined
                      if (lastSeq === undefined || last < lastSeq) {
                        out.push(...track(yield* readUpTo(jobId, last, from, lastSeq)))
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
          log.readBackward(Number.MAX_SAFE_INTEGER, logFilter(jobId), 1).pipe(
            Effect.map((events) => {
              const newest = events[0]
              return newest === undefined
                ? 0
                : Option.match(fromEvent(newest), { onNone: () => 0, onSome: (s) => s.log.seq })
            }),
            Effect.mapError(unavailable)
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
