/**
 * The PTY host as the server sees it: a per-machine process (`vibes pty-host`) that owns the
 * pseudo-terminals, so shells outlive `vibes serve`. Every PTY keeps a bounded ring of its recent
 * output, addressed by byte sequence numbers, so a reconnecting reader resumes exactly.
 */
import { Context, type Effect, Schema, type Stream } from "effect"

/** The PTY's id: the session id that owns it. */
export const PtyId = Schema.String.pipe(Schema.minLength(1), Schema.maxLength(200))

/** Signals a client may send to a PTY's processes. */
export const PtySignal = Schema.Literal("SIGINT", "SIGTERM", "SIGHUP", "SIGKILL")
export type PtySignal = typeof PtySignal.Type

/** What to start in a new PTY. */
export class PtySpec extends Schema.Class<PtySpec>("PtySpec")({
  id: PtyId,
  /** The program; looked up in `PATH` of `env` when it has no slash. */
  file: Schema.String,
  args: Schema.Array(Schema.String),
  cwd: Schema.String,
  /** The complete environment of the program (nothing is inherited from the host). */
  env: Schema.Record({ key: Schema.String, value: Schema.String }),
  cols: Schema.Int,
  rows: Schema.Int,
  /** An argv prefix the program is started through (the sandbox's: another user, say). */
  wrapper: Schema.optional(Schema.Array(Schema.String))
}) {}

/** How a PTY's program ended. */
export class PtyExit extends Schema.Class<PtyExit>("PtyExit")({
  exitCode: Schema.NullOr(Schema.Int),
  signal: Schema.NullOr(Schema.String)
}) {}

/** A PTY as the host reports it. */
export class PtyInfo extends Schema.Class<PtyInfo>("PtyInfo")({
  id: PtyId,
  pid: Schema.Int,
  cols: Schema.Int,
  rows: Schema.Int,
  /** Total bytes the program has written: the sequence number of the next byte. */
  seq: Schema.Int,
  /** Set once the program has exited. */
  exit: Schema.NullOr(PtyExit)
}) {}

/** Output bytes; `seq` is the sequence number of `data[0]`. */
export class PtyData extends Schema.TaggedClass<PtyData>()("Data", {
  seq: Schema.Int,
  data: Schema.Uint8ArrayFromSelf
}) {}

/** Bytes `[from, to)` were overwritten in the ring before this reader got them. */
export class PtyGap extends Schema.TaggedClass<PtyGap>()("Gap", {
  from: Schema.Int,
  to: Schema.Int
}) {}

/** The program exited; the last element of an output stream. `seq` is the final byte count. */
export class PtyExited extends Schema.TaggedClass<PtyExited>()("Exited", {
  seq: Schema.Int,
  exit: PtyExit
}) {}

/** One element of a PTY's output stream. */
export const PtyOutput = Schema.Union(PtyData, PtyGap, PtyExited)
export type PtyOutput = typeof PtyOutput.Type

/** No PTY with that id on this host (never created, released, or lost with a previous host). */
export class PtyNotFound extends Schema.TaggedError<PtyNotFound>()("PtyNotFound", {
  id: Schema.String,
  message: Schema.String
}) {}

/** A PTY with that id already exists. */
export class PtyAlreadyExists extends Schema.TaggedError<PtyAlreadyExists>()("PtyAlreadyExists", {
  id: Schema.String,
  message: Schema.String
}) {}

/** The PTY's program has exited; it takes no input, resize or signal. */
export class PtyNotRunning extends Schema.TaggedError<PtyNotRunning>()("PtyNotRunning", {
  id: Schema.String,
  message: Schema.String
}) {}

/** The program could not be started; nothing was left behind. */
export class PtySpawnFailed extends Schema.TaggedError<PtySpawnFailed>()("PtySpawnFailed", {
  id: Schema.String,
  reason: Schema.Literal("cwd", "command", "limit", "other"),
  message: Schema.String
}) {}

/** The host could not be reached (it is restarting, or its socket is gone). */
export class PtyHostUnavailable extends Schema.TaggedError<PtyHostUnavailable>()("PtyHostUnavailable", {
  message: Schema.String
}) {}

/** The PTY host, reached over its Unix socket. */
export class PtyHost extends Context.Tag("vibes/PtyHost")<
  PtyHost,
  {
    /** Starts a program in a new PTY of the given size. */
    readonly spawn: (
      spec: PtySpec
    ) => Effect.Effect<PtyInfo, PtySpawnFailed | PtyAlreadyExists | PtyHostUnavailable>
    /** Writes bytes to the PTY (the program's input). */
    readonly write: (
      id: string,
      data: Uint8Array
    ) => Effect.Effect<void, PtyNotFound | PtyNotRunning | PtyHostUnavailable>
    readonly resize: (
      id: string,
      cols: number,
      rows: number
    ) => Effect.Effect<void, PtyNotFound | PtyNotRunning | PtyHostUnavailable>
    /** Sends a signal to the program's process group and to the terminal's foreground group. */
    readonly signal: (
      id: string,
      signal: PtySignal
    ) => Effect.Effect<void, PtyNotFound | PtyNotRunning | PtyHostUnavailable>
    /**
     * Output from byte `from` on: what the ring still holds (a `Gap` first when `from` is older
     * than the ring), then live output, then `Exited` as the last element.
     *
     * `direct`, when given, is offered each `Data` that arrives while the stream's reader has
     * nothing waiting and holds no element: it runs synchronously, as the bytes come off the
     * socket, and returns whether it took them. What it does not take goes to the stream, in
     * order; so a reader whose common case needs no effect skips a fiber wake-up per chunk.
     */
    readonly output: (
      id: string,
      from: number,
      direct?: (data: PtyData) => boolean
    ) => Stream.Stream<PtyOutput, PtyNotFound | PtyHostUnavailable>
    /** One PTY. */
    readonly get: (id: string) => Effect.Effect<PtyInfo, PtyNotFound | PtyHostUnavailable>
    /** Every PTY the host holds, running or exited and not yet released. */
    readonly list: Effect.Effect<ReadonlyArray<PtyInfo>, PtyHostUnavailable>
    /** Forgets a PTY: its program gets SIGHUP (SIGKILL after a grace) and its ring is freed. */
    readonly release: (id: string) => Effect.Effect<void, PtyHostUnavailable>
  }
>() {}
