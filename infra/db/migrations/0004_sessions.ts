import { Effect } from "effect"
import { SqlClient } from "@effect/sql/SqlClient"

/** The session registry: one row a terminal session, kept current by its entity. */
export default Effect.gen(function* () {
  const sql = yield* SqlClient
  yield* sql`
    CREATE TABLE vibes_sessions (
      id               UUID PRIMARY KEY,
      tenant_id        TEXT NOT NULL DEFAULT 'default',
      name             TEXT,
      command          TEXT NOT NULL,
      args             JSONB NOT NULL,
      cwd              TEXT NOT NULL,
      env              JSONB NOT NULL,
      cols             INTEGER NOT NULL,
      rows             INTEGER NOT NULL,
      restart_policy   TEXT NOT NULL CHECK (restart_policy IN ('never', 'on-failure', 'always')),
      state            TEXT NOT NULL CHECK (state IN ('running', 'exited', 'closed', 'lost')),
      node_id          TEXT NOT NULL,
      pty_id           TEXT NOT NULL,
      seq_base         BIGINT NOT NULL DEFAULT 0,
      pid              INTEGER,
      created_at       TIMESTAMPTZ NOT NULL,
      started_at       TIMESTAMPTZ NOT NULL,
      exited_at        TIMESTAMPTZ,
      exit_code        INTEGER,
      exit_signal      TEXT,
      attached_clients INTEGER NOT NULL DEFAULT 0,
      last_activity_at TIMESTAMPTZ NOT NULL,
      output_bytes     BIGINT NOT NULL DEFAULT 0,
      restarts         INTEGER NOT NULL DEFAULT 0
    )
  `
  yield* sql`CREATE INDEX vibes_sessions_state ON vibes_sessions (state, node_id)`
  yield* sql`CREATE INDEX vibes_sessions_created ON vibes_sessions (created_at DESC)`
})
