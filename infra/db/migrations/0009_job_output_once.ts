import { Effect } from "effect"
import { SqlClient } from "@effect/sql/SqlClient"

/**
 * A job's output is stored once, as its `job.log` events (which every chunk already had beside its
 * `job_events` row): the table goes. Chunks whose events an operator's own `job.log` retention
 * policy had deleted before this release go with it.
 */
export default Effect.gen(function* () {
  const sql = yield* SqlClient
  yield* sql`DROP TABLE IF EXISTS job_events`
})
