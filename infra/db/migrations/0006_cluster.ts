import { Effect } from "effect"
import { SqlClient } from "@effect/sql/SqlClient"

/**
 * Cluster mode: a session id names the machine that holds its PTY (`<machine>_<uuid>`), and each
 * node records where other nodes reach it and how much it holds.
 */
export default Effect.gen(function* () {
  const sql = yield* SqlClient
  yield* sql`ALTER TABLE vibes_sessions ALTER COLUMN id TYPE TEXT USING id::text`
  yield* sql`ALTER TABLE vibes_sessions ADD COLUMN replaced_by TEXT`
  yield* sql`
    ALTER TABLE vibes_nodes
      ADD COLUMN machine        TEXT,
      ADD COLUMN url            TEXT,
      ADD COLUMN runner_address TEXT,
      ADD COLUMN shards         INTEGER NOT NULL DEFAULT 0,
      ADD COLUMN entities       INTEGER NOT NULL DEFAULT 0
  `
})
