/**
 * Outbound webhooks. Each endpoint is a named consumer of the event log (`notify.<endpoint id>`):
 * its deliverer reads the events its filter selects from just after the consumer's committed
 * offset, sends them in order, one message at a time (concurrency 1, under the endpoint's rate
 * limit), retries a failed attempt with exponential backoff and jitter, dead-letters a message
 * after the endpoint's `maxAttempts`, and commits the offset only once every message of what it
 * read was delivered or dead-lettered. So nothing is lost across restarts: what was not committed
 * is read and sent again, under the same `webhook-id`.
 *
 * The deliverers run as one cluster singleton, so a cluster sends each message from one node; it
 * moves to another node when its node goes. They re-read the endpoint list every few seconds (at
 * once when this node changes it).
 */
import {
  Chunk,
  Context,
  Duration,
  Effect,
  FiberMap,
  Layer,
  Metric,
  MetricBoundaries,
  Option,
  Queue,
  Redacted,
  Schedule,
  Stream
} from "effect"
import * as Singleton from "@effect/cluster/Singleton"
import { compileGlob, EventFilter, type StoredEvent } from "../../rpc/Events.js"
import {
  type AddEndpoint,
  AddedEndpoint,
  defaultTypes,
  type DeliveryInfo,
  type DeliveryStatus,
  EndpointInfo,
  InvalidNotifyRequest,
  type NotifyError,
  NotifyNotFound,
  NotifyUnavailable
} from "../../rpc/Notify.js"
import { Emitter } from "../../infra/eventlog/Emitter.js"
import { EventLog, uuidv7 } from "../../infra/eventlog/EventLog.js"
import * as Signatures from "../../infra/webhooks/Signatures.js"
import { tagged } from "../../infra/telemetry/MetricTags.js"
import { RateLimiter } from "../proxy/Guards.js"
import * as Messages from "./Messages.js"
import { type Attempt, type Endpoint, type Message, NotifyStore, targetOf } from "./NotifyStore.js"

/** How deliverers behave. */
export interface Settings {
  /** The wait before the second attempt; each later one doubles, with jitter. */
  readonly retryBase: Duration.Duration
  /** The longest wait between attempts. */
  readonly retryMax: Duration.Duration
  /** How often the endpoint list is re-read (changes made on this node are seen at once). */
  readonly refreshEvery: Duration.Duration
}

/** The defaults: 1 s doubling up to 5 min; the list re-read every 5 s. */
export const defaults: Settings = {
  retryBase: Duration.seconds(1),
  retryMax: Duration.minutes(5),
  refreshEvery: Duration.seconds(5)
}

const deliveriesTotal = Metric.counter("vibes_notify_attempts_total", {
  description: "Webhook delivery attempts, by endpoint and outcome (delivered, failed, dead)",
  incremental: true
})
const deliverySeconds = Metric.histogram(
  "vibes_notify_attempt_duration_seconds",
  MetricBoundaries.fromIterable([0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]),
  "Time from sending a webhook delivery to its answer"
)
const rateLimitedTotal = Metric.counter("vibes_notify_rate_limited_total", {
  description: "Webhook deliveries held back by their endpoint's rate limit",
  incremental: true
})

/** The consumer name of an endpoint's deliverer. */
export const consumerOf = (endpointId: string): string => `notify.${endpointId}`

/** The delay before attempt `attempt + 1`: base·2^(attempt-1), capped, with half of it random. */
export const backoff = (
  settings: Settings,
  attempt: number,
  random: number = Math.random()
): Duration.Duration => {
  const full = Math.min(
    Duration.toMillis(settings.retryMax),
    Duration.toMillis(settings.retryBase) * 2 ** Math.min(30, Math.max(0, attempt - 1))
  )
  return Duration.millis(Math.round(full / 2 + (full / 2) * random))
}

/** Why a network failure happened, without the URL (whose path may hold a token). */
const failureOf = (error: unknown): string => {
  let current: unknown = error
  for (let depth = 0; depth < 5 && typeof current === "object" && current !== null; depth++) {
    if ("code" in current && typeof current.code === "string") return current.code
    current = "cause" in current ? current.cause : undefined
  }
  return error instanceof Error && error.name === "TimeoutError" ? "timeout" : "network error"
}

