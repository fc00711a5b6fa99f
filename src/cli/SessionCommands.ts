/**
 * Session commands of the CLI: `new`, `ls`, `attach`, `kill`, `send`, `snapshot`.
 *
 * `vibes attach` puts the terminal in raw mode, forwards keystrokes and window size changes,
 * and reconnects by itself (resuming at the exact byte) when the server restarts. Ctrl-] detaches.
 * The terminal is restored on every way out: detach, session end, error, signal.
 */
import { DateTime, Effect, Option, Stream } from "effect"
import * as Args from "@effect/cli/Args"
import * as Command from "@effect/cli/Command"
import * as Options from "@effect/cli/Options"
import * as NodeSocket from "@effect/platform-node/NodeSocket"
import * as AttachClient from "../../rpc/AttachClient.js"
import { CreateSession, type SessionInfo, type SessionSignal } from "../../rpc/Sessions.js"
import {
  CliFailure,
  type Connection,
  connectionOptions,
  liveConnection,
  resolveConnection,
  toCliFailure,
  withClient
} from "./Connection.js"
import { json, printable, printableLines } from "./Display.js"

/** The byte that detaches `vibes attach` (Ctrl-], as in telnet). */
export const detachKey = 0x1d

const sessionId = Args.text({ name: "session-id" }).pipe(
  Args.withDescription("The session's id (see `vibes ls`)")
)

const sessionFailure = (connection: Connection) => toCliFailure(connection)

const terminalSize = () => ({
  cols: process.stdout.isTTY === true ? process.stdout.columns : 80,
  rows: process.stdout.isTTY === true ? process.stdout.rows : 24
})

/** The cells of one line of `vibes ls`; what the server sent is printed escaped. */
export const formatInfo = (info: SessionInfo): ReadonlyArray<string> => [
  printable(info.id),
  info.state,
  `${info.cols}x${info.rows}`,
  String(info.attachedClients),
  DateTime.formatIso(info.lastActivityAt).slice(0, 19),
  info.name === null ? "-" : printable(info.name),
  printable([info.command, ...info.args].join(" ")),
  printable(info.cwd)
]

const listHeader = ["ID", "STATE", "SIZE", "AT", "LAST ACTIVITY", "NAME", "COMMAND", "CWD"] as const

/** `rows` under `header`, each column as wide as its widest cell (the last one is not padded). */
export const formatTable = (
  header: ReadonlyArray<string>,
  rows: ReadonlyArray<ReadonlyArray<string>>
): Array<string> => {
  const widths = header.map((title, column) =>
    Math.max(title.length, ...rows.map((row) => (row[column] ?? "").length))
  )
  const line = (cells: ReadonlyArray<string>) =>
    cells
      .map((cell, column) => (column === cells.length - 1 ? cell : cell.padEnd(widths[column] ?? 0)))
      .join("  ")
      .trimEnd()
  return [line(header), ...rows.map(line)]
}

// new -------------------------------------------------------------------------------------

