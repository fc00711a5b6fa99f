import { Effect } from "effect"
import { SqlClient } from "@effect/sql/SqlClient"

/**
 * Browser logins: the login cookie carries a random id whose SHA-256 is kept here, never the
 * admin token. A login expires, is replaced by a new id now and then (`chain_id` ties the ids of
 * one login together), and logging out revokes the whole chain.
 */
export default Effect.gen(function* () {
  const sql = yield* SqlClient
  yield* sql`
    CREATE TABLE vibes_logins (
      id_hash        BYTEA PRIMARY KEY,
      chain_id       BYTEA NOT NULL,
      tenant_id      TEXT NOT NULL DEFAULT 'default',
      principal      TEXT NOT NULL,
      first_login_at TIMESTAMPTZ NOT NULL,
      created_at     TIMESTAMPTZ NOT NULL,
      expires_at     TIMESTAMPTZ NOT NULL,
      revoked_at     TIMESTAMPTZ,
      client_address TEXT NOT NULL,
      user_agent     TEXT
    )
  `
  yield* sql`CREATE INDEX vibes_logins_chain ON vibes_logins (chain_id)`
  yield* sql`CREATE INDEX vibes_logins_expires ON vibes_logins (expires_at)`
})
