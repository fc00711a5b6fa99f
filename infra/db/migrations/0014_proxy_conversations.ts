import { Effect } from "effect"
import { SqlClient } from "@effect/sql/SqlClient"

/**
 * Conversations recorded by the AI-provider proxy: `vibes_conversations` (a thread of turns, a
 * fork naming the turn it left from), `vibes_proxy_turns` (one proxied request and its assembled
 * answer: usage, cost, stop reason, a full-text index over what was said) and
 * `vibes_proxy_turn_bodies` (the redacted request and response bodies, compressed, kept out of
 * the turn rows and the event log).
 */
export default Effect.gen(function* () {
  const sql = yield* SqlClient
  yield* sql`
    CREATE TABLE vibes_conversations (
      id                  UUID PRIMARY KEY,
      tenant_id           TEXT NOT NULL DEFAULT 'default',
      provider            TEXT NOT NULL,
      api                 TEXT NOT NULL,
      client              TEXT NOT NULL,
      session_id          TEXT,
      job_id              TEXT,
      parent_id           UUID REFERENCES vibes_conversations (id) ON DELETE SET NULL,
      forked_from_turn_id UUID,
      title               TEXT NOT NULL DEFAULT '',
      created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
      updated_at          TIMESTAMPTZ NOT NULL DEFAULT now()
    )
  `
  yield* sql`CREATE INDEX vibes_conversations_session ON vibes_conversations (tenant_id, session_id, updated_at DESC)`
  yield* sql`CREATE INDEX vibes_conversations_updated ON vibes_conversations (tenant_id, updated_at DESC)`
  yield* sql`
    CREATE TABLE vibes_proxy_turns (
      id                 UUID PRIMARY KEY,
      tenant_id          TEXT NOT NULL DEFAULT 'default',
      conversation_id    UUID NOT NULL REFERENCES vibes_conversations (id) ON DELETE CASCADE,
      seq                INT NOT NULL,
      parent_turn_id     UUID,
      provider           TEXT NOT NULL,
      api                TEXT NOT NULL,
      model              TEXT,
      path               TEXT NOT NULL,
      status             INT NOT NULL,
      error_kind         TEXT,
      streamed           BOOLEAN NOT NULL,
      client             TEXT NOT NULL,
      session_id         TEXT,
      job_id             TEXT,
      messages_hash      BYTEA,
      message_count      INT NOT NULL,
      input_from         INT NOT NULL DEFAULT 0,
      response_id        TEXT,
      stop_reason        TEXT,
      tool_calls         INT NOT NULL,
      input_tokens       INT,
      output_tokens      INT,
      cache_read_tokens  INT,
      cache_write_tokens INT,
      cost_usd           DOUBLE PRECISION,
      latency_ms         DOUBLE PRECISION NOT NULL,
      ttfb_ms            DOUBLE PRECISION,
      request_bytes      BIGINT NOT NULL,
      response_bytes     BIGINT NOT NULL,
      preview            TEXT NOT NULL DEFAULT '',
      search_text        TEXT NOT NULL DEFAULT '',
      search             TSVECTOR GENERATED ALWAYS AS (to_tsvector('simple', search_text)) STORED,
      created_at         TIMESTAMPTZ NOT NULL DEFAULT now()
    )
  `
  yield* sql`CREATE INDEX vibes_proxy_turns_conversation ON vibes_proxy_turns (conversation_id, seq)`
  yield* sql`CREATE INDEX vibes_proxy_turns_hash ON vibes_proxy_turns (messages_hash) WHERE messages_hash IS NOT NULL`
  yield* sql`CREATE INDEX vibes_proxy_turns_response ON vibes_proxy_turns (response_id) WHERE response_id IS NOT NULL`
  yield* sql`CREATE INDEX vibes_proxy_turns_parent ON vibes_proxy_turns (parent_turn_id) WHERE parent_turn_id IS NOT NULL`
  yield* sql`CREATE INDEX vibes_proxy_turns_created ON vibes_proxy_turns (tenant_id, created_at)`
  yield* sql`CREATE INDEX vibes_proxy_turns_session ON vibes_proxy_turns (tenant_id, session_id) WHERE session_id IS NOT NULL`
  yield* sql`CREATE INDEX vibes_proxy_turns_search ON vibes_proxy_turns USING GIN (search)`
  yield* sql`
    CREATE TABLE vibes_proxy_turn_bodies (
      turn_id     UUID NOT NULL REFERENCES vibes_proxy_turns (id) ON DELETE CASCADE,
      kind        TEXT NOT NULL CHECK (kind IN ('request', 'response', 'assembled')),
      tenant_id   TEXT NOT NULL DEFAULT 'default',
      encoding    TEXT NOT NULL CHECK (encoding IN ('identity', 'gzip')),
      size        BIGINT NOT NULL,
      truncated   BOOLEAN NOT NULL DEFAULT false,
      body        BYTEA NOT NULL,
      PRIMARY KEY (turn_id, kind)
    )
  `
  yield* sql`ALTER TABLE vibes_proxy_turn_bodies ALTER COLUMN body SET STORAGE EXTERNAL`
})
