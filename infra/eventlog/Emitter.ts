/**
 * Writes this node's own events (start, stop, client calls) to the log, with the node as source.
 * A failed write is logged, not raised: the operation it describes has already happened.
 */
import { Context, Effect, Layer } from "effect"
import { type KnownType, newEvent, type PayloadOf, type Severity } from "../../rpc/Events.js"
import { EventLog } from "./EventLog.js"

/** Extra envelope fields of an emitted event. */
export interface EmitOptions {
  readonly component?: string
  readonly severity?: Severity
  readonly sessionId?: string
  readonly jobId?: string
  readonly correlationId?: string
}

/** Emits this node's events. */
export class Emitter extends Context.Tag("vibes/Emitter")<
  Emitter,
  {
    /**
     * Appends one event of a known type, whose payload must match its schema in `payloads`;
     * resolves with its offset (0 when the write failed and was logged).
     */
    readonly emit: <T extends KnownType>(
      type: T,
      data: PayloadOf<T>,
      options?: EmitOptions
    ) => Effect.Effect<number>
  }
>() {}

/** The emitter of node `nodeId`. */
export const layer = (nodeId: string): Layer.Layer<Emitter, never, EventLog> =>
  Layer.effect(
    Emitter,
    Effect.map(EventLog, (log) =>
      Emitter.of({
        emit: (type, data, options = {}) =>
          log
            .append([
              newEvent(type, data, {
                source: { nodeId, component: options.component ?? "server" },
                ...(options.severity !== undefined ? { severity: options.severity } : {}),
                ...(options.sessionId !== undefined ? { sessionId: options.sessionId } : {}),
                ...(options.jobId !== undefined ? { jobId: options.jobId } : {}),
                ...(options.correlationId !== undefined ? { correlationId: options.correlationId } : {})
              })
            ])
            .pipe(
              Effect.map((offsets) => Number(offsets[0] ?? 0)),
              Effect.catchAll((error) =>
                Effect.as(Effect.logWarning(`could not record a ${type} event: ${error.message}`), 0)
              )
            )
      })
    )
  )
