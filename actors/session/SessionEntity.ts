/**
 * One terminal session as a cluster entity, keyed by session id.
 *
 * The program runs in a PTY held by the machine's PTY host, so it outlives this entity and the
 * server. The entity reads the PTY's output by sequence number and, for every chunk, in order:
 * fans it out to attached clients, feeds the headless screen model, and hands it to the recorder
 * (coalesced `session.output` events, periodic `session.snapshot`s). Activated again after a
 * restart, it rebuilds the screen from the last snapshot and the output after it, then drains what
 * the program wrote meanwhile from the host's ring. When the host no longer knows the PTY, the
 * exit record a previous host left (`PtyExitRecords`) tells how the program ended, with its last
 * output; without one the session is lost.
 *
 * Several clients may attach; read-only ones cannot write or resize. The PTY follows the size of
 * the client that wrote (or attached, or resized) most recently.
 */
import * as fs from "node:fs"
import {
  Chunk,
  DateTime,
  Deferred,
  Duration,
  Effect,
  ExecutionStrategy,
  Exit,
  Fiber,
  Metric,
  Option,
  Queue,
  Schedule,
  Schema,
  Scope,
  Stream
} from "effect"
import * as ClusterSchema from "@effect/cluster/ClusterSchema"
import * as Entity from "@effect/cluster/Entity"
import * as Rpc from "@effect/rpc/Rpc"
import {
  EventFilter,
  type KnownType,
  maxDataBytes,
  newEvent,
  type PayloadOf,
  type StoredEvent
} from "../../rpc/Events.js"
import { jsonBytes } from "../../rpc/Text.js"
import {
  Attached,
  type AttachEvent,
  checkCreateSession,
  CreateSession,
  Ended,
  InvalidSessionRequest,
  maxDimension,
  maxInputBytes,
  Output,
  ReadOnlyAttachment,
  Reset,
  Resized,
  Screen,
  SessionError,
  SessionInfo,
  SessionPreview,
  SessionNotFound,
  SessionNotRunning,
  SessionSignal,
  SessionUnavailable,
  SpawnFailed
} from "../../rpc/Sessions.js"
import * as Cluster from "../../infra/cluster/Cluster.js"
import { EventLog } from "../../infra/eventlog/EventLog.js"
import { type PtyExitRecord, PtyExitRecords } from "../../infra/pty/PtyExitRecords.js"
import {
  PtyData,
  PtyGap,
  PtyHost,
  type PtyHostUnavailable,
  type PtyNotFound,
  type PtyNotRunning,
  type PtyOutput,
  PtySpec
} from "../../infra/pty/PtyHost.js"
import * as Replies from "../../infra/terminal/Replies.js"
import * as ScreenModel from "../../infra/terminal/ScreenModel.js"
import { ScreenWorkers } from "../../infra/terminal/ScreenWorkers.js"
import { LocalSessions, sessionMoving } from "./LocalSessions.js"
import * as Recorder from "./Recorder.js"
import { type Row, SessionRegistry, toInfo } from "./SessionRegistry.js"
import { SessionSettings } from "./SessionSettings.js"

/** The entity's protocol; the public `Sessions` RPCs route here by session id. */
export const Session = Entity.make("Session", [
  Rpc.make("Create", { payload: CreateSession, success: SessionInfo, error: SessionError }),
  Rpc.make("Input", {
    payload: { data: Schema.Uint8ArrayFromSelf, attachmentId: Schema.optional(Schema.String) },
    error: SessionError
  }),
  Rpc.make("Resize", {
    payload: { cols: Schema.Int, rows: Schema.Int, attachmentId: Schema.optional(Schema.String) },
    error: SessionError
  }),
  Rpc.make("Signal", { payload: { signal: SessionSignal }, error: SessionError }),
  Rpc.make("Close", { success: SessionInfo, error: SessionError }),
  Rpc.make("Attach", {
    payload: {
      cols: Schema.optional(Schema.Int),
      rows: Schema.optional(Schema.Int),
      readOnly: Schema.Boolean,
      from: Schema.optional(Schema.Int),
      scrollback: Schema.optional(Schema.Int)
    },
    success: Schema.Union(Attached, Output, Resized, Reset, Ended),
    error: SessionError,
    stream: true
  }),
  Rpc.make("Snapshot", { success: Screen, error: SessionError }),
  Rpc.make("Info", { success: SessionInfo, error: SessionError }),
  /** The session's preview, or null when it is not running or has not changed since `since`/`idle`. */
  Rpc.make("Preview", {
    payload: { since: Schema.Int, idle: Schema.Boolean },
    success: Schema.NullOr(SessionPreview),
    error: SessionError
  }),
  /** Activates the entity (after a restart) so it reattaches to its PTY and records its output. */
  Rpc.make("Wake", { error: SessionError })
])
  // Every keystroke is a message: a client span each would cost more than the keystroke (the
  // public RPC already has its span).
  .annotateRpcs(ClusterSchema.ClientTracingEnabled, false)
  // A session lives on the machine that holds its PTY; its id names that machine.
  .annotate(ClusterSchema.ShardGroup, (entityId) => Cluster.sessionGroup(entityId))

// Metrics ------------------------------------------------------------------------------------

const liveSessions = Metric.gauge("vibes_sessions_live", {
  description: "Sessions whose program runs under this node"
})
const attachedClients = Metric.gauge("vibes_session_attached_clients", {
  description: "Clients attached to this node's sessions"
})
const outputBytes = Metric.counter("vibes_session_output_bytes_total", {
  description: "Bytes of terminal output this node read from its sessions",
  incremental: true
})

// Helpers ------------------------------------------------------------------------------------

const signalName = { INT: "SIGINT", TERM: "SIGTERM", HUP: "SIGHUP", KILL: "SIGKILL" } as const

/** Bytes of recent output kept for clients that resume by sequence number. */
const replayBytes = 1024 * 1024
/** Kept of the replay buffer once the session is idle (and a snapshot covers the rest). */
const idleReplayBytes = 64 * 1024
/** A client whose stream has this many chunks waiting is sent a fresh screen instead. */
const subscriberChunks = 2048
/** Output the screen model may have queued unparsed before reading waits for it. */
const unparsedLimit = 1024 * 1024
const empty = new Uint8Array(0)
/** The largest serialized screen a `session.snapshot` carries, in bytes of JSON (the rest of the event is small). */
const maxSnapshotBytes = maxDataBytes - 4096
/** Output waiting for the event log beyond which reading from the PTY pauses. */
const recorderBacklog = 8 * 1024 * 1024

const checkSize = (cols: number, rows: number) =>
  Number.isInteger(cols) &&
  Number.isInteger(rows) &&
  cols >= 1 &&
  rows >= 1 &&
  cols <= maxDimension &&
  rows <= maxDimension
    ? Effect.void
    : Effect.fail(
        new InvalidSessionRequest({
          field: "size",
          message: `terminal size ${cols}x${rows} is out of range: columns and rows must be whole numbers from 1 to ${maxDimension}`
        })
      )

