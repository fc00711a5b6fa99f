import { Effect } from "effect"
import { SqlClient } from "@effect/sql/SqlClient"

/** Named consumers of the event log and the last offset each has processed. */
export default Effect.gen(function* () {
  const sql = yield* SqlClient
  yield* sql`
    CREATE TABLE vibes_event_consumers (
      name       TEXT PRIMARY KEY,
      "offset"   BIGINT NOT NULL CHECK ("offset" >= 0),
      updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
    )
  `
})
