import { Effect } from "effect"
import { SqlClient } from "@effect/sql/SqlClient"

/**
 * Raw event payloads (a session's output) as bytea beside the JSON `data`, so output is stored as
 * the bytes it is: no base64, no JSON, no jsonb. Compressed with lz4 where the server has it (it
 * costs a tenth of the default pglz per byte); a server built without lz4 keeps pglz.
 */
export default Effect.gen(function* () {
  const sql = yield* SqlClient
  yield* sql`ALTER TABLE vibes_events ADD COLUMN bytes BYTEA`
  yield* sql`
    DO $$
    BEGIN
      ALTER TABLE vibes_events ALTER COLUMN bytes SET COMPRESSION lz4;
    EXCEPTION WHEN feature_not_supported THEN
      NULL;
    END
    $$`
})
