/**
 * What an endpoint is sent: events grouped into messages (sessions waiting for input within one
 * window coalesce into one message), each written in the endpoint's format: vibes JSON (Standard
 * Webhooks' `{type, timestamp, data}`), or a Slack (`text`) or Discord (`content`) message for
 * their incoming-webhook URLs.
 */
import * as crypto from "node:crypto"
import { Schema } from "effect"
import { decodePayload, type Severity, StoredEvent } from "../../rpc/Events.js"
import type { EndpointFormat } from "../../rpc/Notify.js"

/** Event types that coalesce: many sessions going idle at once make one message. */
export const coalescing: ReadonlySet<string> = new Set(["session.idle", "session.bell"])

/** One message: the events it carries, in log order. */
export interface Group {
  readonly events: ReadonlyArray<StoredEvent>
}

/**
 * Splits a window's events into messages: every coalescing event joins one message placed where
 * the first of them was; any other event is a message of its own.
 */
export const group = (events: ReadonlyArray<StoredEvent>): ReadonlyArray<Group> => {
  const groups: Array<{ events: Array<StoredEvent> }> = []
  let waiting: { events: Array<StoredEvent> } | undefined
  for (const event of events) {
    if (coalescing.has(event.type)) {
      if (waiting === undefined) {
        waiting = { events: [] }
        groups.push(waiting)
      }
      waiting.events.push(event)
    } else groups.push({ events: [event] })
  }
  return groups
}

/**
 * The `webhook-id` of a message: the event's own id for one event; for several, a hash of the
 * endpoint and their ids. The same events give the same id after a restart, so a receiver can
 * de-duplicate what was sent again.
 */
export const webhookId = (endpointId: string, events: ReadonlyArray<StoredEvent>): string => {
  const [only] = events
  if (events.length === 1 && only !== undefined) return `msg_${only.id}`
  const hash = crypto.createHash("sha256").update(endpointId)
  for (const event of events) hash.update(`\0${event.id}`)
  return `msg_${hash.digest("hex").slice(0, 32)}`
}

const severities: ReadonlyArray<Severity> = ["info", "warn", "error", "critical"]

/** Whether `severity` is at least `min`. */
export const atLeast = (severity: Severity, min: Severity): boolean =>
  severities.indexOf(severity) >= severities.indexOf(min)

const encodeEvent = Schema.encodeSync(StoredEvent)

/** An event as JSON, without its raw bytes (a session's output is not sent). */
const eventJson = (event: StoredEvent) => {
  const { bytes: _bytes, ...rest } = encodeEvent(event)
  return rest
}

const short = (id: string | undefined) => (id === undefined ? "?" : id.length > 24 ? `…${id.slice(-12)}` : id)

/** One line saying what an event means to a person. */
export const describe = (event: StoredEvent): string => {
  const payload = decodePayload(event)
  switch (payload._tag) {
    case "session.idle":
      return `Session ${short(event.sessionId)} is waiting for input`
    case "session.bell":
      return `Session ${short(event.sessionId)} rang the bell`
    case "session.lost":
      return `Session ${short(event.sessionId)} was lost${payload.data.reason !== undefined ? `: ${payload.data.reason}` : ""}`
    case "job.done": {
      const exit = payload.data.exitCode !== null ? ` (exit ${payload.data.exitCode})` : ""
      const verb = payload.data.status === "succeeded" ? "finished" : payload.data.status
      return `Job ${short(payload.data.jobId)} ${verb}${exit}`
    }
    case "proxy.circuit_opened":
      return `The AI proxy stopped sending to '${payload.data.provider}' for ${Math.round(payload.data.openMillis / 1000)} s after ${payload.data.failures} failures in a row`
    default: {
      const about = event.sessionId ?? event.jobId
      return `${event.type}${about !== undefined ? ` (${short(about)})` : ""}`
    }
  }
}

/** The line of a coalesced message. */
const summary = (events: ReadonlyArray<StoredEvent>): string => {
  const [first] = events
  if (events.length === 1 && first !== undefined) return describe(first)
  const sessions = [...new Set(events.map((event) => short(event.sessionId)))]
  const listed = sessions.slice(0, 10).join(", ") + (sessions.length > 10 ? ", …" : "")
  return `${sessions.length} sessions are waiting for input: ${listed}`
}

/** The body of a message in `format`, and the event type it is sent as. */
export const body = (
  format: EndpointFormat,
  events: ReadonlyArray<StoredEvent>,
  now: Date
): { readonly type: string; readonly body: string } => {
  const [first] = events
  const type = events.length === 1 && first !== undefined ? first.type : "notify.coalesced"
  switch (format) {
    case "vibes":
      return {
        type,
        body: JSON.stringify({
          type,
          timestamp: now.toISOString(),
          data:
            events.length === 1 && first !== undefined
              ? eventJson(first)
              : { count: events.length, events: events.map(eventJson) }
        })
      }
    case "slack":
      return { type, body: JSON.stringify({ text: summary(events) }) }
    case "discord":
      return { type, body: JSON.stringify({ content: summary(events).slice(0, 2000) }) }
  }
}

/** The body of a test message. */
export const testBody = (format: EndpointFormat, endpoint: string, now: Date): string => {
  const text = `vibes: a test message to endpoint '${endpoint}'`
  switch (format) {
    case "vibes":
      return JSON.stringify({ type: "notify.test", timestamp: now.toISOString(), data: { endpoint, text } })
    case "slack":
      return JSON.stringify({ text })
    case "discord":
      return JSON.stringify({ content: text })
  }
}
