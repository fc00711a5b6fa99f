import { Effect } from "effect"
import { SqlClient } from "@effect/sql/SqlClient"

/**
 * The artifacts jobs left: one row a kept file, written once its bytes are stored (under
 * `storage_key` in the node's storage). They go with their job.
 */
export default Effect.gen(function* () {
  const sql = yield* SqlClient
  yield* sql`
    CREATE TABLE job_artifacts (
      job_id       UUID NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
      name         TEXT NOT NULL,
      tenant_id    TEXT NOT NULL DEFAULT 'default',
      storage_key  TEXT NOT NULL,
      size         BIGINT NOT NULL CHECK (size >= 0),
      sha256       TEXT NOT NULL,
      created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
      PRIMARY KEY (job_id, name)
    )
  `
})