/** Posts `body` to the endpoint, signed; how it went. */
const send = (endpoint: Endpoint, webhookId: string, body: string): Effect.Effect<Attempt> =>
  Effect.suspend(() => {
    const started = performance.now()
    const headers = {
      "content-type": "application/json",
      "user-agent": "vibes-webhooks",
      ...Signatures.sign(Redacted.value(endpoint.secret), webhookId, Math.floor(Date.now() / 1000), body)
    }
    return Effect.tryPromise({
      try: async (signal) => {
        const timeout = AbortSignal.timeout(endpoint.info.timeoutMillis)
        const response = await fetch(endpoint.url, {
          method: "POST",
          headers,
          body,
          redirect: "manual",
          signal: AbortSignal.any([signal, timeout])
        })
        // The answer's body is not needed: dropped unread (bounded, whatever the receiver sends).
        await response.body?.cancel().catch(() => undefined)
        return response.status
      },
      catch: (error) => failureOf(error)
    }).pipe(
      Effect.match({
        onSuccess: (status): Attempt => ({
          status,
          latencyMillis: performance.now() - started,
          error: status >= 200 && status < 300 ? null : `HTTP ${status}`
        }),
        onFailure: (reason): Attempt => ({
          status: null,
          latencyMillis: performance.now() - started,
          error: reason
        })
      })
    )
  })

const succeeded = (attempt: Attempt) => attempt.error === null

/** What clients may do with endpoints and their deliveries. */
export class Notifier extends Context.Tag("vibes/Notifier")<
  Notifier,
  {
    readonly addEndpoint: (request: AddEndpoint) => Effect.Effect<AddedEndpoint, NotifyError>
    readonly listEndpoints: Effect.Effect<ReadonlyArray<EndpointInfo>, NotifyError>
    readonly removeEndpoint: (name: string) => Effect.Effect<void, NotifyError>
    readonly testEndpoint: (name: string) => Effect.Effect<DeliveryInfo, NotifyError>
    readonly deliveries: (filter: {
      readonly endpoint?: string | undefined
      readonly status?: DeliveryStatus | undefined
      readonly limit: number
    }) => Effect.Effect<ReadonlyArray<DeliveryInfo>, NotifyError>
    readonly redeliver: (id: string) => Effect.Effect<DeliveryInfo, NotifyError>
  }
>() {}

const logUnavailable = (error: { readonly message: string }) =>
  new NotifyUnavailable({ message: `the event log is unavailable: ${error.message}` })

