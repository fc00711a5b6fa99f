import { Effect } from "effect"
import { SqlClient } from "@effect/sql/SqlClient"

/**
 * Follow mode: the branch a workspace's main checkout follows (null: none), where following
 * stands (`following`, or `blocked` with the reason), the commit last put in the main checkout,
 * and when that last changed.
 */
export default Effect.gen(function* () {
  const sql = yield* SqlClient
  yield* sql`
    ALTER TABLE vibes_workspaces
      ADD COLUMN follow_branch     TEXT,
      ADD COLUMN follow_state      TEXT CHECK (follow_state IN ('following', 'blocked')),
      ADD COLUMN follow_reason     TEXT,
      ADD COLUMN follow_message    TEXT,
      ADD COLUMN follow_commit     TEXT,
      ADD COLUMN follow_restore    TEXT,
      ADD COLUMN follow_updated_at TIMESTAMPTZ
  `
})
