/**
 * Conversation commands of the CLI: `vibes conversations` (what the proxy recorded, newest first,
 * of a session or job, or matching a full-text search) and `vibes conversation ID` (one
 * conversation, turn by turn: what was asked, what came back, the tool calls, tokens and cost).
 */
import { DateTime, Effect, Option, Schema } from "effect"
import * as Args from "@effect/cli/Args"
import * as Command from "@effect/cli/Command"
import * as Options from "@effect/cli/Options"
import {
  type Block,
  ConversationDetail,
  ConversationSummary,
  ReplayResult,
  type TurnUsage
} from "../../rpc/Conversations.js"
import { CliFailure, connectionOptions, resolveConnection, withClient } from "./Connection.js"
import { json as toJson, printable, printableLines } from "./Display.js"

const json = Options.boolean("json").pipe(Options.withDescription("Print JSON instead of text"))

const print = (text: string) =>
  Effect.sync(() => process.stdout.write(text.endsWith("\n") ? text : `${text}\n`))

const table = (cells: ReadonlyArray<ReadonlyArray<string>>): string => {
  const rows = cells.map((row) => row.map(printable))
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((row) => (row[i] ?? "").length))) ?? []
  return rows
    .map((row) =>
      row
        .map((cell, i) => cell.padEnd(widths[i] ?? 0))
        .join("  ")
        .trimEnd()
    )
    .join("\n")
}

/** `$0.0123`, or `-` without a price. */
export const dollars = (usd: number | null): string =>
  usd === null ? "-" : `$${usd < 1 ? usd.toFixed(4) : usd.toFixed(2)}`

/** `in 12 / out 5 / cache 2000r 400w` */
export const tokens = (usage: TurnUsage): string => {
  const cache =
    (usage.cacheReadTokens ?? 0) > 0 || (usage.cacheWriteTokens ?? 0) > 0
      ? ` / cache ${usage.cacheReadTokens ?? 0}r ${usage.cacheWriteTokens ?? 0}w`
      : ""
  return `in ${usage.inputTokens ?? "-"} / out ${usage.outputTokens ?? "-"}${cache}`
}

const uuid = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i

const list = Command.make(
  "conversations",
  {
    ...connectionOptions,
    json,
    session: Options.text("session").pipe(
      Options.withDescription("Only the conversations of this session"),
      Options.optional
    ),
    job: Options.text("job").pipe(
      Options.withDescription("Only the conversations of this job"),
      Options.optional
    ),
    search: Options.text("search").pipe(
      Options.withDescription(
        'Only conversations where this was said (Postgres full-text search: words, "a phrase", -not, or)'
      ),
      Options.optional
    ),
    limit: Options.integer("limit").pipe(
      Options.withDescription("At most this many (1 to 1000)"),
      Options.withDefault(50)
    )
  },
  (flags) =>
    Effect.gen(function* () {
      if (flags.limit < 1 || flags.limit > 1000) {
        return yield* new CliFailure({ message: "--limit must be between 1 and 1000", exitCode: 2 })
      }
      const connection = yield* resolveConnection(flags)
      const found = yield* withClient(connection, flags.timeout, (client) =>
        client.Conversations.List({
          ...Option.match(flags.session, { onNone: () => ({}), onSome: (sessionId) => ({ sessionId }) }),
          ...Option.match(flags.job, { onNone: () => ({}), onSome: (jobId) => ({ jobId }) }),
          ...Option.match(flags.search, { onNone: () => ({}), onSome: (search) => ({ search }) }),
          limit: flags.limit
        })
      )
      if (flags.json)
        return yield* print(toJson(Schema.encodeSync(Schema.Array(ConversationSummary))(found), 2))
      if (found.length === 0) return yield* print("no recorded conversations")
      yield* print(
        table([
          ["ID", "UPDATED", "WHO", "PROVIDER", "MODEL", "TURNS", "TOKENS", "COST", "TITLE"],
          ...found.map((c) => [
            c.id,
            DateTime.formatIso(c.updatedAt).slice(0, 19).replace("T", " "),
            c.sessionId ?? (c.jobId === null ? c.client : `job ${c.jobId}`),
            c.provider,
            c.model ?? "-",
            `${c.turns}${c.forkedFromTurnId === null ? "" : " (fork)"}`,
            tokens(c.usage),
            dollars(c.costUsd),
            c.title.length > 60 ? `${c.title.slice(0, 59)}…` : c.title
          ])
        ])
      )
    })
).pipe(
  Command.withDescription(
    "List the conversations the AI-provider proxy recorded, newest first: who had them, the model, turns, tokens and cost. Read one with `vibes conversation ID`."
  )
)

/** A block as a few readable lines; tool inputs and results shortened unless `full`. */
const blockLines = (block: Block, full: boolean): string => {
  const cut = (text: string, max: number) =>
    full || text.length <= max ? text : `${text.slice(0, max)}… (${text.length} chars)`
  switch (block._tag) {
    case "text":
      return cut(block.text, 4000)
    case "thinking":
      return `(thinking) ${cut(block.text, 400)}`
    case "tool_call":
      return `→ tool ${block.name}(${cut(block.input, 300)})  [${block.id}]`
    case "tool_result":
      return `← ${block.isError ? "tool error" : "tool result"} [${block.id}]: ${cut(block.content, 300)}`
    case "other":
      return `(${block.kind})`
  }
}

const indent = (text: string) =>
  printableLines(text)
    .split("\n")
    .map((line) => `    ${line}`)
    .join("\n")

