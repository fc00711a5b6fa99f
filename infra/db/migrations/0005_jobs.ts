import { Effect } from "effect"
import { SqlClient } from "@effect/sql/SqlClient"

/**
 * Jobs and their output. `jobs` holds one row a job, kept current by its entity; `job_events`
 * every output chunk in order (`seq` within the job), written before the matching `job.log` event.
 */
export default Effect.gen(function* () {
  const sql = yield* SqlClient
  yield* sql`
    CREATE TABLE jobs (
      id           UUID PRIMARY KEY,
      tenant_id    TEXT NOT NULL DEFAULT 'default',
      command      TEXT NOT NULL,
      type         TEXT NOT NULL CHECK (type IN ('stream', 'terminal', 'ssh')),
      status       TEXT NOT NULL CHECK (status IN
                     ('queued', 'running', 'retrying', 'succeeded', 'failed', 'timed_out', 'canceled', 'dead')),
      spec         JSONB NOT NULL,
      priority     INTEGER NOT NULL DEFAULT 0,
      run_at       TIMESTAMPTZ,
      attempts     INTEGER NOT NULL DEFAULT 0,
      labels       JSONB NOT NULL DEFAULT '{}',
      node_id      TEXT,
      pid          INTEGER,
      pty_id       TEXT,
      progress     REAL,
      error        TEXT,
      created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
      started_at   TIMESTAMPTZ,
      finished_at  TIMESTAMPTZ,
      exit_code    INTEGER,
      exit_signal  TEXT
    )
  `
  yield* sql`CREATE INDEX idx_jobs_status ON jobs (status)`
  yield* sql`CREATE INDEX idx_jobs_created_at ON jobs (created_at DESC)`
  yield* sql`
    CREATE TABLE job_events (
      id      BIGSERIAL PRIMARY KEY,
      job_id  UUID NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
      seq     BIGINT NOT NULL,
      ts      TIMESTAMPTZ NOT NULL DEFAULT now(),
      stream  TEXT NOT NULL CHECK (stream IN ('stdout', 'stderr', 'system')),
      chunk   TEXT NOT NULL
    )
  `
  yield* sql`CREATE INDEX idx_job_events_job_id_ts ON job_events (job_id, ts)`
  yield* sql`CREATE UNIQUE INDEX idx_job_events_job_id_seq ON job_events (job_id, seq)`
  yield* sql`CREATE INDEX idx_job_events_ts ON job_events (ts)`
})
