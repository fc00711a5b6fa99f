/**
 * Writes one session's history to the event log in order: output coalesced into `session.output`
 * events that carry the raw bytes (flushed after `flushAfter` or at `maxChunkBytes`), snapshots and lifecycle events
 * between them exactly where they happened. An append that fails for now (the database is away)
 * is retried until it succeeds, so nothing handed to the recorder is dropped; an event the log
 * refuses for good (too large, text it cannot store) is recorded as an `event.dropped` marker in
 * its place and logged, and the rest goes on. A caller that must know its event is durable awaits
 * `flush`.
 */
import { Deferred, Duration, Effect, Queue, Schedule, type Scope } from "effect"
import { NewEvent, type Severity } from "../../rpc/Events.js"
import { type AppendError, appendOrMark, EventLog } from "../../infra/eventlog/EventLog.js"

/** One session's history writer. */
export interface Recorder {
  /** Records output bytes that start at session sequence number `seq`. */
  readonly output: (seq: number, data: Uint8Array) => void
  /** Records an event after everything recorded so far. */
  readonly event: (type: string, data: unknown, severity?: Severity) => void
  /** Resolves once everything recorded so far is durable. */
  readonly flush: Effect.Effect<void>
  /** Bytes of output waiting to be written (for backpressure on the producer). */
  readonly backlog: () => number
  /** Sequence number of the first byte not yet durable. */
  readonly recordedSeq: () => number
}

type Item =
  | { readonly _tag: "Output"; readonly seq: number; readonly data: Uint8Array }
  | { readonly _tag: "Event"; readonly type: string; readonly data: unknown; readonly severity: Severity }

/** Options of a recorder. */
export interface Options {
  readonly sessionId: string
  readonly nodeId: string
  /** Sequence number of the first byte this recorder will be given. */
  readonly startSeq: number
  readonly flushAfter?: Duration.DurationInput
  readonly maxChunkBytes?: number
}

/** A recorder whose writer fiber lives in the current scope; closing it writes what is pending. */
export const make = (options: Options): Effect.Effect<Recorder, never, EventLog | Scope.Scope> =>
  Effect.gen(function* () {
    const log = yield* EventLog
    const flushAfter = Duration.decode(options.flushAfter ?? "16 millis")
    const maxChunk = options.maxChunkBytes ?? 64 * 1024
    const source = { nodeId: options.nodeId, component: "session" }
    let pending: Array<Item> = []
    let pendingBytes = 0
    let enqueued = 0
    let written = 0
    let recorded = options.startSeq
    const waiters: Array<{ readonly upTo: number; readonly done: Deferred.Deferred<void> }> = []
    const doorbell = yield* Queue.sliding<void>(1)
    const full = yield* Queue.sliding<void>(1)

    const ring = () => Queue.unsafeOffer(doorbell, undefined)

    const toEvents = (items: ReadonlyArray<Item>): Array<NewEvent> => {
      const events: Array<NewEvent> = []
      let run: { seq: number; parts: Array<Uint8Array>; bytes: number } | undefined
      const endRun = () => {
        if (run === undefined) return
        const bytes = Buffer.concat(run.parts, run.bytes)
        for (let at = 0; at < bytes.length; at += maxChunk) {
          events.push(
            NewEvent.make({
              type: "session.output",
              source,
              sessionId: options.sessionId,
              data: { seq: run.seq + at },
              bytes: bytes.subarray(at, at + maxChunk)
            })
          )
        }
        run = undefined
      }
      for (const item of items) {
        if (item._tag === "Output") {
          if (run !== undefined && run.seq + run.bytes === item.seq) {
            run.parts.push(item.data)
            run.bytes += item.data.length
          } else {
            endRun()
            run = { seq: item.seq, parts: [item.data], bytes: item.data.length }
          }
        } else {
          endRun()
          events.push(
            NewEvent.make({
              type: item.type,
              source,
              sessionId: options.sessionId,
              severity: item.severity,
              data: item.data
            })
          )
        }
      }
      endRun()
      return events
    }

    // A transient failure (the database is away) is retried until it passes; an event the log
    // refuses for good is replaced by an `event.dropped` marker, so the rest is recorded.
    const untilRecorded = Schedule.exponential("200 millis").pipe(
      Schedule.union(Schedule.spaced("5 seconds")),
      Schedule.tapInput((error: AppendError) =>
        Effect.logWarning(`session ${options.sessionId}: cannot record history yet: ${error.message}`)
      )
    )
    const appendForever = (events: ReadonlyArray<NewEvent>) =>
      appendOrMark(log, events, untilRecorded).pipe(Effect.orDie)

    const writeOnce = Effect.gen(function* () {
      if (pending.length === 0) return
      const items = pending
      pending = []
      pendingBytes = 0
      yield* appendForever(toEvents(items))
      written += items.length
      for (const item of items) if (item._tag === "Output") recorded = item.seq + item.data.length
      for (let i = waiters.length - 1; i >= 0; i--) {
        const waiter = waiters[i]
        if (waiter !== undefined && waiter.upTo <= written) {
          waiters.splice(i, 1)
          yield* Deferred.succeed(waiter.done, undefined)
        }
      }
    })

    const writer = Effect.gen(function* () {
      yield* Queue.take(doorbell)
      if (pendingBytes < maxChunk) yield* Effect.raceFirst(Effect.sleep(flushAfter), Queue.take(full))
      yield* writeOnce
    }).pipe(Effect.forever)

    yield* Effect.forkScoped(writer)
    // Whatever is pending when the scope closes is still written (bounded, so shutdown cannot hang).
    yield* Effect.addFinalizer(() => writeOnce.pipe(Effect.timeout("5 seconds"), Effect.ignore))

    const push = (item: Item, bytes: number) => {
      pending.push(item)
      pendingBytes += bytes
      enqueued++
      ring()
      if (pendingBytes >= maxChunk) Queue.unsafeOffer(full, undefined)
    }

    return {
      output: (seq, data) => push({ _tag: "Output", seq, data }, data.length),
      event: (type, data, severity = "info") => push({ _tag: "Event", type, data, severity }, 0),
      flush: Effect.suspend(() => {
        if (written >= enqueued) return Effect.void
        return Effect.flatMap(Deferred.make<void>(), (done) => {
          waiters.push({ upTo: enqueued, done })
          Queue.unsafeOffer(full, undefined)
          return Deferred.await(done)
        })
      }),
      backlog: () => pendingBytes,
      recordedSeq: () => recorded
    } satisfies Recorder
  })
