/**
 * Upgrades of a populated database: the schema of an earlier release with the data it wrote
 * (nodes, sessions, jobs and their output, events, consumers, logins), then the migrations that
 * came after it, then everything read back through today's code.
 */
import * as crypto from "node:crypto"
import { describe, expect, it } from "@effect/vitest"
import { Chunk, Effect, Layer, Option, Stream } from "effect"
import * as Migrator from "@effect/sql/Migrator"
import { SqlClient } from "@effect/sql/SqlClient"
import * as JobLogs from "../../../actors/job/JobLogs.js"
import * as JobStore from "../../../actors/job/JobStore.js"
import * as SessionRegistry from "../../../actors/session/SessionRegistry.js"
import * as Logins from "../../../infra/auth/Logins.js"
import * as Db from "../../../infra/db/Db.js"
import * as Migrations from "../../../infra/db/Migrations.js"
import m0001 from "../../../infra/db/migrations/0001_nodes.js"
import m0002 from "../../../infra/db/migrations/0002_events.js"
import m0003 from "../../../infra/db/migrations/0003_event_consumers.js"
import m0004 from "../../../infra/db/migrations/0004_sessions.js"
import m0005 from "../../../infra/db/migrations/0005_jobs.js"
import m0006 from "../../../infra/db/migrations/0006_cluster.js"
import m0007 from "../../../infra/db/migrations/0007_logins.js"
import { EventLog } from "../../../infra/eventlog/EventLog.js"
import * as PgEventLog from "../../../infra/eventlog/PgEventLog.js"
import { EventFilter, NewEvent } from "../../../rpc/Events.js"
import * as TestDatabase from "../../support/TestDatabase.js"

/** The migrations of earlier releases, in order. */
const earlier = [
  ["0001_nodes", m0001],
  ["0002_events", m0002],
  ["0003_event_consumers", m0003],
  ["0004_sessions", m0004],
  ["0005_jobs", m0005],
  ["0006_cluster", m0006],
  ["0007_logins", m0007]
] as const

/** Applies the migrations up to `last` (inclusive), as the release that shipped it did. */
const migrateTo = (last: number) =>
  Migrator.make({})({
    loader: Migrator.fromRecord(Object.fromEntries(earlier.slice(0, last))),
    table: Migrations.table
  })

const sessionId = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
const jobId = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a6c"
const loginId = crypto.randomBytes(32).toString("base64url")
const started = new Date("2026-11-01T10:00:00Z")

/** What the earlier release wrote, in its schema. */
const populate = (schema: number) =>
  Effect.gen(function* () {
    const sql = yield* SqlClient
    yield* sql`
      INSERT INTO vibes_nodes (node_id, version, host, pid, started_at, last_seen_at, stopped_at)
      VALUES ('old-node', '0.0.9', 'old-host', 4242, ${started}, ${started}, ${started})`
    yield* sql`
      INSERT INTO vibes_sessions (id, name, command, args, cwd, env, cols, rows, restart_policy, state, node_id,
        pty_id, pid, created_at, started_at, exited_at, exit_code, last_activity_at, output_bytes)
      VALUES (${sessionId}, 'build', 'bash', ${JSON.stringify(["-l"])}::jsonb, '/home/dev',
        ${JSON.stringify({ TERM: "xterm-256color" })}::jsonb, 120, 40, 'on-failure', 'exited', 'old-node',
        'pty-1', 777, ${started}, ${started}, ${started}, 0, ${started}, 5)`
    yield* sql`
      INSERT INTO jobs (id, command, type, status, spec, attempts, node_id, created_at, started_at, finished_at, exit_code)
      VALUES (${jobId}, 'echo hello', 'stream', 'succeeded',
        ${JSON.stringify({ command: "echo", args: ["hello"], labels: { team: "ops" } })}::jsonb,
        1, 'old-node', ${started}, ${started}, ${started}, 0)`
    yield* sql`
      INSERT INTO job_events (job_id, seq, stream, chunk) VALUES
        (${jobId}, 1, 'stdout', 'hello\n'), (${jobId}, 2, 'system', 'exit 0')`
    const chunk = (seq: number, stream: string, text: string) => ({
      type: "job.log",
      job: jobId,
      data: { jobId, seq, stream, chunk: text, ts: started.toISOString() }
    })
    const events: ReadonlyArray<{
      readonly type: string
      readonly session?: string
      readonly job?: string
      readonly data: unknown
    }> = [
      { type: "system.started", data: { version: "0.0.9", database: "external" } },
      { type: "session.created", session: sessionId, data: { command: "bash" } },
      chunk(1, "stdout", "hello\n"),
      chunk(2, "system", "exit 0"),
      { type: "job.done", job: jobId, data: { status: "succeeded", exitCode: 0 } }
    ]
    for (const [index, event] of events.entries()) {
      yield* sql`
        INSERT INTO vibes_events ("offset", id, type, ts, source_node, source_component, session_id, job_id,
          severity, data)
        VALUES (${index + 1}, ${crypto.randomUUID()}, ${event.type}, ${started}, 'old-node', 'server',
          ${event.session ?? null}, ${event.job ?? null}, 'info', ${JSON.stringify(event.data)}::jsonb)`
    }
    yield* sql`UPDATE vibes_event_head SET head = ${events.length}`
    yield* sql`INSERT INTO vibes_event_consumers (name, "offset") VALUES ('indexer', 2), ('audit', 5)`
    if (schema >= 7) {
      yield* sql`
        INSERT INTO vibes_logins (id_hash, chain_id, principal, first_login_at, created_at, expires_at, client_address)
        VALUES (${crypto.createHash("sha256").update(loginId, "utf8").digest()}, ${crypto.randomBytes(16)}, 'admin',
          now(), now(), now() + interval '1 day', '127.0.0.1')`
    }
  })

