/**
 * The session registry (`vibes_sessions`): what `Sessions.List` and `Sessions.Get` answer, and
 * what a session entity reloads when it is activated again after a restart.
 */
import { Context, DateTime, Effect, Layer, Option, Schema } from "effect"
import { SqlClient } from "@effect/sql/SqlClient"
import type { SqlError } from "@effect/sql/SqlError"
import { RestartPolicy, SessionId, SessionInfo, SessionState } from "../../rpc/Sessions.js"

/** The registry could not be read or written. */
export class RegistryError extends Schema.TaggedError<RegistryError>()("RegistryError", {
  message: Schema.String
}) {}

/** A session's registry row. */
export interface Row {
  readonly id: string
  readonly name: string | null
  readonly command: string
  readonly args: ReadonlyArray<string>
  readonly cwd: string
  readonly env: Readonly<Record<string, string>>
  readonly cols: number
  readonly rows: number
  readonly restartPolicy: RestartPolicy
  readonly state: SessionState
  readonly nodeId: string
  /** The PTY currently holding the program (changes when the session is restarted). */
  readonly ptyId: string
  /** Session sequence number of the current PTY's byte 0. */
  readonly seqBase: number
  readonly pid: number | null
  readonly createdAt: Date
  readonly startedAt: Date
  readonly exitedAt: Date | null
  readonly exitCode: number | null
  readonly exitSignal: string | null
  readonly attachedClients: number
  readonly lastActivityAt: Date
  readonly outputBytes: number
  readonly restarts: number
  /** The session that took over when this one's machine was lost. */
  readonly replacedBy?: string | null
}

const DbRow = Schema.Struct({
  id: Schema.String,
  name: Schema.NullOr(Schema.String),
  command: Schema.String,
  args: Schema.Array(Schema.String),
  cwd: Schema.String,
  env: Schema.Record({ key: Schema.String, value: Schema.String }),
  cols: Schema.Number,
  rows: Schema.Number,
  restart_policy: RestartPolicy,
  state: SessionState,
  node_id: Schema.String,
  pty_id: Schema.String,
  seq_base: Schema.NumberFromString,
  pid: Schema.NullOr(Schema.Number),
  created_at: Schema.DateFromSelf,
  started_at: Schema.DateFromSelf,
  exited_at: Schema.NullOr(Schema.DateFromSelf),
  exit_code: Schema.NullOr(Schema.Number),
  exit_signal: Schema.NullOr(Schema.String),
  attached_clients: Schema.Number,
  last_activity_at: Schema.DateFromSelf,
  output_bytes: Schema.NumberFromString,
  restarts: Schema.Number,
  replaced_by: Schema.optionalWith(Schema.NullOr(Schema.String), { default: () => null })
})

const decodeRow = Schema.decodeUnknown(DbRow)

const toRow = (db: typeof DbRow.Type): Row => ({
  id: db.id,
  name: db.name,
  command: db.command,
  args: db.args,
  cwd: db.cwd,
  env: db.env,
  cols: db.cols,
  rows: db.rows,
  restartPolicy: db.restart_policy,
  state: db.state,
  nodeId: db.node_id,
  ptyId: db.pty_id,
  seqBase: db.seq_base,
  pid: db.pid,
  createdAt: db.created_at,
  startedAt: db.started_at,
  exitedAt: db.exited_at,
  exitCode: db.exit_code,
  exitSignal: db.exit_signal,
  attachedClients: db.attached_clients,
  lastActivityAt: db.last_activity_at,
  outputBytes: db.output_bytes,
  restarts: db.restarts,
  replacedBy: db.replaced_by
})

/** The public view of a row. */
export const toInfo = (row: Row): SessionInfo =>
  SessionInfo.make({
    id: row.id,
    name: row.name,
    command: row.command,
    args: row.args,
    cwd: row.cwd,
    cols: row.cols,
    rows: row.rows,
    state: row.state,
    restartPolicy: row.restartPolicy,
    pid: row.pid,
    nodeId: row.nodeId,
    createdAt: DateTime.unsafeFromDate(row.createdAt),
    exitedAt: row.exitedAt === null ? null : DateTime.unsafeFromDate(row.exitedAt),
    exitCode: row.exitCode,
    exitSignal: row.exitSignal,
    attachedClients: row.attachedClients,
    lastActivityAt: DateTime.unsafeFromDate(row.lastActivityAt),
    outputBytes: row.outputBytes,
    restarts: row.restarts,
    replacedBy: row.replacedBy ?? null
  })

/** The fields an entity changes as its session lives. */
export type Change = Partial<
  Pick<
    Row,
    | "cols"
    | "rows"
    | "state"
    | "ptyId"
    | "seqBase"
    | "pid"
    | "startedAt"
    | "exitedAt"
    | "exitCode"
    | "exitSignal"
    | "attachedClients"
    | "lastActivityAt"
    | "outputBytes"
    | "restarts"
    | "nodeId"
    | "replacedBy"
  >
>

