/**
 * The node's event bus on JetStream (`fanOut: "direct"`, as the server runs it there): each
 * subscription asks the NATS server for its own subjects, so the node receives what its clients
 * follow, not the whole log.
 */
import { type ConsumerInfo, jetstreamManager } from "@nats-io/jetstream"
import { connect } from "@nats-io/transport-node"
import { describe, expect, it } from "@effect/vitest"
import { Chunk, Context, Effect, Fiber, Layer, Redacted, Schedule, Stream } from "effect"
import { EventBus } from "../../../infra/eventlog/EventBus.js"
import * as EventBusModule from "../../../infra/eventlog/EventBus.js"
import { EventLog } from "../../../infra/eventlog/EventLog.js"
import { EventFilter, NewEvent } from "../../../rpc/Events.js"
import { logOn, server, uniqueName } from "../../support/TestNats.js"

const source = { nodeId: "test", component: "test" }

describe("event bus on JetStream", () => {
  it.scopedLive(
    "a subscription for one session is served by a consumer on that session's subjects only",
    () =>
      Effect.gen(function* () {
        const at = yield* server
        const prefix = `t${uniqueName()}`
        const stream = `T_${prefix}`
        const context = yield* Layer.build(
          EventBusModule.layer({ fanOut: "direct" }).pipe(Layer.provideMerge(logOn(at, { stream, prefix })))
        )
        const log = Context.get(context, EventLog)
        const bus = Context.get(context, EventBus)
        const nc = yield* Effect.acquireRelease(
          Effect.promise(() =>
            connect({
              servers: at.url,
              ...(at.token !== undefined ? { token: Redacted.value(at.token) } : {})
            })
          ),
          (connection) => Effect.promise(() => connection.close())
        )
        const jsm = yield* Effect.promise(() => jetstreamManager(nc))
        const consumers = Effect.promise(
          async (): Promise<Array<ConsumerInfo>> => await jsm.consumers.list(stream).next()
        )

        const followed = yield* bus
          .subscribe({ _tag: "Latest" }, EventFilter.make({ sessionId: "s-one", types: ["session.output"] }))
          .pipe(Stream.take(2), Stream.runCollect, Effect.fork)
        const filters = yield* consumers.pipe(
          Effect.map((list) => list.map((info) => info.config.filter_subject ?? "")),
          Effect.filterOrFail((list) => list.length > 0),
          Effect.retry(Schedule.spaced("10 millis").pipe(Schedule.upTo("10 seconds")))
        )
        // Not the whole log (`<prefix>.>`): the session's output subjects.
        expect(filters).toHaveLength(1)
        expect(filters[0]).not.toBe(`${prefix}.>`)
        expect(filters[0]).toContain("s-one")

        yield* log.append([
          NewEvent.make({ type: "session.output", source, sessionId: "s-two", data: { seq: 0 } }),
          NewEvent.make({ type: "session.output", source, sessionId: "s-one", data: { seq: 0 } }),
          NewEvent.make({ type: "job.log", source, jobId: "j", data: {} }),
          NewEvent.make({ type: "session.output", source, sessionId: "s-one", data: { seq: 1 } })
        ])
        const got = Chunk.toReadonlyArray(yield* Fiber.join(followed))
        expect(got.map((event) => [event.sessionId, event.data])).toEqual([
          ["s-one", { seq: 0 }],
          ["s-one", { seq: 1 }]
        ])
      })
  )
})