/** Everything the earlier release wrote, as today's code reads it. */
const readBack = (schema: number) =>
  Effect.gen(function* () {
    const sessions = yield* SessionRegistry.SessionRegistry
    const session = Option.getOrThrow(yield* sessions.get(sessionId))
    expect(session).toMatchObject({
      id: sessionId,
      name: "build",
      command: "bash",
      args: ["-l"],
      cwd: "/home/dev",
      env: { TERM: "xterm-256color" },
      cols: 120,
      rows: 40,
      restartPolicy: "on-failure",
      state: "exited",
      nodeId: "old-node",
      exitCode: 0
    })
    expect((yield* sessions.list(Option.some("exited"))).map((row) => row.id)).toEqual([sessionId])

    const jobs = yield* JobStore.JobStore
    const job = yield* jobs.getOrFail(jobId)
    expect(job.info).toMatchObject({
      id: jobId,
      status: "succeeded",
      attempts: 1,
      exitCode: 0,
      nodeId: "old-node"
    })
    expect(job.info.spec).toMatchObject({ command: "echo", args: ["hello"], labels: { team: "ops" } })

    const log = yield* EventLog
    expect(yield* log.head).toBe(5)
    const events = yield* log.read(1, EventFilter.make({}), 100)
    expect(events.map((event) => [event.offset, event.type, event.sessionId ?? event.jobId ?? null])).toEqual(
      [
        [1, "system.started", null],
        [2, "session.created", sessionId],
        [3, "job.log", jobId],
        [4, "job.log", jobId],
        [5, "job.done", jobId]
      ]
    )
    expect(events.every((event) => event.bytes === undefined)).toBe(true)
    expect(yield* log.committed("indexer")).toEqual(Option.some(2))
    expect(yield* log.consumers).toEqual([
      { name: "audit", offset: 5 },
      { name: "indexer", offset: 2 }
    ])
    // The upgraded log goes on from where it was.
    const [next] = yield* log.append([
      NewEvent.make({ type: "system.started", source: { nodeId: "new-node", component: "server" }, data: {} })
    ])
    expect(next).toBe(6)

    const sql = yield* SqlClient
    // The job's output, as the job log API reads it now (job_events is gone since 0009).
    const output = yield* Stream.runCollect((yield* JobLogs.JobLogs).stream(jobId, 0, false))
    const chunks = Chunk.toReadonlyArray(output).flatMap((item) =>
      item._tag === "JobLog" ? [[item.seq, item.stream, item.chunk]] : []
    )
    expect(chunks).toEqual([
      [1, "stdout", "hello\n"],
      [2, "system", "exit 0"]
    ])
    const [table] = yield* sql<{ name: string | null }>`SELECT to_regclass('job_events')::text AS name`
    expect(table?.name).toBeNull()
    const [node] = yield* sql<{ version: string; shards: number }>`
      SELECT version, shards FROM vibes_nodes WHERE node_id = 'old-node'`
    expect(node).toEqual({ version: "0.0.9", shards: 0 })

    if (schema >= 7) {
      const logins = yield* Logins.Logins
      expect(Option.map(yield* logins.verify(loginId), (login) => login.principal)).toEqual(
        Option.some("admin")
      )
    }
  })

const upgradeFrom = (schema: number) =>
  Effect.gen(function* () {
    const { url } = yield* TestDatabase.freshDatabase("vibes_upgrade")
    const db = yield* Layer.build(
      Db.layer({ url, poolSize: 4, connectTimeout: "10 seconds", queryTimeout: "30 seconds" })
    )
    yield* Effect.gen(function* () {
      yield* migrateTo(schema)
      yield* populate(schema)
      const applied = yield* Migrations.run
      const latest = (yield* Migrations.loader).length
      expect(applied.map(([id]) => id)).toEqual(
        Array.from({ length: latest - schema }, (_, n) => schema + 1 + n)
      )
      const services = yield* Layer.build(
        JobLogs.layer("new-node").pipe(
          Layer.provideMerge(
            Layer.mergeAll(
              SessionRegistry.layer,
              JobStore.layer,
              PgEventLog.layer({ nodeId: "new-node" }),
              Logins.layer()
            )
          )
        )
      )
      yield* readBack(schema).pipe(Effect.provide(services))
    }).pipe(Effect.provide(db))
  })

describe("upgrading a populated database", () => {
  it.scopedLive(
    "from the schema before cluster mode (0005), when session ids were UUIDs",
    () => upgradeFrom(5),
    120_000
  )
  it.scopedLive("from the schema before raw event bytes (0007)", () => upgradeFrom(7), 120_000)
})