/** Joins runs of adjacent `Output` events, so a busy session sends fewer, larger messages. */
const coalesce = (events: Chunk.Chunk<AttachEvent>): Chunk.Chunk<AttachEvent> => {
  if (Chunk.size(events) < 2) return events
  const out: Array<AttachEvent> = []
  let run: Array<Output> = []
  const flush = () => {
    const first = run[0]
    if (first === undefined) return
    out.push(
      run.length === 1
        ? first
        : Output.make({ seq: first.seq, data: Buffer.concat(run.map((event) => event.data)) })
    )
    run = []
  }
  for (const event of events) {
    const last = run[run.length - 1]
    if (event._tag === "Output" && (last === undefined || last.seq + last.data.length === event.seq)) {
      run.push(event)
      continue
    }
    flush()
    if (event._tag === "Output") run.push(event)
    else out.push(event)
  }
  flush()
  return Chunk.unsafeFromArray(out)
}

const decodeBase64 = (text: string) => new Uint8Array(Buffer.from(text, "base64"))

// Output written before raw-byte recording carried its bytes as base64 in `data.bytes`.
const OutputData = Schema.Struct({ seq: Schema.Int, bytes: Schema.optional(Schema.String) })
const SnapshotData = Schema.Struct({
  seq: Schema.Int,
  cols: Schema.Int,
  rows: Schema.Int,
  screen: Schema.String
})
const ResizedData = Schema.Struct({ cols: Schema.Int, rows: Schema.Int })

/** A step of a session's recorded history, as the screen rebuild needs it. */
export type HistoryStep =
  | { readonly _tag: "Output"; readonly seq: number; readonly data: Uint8Array }
  | { readonly _tag: "Resize"; readonly cols: number; readonly rows: number }

/** Turns recorded events into rebuild steps, skipping output before `fromSeq`. */
export const historySteps = (events: ReadonlyArray<StoredEvent>, fromSeq: number): Array<HistoryStep> => {
  const steps: Array<HistoryStep> = []
  for (const event of events) {
    if (event.type === "session.output") {
      const decoded = Schema.decodeUnknownOption(OutputData)(event.data)
      if (Option.isNone(decoded)) continue
      const data =
        event.bytes ?? (decoded.value.bytes !== undefined ? decodeBase64(decoded.value.bytes) : undefined)
      if (data === undefined) continue
      const end = decoded.value.seq + data.length
      if (end <= fromSeq) continue
      const skip = Math.max(0, fromSeq - decoded.value.seq)
      steps.push({ _tag: "Output", seq: decoded.value.seq + skip, data: data.subarray(skip) })
    } else if (event.type === "session.resized") {
      const decoded = Schema.decodeUnknownOption(ResizedData)(event.data)
      if (Option.isSome(decoded)) steps.push({ _tag: "Resize", ...decoded.value })
    }
  }
  return steps
}

/** The newest snapshot of a session at or before `upTo`, with its offset. */
export const latestSnapshot = (sessionId: string, upTo: number) =>
  Effect.flatMap(EventLog, (log) =>
    log.readBackward(upTo, EventFilter.make({ sessionId, types: ["session.snapshot"] }), 1)
  ).pipe(
    Effect.map((events) =>
      Option.flatMap(Option.fromNullable(events[0]), (event) =>
        Option.map(Schema.decodeUnknownOption(SnapshotData)(event.data), (data) => ({
          offset: Number(event.offset),
          ...data
        }))
      )
    )
  )

/** Every output and resize event of a session after `afterOffset` up to `upTo`, in order. */
export const historyAfter = (sessionId: string, afterOffset: number, upTo: number) =>
  Effect.gen(function* () {
    const log = yield* EventLog
    const filter = EventFilter.make({ sessionId, types: ["session.output", "session.resized"] })
    const out: Array<StoredEvent> = []
    let from = afterOffset + 1
    for (;;) {
      const page = yield* log.read(from, filter, 1000)
      for (const event of page) if (Number(event.offset) <= upTo) out.push(event)
      const last = page[page.length - 1]
      if (page.length < 1000 || last === undefined || Number(last.offset) >= upTo) return out
      from = Number(last.offset) + 1
    }
  })

const toScreen = (snapshot: ScreenModel.Snapshot, seq: number) =>
  Screen.make({
    cols: snapshot.cols,
    rows: snapshot.rows,
    text: snapshot.text,
    vt: snapshot.vt,
    cursor: snapshot.cursor,
    altScreen: snapshot.altScreen,
    seq
  })

const unavailable = (sessionId: string) => (error: PtyHostUnavailable) =>
  new SessionUnavailable({ sessionId, message: `the session's terminal is unreachable: ${error.message}` })

// The entity -----------------------------------------------------------------------------------

interface Attachment {
  readonly readOnly: boolean
  cols: number
  rows: number
  /** Replies this client's terminal owes for queries it was sent (they are dropped from its input). */
  readonly owed: Array<{ readonly kind: Replies.ReplyKind; readonly until: number }>
}

/** How long a client's terminal is given to send the automatic reply to a query. */
const replyWithin = 10_000

interface Subscriber {
  readonly queue: Queue.Queue<AttachEvent>
  overflowed: boolean
}

/** The part of a session that exists while its program runs under this entity. */
interface Live {
  readonly scope: Scope.CloseableScope
  readonly model: ScreenModel.ScreenModel
  readonly recorder: Recorder.Recorder
  /** Serializes the screen model: output, resizes, snapshots and new subscribers. */
  readonly lock: Effect.Semaphore
  /**
   * Effects holding or waiting for `lock` (`locked` keeps the count). At 0, the output pump may
   * handle a chunk synchronously, as it arrives, without taking the lock: nothing can run between.
   */
  lockUsers: number
  /** Session sequence number of the next byte. */
  seq: number
  /** PTY sequence number of the next byte. */
  ptySeq: number
  replay: Array<{ seq: number; data: Uint8Array }>
  replayStart: number
  replaySize: number
  sinceSnapshot: number
  /** Output handed to the screen model since the last wait for its parser. */
  unparsed: number
  lastOutput: number
  idle: boolean
  pump: Option.Option<Fiber.RuntimeFiber<void>>
  /** Finds the queries in the program's output. */
  readonly queryScanner: Replies.QueryScanner
  /** The recent queries: the sequence number after each, and the replies it asks for. */
  queries: Array<{ readonly end: number; readonly replies: ReadonlyArray<Replies.ReplyKind> }>
}

