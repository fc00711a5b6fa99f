/**
 * The schema of vibes: forward-only migrations, recorded in `vibes_migrations`, run at start-up.
 * Running them again is a no-op; two nodes starting together take turns on the table lock.
 */
import { Effect, Schema } from "effect"
import * as Migrator from "@effect/sql/Migrator"
import type { SqlClient } from "@effect/sql/SqlClient"
import m0001 from "./migrations/0001_nodes.js"
import m0002 from "./migrations/0002_events.js"
import m0003 from "./migrations/0003_event_consumers.js"
import m0004 from "./migrations/0004_sessions.js"
import m0005 from "./migrations/0005_jobs.js"
import m0006 from "./migrations/0006_cluster.js"
import m0007 from "./migrations/0007_logins.js"
import m0008 from "./migrations/0008_event_bytes.js"
import m0009 from "./migrations/0009_job_output_once.js"
import m0010 from "./migrations/0010_job_artifacts.js"
import m0011 from "./migrations/0011_workspaces.js"
import m0012 from "./migrations/0012_notify.js"
import m0013 from "./migrations/0013_workspace_follow.js"
import m0014 from "./migrations/0014_proxy_conversations.js"

/** The migrations could not be applied. */
export class MigrationFailed extends Schema.TaggedError<MigrationFailed>()("MigrationFailed", {
  message: Schema.String
}) {}

/** Name of the table that records applied migrations. */
export const table = "vibes_migrations"

/** Every migration, in order. Add new ones at the end; never edit one that has shipped. */
export const loader = Migrator.fromRecord({
  "0001_nodes": m0001,
  "0002_events": m0002,
  "0003_event_consumers": m0003,
  "0004_sessions": m0004,
  "0005_jobs": m0005,
  "0006_cluster": m0006,
  "0007_logins": m0007,
  "0008_event_bytes": m0008,
  "0009_job_output_once": m0009,
  "0010_job_artifacts": m0010,
  "0011_workspaces": m0011,
  "0012_notify": m0012,
  "0013_workspace_follow": m0013,
  "0014_proxy_conversations": m0014
})

/** Applies the pending migrations; returns the ones applied now (`[id, name]`). */
export const run: Effect.Effect<
  ReadonlyArray<readonly [number, string]>,
  MigrationFailed,
  SqlClient
> = Migrator.make({})({ loader, table }).pipe(
  Effect.mapError((error) => new MigrationFailed({ message: `database migration failed: ${error.message}` })),
  Effect.withSpan("Migrations.run")
)
