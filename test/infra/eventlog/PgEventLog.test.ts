import { expect, layer } from "@effect/vitest"
import { Effect, Layer } from "effect"
import { SqlClient } from "@effect/sql/SqlClient"
import { EventFilter, NewEvent } from "../../../rpc/Events.js"
import { EventLog } from "../../../infra/eventlog/EventLog.js"
import * as PgEventLog from "../../../infra/eventlog/PgEventLog.js"
import * as Migrations from "../../../infra/db/Migrations.js"
import * as TestDatabase from "../../support/TestDatabase.js"
import { eventLogContract } from "./contract.js"

const pgLog = () =>
  PgEventLog.layer({ nodeId: "test-node" }).pipe(
    Layer.provideMerge(Layer.effectDiscard(Migrations.run)),
    Layer.provideMerge(TestDatabase.layerSql)
  )

eventLogContract("Postgres event log", pgLog(), pgLog)

layer(pgLog(), { timeout: 60_000, excludeTestServices: true })("Postgres event log write failures", (it) => {
  it.effect(
    "a write that fails every retry fails only its own caller and raises a durable system.alert",
    () =>
      Effect.gen(function* () {
        const log = yield* EventLog
        const sql = yield* SqlClient
        yield* sql`ALTER TABLE vibes_events ADD CONSTRAINT no_poison CHECK (type <> 'test.poison')`
        const source = { nodeId: "test", component: "test" }
        const make = (type: string, n: number) => NewEvent.make({ type, source, data: { n } })
        const [poisoned, ...innocent] = yield* Effect.all(
          [
            Effect.either(log.append([make("test.poison", 0)])),
            ...Array.from({ length: 5 }, (_, n) => Effect.either(log.append([make("test.fine", n)])))
          ],
          { concurrency: "unbounded" }
        )
        expect(poisoned?._tag).toBe("Left")
        if (poisoned?._tag === "Left") {
          expect(poisoned.left._tag).toBe("EventLogError")
          expect(poisoned.left.message).toContain("could not write 1 events")
        }
        expect(innocent.every((result) => result._tag === "Right")).toBe(true)
        yield* log.append([make("test.fine", 99)])
        const stored = yield* log.read(1, EventFilter.make({}), 100)
        expect(stored.filter((e) => e.type === "test.poison")).toEqual([])
        expect(stored.filter((e) => e.type === "test.fine")).toHaveLength(6)
        const alerts = stored.filter((e) => e.type === "system.alert")
        expect(alerts).toHaveLength(1)
        expect(alerts[0]?.severity).toBe("critical")
        expect(alerts[0]?.source).toEqual({ nodeId: "test-node", component: "eventlog" })
        expect(JSON.stringify(alerts[0]?.data)).toContain("no_poison")
        expect(stored.map((e) => Number(e.offset))).toEqual(stored.map((_, i) => i + 1))
      })
  )
})