const columns: { readonly [K in keyof Required<Change>]: string } = {
  cols: "cols",
  rows: "rows",
  state: "state",
  ptyId: "pty_id",
  seqBase: "seq_base",
  pid: "pid",
  startedAt: "started_at",
  exitedAt: "exited_at",
  exitCode: "exit_code",
  exitSignal: "exit_signal",
  attachedClients: "attached_clients",
  lastActivityAt: "last_activity_at",
  outputBytes: "output_bytes",
  restarts: "restarts",
  nodeId: "node_id",
  replacedBy: "replaced_by"
}

/** Reads and writes `vibes_sessions`. */
export class SessionRegistry extends Context.Tag("vibes/SessionRegistry")<
  SessionRegistry,
  {
    readonly insert: (row: Row) => Effect.Effect<void, RegistryError>
    readonly get: (id: string) => Effect.Effect<Option.Option<Row>, RegistryError>
    /** Newest first. */
    readonly list: (state: Option.Option<SessionState>) => Effect.Effect<ReadonlyArray<Row>, RegistryError>
    readonly update: (id: string, change: Change) => Effect.Effect<void, RegistryError>
    /** The sessions in state `running` whose PTY lives with node `nodeId`: their ids and PTYs'. */
    readonly running: (
      nodeId: string
    ) => Effect.Effect<ReadonlyArray<{ readonly id: string; readonly ptyId: string }>, RegistryError>
    /**
     * Marks the running sessions of node `nodeId` (whose machine is gone) lost and returns them.
     * One statement: when several nodes sweep at once, each session goes to exactly one of them.
     */
    readonly takeLost: (nodeId: string) => Effect.Effect<ReadonlyArray<Row>, RegistryError>
  }
>() {}

const isSessionId = Schema.is(SessionId)

/** The registry on the node's database. */
export const layer: Layer.Layer<SessionRegistry, never, SqlClient> = Layer.effect(
  SessionRegistry,
  Effect.gen(function* () {
    const sql = yield* SqlClient
    const failed = (what: string) => (error: SqlError | { readonly message: string }) =>
      new RegistryError({ message: `cannot ${what} the session registry: ${error.message}` })
    const decodeAll = (rows: ReadonlyArray<unknown>) =>
      Effect.forEach(rows, (row) => Effect.map(decodeRow(row), toRow))

    return SessionRegistry.of({
      insert: (row) =>
        sql`
          INSERT INTO vibes_sessions (id, name, command, args, cwd, env, cols, rows, restart_policy, state,
            node_id, pty_id, seq_base, pid, created_at, started_at, attached_clients, last_activity_at,
            output_bytes, restarts)
          VALUES (${row.id}, ${row.name}, ${row.command}, ${JSON.stringify(row.args)}::jsonb, ${row.cwd},
            ${JSON.stringify(row.env)}::jsonb, ${row.cols}, ${row.rows}, ${row.restartPolicy}, ${row.state},
            ${row.nodeId}, ${row.ptyId}, ${row.seqBase}, ${row.pid}, ${row.createdAt}, ${row.startedAt},
            ${row.attachedClients}, ${row.lastActivityAt}, ${row.outputBytes}, ${row.restarts})
        `.pipe(Effect.asVoid, Effect.mapError(failed("write to"))),
      get: (id) =>
        isSessionId(id)
          ? sql`SELECT * FROM vibes_sessions WHERE id = ${id}`.pipe(
              Effect.flatMap(decodeAll),
              Effect.map((rows) => Option.fromNullable(rows[0])),
              Effect.mapError(failed("read"))
            )
          : Effect.succeed(Option.none()),
      list: (state) =>
        Option.match(state, {
          onNone: () => sql`SELECT * FROM vibes_sessions ORDER BY created_at DESC LIMIT 1000`,
          onSome: (s) =>
            sql`SELECT * FROM vibes_sessions WHERE state = ${s} ORDER BY created_at DESC LIMIT 1000`
        }).pipe(Effect.flatMap(decodeAll), Effect.mapError(failed("read"))),
      update: (id, change) => {
        const entries = Object.entries(change).flatMap(([key, value]) => {
          const column = columns[key as keyof Change]
          return value === undefined ? [] : [sql`${sql(column)} = ${value as string | number | Date | null}`]
        })
        return entries.length === 0
          ? Effect.void
          : sql`UPDATE vibes_sessions SET ${sql.csv(entries)} WHERE id = ${id}`.pipe(
              Effect.asVoid,
              Effect.mapError(failed("write to"))
            )
      },
      running: (nodeId) =>
        sql<{
          id: string
          pty_id: string
        }>`SELECT id, pty_id FROM vibes_sessions WHERE state = 'running' AND node_id = ${nodeId}`.pipe(
          Effect.map((rows) => rows.map((row) => ({ id: row.id, ptyId: row.pty_id }))),
          Effect.mapError(failed("read"))
        ),
      takeLost: (nodeId) =>
        sql`
          UPDATE vibes_sessions SET state = 'lost', exited_at = now(), pid = NULL
          WHERE state = 'running' AND node_id = ${nodeId}
          RETURNING *
        `.pipe(Effect.flatMap(decodeAll), Effect.mapError(failed("write to")))
    })
  })
)