/** The entity's handlers. */
export const layer = Session.toLayer(
  Effect.gen(function* () {
    const address = yield* Entity.CurrentAddress
    const sessionId = address.entityId
    const host = yield* PtyHost
    const exitRecords = yield* PtyExitRecords
    const registry = yield* SessionRegistry
    const settings = yield* SessionSettings
    const log = yield* EventLog
    const entityScope = yield* Effect.scope
    const local = yield* LocalSessions
    const screens = yield* ScreenWorkers
    const recorders = yield* Recorder.Recorders

    let row: Option.Option<Row> = yield* registry.get(sessionId).pipe(Effect.orDie)
    let live: Option.Option<Live> = Option.none()
    const attachments = new Map<string, Attachment>()
    const subscribers = new Set<Subscriber>()
    let lastWriter: string | undefined

    const notFound = () => new SessionNotFound({ sessionId, message: `no session with id ${sessionId}` })

    /** The environment the session's program gets: the node's, the proxy's, then the request's own. */
    const spawnEnv = (requested: Readonly<Record<string, string>>) =>
      Effect.map(settings.proxyEnv(sessionId), (proxy) => ({
        ...settings.env,
        ...proxy,
        // What the screen model emulates, not the server's own terminal; a request may ask otherwise.
        TERM: "xterm-256color",
        ...requested,
        VIBES_SESSION_ID: sessionId
      }))

    const currentRow = Effect.suspend(() =>
      Option.match(row, { onNone: () => Effect.fail(notFound()), onSome: Effect.succeed })
    )

    const registryWrites = yield* Effect.makeSemaphore(1)
    const change = (update: Partial<Row>) =>
      Effect.gen(function* () {
        const current = yield* currentRow
        const next: Row = { ...current, ...update }
        row = Option.some(next)
        // In call order: concurrent changes (two clients attaching) must not land out of order.
        yield* registryWrites.withPermits(1)(
          registry
            .update(sessionId, update)
            .pipe(Effect.catchAll((error) => Effect.logWarning(error.message)))
        )
        return next
      })

    /**
     * As `change`, for what need not be durable before the answer (the number of attached clients):
     * the row in memory changes now, the registry behind it, in the same order as every change.
     */
    const changeBehind = (update: Partial<Row>) =>
      Effect.gen(function* () {
        const current = yield* currentRow
        const next: Row = { ...current, ...update }
        row = Option.some(next)
        yield* registryWrites
          .withPermits(1)(
            registry
              .update(sessionId, update)
              .pipe(Effect.catchAll((error) => Effect.logWarning(error.message)))
          )
          .pipe(Effect.forkIn(entityScope))
        return next
      })

    const publish = (event: AttachEvent) => {
      for (const subscriber of subscribers) {
        if (!subscriber.overflowed && !Queue.unsafeOffer(subscriber.queue, event))
          subscriber.overflowed = true
      }
    }

    const endSubscribers = (ended: Ended) => {
      for (const subscriber of subscribers) {
        Queue.unsafeOffer(subscriber.queue, ended)
      }
    }

    const running = Effect.suspend(() =>
      Effect.gen(function* () {
        const current = yield* currentRow
        if (current.state !== "running" || Option.isNone(live)) {
          return yield* new SessionNotRunning({
            sessionId,
            state: current.state,
            message: `session ${sessionId} is ${current.state}; it takes no input, resize or signal`
          })
        }
        return { row: current, live: live.value }
      })
    )

    const ptyError = (error: PtyNotFound | PtyNotRunning | PtyHostUnavailable) =>
      error._tag === "PtyHostUnavailable"
        ? unavailable(sessionId)(error)
        : new SessionNotRunning({
            sessionId,
            state: "exited",
            message: `session ${sessionId} has ended; it takes no input, resize or signal`
          })

    // Output --------------------------------------------------------------------------------

    const remember = (state: Live, seq: number, data: Uint8Array, keep: number) => {
      state.replay.push({ seq, data })
      state.replaySize += data.length
      while (state.replaySize > keep && state.replay.length > 1) {
        const first = state.replay.shift()
        if (first === undefined) break
        state.replaySize -= first.data.length
        state.replayStart = first.seq + first.data.length
      }
    }

    let snapshotTooLargeLogged = false
    const snapshotEvent = (state: Live) =>
      Effect.gen(function* () {
        state.sinceSnapshot = 0
        for (const lines of [200, 20, 0]) {
          const snapshot = yield* state.model.snapshot({ scrollbackLines: lines })
          // Measured as the log measures it: escapes (every ESC is 6 bytes of JSON) included.
          if (jsonBytes(snapshot.vt) <= maxSnapshotBytes) {
            state.recorder.event("session.snapshot", {
              seq: state.seq,
              cols: snapshot.cols,
              rows: snapshot.rows,
              screen: snapshot.vt
            })
            return
          }
        }
        // Even the bare screen is too large for an event: history rebuilds from the output instead.
        if (!snapshotTooLargeLogged) {
          snapshotTooLargeLogged = true
          yield* Effect.logWarning(
            `session ${sessionId}: its screen is too large for a session.snapshot event; snapshots are skipped while it is`
          )
        }
      })

    /**
     * Handles a chunk of output: clients, replay buffer, query scan, recorder, screen model. Plain
     * code, run under the lock or when no one holds or awaits it (`lockUsers` 0); what must wait
     * (the parser's backlog, a snapshot) is left to `afterData`.
     */
    const onDataSync = (state: Live, ptySeq: number, data: Uint8Array): void => {
      // A resumed reader may repeat bytes the entity already has.
      const skip = state.ptySeq - ptySeq
      if (skip >= data.length) return
      const fresh = skip > 0 ? data.subarray(skip) : data
      const seq = state.seq
      state.ptySeq += fresh.length
      state.seq += fresh.length
      state.lastOutput = Date.now()
      publish(Output.make({ seq, data: fresh }, true))
      outputBytes.unsafeUpdate(fresh.length, [])
      remember(state, seq, fresh, replayBytes)
      for (const query of state.queryScanner.scan(fresh)) {
        state.queries.push({ end: seq + query.end, replies: query.replies })
        if (state.queries.length > 256) state.queries.shift()
      }
      state.recorder.output(seq, fresh)
      // Parsing runs behind the byte path; waiting for it now and then bounds its backlog.
      state.model.feed(fresh)
      state.unparsed += fresh.length
      state.sinceSnapshot += fresh.length
      if (state.idle) {
        state.idle = false
        state.recorder.event("session.active", {})
      }
    }

    /** Whether handling `bytes` more would leave work for `afterData`. */
    const dueAfter = (state: Live, bytes: number) =>
      state.unparsed + bytes >= unparsedLimit ||
      state.sinceSnapshot + bytes >= settings.snapshotEvery ||
      state.recorder.backlog() + bytes > recorderBacklog

    /** What output leaves to do: wait for the parser's backlog, take a snapshot. */
    const afterData = (state: Live) =>
      Effect.gen(function* () {
        if (state.unparsed >= unparsedLimit) {
          state.unparsed = 0
          yield* state.model.write(empty)
        }
        if (state.sinceSnapshot >= settings.snapshotEvery) yield* snapshotEvent(state)
      })

    const onData = (state: Live, ptySeq: number, data: Uint8Array) =>
      Effect.suspend(() => {
        onDataSync(state, ptySeq, data)
        return afterData(state)
      })

    /**
     * The output pump's fast path: a chunk handled as it comes off the socket, when no effect
     * holds or awaits the lock and it leaves nothing to wait for. Otherwise the stream takes it.
     */
    const direct = (state: Live) => (element: PtyData) => {
      if (state.lockUsers > 0 || dueAfter(state, element.data.length)) return false
      onDataSync(state, element.seq, element.data)
      return true
    }

    /** `effect` under the session's lock, counted in `lockUsers` while it holds or awaits it. */
    const locked = <A, E, R>(state: Live, effect: Effect.Effect<A, E, R>) =>
      Effect.suspend(() => {
        state.lockUsers++
        return state.lock
          .withPermits(1)(effect)
          .pipe(
            Effect.ensuring(
              Effect.sync(() => {
                state.lockUsers--
              })
            )
          )
      })

    const onGap = (state: Live, from: number, to: number) =>
      Effect.gen(function* () {
        const lost = to - Math.max(from, state.ptySeq)
        if (lost <= 0) return
        state.recorder.event("session.gap", { from: state.seq, to: state.seq + lost, bytes: lost }, "warn")
        state.ptySeq += lost
        state.seq += lost
        state.replay = []
        state.replaySize = 0
        state.replayStart = state.seq
        const snapshot = yield* state.model.snapshot({ scrollbackLines: 1000 })
        publish(Reset.make({ screen: toScreen(snapshot, state.seq) }))
      })

    const handleOutput = (state: Live, element: PtyOutput) =>
      locked(
        state,
        element._tag === "Data"
          ? onData(state, element.seq, element.data)
          : element._tag === "Gap"
            ? onGap(state, element.from, element.to)
            : Effect.void
      )

    /** Reads the PTY until it exits (or is lost); survives host restarts by resuming at `ptySeq`. */
    const pump = (state: Live, ptyId: string): Effect.Effect<void> =>
      Effect.gen(function* () {
        const outcome = yield* host.output(ptyId, state.ptySeq, direct(state)).pipe(
          Stream.mapEffect((element) =>
            Effect.gen(function* () {
              if (state.recorder.backlog() > recorderBacklog) yield* state.recorder.flush
              yield* handleOutput(state, element)
              return element
            })
          ),
          Stream.filter((element) => element._tag === "Exited"),
          Stream.runHead,
          Effect.retry({
            while: (error) => error._tag === "PtyHostUnavailable",
            schedule: Schedule.exponential("100 millis").pipe(Schedule.union(Schedule.spaced("2 seconds")))
          }),
          Effect.either
        )
        if (outcome._tag === "Left") {
          const record =
            outcome.left._tag === "PtyNotFound" ? yield* recordedExit(ptyId) : Option.none<PtyExitRecord>()
          if (Option.isNone(record)) return yield* ended(state, "lost", null, null)
          yield* replayTail(state, record.value)
          const { exit, exitedAt } = record.value
          yield* ended(state, "exited", exit.exitCode, exit.signal, DateTime.toDate(exitedAt))
        } else if (Option.isSome(outcome.right) && outcome.right.value._tag === "Exited") {
          const exit = outcome.right.value.exit
          yield* ended(state, "exited", exit.exitCode, exit.signal)
        } else {
          yield* ended(state, "lost", null, null)
        }
      })

    /** How the program of a PTY its host no longer knows ended, if a previous host recorded it. */
    const recordedExit = (ptyId: string) =>
      exitRecords
        .take(ptyId)
        .pipe(
          Effect.catchAll((error) =>
            Effect.as(
              Effect.logWarning(`session ${sessionId}: ${error.message}`),
              Option.none<PtyExitRecord>()
            )
          )
        )

    /** The recorded last output of an ended PTY, after what the session has (a gap before it if need be). */
    const replayTail = (state: Live, record: PtyExitRecord) =>
      Effect.gen(function* () {
        const from = record.seq - record.tail.length
        if (from > state.ptySeq) yield* handleOutput(state, new PtyGap({ from: state.ptySeq, to: from }))
        if (record.tail.length > 0) yield* handleOutput(state, new PtyData({ seq: from, data: record.tail }))
      })

    // Lifecycle -------------------------------------------------------------------------------

    const emit = <T extends KnownType>(type: T, data: PayloadOf<T>) =>
      Option.match(live, {
        onSome: (state) => Effect.sync(() => state.recorder.event(type, data)),
        onNone: () =>
          Effect.asVoid(
            log
              .append([
                newEvent(type, data, {
                  source: { nodeId: settings.nodeId, component: "session" },
                  sessionId,
                  tenantId: "default",
                  severity: "info"
                })
              ])
              .pipe(
                Effect.catchAll((error) => Effect.logWarning(`could not record ${type}: ${error.message}`))
              )
          )
      })

    /** Starts the live part for a PTY; output is read from PTY byte `ptySeq` on. */
    const goLive = (options: {
      readonly ptyId: string
      readonly seqBase: number
      readonly ptySeq: number
      readonly cols: number
      readonly rows: number
      readonly base: Option.Option<{ readonly cols: number; readonly rows: number; readonly vt: string }>
      readonly history: ReadonlyArray<HistoryStep>
    }) =>
      Effect.gen(function* () {
        const scope = yield* Scope.fork(entityScope, ExecutionStrategy.sequential)
        const bell = { last: 0 }
        // The model answers the program's queries; not those in the history it is rebuilt from.
        const replies = yield* Queue.unbounded<string>()
        const answering = { open: false }
        const model = yield* screens
          .make({
            onReply: (reply) => {
              if (answering.open) Queue.unsafeOffer(replies, reply)
            },
            cols: options.cols,
            rows: options.rows,
            scrollback: settings.scrollback,
            onBell: () => {
              const now = Date.now()
              if (now - bell.last < 1000) return
              bell.last = now
              Option.map(live, (state) => state.recorder.event("session.bell", {}))
            }
          })
          .pipe(Scope.extend(scope))
        if (Option.isSome(options.base)) yield* model.write(new TextEncoder().encode(options.base.value.vt))
        const seq = options.seqBase + options.ptySeq
        const replay: Array<{ seq: number; data: Uint8Array }> = []
        let replaySize = 0
        for (const step of options.history) {
          if (step._tag === "Resize") {
            yield* model.resize(step.cols, step.rows)
          } else {
            yield* model.write(step.data)
            replay.push({ seq: step.seq, data: step.data })
            replaySize += step.data.length
          }
        }
        answering.open = true
        yield* Effect.forkIn(answer(replies), scope)
        const first = replay[0]
        const recorder = yield* recorders
          .make({ sessionId, nodeId: settings.nodeId, startSeq: seq })
          .pipe(Scope.extend(scope))
        const state: Live = {
          scope,
          model,
          recorder,
          lock: yield* Effect.makeSemaphore(1),
          lockUsers: 0,
          seq,
          ptySeq: options.ptySeq,
          replay,
          replayStart: first?.seq ?? seq,
          replaySize,
          sinceSnapshot: replaySize,
          unparsed: 0,
          lastOutput: Date.now(),
          idle: false,
          pump: Option.none(),
          queryScanner: new Replies.QueryScanner(),
          queries: []
        }
        live = Option.some(state)
        // The session's proxy token works while its program runs here: also after a restart of
        // the server, when the session is resumed rather than spawned.
        yield* settings.proxyEnv(sessionId)
        yield* Scope.addFinalizer(scope, settings.proxyEnded(sessionId))
        yield* Metric.increment(liveSessions)
        yield* Scope.addFinalizer(scope, Metric.incrementBy(liveSessions, -1))
        const fiber = yield* Effect.forkIn(pump(state, options.ptyId), scope)
        state.pump = Option.some(fiber)
        yield* Effect.forkIn(idleWatch(state), scope)
        return state
      })

    /** Writes the screen model's answers to the program, in order, to its current PTY. */
    const answer = (replies: Queue.Queue<string>) =>
      Effect.gen(function* () {
        const reply = yield* Queue.take(replies)
        const current = yield* Effect.option(currentRow)
        if (Option.isNone(current) || current.value.state !== "running") return
        yield* host
          .write(current.value.ptyId, new TextEncoder().encode(reply))
          .pipe(
            Effect.catchAll((error) =>
              Effect.logWarning(`session ${sessionId}: could not answer a query: ${error.message}`)
            )
          )
      }).pipe(Effect.forever)

    /** The replies `attachment` will owe for the queries in output bytes [from, to). */
    const owe = (state: Live, attachment: Attachment, from: number, to: number) => {
      const until = Date.now() + replyWithin
      for (const query of state.queries) {
        if (query.end > from && query.end <= to)
          for (const kind of query.replies) attachment.owed.push({ kind, until })
      }
    }

    /** Whether `attachment` owed a reply of `kind` (which it then no longer owes). */
    const owed = (attachment: Attachment, kind: Replies.ReplyKind) => {
      const now = Date.now()
      while (attachment.owed.length > 0 && (attachment.owed[0]?.until ?? 0) < now) attachment.owed.shift()
      const at = attachment.owed.findIndex((entry) => entry.kind === kind)
      if (at < 0) return false
      attachment.owed.splice(at, 1)
      return true
    }

    const idleWatch = (state: Live) =>
      Effect.gen(function* () {
        if (state.idle || Date.now() - state.lastOutput < Duration.toMillis(settings.idleAfter)) return
        yield* locked(
          state,
          Effect.gen(function* () {
            state.idle = true
            state.recorder.event("session.idle", { seq: state.seq })
            if (state.sinceSnapshot > 0) yield* snapshotEvent(state)
            while (state.replaySize > idleReplayBytes && state.replay.length > 1) {
              const firstChunk = state.replay.shift()
              if (firstChunk === undefined) break
              state.replaySize -= firstChunk.data.length
              state.replayStart = firstChunk.seq + firstChunk.data.length
            }
          })
        )
        yield* change({
          lastActivityAt: new Date(state.lastOutput),
          outputBytes: state.seq
        })
      }).pipe(
        Effect.repeat(
          Schedule.spaced(Duration.millis(Math.min(1000, Duration.toMillis(settings.idleAfter))))
        ),
        Effect.asVoid
      )

    /** The program ended (or was lost): records it, tells clients, frees the PTY, maybe restarts. */
    const ended = (
      state: Live,
      how: "exited" | "lost",
      exitCode: number | null,
      signal: string | null,
      exitedAt: Date = new Date()
    ) =>
      Effect.gen(function* () {
        // Recorded whole once begun: a `Close` meanwhile waits for it and finds the session ended,
        // rather than cutting it short and recording the ended session as closed.
        const next = yield* Effect.uninterruptible(recordEnd(state, how, exitCode, signal, exitedAt))
        if (Option.isNone(next)) return
        // `Close` may interrupt the wait; once the restart begins it completes, so no PTY is left behind.
        yield* Effect.sleep(restartDelay(next.value.updated.restarts))
        yield* Effect.uninterruptible(resurrect(state, next.value.updated, next.value.text))
      })

    /** Records how the program ended; what a restart needs when the policy asks for one. */
    const recordEnd = (
      state: Live,
      how: "exited" | "lost",
      exitCode: number | null,
      signal: string | null,
      exitedAt: Date
    ) =>
      Effect.gen(function* () {
        const current = yield* Effect.orDie(currentRow)
        yield* locked(state, snapshotEvent(state))
        state.recorder.event(
          how === "exited" ? "session.exited" : "session.lost",
          { exitCode, signal },
          how === "lost" ? "warn" : "info"
        )
        yield* state.recorder.flush
        const updated = yield* Effect.orDie(
          change({
            state: how,
            exitedAt,
            exitCode,
            exitSignal: signal,
            outputBytes: state.seq,
            lastActivityAt: new Date(state.lastOutput)
          })
        )
        const screen = yield* state.model.snapshot({ scrollbackLines: 0 })
        yield* host.release(current.ptyId).pipe(Effect.ignore)
        const failed = how === "lost" || exitCode !== 0 || signal !== null
        const restart =
          updated.restartPolicy === "always" || (updated.restartPolicy === "on-failure" && failed)
        if (!restart) {
          endSubscribers(Ended.make({ state: how, exitCode, exitSignal: signal }))
          live = Option.none()
          lastScreen = Option.some(toScreen(screen, state.seq))
          yield* Scope.close(state.scope, Exit.void).pipe(Effect.forkIn(entityScope))
          return Option.none()
        }
        return Option.some({ updated, text: screen.text })
      })

    const restartDelay = (restarts: number) =>
      Duration.millis(Math.min(30_000, restarts === 0 ? 0 : 500 * 2 ** Math.min(restarts - 1, 6)))

    /** Starts the command again in the same session, with the previous screen as scrollback. */
    const resurrect = (previous: Live, current: Row, screenText: string) =>
      Effect.gen(function* () {
        const restarts = current.restarts + 1
        const ptyId = `${sessionId}.${restarts}`
        const banner = new TextEncoder().encode(
          `${screenText.trimEnd().replace(/\n/g, "\r\n")}\r\n\x1b[0m[vibes: restarting ${current.command} (restart ${restarts})]\r\n`
        )
        yield* locked(previous, onData(previous, previous.ptySeq, banner))
        const seqBase = previous.seq
        const spawned = yield* host
          .spawn(
            PtySpec.make({
              id: ptyId,
              file: current.command,
              args: current.args,
              cwd: current.cwd,
              env: yield* spawnEnv(current.env),
              cols: current.cols,
              rows: current.rows,
              wrapper: settings.wrapper
            })
          )
          .pipe(Effect.either)
        if (spawned._tag === "Left") {
          previous.recorder.event(
            "session.exited",
            { exitCode: null, signal: null, error: spawned.left.message },
            "error"
          )
          yield* previous.recorder.flush
          yield* Effect.orDie(change({ state: "exited", restarts }))
          endSubscribers(Ended.make({ state: "exited", exitCode: null, exitSignal: null }))
          live = Option.none()
          yield* Scope.close(previous.scope, Exit.void).pipe(Effect.forkIn(entityScope))
          return
        }
        previous.recorder.event("session.started", { pid: spawned.right.pid, ptyId, restarts })
        yield* Effect.orDie(
          change({
            state: "running",
            ptyId,
            seqBase,
            pid: spawned.right.pid,
            restarts,
            startedAt: new Date(),
            exitedAt: null,
            exitCode: null,
            exitSignal: null
          })
        )
        previous.ptySeq = 0
        const fiber = yield* Effect.forkIn(
          Effect.interruptible(pumpFrom(previous, ptyId, seqBase)),
          previous.scope
        )
        previous.pump = Option.some(fiber)
      })

    /** The pump for a restarted PTY: same live state, a new PTY numbered from `seqBase`. */
    const pumpFrom = (state: Live, ptyId: string, seqBase: number) =>
      Effect.suspend(() => {
        state.seq = seqBase
        return pump(state, ptyId)
      })

    let lastScreen: Option.Option<Screen> = Option.none()

    /** The screen of an ended session, rebuilt from its history once. */
    const endedScreen = Effect.gen(function* () {
      if (Option.isSome(lastScreen)) return lastScreen.value
      const current = yield* currentRow
      const snapshot = yield* latestSnapshot(sessionId, Number.MAX_SAFE_INTEGER).pipe(
        Effect.mapError(unavailableLog)
      )
      const history = yield* historyAfter(
        sessionId,
        Option.match(snapshot, { onNone: () => 0, onSome: (s) => s.offset }),
        Number.MAX_SAFE_INTEGER
      ).pipe(Effect.mapError(unavailableLog))
      const fromSeq = Option.match(snapshot, { onNone: () => 0, onSome: (s) => s.seq })
      const rebuilt = yield* ScreenModel.rebuild({
        cols: Option.match(snapshot, { onNone: () => current.cols, onSome: (s) => s.cols }),
        rows: Option.match(snapshot, { onNone: () => current.rows, onSome: (s) => s.rows }),
        scrollback: settings.scrollback,
        base: Option.map(snapshot, (s) => ({ cols: s.cols, rows: s.rows, vt: s.screen })),
        outputs: historySteps(history, fromSeq).map((step) =>
          step._tag === "Output" ? { data: step.data } : { resize: { cols: step.cols, rows: step.rows } }
        )
      })
      const screen = toScreen(rebuilt, current.outputBytes)
      lastScreen = Option.some(screen)
      return screen
    }).pipe(Effect.provideService(EventLog, log))

    const unavailableLog = (error: { readonly message: string }) =>
      new SessionUnavailable({ sessionId, message: `cannot read the session's history: ${error.message}` })

    /** After a restart: rebuild the screen from history and drain the PTY from where the log ends. */
    const resume = (current: Row) =>
      Effect.gen(function* () {
        const info = yield* host.get(current.ptyId).pipe(
          Effect.retry({
            while: (error) => error._tag === "PtyHostUnavailable",
            schedule: Schedule.exponential("100 millis").pipe(Schedule.intersect(Schedule.recurs(8)))
          }),
          Effect.either
        )
        const snapshot = yield* latestSnapshot(sessionId, Number.MAX_SAFE_INTEGER).pipe(Effect.orDie)
        const history = yield* historyAfter(
          sessionId,
          Option.match(snapshot, { onNone: () => 0, onSome: (s) => s.offset }),
          Number.MAX_SAFE_INTEGER
        ).pipe(Effect.orDie)
        const fromSeq = Option.match(snapshot, { onNone: () => current.seqBase, onSome: (s) => s.seq })
        const steps = historySteps(history, fromSeq)
        let recordedSeq = fromSeq
        for (const step of steps) if (step._tag === "Output") recordedSeq = step.seq + step.data.length
        const sizes = Option.match(snapshot, {
          onNone: () => ({ cols: current.cols, rows: current.rows }),
          onSome: (s) => ({ cols: s.cols, rows: s.rows })
        })
        const state = yield* goLive({
          ptyId: current.ptyId,
          seqBase: current.seqBase,
          ptySeq: Math.max(0, recordedSeq - current.seqBase),
          cols: sizes.cols,
          rows: sizes.rows,
          base: Option.map(snapshot, (s) => ({ cols: s.cols, rows: s.rows, vt: s.screen })),
          history: steps
        })
        if (info._tag === "Left") {
          // The PTY is gone with its host: the pump will find it missing and mark the session lost.
          yield* Effect.logWarning(`session ${sessionId}: its PTY is gone: ${info.left.message}`)
        }
        if (current.cols !== sizes.cols || current.rows !== sizes.rows) {
          yield* state.model.resize(current.cols, current.rows)
        }
        yield* Effect.logInfo(`session ${sessionId} resumed at byte ${state.seq}`)
      })

    if (Option.isSome(row) && row.value.state === "running") {
      yield* resume(row.value)
    }

    // Finalizer: the program keeps running in its PTY; only this entity's reading stops.
    yield* Effect.addFinalizer(() =>
      Effect.gen(function* () {
        if (Option.isSome(row) && attachments.size > 0) {
          yield* registry.update(sessionId, { attachedClients: 0 }).pipe(Effect.ignore)
        }
      })
    )

    // Handlers --------------------------------------------------------------------------------

    const create = (request: CreateSession) =>
      Effect.gen(function* () {
        if (Option.isSome(row)) {
          return yield* new InvalidSessionRequest({
            field: "sessionId",
            message: `session ${sessionId} exists already`
          })
        }
        // The RPC handler checked already; a message that reached the entity another way is checked too.
        yield* checkCreateSession(request)
        yield* checkSize(request.cols, request.rows)
        const command = request.command ?? settings.shell
        const cwd = request.cwd ?? settings.home
        if (command.trim() === "") {
          return yield* new InvalidSessionRequest({ field: "command", message: "the command is empty" })
        }
        const isDirectory = yield* Effect.sync(() => {
          try {
            return fs.statSync(cwd).isDirectory()
          } catch {
            return false
          }
        })
        if (!isDirectory) {
          return yield* new SpawnFailed({
            reason: "cwd",
            message: `cannot start the session: the working directory ${cwd} does not exist or is not a directory`
          })
        }
        const env = yield* spawnEnv(request.env)
        const info = yield* host
          .spawn(
            PtySpec.make({
              id: sessionId,
              file: command,
              args: request.args,
              cwd,
              env,
              cols: request.cols,
              rows: request.rows,
              wrapper: settings.wrapper
            })
          )
          .pipe(
            Effect.mapError((error) =>
              error._tag === "PtySpawnFailed"
                ? new SpawnFailed({ reason: error.reason, message: error.message })
                : error._tag === "PtyHostUnavailable"
                  ? unavailable(sessionId)(error)
                  : new InvalidSessionRequest({ field: "sessionId", message: error.message })
            )
          )
        const now = new Date()
        const newRow: Row = {
          id: sessionId,
          name: request.name ?? null,
          command,
          args: request.args,
          cwd,
          env: request.env,
          cols: request.cols,
          rows: request.rows,
          restartPolicy: request.restartPolicy,
          state: "running",
          nodeId: settings.nodeId,
          ptyId: sessionId,
          seqBase: 0,
          pid: info.pid,
          createdAt: now,
          startedAt: now,
          exitedAt: null,
          exitCode: null,
          exitSignal: null,
          attachedClients: 0,
          lastActivityAt: now,
          outputBytes: 0,
          restarts: 0
        }
        yield* registry.insert(newRow).pipe(
          Effect.tapError(() => host.release(sessionId).pipe(Effect.ignore)),
          Effect.mapError((error) => new SessionUnavailable({ sessionId, message: error.message }))
        )
        row = Option.some(newRow)
        const state = yield* goLive({
          ptyId: sessionId,
          seqBase: 0,
          ptySeq: 0,
          cols: request.cols,
          rows: request.rows,
          base: Option.none(),
          history: []
        })
        state.recorder.event("session.created", {
          command,
          args: request.args,
          cwd,
          cols: request.cols,
          rows: request.rows,
          ...(request.name !== undefined ? { name: request.name } : {})
        })
        state.recorder.event("session.started", { pid: info.pid, ptyId: sessionId, restarts: 0 })
        yield* state.recorder.flush
        return toInfo(newRow)
      })

    const resizeTo = (cols: number, rows: number) =>
      Effect.gen(function* () {
        const { row: current, live: state } = yield* running
        if (current.cols === cols && current.rows === rows) return
        yield* host.resize(current.ptyId, cols, rows).pipe(Effect.mapError(ptyError))
        yield* locked(
          state,
          Effect.gen(function* () {
            yield* state.model.resize(cols, rows)
            state.recorder.event("session.resized", { cols, rows })
            publish(Resized.make({ cols, rows }))
          })
        )
        yield* change({ cols, rows })
      })

    const writable = (attachmentId: string | undefined) =>
      Effect.gen(function* () {
        if (attachmentId === undefined) return Option.none<Attachment>()
        const attachment = attachments.get(attachmentId)
        if (attachment === undefined) {
          return yield* new InvalidSessionRequest({
            field: "attachmentId",
            message: `attachment ${attachmentId} is not attached to session ${sessionId}`
          })
        }
        if (attachment.readOnly) {
          return yield* new ReadOnlyAttachment({
            attachmentId,
            message: "this client attached read-only: it cannot type into or resize the session"
          })
        }
        return Option.some(attachment)
      })

    const input = (data: Uint8Array, attachmentId: string | undefined) =>
      Effect.gen(function* () {
        if (data.length > maxInputBytes) {
          return yield* new InvalidSessionRequest({
            field: "data",
            message: `input of ${data.length} bytes is larger than the limit of ${maxInputBytes} bytes; send it in parts`
          })
        }
        const attachment = yield* writable(attachmentId)
        const { row: current } = yield* running
        // The client's terminal answered queries the screen model has answered already.
        const keys = Option.match(attachment, {
          onNone: () => data,
          onSome: (client) => Replies.withoutReplies(data, (kind) => owed(client, kind))
        })
        if (keys.length === 0) return
        if (Option.isSome(attachment) && attachmentId !== lastWriter) {
          lastWriter = attachmentId
          yield* resizeTo(attachment.value.cols, attachment.value.rows)
        }
        yield* host.write(current.ptyId, keys).pipe(Effect.mapError(ptyError))
      })

    const attach = (request: {
      readonly cols?: number | undefined
      readonly rows?: number | undefined
      readonly readOnly: boolean
      readonly from?: number | undefined
      readonly scrollback?: number | undefined
    }): Stream.Stream<AttachEvent, SessionError> =>
      Stream.unwrapScoped(
        Effect.gen(function* () {
          const current = yield* currentRow
          const cols = request.cols ?? current.cols
          const rows = request.rows ?? current.rows
          yield* checkSize(cols, rows)
          const scrollback = Math.max(0, Math.min(request.scrollback ?? 1000, settings.scrollback))
          if (current.state !== "running" || Option.isNone(live)) {
            const screen = yield* endedScreen
            const attached = Attached.make({
              attachmentId: "",
              readOnly: true,
              info: toInfo(current),
              screen,
              seq: screen.seq
            })
            return Stream.make<Array<AttachEvent>>(
              attached,
              Ended.make({ state: current.state, exitCode: current.exitCode, exitSignal: current.exitSignal })
            )
          }
          const state = live.value
          const attachmentId = crypto.randomUUID()
          const queue = yield* Queue.bounded<AttachEvent>(subscriberChunks)
          let skipUntil = 0
          const subscriber: Subscriber = { queue, overflowed: false }
          const first = yield* locked(
            state,
            Effect.gen(function* () {
              subscribers.add(subscriber)
              const from = request.from
              // A client may be ahead of a freshly resumed entity: bytes before `from` are skipped.
              if (from !== undefined && from >= state.replayStart) {
                skipUntil = from
                for (const chunk of state.replay) {
                  const end = chunk.seq + chunk.data.length
                  if (end <= from) continue
                  const skip = Math.max(0, from - chunk.seq)
                  Queue.unsafeOffer(
                    queue,
                    Output.make({ seq: chunk.seq + skip, data: chunk.data.subarray(skip) })
                  )
                }
                return { screen: null, seq: from }
              }
              const snapshot = yield* state.model.snapshot({ scrollbackLines: scrollback })
              return { screen: toScreen(snapshot, state.seq), seq: state.seq }
            })
          )
          const attachment: Attachment = { readOnly: request.readOnly, cols, rows, owed: [] }
          attachments.set(attachmentId, attachment)
          // Output up to here reached the client as a screen (with no queries in it) or not at all.
          let sent = first.seq
          yield* Metric.increment(attachedClients)
          yield* Effect.addFinalizer(() =>
            Effect.gen(function* () {
              subscribers.delete(subscriber)
              attachments.delete(attachmentId)
              yield* Metric.incrementBy(attachedClients, -1)
              if (lastWriter === attachmentId) lastWriter = undefined
              yield* emit("session.detached", { attachmentId })
              yield* changeBehind({ attachedClients: attachments.size }).pipe(Effect.ignore)
            })
          )
          yield* emit("session.attached", { attachmentId, readOnly: request.readOnly })
          const updated = yield* changeBehind({ attachedClients: attachments.size })
          if (!request.readOnly && request.cols !== undefined && request.rows !== undefined) {
            lastWriter = attachmentId
            yield* resizeTo(cols, rows).pipe(Effect.catchTag("SessionNotRunning", () => Effect.void))
          }
          const attached = Attached.make({
            attachmentId,
            readOnly: request.readOnly,
            info: toInfo(Option.getOrElse(row, () => updated)),
            screen: first.screen,
            seq: first.seq
          })
          const rest = Stream.repeatEffectChunk(
            Effect.gen(function* () {
              if (subscriber.overflowed) {
                const reset = yield* locked(
                  state,
                  Effect.gen(function* () {
                    yield* Queue.takeAll(queue)
                    subscriber.overflowed = false
                    const snapshot = yield* state.model.snapshot({ scrollbackLines: scrollback })
                    return Reset.make({ screen: toScreen(snapshot, state.seq) })
                  })
                )
                return Chunk.of<AttachEvent>(reset)
              }
              return coalesce(yield* Queue.takeBetween(queue, 1, 256))
            })
          ).pipe(
            Stream.filterMap((event): Option.Option<AttachEvent> => {
              if (event._tag === "Reset") skipUntil = 0
              if (event._tag !== "Output" || event.seq >= skipUntil) return Option.some(event)
              const skip = skipUntil - event.seq
              return skip >= event.data.length
                ? Option.none()
                : Option.some(Output.make({ seq: skipUntil, data: event.data.subarray(skip) }))
            }),
            Stream.tap((event) =>
              Effect.sync(() => {
                if (event._tag === "Reset") sent = event.screen.seq
                else if (event._tag === "Output") {
                  const end = event.seq + event.data.length
                  if (!attachment.readOnly) owe(state, attachment, Math.max(sent, event.seq), end)
                  sent = Math.max(sent, end)
                }
              })
            ),
            Stream.takeUntil((event) => event._tag === "Ended")
          )
          return Stream.concat(Stream.make<Array<AttachEvent>>(attached), rest)
        })
      )

    const close = Effect.gen(function* () {
      const before = yield* currentRow
      if (Option.isNone(live)) return toInfo(before)
      const state = live.value
      // Stop reading, and a restart that may be pending (the pump runs it); a restart under way
      // finishes first and hands over to a new pump, which is stopped in turn.
      let pumping = state.pump
      while (Option.isSome(pumping)) {
        yield* Fiber.interrupt(pumping.value)
        if (state.pump === pumping) break
        pumping = state.pump
      }
      // It may have ended by itself meanwhile.
      if (Option.isNone(live)) return toInfo(yield* currentRow)
      const current = yield* currentRow
      yield* host.release(current.ptyId).pipe(Effect.mapError(unavailable(sessionId)))
      yield* locked(state, snapshotEvent(state))
      state.recorder.event("session.closed", {})
      yield* state.recorder.flush
      const updated = yield* change({
        state: "closed",
        exitedAt: new Date(),
        outputBytes: state.seq,
        lastActivityAt: new Date(state.lastOutput)
      })
      const screen = yield* state.model.snapshot({ scrollbackLines: 0 })
      lastScreen = Option.some(toScreen(screen, state.seq))
      endSubscribers(Ended.make({ state: "closed", exitCode: null, exitSignal: null }))
      live = Option.none()
      yield* Scope.close(state.scope, Exit.void).pipe(Effect.forkIn(entityScope))
      return toInfo(updated)
    })

    const snapshot = Effect.gen(function* () {
      yield* currentRow
      if (Option.isNone(live)) return yield* endedScreen
      const state = live.value
      return yield* locked(
        state,
        Effect.map(state.model.snapshot({ scrollbackLines: 0 }), (s) => toScreen(s, state.seq))
      )
    })

    // The data plane: keystrokes and attachments of this node's clients reach the entity directly.
    const stopping = yield* Deferred.make<void>()
    yield* Effect.addFinalizer(() => Deferred.succeed(stopping, undefined))
    const moving = Effect.zipRight(Deferred.await(stopping), Effect.fail(sessionMoving(sessionId)))
    yield* local.register(sessionId, {
      input,
      attach: (request) => attach(request).pipe(Stream.interruptWhen(moving))
    })

    return Session.of({
      Create: (request) => create(request.payload),
      Input: (request) => input(request.payload.data, request.payload.attachmentId),
      Resize: (request) =>
        Effect.gen(function* () {
          yield* checkSize(request.payload.cols, request.payload.rows)
          const attachment = yield* writable(request.payload.attachmentId)
          if (Option.isSome(attachment)) {
            attachment.value.cols = request.payload.cols
            attachment.value.rows = request.payload.rows
            lastWriter = request.payload.attachmentId
          }
          yield* resizeTo(request.payload.cols, request.payload.rows)
        }),
      Signal: (request) =>
        Effect.gen(function* () {
          const { row: current } = yield* running
          yield* host
            .signal(current.ptyId, signalName[request.payload.signal])
            .pipe(Effect.mapError(ptyError))
        }),
      Close: () => close,
      Attach: (request) => Rpc.fork(attach(request.payload)),
      Snapshot: () => snapshot,
      Info: () =>
        Effect.map(currentRow, (current) =>
          Option.match(live, {
            onNone: () => toInfo(current),
            onSome: (state) =>
              toInfo({ ...current, outputBytes: state.seq, lastActivityAt: new Date(state.lastOutput) })
          })
        ),
      Preview: ({ payload: { since, idle } }) =>
        Option.match(live, {
          onNone: () => Effect.succeed(null),
          onSome: (state) =>
            state.seq === since && state.idle === idle
              ? Effect.succeed(null)
              : locked(
                  state,
                  Effect.map(state.model.snapshot({ scrollbackLines: 0 }), (screen) =>
                    SessionPreview.make({
                      sessionId,
                      seq: state.seq,
                      cols: screen.cols,
                      rows: screen.rows,
                      lines: screen.text.split("\n"),
                      cursor: screen.cursor,
                      idle: state.idle
                    })
                  )
                )
        }),
      Wake: () => Effect.void
    })
  }),
  { maxIdleTime: Duration.infinity }
)