/** A conversation as text for a terminal. */
export const render = (detail: ConversationDetail, full: boolean): string => {
  const c = detail.conversation
  const out: Array<string> = [
    printable(
      `conversation ${c.id}  ${c.provider} ${c.api}  ${c.sessionId !== null ? `session ${c.sessionId}` : c.jobId !== null ? `job ${c.jobId}` : c.client}`
    ),
    `${c.turns} turns  ${tokens(c.usage)}  ${dollars(c.costUsd)}`
  ]
  if (c.forkedFromTurnId !== null)
    out.push(`forked from turn ${c.forkedFromTurnId} of conversation ${c.parentId ?? "-"}`)
  for (const turn of detail.turns) {
    const t = turn.turn
    out.push(
      "",
      printable(
        `── turn ${t.seq}  ${DateTime.formatIso(t.createdAt).slice(11, 19)}  ${t.model ?? "-"}  ${t.status}${t.streamed ? " streamed" : ""}  ${t.stopReason ?? "-"}  ${tokens(t.usage)}  ${dollars(t.costUsd)}  ${Math.round(t.latencyMs)} ms`
      )
    )
    if (turn.system !== null && turn.system !== "")
      out.push("  system:", indent(full ? turn.system : turn.system.slice(0, 500)))
    for (const message of turn.input) {
      out.push(
        `  ${printable(message.role)}:`,
        ...message.blocks.map((block) => indent(blockLines(block, full)))
      )
    }
    out.push("  assistant:", ...turn.output.map((block) => indent(blockLines(block, full))))
    if (turn.output.length === 0 && t.preview !== "") out.push(indent(t.preview))
  }
  return out.join("\n")
}

const show = Command.make(
  "conversation",
  {
    ...connectionOptions,
    json,
    full: Options.boolean("full").pipe(Options.withDescription("Show tool inputs and results whole")),
    bodies: Options.boolean("bodies").pipe(
      Options.withDescription("With --json: include each turn's request and response bodies (redacted)")
    ),
    id: Args.text({ name: "conversation-id" }).pipe(
      Args.withDescription("The conversation's id, as `vibes conversations` lists it")
    )
  },
  (flags) =>
    Effect.gen(function* () {
      if (!uuid.test(flags.id)) {
        return yield* new CliFailure({
          message: `'${printable(flags.id)}' is not a conversation id; list them with 'vibes conversations'`,
          exitCode: 2
        })
      }
      const connection = yield* resolveConnection(flags)
      const detail = yield* withClient(connection, flags.timeout, (client) =>
        client.Conversations.Get({ conversationId: flags.id, bodies: flags.bodies })
      )
      if (flags.json) return yield* print(toJson(Schema.encodeSync(ConversationDetail)(detail), 2))
      yield* print(render(detail, flags.full))
    })
).pipe(
  Command.withDescription(
    "Show one recorded conversation turn by turn: what was asked, the answer, tool calls and results, tokens, cost and latency."
  )
)

/** Lines of at most `width` characters (longer ones wrapped). */
const wrap = (text: string, width: number): Array<string> =>
  text.split("\n").flatMap((line) => {
    const out: Array<string> = []
    for (let at = 0; at < line.length; at += width) out.push(line.slice(at, at + width))
    return out.length === 0 ? [""] : out
  })

/** Two texts side by side in columns of `width`. */
export const sideBySide = (left: string, right: string, width: number): string => {
  const a = wrap(printableLines(left), width)
  const b = wrap(printableLines(right), width)
  return Array.from({ length: Math.max(a.length, b.length) }, (_, i) =>
    `${(a[i] ?? "").padEnd(width)} │ ${b[i] ?? ""}`.trimEnd()
  ).join("\n")
}

const replay = Command.make(
  "replay-turn",
  {
    ...connectionOptions,
    json,
    model: Options.text("model").pipe(
      Options.withDescription("Send it to this model instead of the recorded one"),
      Options.optional
    ),
    id: Args.text({ name: "turn-id" }).pipe(
      Args.withDescription("The turn's id (`vibes conversation ID --json` lists them)")
    )
  },
  (flags) =>
    Effect.gen(function* () {
      if (!uuid.test(flags.id)) {
        return yield* new CliFailure({ message: `'${printable(flags.id)}' is not a turn id`, exitCode: 2 })
      }
      const connection = yield* resolveConnection(flags)
      const result = yield* withClient(connection, Math.max(flags.timeout, 300), (client) =>
        client.Conversations.Replay({
          turnId: flags.id,
          ...Option.match(flags.model, { onNone: () => ({}), onSome: (model) => ({ model }) })
        })
      )
      if (flags.json) return yield* print(toJson(Schema.encodeSync(ReplayResult)(result), 2))
      const width = Math.max(30, Math.floor(((process.stdout.columns ?? 120) - 3) / 2))
      const text = (blocks: ReadonlyArray<Block>) =>
        blocks.map((block) => blockLines(block, false)).join("\n")
      yield* print(
        [
          sideBySide(
            `recorded: ${result.originalModel ?? "-"}`,
            `replay: ${result.model ?? "-"}  ${result.status}  ${tokens(result.usage)}  ${dollars(result.costUsd)}  ${Math.round(result.latencyMs)} ms`,
            width
          ),
          `${"─".repeat(width)}─┼─${"─".repeat(width)}`,
          sideBySide(text(result.original), result.error ?? text(result.replay), width)
        ].join("\n")
      )
    })
).pipe(
  Command.withDescription(
    "Send a recorded turn's request again (as recorded, redactions included), to the same or another model, and show both answers side by side. The replay is not recorded; its cost counts in the day's spend."
  )
)

/** `vibes conversations`, `vibes conversation` and `vibes replay-turn`. */
export const commands = [list, show, replay] as const
