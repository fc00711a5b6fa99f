import { expect, layer } from "@effect/vitest"
import { Effect } from "effect"
import { SqlClient } from "@effect/sql/SqlClient"
import * as Migrations from "../../../infra/db/Migrations.js"
import * as TestDatabase from "../../support/TestDatabase.js"

layer(TestDatabase.layerSql, { timeout: 120_000, excludeTestServices: true })("migrations", (it) => {
  it.effect("apply once, record themselves, and are a no-op the second time", () =>
    Effect.gen(function* () {
      const sql = yield* SqlClient
      const first = yield* Migrations.run
      expect(first.map(([id, name]) => `${id}:${name}`)).toEqual([
        "1:nodes",
        "2:events",
        "3:event_consumers",
        "4:sessions",
        "5:jobs",
        "6:cluster",
        "7:logins",
        "8:event_bytes",
        "9:job_output_once",
        "10:job_artifacts",
        "11:workspaces",
        "12:notify",
        "13:workspace_follow",
        "14:proxy_conversations"
      ])
      const second = yield* Migrations.run
      expect(second).toEqual([])
      const recorded = yield* sql<{
        migrationId: number
      }>`SELECT migration_id AS "migrationId" FROM vibes_migrations`
      expect(recorded.map((row) => row.migrationId)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14])
      const tables = yield* sql<{ name: string }>`
          SELECT table_name AS name FROM information_schema.tables
          WHERE table_name IN ('vibes_nodes', 'jobs', 'job_events') ORDER BY table_name`
      // Job output is stored once, as job.log events: no job_events table.
      expect(tables.map((t) => t.name)).toEqual(["jobs", "vibes_nodes"])
      // Raw event payloads are bytes, not text.
      const [bytes] = yield* sql<{ type: string }>`
          SELECT data_type AS type FROM information_schema.columns
          WHERE table_name = 'vibes_events' AND column_name = 'bytes'`
      expect(bytes?.type).toBe("bytea")
    })
  )
})
