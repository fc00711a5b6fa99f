import { Effect } from "effect"
import { SqlClient } from "@effect/sql/SqlClient"

/** The event log: events by gapless offset, and the head counter that hands offsets out. */
export default Effect.gen(function* () {
  const sql = yield* SqlClient
  yield* sql`
    CREATE TABLE vibes_events (
      "offset"         BIGINT PRIMARY KEY,
      id               UUID NOT NULL UNIQUE,
      type             TEXT NOT NULL,
      ts               TIMESTAMPTZ NOT NULL,
      source_node      TEXT NOT NULL,
      source_component TEXT NOT NULL,
      session_id       TEXT,
      job_id           TEXT,
      tenant_id        TEXT NOT NULL DEFAULT 'default',
      severity         TEXT NOT NULL CHECK (severity IN ('info', 'warn', 'error', 'critical')),
      correlation_id   TEXT,
      data             JSONB NOT NULL
    )
  `
  yield* sql`CREATE INDEX vibes_events_session ON vibes_events (session_id, "offset") WHERE session_id IS NOT NULL`
  yield* sql`CREATE INDEX vibes_events_job ON vibes_events (job_id, "offset") WHERE job_id IS NOT NULL`
  yield* sql`CREATE INDEX vibes_events_ts ON vibes_events (ts)`
  yield* sql`
    CREATE TABLE vibes_event_head (
      singleton BOOLEAN PRIMARY KEY DEFAULT true CHECK (singleton),
      head      BIGINT NOT NULL
    )
  `
  yield* sql`INSERT INTO vibes_event_head (singleton, head) VALUES (true, 0)`
})
