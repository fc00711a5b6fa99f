/**
 * A session's recorded history as an asciicast v2 recording (the format of asciinema): a JSON
 * header line, then one `[seconds, "o", text]` line for each output event and one
 * `[seconds, "r", "COLSxROWS"]` for each resize, timed from the session's creation.
 *
 * The log is read page by page and the file streamed, never held whole. Where retention has
 * already dropped the oldest output (it keeps what a later snapshot covers), the recording starts
 * with the screen of the snapshot that covers it, then goes on from there.
 */
import { Chunk, DateTime, Effect, Option, Schema, Stream } from "effect"
import { EventFilter, type StoredEvent } from "../../rpc/Events.js"
import { EventLog } from "../../infra/eventlog/EventLog.js"
import { historySteps, latestSnapshot } from "./SessionEntity.js"

const Created = Schema.Struct({
  command: Schema.String,
  args: Schema.Array(Schema.String),
  cols: Schema.Int,
  rows: Schema.Int,
  name: Schema.optional(Schema.String)
})

const Output = Schema.Struct({ seq: Schema.Int })

/** What the header says when the session's creation is gone from the log. */
export interface Fallback {
  readonly cols: number
  readonly rows: number
  readonly createdAt: Date
}

const pageSize = 1000
const encoder = new TextEncoder()
const line = (value: unknown) => encoder.encode(`${JSON.stringify(value)}\n`)

/** A part of a session's time, in epoch milliseconds (either end open). */
export interface Range {
  readonly from?: number
  readonly to?: number
}

/**
 * The recording of `sessionId` as it stands in the log now, or of the part of it in `range`: that
 * starts with the screen as it was at the range's start (the snapshot before it, and the output
 * between the two, shown at once), and is timed from the range's start.
 */
export const cast = (sessionId: string, fallback: Fallback, range: Range = {}) =>
  Stream.unwrap(
    Effect.gen(function* () {
      const log = yield* EventLog
      const head = yield* log.head
      const created = yield* log.read(1, EventFilter.make({ sessionId, types: ["session.created"] }), 1)
      const creation = Option.fromNullable(created[0])
      const info = Option.flatMap(creation, (event) => Schema.decodeUnknownOption(Created)(event.data))
      const start = Option.match(creation, {
        onNone: () => fallback.createdAt.getTime(),
        onSome: (event) => DateTime.toEpochMillis(event.ts)
      })
      const origin = Math.max(start, range.from ?? start)
      const to = range.to ?? Number.POSITIVE_INFINITY
      const header = {
        version: 2,
        width: Option.match(info, { onNone: () => fallback.cols, onSome: (i) => i.cols }),
        height: Option.match(info, { onNone: () => fallback.rows, onSome: (i) => i.rows }),
        timestamp: Math.floor(origin / 1000),
        title: Option.match(info, {
          onNone: () => `vibes session ${sessionId}`,
          onSome: (i) => i.name ?? [i.command, ...i.args].join(" ")
        }),
        env: { TERM: "xterm-256color" }
      }

      const filter = EventFilter.make({ sessionId, types: ["session.output", "session.resized"] })
      const first = yield* log.read(1, EventFilter.make({ sessionId, types: ["session.output"] }), 1)
      const firstSeq = Option.flatMap(Option.fromNullable(first[0]), (event) =>
        Option.map(Schema.decodeUnknownOption(Output)(event.data), (data) => data.seq)
      )
      // The oldest output was pruned: the snapshot that covers it stands in for it. With a range,
      // the latest snapshot before it does (if there is none, the output before it is replayed).
      const snapshot =
        range.from !== undefined && range.from > start
          ? yield* latestSnapshot(
              sessionId,
              (yield* log
                .resolve({ _tag: "Time", epochMillis: range.from })
                .pipe(Effect.orElseSucceed(() => head + 1))) - 1
            )
          : Option.isSome(firstSeq) && firstSeq.value > 0 && first[0] !== undefined
            ? yield* latestSnapshot(sessionId, Number(first[0].offset))
            : Option.none()

      let seq = Option.match(snapshot, { onNone: () => 0, onSome: (s) => s.seq })
      let last = 0
      const decoder = new TextDecoder("utf-8")
      // Before the range's start, everything is shown at once (time 0).
      const at = (ts: DateTime.Utc) => {
        last = Math.max(last, (DateTime.toEpochMillis(ts) - origin) / 1000)
        return Math.round(last * 1e6) / 1e6
      }
      let past = false

      const opening = Option.match(snapshot, {
        onNone: () => [line(header)],
        onSome: (s) => [
          line({ ...header, width: s.cols, height: s.rows }),
          line([0, "o", `\u001b[H\u001b[2J${s.screen}`])
        ]
      })

      const lines = (events: ReadonlyArray<StoredEvent>) => {
        const out: Array<Uint8Array> = []
        for (const event of events) {
          if (DateTime.toEpochMillis(event.ts) > to) {
            past = true
            break
          }
          const steps = historySteps([event], seq)
          const ts = event.ts
          for (const step of steps) {
            if (step._tag === "Output") {
              seq = step.seq + step.data.length
              const text = decoder.decode(step.data, { stream: true })
              if (text !== "") out.push(line([at(ts), "o", text]))
            } else {
              out.push(line([at(ts), "r", `${step.cols}x${step.rows}`]))
            }
          }
        }
        return out
      }

      const pages = Stream.paginateChunkEffect(1, (from) =>
        Effect.map(log.read(from, filter, pageSize), (events) => {
          const within = events.filter((event) => Number(event.offset) <= head)
          const tail = events[events.length - 1]
          const chunk = lines(within)
          const next =
            !past && events.length === pageSize && tail !== undefined && Number(tail.offset) < head
              ? Option.some(Number(tail.offset) + 1)
              : Option.none()
          return [Chunk.unsafeFromArray(chunk), next] as const
        })
      )
      const rest = Stream.suspend(() => {
        const text = decoder.decode()
        return text === "" ? Stream.empty : Stream.make(line([last, "o", text]))
      })
      return Stream.concat(Stream.fromIterable(opening), Stream.concat(pages, rest))
    })
  )
