/**
 * The session calls, served by the `Sessions` RPC group, the attach socket and the REST API
 * (SessionsHttp): per-session calls go to the session's entity through Sharding (whichever node
 * owns it), except input and attachments of a session whose entity is active on this node, which
 * reach it directly (`LocalSessions`); `List`, `Get` and `ScreenAt` read the registry and the log.
 */
import { Cause, Context, Duration, Effect, Layer, Option, Schedule, Schema, Stream } from "effect"
import type * as Rpc from "@effect/rpc/Rpc"
import type * as RpcGroup from "@effect/rpc/RpcGroup"
import {
  type AttachEvent,
  type AttachSession,
  checkCreateSession,
  CreateSession,
  type PreviewsRequest,
  type SessionPreview,
  InvalidSessionRequest,
  SessionId,
  SessionsRpcs,
  SessionNotFound,
  SessionUnavailable,
  type SessionError
} from "../../rpc/Sessions.js"
import { EventFilter } from "../../rpc/Events.js"
import * as Cluster from "../../infra/cluster/Cluster.js"
import { EventLog } from "../../infra/eventlog/EventLog.js"
import * as ScreenModel from "../../infra/terminal/ScreenModel.js"
import { historyAfter, historySteps, latestSnapshot, Session } from "../../actors/session/SessionEntity.js"
import { LocalSessions, sessionMoving } from "../../actors/session/LocalSessions.js"
import { SessionRegistry, toInfo } from "../../actors/session/SessionRegistry.js"
import { SessionSettings } from "../../actors/session/SessionSettings.js"
import { Screen } from "../../rpc/Sessions.js"
import { Membership } from "./Membership.js"
import { Workspaces, type WorkspaceError } from "../../actors/workspace/Workspaces.js"

const sessionErrorTags = new Set([
  "SessionNotFound",
  "InvalidSessionRequest",
  "SpawnFailed",
  "SessionNotRunning",
  "ReadOnlyAttachment",
  "SessionUnavailable"
])

const isSessionError = (error: { readonly _tag: string }): error is SessionError =>
  sessionErrorTags.has(error._tag)

/** Keeps session errors; anything the cluster raised becomes `SessionUnavailable`. */
const toSessionError =
  (sessionId: string) =>
  <E extends { readonly _tag: string; readonly message?: string }>(error: E): SessionError =>
    isSessionError(error)
      ? error
      : new SessionUnavailable({
          sessionId,
          message: `session ${sessionId} is unreachable right now (${error._tag}${error.message !== undefined ? `: ${error.message}` : ""}); retry`
        })

/**
 * How long a call waits for the session's machine. A session lives on one machine: while its node
 * is down (restarting, or gone until the session is taken over) the cluster holds the call.
 */
const reachTimeout = Duration.seconds(20)

const withinReach =
  (sessionId: string) =>
  <A, E, R>(call: Effect.Effect<A, E, R>): Effect.Effect<A, E | SessionUnavailable, R> =>
    Effect.timeoutFail(call, {
      duration: reachTimeout,
      onTimeout: () =>
        new SessionUnavailable({
          sessionId,
          message: `session ${sessionId} did not answer within ${Duration.format(reachTimeout)}: the node of machine '${Option.getOrElse(Cluster.machineOfSession(sessionId), () => "?")}' is not running; retry when it is back (vibes cluster shows the nodes)`
        })
    })

type Rpcs = RpcGroup.Rpcs<typeof SessionsRpcs>

/** A session call answered once: its payload in, its success or a session error out. */
type Call<Tag extends string> = (
  payload: Rpc.Payload<Rpc.ExtractTag<Rpcs, Tag>>
) => Effect.Effect<Rpc.Success<Rpc.ExtractTag<Rpcs, Tag>>, SessionError>