const create = Command.make(
  "new",
  {
    ...connectionOptions,
    name: Options.text("name").pipe(
      Options.withDescription("A name to find the session by"),
      Options.optional
    ),
    cwd: Options.text("cwd").pipe(
      Options.withDescription("Working directory on the server. Default: the server user's home"),
      Options.optional
    ),
    restart: Options.choice("restart", ["never", "on-failure", "always"]).pipe(
      Options.withDescription("Start the command again when it ends (on-failure: only when it fails)"),
      Options.withDefault("never" as const)
    ),
    node: Options.text("node").pipe(
      Options.withDescription(
        "In a cluster: the node whose machine runs the session. Default: the node with the fewest sessions"
      ),
      Options.optional
    ),
    workspace: Options.text("workspace").pipe(
      Options.withDescription("Start in a worktree of this workspace (with --branch), instead of --cwd"),
      Options.optional
    ),
    branch: Options.text("branch").pipe(
      Options.withDescription("With --workspace: the branch of the session's worktree, new or existing"),
      Options.optional
    ),
    from: Options.text("from").pipe(
      Options.withDescription(
        "With --workspace: where a new branch starts. Default: the workspace's default branch"
      ),
      Options.optional
    ),
    json: Options.boolean("json").pipe(Options.withDescription("Print the new session as JSON")),
    command: Args.text({ name: "command" }).pipe(
      Args.withDescription("The program and its arguments, after `--`. Default: the server user's shell"),
      Args.repeated
    )
  },
  (flags) =>
    Effect.gen(function* () {
      const connection = yield* resolveConnection(flags)
      const [program, ...args] = flags.command
      const size = terminalSize()
      const info = yield* withClient(connection, flags.timeout, (client) =>
        client.Sessions.Create(
          CreateSession.make({
            ...(program !== undefined ? { command: program } : {}),
            args,
            ...(Option.isSome(flags.cwd) ? { cwd: flags.cwd.value } : {}),
            ...(Option.isSome(flags.name) ? { name: flags.name.value } : {}),
            ...(Option.isSome(flags.node) ? { node: flags.node.value } : {}),
            ...(Option.isSome(flags.workspace) ? { workspace: flags.workspace.value } : {}),
            ...(Option.isSome(flags.branch) ? { branch: flags.branch.value } : {}),
            ...(Option.isSome(flags.from) ? { from: flags.from.value } : {}),
            cols: size.cols,
            rows: size.rows,
            restartPolicy: flags.restart
          })
        )
      ).pipe(Effect.mapError(sessionFailure(connection)))
      console.log(
        flags.json
          ? json({ id: info.id, pid: info.pid, command: info.command, nodeId: info.nodeId, cwd: info.cwd })
          : printable(info.id)
      )
    })
).pipe(
  Command.withDescription(
    "Start a session: `vibes new [--name N] [--cwd D | --workspace W --branch B [--from REF]] [-- cmd args…]`. Prints its id; attach with `vibes attach ID`."
  )
)

// ls --------------------------------------------------------------------------------------

const list = Command.make(
  "ls",
  {
    ...connectionOptions,
    state: Options.choice("state", ["running", "exited", "closed", "lost"]).pipe(
      Options.withDescription("Only sessions in this state"),
      Options.optional
    ),
    json: Options.boolean("json").pipe(Options.withDescription("Print one JSON object a line"))
  },
  (flags) =>
    Effect.gen(function* () {
      const connection = yield* resolveConnection(flags)
      const sessions = yield* withClient(connection, flags.timeout, (client) =>
        client.Sessions.List({ state: Option.getOrUndefined(flags.state) })
      ).pipe(Effect.mapError(sessionFailure(connection)))
      if (flags.json) {
        for (const info of sessions) {
          console.log(
            json({
              id: info.id,
              name: info.name,
              state: info.state,
              command: info.command,
              args: info.args,
              cwd: info.cwd,
              cols: info.cols,
              rows: info.rows,
              pid: info.pid,
              attachedClients: info.attachedClients,
              exitCode: info.exitCode,
              exitSignal: info.exitSignal,
              createdAt: DateTime.formatIso(info.createdAt),
              lastActivityAt: DateTime.formatIso(info.lastActivityAt)
            })
          )
        }
        return
      }
      if (sessions.length === 0) {
        console.log("no sessions")
        return
      }
      for (const line of formatTable(listHeader, sessions.map(formatInfo))) console.log(line)
    })
).pipe(Command.withDescription("List sessions, newest first."))

// kill / send / snapshot ------------------------------------------------------------------

const kill = Command.make(
  "kill",
  {
    ...connectionOptions,
    sessionId,
    signal: Options.choice("signal", ["INT", "TERM", "HUP", "KILL"]).pipe(
      Options.withDescription("Send this signal instead of closing the session"),
      Options.optional
    )
  },
  (flags) =>
    Effect.gen(function* () {
      const connection = yield* resolveConnection(flags)
      yield* withClient(connection, flags.timeout, (client) =>
        Option.match(flags.signal, {
          onNone: () => Effect.asVoid(client.Sessions.Close({ sessionId: flags.sessionId })),
          onSome: (signal: SessionSignal) => client.Sessions.Signal({ sessionId: flags.sessionId, signal })
        })
      ).pipe(Effect.mapError(sessionFailure(connection)))
    })
).pipe(
  Command.withDescription("Close a session (its program gets SIGHUP, then SIGKILL), or send it --signal.")
)

