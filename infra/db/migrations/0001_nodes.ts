import { Effect } from "effect"
import { SqlClient } from "@effect/sql/SqlClient"

/** The registry of nodes that have run against this database. */
export default Effect.flatMap(
  SqlClient,
  (sql) => sql`
    CREATE TABLE IF NOT EXISTS vibes_nodes (
      node_id      TEXT PRIMARY KEY,
      tenant_id    TEXT NOT NULL DEFAULT 'default',
      version      TEXT NOT NULL,
      host         TEXT NOT NULL,
      pid          INTEGER NOT NULL,
      started_at   TIMESTAMPTZ NOT NULL,
      last_seen_at TIMESTAMPTZ NOT NULL,
      stopped_at   TIMESTAMPTZ
    )
  `
)