/** Every session call, by its RPC tag. */
export type SessionsApiShape = {
  readonly [
    Tag in Exclude<Rpc.Tag<Rpcs>, "Sessions.Attach" | "Sessions.Previews" | "Sessions.Create">
  ]: Call<Tag>
} & {
  /** Starts a session; in a worktree of its own when the request names a workspace. */
  readonly "Sessions.Create": (
    request: CreateSession
  ) => Effect.Effect<Rpc.Success<Rpc.ExtractTag<Rpcs, "Sessions.Create">>, SessionError | WorkspaceError>
  readonly "Sessions.Attach": (request: AttachSession) => Stream.Stream<AttachEvent, SessionError>
  readonly "Sessions.Previews": (request: PreviewsRequest) => Stream.Stream<SessionPreview, SessionError>
  /** Succeeds when a session of that id exists (or existed): what the attach socket's gate checks. */
  readonly exists: (sessionId: string) => Effect.Effect<void, SessionNotFound | SessionUnavailable>
}

/** The session calls, for the RPC group's handlers and the REST API. */
export class SessionsApi extends Context.Tag("vibes/SessionsApi")<SessionsApi, SessionsApiShape>() {}

/** The session calls of this node. */
export const apiLayer = Layer.effect(
  SessionsApi,
  Effect.gen(function* () {
    const makeClient = yield* Session.client
    const membership = yield* Membership
    const registry = yield* SessionRegistry
    const settings = yield* SessionSettings
    const log = yield* EventLog
    const local = yield* LocalSessions
    const workspaces = yield* Workspaces
    // Session ids are never reused, so one that existed once is known for good.
    const known = new Set<string>()

    const unavailable = (sessionId: string) => (error: { readonly message: string }) =>
      new SessionUnavailable({ sessionId, message: error.message })

    const notFound = (sessionId: string) =>
      new SessionNotFound({ sessionId, message: `no session with id ${sessionId}` })

    // An id that is not a session id is answered without a query: it names no session.
    const isSessionId = Schema.is(SessionId)

    const lookup = (sessionId: string) =>
      (isSessionId(sessionId) ? registry.get(sessionId) : Effect.succeed(Option.none())).pipe(
        Effect.mapError(unavailable(sessionId)),
        Effect.flatMap(
          Option.match({
            onNone: () => Effect.fail(notFound(sessionId)),
            onSome: Effect.succeed
          })
        )
      )

    const entity = (sessionId: string) =>
      Effect.gen(function* () {
        if (!known.has(sessionId)) {
          yield* lookup(sessionId)
          known.add(sessionId)
        }
        return makeClient(sessionId)
      })

    const screenAt = (sessionId: string, upTo: number) =>
      Effect.gen(function* () {
        const row = yield* lookup(sessionId)
        const snapshot = yield* latestSnapshot(sessionId, upTo).pipe(Effect.mapError(unavailable(sessionId)))
        const created = yield* log
          .read(1, EventFilter.make({ sessionId, types: ["session.created"] }), 1)
          .pipe(Effect.mapError(unavailable(sessionId)))
        const initial = created[0]?.data as { readonly cols?: number; readonly rows?: number } | undefined
        const history = yield* historyAfter(
          sessionId,
          Option.match(snapshot, { onNone: () => 0, onSome: (s) => s.offset }),
          upTo
        ).pipe(Effect.mapError(unavailable(sessionId)))
        const fromSeq = Option.match(snapshot, { onNone: () => 0, onSome: (s) => s.seq })
        const steps = historySteps(history, fromSeq)
        let seq = fromSeq
        for (const step of steps) if (step._tag === "Output") seq = step.seq + step.data.length
        const rebuilt = yield* ScreenModel.rebuild({
          cols: Option.match(snapshot, { onNone: () => initial?.cols ?? row.cols, onSome: (s) => s.cols }),
          rows: Option.match(snapshot, { onNone: () => initial?.rows ?? row.rows, onSome: (s) => s.rows }),
          scrollback: settings.scrollback,
          base: Option.map(snapshot, (s) => ({ cols: s.cols, rows: s.rows, vt: s.screen })),
          outputs: steps.map((step) =>
            step._tag === "Output" ? { data: step.data } : { resize: { cols: step.cols, rows: step.rows } }
          )
        })
        return Screen.make({
          cols: rebuilt.cols,
          rows: rebuilt.rows,
          text: rebuilt.text,
          vt: rebuilt.vt,
          cursor: rebuilt.cursor,
          altScreen: rebuilt.altScreen,
          seq
        })
      })

    /** An attachment through Sharding: the session's entity is on another node, or not active yet. */
    const remoteAttach = ({ sessionId, cols, rows, readOnly, from, scrollback }: AttachSession) =>
      Stream.unwrap(
        Effect.map(entity(sessionId), (client) => client.Attach({ cols, rows, readOnly, from, scrollback }))
      ).pipe(
        Stream.mapError(toSessionError(sessionId)),
        // The entity ends its streams by interruption when its node stops: to the client that is a
        // session to attach to again (elsewhere, or here after the restart), not an end.
        Stream.catchAllCause((cause) =>
          Cause.isInterruptedOnly(cause) ? Stream.fail(sessionMoving(sessionId)) : Stream.failCause(cause)
        )
      )

    const api: SessionsApiShape = {
      // A session active here, or known from before (`entity`), needs no query.
      exists: (sessionId) =>
        Option.isSome(local.get(sessionId)) ? Effect.void : Effect.asVoid(entity(sessionId)),
      "Sessions.Create": (request) =>
        Effect.gen(function* () {
          yield* checkCreateSession(request)
          const refuse = (field: string, message: string) => new InvalidSessionRequest({ field, message })
          const start = (sessionId: string, spec: CreateSession) =>
            withinReach(sessionId)(makeClient(sessionId).Create(spec)).pipe(
              Effect.tap(() => Effect.sync(() => known.add(sessionId))),
              Effect.mapError(toSessionError(sessionId))
            )
          if (request.workspace === undefined) {
            if (request.branch !== undefined || request.from !== undefined) {
              return yield* refuse(
                request.branch !== undefined ? "branch" : "from",
                "branch and from choose a worktree of a workspace: name the workspace too"
              )
            }
            const machine = yield* membership.pickMachine(Option.fromNullable(request.node))
            return yield* start(Cluster.newSessionId(machine), request)
          }
          if (request.cwd !== undefined) {
            return yield* refuse("cwd", "a session in a workspace runs in its worktree: drop cwd")
          }
          if (request.branch === undefined) {
            return yield* refuse("branch", "a session in a workspace needs the branch to work on")
          }
          // The worktree is made here, so the session runs on this node's machine.
          if (request.node !== undefined && request.node !== settings.nodeId) {
            return yield* refuse(
              "node",
              `a session in a workspace runs on the node that makes its worktree (${settings.nodeId}): ask node ${request.node} itself, or drop node`
            )
          }
          const machine = yield* membership.pickMachine(Option.some(settings.nodeId))
          const sessionId = Cluster.newSessionId(machine)
          const owner = { kind: "session", id: sessionId } as const
          const worktree = yield* workspaces.prepare({
            workspace: request.workspace,
            branch: request.branch,
            from: request.from,
            owner
          })
          return yield* start(sessionId, new CreateSession({ ...request, cwd: worktree.path })).pipe(
            Effect.tapError(() => Effect.ignore(workspaces.abandon(owner)))
          )
        }),
      "Sessions.Input": ({ sessionId, data, attachmentId }) =>
        Option.match(local.get(sessionId), {
          onSome: (session) => session.input(data, attachmentId),
          onNone: () =>
            Effect.flatMap(entity(sessionId), (client) =>
              withinReach(sessionId)(client.Input({ data, attachmentId }))
            ).pipe(Effect.mapError(toSessionError(sessionId)))
        }),
      "Sessions.Resize": ({ sessionId, cols, rows, attachmentId }) =>
        Effect.flatMap(entity(sessionId), (client) =>
          withinReach(sessionId)(client.Resize({ cols, rows, attachmentId }))
        ).pipe(Effect.mapError(toSessionError(sessionId))),
      "Sessions.Signal": ({ sessionId, signal }) =>
        Effect.flatMap(entity(sessionId), (client) => withinReach(sessionId)(client.Signal({ signal }))).pipe(
          Effect.mapError(toSessionError(sessionId))
        ),
      "Sessions.Close": ({ sessionId }) =>
        Effect.flatMap(entity(sessionId), (client) => withinReach(sessionId)(client.Close())).pipe(
          Effect.mapError(toSessionError(sessionId))
        ),
      "Sessions.Attach": ({ sessionId, cols, rows, readOnly, from, scrollback }) =>
        Option.match(local.get(sessionId), {
          onSome: (session) => session.attach({ cols, rows, readOnly, from, scrollback }),
          onNone: () => remoteAttach({ sessionId, cols, rows, readOnly, from, scrollback })
        }),
      // Each tick asks every running session's entity for its preview; an entity answers null when
      // nothing changed since what this stream sent, so an idle list costs one small call each.
      "Sessions.Previews": ({ everyMs }) =>
        Stream.unwrap(
          Effect.sync(() => {
            const sent = new Map<string, { readonly seq: number; readonly idle: boolean }>()
            const tick = Effect.gen(function* () {
              const rows = yield* registry
                .list(Option.some("running"))
                .pipe(Effect.mapError(unavailable("*")))
              const previews = yield* Effect.forEach(
                rows,
                (row) => {
                  const last = sent.get(row.id)
                  return makeClient(row.id)
                    .Preview({ since: last?.seq ?? -1, idle: last?.idle ?? false })
                    .pipe(
                      // A session whose node is away is left out of this tick.
                      Effect.timeout("2 seconds"),
                      Effect.option,
                      Effect.map((answer) => Option.flatMap(answer, Option.fromNullable))
                    )
                },
                { concurrency: 8 }
              )
              const running = new Set(rows.map((row) => row.id))
              for (const id of sent.keys()) if (!running.has(id)) sent.delete(id)
              return previews.flatMap((preview) => {
                if (Option.isNone(preview)) return []
                sent.set(preview.value.sessionId, { seq: preview.value.seq, idle: preview.value.idle })
                return [preview.value]
              })
            })
            return Stream.repeatEffectWithSchedule(tick, Schedule.spaced(Duration.millis(everyMs))).pipe(
              Stream.flattenIterables
            )
          })
        ),
      "Sessions.Snapshot": ({ sessionId }) =>
        Effect.flatMap(entity(sessionId), (client) => withinReach(sessionId)(client.Snapshot())).pipe(
          Effect.mapError(toSessionError(sessionId))
        ),
      "Sessions.ScreenAt": ({ sessionId, at }) =>
        Effect.gen(function* () {
          if (at._tag === "Offset" && !Number.isSafeInteger(at.offset)) {
            return yield* new InvalidSessionRequest({
              field: "at.offset",
              message: "at.offset: must be an event offset (a whole number up to 2^53 - 1)"
            })
          }
          const upTo =
            at._tag === "Offset"
              ? at.offset
              : (yield* log
                  .resolve({ _tag: "Time", epochMillis: at.at.epochMillis })
                  .pipe(Effect.mapError(unavailable(sessionId)))) - 1
          return yield* screenAt(sessionId, upTo)
        }).pipe(Effect.provideService(EventLog, log)),
      "Sessions.List": ({ state }) =>
        registry.list(Option.fromNullable(state)).pipe(
          Effect.map((rows) => rows.map(toInfo)),
          Effect.mapError(unavailable("*"))
        ),
      // A running session's entity knows its output and activity up to the byte; the registry has
      // them as of the last idle point.
      "Sessions.Get": ({ sessionId }) =>
        Effect.flatMap(lookup(sessionId), (row) =>
          row.state === "running"
            ? makeClient(sessionId)
                .Info()
                .pipe(
                  // Its machine may be down: the registry's row is the answer then.
                  Effect.timeout("2 seconds"),
                  Effect.orElseSucceed(() => toInfo(row))
                )
            : Effect.succeed(toInfo(row))
        )
    }
    return api
  })
)

/** The handlers of the `Sessions` RPC group. */
export const layer = SessionsRpcs.toLayer(
  // The handlers are the RPC calls alone: the group refuses a handler for a call it does not have.
  Effect.map(SessionsApi, ({ exists: _exists, ...handlers }) => handlers)
).pipe(Layer.provide(apiLayer))
