import { Effect } from "effect"
import { SqlClient } from "@effect/sql/SqlClient"

/**
 * Notifications: outbound webhook endpoints (`vibes_notify_endpoints`, with their signing secret),
 * the messages sent to them (`vibes_notify_deliveries`: one row a message, with its body for a
 * redelivery, and `vibes_notify_attempts`: one row an attempt), inbound hooks (`vibes_hooks`), and
 * the delivery ids of inbound requests already seen (`vibes_hook_seen`, for replay protection).
 */
export default Effect.gen(function* () {
  const sql = yield* SqlClient
  yield* sql`
    CREATE TABLE vibes_notify_endpoints (
      id              UUID PRIMARY KEY,
      tenant_id       TEXT NOT NULL DEFAULT 'default',
      name            TEXT NOT NULL,
      url             TEXT NOT NULL,
      format          TEXT NOT NULL CHECK (format IN ('vibes', 'slack', 'discord')),
      secret          TEXT NOT NULL,
      types           TEXT[] NOT NULL,
      session_id      TEXT,
      job_id          TEXT,
      min_severity    TEXT NOT NULL,
      max_attempts    INT NOT NULL,
      rate_per_minute INT NOT NULL,
      coalesce_millis INT NOT NULL,
      timeout_millis  INT NOT NULL,
      created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
      UNIQUE (tenant_id, name)
    )
  `
  yield* sql`
    CREATE TABLE vibes_notify_deliveries (
      id                  UUID PRIMARY KEY,
      tenant_id           TEXT NOT NULL DEFAULT 'default',
      endpoint_id         UUID NOT NULL REFERENCES vibes_notify_endpoints (id) ON DELETE CASCADE,
      webhook_id          TEXT NOT NULL,
      types               TEXT[] NOT NULL,
      first_offset        BIGINT,
      last_offset         BIGINT,
      body                TEXT NOT NULL,
      status              TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'dead')),
      attempts            INT NOT NULL DEFAULT 0,
      last_status         INT,
      last_latency_millis DOUBLE PRECISION,
      last_error          TEXT,
      created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
      updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
      UNIQUE (endpoint_id, webhook_id)
    )
  `
  yield* sql`CREATE INDEX vibes_notify_deliveries_recent ON vibes_notify_deliveries (created_at DESC)`
  yield* sql`
    CREATE TABLE vibes_notify_attempts (
      delivery_id    UUID NOT NULL REFERENCES vibes_notify_deliveries (id) ON DELETE CASCADE,
      attempt        INT NOT NULL,
      status         INT,
      latency_millis DOUBLE PRECISION NOT NULL,
      error          TEXT,
      at             TIMESTAMPTZ NOT NULL DEFAULT now(),
      PRIMARY KEY (delivery_id, attempt)
    )
  `
  yield* sql`
    CREATE TABLE vibes_hooks (
      id              UUID PRIMARY KEY,
      tenant_id       TEXT NOT NULL DEFAULT 'default',
      name            TEXT NOT NULL,
      verify          TEXT NOT NULL CHECK (verify IN ('github', 'slack', 'hmac')),
      secret          TEXT NOT NULL,
      action          JSONB NOT NULL,
      rate_per_minute INT NOT NULL,
      max_body_bytes  INT NOT NULL,
      created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
      UNIQUE (tenant_id, name)
    )
  `
  yield* sql`
    CREATE TABLE vibes_hook_seen (
      hook_id     UUID NOT NULL REFERENCES vibes_hooks (id) ON DELETE CASCADE,
      delivery_id TEXT NOT NULL,
      seen_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
      PRIMARY KEY (hook_id, delivery_id)
    )
  `
})