const send = Command.make(
  "send",
  {
    ...connectionOptions,
    sessionId,
    enter: Options.boolean("enter").pipe(
      Options.withAlias("e"),
      Options.withDescription("Press Enter after the text")
    ),
    text: Args.text({ name: "text" }).pipe(Args.withDescription("What to type into the session"))
  },
  (flags) =>
    Effect.gen(function* () {
      const connection = yield* resolveConnection(flags)
      const data = new TextEncoder().encode(flags.enter ? `${flags.text}\r` : flags.text)
      yield* withClient(connection, flags.timeout, (client) =>
        client.Sessions.Input({ sessionId: flags.sessionId, data })
      ).pipe(Effect.mapError(sessionFailure(connection)))
    })
).pipe(Command.withDescription("Type TEXT into a session, as if at its keyboard (--enter adds Enter)."))

const snapshot = Command.make(
  "snapshot",
  {
    ...connectionOptions,
    sessionId,
    vt: Options.boolean("vt").pipe(
      Options.withDescription("Print the VT sequence that redraws the screen (colours included), not text")
    )
  },
  (flags) =>
    Effect.gen(function* () {
      const connection = yield* resolveConnection(flags)
      const screen = yield* withClient(connection, flags.timeout, (client) =>
        client.Sessions.Snapshot({ sessionId: flags.sessionId })
      ).pipe(Effect.mapError(sessionFailure(connection)))
      // The VT is for a terminal to redraw (that is what --vt asks for); the text is for reading.
      process.stdout.write(flags.vt ? screen.vt : `${printableLines(screen.text)}\n`)
    })
).pipe(Command.withDescription("Print a session's current screen."))

// attach ----------------------------------------------------------------------------------

/** Raw mode for the life of the scope; restored however the scope ends, and at process exit. */
const rawTerminal = Effect.acquireRelease(
  Effect.sync(() => {
    const stdin = process.stdin
    const wasRaw = stdin.isTTY === true && stdin.isRaw
    const restore = () => {
      if (stdin.isTTY === true) stdin.setRawMode(wasRaw)
      // Leave the alternate screen and show the cursor, in case the session left them set.
      if (process.stdout.isTTY === true) process.stdout.write("\x1b[?1049l\x1b[?25h\x1b[0m")
    }
    if (stdin.isTTY === true) stdin.setRawMode(true)
    process.once("exit", restore)
    return restore
  }),
  (restore) =>
    Effect.sync(() => {
      process.removeListener("exit", restore)
      restore()
      process.stdin.pause()
    })
)

/**
 * Keystrokes from stdin, ending at the detach key. At the end of stdin (a pipe or /dev/null) the
 * stream just stops sending: the attachment goes on until the session ends or Ctrl-C.
 */
const keystrokes = Stream.async<Uint8Array>((emit) => {
  const onData = (chunk: Buffer) => {
    const at = process.stdin.isTTY === true ? chunk.indexOf(detachKey) : -1
    if (at >= 0) {
      if (at > 0) void emit.single(new Uint8Array(chunk.subarray(0, at)))
      void emit.end()
      return
    }
    void emit.single(new Uint8Array(chunk))
  }
  process.stdin.on("data", onData)
  process.stdin.resume()
  return Effect.sync(() => {
    process.stdin.off("data", onData)
  })
})

/** Window size changes of the local terminal. */
const windowSizes = Stream.async<{ readonly cols: number; readonly rows: number }>((emit) => {
  const onResize = () => void emit.single(terminalSize())
  process.stdout.on("resize", onResize)
  return Effect.sync(() => process.stdout.off("resize", onResize))
})

type AttachOutcome =
  | { readonly _tag: "Detached" }
  | {
      readonly _tag: "Ended"
      readonly state: string
      readonly exitCode: number | null
      readonly signal: string | null
    }

