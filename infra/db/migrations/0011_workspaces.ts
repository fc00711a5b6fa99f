import { Effect } from "effect"
import { SqlClient } from "@effect/sql/SqlClient"

/**
 * Workspaces: git repositories registered with vibes (`vibes_workspaces`), and the worktrees vibes
 * made in them for sessions and jobs (`vibes_worktrees`: which branch, where, for whom, and whether
 * it is still there).
 */
export default Effect.gen(function* () {
  const sql = yield* SqlClient
  yield* sql`
    CREATE TABLE vibes_workspaces (
      id             UUID PRIMARY KEY,
      tenant_id      TEXT NOT NULL DEFAULT 'default',
      name           TEXT NOT NULL,
      path           TEXT NOT NULL,
      default_branch TEXT NOT NULL,
      worktrees_dir  TEXT NOT NULL,
      close_policy   TEXT NOT NULL CHECK (close_policy IN ('keep', 'remove-when-clean', 'remove-always')),
      created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
      UNIQUE (tenant_id, name),
      UNIQUE (tenant_id, path)
    )
  `
  yield* sql`
    CREATE TABLE vibes_worktrees (
      id           UUID PRIMARY KEY,
      tenant_id    TEXT NOT NULL DEFAULT 'default',
      workspace_id UUID NOT NULL REFERENCES vibes_workspaces (id) ON DELETE CASCADE,
      branch       TEXT NOT NULL,
      path         TEXT NOT NULL,
      session_id   TEXT,
      job_id       TEXT,
      state        TEXT NOT NULL CHECK (state IN ('active', 'kept', 'removed')),
      created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
      closed_at    TIMESTAMPTZ
    )
  `
  yield* sql`CREATE UNIQUE INDEX vibes_worktrees_live_path ON vibes_worktrees (path) WHERE state <> 'removed'`
  yield* sql`CREATE INDEX vibes_worktrees_session ON vibes_worktrees (session_id) WHERE session_id IS NOT NULL`
  yield* sql`CREATE INDEX vibes_worktrees_job ON vibes_worktrees (job_id) WHERE job_id IS NOT NULL`
})
