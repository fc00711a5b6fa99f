/**
 * Writes the sessions' history to the event log: each session's output coalesced into
 * `session.output` events that carry the raw bytes, its snapshots and lifecycle events between
 * them exactly where they happened.
 *
 * One writer per node, not one per session: every session's recorder only queues what it is
 * given (a few small objects per session, no fiber, no queue), and the node's writer appends what
 * all sessions queued as one batch, `flushAfter` (16 ms) after the first of it, or at once when a
 * session has `maxChunkBytes` (64 KiB) waiting or a caller awaits `flush`. With many sessions
 * printing, that is one transaction every 16 ms rather than one per session and chunk.
 *
 * An append that fails for now (the database is away) is retried until it succeeds, so nothing
 * handed to a recorder is dropped; an event the log refuses for good (too large, text it cannot
 * store) is recorded as an `event.dropped` marker in its place and logged, and the rest goes on.
 * A caller that must know its events are durable awaits `flush`.
 */
import { Context, Deferred, Duration, Effect, Layer, Option, Queue, Schedule, type Scope } from "effect"
import { type KnownType, type NewEvent, newEvent, type PayloadOf, type Severity } from "../../rpc/Events.js"
import { type AppendError, appendOrMark, EventLog } from "../../infra/eventlog/EventLog.js"

/** One session's history writer. */
export interface Recorder {
  /** Records output bytes that start at session sequence number `seq`. */
  readonly output: (seq: number, data: Uint8Array) => void
  /** Records an event of a known type after everything recorded so far. */
  readonly event: <T extends KnownType>(type: T, data: PayloadOf<T>, severity?: Severity) => void
  /** Resolves once everything recorded so far is durable. */
  readonly flush: Effect.Effect<void>
  /** Bytes of output waiting to be written (for backpressure on the producer). */
  readonly backlog: () => number
  /** Sequence number of the first byte not yet durable. */
  readonly recordedSeq: () => number
}

type Item =
  | { readonly _tag: "Output"; readonly seq: number; readonly data: Uint8Array }
  | { readonly _tag: "Event"; readonly event: NewEvent }

/** What a session's recorder is given. */
export interface Options {
  readonly sessionId: string
  readonly nodeId: string
  /** Sequence number of the first byte this recorder will be given. */
  readonly startSeq: number
}

/** Tuning of the node's writer. */
export interface WriterOptions {
  readonly flushAfter?: Duration.DurationInput
  /** Most output bytes in one `session.output` event, and a session's backlog that is written at once. */
  readonly maxChunkBytes?: number
  /** Output bytes after which a batch takes no more sessions (the rest go in the next one). */
  readonly maxBatchBytes?: number
}

/** A session's queue, as the writer sees it. */
interface Pending {
  readonly options: Options
  readonly source: { readonly nodeId: string; readonly component: string }
  items: Array<Item>
  bytes: number
  /** Items handed over, and items durable. */
  enqueued: number
  written: number
  /** Sequence number of the first byte not yet durable. */
  recorded: number
  readonly waiters: Array<{ readonly upTo: number; readonly done: Deferred.Deferred<void> }>
}

/** Makes the recorders of this node's sessions. */
export class Recorders extends Context.Tag("vibes/Recorders")<
  Recorders,
  {
    /** A session's recorder; closing the scope writes what it has pending (for at most 5 s). */
    readonly make: (options: Options) => Effect.Effect<Recorder, never, Scope.Scope>
  }
>() {}