const attach = Command.make(
  "attach",
  {
    ...connectionOptions,
    sessionId,
    readOnly: Options.boolean("read-only").pipe(
      Options.withAlias("r"),
      Options.withDescription("Watch only: keystrokes are not sent")
    )
  },
  (flags) =>
    Effect.gen(function* () {
      const connection = yield* resolveConnection(flags)
      yield* rawTerminal
      const out = (data: Uint8Array | string) =>
        Effect.async<void>((resume) => {
          process.stdout.write(data, () => resume(Effect.void))
        })
      // Each (re)attachment goes to a node that answers: with several URLs, another node of the
      // cluster when this one is gone.
      const attachment = yield* AttachClient.attach({
        url: Effect.map(liveConnection(connection), (live) => live.url),
        token: connection.token,
        sessionId: flags.sessionId,
        readOnly: flags.readOnly,
        size: () => (flags.readOnly ? undefined : terminalSize())
      }).pipe(Effect.provide(NodeSocket.layerWebSocketConstructor))

      const input = keystrokes.pipe(
        Stream.runForEach((data) => (flags.readOnly ? Effect.void : attachment.input(data))),
        Effect.as<AttachOutcome>({ _tag: "Detached" })
      )
      const resize = windowSizes.pipe(
        Stream.runForEach((next) => (flags.readOnly ? Effect.void : attachment.resize(next.cols, next.rows))),
        Effect.andThen(Effect.never)
      )
      const output = attachment.events.pipe(
        Stream.runFoldEffect(Option.none<AttachOutcome>(), (done, event) =>
          Effect.gen(function* () {
            switch (event._tag) {
              case "Attached":
                if (event.screen !== null) yield* out(`\x1bc${event.screen.vt}`)
                yield* out("\x1b]0;vibes\x07")
                return done
              case "Output":
                yield* out(event.data)
                return done
              case "Reset":
                yield* out(`\x1bc${event.screen.vt}`)
                return done
              case "Reconnecting":
                yield* out("\x1b]0;vibes: reconnecting…\x07")
                return done
              case "Resized":
                return done
              case "Ended":
                return Option.some<AttachOutcome>({
                  _tag: "Ended",
                  state: event.state,
                  exitCode: event.exitCode,
                  signal: event.exitSignal
                })
            }
          })
        ),
        Effect.flatMap(
          Option.match({
            onNone: () =>
              Effect.fail(new CliFailure({ message: "the server ended the stream", exitCode: 1 })),
            onSome: Effect.succeed
          })
        )
      )
      const outcome = yield* Effect.raceFirst(output, Effect.raceFirst(input, resize)).pipe(
        Effect.mapError((error) =>
          error instanceof CliFailure
            ? error
            : error.error === "Unauthorized"
              ? new CliFailure({
                  message: Option.isNone(connection.token)
                    ? `${connection.url} needs a token: pass --token or set VIBES_TOKEN`
                    : `${connection.url} refused the token`,
                  exitCode: 3
                })
              : error.error === "InvalidSessionRequest"
                ? new CliFailure({ message: error.message, exitCode: 2 })
                : error.error === "Unreachable"
                  ? new CliFailure({ message: `lost ${connection.url}: ${error.message}`, exitCode: 1 })
                  : new CliFailure({
                      message:
                        error.error === "SessionNotFound"
                          ? `no session with id ${flags.sessionId}`
                          : error.message,
                      exitCode: 1
                    })
        )
      )
      if (outcome._tag === "Ended") {
        const how =
          outcome.state === "exited"
            ? outcome.signal !== null
              ? `was killed by ${outcome.signal}`
              : `exited with code ${outcome.exitCode ?? "?"}`
            : `is ${outcome.state}`
        process.stderr.write(`\r\n[vibes: session ${flags.sessionId} ${how}]\r\n`)
      } else {
        process.stderr.write(
          `\r\n[vibes: detached from ${flags.sessionId}; reattach with vibes attach ${flags.sessionId}]\r\n`
        )
      }
    }).pipe(Effect.scoped)
).pipe(
  Command.withDescription(
    "Attach this terminal to a session. Ctrl-] detaches (the session keeps running); the window size follows yours."
  )
)

/** The session subcommands. */
export const commands = [create, list, attach, kill, send, snapshot] as const