/** The deliverers of every endpoint (run by the singleton), and a wake-up for them. */
const deliverers = (settings: Settings, wake: Queue.Queue<void>) =>
  Effect.gen(function* () {
    const store = yield* NotifyStore
    const log = yield* EventLog
    const emitter = yield* Emitter

    /** Attempts `message` until it is delivered or dead. */
    const attemptAll = (endpoint: Endpoint, limiter: RateLimiter, first: Message) =>
      Effect.gen(function* () {
        const name = endpoint.info.name
        let message = first
        while (message.info.status === "pending") {
          const wait = limiter.take(name)
          if (wait > 0) {
            tagged(rateLimitedTotal, { endpoint: name }).unsafeUpdate(1, [])
            yield* Effect.sleep(Duration.millis(Math.ceil(wait * 1000)))
            continue
          }
          const attempt = yield* send(endpoint, message.info.webhookId, message.body)
          const ok = succeeded(attempt)
          const count = message.info.attempts + 1
          const status: DeliveryStatus = ok
            ? "delivered"
            : count >= endpoint.info.maxAttempts
              ? "dead"
              : "pending"
          message = yield* store.recordAttempt(message.info.id, attempt, status)
          tagged(deliveriesTotal, {
            endpoint: name,
            outcome: ok ? "delivered" : status === "dead" ? "dead" : "failed"
          }).unsafeUpdate(1, [])
          tagged(deliverySeconds, { endpoint: name }).unsafeUpdate(attempt.latencyMillis / 1000, [])
          if (status === "dead") {
            yield* emitter.emit(
              "notify.dead_lettered",
              {
                endpoint: name,
                deliveryId: message.info.id,
                webhookId: message.info.webhookId,
                attempts: message.info.attempts,
                lastStatus: attempt.status,
                error: attempt.error ?? ""
              },
              { component: "notify", severity: "warn" }
            )
          } else if (status === "pending") {
            yield* Effect.sleep(backoff(settings, count))
          }
        }
      })

    /** Sends what the endpoint's filter selects, from after its committed offset, forever. */
    const deliver = (endpoint: Endpoint) =>
      Effect.gen(function* () {
        const info = endpoint.info
        const consumer = consumerOf(info.id)
        const limiter = new RateLimiter(
          info.ratePerMinute / 60,
          Math.max(1, Math.ceil(info.ratePerMinute / 10))
        )
        const committed = yield* log.committed(consumer)
        const filter = EventFilter.make({
          types: info.types.length > 0 ? info.types : defaultTypes,
          ...(info.sessionId !== null ? { sessionId: info.sessionId } : {}),
          ...(info.jobId !== null ? { jobId: info.jobId } : {})
        })
        const from = Option.match(committed, {
          onNone: () => ({ _tag: "Latest" as const }),
          onSome: (offset) => ({ _tag: "Offset" as const, offset: offset + 1 })
        })
        const selected = log.subscribe(from, filter).pipe(
          // Notifications about notifications would feed on themselves.
          Stream.filter(
            (event) => !event.type.startsWith("notify.") && Messages.atLeast(event.severity, info.minSeverity)
          )
        )
        const windows: Stream.Stream<Chunk.Chunk<StoredEvent>, unknown> = info.coalesceMillis > 0
          ? Stream.groupedWithin(selected, 1000, Duration.millis(info.coalesceMillis))
          : Stream.chunks(selected)
        yield* Stream.runForEach(windows, (window) =>
          Effect.gen(function* () {
            const events = Chunk.toReadonlyArray(window)
            const last = events[events.length - 1]
            if (last === undefined) return
            for (const group of Messages.group(events)) {
              const rendered = Messages.body(info.format, group.events, new Date())
              const message = yield* store.message({
                endpointId: info.id,
                webhookId: Messages.webhookId(info.id, group.events),
                types: [...new Set(group.events.map((event) => event.type))],
                firstOffset: group.events[0]?.offset ?? null,
                lastOffset: group.events[group.events.length - 1]?.offset ?? null,
                body: rendered.body
              })
              yield* attemptAll(endpoint, limiter, message)
            }
            yield* log.commit(consumer, last.offset)
          })
        )
      }).pipe(
        Effect.tapErrorCause((cause) =>
          Effect.logWarning(`webhook deliveries to '${endpoint.info.name}' stopped; starting again`, cause)
        ),
        Effect.retry(Schedule.spaced("1 second")),
        Effect.annotateLogs({ endpoint: endpoint.info.name })
      )

    const running = yield* FiberMap.make<string>()
    const refresh = Effect.gen(function* () {
      const endpoints = yield* store.endpoints
      const wanted = new Set(endpoints.map((endpoint) => endpoint.info.id))
      for (const [id] of [...running]) {
        if (!wanted.has(id)) yield* FiberMap.remove(running, id)
      }
      for (const endpoint of endpoints) {
        if (!(yield* FiberMap.has(running, endpoint.info.id)))
          yield* FiberMap.run(running, endpoint.info.id, deliver(endpoint))
      }
    }).pipe(
      Effect.catchAll((error) => Effect.logWarning(`could not read the webhook endpoints: ${error.message}`))
    )
    yield* refresh
    yield* Effect.forever(
      Effect.zipRight(Effect.race(Queue.take(wake), Effect.sleep(settings.refreshEvery)), refresh)
    )
  })

