/**
 * The sessions whose entity is active on this node, reachable without a cluster message: the
 * terminal's data plane. Keystrokes and attached output of a session on this node go straight to
 * and from its entity, while every other call, and any call for a session on another node, goes
 * through Sharding as before (one hop to the owning node).
 *
 * An entity registers itself while it is active. When it stops (its node stops, or its shard
 * moves), its direct attachments fail with `SessionUnavailable`, as attachments through Sharding
 * do, and their clients attach again.
 */
import { Context, Effect, Layer, Option, type Scope, type Stream } from "effect"
import { type AttachEvent, type SessionError, SessionUnavailable } from "../../rpc/Sessions.js"

/** How an attachment ends when its session's entity stops here: the client attaches again. */
export const sessionMoving = (sessionId: string): SessionUnavailable =>
  new SessionUnavailable({
    sessionId,
    message: `session ${sessionId} is moving: its node is stopping; attach again`
  })

/** What an attaching client asks for (the `Attach` message's payload). */
export interface AttachRequest {
  readonly cols?: number | undefined
  readonly rows?: number | undefined
  readonly readOnly: boolean
  readonly from?: number | undefined
  readonly scrollback?: number | undefined
}

/** The data plane of one session entity. */
export interface LocalSession {
  /** As the entity's `Input`. */
  readonly input: (data: Uint8Array, attachmentId: string | undefined) => Effect.Effect<void, SessionError>
  /** As the entity's `Attach`. */
  readonly attach: (request: AttachRequest) => Stream.Stream<AttachEvent, SessionError>
}

/** The active session entities of this node. */
export class LocalSessions extends Context.Tag("vibes/LocalSessions")<
  LocalSessions,
  {
    /** Registers an entity for as long as the scope lives. */
    readonly register: (sessionId: string, session: LocalSession) => Effect.Effect<void, never, Scope.Scope>
    /** The entity of `sessionId`, when it is active on this node. */
    readonly get: (sessionId: string) => Option.Option<LocalSession>
  }
>() {}

/** An empty directory. */
export const layer: Layer.Layer<LocalSessions> = Layer.sync(LocalSessions, () => {
  const sessions = new Map<string, LocalSession>()
  return {
    register: (sessionId, session) =>
      Effect.acquireRelease(
        Effect.sync(() => sessions.set(sessionId, session)),
        () =>
          Effect.sync(() => {
            if (sessions.get(sessionId) === session) sessions.delete(sessionId)
          })
      ),
    get: (sessionId) => Option.fromNullable(sessions.get(sessionId))
  }
})
