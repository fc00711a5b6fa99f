import { expect, layer } from "@effect/vitest"
import { Effect, Layer, Stream } from "effect"
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

/** Makes every insert of an event of type `type` fail as a check violation, counting the tries. */
const poison = (type: string) =>
  Effect.gen(function* () {
    const sql = yield* SqlClient
    yield* sql`CREATE SEQUENCE IF NOT EXISTS poison_tries`
    yield* sql.unsafe(`
      CREATE OR REPLACE FUNCTION refuse_poison() RETURNS trigger AS $$
      BEGIN
        IF NEW.type = '${type}' THEN
          PERFORM nextval('poison_tries');
          RAISE EXCEPTION 'no_poison: % is refused', NEW.type USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
      END $$ LANGUAGE plpgsql`)
    yield* sql`CREATE TRIGGER no_poison BEFORE INSERT ON vibes_events FOR EACH ROW EXECUTE FUNCTION refuse_poison()`
    return sql<{
      n: string
    }>`SELECT CASE WHEN is_called THEN last_value ELSE 0 END AS n FROM poison_tries`.pipe(
      Effect.map((rows) => Number(rows[0]?.n ?? 0))
    )
  })

layer(pgLog(), { timeout: 60_000, excludeTestServices: true })("Postgres event log write failures", (it) => {
  it.effect(
    "a write the database refuses for good is not retried, fails only its own caller, and raises a durable system.alert",
    () =>
      Effect.gen(function* () {
        const log = yield* EventLog
        const tries = yield* poison("test.poison")
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
          expect(poisoned.left._tag).toBe("EventRejected")
          expect(poisoned.left.message).toContain("refused 1 events")
        }
        // Tried in the batch it came in, then alone: never again.
        expect(yield* tries).toBeLessThanOrEqual(2)
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

  it.effect(
    "text the database cannot hold (NUL, an unpaired surrogate) is refused before it is written",
    () =>
      Effect.gen(function* () {
        const log = yield* EventLog
        const source = { nodeId: "test", component: "test" }
        const head = yield* log.head
        for (const event of [
          NewEvent.make({ type: "test.text", source, data: { text: "a\u0000b" } }),
          NewEvent.make({ type: "test.text", source, data: { nested: ["\uD800"] } }),
          NewEvent.make({ type: "test.text", source, data: { ["key\u0000"]: 1 } }),
          NewEvent.make({ type: "test.text", source, sessionId: "s\u0000", data: {} }, true)
        ]) {
          const refused = yield* Effect.flip(log.append([event]))
          expect(refused._tag).toBe("EventRejected")
        }
        // What only looks like an escape is stored as it is, and a real pair is fine.
        const fine = NewEvent.make({
          type: "test.text",
          source,
          data: { text: "\\u0000 \\ud800 \uD83D\uDE00" }
        })
        yield* log.append([fine])
        const stored = yield* log.read(
          head + 1,
          EventFilter.make({ types: ["test.text", "system.alert"] }),
          10
        )
        expect(stored.map((e) => e.data)).toEqual([{ text: "\\u0000 \\ud800 \uD83D\uDE00" }])
      })
  )

  it.effect("a subscription whose read the database refuses for good fails at once instead of retrying", () =>
    Effect.gen(function* () {
      const log = yield* EventLog
      const sql = yield* SqlClient
      const source = { nodeId: "test", component: "test" }
      yield* log.append([NewEvent.make({ type: "test.read", source, data: {} })])
      yield* Effect.acquireRelease(sql`ALTER TABLE vibes_events RENAME COLUMN data TO data_moved`, () =>
        Effect.orDie(sql`ALTER TABLE vibes_events RENAME COLUMN data_moved TO data`)
      )
      // Before, a failed read was retried for a minute whatever the reason.
      const failed = yield* log
        .subscribe({ _tag: "Offset", offset: 1 }, EventFilter.make({}))
        .pipe(Stream.runDrain, Effect.flip, Effect.timeout("30 seconds"))
      expect(failed._tag).toBe("EventLogError")
      expect(failed.message).toContain("data")
    }).pipe(Effect.scoped)
  )
})