/** The node's writer; its fiber lives in the current scope, and closing it writes what is pending. */
export const makeRecorders = (writerOptions: WriterOptions = {}) =>
  Effect.gen(function* () {
    const log = yield* EventLog
    const flushAfter = Duration.decode(writerOptions.flushAfter ?? "16 millis")
    const maxChunk = writerOptions.maxChunkBytes ?? 64 * 1024
    const maxBatch = writerOptions.maxBatchBytes ?? 8 * 1024 * 1024
    /** Sessions with items waiting, in the order they got their first. */
    const dirty = new Set<Pending>()
    const doorbell = yield* Queue.sliding<void>(1)
    const now = yield* Queue.sliding<void>(1)

    const toEvents = (pending: Pending, items: ReadonlyArray<Item>, events: Array<NewEvent>) => {
      const { sessionId } = pending.options
      let run: { seq: number; parts: Array<Uint8Array>; bytes: number } | undefined
      const endRun = () => {
        if (run === undefined) return
        const bytes =
          run.parts.length === 1 ? (run.parts[0] as Uint8Array) : Buffer.concat(run.parts, run.bytes)
        for (let at = 0; at < bytes.length; at += maxChunk) {
          // Built here, so not validated again.
          events.push(
            newEvent(
              "session.output",
              { seq: run.seq + at },
              {
                source: pending.source,
                sessionId,
                tenantId: "default",
                severity: "info",
                bytes: bytes.subarray(at, at + maxChunk)
              }
            )
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
          events.push(item.event)
        }
      }
      endRun()
    }

    // A transient failure (the database is away) is retried until it passes; an event the log
    // refuses for good is replaced by an `event.dropped` marker, so the rest is recorded.
    const untilRecorded = Schedule.exponential("200 millis").pipe(
      Schedule.union(Schedule.spaced("5 seconds")),
      Schedule.tapInput((error: AppendError) =>
        Effect.logWarning(`cannot record session history yet: ${error.message}`)
      )
    )

    /** Appends what the dirty sessions have waiting (up to `maxBatch` bytes of it) as one batch. */
    const writeOnce = Effect.gen(function* () {
      if (dirty.size === 0) return
      const taken: Array<{ readonly pending: Pending; readonly items: ReadonlyArray<Item> }> = []
      const events: Array<NewEvent> = []
      let bytes = 0
      for (const pending of dirty) {
        if (bytes >= maxBatch) break
        dirty.delete(pending)
        const items = pending.items
        bytes += pending.bytes
        pending.items = []
        pending.bytes = 0
        taken.push({ pending, items })
        toEvents(pending, items, events)
      }
      // What did not fit goes in the next batch, at once.
      if (dirty.size > 0) ring(true)
      yield* appendOrMark(log, events, untilRecorded).pipe(Effect.orDie)
      for (const { pending, items } of taken) {
        pending.written += items.length
        for (const item of items) if (item._tag === "Output") pending.recorded = item.seq + item.data.length
        for (let i = pending.waiters.length - 1; i >= 0; i--) {
          const waiter = pending.waiters[i]
          if (waiter !== undefined && waiter.upTo <= pending.written) {
            pending.waiters.splice(i, 1)
            yield* Deferred.succeed(waiter.done, undefined)
          }
        }
      }
    })

    const ring = (immediately: boolean) => {
      Queue.unsafeOffer(doorbell, undefined)
      if (immediately) Queue.unsafeOffer(now, undefined)
    }

    yield* Effect.forkScoped(
      Effect.gen(function* () {
        yield* Queue.take(doorbell)
        if (Option.isNone(yield* Queue.poll(now))) {
          yield* Effect.raceFirst(Effect.sleep(flushAfter), Queue.take(now))
        }
        yield* writeOnce
      }).pipe(Effect.forever)
    )
    // Whatever is pending when the node stops is still written (bounded, so shutdown cannot hang).
    yield* Effect.addFinalizer(() =>
      Effect.whileLoop({
        while: () => dirty.size > 0,
        body: () => writeOnce,
        step: () => undefined
      }).pipe(Effect.timeout("5 seconds"), Effect.ignore)
    )

    const flushOf = (pending: Pending) =>
      Effect.suspend(() => {
        if (pending.written >= pending.enqueued) return Effect.void
        return Effect.flatMap(Deferred.make<void>(), (done) => {
          pending.waiters.push({ upTo: pending.enqueued, done })
          ring(true)
          return Deferred.await(done)
        })
      })

    const make = (options: Options) =>
      Effect.gen(function* () {
        const pending: Pending = {
          options,
          source: { nodeId: options.nodeId, component: "session" },
          items: [],
          bytes: 0,
          enqueued: 0,
          written: 0,
          recorded: options.startSeq,
          waiters: []
        }
        const push = (item: Item, bytes: number) => {
          pending.items.push(item)
          pending.bytes += bytes
          pending.enqueued++
          dirty.add(pending)
          ring(pending.bytes >= maxChunk)
        }
        // What the session has pending when its scope closes is still written (bounded).
        yield* Effect.addFinalizer(() => flushOf(pending).pipe(Effect.timeout("5 seconds"), Effect.ignore))
        return {
          output: (seq, data) => push({ _tag: "Output", seq, data }, data.length),
          event: (type, data, severity = "info") =>
            push(
              {
                _tag: "Event",
                event: newEvent(type, data, {
                  source: pending.source,
                  sessionId: options.sessionId,
                  severity
                })
              },
              0
            ),
          flush: flushOf(pending),
          backlog: () => pending.bytes,
          recordedSeq: () => pending.recorded
        } satisfies Recorder
      })

    return Recorders.of({ make })
  })

/** The node's recorders, on the current event log. */
export const layer = (options?: WriterOptions): Layer.Layer<Recorders, never, EventLog> =>
  Layer.scoped(Recorders, makeRecorders(options))