/** The notifier of this node, and the singleton that runs the deliverers of the cluster. */
export const layer = (settings: Settings) =>
  Layer.unwrapEffect(
    Effect.gen(function* () {
      const wake = yield* Queue.sliding<void>(1)
      const service = Layer.effect(
        Notifier,
        Effect.gen(function* () {
          const store = yield* NotifyStore
          const log = yield* EventLog
          const emitter = yield* Emitter
          const poke = Queue.offer(wake, undefined).pipe(Effect.asVoid)

          const endpointById = (id: string) =>
            Effect.flatMap(store.endpoints, (endpoints) => {
              const found = endpoints.find((endpoint) => endpoint.info.id === id)
              return found === undefined
                ? Effect.fail(new NotifyNotFound({ message: "the delivery's endpoint was removed" }))
                : Effect.succeed(found)
            })

          /** One attempt of `message` now, outside the ordered stream; a dead letter stays one unless it succeeds. */
          const attemptOnce = (endpoint: Endpoint, message: Message, failed: DeliveryStatus) =>
            Effect.gen(function* () {
              const attempt = yield* send(endpoint, message.info.webhookId, message.body)
              const name = endpoint.info.name
              tagged(deliveriesTotal, {
                endpoint: name,
                outcome: succeeded(attempt) ? "delivered" : "failed"
              }).unsafeUpdate(1, [])
              tagged(deliverySeconds, { endpoint: name }).unsafeUpdate(attempt.latencyMillis / 1000, [])
              const updated = yield* store.recordAttempt(
                message.info.id,
                attempt,
                succeeded(attempt) ? "delivered" : failed
              )
              return updated.info
            })

          return Notifier.of({
            addEndpoint: (request) =>
              Effect.gen(function* () {
                for (const glob of request.types) {
                  const compiled = compileGlob(glob)
                  if (compiled._tag === "Left")
                    return yield* Effect.fail(new InvalidNotifyRequest({ message: compiled.left.message }))
                }
                const secret = Option.getOrElse(
                  Option.map(Option.fromNullable(request.secret), Redacted.value),
                  Signatures.newSecret
                )
                const head = yield* Effect.mapError(log.head, logUnavailable)
                const endpoint = yield* store.addEndpoint(request, secret)
                // It starts from now: the history before it is not sent.
                yield* Effect.mapError(log.commit(consumerOf(endpoint.info.id), head), logUnavailable)
                yield* emitter.emit(
                  "notify.endpoint_added",
                  { endpoint: request.name, target: targetOf(request.url), format: request.format },
                  { component: "notify" }
                )
                yield* poke
                return AddedEndpoint.make({ endpoint: endpoint.info, secret: Redacted.make(secret) })
              }),
            listEndpoints: Effect.gen(function* () {
              const endpoints = yield* store.endpoints
              const consumers = yield* Effect.mapError(log.consumers, logUnavailable)
              const offsets = new Map(consumers.map((consumer) => [consumer.name, consumer.offset]))
              return endpoints.map((endpoint) =>
                EndpointInfo.make({
                  ...endpoint.info,
                  committed: offsets.get(consumerOf(endpoint.info.id)) ?? null
                })
              )
            }),
            removeEndpoint: (name) =>
              Effect.gen(function* () {
                const removed = yield* store.removeEndpoint(name)
                // Its consumer no longer holds back the retention of the log.
                const head = yield* Effect.mapError(log.head, logUnavailable)
                yield* log.commit(consumerOf(removed.info.id), head).pipe(Effect.ignore)
                yield* emitter.emit("notify.endpoint_removed", { endpoint: name }, { component: "notify" })
                yield* poke
              }),
            testEndpoint: (name) =>
              Effect.gen(function* () {
                const endpoint = yield* store.endpoint(name)
                const message = yield* store.message({
                  endpointId: endpoint.info.id,
                  webhookId: `msg_test_${uuidv7()}`,
                  types: ["notify.test"],
                  firstOffset: null,
                  lastOffset: null,
                  body: Messages.testBody(endpoint.info.format, name, new Date())
                })
                return yield* attemptOnce(endpoint, message, "dead")
              }),
            deliveries: (filter) => store.deliveries(filter),
            redeliver: (id) =>
              Effect.gen(function* () {
                const message = yield* store.messageById(id)
                const endpoint = yield* endpointById(message.endpointId)
                return yield* attemptOnce(endpoint, message, message.info.status)
              })
          })
        })
      )
      const singleton = Singleton.make("vibes/notify-deliverers", deliverers(settings, wake))
      return Layer.merge(service, singleton)
    })
  )
